"""Dataset builders by name: a plain dict, a public register function, one build function.

A builder is any callable ``builder(root, **kwargs) -> ReidDataset``. Adding a dataset means
one new file here and one line in ``DATASETS`` (or a ``register_dataset`` call from user code).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import Item, ReidDataset
from .custom import load_custom
from .dukemtmcreid import load_dukemtmcreid
from .market1501 import load_market1501

DatasetBuilder = Callable[..., ReidDataset]

DATASETS: dict[str, DatasetBuilder] = {
    "market1501": load_market1501,
    "dukemtmcreid": load_dukemtmcreid,
    "custom": load_custom,
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


__all__ = ["DATASETS", "Item", "ReidDataset", "build_dataset", "register_dataset"]
