"""Label-smoothed cross-entropy against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import CrossEntropyLoss, build_loss


def test_matches_hand_computation():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 1])
    eps = 0.1
    expected = []
    for row, label in zip(logits.tolist(), labels.tolist()):
        log_normaliser = math.log(sum(math.exp(v) for v in row))
        neg_log_p = [log_normaliser - v for v in row]
        # smoothed target: (1 - eps) on the label + eps / C on every class (Szegedy et al.)
        expected.append((1 - eps) * neg_log_p[label] + eps * sum(neg_log_p) / len(row))
    loss = CrossEntropyLoss(label_smoothing=eps)(torch.randn(2, 4), logits, labels)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    # first row by hand: -log p = [0.4076, 1.4076, 2.4076] -> 0.9 * 0.4076 + 0.1 * 1.4076 = 0.5076
    assert expected[0] == pytest.approx(0.50760, abs=1e-4)


def test_zero_smoothing_is_plain_negative_log_likelihood():
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    loss = CrossEntropyLoss(label_smoothing=0.0)(torch.zeros(1, 2), logits, torch.tensor([2]))
    assert loss.item() == pytest.approx(-math.log(math.exp(2.0) / (math.exp(0.5) + math.exp(-1.0) + math.exp(2.0))))


def test_ignores_embeddings_and_computes_in_float32():
    logits = torch.randn(4, 5).to(torch.bfloat16)
    labels = torch.tensor([0, 1, 2, 3])
    loss_fn = CrossEntropyLoss()
    a = loss_fn(torch.randn(4, 3), logits, labels)
    b = loss_fn(torch.randn(4, 7), logits.float(), labels)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)


def test_errors_and_build_by_name():
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="logits B x C"):
        CrossEntropyLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    assert build_loss("cross_entropy", label_smoothing=0.2).label_smoothing == 0.2


def test_build_loss_unknown_name_and_parameter():
    with pytest.raises(ValueError, match=r"unknown loss 'arcface'; valid names: cluster_memory, cross_entropy, group, triplet"):
        build_loss("arcface")
    with pytest.raises(TypeError, match=r"loss 'cross_entropy': unexpected parameter\(s\) margin; valid: label_smoothing"):
        build_loss("cross_entropy", margin=0.3)
