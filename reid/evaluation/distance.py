"""Distances between feature sets: one definition, the same bits on every machine.

The distance of two feature rows ``x`` and ``y`` is *defined* as the float32 rounding of a
float64 evaluation with a fixed order of operations:

* ``euclidean``, the squared Euclidean distance of the field's shared code:
  ``sum_k (x_k - y_k)^2``;
* ``cosine``: ``1 - sum_k x_k y_k / (max(|x|, 1e-12) * max(|y|, 1e-12))``, clipped to [0, 2],
  with ``|x| = sqrt(sum_k x_k^2)`` (the ``eps`` of ``torch.nn.functional.normalize``);

where every sum over ``k`` is a pairwise tree in one fixed order (see :func:`tree_sum`). Each
step is a single IEEE-754 operation, so the value depends on the two rows only: not on the
BLAS, the SIMD width (AVX2 or AVX-512), the thread count, the device or the shape of the
block it is computed in. This is the "canonical" distance; rankings order the gallery by
(canonical distance, gallery index), so every metric is a function of the features alone.

Evaluating the tree for every pair would be slow, so two fast paths come with rigorous error
bounds (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, section 3.1: a dot
product of length ``d`` computed in any order, with or without FMA, is within
``gamma_d = d u / (1 - d u)`` of the exact value, relative to ``sum_k |x_k y_k|``):

* :meth:`FeatureDistances.exact` (dense blocks, :func:`pairwise_distance`): a float64 matrix
  product, whose error is far below float32's resolution. Where the bound still straddles a
  float32 rounding boundary (about one entry in 10^5, and every exact zero such as an item's
  distance to itself) the entry is recomputed canonically. The result is the canonical value
  of every entry, at the cost of one float64 product.
* :meth:`FeatureDistances.fast` (rankings straight from features): a float32 product plus a
  bound ``e`` per query row with ``|fast - canonical| <= e`` for every entry. Code that ranks
  (``reid.evaluation.ordering``) decides each comparison the fast values decide and asks
  :meth:`FeatureDistances.pairs` for the canonical value of the few they do not.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

import numpy as np
import torch

from ..progress import progress_bar
from .arrays import ArrayLike

METRICS = ("euclidean", "cosine")
# Elements per dense block (float64 temporaries: 32 MiB) and per batch of canonical pairs.
_BLOCK_ELEMENTS = 1 << 22
_PAIR_ELEMENTS = 1 << 18
# Gallery columns per tile of a product (see FeatureDistances._product).
_COLUMN_TILE = 2048
# The largest gallery whose augmented copy (-2g, 1, |g|^2) is kept (64M elements: 256 MiB in float32).
_AUGMENTED_ELEMENTS = 1 << 26
# The cosine's denominator floor, as torch.nn.functional.normalize's eps.
_NORM_EPS = 1e-12
_U32 = 2.0 ** -24  # unit roundoff of float32
_U64 = 2.0 ** -53

Rows = Union[slice, np.ndarray]


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


def tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums of a 2-D float64 tensor in one fixed pairwise order: element ``k + h`` is added
    to element ``k`` with ``h`` = half the width (an odd last element waits a level), until one
    column is left. Element-wise additions only, each one IEEE operation, so the result does not
    depend on the machine (``torch.sum`` vectorises by the CPU's SIMD width)."""
    while x.shape[1] > 1:
        width = x.shape[1]
        half = width // 2
        head = x[:, :half] + x[:, half:2 * half]
        x = torch.cat([head, x[:, 2 * half:]], dim=1) if width % 2 else head
    return x[:, 0] if x.shape[1] else torch.zeros(x.shape[0], dtype=x.dtype)


# torch's per-backend float32 matmul settings ("none": inherit, "ieee": full float32, "tf32"/"bf16":
# reduced); set_float32_matmul_precision rewrites them, so they are saved and put back one by one.
_MATMUL_SETTINGS = (("mkldnn", "matmul"), ("cuda", "matmul"))


def _matmul_settings() -> list[tuple[object, str]]:
    found = []
    for backend, part in _MATMUL_SETTINGS:
        holder = getattr(getattr(torch.backends, backend, None), part, None)
        if holder is not None and hasattr(holder, "fp32_precision"):
            found.append((holder, holder.fp32_precision))
    return found


@contextmanager
def full_float32_matmul() -> Iterator[None]:
    """Matrix products in true float32 (no TF32 or bfloat16 shortcuts), which the error
    bounds assume. Nothing is touched when that is already the setting (torch's default), so a
    training run around an evaluation computes exactly as it would without one; otherwise the
    caller's settings come back afterwards, every backend's own included."""
    saved = _matmul_settings()
    reduced = any(value not in ("none", "ieee") for _, value in saved)
    if torch.get_float32_matmul_precision() == "highest" and not reduced:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    for holder, _ in saved:
        holder.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        for holder, value in saved:
            holder.fp32_precision = value


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")


def _row_index(rows: Rows, count: int) -> np.ndarray:
    return np.arange(count)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)


class FeatureDistances:
    """Canonical distances between the rows of ``query`` and of ``gallery`` (module docstring).

    ``query``/``gallery`` are numpy arrays or torch tensors (any device: products run there,
    canonical recomputations on the CPU). float64 features are evaluated from their float64
    values; every other dtype as float32. Raises ValueError for NaN/inf features or norms so
    large that float32 distances would overflow.
    """

    def __init__(self, query: ArrayLike, gallery: ArrayLike, metric: str = "euclidean", *,
                 names: tuple[str, str] = ("query_features", "gallery_features")) -> None:
        _check_metric(metric)
        q, g = as_feature_pair(query, gallery, *names)
        self.metric = metric
        self.dtype = torch.float64 if torch.float64 in (q.dtype, g.dtype) else torch.float32
        self.query = q.to(self.dtype)
        # one set against itself (re-ranking's joint set, k-means++): every copy made once
        self.same_set = query is gallery
        self.gallery = self.query if self.same_set else g.to(device=q.device, dtype=self.dtype)
        self.device = q.device
        self.num_query, self.num_gallery, self.dim = q.shape[0], g.shape[0], q.shape[1]
        for name, feats in zip(names, (self.query,) if self.same_set else (self.query, self.gallery)):
            if not _all_finite(feats):
                raise ValueError(f"{name} contains NaN or inf; expected finite features")
        q_norm = _float64_norms(self.query)
        g_norm = q_norm if self.same_set else _float64_norms(self.gallery)
        # (|q| + max |g|)^2 bounds sum_k |x_k y_k| terms of every entry of the row (euclidean)
        largest = float(g_norm.max()) if self.num_gallery else 0.0
        self._scale = ((q_norm.cpu().numpy() + largest) ** 2) * (1 + 1e-6)
        if self._scale.size and float(self._scale.max()) > float(np.finfo(np.float32).max) / 8:
            raise ValueError(f"features too large for float32 distances (norms up to "
                             f"{max(largest, float(q_norm.max())):.3g}); expected smaller features")
        self._cache: dict[str, torch.Tensor] = {}

    def gallery_subset(self, keep: np.ndarray) -> "FeatureDistances":
        """The same query against the gallery rows ``keep`` (a bool mask or indices)."""
        index = torch.as_tensor(np.flatnonzero(keep) if np.asarray(keep).dtype == bool else keep,
                                device=self.device)
        return FeatureDistances(self.query, self.gallery.index_select(0, index), self.metric)

    # ------------------------------------------------------------------ bounds

    def _bound(self, rows: np.ndarray, unit: float, *, to_float32: bool = False) -> np.ndarray:
        """Per query row, a bound on |product - canonical| for a product with roundoff ``unit``.

        float32 product against the float32 canonical value: euclidean (d+4)u S for the product
        plus u S for rounding the canonical value (S = (|q| + max |g|)^2), doubled; cosine
        (2d+7)u (normalisation, product, ``1 - x``, rounding), with slack. float64 product against
        the float64 canonical evaluation (both trees' errors): (2d+4)u S, doubled.
        ``to_float32``: a float64 product rounded to float32 and compared with the float32
        canonical value (two more float32 roundings).
        """
        d = self.dim + 8
        tiny = self.dim * (2.0 ** -120 if unit == _U32 else 2.0 ** -1000)  # flushed subnormal products
        euclidean = self.metric == "euclidean"
        if unit == _U32:
            factor = (2 if euclidean else 3) * d * _U32
        else:
            factor = 4 * d * _U64 + (2 * _U32 if to_float32 else 0.0)
        scale = self._scale[rows] if euclidean else np.ones(rows.size)
        return scale * factor + tiny

    # ------------------------------------------------------------------ products

    def _operands(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(query, gallery, query_sq, gallery_sq) for products in ``dtype`` (cosine: unit rows, no
        norms), cached. A set of more than ``_AUGMENTED_ELEMENTS`` that is not in ``dtype``
        comes back as it is (only its norms in ``dtype``): ``_tile`` converts it a tile at a time,
        so no float64 copy of a large set is held."""
        key = str(dtype)
        if key + "q" not in self._cache:
            sets = [self.query] if self.same_set else [self.query, self.gallery]
            made = [self._converted(x, dtype) for x in sets]
            (q, q_sq), (g, g_sq) = made[0], made[-1]
            self._cache.update({key + "q": q, key + "g": g, key + "qs": q_sq, key + "gs": g_sq})
        return (self._cache[key + "q"], self._cache[key + "g"], self._cache[key + "qs"], self._cache[key + "gs"])

    def _converted(self, x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``x`` in ``dtype``, or as it is when large; its squared norms in ``dtype``, or None for cosine)."""
        if x.dtype != dtype and x.numel() > _AUGMENTED_ELEMENTS:
            norms = None
            if self.metric == "euclidean":
                norms = torch.cat([_squared_norms(part.to(dtype)) for _, part in _row_chunks(x, None)])
            return x, norms
        return self._tile(x, dtype), (_squared_norms(x.to(dtype)) if self.metric == "euclidean" else None)

    def _tile(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of a set as the products take them: in ``dtype``, unit rows for cosine."""
        x = x.to(dtype)
        return x if self.metric == "euclidean" else torch.nn.functional.normalize(x, p=2, dim=1, eps=_NORM_EPS)

    def _product(self, rows: np.ndarray, dtype: torch.dtype, cols: slice = slice(None)) -> torch.Tensor:
        """rows x gallery[cols] distances by a matrix product in ``dtype`` (clamped like the canonical).

        Wide galleries are computed in tiles of columns: a tile of the gallery stays in the
        caches while the product runs (about 1.8x the throughput of one product against 60k
        columns at 512-d here)."""
        q, g, q_sq, g_sq = self._operands(dtype)
        index = torch.as_tensor(rows, device=self.device)
        queries = q.index_select(0, index)
        if queries.dtype != dtype:  # a large query set: its rows converted here
            queries = self._tile(queries, dtype)
        queries_sq = q_sq.index_select(0, index) if q_sq is not None else None
        columns = range(self.num_gallery)[cols]
        g, g_sq = g[cols], (g_sq[cols] if g_sq is not None else None)
        out = torch.empty((index.numel(), len(columns)), dtype=dtype, device=self.device)
        if self.metric == "euclidean":
            # |q|^2 + |g|^2 - 2 q.g as one product of augmented rows, (q, |q|^2, 1) . (-2g, 1, |g|^2):
            # no broadcast sum of the norms and no separate pass for them (a product of d + 2 terms
            # whose absolute sum is at most (|q| + |g|)^2, inside the bound of _bound)
            queries = _augmented(queries, queries_sq, first=True)
        with full_float32_matmul():
            whole = self._augmented_gallery(dtype) if self.metric == "euclidean" else None
            for start in range(0, len(columns), _COLUMN_TILE):
                tile = slice(start, start + _COLUMN_TILE)
                operand = g[tile]
                if whole is not None:
                    operand = whole[cols][tile]
                else:
                    if operand.dtype != dtype:  # a large gallery: a tile at a time
                        operand = self._tile(operand, dtype)
                    if self.metric == "euclidean":
                        operand = _augmented(operand * -2, g_sq[tile], first=False)
                # into a contiguous temporary (a product written into a column tile of ``out``, a
                # strided view, runs at about half the speed), then clamped into place in one pass;
                # a single tile is ``out`` itself (contiguous): the product goes there, clamped in place
                single = len(columns) <= _COLUMN_TILE
                product = torch.mm(queries, operand.t(), out=out) if single else torch.mm(queries, operand.t())
                if self.metric == "euclidean":
                    torch.clamp(product, min=0, out=out[:, tile])
                else:
                    torch.clamp(product.neg_().add_(1), min=0, max=2, out=out[:, tile])
        return out

    def _augmented_gallery(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The gallery's augmented rows (-2g, 1, |g|^2), made once when they take at most
        ``_AUGMENTED_ELEMENTS`` (else each tile makes its own: a copy of a large gallery would
        cost memory on the scale of the features)."""
        key = str(dtype) + "aug"
        if key not in self._cache and self.num_gallery * (self.dim + 2) <= _AUGMENTED_ELEMENTS:
            _, g, _, g_sq = self._operands(dtype)
            self._cache[key] = _augmented(g * -2, g_sq, first=False)
        return self._cache.get(key)

    def fast_bound(self, rows: Rows = slice(None)) -> np.ndarray:
        """The bound of :meth:`fast` for query ``rows``."""
        index = _row_index(rows, self.num_query)
        if self.dtype == torch.float64:
            return self._bound(index, _U64, to_float32=True)
        return self._bound(index, _U32)

    def fast(self, rows: Rows, cols: slice = slice(None)) -> tuple[torch.Tensor, np.ndarray]:
        """(float32 distances of ``rows`` x gallery[cols] on the features' device, per-row bound
        ``e``): every entry is within ``e`` of its canonical value. float64 features: a float64
        product."""
        index = _row_index(rows, self.num_query)
        if self.dtype == torch.float64:
            return self._product(index, torch.float64, cols).to(torch.float32), self.fast_bound(index)
        return self._product(index, torch.float32, cols), self.fast_bound(index)

    def exact(self, rows: Rows, cols: slice = slice(None)) -> torch.Tensor:
        """Canonical float32 distances of ``rows`` x gallery[cols], on the features' device.

        Computed in tiles of at least 256 rows (or all of them) by the columns that keep a tile
        within ``_BLOCK_ELEMENTS``: a wide gallery is then read once per 256 rows, not once
        per few rows."""
        index = _row_index(rows, self.num_query)
        columns = range(self.num_gallery)[cols]
        out = torch.empty((index.size, len(columns)), dtype=torch.float32, device=self.device)
        row_step = max(1, min(index.size, max(256, _BLOCK_ELEMENTS // max(len(columns), 1))))
        col_step = max(1, _BLOCK_ELEMENTS // row_step)
        for start in range(0, index.size, row_step):
            part = index[start:start + row_step]
            bound = torch.as_tensor(self._bound(part, _U64), device=self.device)[:, None]
            for first in range(0, len(columns), col_step):
                tile = columns[first:first + col_step]
                out[start:start + part.size, first:first + len(tile)] = self._exact_tile(
                    part, slice(tile.start, tile.stop, tile.step), bound)
        return out

    def _exact_tile(self, part: np.ndarray, cols: slice, bound: torch.Tensor) -> torch.Tensor:
        wide = self._product(part, torch.float64, cols)
        # round(wide - bound) == round(wide + bound): the canonical value rounds there too
        # (rounding is monotone); in place, the tile's float64 temporaries are the cost
        wide.sub_(bound).clamp_(min=0)
        block = wide.to(torch.float32)
        wide.add_(2 * bound)
        if self.metric == "cosine":
            wide.clamp_(max=2)
        r, c = torch.nonzero(block != wide.to(torch.float32), as_tuple=True)
        if r.numel():
            col_index = np.arange(self.num_gallery)[cols]
            fixed = self.pairs(part[r.cpu().numpy()], col_index[c.cpu().numpy()])
            block[r, c] = torch.from_numpy(fixed).to(self.device)
        return block

    # ------------------------------------------------------------------ canonical values

    def _cpu(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The features on the CPU (and canonical norms for cosine), made once. Rows are taken
        to float64 as they are needed (exactly), so no float64 copy of a set is ever held."""
        if "cpu_q" not in self._cache:
            q = self.query.detach().cpu()
            g = q if self.same_set else self.gallery.detach().cpu()
            made = {"cpu_q": q, "cpu_g": g}
            if self.metric == "cosine":
                qn = _canonical_norms(q)
                made.update(cpu_qn=qn, cpu_gn=qn if self.same_set else _canonical_norms(g))
            # one update: ranking threads share this object, and may read the cache meanwhile
            self._cache.update(made)
        return self._cache["cpu_q"], self._cache["cpu_g"], self._cache.get("cpu_qn"), self._cache.get("cpu_gn")

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Canonical distances of the pairs (query ``rows[i]``, gallery ``cols[i]``), float32."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.empty(rows.size, dtype=np.float32)
        if rows.size == 0:
            return out
        q, g, qn, gn = self._cpu()
        step = max(1, _PAIR_ELEMENTS // max(self.dim, 1))
        for start in range(0, rows.size, step):
            r = torch.from_numpy(rows[start:start + step])
            c = torch.from_numpy(cols[start:start + step])
            a, b = q.index_select(0, r).double(), g.index_select(0, c).double()
            if self.metric == "euclidean":
                diff = a - b
                value = tree_sum(diff * diff)
            else:
                value = 1 - tree_sum(a * b) / (qn.index_select(0, r) * gn.index_select(0, c))
                value = value.clamp_(min=0, max=2)
            out[start:start + step] = value.to(torch.float32).numpy()
        return out


def _augmented(rows: torch.Tensor, squares: torch.Tensor, first: bool) -> torch.Tensor:
    """(rows, squares, 1) (``first``) or (rows, 1, squares): the operands of the euclidean product."""
    ones = torch.ones_like(squares)
    extra = (squares, ones) if first else (ones, squares)
    return torch.cat([rows, extra[0][:, None], extra[1][:, None]], dim=1)


def _row_chunks(x: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, those rows in ``dtype``) over ``x`` in chunks of about 256k elements (the
    temporaries of a whole-set operation would be several times the set)."""
    step = max(1, _PAIR_ELEMENTS // max(x.shape[1], 1))
    for start in range(0, x.shape[0], step):
        part = x[start:start + step]
        yield slice(start, start + step), part if dtype is None else part.to(dtype)


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Row sums of squares in ``x``'s dtype (any order: the products' operands)."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for rows, part in _row_chunks(x, None):
        out[rows] = part.pow(2).sum(dim=1)
    return out


def _all_finite(x: torch.Tensor) -> bool:
    # a finite sum means every element is finite (NaN and inf propagate); only a sum that
    # overflowed, or a set that is not finite, needs the element-wise look
    if bool(torch.isfinite(x.sum())):  # in x's dtype: a dtype= argument would convert a copy first
        return True
    return all(bool(torch.isfinite(part).all()) for _, part in _row_chunks(x, None))


def _canonical_norms(x: torch.Tensor) -> torch.Tensor:
    """max(sqrt(tree_sum(x^2)), eps) per row of a CPU tensor, in float64."""
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for rows, part in _row_chunks(x):
        out[rows] = tree_sum(part * part).sqrt_()
    return out.clamp_(min=_NORM_EPS)


def _float64_norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms in float64 (for the error bounds; any summation order), on ``x``'s device."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for rows, part in _row_chunks(x):
        out[rows] = part.pow(2).sum(dim=1).sqrt()
    return out


def pairwise_distance(x: ArrayLike, y: ArrayLike, metric: str = "euclidean",
                      chunk_size: int | None = None, *, progress: bool | None = None) -> ArrayLike:
    """Canonical distance between every row of ``x`` (m x d) and every row of ``y`` (n x d).

    Args:
        x, y: feature matrices, numpy arrays or torch tensors (any device).
        metric: ``"euclidean"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``, in [0, 2]).
        chunk_size: rows of ``x`` per chunk (default: about 4M entries). The values do not
            depend on it: every entry is the canonical value (module docstring).
        progress: a bar over the rows of ``x`` (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        m x n float32 distances: a torch tensor on ``x``'s device if ``x`` is a tensor, else a
        numpy array.
    """
    _check_metric(metric)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: expected a positive number of rows or None")
    space = FeatureDistances(x, y, metric, names=("x", "y"))
    m, n = space.num_query, space.num_gallery
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // max(n, 1))
    out = torch.empty((m, n), dtype=torch.float32, device=space.device)
    with progress_bar(total=m, desc="distances", unit="row", progress=progress) as bar:
        for start in range(0, m, chunk_size):
            stop = min(m, start + chunk_size)
            out[start:stop] = space.exact(slice(start, stop))
            bar.update(stop - start)
    return out if isinstance(x, torch.Tensor) else out.numpy()
