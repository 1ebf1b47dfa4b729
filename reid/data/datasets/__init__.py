"""Dataset builders by name: a plain dict, a public register function, one build function.

A builder is any callable ``builder(root, **kwargs) -> ReidDataset``. Adding a dataset means
one new file here and one line in ``DATASETS`` (or a ``register_dataset`` call from user code).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import PROTOCOLS, Item, ReidDataset
from .combine import SourceOffsets, combine_datasets, describe_sources
from .cars196 import load_cars196
from .cub200 import load_cub200
from .cuhk03_np import load_cuhk03_np
from .custom import load_custom
from .dukemtmcreid import load_dukemtmcreid
from .fashion_mnist import load_fashion_mnist
from .inshop import load_inshop
from .market1501 import load_market1501
from .msmt17 import load_msmt17
from .sop import load_sop

DatasetBuilder = Callable[..., ReidDataset]

DATASETS: dict[str, DatasetBuilder] = {
    "market1501": load_market1501,
    "dukemtmcreid": load_dukemtmcreid,
    "msmt17": load_msmt17,
    "cuhk03_np": load_cuhk03_np,
    "custom": load_custom,
    # Deep-metric-learning retrieval benchmarks (the Group Loss papers): class labels, camid 0,
    # protocol "leave_one_out" (query = gallery) or "query_gallery" (In-Shop).
    "cub200": load_cub200,
    "cars196": load_cars196,
    "sop": load_sop,
    "inshop": load_inshop,
    "fashion_mnist": load_fashion_mnist,
}


def register_dataset(name: str, builder: DatasetBuilder, *, overwrite: bool = False) -> None:
    """Make ``build_dataset(name, root, **kwargs)`` call ``builder(root, **kwargs)``."""
    if name in DATASETS and not overwrite and DATASETS[name] is not builder:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    DATASETS[name] = builder


def build_dataset(name: str, root: str | os.PathLike, **kwargs: object) -> ReidDataset:
    """Load the dataset called ``name`` (a key of ``DATASETS``) from ``root``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, **kwargs)


__all__ = ["DATASETS", "PROTOCOLS", "Item", "ReidDataset", "SourceOffsets", "build_dataset", "combine_datasets",
           "describe_sources", "register_dataset"]
