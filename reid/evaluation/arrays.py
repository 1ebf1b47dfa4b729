"""Checked conversion of the evaluation functions' inputs (numpy, torch or lists) to numpy.

Every metric module takes its arrays through these, so a wrong shape or dtype is one error that
names the argument and what was expected.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def as_numpy(x: ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` (numpy, torch on any device, or a nested list) as a numpy array, with ``ndim`` dimensions if given."""
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # pragma: no cover - numpy's own message is kept as the cause
            raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}") from err
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr


def as_labels(x: ArrayLike, name: str, length: int, expected: str) -> np.ndarray:
    """1-D integer labels of ``length`` entries as int64 (``expected`` says what they align with)."""
    arr = as_numpy(x, name)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D array of length {length} ({expected}), got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
