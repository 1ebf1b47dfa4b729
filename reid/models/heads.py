"""What follows the trunk: global pooling, BNNeck and the identity classifier.

Pooling modules map a feature map B x C x H x W to B x C.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("avg", "max", "gem", "mix")


class AvgPool(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class MaxPool(nn.Module):
    """Global max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class GeM(nn.Module):
    """Generalized-mean pooling, (mean(clamp(x, eps) ** p)) ** (1 / p).

    Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
    TPAMI 2018: p = 1 is average pooling and p -> inf tends to max pooling; p is learned
    (initialised at 3) or fixed. The clamp keeps the fractional power defined and its gradient
    finite at zero activations.
    """

    def __init__(self, p: float = 3.0, *, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"gem_p: expected p > 0, got {p!r}")
        if eps <= 0:
            raise ValueError(f"GeM eps: expected eps > 0, got {eps!r}")
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.tensor([float(p)]))
        else:
            # A plain attribute, not a buffer: a fixed p belongs to the configuration, and the
            # state_dict stays interchangeable with the parameter-free pools.
            self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        p = self.p.item() if isinstance(self.p, torch.Tensor) else self.p
        return f"p={p:.4g}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class MixPool(nn.Module):
    """``lam * max + (1 - lam) * avg``: the pooling mix of the Group Loss++ inference strategies
    (Elezi et al., TPAMI). ``lam`` is a fixed setting, not a learned weight, so it can be
    switched at test time for a model trained with another pooling."""

    def __init__(self, lam: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"pool_lambda: expected a value in [0, 1], got {lam!r}")
        self.lam = float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * x.amax(dim=(2, 3)) + (1.0 - self.lam) * x.mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


def build_pooling(
    name: str, *, gem_p: float = 3.0, gem_learnable: bool = True, pool_lambda: float = 0.5
) -> nn.Module:
    """A pooling module by name: "avg", "max", "gem" or "mix"."""
    if name == "avg":
        return AvgPool()
    if name == "max":
        return MaxPool()
    if name == "gem":
        return GeM(gem_p, learnable=gem_learnable)
    if name == "mix":
        return MixPool(pool_lambda)
    raise ValueError(f"pooling: unknown name {name!r}; expected one of {', '.join(POOLINGS)}")


class BNNeck(nn.BatchNorm1d):
    """BatchNorm between the embedding and the classifier, with its shift frozen at zero.

    Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification",
    CVPRW 2019: metric losses see the features before the BN, the classifier sees them after;
    without a shift the normalised features stay centred on the hypersphere the softmax
    separates. Weight 1, bias 0 and ``bias.requires_grad = False`` (a later
    ``model.requires_grad_(True)`` would unfreeze it).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


def build_classifier(feature_dim: int, num_classes: int) -> nn.Linear:
    """Bias-free linear identity classifier, weights ~ N(0, 0.001^2) as in Bag of Tricks."""
    if num_classes < 1:
        raise ValueError(f"num_classes: expected at least 1 training identity, got {num_classes!r}")
    classifier = nn.Linear(feature_dim, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)
    return classifier
