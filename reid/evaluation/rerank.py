"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) without dense N x N arrays.

Exactly the classic function (the authors' Python port as shipped by torchreid, fast-reid and
most re-ID code, ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``), computed
from what it actually uses. With N = q + g and the joint matrix ``M`` that the classic builds::

    M = [[q_q, q_g], [q_g^T, g_g]] ** 2            (element-wise square, float32)
    D = (M / max(M, axis=0))^T                     (D[a, b] = M[b, a] / max_k M[k, a])

(``D`` row ``a`` is column ``a`` of ``M`` over that column's maximum; for symmetric inputs it is
row ``a`` over its row maximum.) The classic then takes ``argsort(D)`` and keeps only

* the k1+1, round(k1/2)+1 and k2 nearest of every row (the k-reciprocal sets, their expansion
  and the query expansion), so we keep the k1+1 nearest and the row maxima: O(N k1);
* ``V`` with |R*(i)| non-zeros per row: a scipy CSR matrix; the k2 query expansion is a sparse
  product with an averaging matrix;
* the Jaccard distance of query rows, ``m(i, j) = sum_k min(V[i, k], V[j, k])``, which only
  pairs (i, j) sharing a non-zero column can change from 0: found through the column index of
  ``V`` (the classic's inverted index), accumulated per block of queries;
* the q x g block of ``D``, recomputed block by block into the output.

Memory: O(N (k1 + |R*| k2)) plus the q x g float32 output. ``rerank`` works from features: it
equals the classic fed the canonical distance matrices of ``reid.evaluation.distance`` (those of
``pairwise_distance``), on every machine. It sweeps the blocks of the symmetric N x N matrix
(each pair of blocks once) with float32 products, keeping each row's nearest and farthest items
by those; the canonical values of the kept items, with the products' error bound, then settle
every neighbour list and row maximum (a row they cannot settle is recomputed canonically), and
the q x g block is computed canonically.

Ties: the classic sorts with numpy's default (unstable) argsort, whose order among equal
distances is unspecified; here equal distances are ordered by index (stable). Without exact
ties in ``D`` the neighbour lists are identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ..progress import progress_bar
from .arrays import ArrayLike
from .distance import FeatureDistances, as_feature_pair
from .ordering import block_rows_for
from .protocol import JUNK_PID, Labels
from .rank import RankResult, check_ap, check_max_rank, rank_result

KNN_BACKENDS = ("torch", "faiss", "faiss-hnsw")
# Approximate neighbours (faiss HNSW graph): its degree, and the breadth of its build, of the
# neighbours' search and of the reflected search for the farthest (faiss's defaults are 32, 40, 16).
_HNSW_M = 32
_HNSW_BUILD = 40
_HNSW_SEARCH = 64
_HNSW_FAR_SEARCH = 32
# Approximate row maxima: the items farthest from the mean, which hold most rows' farthest item.
_FAR_POOL = 4096
# Sampled rows on which approximate search is compared with exact search.
_QUALITY_ROWS = 256
log = logging.getLogger("reid")
# Extra neighbours kept beyond k1+1 so that ties, the products' rounding and the float32
# normalisation can be settled without recomputing a row (rows where they cannot be are
# recomputed in full); farthest items kept per row to settle its maximum the same way.
_MARGIN = 8
_FARTHEST = 4
# Fewest rows per block of the sweep (a last short block joins the one before).
_MIN_BLOCK_ROWS = 64
# Rows per block of the symmetric distance sweep; GEMMs of 2048 x 2048 run near peak.
_DEFAULT_BLOCK = 2048
# Jaccard step blocks: at most this many query x gallery pairs (a float64 accumulator, 32 MiB)
# and this many (query, column, gallery) triples (~60 bytes of temporaries each).
_JACCARD_ELEMENTS = 1 << 22
_JACCARD_TRIPLES = 1 << 20
# Rows per block of the k-reciprocal expansion (rows x (k1+1)^2 x (round(k1/2)+1) comparisons).
_SETS_ROWS = 512


# --------------------------------------------------------------------------- validation

def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise ValueError(f"k1={k1!r}: expected an integer >= 1")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k2={k2!r}: expected an integer with 1 <= k2 <= k1 + 1 = {k1 + 1}")
    if not isinstance(lambda_value, (int, float, np.floating, np.integer)) or not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value={lambda_value!r}: expected a number in [0, 1]")


def _check_finite(x: torch.Tensor | np.ndarray, name: str) -> None:
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not bool(finite):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")


def _neighbour_counts(k1: int, k2: int, n: int) -> tuple[int, int, int]:
    """Columns of ``argsort(D)`` the classic reads: k1+1, round(k1/2)+1, k2 (at most n)."""
    # np.around rounds half to even, as the classic does (k1 = 5 -> 2, k1 = 7 -> 4).
    half = int(np.around(k1 / 2.0))
    return min(k1 + 1, n), min(half + 1, n), min(k2, n)


# --------------------------------------------------------------------------- neighbour lists

def _sq32(x: np.ndarray) -> np.ndarray:
    """The classic's ``np.power(d, 2).astype(np.float32)``: squared in the input dtype."""
    return np.square(x).astype(np.float32, copy=False)


def _normalise(sq: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """float32 ``sq / row_max`` per row, rounded exactly as the classic's division."""
    return np.divide(sq, row_max[:, None], dtype=np.float32)


def _sorted_neighbours(keys: np.ndarray, cols: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row's candidates by (key, column): the first ``count`` columns and their keys."""
    order = np.lexsort((cols, keys), axis=1)[:, :count]
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(keys, order, axis=1)


def _stable_full_rows(keys: np.ndarray, count: int) -> np.ndarray:
    return np.argsort(keys, axis=1, kind="stable")[:, :count]


_EMPTY_COLUMN = 0xFFFFFFFF


def _pack(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """One int64 per (value, column) that sorts like (value, column): the float32 bits made
    order-preserving in the high half, the column in the low half."""
    bits = (values.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)  # -0.0 -> +0.0
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return (ordered.astype(np.int64) << 32) | columns.astype(np.int64)


def _unpack_values(keys: np.ndarray) -> np.ndarray:
    ordered = (keys >> 32).astype(np.int32)
    return (ordered ^ ((ordered >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)


def _unpack_columns(keys: np.ndarray) -> np.ndarray:
    return keys & _EMPTY_COLUMN


_EMPTY_KEY = int(_pack(np.array([np.inf], np.float32), np.array([_EMPTY_COLUMN]))[0])


def _smallest_packed(block: np.ndarray, width: int, col0: int) -> np.ndarray:
    """Per row of ``block``, the ``width`` smallest (value, column) as sorted packed keys.

    A threshold per row (the width-th smallest of a sample of columns) bounds the row's
    width-th smallest from above, so only entries <= it are packed and sorted.
    """
    rows, cols = block.shape
    sample = np.linspace(0, cols - 1, num=max(8 * width, 256)).astype(np.int64)
    if sample.size * 2 >= cols:
        keys = _pack(block, np.arange(col0, col0 + cols)[None, :].repeat(rows, axis=0))
    else:
        threshold = np.partition(block[:, sample], width - 1, axis=1)[:, width - 1]
        r, c = np.divmod(np.flatnonzero(block <= threshold[:, None]), cols)  # flat: far faster than 2-D nonzero
        keys = _padded_rows(r, _pack(block[r, c], c + col0), rows)
    keys.sort(axis=1)
    if keys.shape[1] < width:
        keys = np.hstack([keys, np.full((rows, width - keys.shape[1]), _EMPTY_KEY, dtype=np.int64)])
    return keys[:, :width]


def _padded_rows(rows: np.ndarray, keys: np.ndarray, num_rows: int) -> np.ndarray:
    """Ragged per-row keys (``rows`` ascending) as a num_rows x max_count array, _EMPTY_KEY padded."""
    counts = np.bincount(rows, minlength=num_rows)
    position = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((num_rows, max(int(counts.max(initial=0)), 1)), _EMPTY_KEY, dtype=np.int64)
    out[rows, position] = keys
    return out


class _Candidates:
    """Per row, the ``width`` smallest raw distances seen so far with their columns, as sorted
    packed keys (see ``_pack``).

    Invariant: every column not in a row's list has a distance >= the row's threshold
    (its last value), so the final lists decide the true order up to that threshold.
    """

    def __init__(self, n: int, width: int) -> None:
        self.width = width
        self.keys = np.full((n, width), _EMPTY_KEY, dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        return _unpack_values(self.keys)

    @property
    def columns(self) -> np.ndarray:
        cols = _unpack_columns(self.keys)
        return np.where(cols == _EMPTY_COLUMN, -1, cols)

    def threshold(self, rows: slice) -> np.ndarray:
        return _unpack_values(self.keys[rows, -1])

    def set_block(self, rows: slice, block: np.ndarray, col0: int) -> None:
        """Initialise ``rows`` from a full block of their distances (the diagonal block)."""
        self.keys[rows] = _smallest_packed(block, self.width, col0)

    def merge(self, row0: int, local_rows: np.ndarray, columns: np.ndarray, values: np.ndarray) -> None:
        """Merge new (row, column, value) entries; ``local_rows`` ascending, relative to ``row0``."""
        if local_rows.size == 0:
            return
        touched, inverse = np.unique(local_rows, return_inverse=True)
        rows = touched + row0
        merged = np.hstack([self.keys[rows], _padded_rows(inverse, _pack(values, columns), touched.size)])
        merged.sort(axis=1)
        self.keys[rows] = merged[:, : self.width]


def _blocks(q: int, n: int, size: int) -> list[tuple[int, int]]:
    """Row blocks over [0, q) and [q, n) (never straddling), each >= 64 rows when possible."""
    out: list[tuple[int, int]] = []
    for lo, hi in ((0, q), (q, n)):
        bounds = list(range(lo, hi, size)) + [hi]
        part = list(zip(bounds[:-1], bounds[1:]))
        if len(part) > 1 and part[-1][1] - part[-1][0] < _MIN_BLOCK_ROWS:
            last = part.pop()
            part[-1] = (part[-1][0], last[1])
        out.extend(part)
    return out


class _Joint:
    """Query and gallery as one N x d set with its canonical distances to itself."""

    @classmethod
    def of(cls, query_features: ArrayLike, gallery_features: ArrayLike) -> "_Joint":
        """From the user's features, checked: 2-D, equally wide, non-empty, finite."""
        qf, gf = as_feature_pair(query_features, gallery_features, "query_features", "gallery_features")
        if qf.shape[0] == 0 or gf.shape[0] == 0:
            raise ValueError(f"empty query or gallery: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
        _check_finite(qf, "query_features")
        _check_finite(gf, "gallery_features")
        dtype = torch.float64 if torch.float64 in (qf.dtype, gf.dtype) else torch.float32
        return cls(qf.to(dtype), gf.to(device=qf.device, dtype=dtype))

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor) -> None:
        joint = torch.cat([query, gallery])
        self.space = FeatureDistances(joint, joint, "euclidean", names=("features", "features"))
        self.q, self.n = query.shape[0], joint.shape[0]
        self.bound = self.space.fast_bound()

    def block(self, a: tuple[int, int], b: tuple[int, int], canonical: bool = False) -> np.ndarray:
        """Distances of rows a x columns b: canonical ones (the output's) or float32 products
        (within ``bound`` of the canonical values)."""
        rows, cols = slice(*a), slice(*b)
        if canonical:
            return self.space.exact(rows, cols).cpu().numpy()
        return self.space.fast(rows, cols)[0].cpu().numpy()


def _sweep_features(joint: _Joint, near: _Candidates, far: _Candidates, out: np.ndarray | None, block_size: int,
                    bar: Optional[tqdm] = None) -> None:
    """One pass over the blocks of the symmetric distance matrix (each unordered pair once).

    Fills the canonical q x g distances into ``out`` (unless None) and, by the block values, each row's
    nearest (``near``) and farthest (``far``, on negated values) candidates; ``bar`` counts the
    pairs of blocks.
    """
    q = joint.q
    blocks = _blocks(q, joint.n, block_size)
    if bar is not None:
        bar.unit = "block"
        bar.reset(total=len(blocks) * (len(blocks) + 1) // 2)
    # Diagonal blocks first: they give every row a finite threshold to filter the rest.
    for a in blocks:
        d = joint.block(a, a)
        near.set_block(slice(*a), d, a[0])
        far.set_block(slice(*a), np.negative(d), a[0])
        if bar is not None:
            bar.update()
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            output = out is not None and a[1] <= q <= b[0]
            d = joint.block(a, b, canonical=output)
            if output:
                out[a[0]:a[1], b[0] - q:b[1] - q] = d
            _merge_both_ways(near, d, a, b)
            _merge_both_ways(far, np.negative(d), a, b)
            if bar is not None:
                bar.update()


def _merge_both_ways(cand: _Candidates, d: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> None:
    """Merge block ``d`` (rows a x columns b) into the rows of a, and its transpose into those of b."""
    r, c = np.divmod(np.flatnonzero(d < cand.threshold(slice(*a))[:, None]), d.shape[1])
    cand.merge(a[0], r, c + b[0], d[r, c])
    # rows of block b against the columns of a: the transpose, read without copying it
    r, c = np.divmod(np.flatnonzero(d < cand.threshold(slice(*b))[None, :]), d.shape[1])
    by_row = np.argsort(c, kind="stable")
    r, c = r[by_row], c[by_row]
    cand.merge(b[0], c, r + a[0], d[r, c])


def _canonical_lists(joint: _Joint, cand: _Candidates, sign: float = 1.0) -> None:
    """Replace the kept values by their canonical ones (``sign`` -1: a list of negated values)."""
    cols = cand.columns
    r, c = np.nonzero(cols >= 0)
    values = np.full(cols.shape, np.inf, dtype=np.float32)
    values[r, c] = sign * joint.space.pairs(r, cols[r, c])
    cand.keys[:] = np.where(cols >= 0, _pack(values, np.maximum(cols, 0)), _EMPTY_KEY)
    cand.keys.sort(axis=1)


def _row_maxima(joint: _Joint, far: _Candidates, settle: bool = True) -> np.ndarray:
    """max_j of each row's canonical distances. ``far`` holds the row's largest float32 products
    (negated): the maximum is among the items within 2e of the largest product, so a row is
    settled from its list when its last kept product lies below that; other rows are computed
    canonically in full (``settle=False``: the largest of the list is taken as it is)."""
    largest = -far.values[:, 0].astype(np.float64)
    last = -far.values[:, -1].astype(np.float64)
    complete = (far.columns >= 0).sum(axis=1) >= joint.n
    unsettled = np.flatnonzero(settle & ~complete & (last >= largest - 2 * joint.bound))
    _canonical_lists(joint, far, sign=-1.0)
    maxima = -far.values[:, 0]
    for start in range(0, unsettled.size, 256):
        rows = unsettled[start:start + 256]
        maxima[rows] = joint.space.exact(rows).cpu().numpy().max(axis=1)
    return maxima


def _squared_row_max(maxima: np.ndarray) -> np.ndarray:
    """max_j fl(d_ij^2) in float32: the square of the largest (non-negative) canonical distance."""
    row_max2 = _sq32(maxima)
    _check_row_max(row_max2, np.arange(row_max2.size))
    return row_max2


def _check_row_max(row_max2: np.ndarray, rows: np.ndarray) -> None:
    if np.any(row_max2 <= 0):
        bad = int(rows[np.flatnonzero(row_max2 <= 0)[0]])
        raise ValueError(f"item {bad} is at distance 0 from every item; the classic normalisation "
                         f"divides by the row maximum, expected it to be > 0")


def _finish_neighbours(cand: _Candidates, outside: np.ndarray | None, row_max2: np.ndarray, count: int, n: int,
                       full_rows: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``argsort(D)[:, :count]`` (stable) from the candidate lists (canonical values), where
    ``outside`` bounds from below the raw distance of every item not in a row's list. The
    order is settled when that bound's key exceeds the count-th key (rows whose list holds all
    n columns are settled); ``full_rows(rows)`` returns the normalised rows of the others.
    ``outside=None`` (approximate lists): each list's order is taken as it is.
    """
    present = cand.columns >= 0
    keys = np.where(present, _normalise(_sq32(cand.values), row_max2), np.inf).astype(np.float32)
    cols = np.where(present, cand.columns, n)
    knn, sorted_keys = _sorted_neighbours(keys, cols, count)
    if outside is None:
        return knn
    key_t = np.divide(_sq32(np.maximum(outside, 0).astype(np.float32)), row_max2, dtype=np.float32)
    complete = present.sum(axis=1) >= n
    settled = complete | (key_t > sorted_keys[:, count - 1])
    redo = np.flatnonzero(~settled)
    if redo.size:
        knn[redo] = _stable_full_rows(full_rows(redo), count)
    return knn


# --------------------------------------------------------------------------- k-reciprocal sets

def _reciprocal(knn: np.ndarray, width: int, rows: np.ndarray) -> np.ndarray:
    """For ``rows``: which of their ``width`` nearest have the row among their own ``width`` nearest."""
    forward = knn[rows, :width]
    backward = knn[forward, :width]
    return (backward == rows[:, None, None]).any(axis=2)


def _expanded_sets(knn: np.ndarray, k: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """R*(i) for every row as CSR (indptr, sorted unique columns).

    R(i, k1) = forward neighbours of i that have i among their k1+1 nearest; for each c in it,
    R(c, round(k1/2)) is added when more than 2/3 of it lies in R(i, k1) (paper eq. 12-13).
    """
    n = knn.shape[0]
    pad_small, pad_big = -2, n  # never equal to a real index, nor to each other
    all_rows = np.arange(n)
    half_sets = np.empty((n, h), dtype=knn.dtype)  # R(c, round(k1/2)) for every c
    for start in range(0, n, _SETS_ROWS):
        rows = all_rows[start:start + _SETS_ROWS]
        half_sets[rows] = np.where(_reciprocal(knn, h, rows), knn[rows, :h], pad_small)
    half_sizes = (half_sets != pad_small).sum(axis=1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    pieces = []
    for start in range(0, n, _SETS_ROWS):
        rows = all_rows[start:start + _SETS_ROWS]
        recip = _reciprocal(knn, k, rows)
        sets = np.where(recip, knn[rows, :k], -1)  # R(i, k1), -1 padded
        cand = half_sets[knn[rows, :k]]  # rows x k x h
        inside = (cand[..., None] == sets[:, None, None, :]).any(axis=3).sum(axis=2)
        # len(intersect) > 2/3 * len(candidate set), compared in float64 like the classic.
        take = recip & (inside > (2.0 / 3.0) * half_sizes[knn[rows, :k]])
        grown = np.where(take[..., None] & (cand != pad_small), cand, pad_big).reshape(len(rows), -1)
        members = np.concatenate([np.where(recip, sets, pad_big), grown], axis=1)
        members.sort(axis=1)
        first = np.ones_like(members, dtype=bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        keep = first & (members != pad_big)
        indptr[start + 1:start + len(rows) + 1] = keep.sum(axis=1)
        pieces.append(members[keep])
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(pieces)


def _encoding(indptr: np.ndarray, indices: np.ndarray, keys: np.ndarray, n: int) -> sp.csr_matrix:
    """V[i, j] = exp(-D[i, j]) / sum over R*(i), float32 (paper eq. 14)."""
    weights = np.exp(-keys).astype(np.float32)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    sums = np.bincount(rows, weights=weights, minlength=n)  # an empty R*(i) leaves row i at 0
    data = (weights / sums[rows]).astype(np.float32)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n, n))


def _query_expansion(v: sp.csr_matrix, knn: np.ndarray, k2: int) -> sp.csr_matrix:
    """V[i] <- mean of V over the k2 nearest of i (self included), as a sparse product."""
    n = v.shape[0]
    rows = np.repeat(np.arange(n), k2)
    avg = sp.csr_matrix((np.ones(n * k2, dtype=np.float32), (rows, knn[:, :k2].ravel())), shape=(n, n))
    out = (avg @ v).tocsr()
    out.data /= np.float32(k2)
    out.sort_indices()
    return out


class _Reranking:
    """The re-ranked query x gallery distances, ready to be produced a block of query rows at a
    time: out[i, j] = (1 - lambda) J(i, j) + lambda D[i, q + j].

    J(i, j) = 1 - m / (2 - m) with m(i, j) = sum_k min(V[i, k], V[j, k]) (paper eq. 11). Only
    gallery rows j sharing a non-zero column k with query i have m > 0: the column index of
    V's gallery rows lists them (the classic's inverted index), so each block gathers those
    (i, k, j) triples and sums them by (i, j); every other pair has J = 1.
    ``fill_normalised(start, stop, block)`` writes D's query rows start..stop-1 into ``block``.
    """

    def __init__(self, v: sp.csr_matrix, q: int, lambda_value: float,
                 fill_normalised: Callable[[int, int, np.ndarray], None] | None, gallery_start: int | None = None) -> None:
        # gallery_start: V's first gallery row (default q; 0 with q = N: every row against every row)
        gallery_start = q if gallery_start is None else gallery_start
        self.v, self.q, self.g = v, q, v.shape[0] - gallery_start
        self.fill_normalised = fill_normalised
        self.one_minus, self.lam = np.float32(1 - lambda_value), np.float32(lambda_value)
        gallery_cols = v[gallery_start:].tocsc()
        self.col_ptr, self.col_rows, self.col_vals = gallery_cols.indptr, gallery_cols.indices, gallery_cols.data
        # triples per query row, to size the steps
        self.lengths = np.diff(self.col_ptr)[v.indices[: v.indptr[q]]]
        per_query = np.bincount(np.repeat(np.arange(q), np.diff(v.indptr[: q + 1])), weights=self.lengths,
                                minlength=q)
        self.cumulative = np.concatenate([[0], np.cumsum(per_query)])

    def steps(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Query rows start..stop in steps of bounded temporaries (pairs and triples)."""
        rows_per_step = max(1, _JACCARD_ELEMENTS // max(self.g, 1))
        out = []
        while start < stop:
            by_triples = int(np.searchsorted(self.cumulative, self.cumulative[start] + _JACCARD_TRIPLES,
                                             side="right")) - 1
            end = min(stop, start + rows_per_step, max(start + 1, by_triples))
            out.append((start, end))
            start = end
        return out

    def shared(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(hit, m) of query rows start..stop-1 (one step): ``hit`` the flat positions
        (row - start) * g + j of the gallery items j with m(i, j) > 0, ``m`` those sums (float32)."""
        v, g = self.v, self.g
        lo, hi = v.indptr[start], v.indptr[stop]
        k = v.indices[lo:hi]
        local = np.repeat(np.arange(stop - start), np.diff(v.indptr[start:stop + 1]))
        counts = self.lengths[lo:hi]
        # positions col_ptr[k] + 0..count-1 for every (i, k), without a Python loop
        offsets = np.cumsum(counts) - counts
        pos = np.arange(int(counts.sum())) - np.repeat(offsets - self.col_ptr[k], counts)
        mins = np.minimum(np.repeat(v.data[lo:hi], counts), self.col_vals[pos])
        shared = np.bincount(np.repeat(local, counts) * g + self.col_rows[pos], weights=mins,
                             minlength=(stop - start) * g)
        hit = np.flatnonzero(shared)
        return hit, shared[hit].astype(np.float32)

    def rows_into(self, start: int, stop: int, block: np.ndarray, filled: bool = False) -> None:
        """Write query rows start..stop-1 (one step) into the contiguous ``block`` (``filled``:
        it holds D's normalised rows already)."""
        hit, m = self.shared(start, stop)
        jaccard = 1 - m / (2 - m)
        if not filled:
            self.fill_normalised(start, stop, block)
        flat = block.reshape(-1)  # a view: the block's rows are contiguous
        d_hit = flat[hit]
        # same float32 operations as the classic's jaccard * (1 - lambda) + D * lambda, J = 1 here
        block *= self.lam
        block += self.one_minus
        flat[hit] = jaccard * self.one_minus + d_hit * self.lam

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Query rows start..stop-1 as a new float32 array."""
        block = np.empty((stop - start, self.g), dtype=np.float32)
        self.fill_normalised(start, stop, block)  # one product for the block, not one per step
        for a, b in self.steps(start, stop):
            self.rows_into(a, b, block[a - start:b - start], filled=True)
        return block

    def into(self, out: np.ndarray, bar: Optional[tqdm] = None) -> np.ndarray:
        """Every query row into ``out`` (q x g, holding D's canonical distances where
        ``fill_normalised`` expects them); ``bar`` counts the query rows."""
        if bar is not None:
            bar.unit = "query"
            bar.reset(total=self.q)
            bar.set_description("re-ranking (Jaccard)")
        for start, stop in self.steps(0, self.q):
            self.rows_into(start, stop, out[start:stop])
            if bar is not None:
                bar.update(stop - start)
        return out


# --------------------------------------------------------------------------- shared tail

def _finish(knn: np.ndarray, pair_keys: Callable[[np.ndarray, np.ndarray], np.ndarray], k: int, h: int,
            k2: int, q: int, lambda_value: float,
            fill_normalised: Callable[[int, int, np.ndarray], None]) -> _Reranking:
    n = knn.shape[0]
    indptr, indices = _expanded_sets(knn, k, h)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    v = _encoding(indptr, indices, pair_keys(rows, indices), n)
    if k2 != 1:  # the classic skips the expansion for k2 == 1 (V stays as it is)
        v = _query_expansion(v, knn, k2)
    return _Reranking(v, q, lambda_value, fill_normalised)


# --------------------------------------------------------------------------- public API

def rerank(query_features: ArrayLike, gallery_features: ArrayLike, k1: int = 20, k2: int = 6,
           lambda_value: float = 0.3, *, knn_backend: str = "torch", block_size: int = _DEFAULT_BLOCK,
           progress: bool | None = None) -> np.ndarray:
    """k-reciprocal re-ranked query x gallery distances, straight from features.

    Equal to the classic ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` fed the canonical
    squared Euclidean distance matrices of the same features (``pairwise_distance``; what
    torchreid's ``compute_distance_matrix`` computes, without its machine-dependent rounding),
    without ever holding an N x N array (N = q + g): memory is O(N k1) plus the q x g output
    and one block_size x block_size distance block. The same features give the same bits on
    every machine, block size and thread count.

    Args:
        query_features, gallery_features: q x d and g x d, numpy or torch (products on their
            device; float64 features are evaluated from their float64 values).
        k1, k2, lambda_value: the paper's parameters (defaults 20, 6, 0.3).
        knn_backend: ``"torch"`` (blocked matrix products, each pair of blocks once) or
            ``"faiss"`` (faiss-cpu exact ``IndexFlatL2`` search proposes the neighbours). Both
            give the same result. ``"faiss-hnsw"``: approximate neighbours from a faiss HNSW
            graph and row maxima from the items farthest from the mean, for sets where the
            N x N sweep takes too long (Market-1501+500k); not the exact result, and not the
            same bits on every machine. Its recall against exact search, and how many row
            maxima are exact, are measured on sampled rows and logged (the ``reid`` logger,
            INFO; the record's ``neighbour_quality`` is a :class:`NeighbourQuality`).
        block_size: rows per block of the distance sweep (>= 64).
        progress: a bar over the distance sweep, then over the queries of the Jaccard step
            (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        q x g float32 numpy array.
    """
    with progress_bar(desc="re-ranking (neighbours)", unit="block", progress=progress) as bar:
        reranking, out = _from_features(query_features, gallery_features, k1, k2, lambda_value, knn_backend,
                                        block_size, bar, keep_distances=True)
        return reranking.into(out, bar)


def _from_features(query_features: ArrayLike, gallery_features: ArrayLike, k1: int, k2: int, lambda_value: float,
                   knn_backend: str, block_size: int, bar: Optional[tqdm],
                   keep_distances: bool) -> tuple[_Reranking, np.ndarray | None]:
    """(the re-ranking of two feature sets, the q x g array holding their canonical distances, or
    None with ``keep_distances=False``: then every block computes its own when it is asked for)."""
    _check_params(k1, k2, lambda_value)
    if knn_backend not in KNN_BACKENDS:
        raise ValueError(f"knn_backend={knn_backend!r}: expected one of {', '.join(KNN_BACKENDS)}")
    if block_size < _MIN_BLOCK_ROWS:
        raise ValueError(f"block_size={block_size}: expected at least {_MIN_BLOCK_ROWS} rows")
    joint = _Joint.of(query_features, gallery_features)
    q, n = joint.q, joint.n
    k, h, k2_eff = _neighbour_counts(k1, k2, n)
    near = _Candidates(n, min(k + _MARGIN, n))
    far = _Candidates(n, min(_FARTHEST, n))
    out = np.empty((q, n - q), dtype=np.float32) if keep_distances else None

    def full_rows(rows: np.ndarray) -> np.ndarray:
        return _normalise(_sq32(joint.space.exact(rows).cpu().numpy()), row_max2[rows])

    def pair_keys(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raw = _lookup(near, rows, cols)
        missing = np.flatnonzero(np.isnan(raw))
        if missing.size:
            raw[missing] = joint.space.pairs(rows[missing], cols[missing])
        return np.divide(_sq32(raw), row_max2[rows], dtype=np.float32)

    def fill_normalised(start: int, stop: int, block: np.ndarray) -> None:
        if out is None:  # ``block`` is new: the canonical distances first
            block[...] = joint.space.exact(slice(start, stop), slice(q, n)).cpu().numpy()
        # else ``block`` is out[start:stop], holding them already: normalise in place
        np.square(block, out=block)
        np.divide(block, row_max2[start:stop, None], out=block)

    if knn_backend == "torch":
        _sweep_features(joint, near, far, out, block_size, bar)
        # every item outside a row's list has a product >= the last kept one
        outside = near.values[:, -1].astype(np.float64) - joint.bound
    else:
        if knn_backend == "faiss":
            outside = _faiss_candidates(joint, near, far)
        else:  # approximate lists: nothing bounds the items they miss
            _hnsw_candidates(joint, near, far, bar)
            outside = None
        for a in _blocks(q, q, block_size) if out is not None else ():
            out[a[0]:a[1]] = joint.space.exact(slice(*a), slice(q, n)).cpu().numpy()
    maxima = _row_maxima(joint, far, settle=outside is not None)
    row_max2 = _squared_row_max(maxima)
    _canonical_lists(joint, near)
    if outside is None:
        quality = _neighbour_quality(joint, near, maxima, k)
        log.info("re-ranking neighbours (%s): %s", knn_backend, quality, extra={"neighbour_quality": quality})
    knn = _finish_neighbours(near, outside, row_max2, k, n, full_rows)
    return _finish(knn, pair_keys, k, h, k2_eff, q, lambda_value, fill_normalised), out


def k_reciprocal_jaccard(features: ArrayLike, k1: int = 20, k2: int = 6, *, block_size: int = _DEFAULT_BLOCK,
                         progress: bool | None = None) -> sp.csr_matrix:
    """The k-reciprocal Jaccard distance among the rows of one feature set, N x N, sparse.

    The steps of :func:`rerank` (the same neighbour lists, expansion and encoding ``V``, from
    the canonical squared Euclidean distances) with every row a query and every row a gallery
    item: ``J(i, j) = 1 - m / (2 - m)``, ``m = sum_k min(V[i, k], V[j, k])``. Only pairs with
    m > 0 (J < 1) are stored, the diagonal (J = 0) included as explicit zeros; every pair not
    stored has J = 1. That is what clustering needs (DBSCAN with ``metric="precomputed"`` on a
    sparse matrix treats stored entries as the only candidate neighbours), in O(N k) memory
    plus the stored pairs, never an N x N array. Unsupervised adaptation (Ge et al. 2020, Dai
    et al. 2021) clusters these distances.

    Returns:
        a scipy CSR float32 matrix, symmetric, sorted indices.
    """
    x = as_feature_pair(features, features, "features", "features")[0]
    if x.shape[0] < 2:
        raise ValueError(f"features: expected at least 2 rows, got shape {tuple(x.shape)}")
    with progress_bar(desc="Jaccard distance (neighbours)", unit="block", progress=progress) as bar:
        # one joint set of all N rows: the query/gallery split only sizes the unused q x g block
        reranking, _ = _from_features(x[:1], x[1:], k1, k2, 0.0, "torch", block_size, bar, keep_distances=False)
        n = reranking.v.shape[0]
        pairs = _Reranking(reranking.v, n, 0.0, None, gallery_start=0)
        bar.unit = "row"
        bar.reset(total=n)
        bar.set_description("Jaccard distance")
        rows_out, cols_out, values_out = [], [], []
        for start, stop in pairs.steps(0, n):
            hit, m = pairs.shared(start, stop)
            rows_out.append(start + hit // n)
            cols_out.append(hit % n)
            values_out.append(1 - m / (2 - m))
            bar.update(stop - start)
    rows, columns = np.concatenate(rows_out), np.concatenate(cols_out)
    values = np.concatenate(values_out).astype(np.float32)
    values[rows == columns] = 0.0  # m(i, i) = sum of V[i] = 1 up to rounding: J(i, i) is 0
    out = sp.csr_matrix((values, (rows, columns)), shape=(n, n))
    out.sort_indices()
    return out


class RerankedBlocks:
    """The re-ranked distances as a ranking source (``reid.evaluation.ordering``): blocks of query
    rows computed when the ranking asks for them, never the whole q x g matrix. Their values
    are the ones :func:`rerank` returns (the same operations), so rankings equal those of it."""

    parallel = False  # the blocks' products use the threads

    def __init__(self, reranking: _Reranking, memory_mb: float | None, keep: np.ndarray | None = None) -> None:
        self.reranking, self.memory_mb, self.keep = reranking, memory_mb, keep
        self.num_query = reranking.q
        self.num_gallery = reranking.g if keep is None else int(keep.sum())
        # a full-width block is made before its columns are taken
        self.max_rows = block_rows_for(reranking.g, memory_mb)
        # a block's canonical distances are one product: far below peak on a few rows
        self.min_rows = min(256, self.max_rows)

    def columns(self, keep: np.ndarray) -> "RerankedBlocks":
        combined = keep if self.keep is None else self._combined(keep)
        return RerankedBlocks(self.reranking, self.memory_mb, combined)

    def _combined(self, keep: np.ndarray) -> np.ndarray:
        out = np.zeros(self.reranking.g, dtype=bool)
        out[np.flatnonzero(self.keep)[keep]] = True
        return out

    def exact(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.num_query)
        block = self.reranking.rows(start, stop)
        return block if self.keep is None else np.ascontiguousarray(block[:, self.keep])

    def block(self, rows: slice) -> tuple[np.ndarray, None]:
        return self.exact(rows), None

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(rows.size, dtype=np.float32)
        for row in np.unique(rows):
            sel = rows == row
            out[sel] = self.exact(slice(int(row), int(row) + 1))[0, cols[sel]]
        return out


def evaluate_reranked(query_features: ArrayLike, gallery_features: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                      q_camids: ArrayLike, g_camids: ArrayLike, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.3, max_rank: int = 50, ap: str = "standard", *,
                      memory_mb: float | None = None, knn_backend: str = "torch", block_size: int = _DEFAULT_BLOCK,
                      junk_pid: int | None = JUNK_PID, progress: bool | None = None) -> RankResult:
    """``evaluate_rank(rerank(query_features, gallery_features, k1, k2, lambda_value), ...)``
    without the q x g matrix: the re-ranked distances are made a block of query rows at a time
    (at most ``memory_mb`` MiB; default a quarter of the available memory) and ranked at once.
    Equal to the dense result to the last bit; memory is O(N k1) for the neighbour lists plus
    a block. Arguments: as :func:`rerank` and :func:`reid.evaluation.rank.evaluate_rank`."""
    check_ap(ap)
    check_max_rank(max_rank)
    with progress_bar(desc="re-ranking (neighbours)", unit="block", progress=progress) as bar:
        reranking, _ = _from_features(query_features, gallery_features, k1, k2, lambda_value, knn_backend,
                                      block_size, bar, keep_distances=False)
    labels = Labels.of(reranking.q, reranking.g, q_pids, g_pids, q_camids, g_camids)
    return rank_result(RerankedBlocks(reranking, memory_mb), labels, max_rank=max_rank, ap=ap, junk_pid=junk_pid,
                       num_threads=None, progress=progress)


def rerank_distances(q_g: ArrayLike, q_q: ArrayLike, g_g: ArrayLike, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3) -> np.ndarray:
    """Drop-in replacement for the classic ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``.

    Takes the same three distance matrices (numpy or torch; not necessarily symmetric: the
    classic's transposition is reproduced) and returns the same q x g float32 array. Beyond the
    inputs it holds O(N k1) neighbour lists, one block of rows of the joint matrix at a time
    and the output.
    """
    _check_params(k1, k2, lambda_value)
    qg = _dense(q_g, "q_g")
    qq = _dense(q_q, "q_q")
    gg = _dense(g_g, "g_g")
    q, g = qg.shape
    if q == 0 or g == 0:
        raise ValueError(f"q_g is empty (shape {qg.shape}); expected at least one query and one gallery item")
    if qq.shape != (q, q) or gg.shape != (g, g):
        raise ValueError(f"shapes do not fit: q_g {qg.shape}, q_q {qq.shape}, g_g {gg.shape}; expected "
                         f"q_q ({q}, {q}) and g_g ({g}, {g})")
    n = q + g
    k, h, k2_eff = _neighbour_counts(k1, k2, n)

    def joint_rows(rows: np.ndarray) -> np.ndarray:
        """Rows of the classic's transposed joint matrix (columns of [[q_q, q_g], [q_g^T, g_g]])."""
        is_query = rows < q
        out = np.empty((rows.size, n), dtype=np.float32)
        qr, gr = rows[is_query], rows[~is_query] - q
        out[is_query, :q] = _sq32(qq[:, qr].T)
        out[is_query, q:] = _sq32(qg[qr])
        out[~is_query, :q] = _sq32(qg[:, gr].T)
        out[~is_query, q:] = _sq32(gg[:, gr].T)
        return out

    knn, row_max2 = _dense_neighbours(joint_rows, (qg, qq, gg), n, k)

    def pair_keys(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raw = np.empty(rows.size, dtype=np.float32)
        rq, cq = rows < q, cols < q
        for sel, values in (((rq & cq), lambda r, c: qq[c, r]), ((rq & ~cq), lambda r, c: qg[r, c - q]),
                            ((~rq & cq), lambda r, c: qg[c, r - q]), ((~rq & ~cq), lambda r, c: gg[c - q, r - q])):
            raw[sel] = _sq32(values(rows[sel], cols[sel]))
        return np.divide(raw, row_max2[rows], dtype=np.float32)

    def fill_normalised(start: int, stop: int, block: np.ndarray) -> None:
        block[...] = _sq32(qg[start:stop])
        np.divide(block, row_max2[start:stop, None], out=block)

    out = np.empty((q, g), dtype=np.float32)
    return _finish(knn, pair_keys, k, h, k2_eff, q, lambda_value, fill_normalised).into(out)


# --------------------------------------------------------------------------- helpers

def _dense_neighbours(joint_rows: Callable[[np.ndarray], np.ndarray], inputs: tuple[np.ndarray, ...], n: int,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the k nearest of every row, the squared row maxima) of the classic's joint matrix, a
    block of rows at a time (``joint_rows(rows)``: those rows squared, float32)."""
    knn = np.empty((n, k), dtype=np.int64)
    row_max2 = np.empty(n, dtype=np.float32)
    rows_per_block = max(1, (1 << 24) // n)
    for start in range(0, n, rows_per_block):
        rows = np.arange(start, min(n, start + rows_per_block))
        sq = joint_rows(rows)
        row_max2[rows] = sq.max(axis=1)
        if not np.isfinite(row_max2[rows]).all():  # max propagates NaN and inf: every input value is read here
            for x, name in zip(inputs, ("q_g", "q_q", "g_g")):
                _check_finite(x, name)
            raise ValueError("the squared distances overflow float32; expected smaller distances")
        _check_row_max(row_max2[rows], rows)
        knn[rows] = _smallest_per_row(_normalise(sq, row_max2[rows]), k)
    return knn, row_max2


def _dense(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D distance matrix, got shape {x.shape}")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    return x


def _smallest_per_row(keys: np.ndarray, count: int) -> np.ndarray:
    """Stable ``argsort(keys, axis=1)[:, :count]`` without sorting whole rows.

    A threshold per row (the count-th smallest of a sample of columns) is >= the row's count-th
    smallest key, so the keys <= it hold the answer; only those are sorted, with ties at the
    threshold all included, so the stable order among them is the full row's.
    """
    rows, n = keys.shape
    sample = np.linspace(0, n - 1, num=max(16 * count, 512)).astype(np.int64)
    if sample.size * 2 >= n:
        return _stable_full_rows(keys, count)
    threshold = np.partition(keys[:, sample], count - 1, axis=1)[:, count - 1]
    r, c = np.divmod(np.flatnonzero(keys <= threshold[:, None]), n)
    counts = np.bincount(r, minlength=rows)
    position = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
    padded_keys = np.full((rows, int(counts.max())), np.inf, dtype=np.float32)
    padded_cols = np.full((rows, int(counts.max())), n, dtype=np.int64)
    padded_keys[r, position] = keys[r, c]
    padded_cols[r, position] = c
    return _sorted_neighbours(padded_keys, padded_cols, count)[0]


def _lookup(cand: _Candidates, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Raw distance of (row, col) from the candidate lists; NaN where the list lacks col."""
    n = cand.keys.shape[0]
    list_cols = cand.columns
    list_pairs = (np.arange(n)[:, None] * n + list_cols).ravel()  # -1 (no column) never matches
    order = np.argsort(list_pairs, kind="stable")
    sorted_pairs = list_pairs[order]
    wanted = rows.astype(np.int64) * n + cols
    pos = np.minimum(np.searchsorted(sorted_pairs, wanted), sorted_pairs.size - 1)
    found = sorted_pairs[pos] == wanted
    raw = np.full(rows.size, np.nan, dtype=np.float32)
    raw[found] = cand.values.ravel()[order[pos[found]]]
    return raw


@dataclass(frozen=True)
class NeighbourQuality:
    """Approximate neighbour lists against exact search, on ``rows`` seeded sample items:
    ``recall``, the mean fraction of a row's ``k`` nearest (exact search) found among its ``k``;
    ``maxima_exact``, the fraction of rows whose row maximum is the exact one, and
    ``maxima_shortfall``, the largest (exact - found) / exact of the others."""

    k: int
    rows: int
    recall: float
    maxima_exact: float
    maxima_shortfall: float

    def __str__(self) -> str:
        return (f"recall@{self.k} {self.recall:.4f} against exact search on {self.rows} sampled items; row maxima "
                f"exact on {100 * self.maxima_exact:.1f}% of them, at most {100 * self.maxima_shortfall:.2f}% short")


def _import_faiss(backend: str):
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"knn_backend={backend!r} needs faiss-cpu (pip install faiss-cpu, or reid[faiss])") from err
    return faiss


def _hnsw_candidates(joint: _Joint, near: _Candidates, far: _Candidates, bar: Optional[tqdm]) -> None:
    """Approximate lists: each row's nearest from a faiss HNSW graph (Malkov and Yashunin, 2018;
    the row itself always among them); its farthest from the same graph searched from the
    reflected row -x (exact for unit rows, up to the graph's recall) and from the items farthest
    from the mean (which hold the farthest item of most rows of unnormalised features).

    Only the lists are approximate: their values become canonical ones afterwards. The graph is
    built on several threads, so the lists (and the result) can differ between runs and machines,
    unlike the exact backends'."""
    faiss = _import_faiss("faiss-hnsw")
    x = joint.space.query.cpu().numpy().astype(np.float32, copy=False)
    n, dim = x.shape
    if bar is not None:
        bar.set_description("re-ranking (HNSW neighbours)")
    index = faiss.IndexHNSWFlat(dim, _HNSW_M)
    index.hnsw.efConstruction = _HNSW_BUILD
    index.add(x)
    index.hnsw.efSearch = max(_HNSW_SEARCH, near.width)
    _, cols = index.search(x, near.width)
    # unit rows: |x - y|^2 = 2 - 2 <x, y> is largest where |-x - y|^2 = 2 + 2 <x, y> is smallest
    index.hnsw.efSearch = max(_HNSW_FAR_SEARCH, far.width)
    _, reflected = index.search(np.negative(x), far.width)
    del index
    rows = np.arange(n)
    lost = ~(cols == rows[:, None]).any(axis=1)
    cols[lost, -1] = rows[lost]  # an item is its own nearest (distance 0)
    near.keys[:] = np.where(cols >= 0, _pack(np.zeros(cols.shape, np.float32), np.maximum(cols, 0)), _EMPTY_KEY)
    # the farthest: of the reflected search's and of the pool's, by canonical distance
    both = np.hstack([reflected, _farthest_in_pool(joint.space, far.width)])
    values = np.full(both.shape, -np.inf, dtype=np.float32)
    r, c = np.nonzero(both >= 0)
    values[r, c] = joint.space.pairs(r, both[r, c])
    keep = np.argsort(-values, axis=1, kind="stable")[:, :far.width]
    far.keys[:] = _pack(np.zeros(keep.shape, np.float32), np.take_along_axis(both, keep, axis=1))


def _farthest_in_pool(space: FeatureDistances, width: int) -> np.ndarray:
    """Per row, the ``width`` farthest (by float32 products) of the ``_FAR_POOL`` items farthest
    from the mean: most rows' farthest item is among them (``NeighbourQuality`` says how many)."""
    x, n = space.query, space.num_query
    chunks = range(0, n, 1 << 16)  # float64 per chunk: no float64 copy of the whole set
    mean = sum(x[s:s + (1 << 16)].double().sum(dim=0) for s in chunks) / n
    spread = torch.cat([((x[s:s + (1 << 16)].double() - mean) ** 2).sum(dim=1) for s in chunks]).cpu().numpy()
    pool = np.argsort(-spread, kind="stable")[:min(_FAR_POOL, n)]
    pooled = FeatureDistances(x, x.index_select(0, torch.as_tensor(pool, device=x.device)), "euclidean",
                              names=("features", "features"))
    width = min(width, pool.size)
    out = np.empty((n, width), dtype=np.int64)
    step = max(1, _JACCARD_ELEMENTS // pool.size)
    for start in range(0, n, step):
        values = pooled.fast(slice(start, start + step))[0].cpu().numpy()
        out[start:start + step] = pool[np.argpartition(-values, width - 1, axis=1)[:, :width]]
    return out


def _neighbour_quality(joint: _Joint, near: _Candidates, maxima: np.ndarray, k: int) -> NeighbourQuality:
    """``NeighbourQuality`` of the (canonical, sorted) lists ``near`` and the row ``maxima``."""
    n = joint.n
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(_QUALITY_ROWS, n), replace=False))
    exact = joint.space.exact(sample).cpu().numpy()
    truth = np.argsort(exact, axis=1, kind="stable")[:, :k]
    found = near.columns[sample, :k]
    recall = float((truth[:, :, None] == found[:, None, :]).any(axis=2).mean())
    true_max, got = exact.max(axis=1).astype(np.float64), maxima[sample].astype(np.float64)
    short = (true_max - got) / np.where(true_max > 0, true_max, 1.0)
    return NeighbourQuality(k=k, rows=sample.size, recall=recall, maxima_exact=float(np.mean(got >= true_max)),
                            maxima_shortfall=float(max(short.max(initial=0.0), 0.0)))


def _faiss_candidates(joint: _Joint, near: _Candidates, far: _Candidates) -> np.ndarray:
    """Nearest and farthest items of every row proposed by faiss-cpu flat (exact) indexes;
    returns a lower bound of the canonical distance of every item outside a row's near list.

    faiss rounds its own way (float32, within 2 d u (|x| + |y|)^2 of the exact value, as the
    products of the torch sweep), so it only proposes: the lists' values are then replaced by
    canonical ones, and its k-th value, lowered by both roundings, bounds the rest.
    """
    faiss = _import_faiss("faiss")
    x = joint.space.query.cpu().numpy().astype(np.float32, copy=False)
    n, dim = x.shape
    index = faiss.IndexFlatL2(dim)
    index.add(x)
    near_values, near_columns = index.search(x, near.width)
    # Farthest: max_j |x - y_j|^2 = |x|^2 + max_j <(-2x, 1), (y_j, |y_j|^2)>, a max inner product.
    norms = (x.astype(np.float64) ** 2).sum(axis=1)
    base = faiss.IndexFlatIP(dim + 1)
    base.add(np.hstack([x, norms[:, None]]).astype(np.float32))
    far_ip, far_columns = base.search(np.hstack([-2 * x, np.ones((n, 1), dtype=np.float32)]).astype(np.float32),
                                      far.width)
    del index, base
    near.keys[:] = _pack(near_values, near_columns)
    # the farthest list by its estimate |x|^2 + ip, which is within 2 bounds of the canonical value
    far.keys[:] = _pack(-(norms[:, None] + far_ip).astype(np.float32), far_columns)
    near.keys.sort(axis=1)
    far.keys.sort(axis=1)
    # the inner products carry |y|^2 as a coordinate: their error is bounded like the products'
    joint.bound = joint.bound * 2
    return near_values[:, -1].astype(np.float64) - joint.bound
