"""Batch-hard triplet loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("euclidean", "cosine")
# Squared distances below this are clamped before the square root: sqrt has an infinite
# gradient at 0, and the expansion |a|^2 + |b|^2 - 2ab can round to a small negative number.
_MIN_SQUARED_DISTANCE = 1e-12


def pairwise_embedding_distances(embeddings: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """B x B distances: Euclidean (not squared, safe sqrt) or cosine (1 - cosine similarity)."""
    if metric == "euclidean":
        squared_norms = embeddings.pow(2).sum(dim=1)
        squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * embeddings @ embeddings.t()
        return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()
    if metric == "cosine":
        unit = F.normalize(embeddings, p=2, dim=1)
        return 1.0 - unit @ unit.t()
    raise ValueError(f"metric: unknown {metric!r}; expected one of {', '.join(METRICS)}")


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for
    Person Re-Identification", arXiv 1703.07737, 2017).

    For every anchor: its farthest positive (same label, itself excluded) and its nearest
    negative; loss = relu(d_ap - d_an + margin), or softplus(d_ap - d_an) ("soft margin") when
    ``margin`` is None; averaged over the anchors that have both a positive and a negative
    (a P x K batch with P, K >= 2 has them all; with none the loss is a zero that keeps the graph).

    ``forward(embeddings, logits, labels)``: the logits are not used. Computed in at least
    float32, outside autocast.
    """

    def __init__(self, margin: float | None = 0.3, metric: str = "euclidean") -> None:
        super().__init__()
        if margin is not None and margin < 0:
            raise ValueError(f"margin: expected a value >= 0 or None (soft margin), got {margin!r}")
        if metric not in METRICS:
            raise ValueError(f"metric: unknown {metric!r}; expected one of {', '.join(METRICS)}")
        self.margin = None if margin is None else float(margin)
        self.metric = metric

    def forward(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"TripletLoss: expected embeddings B x D and labels B; got {tuple(embeddings.shape)} "
                f"and {tuple(labels.shape)}"
            )
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            distances = pairwise_embedding_distances(embeddings, self.metric)
        same = labels[:, None] == labels[None, :]
        positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        negatives = ~same
        hardest_positive = distances.masked_fill(~positives, float("-inf")).amax(dim=1)
        hardest_negative = distances.masked_fill(~negatives, float("inf")).amin(dim=1)
        valid = positives.any(dim=1) & negatives.any(dim=1)
        difference = hardest_positive[valid] - hardest_negative[valid]
        if difference.numel() == 0:
            return embeddings.sum() * 0.0
        if self.margin is None:
            return F.softplus(difference).mean()
        return F.relu(difference + self.margin).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, metric={self.metric!r}"
