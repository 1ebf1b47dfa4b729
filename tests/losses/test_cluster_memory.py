"""ClusterMemoryLoss against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from reid.losses import LOSSES, ClusterMemoryLoss


def test_loss_and_momentum_update_by_hand() -> None:
    loss_fn = ClusterMemoryLoss(temperature=0.5, momentum=0.25)
    loss_fn.reset(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # normalised: e1, e2
    f = torch.tensor([[3.0, 4.0]])  # normalised (0.6, 0.8)
    loss = loss_fn(f, torch.zeros(1, 2), torch.tensor([0]))
    # logits (0.6, 0.8) / 0.5 = (1.2, 1.6); CE for class 0 = log(e^1.2 + e^1.6) - 1.2
    assert loss.item() == pytest.approx(math.log(math.exp(1.2) + math.exp(1.6)) - 1.2, abs=1e-6)
    mixed = torch.tensor([0.25 + 0.75 * 0.6, 0.75 * 0.8])
    torch.testing.assert_close(loss_fn.memory[0], mixed / mixed.norm())
    torch.testing.assert_close(loss_fn.memory[1], torch.tensor([0.0, 1.0]))


def test_gradient_flows_and_eval_mode_keeps_the_memory() -> None:
    loss_fn = ClusterMemoryLoss().eval()
    loss_fn.reset(torch.eye(3))
    f = torch.randn(4, 3, requires_grad=True)
    loss_fn(f, torch.zeros(4, 1), torch.tensor([0, 1, 2, 0])).backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    torch.testing.assert_close(loss_fn.memory, torch.eye(3))
    assert "memory" not in loss_fn.state_dict()  # rebuilt every round, not checkpointed


def test_registered_and_errors() -> None:
    assert LOSSES["cluster_memory"] is ClusterMemoryLoss
    with pytest.raises(ValueError, match="no cluster memory yet"):
        ClusterMemoryLoss()(torch.randn(2, 3), torch.zeros(2, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        ClusterMemoryLoss(temperature=0)
