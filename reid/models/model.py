"""The embedding model: timm trunk -> pooling -> (linear embedding) -> (BNNeck) -> bias-free classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .backbone import PretrainedArg, backbone_feature_map, build_backbone, set_final_activation
from .heads import BNNeck, build_classifier, build_pooling


@dataclass(frozen=True)
class ModelOutput:
    """What ``ReidModel`` returns, in train and eval mode alike.

    embeddings: B x D pooled trunk features (after the linear embedding layer when there is one),
        before the BNNeck: what metric losses use.
    bn_embeddings: B x D after the BNNeck (the same tensor when the neck is off).
    logits: B x C identity scores from the classifier over ``bn_embeddings``.
    """

    embeddings: torch.Tensor
    bn_embeddings: torch.Tensor
    logits: torch.Tensor


# A pytree node, so torch.export (and DDP's output traversal) see the three tensors inside.
try:
    torch.export.register_dataclass(ModelOutput, serialized_type_name="reid.models.ModelOutput")
except ValueError:  # already registered (module re-imported)
    pass


class ReidModel(nn.Module):
    """trunk -> pool -> (embedding) -> embeddings -> BNNeck -> bn_embeddings -> classifier -> logits.

    Attributes: ``backbone`` (the timm trunk), ``pool``, ``embedding`` (a Linear to
    ``embedding_dim`` dimensions, or Identity), ``neck`` (BNNeck or Identity), ``classifier``,
    ``feature_dim`` (D), ``num_classes`` (C), ``channels_last``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        pool: nn.Module | None = None,
        embedding_dim: int = 0,
        neck: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim < 0:
            raise ValueError(f"embedding_dim: expected 0 (none) or a positive size, got {embedding_dim!r}")
        trunk_dim = int(backbone.num_features)
        self.feature_dim: int = embedding_dim or trunk_dim
        self.num_classes: int = int(num_classes)
        self.backbone = backbone
        self.pool = pool if pool is not None else build_pooling("avg")
        # The retrieval papers' 512-d embedding (a linear layer over the pooled features).
        self.embedding: nn.Module = nn.Linear(trunk_dim, embedding_dim) if embedding_dim else nn.Identity()
        self.neck: nn.Module = BNNeck(self.feature_dim) if neck else nn.Identity()
        self.classifier = build_classifier(self.feature_dim, self.num_classes)
        self.channels_last = channels_last
        if channels_last:
            # NHWC convolutions are about 1.4x faster for inference on this CPU (docs/ARCHITECTURE.md);
            # .to(device) later keeps the layout (preserve_format).
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feature_map = backbone_feature_map(self.backbone, images)
        embeddings = self.embedding(self.pool(feature_map))
        bn_embeddings = self.neck(embeddings)
        return ModelOutput(embeddings, bn_embeddings, self.classifier(bn_embeddings))

    def set_pooling(
        self, pooling: str, *, gem_p: float = 3.0, gem_learnable: bool = True, pool_lambda: float = 0.5
    ) -> None:
        """Swap the pooling (a test-time switch, e.g. Group Loss++'s mix); see ``build_pooling``."""
        param = next(self.parameters())
        self.pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable, pool_lambda=pool_lambda).to(
            param.device
        )

    def set_leaky_relu(self, negative_slope: float) -> None:
        """Make the trunk's final ReLU leaky (> 0) or plain again (0); a Group Loss++ test-time
        switch that keeps the trained weights (see ``set_final_activation``)."""
        set_final_activation(self.backbone, negative_slope)


def build_model(
    backbone: str,
    num_classes: int,
    *,
    pretrained: PretrainedArg = False,
    last_stride: int | None = 1,
    pooling: str = "avg",
    gem_p: float = 3.0,
    pool_lambda: float = 0.5,
    embedding_dim: int = 0,
    neck: bool = True,
    leaky_relu: float = 0.0,
    channels_last: bool = False,
    gem_learnable: bool = True,
) -> ReidModel:
    """A ``ReidModel`` over the timm trunk ``backbone`` with ``num_classes`` training identities.

    pretrained / last_stride / leaky_relu: see ``build_backbone``; pooling: "avg" | "max" |
    "gem" (p = gem_p, learned unless gem_learnable=False) | "mix" (pool_lambda * max +
    (1 - pool_lambda) * avg); embedding_dim: > 0 adds a linear layer to that many dimensions;
    neck: BNNeck between embeddings and classifier.
    """
    pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable, pool_lambda=pool_lambda)
    trunk = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride, leaky_relu=leaky_relu)
    return ReidModel(trunk, num_classes, pool=pool, embedding_dim=embedding_dim, neck=neck, channels_last=channels_last)
