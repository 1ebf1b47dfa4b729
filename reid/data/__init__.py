"""The re-ID data layer: datasets, the identity sampler, transforms and loaders.

Dataset functions import only the standard library; the sampler, transforms, loaders and the
synthetic generator (which need torch / albumentations / OpenCV) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .datasets import (
    DATASETS,
    Item,
    ReidDataset,
    SourceOffsets,
    build_dataset,
    combine_datasets,
    describe_sources,
    register_dataset,
)

_LAZY = {
    "IdentityBatchSampler": "reid.data.samplers",
    "IMAGENET_MEAN": "reid.data.transforms",
    "IMAGENET_STD": "reid.data.transforms",
    "build_transforms": "reid.data.transforms",
    "read_image": "reid.data.transforms",
    "ImageDataset": "reid.data.loaders",
    "build_train_loader": "reid.data.loaders",
    "build_test_loader": "reid.data.loaders",
    "make_synthetic_market": "reid.data.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "Item", "ReidDataset", "SourceOffsets", "build_dataset", "combine_datasets", "describe_sources",
           "register_dataset", *_LAZY]
