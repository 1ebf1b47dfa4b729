"""GroupLoss against a plain per-sample loop that follows docs/ARCHITECTURE.md line by line."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import GroupLoss, build_loss, first_anchors_mask, pearson_similarity


# --- the obviously right reference ---------------------------------------------------------


def reference_anchors(labels: list[int], num_anchors: int) -> list[bool]:
    seen: dict[int, int] = {}
    mask = []
    for label in labels:
        mask.append(seen.get(label, 0) < num_anchors)
        seen[label] = seen.get(label, 0) + 1
    return mask


def reference_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())


def reference_group_loss(embeddings, logits, labels, anchors, temperature, num_iterations):
    """Returns (loss, X as a list of rows)."""
    batch, num_classes = logits.shape
    labels = labels.tolist()
    rows = []
    for i in range(batch):
        if anchors[i]:
            row = torch.zeros(num_classes, dtype=logits.dtype)
            row[labels[i]] = 1.0
        else:
            row = torch.softmax(logits[i] / temperature, dim=0)
        rows.append(row)
    weights = [[torch.clamp(reference_pearson(embeddings[i], embeddings[j]), min=0.0) for j in range(batch)]
               for i in range(batch)]
    for _ in range(num_iterations):
        new_rows = []
        for i in range(batch):
            support = sum(weights[i][j] * rows[j] for j in range(batch))
            row = rows[i] * support
            new_rows.append(row / row.sum())
        rows = new_rows
    loss = sum(-torch.log(rows[i][labels[i]] + 1e-12) for i in range(batch)) / batch
    return loss, rows


def random_batch(seed: int, batch: int = 12, num_classes: int = 7, dim: int = 10):
    """Labels in shuffled order with uneven class sizes (one singleton), class-correlated
    embeddings (so W has many non-zero entries) and logits of varied scale."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [4, 3, 2, 2, 1]
    classes = torch.randperm(num_classes, generator=generator)[: len(sizes)]
    labels = torch.cat([classes[k].repeat(n) for k, n in enumerate(sizes)])[:batch]
    labels = labels[torch.randperm(len(labels), generator=generator)]
    centres = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    embeddings = centres[labels] + 0.7 * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    logits = 20.0 * torch.randn(len(labels), num_classes, generator=generator, dtype=torch.float64)
    return embeddings, logits, labels


def loss_and_grads(function, embeddings, logits):
    embeddings = embeddings.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    loss = function(embeddings, logits)
    grad_embeddings, grad_logits = torch.autograd.grad(loss, (embeddings, logits))
    return loss.detach(), grad_embeddings, grad_logits


# --- value and gradients against the loop --------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_iterations", [1, 2, 3])
@pytest.mark.parametrize("num_anchors", [0, 1, 2, 3])
def test_matches_loop_reference_value_and_gradients(seed, num_iterations, num_anchors):
    embeddings, logits, labels = random_batch(seed)
    temperature = [5.0, 24.0, 80.0][seed]
    anchors = reference_anchors(labels.tolist(), num_anchors)
    loss_fn = GroupLoss(temperature=temperature, num_anchors=num_anchors, num_iterations=num_iterations)

    ours = loss_and_grads(lambda e, z: loss_fn(e, z, labels), embeddings, logits)
    reference = loss_and_grads(
        lambda e, z: reference_group_loss(e, z, labels, anchors, temperature, num_iterations)[0], embeddings, logits
    )
    assert ours[0].dtype == torch.float64
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the loss depends on the logits and the embeddings (a test of a constant would pass above too)
    assert ours[1].abs().max() > 1e-6 and ours[2].abs().max() > 1e-6


@pytest.mark.parametrize("seed", [3, 4])
def test_explicit_anchor_mask_matches_loop_reference(seed):
    embeddings, logits, labels = random_batch(seed)
    mask = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < 0.4
    loss_fn = GroupLoss(temperature=10.0, num_anchors=2, num_iterations=2)
    ours = loss_and_grads(lambda e, z: loss_fn(e, z, labels, anchor_mask=mask), embeddings, logits)
    reference = loss_and_grads(
        lambda e, z: reference_group_loss(e, z, labels, mask.tolist(), 10.0, 2)[0], embeddings, logits
    )
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # anchors' priors do not depend on the logits: their logit gradients are exactly zero
    assert torch.all(ours[2][mask] == 0)
    assert torch.all(ours[2][~mask].abs().sum(dim=1) > 0)


def test_hand_computed_three_samples():
    # rows centred: [-1, 0, 1], [-4/3, -1/3, 5/3], [1, 0, -1]; r01 = 9 / sqrt(84), r02 = -1,
    # r12 < 0, so W = [[1, r, 0], [r, 1, 0], [0, 0, 1]]. Samples 0 and 2 are anchors (first of
    # their class), sample 1 has a uniform prior [1/2, 1/2]. One step for sample 1:
    # [1/2 (r + 1/2), 1/2 * 1/2] -> p(class 0) = (r + 1/2) / (r + 1).
    embeddings = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 4.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    logits = torch.zeros(3, 2, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    r = 9.0 / math.sqrt(84.0)
    expected_w = torch.tensor([[1.0, r, 0.0], [r, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(pearson_similarity(embeddings), expected_w, rtol=0, atol=1e-15)
    p = (r + 0.5) / (r + 1.0)
    expected = (-math.log(1 + 1e-12) - math.log(p + 1e-12) - math.log(1 + 1e-12)) / 3
    loss = GroupLoss(temperature=80.0, num_anchors=1, num_iterations=1)(embeddings, logits, labels)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    probabilities = GroupLoss(80.0, 1, 1).probabilities(embeddings, logits, labels)
    torch.testing.assert_close(probabilities[1], torch.tensor([p, 1 - p], dtype=torch.float64))


# --- properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_anchors", [0, 2])
def test_rows_stay_on_simplex_and_anchors_stay_one_hot(num_anchors):
    embeddings, logits, labels = random_batch(5)
    anchors = first_anchors_mask(labels, num_anchors)
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    for num_iterations in range(1, 6):
        x = GroupLoss(24.0, num_anchors, num_iterations).probabilities(embeddings, logits, labels)
        assert torch.all(x >= 0)
        torch.testing.assert_close(x.sum(dim=1), torch.ones(len(labels), dtype=x.dtype), rtol=0, atol=1e-12)
        assert torch.equal(x[anchors], one_hot[anchors])  # exactly, not approximately
        # the reference agrees on every iterate, not only on the loss
        _, rows = reference_group_loss(embeddings, logits, labels, anchors.tolist(), 24.0, num_iterations)
        torch.testing.assert_close(x, torch.stack(rows), rtol=1e-9, atol=1e-12)
    assert anchors.sum().item() == (9 if num_anchors == 2 else 0)  # class sizes 4, 3, 2, 2, 1 -> 2+2+2+2+1


def test_all_anchors_gives_zero_loss():
    embeddings, logits, labels = random_batch(6)
    expected = -math.log(1 + 1e-12)
    assert GroupLoss(80.0, num_anchors=10, num_iterations=2)(embeddings, logits, labels).item() == pytest.approx(
        expected, abs=1e-15
    )
    everyone = torch.ones(len(labels), dtype=torch.bool)
    loss = GroupLoss(80.0, num_anchors=0)(embeddings, logits, labels, anchor_mask=everyone)
    assert loss.item() == pytest.approx(expected, abs=1e-15)


def test_first_anchors_mask_with_class_smaller_than_num_anchors():
    labels = torch.tensor([5, 5, 2, 5, 9, 2, 5, 2, 2])
    expected = torch.tensor([True, True, True, False, True, True, False, False, False])
    assert torch.equal(first_anchors_mask(labels, 2), expected)
    assert torch.equal(first_anchors_mask(labels, 2), torch.tensor(reference_anchors(labels.tolist(), 2)))
    assert not first_anchors_mask(labels, 0).any()
    # the singleton class 9 is an anchor; its loss term is ~0 and the rest matches the loop
    embeddings, logits, _ = random_batch(7, batch=9, num_classes=10)
    loss = GroupLoss(24.0, num_anchors=2)(embeddings, logits, labels)
    reference, _ = reference_group_loss(embeddings, logits, labels, expected.tolist(), 24.0, 1)
    torch.testing.assert_close(loss, reference, rtol=1e-9, atol=1e-12)


def test_similarity_invariant_to_per_row_affine_scaling():
    embeddings, logits, labels = random_batch(8)
    generator = torch.Generator().manual_seed(8)
    scale = torch.rand(len(labels), 1, generator=generator, dtype=torch.float64) * 10 + 0.1
    shift = torch.randn(len(labels), 1, generator=generator, dtype=torch.float64) * 100
    transformed = scale * embeddings + shift
    torch.testing.assert_close(pearson_similarity(transformed), pearson_similarity(embeddings), rtol=0, atol=1e-12)
    loss_fn = GroupLoss(24.0, 2, 2)
    torch.testing.assert_close(loss_fn(transformed, logits, labels), loss_fn(embeddings, logits, labels))
    # a negative scale of some rows flips their correlations: not invariant (the check can fail)
    flipped = embeddings.clone()
    flipped[:4] = -flipped[:4]
    assert not torch.allclose(pearson_similarity(flipped), pearson_similarity(embeddings))


def test_similarity_is_relu_and_keeps_unit_diagonal():
    embeddings, _, _ = random_batch(9)
    w = pearson_similarity(embeddings)
    assert torch.all(w >= 0) and (w == 0).any()
    assert torch.equal(torch.diagonal(w), torch.ones(len(w), dtype=w.dtype))
    torch.testing.assert_close(w, w.t())


def test_constant_embedding_row_stays_finite():
    # zero variance: correlation undefined; the row keeps W_ii = 1 and 0 elsewhere, no NaN
    embeddings, logits, labels = random_batch(10)
    embeddings[3] = 0.5
    w = pearson_similarity(embeddings)
    assert w[3, 3] == 1 and torch.all(w[3, torch.arange(len(w)) != 3] == 0)
    embeddings.requires_grad_(True)
    loss = GroupLoss(24.0, 1, 2)(embeddings, logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()


def test_low_precision_inputs_are_computed_in_float32():
    embeddings, logits, labels = random_batch(11)
    loss_fn = GroupLoss(24.0, 2, 1)
    low = loss_fn(embeddings.to(torch.bfloat16), logits.to(torch.bfloat16), labels)
    full = loss_fn(embeddings.to(torch.bfloat16).float(), logits.to(torch.bfloat16).float(), labels)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full)


def test_argument_errors():
    embeddings, logits, labels = random_batch(12)
    with pytest.raises(ValueError, match="anchor_mask"):
        GroupLoss()(embeddings, logits, labels, anchor_mask=torch.ones(len(labels)))
    with pytest.raises(ValueError, match="batch size"):
        GroupLoss()(embeddings[:-1], logits, labels)
    with pytest.raises(ValueError, match="temperature"):
        GroupLoss(temperature=0.0)
    with pytest.raises(ValueError, match="num_iterations"):
        GroupLoss(num_iterations=0)
    with pytest.raises(ValueError, match="num_anchors"):
        GroupLoss(num_anchors=-1)


def test_build_loss_by_name():
    loss = build_loss("group", temperature=24.0, num_anchors=3, num_iterations=2)
    assert isinstance(loss, GroupLoss)
    assert (loss.temperature, loss.num_anchors, loss.num_iterations) == (24.0, 3, 2)


def test_detached_priors_give_the_same_loss_and_no_gradient_to_the_logits():
    embeddings, logits, labels = random_batch(5)
    plain = loss_and_grads(lambda e, z: GroupLoss(10.0, 1, 2)(e, z, labels), embeddings, logits)
    e, z = embeddings.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = GroupLoss(10.0, 1, 2, detach_priors=True)(e, z, labels)
    loss.backward()
    assert loss.item() == plain[0].item()
    assert z.grad is None and plain[2].abs().max() > 1e-6  # nothing reaches the logits
    # the embeddings' gradient through W is unchanged (the priors never depended on them)
    torch.testing.assert_close(e.grad, plain[1], rtol=0, atol=0)
    assert "detach_priors=True" in repr(GroupLoss(detach_priors=True))
