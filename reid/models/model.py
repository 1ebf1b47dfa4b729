"""The embedding model: timm trunk -> pooling -> (linear embedding) -> (BNNeck) -> bias-free classifier.

The one path from images to embeddings is :meth:`ReidModel.embed` (the feature, flip test-time
augmentation, L2 normalisation); feature extraction, ``FeatureExtractor`` and the ONNX graph
(:class:`EmbeddingModule`) all go through it. Test-time switches of Group Loss++ (another
pooling, a leaky final ReLU) are applied with :meth:`ReidModel.inference_options`, which puts
the trained modules back on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import PretrainedArg, backbone_feature_map, build_backbone, set_final_activation
from .heads import BNNeck, build_classifier, build_pooling
from .weights import backbone_label


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


FEATURE_KINDS = ("bn", "pre_bn")
"""Which embedding ``embed`` returns: after the BNNeck ("bn") or the pooled trunk features ("pre_bn")."""
_FEATURE_FIELDS = {"bn": "bn_embeddings", "pre_bn": "embeddings"}


def check_feature(feature: str) -> str:
    """``feature`` if it is one of FEATURE_KINDS, else a ValueError naming the choices."""
    if feature not in FEATURE_KINDS:
        raise ValueError(f"feature: expected one of {', '.join(FEATURE_KINDS)}, got {feature!r}")
    return feature


# A pytree node, so torch.export (and DDP's output traversal) see the three tensors inside.
try:
    torch.export.register_dataclass(ModelOutput, serialized_type_name="reid.models.ModelOutput")
except ValueError:  # already registered (module re-imported)
    pass


class ReidModel(nn.Module):
    """trunk -> pool -> (embedding) -> embeddings -> BNNeck -> bn_embeddings -> classifier -> logits.

    Attributes: ``backbone`` (the timm trunk), ``pool``, ``embedding`` (a Linear to
    ``embedding_dim`` dimensions, or Identity), ``neck`` (BNNeck or Identity), ``classifier``,
    ``feature_dim`` (D), ``num_classes`` (C), ``channels_last``, ``freeze_bn`` (the trunk's
    BatchNorm layers stay in eval mode when the model trains), ``frozen_layers`` (the trunk's
    submodules named in ``freeze_layers``: no gradients, and in eval mode when the model trains,
    so they stay exactly as built, BatchNorm statistics included).
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
        freeze_bn: bool = False,
        freeze_layers: tuple[str, ...] | list[str] = (),
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
        self.freeze_bn = freeze_bn
        self.frozen_layers: tuple[str, ...] = tuple(freeze_layers)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        if channels_last:
            # NHWC convolutions are about 1.4x faster for inference on this CPU (docs/ARCHITECTURE.md);
            # .to(device) later keeps the layout (preserve_format).
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> ReidModel:
        """``nn.Module.train``; with ``freeze_bn`` the trunk's BatchNorm layers stay in eval mode, so
        they normalise with (and keep) their pretrained running statistics; the frozen layers
        stay in eval mode altogether."""
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        """The trunk's submodules named in ``frozen_layers`` (e.g. "conv_stem", "blocks.0")."""
        modules = dict(self.backbone.named_modules())
        unknown = [name for name in self.frozen_layers if not name or name not in modules]
        if unknown:
            children = ", ".join(name for name, _ in self.backbone.named_children())
            raise ValueError(f"freeze_layers: backbone {backbone_label(self.backbone)} has no submodule "
                             f"{unknown[0]!r}; its top-level ones are {children} (a nested one is named "
                             "with dots, e.g. blocks.0)")
        return [modules[name] for name in self.frozen_layers]

    def forward(self, images: torch.Tensor) -> ModelOutput:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feature_map = backbone_feature_map(self.backbone, images)
        embeddings = self.embedding(self.pool(feature_map))
        bn_embeddings = self.neck(embeddings)
        return ModelOutput(embeddings, bn_embeddings, self.classifier(bn_embeddings))

    def embed(self, images: torch.Tensor, *, feature: str = "bn", flip: bool = False,
              normalize: bool = False) -> torch.Tensor:
        """B x D float32 embeddings of a batch of normalised images (B x 3 x H x W).

        feature: "bn" (after the BNNeck) or "pre_bn" (before it). flip: average with the
        features of the mirror image (the usual re-ID test-time augmentation). normalize:
        L2-normalise each row, after the flip average. Runs in the model's current mode and
        grad mode; callers put it in eval mode (and under ``torch.no_grad``) for inference.
        """
        field = _FEATURE_FIELDS[check_feature(feature)]
        features = _as_float32(getattr(self(images), field))
        if flip:
            features = 0.5 * (features + _as_float32(getattr(self(torch.flip(images, dims=[3])), field)))
        if normalize:
            features = F.normalize(features, p=2.0, dim=1, eps=1e-12)
        return features

    @contextmanager
    def inference_options(self, *, pooling: str | None = None, pool_lambda: float = 0.5, gem_p: float = 3.0,
                          leaky_relu: float | None = None) -> Iterator["ReidModel"]:
        """Run with Group Loss++'s test-time switches; the trained modules come back on exit.

        ``pooling`` (with ``pool_lambda`` for "mix", ``gem_p`` for "gem"): another global
        pooling in place of the trained one (see ``set_pooling``). ``leaky_relu``: the slope of
        the trunk's final activation (0 makes it a plain ReLU; see ``set_leaky_relu``). None
        leaves that part as trained. On exit, also after an exception, the very modules the
        model had before are put back (weights, and the trained activation, untouched)::

            with model.inference_options(pooling="mix", pool_lambda=0.5, leaky_relu=0.1):
                features = extract_features(model, loader)
        """
        trained_pool = self.pool
        trained_trunk = dict(self.backbone.named_modules(remove_duplicate=False)) if leaky_relu is not None else {}
        try:
            if pooling is not None:
                self.set_pooling(pooling, gem_p=gem_p, pool_lambda=pool_lambda)
            if leaky_relu is not None:
                self.set_leaky_relu(leaky_relu)
            yield self
        finally:
            self.pool = trained_pool
            _restore_submodules(self.backbone, trained_trunk)

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


def _as_float32(features: torch.Tensor) -> torch.Tensor:
    """float32 features (e.g. of a half-precision model); float32 ones unchanged, so a traced graph gets no Cast."""
    return features if features.dtype == torch.float32 else features.float()


def _restore_submodules(root: nn.Module, trained: dict[str, nn.Module]) -> None:
    """Put back every submodule of ``root`` that was replaced since ``trained`` (name -> module) was taken."""
    current = dict(root.named_modules(remove_duplicate=False))
    for name, module in trained.items():
        if name and current.get(name) is not module:
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class EmbeddingModule(nn.Module):
    """``images -> embeddings``: a model with fixed ``embed`` options, as one tensor-to-tensor module.

    What ONNX export traces (a graph cannot return a dataclass) and what a deployment runs:
    ``forward(images) == model.embed(images, feature=..., flip=..., normalize=...)``.
    """

    def __init__(self, model: nn.Module, *, feature: str = "bn", normalize: bool = True, flip: bool = False) -> None:
        super().__init__()
        self.model = model
        self.feature, self.normalize, self.flip = check_feature(feature), bool(normalize), bool(flip)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images, feature=self.feature, flip=self.flip, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"feature={self.feature}, flip={self.flip}, normalize={self.normalize}"


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
    freeze_bn: bool = False,
    freeze_layers: tuple[str, ...] | list[str] = (),
) -> ReidModel:
    """A ``ReidModel`` over the timm trunk ``backbone`` with ``num_classes`` training identities.

    pretrained / last_stride / leaky_relu: see ``build_backbone``; pooling: "avg" | "max" |
    "gem" (p = gem_p, learned unless gem_learnable=False) | "mix" (pool_lambda * max +
    (1 - pool_lambda) * avg); embedding_dim: > 0 adds a linear layer to that many dimensions;
    neck: BNNeck between embeddings and classifier; freeze_bn, freeze_layers: see ``ReidModel``.
    """
    pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable, pool_lambda=pool_lambda)
    trunk = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride, leaky_relu=leaky_relu)
    return ReidModel(trunk, num_classes, pool=pool, embedding_dim=embedding_dim, neck=neck,
                     channels_last=channels_last, freeze_bn=freeze_bn, freeze_layers=freeze_layers)
