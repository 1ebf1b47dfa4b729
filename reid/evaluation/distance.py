"""Pairwise distances between two feature sets, computed in row chunks.

``euclidean`` is the *squared* Euclidean distance, as in the field's shared code
(torchreid's ``compute_distance_matrix``): ``|x|^2 + |y|^2 - 2 x.y``. It is evaluated with the
same operations in the same order (a broadcast add, then ``addmm_`` with ``alpha=-2``), so with
chunks of at least 64 rows the values match that function bit for bit on the same BLAS; the
re-ranking relies on this to reproduce the classic neighbour lists exactly (see rerank.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..progress import progress_bar
from .arrays import ArrayLike

METRICS = ("euclidean", "cosine")
# About 64 MiB of float32 output per chunk with a 15,913-wide gallery; chunks below 64 rows
# make MKL switch to a small-matrix kernel that rounds differently from a full product.
DEFAULT_CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 64


def as_float_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """A float32/float64 torch view of ``x`` (no copy for float numpy arrays and tensors)."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t


def as_feature_pair(x: ArrayLike, y: ArrayLike, x_name: str = "x", y_name: str = "y") -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature sets as float tensors, checked to be 2-D (rows are samples) and equally wide."""
    xt, yt = as_float_tensor(x, x_name), as_float_tensor(y, y_name)
    if xt.dim() != 2 or yt.dim() != 2:
        raise ValueError(f"{x_name} and {y_name} must be 2-D (rows are samples); "
                         f"got shapes {tuple(xt.shape)} and {tuple(yt.shape)}")
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(f"feature widths differ: {x_name} is {tuple(xt.shape)}, {y_name} is {tuple(yt.shape)}; "
                         "expected equal widths")
    return xt, yt


def squared_euclidean_block(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """``a_sq[i] + b_sq[j] - 2 a_i.b_j`` without clamping (the classic formula, op for op).

    ``a_sq``/``b_sq`` are ``a.pow(2).sum(1)``/``b.pow(2).sum(1)``; passing them in lets callers
    compute the norms once. Tiny negative values (rounding) are kept: the classic re-ranking
    squares these distances, so clamping would change its neighbour order.
    """
    if out is None:
        out = a_sq[:, None] + b_sq[None, :]
    else:
        torch.add(a_sq[:, None], b_sq[None, :], out=out)
    out.addmm_(a, b.t(), beta=1, alpha=-2)
    return out


def _row_chunks(num_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges of ``chunk_size``; a short tail is merged into the previous chunk."""
    bounds = list(range(0, num_rows, chunk_size)) + [num_rows]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] < MIN_CHUNK_ROWS:
        last = ranges.pop()
        ranges[-1] = (ranges[-1][0], last[1])
    return ranges


def pairwise_distance(x: ArrayLike, y: ArrayLike, metric: str = "euclidean",
                      chunk_size: int | None = None, *, progress: bool | None = None) -> ArrayLike:
    """Distance between every row of ``x`` (m x d) and every row of ``y`` (n x d).

    Args:
        x, y: feature matrices, numpy arrays or torch tensors (any device). float64 stays
            float64; every other dtype is computed in float32.
        metric: ``"euclidean"`` (squared Euclidean, clamped at 0 so rounding never yields a
            negative distance) or ``"cosine"`` (``1 - cos``, clamped to [0, 2]).
        chunk_size: rows of ``x`` per chunk. Only the m x n result is held in full; temporaries
            are chunk_size x n (plus chunk_size x d for cosine). Default: about 16M elements
            per chunk (at least 64 rows).
        progress: a bar over the rows of ``x`` (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        m x n distances: a torch tensor on ``x``'s device if ``x`` is a tensor, else a numpy array.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    xt, yt = as_feature_pair(x, y)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: expected a positive number of rows or None")
    dtype = torch.float64 if torch.float64 in (xt.dtype, yt.dtype) else torch.float32
    xt = xt.to(dtype)
    yt = yt.to(device=xt.device, dtype=dtype)
    m, n = xt.shape[0], yt.shape[0]
    if chunk_size is None:
        chunk_size = max(MIN_CHUNK_ROWS, DEFAULT_CHUNK_ELEMENTS // max(n, 1))
    out = torch.empty((m, n), dtype=dtype, device=xt.device)
    with progress_bar(total=m, desc="distances", unit="row", progress=progress) as bar:
        if metric == "euclidean":
            y_sq = yt.pow(2).sum(dim=1)
            for start, stop in _row_chunks(m, chunk_size):
                a = xt[start:stop]
                block = squared_euclidean_block(a, yt, a.pow(2).sum(dim=1), y_sq, out=out[start:stop])
                block.clamp_(min=0)
                bar.update(stop - start)
        else:
            y_unit = torch.nn.functional.normalize(yt, p=2, dim=1)
            for start, stop in _row_chunks(m, chunk_size):
                x_unit = torch.nn.functional.normalize(xt[start:stop], p=2, dim=1)
                block = out[start:stop]
                torch.mm(x_unit, y_unit.t(), out=block)
                # 1 - cos, written in place: block = -block + 1
                block.neg_().add_(1).clamp_(min=0, max=2)
                bar.update(stop - start)
    if isinstance(x, torch.Tensor):
        return out
    return out.numpy()
