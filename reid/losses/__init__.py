"""Losses, each an nn.Module called as ``loss(embeddings, logits, labels) -> scalar``.

Adding a loss: one file here and one line in ``LOSSES``.
"""

from __future__ import annotations

import inspect

from torch import nn

from .cluster_memory import ClusterMemoryLoss
from .cross_entropy import CrossEntropyLoss
from .group_loss import GroupLoss, first_anchors_mask, group_loss_probabilities, pearson_similarity
from .triplet import TripletLoss, pairwise_embedding_distances

LOSSES: dict[str, type[nn.Module]] = {
    "group": GroupLoss,
    "cross_entropy": CrossEntropyLoss,
    "triplet": TripletLoss,
    "cluster_memory": ClusterMemoryLoss,
}


def loss_parameters(name: str) -> list[str]:
    """The parameters the loss registered as ``name`` accepts: its constructor's arguments."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return [p for p in inspect.signature(LOSSES[name].__init__).parameters if p != "self"]


def build_loss(name: str, **params: object) -> nn.Module:
    """The loss registered as ``name`` built with ``params``; unknown names or parameters are errors."""
    accepted = loss_parameters(name)
    unexpected = sorted(set(params) - set(accepted))
    if unexpected:
        raise TypeError(
            f"loss {name!r}: unexpected parameter(s) {', '.join(unexpected)}; valid: {', '.join(accepted)}"
        )
    return LOSSES[name](**params)


__all__ = [
    "LOSSES",
    "ClusterMemoryLoss",
    "CrossEntropyLoss",
    "GroupLoss",
    "TripletLoss",
    "build_loss",
    "loss_parameters",
    "first_anchors_mask",
    "group_loss_probabilities",
    "pairwise_embedding_distances",
    "pearson_similarity",
]
