"""Identity classification loss with label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on the classifier logits with label smoothing.

    Label smoothing (Szegedy et al., "Rethinking the Inception Architecture for Computer
    Vision", CVPR 2016; used for re-ID in Luo et al., "Bag of Tricks", CVPRW 2019) trains
    against (1 - eps) * one_hot + eps / C, which keeps the identity classifier from
    over-fitting the few images per training identity:
    loss = (1 - eps) * (-log p_y) + eps * mean_c(-log p_c), averaged over the batch.

    ``forward(embeddings, logits, labels)``: the embeddings are not used (the common loss
    signature lets the engine call every loss the same way). Computed in at least float32.
    """

    def __init__(self, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"CrossEntropyLoss: expected logits B x C and labels B; got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
