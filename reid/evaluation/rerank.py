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

Memory: O(N (k1 + |R*| k2)) plus the q x g float32 output. ``rerank`` computes the distances
from features in blocks of the symmetric N x N matrix (each pair of blocks once), with the
classic's formula op for op (``reid.evaluation.distance``), so it reproduces the classic fed
``compute_distance_matrix`` outputs, ties and rounding included (on the same BLAS).

Ties: the classic sorts with numpy's default (unstable) argsort, whose order among equal
distances is unspecified; here equal distances are ordered by index (stable). Without exact
ties in ``D`` the neighbour lists are identical.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from ..progress import progress_bar
from .arrays import ArrayLike
from .distance import MIN_CHUNK_ROWS, as_feature_pair, squared_euclidean_block

KNN_BACKENDS = ("torch", "faiss")
# Extra neighbours kept beyond k1+1 so that ties and the float32 normalisation can be settled
# without recomputing a row (rows where they cannot be are recomputed in full).
_MARGIN = 8
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
        self.row_max = np.full(n, -np.inf, dtype=np.float32)
        # a lower bound of every distance outside a row's list when not its last value (faiss)
        self.outside: np.ndarray | None = None

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
        if len(part) > 1 and part[-1][1] - part[-1][0] < MIN_CHUNK_ROWS:
            last = part.pop()
            part[-1] = (part[-1][0], last[1])
        out.extend(part)
    return out


class _JointFeatures:
    """Query and gallery features as one N x d set, without concatenating them (a copy saved).

    Squared norms are computed per set exactly as the classic's distance function does.
    """

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor) -> None:
        self.query, self.gallery = query, gallery
        self.q, self.n = query.shape[0], query.shape[0] + gallery.shape[0]
        self.device, self.dtype = query.device, query.dtype
        self.sq_norms = torch.cat([query.pow(2).sum(dim=1), gallery.pow(2).sum(dim=1)])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 (a view when they do not straddle the query/gallery boundary)."""
        if stop <= self.q:
            return self.query[start:stop]
        if start >= self.q:
            return self.gallery[start - self.q:stop - self.q]
        return torch.cat([self.query[start:], self.gallery[:stop - self.q]])

    def take(self, index: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.device)
        is_query = index < self.q
        out = torch.empty((index.numel(), self.query.shape[1]), dtype=self.dtype, device=self.device)
        out[is_query] = self.query[index[is_query]]
        out[~is_query] = self.gallery[index[~is_query] - self.q]
        return out


def _sweep_features(feats: _JointFeatures, cand: _Candidates, out: np.ndarray, block_size: int,
                    bar: Optional[tqdm] = None) -> None:
    """One pass over the blocks of the symmetric distance matrix (each unordered pair once).

    Fills the raw q x g distances into ``out``, the row maxima and the candidate lists;
    ``bar`` counts the pairs of blocks.
    """
    q, n = feats.q, feats.n
    sq_norms = feats.sq_norms
    out_t = torch.from_numpy(out)
    blocks = _blocks(q, n, block_size)
    if bar is not None:
        bar.unit = "block"
        bar.reset(total=len(blocks) * (len(blocks) + 1) // 2)
    # Buffers are reused: fresh pages for every block cost more than the comparisons on them.
    masks: dict[tuple[int, int], np.ndarray] = {}
    blocks_out: dict[tuple[int, int], torch.Tensor] = {}

    def mask_buffer(shape: tuple[int, int]) -> np.ndarray:
        if shape not in masks:
            masks[shape] = np.empty(shape, dtype=bool)
        return masks[shape]

    def dist(a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
        shape = (a[1] - a[0], b[1] - b[0])
        query_gallery = a[1] <= q <= b[0]
        direct = query_gallery and feats.device.type == "cpu" and feats.dtype == torch.float32
        if direct:  # query x gallery block: computed straight into the output
            target = out_t[a[0]:a[1], b[0] - q:b[1] - q]
        else:
            if shape not in blocks_out:
                blocks_out[shape] = torch.empty(shape, dtype=feats.dtype, device=feats.device)
            target = blocks_out[shape]
        d = squared_euclidean_block(feats.rows(*a), feats.rows(*b), sq_norms[a[0]:a[1]], sq_norms[b[0]:b[1]],
                                    out=target).cpu().numpy()
        if query_gallery and not direct:
            out[a[0]:a[1], b[0] - q:b[1] - q] = d
        return d

    # Diagonal blocks first: they give every row a finite threshold to filter the rest.
    for a in blocks:
        d = dist(a, a)
        rows = slice(*a)
        np.maximum(cand.row_max[rows], d.max(axis=1), out=cand.row_max[rows])
        cand.set_block(rows, d, a[0])
        if bar is not None:
            bar.update()
    for i, a in enumerate(blocks):
        for b in blocks[i + 1:]:
            d = dist(a, b)
            ra, rb = slice(*a), slice(*b)
            np.maximum(cand.row_max[ra], d.max(axis=1), out=cand.row_max[ra])
            np.maximum(cand.row_max[rb], d.max(axis=0), out=cand.row_max[rb])
            buf = mask_buffer(d.shape)
            # rows of block a against the columns of b
            r, c = np.divmod(np.flatnonzero(np.less(d, cand.threshold(ra)[:, None], out=buf)), d.shape[1])
            cand.merge(a[0], r, c + b[0], d[r, c])
            # rows of block b against the columns of a: the transpose, read without copying it
            r, c = np.divmod(np.flatnonzero(np.less(d, cand.threshold(rb)[None, :], out=buf)), d.shape[1])
            by_row = np.argsort(c, kind="stable")
            r, c = r[by_row], c[by_row]
            cand.merge(b[0], c, r + a[0], d[r, c])
            if bar is not None:
                bar.update()


def _squared_row_max(cand: _Candidates) -> np.ndarray:
    """max_j fl(d_ij^2) in float32: the larger square of the row's largest and smallest distance."""
    row_max2 = np.maximum(_sq32(cand.row_max), _sq32(cand.values[:, 0]))
    _check_row_max(row_max2, np.arange(row_max2.size))
    return row_max2


def _check_row_max(row_max2: np.ndarray, rows: np.ndarray) -> None:
    if np.any(row_max2 <= 0):
        bad = int(rows[np.flatnonzero(row_max2 <= 0)[0]])
        raise ValueError(f"item {bad} is at distance 0 from every item; the classic normalisation "
                         f"divides by the row maximum, expected it to be > 0")


def _finish_neighbours(cand: _Candidates, row_max2: np.ndarray, count: int, n: int,
                       full_rows: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``argsort(D)[:, :count]`` (stable) from the candidate lists. ``full_rows(rows)`` returns the
    normalised rows for the rare rows the lists cannot decide.
    """
    present = cand.columns >= 0
    keys = np.where(present, _normalise(_sq32(cand.values), row_max2), np.inf).astype(np.float32)
    cols = np.where(present, cand.columns, n)
    knn, sorted_keys = _sorted_neighbours(keys, cols, count)
    # Every column outside a row's list has raw distance >= t (its last candidate value), so its
    # normalised key is >= key(t). The order is settled when key(t) > the count-th key; rows whose
    # list holds all n columns are settled; t < 0 (negative rounding) bounds nothing.
    t = cand.values[:, -1] if cand.outside is None else cand.outside
    key_t = np.divide(_sq32(np.abs(t)), row_max2, dtype=np.float32)
    complete = present.sum(axis=1) >= n
    settled = complete | ((t >= 0) & (key_t > sorted_keys[:, count - 1]))
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


def _jaccard_into(out: np.ndarray, v: sp.csr_matrix, q: int, lambda_value: float,
                  fill_normalised: Callable[[int, int, np.ndarray], None], bar: Optional[tqdm] = None) -> None:
    """out[i, j] = (1 - lambda) J(i, j) + lambda D[i, q + j] for query rows, block by block.

    J(i, j) = 1 - m / (2 - m) with m(i, j) = sum_k min(V[i, k], V[j, k]) (paper eq. 11). Only
    gallery rows j sharing a non-zero column k with query i have m > 0: the column index of
    V's gallery rows lists them (the classic's inverted index), so each block gathers those
    (i, k, j) triples and sums them by (i, j); every other pair has J = 1.
    ``fill_normalised(start, stop, block)`` writes D's query rows start..stop-1 into ``block``;
    ``bar`` counts the query rows.
    """
    g = out.shape[1]
    if bar is not None:
        bar.unit = "query"
        bar.reset(total=q)
        bar.set_description("re-ranking (Jaccard)")
    gallery_cols = v[q:].tocsc()
    col_ptr, col_rows, col_vals = gallery_cols.indptr, gallery_cols.indices, gallery_cols.data
    # triples per query row, to size the blocks
    lengths = np.diff(col_ptr)[v.indices[: v.indptr[q]]]
    per_query = np.bincount(np.repeat(np.arange(q), np.diff(v.indptr[: q + 1])), weights=lengths, minlength=q)
    cumulative = np.concatenate([[0], np.cumsum(per_query)])
    rows_per_block = max(1, _JACCARD_ELEMENTS // max(g, 1))
    one_minus, lam = np.float32(1 - lambda_value), np.float32(lambda_value)
    start = 0
    while start < q:
        by_triples = int(np.searchsorted(cumulative, cumulative[start] + _JACCARD_TRIPLES, side="right")) - 1
        stop = min(q, start + rows_per_block, max(start + 1, by_triples))
        lo, hi = v.indptr[start], v.indptr[stop]
        k = v.indices[lo:hi]
        local = np.repeat(np.arange(stop - start), np.diff(v.indptr[start:stop + 1]))
        counts = lengths[lo:hi]
        # positions col_ptr[k] + 0..count-1 for every (i, k), without a Python loop
        offsets = np.cumsum(counts) - counts
        pos = np.arange(int(counts.sum())) - np.repeat(offsets - col_ptr[k], counts)
        mins = np.minimum(np.repeat(v.data[lo:hi], counts), col_vals[pos])
        shared = np.bincount(np.repeat(local, counts) * g + col_rows[pos], weights=mins,
                             minlength=(stop - start) * g)
        hit = np.flatnonzero(shared)
        m = shared[hit].astype(np.float32)
        del shared
        jaccard = 1 - m / (2 - m)
        block = out[start:stop]
        fill_normalised(start, stop, block)
        flat = block.reshape(-1)  # a view: out's rows are contiguous
        d_hit = flat[hit]
        # same float32 operations as the classic's jaccard * (1 - lambda) + D * lambda, J = 1 here
        block *= lam
        block += one_minus
        flat[hit] = jaccard * one_minus + d_hit * lam
        if bar is not None:
            bar.update(stop - start)
        start = stop


# --------------------------------------------------------------------------- shared tail

def _finish(out: np.ndarray, knn: np.ndarray, pair_keys: Callable[[np.ndarray, np.ndarray], np.ndarray],
            k: int, h: int, k2: int, q: int, lambda_value: float,
            fill_normalised: Callable[[int, int, np.ndarray], None], bar: Optional[tqdm] = None) -> np.ndarray:
    n = knn.shape[0]
    indptr, indices = _expanded_sets(knn, k, h)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    v = _encoding(indptr, indices, pair_keys(rows, indices), n)
    if k2 != 1:  # the classic skips the expansion for k2 == 1 (V stays as it is)
        v = _query_expansion(v, knn, k2)
    _jaccard_into(out, v, q, lambda_value, fill_normalised, bar)
    return out


# --------------------------------------------------------------------------- public API

def rerank(query_features: ArrayLike, gallery_features: ArrayLike, k1: int = 20, k2: int = 6,
           lambda_value: float = 0.3, *, knn_backend: str = "torch", block_size: int = _DEFAULT_BLOCK,
           progress: bool | None = None) -> np.ndarray:
    """k-reciprocal re-ranked query x gallery distances, straight from features.

    Equal to the classic ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` fed the squared
    Euclidean distance matrices of the same features (torchreid's ``compute_distance_matrix``),
    without ever holding an N x N array (N = q + g): memory is O(N k1) plus the q x g output
    and one block_size x block_size distance block.

    Args:
        query_features, gallery_features: q x d and g x d, numpy or torch (computed on their
            device; float64 stays float64, anything else runs in float32). With float64 the
            distances are rounded to float32 before squaring (the classic squares in float64),
            a difference of float32 rounding.
        k1, k2, lambda_value: the paper's parameters (defaults 20, 6, 0.3).
        knn_backend: ``"torch"`` (blocked matrix products, each pair of blocks once) or
            ``"faiss"`` (faiss-cpu exact ``IndexFlatL2`` search, for very large N). Both are exact;
            faiss rounds distances its own way, so near-ties (within float32 rounding) may
            order differently from the classic's matrices.
        block_size: rows per block of the distance sweep (>= 64).
        progress: a bar over the distance sweep, then over the queries of the Jaccard step
            (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        q x g float32 numpy array.
    """
    _check_params(k1, k2, lambda_value)
    if knn_backend not in KNN_BACKENDS:
        raise ValueError(f"knn_backend={knn_backend!r}: expected one of {', '.join(KNN_BACKENDS)}")
    if block_size < MIN_CHUNK_ROWS:
        raise ValueError(f"block_size={block_size}: expected at least {MIN_CHUNK_ROWS} rows")
    qf, gf = as_feature_pair(query_features, gallery_features, "query_features", "gallery_features")
    if qf.shape[0] == 0 or gf.shape[0] == 0:
        raise ValueError(f"empty query or gallery: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
    dtype = torch.float64 if torch.float64 in (qf.dtype, gf.dtype) else torch.float32
    feats = _JointFeatures(qf.to(dtype), gf.to(device=qf.device, dtype=dtype))
    # finite squared norms <=> every feature finite (and no overflow in the distances)
    if not bool(torch.isfinite(feats.sq_norms).all()):
        _check_finite(qf, "query_features")
        _check_finite(gf, "gallery_features")
        raise ValueError("features are too large: their squared norms overflow; expected finite distances")
    q, n = feats.q, feats.n
    k, h, k2_eff = _neighbour_counts(k1, k2, n)
    cand = _Candidates(n, min(k + _MARGIN, n))
    out = np.empty((q, n - q), dtype=np.float32)

    def full_rows(rows: np.ndarray) -> np.ndarray:
        return _normalise(_sq32(_distance_rows(feats, rows)), row_max2[rows])

    def pair_keys(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raw = _lookup(cand, rows, cols)
        missing = np.flatnonzero(np.isnan(raw))
        if missing.size:
            raw[missing] = _distance_pairs(feats, rows[missing], cols[missing])
        return np.divide(_sq32(raw), row_max2[rows], dtype=np.float32)

    def fill_normalised(start: int, stop: int, block: np.ndarray) -> None:
        # ``block`` is out[start:stop], holding the raw distances of the sweep: normalise in place
        np.square(block, out=block)
        np.divide(block, row_max2[start:stop, None], out=block)

    with progress_bar(desc="re-ranking (neighbours)", unit="block", progress=progress) as bar:
        if knn_backend == "torch":
            _sweep_features(feats, cand, out, block_size, bar)
        else:
            _faiss_candidates(feats, cand)
            _fill_query_gallery(feats, out, block_size)
        row_max2 = _squared_row_max(cand)
        knn = _finish_neighbours(cand, row_max2, k, n, full_rows)
        return _finish(out, knn, pair_keys, k, h, k2_eff, q, lambda_value, fill_normalised, bar)


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

    knn = np.empty((n, k), dtype=np.int64)
    row_max2 = np.empty(n, dtype=np.float32)
    rows_per_block = max(1, (1 << 24) // n)
    for start in range(0, n, rows_per_block):
        rows = np.arange(start, min(n, start + rows_per_block))
        sq = joint_rows(rows)
        row_max2[rows] = sq.max(axis=1)
        if not np.isfinite(row_max2[rows]).all():  # max propagates NaN and inf: every input value is read here
            for x, name in ((qg, "q_g"), (qq, "q_q"), (gg, "g_g")):
                _check_finite(x, name)
            raise ValueError("the squared distances overflow float32; expected smaller distances")
        _check_row_max(row_max2[rows], rows)
        knn[rows] = _smallest_per_row(_normalise(sq, row_max2[rows]), k)

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
    return _finish(out, knn, pair_keys, k, h, k2_eff, q, lambda_value, fill_normalised)


# --------------------------------------------------------------------------- helpers

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


def _distance_rows(feats: _JointFeatures, rows: np.ndarray) -> np.ndarray:
    """Full rows of the distance matrix, computed in groups of >= 64 rows (see distance.py)."""
    n, q = feats.n, feats.q
    group = max(MIN_CHUNK_ROWS, min(n, 1024))
    out = np.empty((rows.size, n), dtype=np.float32)
    for s in range(0, rows.size, group):
        take = rows[s:s + group]
        # pad small groups with other rows so the product uses the same kernel as the sweep
        filler = np.setdiff1d(np.arange(min(n, MIN_CHUNK_ROWS + take.size)), take)[: max(0, MIN_CHUNK_ROWS - take.size)]
        index = np.concatenate([take, filler])
        a, a_sq = feats.take(index), feats.sq_norms[torch.as_tensor(index, device=feats.device)]
        for lo, hi, part in ((0, q, feats.query), (q, n, feats.gallery)):
            d = squared_euclidean_block(a, part, a_sq, feats.sq_norms[lo:hi])
            out[s:s + take.size, lo:hi] = d[: take.size].cpu().numpy()
    return out


def _distance_pairs(feats: _JointFeatures, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Distances of scattered (row, col) pairs: same formula, dot products instead of a GEMM."""
    out = np.empty(rows.size, dtype=np.float32)
    step = max(1, (1 << 22) // feats.query.shape[1])
    for s in range(0, rows.size, step):
        r, c = rows[s:s + step], cols[s:s + step]
        dots = (feats.take(r) * feats.take(c)).sum(dim=1)
        rt, ct = torch.as_tensor(r, device=feats.device), torch.as_tensor(c, device=feats.device)
        out[s:s + step] = (feats.sq_norms[rt] + feats.sq_norms[ct] - 2 * dots).cpu().numpy()
    return out


def _fill_query_gallery(feats: _JointFeatures, out: np.ndarray, block_size: int) -> None:
    """Raw q x g distances into ``out`` in row blocks (used with the faiss backend)."""
    q = feats.q
    for a in _blocks(q, q, block_size):
        d = squared_euclidean_block(feats.rows(*a), feats.gallery, feats.sq_norms[a[0]:a[1]], feats.sq_norms[q:])
        out[a[0]:a[1]] = d.cpu().numpy()


def _faiss_candidates(feats: _JointFeatures, cand: _Candidates) -> None:
    """Nearest neighbours and farthest item of every row with faiss-cpu flat (exact) indexes.

    faiss computes distances with its own rounding, so it only proposes the columns: their
    distances are then recomputed with the classic's formula (one product per block of rows
    with the union of their columns), and faiss's threshold, lowered by a bound of both
    roundings, bounds every distance outside the lists (rows it cannot settle are recomputed).
    """
    try:
        import faiss
    except ImportError as err:
        raise ImportError("knn_backend='faiss' needs faiss-cpu (pip install faiss-cpu, or reid[faiss])") from err
    x = np.concatenate([feats.query.cpu().numpy(), feats.gallery.cpu().numpy()]).astype(np.float32, copy=False)
    n, dim = x.shape
    index = faiss.IndexFlatL2(dim)
    index.add(x)
    faiss_values, columns = index.search(x, cand.width)
    # Farthest item: max_j |x - y_j|^2 = |x|^2 + max_j <(-2x, 1), (y_j, |y_j|^2)>, a max inner product.
    norms = (x.astype(np.float64) ** 2).sum(axis=1)
    base = faiss.IndexFlatIP(dim + 1)
    base.add(np.hstack([x, norms[:, None]]).astype(np.float32))
    _, farthest = base.search(np.hstack([-2 * x, np.ones((n, 1), dtype=np.float32)]).astype(np.float32), 1)
    del index, base, x
    # |computed - exact| <= dim * u * (|x| + |y|)^2 for |x|^2 + |y|^2 - 2 x.y in float32 (u = 2^-24),
    # for faiss and for the classic formula alike
    root = np.sqrt(norms)
    slack = 2 * dim * 2.0**-24 * (root + root.max()) ** 2
    cand.outside = (faiss_values[:, -1] - slack).astype(np.float32)
    values = np.empty_like(faiss_values)
    for start in range(0, n, MIN_CHUNK_ROWS):
        stop = min(n, start + MIN_CHUNK_ROWS)
        if n - stop < MIN_CHUNK_ROWS:  # keep every group >= 64 rows (same product kernel)
            stop = n
        group = np.arange(start, stop)
        wanted = np.concatenate([columns[group].ravel(), farthest[group, 0]])
        union = np.unique(np.concatenate([wanted, np.arange(min(n, MIN_CHUNK_ROWS))]))
        d = squared_euclidean_block(feats.take(group), feats.take(union), feats.sq_norms[torch.as_tensor(group)],
                                    feats.sq_norms[torch.as_tensor(union)]).cpu().numpy()
        values[group] = np.take_along_axis(d, np.searchsorted(union, columns[group]), axis=1)
        cand.row_max[group] = d[np.arange(group.size), np.searchsorted(union, farthest[group, 0])]
        if stop == n:
            break
    cand.keys[:] = _pack(values, columns)
    cand.keys.sort(axis=1)
