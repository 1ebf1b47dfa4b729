"""Batch-hard triplet loss against a plain loop (value and gradients) and a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid.losses import TripletLoss, build_loss


def reference_triplet(embeddings, labels, margin, metric):
    def distance(a, b):
        if metric == "euclidean":
            return torch.sqrt(((a - b) ** 2).sum())
        return 1 - (a * b).sum() / (a.norm() * b.norm())

    labels = labels.tolist()
    terms = []
    for i in range(len(labels)):
        positives = [distance(embeddings[i], embeddings[j]) for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        negatives = [distance(embeddings[i], embeddings[j]) for j in range(len(labels)) if labels[j] != labels[i]]
        if not positives or not negatives:
            continue
        difference = torch.stack(positives).max() - torch.stack(negatives).min()
        terms.append(F.softplus(difference) if margin is None else torch.clamp(difference + margin, min=0))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.3, 1.0, None])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_loop_reference_value_and_gradients(seed, margin, metric):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([3, 1, 3, 0, 1, 0, 3, 1, 0, 7])  # class 7 has no positive: skipped
    embeddings = torch.randn(len(labels), 6, generator=generator, dtype=torch.float64)
    a = embeddings.clone().requires_grad_(True)
    b = embeddings.clone().requires_grad_(True)
    ours = TripletLoss(margin=margin, metric=metric)(a, torch.zeros(len(labels), 2), labels)
    reference = reference_triplet(b, labels, margin, metric)
    ours.backward()
    reference.backward()
    assert reference.item() > 0  # the comparison is not between two zeros
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_hand_computed_one_dimensional_case():
    # points 0, 1 (id 0) and 3, 5 (id 1): (d_ap, d_an) per anchor = (1, 3), (1, 2), (2, 2), (2, 4)
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(margin=0.3)(embeddings, None, labels)
    assert loss.item() == pytest.approx((0 + 0 + 0.3 + 0) / 4, abs=1e-5)
    soft = TripletLoss(margin=None)(embeddings, None, labels)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert soft.item() == pytest.approx((softplus(-2) + softplus(-1) + softplus(0) + softplus(-2)) / 4, rel=1e-5)


def test_identical_embeddings_give_finite_gradients():
    # zero distances: the clamp keeps sqrt's gradient finite
    embeddings = torch.ones(4, 3, requires_grad=True)
    loss = TripletLoss(margin=0.3)(embeddings, None, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    assert torch.isfinite(embeddings.grad).all()


def test_no_valid_anchor_gives_zero_with_graph():
    embeddings = torch.randn(3, 4, requires_grad=True)
    loss = TripletLoss()(embeddings, None, torch.tensor([0, 0, 0]))  # no negatives at all
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(embeddings.grad, torch.zeros(3, 4))


def test_errors_and_build_by_name():
    with pytest.raises(ValueError, match="metric"):
        TripletLoss(metric="manhattan")
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-0.1)
    loss = build_loss("triplet", margin=None, metric="cosine")
    assert loss.margin is None and loss.metric == "cosine"
