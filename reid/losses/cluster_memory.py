"""Cluster-memory contrastive loss for training on pseudo-labels (unsupervised adaptation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemoryLoss(nn.Module):
    """InfoNCE of each embedding against a memory of cluster centroids (Dai et al., "Cluster
    Contrast for Unsupervised Person Re-Identification", ACCV 2022; SpCL's cluster memory).

    The memory ``M`` (C x D, rows L2-normalised) is set each round from the mean feature of
    every pseudo-identity (:meth:`reset`). For a batch of embeddings f (L2-normalised here) with
    pseudo-labels y: loss = CE(f M^T / temperature, y), averaged. After the loss, each batch
    embedding moves its centroid: M[y] <- normalise(momentum * M[y] + (1 - momentum) * f), in
    batch order, without gradient (the paper's momentum 0.1: the centroid follows its
    cluster's newest features).

    ``forward(embeddings, logits, labels)``: the logits are not used (the common loss signature).
    The memory is rebuilt from the features every round, so it is a buffer that checkpoints
    do not keep (``persistent=False``).
    """

    def __init__(self, temperature: float = 0.05, momentum: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature: expected a value > 0, got {temperature!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1], got {momentum!r}")
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.register_buffer("memory", torch.zeros(0, 0), persistent=False)

    @torch.no_grad()
    def reset(self, centroids: torch.Tensor) -> None:
        """C x D centroids (normalised here) as the memory."""
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise ValueError(f"ClusterMemoryLoss.reset: expected C x D centroids, got {tuple(centroids.shape)}")
        self.memory = F.normalize(centroids.detach().float(), dim=1).to(self.memory.device)

    def forward(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.memory.numel() == 0:
            raise ValueError("ClusterMemoryLoss: no cluster memory yet (reset(centroids) sets it; the loss is 'reid adapt's, "
                             "which sets it every round)")
        if embeddings.ndim != 2 or embeddings.shape[1] != self.memory.shape[1] or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"ClusterMemoryLoss: expected B x {self.memory.shape[1]} embeddings and B labels; got "
                             f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
        features = F.normalize(embeddings.float(), dim=1)
        loss = F.cross_entropy(features @ self.memory.t() / self.temperature, labels)
        if self.training:
            self._update(features.detach(), labels)
        return loss

    @torch.no_grad()
    def _update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        memory = self.memory.clone()  # the loss's graph holds the old memory: update a copy
        for feature, label in zip(features, labels.tolist()):
            mixed = self.momentum * memory[label] + (1 - self.momentum) * feature
            memory[label] = mixed / mixed.norm().clamp_min(1e-12)
        self.memory = memory

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, momentum={self.momentum}, clusters={self.memory.shape[0]}"
