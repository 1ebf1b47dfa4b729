"""The training objective: named loss terms, each with a weight, summed into one module."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class WeightedLosses(nn.Module):
    """``sum_i weight_i * loss_i(embeddings, logits, labels)``, every term reported by name.

    One ``nn.Module`` so that a loss with learnable parameters (a center loss, a learnable
    temperature) is moved to the device, optimised and checkpointed with the run, like the model.
    A non-finite total stops training with every term's value in the message.
    """

    def __init__(self, losses: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not losses:
            raise ValueError("WeightedLosses needs at least one loss")
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in losses.items()})
        self.weights = {name: float(weight) for name, (weight, _) in losses.items()}

    def forward(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms by name and their sum under ``"total"`` (computed in float32)."""
        embeddings, logits = embeddings.float(), logits.float()
        terms = {name: self.weights[name] * loss(embeddings, logits, labels) for name, loss in self.terms.items()}
        total = sum(terms.values())
        if not torch.isfinite(total):
            values = ", ".join(f"{k}={v.item():.6g}" for k, v in terms.items())
            raise FloatingPointError(f"non-finite loss: {values}; lower train.lr or check the data")
        terms["total"] = total
        return terms

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: weight {weight:g}" for name, weight in self.weights.items())
