"""Where each query's same-label gallery items land in its ranked gallery: the core that the
camera-aware ranking metrics (``rank.py``) and the retrieval metrics (``retrieval.py``) share.

The order is the canonical one of ``reid.evaluation.distance``: ascending canonical distance,
exact ties by gallery index. Only the positions of a query's own-label items matter to every
metric, and the position of item ``t`` is the number of items ``j`` with
``(d_j, j) < (d_t, t)``, so no row is ever sorted in full: the items at or below the
farthest position that matters are counted (a sort of those candidates), and a query's
own-label items are ordered among themselves to take out the ones its protocol leaves out.

A block of distances comes with a bound ``e`` per row (``FeatureDistances.fast``: the float32
product, ``|fast - canonical| <= e``) or none (canonical values: a dense matrix, or
``FeatureDistances.exact``). With a bound, an item's position is settled when no other item
lies within ``2e`` of it (every comparison is then decided by the fast values); otherwise the
canonical values of the item and of its neighbours within the bound decide. When that would
take more canonical values than a dense block is worth, the block is recomputed canonically.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..progress import progress_bar
from .distance import FeatureDistances
from .protocol import Labels

# Distances per block of queries: ~4M float32 (16 MiB) keeps a block's temporaries in the
# caches' neighbourhood and gives the threads enough blocks to share.
_BLOCK_ELEMENTS = 1 << 22
# Above this fraction of candidates a row sort (SIMD) beats extracting and sorting candidates.
_SORT_ALL_FRACTION = 0.4
# Columns sampled at least to estimate a row's depth cut (_sampled_cut).
_MIN_CUT_SAMPLE = 2048
# A canonical pair value costs about as much as this many entries of a dense canonical block
# (a gather of two rows against a share of a float64 matrix product, both linear in the width).
_PAIR_COST_ENTRIES = 256
BEYOND = np.iinfo(np.int64).max  # rank of a match past the depth that was asked for
# Peak bytes per entry of a block while it is ranked (the float32 block, the candidate mask,
# their indices, sort keys and the sort's output; measured by benchmarks/bench_streaming.py).
BLOCK_BYTES_PER_ENTRY = 48


def available_memory_mb() -> float:
    """Memory the system can give without swapping now (MemAvailable; 4 GiB where unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 4096.0


def block_rows_for(num_gallery: int, memory_mb: float | None, bytes_per_entry: int = BLOCK_BYTES_PER_ENTRY) -> int:
    """Query rows per block so that a block's work (``bytes_per_entry`` per distance; default:
    ranking it) stays within ``memory_mb`` (at least one row; default budget: a quarter of the
    available memory)."""
    if memory_mb is None:
        memory_mb = available_memory_mb() / 4
    if not memory_mb > 0:
        raise ValueError(f"memory_mb={memory_mb!r}: expected a positive number of MiB or None")
    per_row = max(num_gallery, 1) * bytes_per_entry
    return max(1, int(memory_mb * 2 ** 20 // per_row))


class DistanceBlocks(Protocol):
    """What the ordering reads: distances of blocks of query rows against the whole gallery."""

    num_query: int
    num_gallery: int
    parallel: bool  # whether blocks may run on several threads at once (each worker's torch ops on one thread)
    min_rows: int  # query rows per block at least (products run far below peak on fewer)
    max_rows: int  # query rows per block at most (a memory budget)

    def columns(self, keep: np.ndarray) -> "DistanceBlocks":
        """The same distances with only the gallery columns ``keep`` (a bool mask)."""

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """(float32 rows x gallery, per-row bound or None when the values are canonical)."""

    def exact(self, rows: slice) -> np.ndarray:
        """Canonical float32 rows x gallery."""

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Canonical values of (query row, gallery column) pairs."""


class MatrixBlocks:
    """A given distance matrix: its values are the canonical ones (compared in float32)."""

    parallel = True
    min_rows = 1
    max_rows = np.iinfo(np.int64).max  # the matrix is in memory already

    def __init__(self, distmat: np.ndarray) -> None:
        self.distmat = distmat
        self.num_query, self.num_gallery = distmat.shape

    def columns(self, keep: np.ndarray) -> "MatrixBlocks":
        return MatrixBlocks(self.distmat[:, keep])

    def block(self, rows: slice) -> tuple[np.ndarray, None]:
        return self.exact(rows), None

    def exact(self, rows: slice) -> np.ndarray:
        return np.ascontiguousarray(self.distmat[rows], dtype=np.float32)

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.distmat[rows, cols].astype(np.float32)


class FeatureBlocks:
    """Blocks computed from features (``FeatureDistances``): float32 products with their bound.

    ``memory_mb``: the most the blocks in flight and their ranking temporaries may take (default:
    a quarter of the memory available now); blocks hold fewer query rows when a full-width block
    would not fit.

    Blocks run on several threads, each worker's product on one thread: the ranking of a block
    (numpy, one thread) then overlaps the products of the others instead of idling the cores.
    """

    parallel = True

    def __init__(self, space: FeatureDistances, memory_mb: float | None = None) -> None:
        self.space = space
        self.memory_mb = memory_mb
        self.num_query, self.num_gallery = space.num_query, space.num_gallery
        self.max_rows = block_rows_for(self.num_gallery, memory_mb)
        # products run far below peak on fewer than 256 rows; fewer only when memory says so
        self.min_rows = min(256, self.max_rows)

    def columns(self, keep: np.ndarray) -> "FeatureBlocks":
        return FeatureBlocks(self.space.gallery_subset(keep), self.memory_mb)

    def block(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        values, bound = self.space.fast(rows)
        return values.cpu().numpy(), bound

    def exact(self, rows: slice) -> np.ndarray:
        return self.space.exact(rows).cpu().numpy()

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.space.pairs(rows, cols)


@dataclass(frozen=True)
class LabelGroups:
    """The gallery grouped by label: ``members[starts[i]:starts[i] + sizes[i]]`` (ascending
    gallery index) carry ``labels[i]``."""

    labels: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    members: np.ndarray

    @classmethod
    def of(cls, gallery_labels: np.ndarray) -> "LabelGroups":
        members = np.argsort(gallery_labels, kind="stable")
        labels, starts, sizes = np.unique(gallery_labels[members], return_index=True, return_counts=True)
        return cls(labels, starts, sizes, members)

    def _lookup(self, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each query label's group index, clipped; how many gallery items carry it)."""
        pos = np.minimum(np.searchsorted(self.labels, query_labels), max(self.labels.size - 1, 0))
        if self.labels.size == 0:
            return pos, np.zeros(query_labels.shape, dtype=np.int64)
        return pos, np.where(self.labels[pos] == query_labels, self.sizes[pos], 0)

    def sizes_of(self, query_labels: np.ndarray) -> np.ndarray:
        """How many gallery items carry each query's label."""
        return self._lookup(query_labels)[1]

    def items_of(self, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gallery indices of each query's label, padded with 0; which entries are real)."""
        pos, sizes = self._lookup(query_labels)
        slot = np.arange(max(int(sizes.max(initial=0)), 1))
        real = slot[None, :] < sizes[:, None]
        if self.labels.size == 0:
            return np.zeros(real.shape, dtype=np.int64), real
        return self.members[np.where(real, self.starts[pos][:, None] + slot[None, :], 0)], real


@dataclass(frozen=True)
class BlockRanks:
    """Per query of a block: the 1-based ranks of its matches once the left-out items are gone,
    ascending (``BEYOND`` past the requested depth and in the padding), and their count."""

    ranks: np.ndarray  # rows x width int64
    num_matches: np.ndarray  # rows int64 (all matches, also those past the depth)


class _NeedsExact(Exception):
    """The bound leaves too much to canonical values: recompute the block canonically."""


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in [0, 2^32) ordered like the float32 ``values`` (NaN-free, -0.0 == +0.0)."""
    bits = (values.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return ordered.astype(np.int64) + (1 << 31)


def _outward(values: np.ndarray, bound: np.ndarray, sign: int) -> np.ndarray:
    """float32 ``ceil(values - bound)`` (sign -1) or ``floor(values + bound)`` (sign +1): the
    float32 interval that holds every float32 within ``bound`` of ``values`` (inf stays inf)."""
    values = np.asarray(values, dtype=np.float32)
    if not np.any(bound):
        return values
    wide = values.astype(np.float64) + sign * bound
    with np.errstate(invalid="ignore"):  # inf + inf * 2^-50: inf stays as it is
        wide = np.where(np.isfinite(wide), wide + sign * np.abs(wide) * 2.0 ** -50, wide)  # the line above's rounding
    out = wide.astype(np.float32)
    step = out < wide if sign < 0 else out > wide
    return np.where(step, np.nextafter(out, np.float32(-sign * np.inf)), out)


class _Candidates:
    """The items of every row at or below the row's limit, sorted, for counting below thresholds.

    Kept as one sorted int64 key per item, (row << 32) | order key of its value, so that a count
    for any (row, threshold) is one binary search. ``with_columns``: also which gallery item
    sits at each sorted position (an argsort instead of a sort), to read the items between two
    thresholds.
    """

    def __init__(self, block: np.ndarray, limit: np.ndarray, with_columns: bool) -> None:
        rows, width = block.shape
        below = block <= limit[:, None]
        self.columns: np.ndarray | None = None
        if np.count_nonzero(below) > _SORT_ALL_FRACTION * rows * width:  # most of the block: sort whole rows
            del below
            values, index = torch.sort(torch.from_numpy(block), dim=1)
            self.keys = ((np.arange(rows, dtype=np.int64)[:, None] << 32) | _order_keys(values.numpy())).ravel()
            self.columns = index.numpy().ravel() if with_columns else None
            self.starts = np.arange(rows, dtype=np.int64) * width
            return
        flat = np.flatnonzero(below)
        del below
        row = flat // width
        keys = (row << 32) | _order_keys(block.reshape(-1)[flat])
        if with_columns:
            order = np.argsort(keys)
            self.keys, self.columns = keys[order], (flat % width)[order]
        else:
            keys.sort()
            self.keys = keys
        counts = np.bincount(row, minlength=rows)
        self.starts = np.cumsum(counts) - counts

    @classmethod
    def from_entries(cls, num_rows: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                     limit: np.ndarray, with_columns: bool) -> "_Candidates":
        """The same from a sparse block: entries (row, column, value) that hold every item of a
        row at or below ``limit`` (and maybe more)."""
        keep = values <= limit[rows]
        rows, cols = rows[keep].astype(np.int64), cols[keep]
        keys = (rows << 32) | _order_keys(values[keep])
        self = cls.__new__(cls)
        if with_columns:
            order = np.argsort(keys)
            self.keys, self.columns = keys[order], cols[order].astype(np.int64)
        else:
            keys.sort()
            self.keys, self.columns = keys, None
        counts = np.bincount(rows, minlength=num_rows)
        self.starts = np.cumsum(counts) - counts
        return self

    def count(self, rows: np.ndarray, thresholds: np.ndarray, side: str) -> np.ndarray:
        """Items of ``rows[i]`` below (side 'left': <, 'right': <=) the float32 ``thresholds[i]``
        (``rows`` broadcasts against ``thresholds``)."""
        t_keys = (rows.astype(np.int64) << 32) | _order_keys(thresholds)
        return np.searchsorted(self.keys, t_keys, side=side) - self.starts[rows]

    def between(self, rows: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gallery items at sorted positions [low[i], high[i]) of ``rows[i]``: (i, column)."""
        sizes = high - low
        owner = np.repeat(np.arange(rows.size), sizes)
        offset = np.arange(owner.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return owner, self.columns[self.starts[rows[owner]] + low[owner] + offset]


class DenseRows:
    """A block of distances held whole (rows x gallery): what ``_place`` reads of it."""

    def __init__(self, block: np.ndarray) -> None:
        self.block = block
        self.shape = block.shape

    def take(self, items: np.ndarray) -> np.ndarray:
        return np.take_along_axis(self.block, items, axis=1)

    def candidates(self, limit: np.ndarray, with_columns: bool) -> _Candidates:
        return _Candidates(self.block, limit, with_columns)

    def cut(self, kth: int) -> np.ndarray:
        return _sampled_cut(self.block, kth)

    def exact_kth(self, rows: np.ndarray, kth: int) -> np.ndarray:
        return _exact_kth(self.block[rows], kth)


class SparseRows:
    """A block known only at and below a per-row limit: entries (row, column, value) that hold
    every item of a row at or below ``complete[row]``, and a depth cut per row chosen beforehand
    so that every value ``_place`` reads lies below it (``complete >= outward(outward(cut, 2e),
    2e)``; a read above it raises ``_NeedsExact``). ``take`` reads the values of a row's
    own-label items from the entries (``+inf`` for those above the limit). A row whose cut holds
    too few items is made whole (``dense_rows``: its values against the whole gallery, within
    the same bound) and takes its exact kth smallest, as a dense block's row would."""

    def __init__(self, num_rows: int, width: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                 complete: np.ndarray, cut: np.ndarray, row_labels: np.ndarray, gallery_labels: np.ndarray,
                 slot: np.ndarray, dense_rows) -> None:
        """``slot``: each gallery item's place in its label group (``LabelGroups.members`` order)."""
        self.shape = (num_rows, width)
        self.rows, self.cols, self.values = rows, cols, values
        self._complete = complete.astype(np.float32)
        self._cut, self._row_labels, self._gallery_labels, self._slot = cut, row_labels, gallery_labels, slot
        self._dense_rows = dense_rows

    def take(self, items: np.ndarray) -> np.ndarray:
        out = np.full(items.shape, np.inf, dtype=np.float32)
        same = self._gallery_labels[self.cols] == self._row_labels[self.rows]
        out[self.rows[same], self._slot[self.cols[same]]] = self.values[same]
        return out

    def candidates(self, limit: np.ndarray, with_columns: bool) -> _Candidates:
        if np.any(limit > self._complete):  # not expected: the dense block decides then
            raise _NeedsExact
        return _Candidates.from_entries(self.shape[0], self.rows, self.cols, self.values, limit, with_columns)

    def cut(self, kth: int) -> np.ndarray:
        return self._cut.copy()

    def exact_kth(self, rows: np.ndarray, kth: int) -> np.ndarray:
        whole = self._dense_rows(rows)
        kept = ~np.isin(self.rows, rows)
        width = self.shape[1]
        self.rows = np.concatenate([self.rows[kept], np.repeat(rows, width).astype(self.rows.dtype)])
        self.cols = np.concatenate([self.cols[kept], np.tile(np.arange(width, dtype=self.cols.dtype), rows.size)])
        self.values = np.concatenate([self.values[kept], whole.ravel()])
        self._complete[rows] = np.inf
        return _exact_kth(whole, kth)


def _positions(block: DenseRows | SparseRows, bound: np.ndarray | None, items: np.ndarray, values: np.ndarray,
               targets: np.ndarray, pairs, budget: float, floor: np.ndarray) -> tuple[np.ndarray, _Candidates]:
    """(The canonical position (number of items before it) of every target item, -1 elsewhere;
    the candidates counted, every item up to the targets' windows and to ``floor``).

    ``items``: gallery indices per row (padded), ``values`` their block values; ``targets``: which
    of them to place; ``pairs``: canonical values of (block row, column) pairs. Raises
    _NeedsExact past ``budget`` pairs.
    """
    num_rows = block.shape[0]
    spread = (np.zeros(num_rows) if bound is None else 2 * bound)[:, None]
    low = np.where(targets, _outward(values, spread, -1), np.inf).astype(np.float32)
    high = np.where(targets, _outward(values, spread, +1), -np.inf).astype(np.float32)
    cands = block.candidates(np.maximum(high.max(axis=1), floor), with_columns=bound is not None)
    row_of = np.arange(num_rows)[:, None]
    before, upto = cands.count(row_of, low, "left"), cands.count(row_of, high, "right")
    position = np.where(targets, before, -1)
    # A target alone in its window: every comparison with it is decided by the values at hand.
    tr, tc = np.nonzero(targets & (upto - before > 1))
    if tr.size == 0:
        return position, cands
    target_cols = items[tr, tc]
    if bound is None:  # canonical values (a dense block) with exact ties: lower gallery indices come first
        dense = block.block
        for r, c, g in zip(tr.tolist(), tc.tolist(), target_cols.tolist()):
            position[r, c] += int(np.count_nonzero(dense[r, :g] == dense[r, g]))
        return position, cands
    if tr.size + int((upto - before)[tr, tc].sum()) > budget:
        raise _NeedsExact
    canon_t = pairs(tr, target_cols)
    # the items that can still precede the target: fast values within e of its canonical value
    start = cands.count(tr, _outward(canon_t, bound[tr], -1), "left")
    stop = cands.count(tr, _outward(canon_t, bound[tr], +1), "right")
    owner, cols = cands.between(tr, start, stop)
    other = cols != target_cols[owner]
    owner, cols = owner[other], cols[other]
    canon = pairs(tr[owner], cols)
    earlier = (canon < canon_t[owner]) | ((canon == canon_t[owner]) & (cols < target_cols[owner]))
    position[tr, tc] = start + np.bincount(owner, weights=earlier, minlength=tr.size).astype(np.int64)
    return position, cands


def block_ranks(source: DistanceBlocks, rows: slice, q_labels: np.ndarray, q_camids: np.ndarray,
                groups: LabelGroups, g_camids: np.ndarray, *, depth: np.ndarray | None = None) -> BlockRanks:
    """The ranks of the matches of queries ``rows`` (``q_labels``/``q_camids`` are theirs).

    Gallery items of the query's label are its matches, except those of the query's camera
    too, which are left out of its list (the camera rule of ``reid.evaluation.protocol``: give
    camids that make it the protocol's). ``depth``: per query, only ranks up to it are needed
    (larger ones come back as ``BEYOND``); None: every rank.
    """
    block, bound = source.block(rows)
    if np.isnan(block.max(initial=0.0)):  # max propagates NaN: one pass finds any
        first = np.arange(source.num_query)[rows][0]
        raise ValueError(f"distmat contains NaN (in rows {first}..{first + block.shape[0] - 1}); "
                         "expected numbers (inf is allowed)")
    items, real, left_out, match = query_items(groups, q_labels, q_camids, g_camids)
    pairs = row_pairs(source, rows)
    budget = block.size / _PAIR_COST_ENTRIES
    try:
        position = _place(DenseRows(block), bound, items, real, left_out, depth, pairs, budget)
    except _NeedsExact:
        position = _place(DenseRows(source.exact(rows)), None, items, real, left_out, depth, pairs, budget)
    return ranks_from_positions(position, left_out, match, depth)


def query_items(groups: LabelGroups, q_labels: np.ndarray, q_camids: np.ndarray,
                g_camids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(items, real, left_out, match) of a block of queries: the gallery items of each query's
    label (padded; ``real`` marks the entries that are), those its camera rule leaves out of its
    list, and the rest, its matches."""
    items, real = groups.items_of(q_labels)
    left_out = real & (g_camids[items] == q_camids[:, None])
    return items, real, left_out, real & ~left_out


def row_pairs(source: DistanceBlocks, rows: slice | np.ndarray):
    """Canonical values of (block row, gallery column) pairs of the query rows ``rows``."""
    row_index = np.arange(source.num_query)[rows]

    def pairs(local_rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return source.pairs(row_index[local_rows], cols)

    return pairs


def ranks_from_positions(position: np.ndarray, left_out: np.ndarray, match: np.ndarray,
                         depth: np.ndarray | None) -> BlockRanks:
    """BlockRanks from the positions ``_place`` found (-1: not placed, past the depth)."""
    # rank after removal: the position minus the left-out items placed before the match
    placed = position >= 0
    order = np.argsort(np.where(placed, position, BEYOND), axis=1, kind="stable")
    sorted_pos = np.take_along_axis(np.where(placed, position, BEYOND), order, axis=1)
    sorted_left = np.take_along_axis(left_out & placed, order, axis=1)
    sorted_match = np.take_along_axis(match, order, axis=1)
    rank = sorted_pos - (np.cumsum(sorted_left, axis=1) - sorted_left) + 1
    keep = sorted_match & (sorted_pos != BEYOND)
    if depth is not None:
        keep &= rank <= depth[:, None]
    ranks = np.where(keep, rank, BEYOND)
    ranks.sort(axis=1)
    return BlockRanks(ranks=ranks, num_matches=match.sum(axis=1))


def cut_sample_step(width: int, kth: int) -> int:
    """The column step of the sample that estimates a depth cut; 0: too narrow a gallery to
    sample (the exact kth smallest is taken)."""
    size = min(width, max(4 * kth, _MIN_CUT_SAMPLE))
    return 0 if size * 2 >= width else width // size


def cut_from_sample(sample: np.ndarray, kth: int, width: int) -> np.ndarray:
    """Per row, an estimate a little above the kth smallest of ``width`` values from an evenly
    spaced sample of them: the sample's quantile that should hold kth items, plus a margin."""
    rank = min(sample.shape[1], int(kth * sample.shape[1] / width * 1.25) + 8)
    return _exact_kth(sample, rank)  # a selection (np.partition: about 9x torch.topk's speed here)


def _sampled_cut(block: np.ndarray, kth: int) -> np.ndarray:
    """Per row, an estimate a little above the kth smallest value, from a sample of the columns.

    An exact selection over every column costs more than the products at SOP size (the
    1,000th of 60,502), so the cut comes from an evenly spaced sample (``cut_from_sample``).
    ``_place`` checks the count it relies on."""
    step = cut_sample_step(block.shape[1], kth)
    if step == 0:
        return _exact_kth(block, kth)
    return cut_from_sample(block[:, ::step], kth, block.shape[1])


def _exact_kth(block: np.ndarray, kth: int) -> np.ndarray:
    return np.partition(block, kth - 1, axis=1)[:, kth - 1].copy()  # not a view that keeps the copy alive


def _place(block: DenseRows | SparseRows, bound: np.ndarray | None, items: np.ndarray, real: np.ndarray,
           left_out: np.ndarray, depth: np.ndarray | None, pairs, budget: float) -> np.ndarray:
    """Positions of the items that can matter: all of them, or those that can reach ``depth``.

    With a depth: if at least kth items lie at or below a value ``cut``, a match of rank <= depth
    (at most depth - 1 matches and every left-out item before it) lies at or below it too, so
    items above ``cut`` (+ the bound) need no position. The rows that leave items out this way
    are checked to hold kth items at or below their cut (the candidates reach it); a row whose
    sampled cut falls short takes the exact kth smallest and the block is placed again.
    """
    width = block.shape[1]
    values = block.take(items)
    no_floor = np.full(block.shape[0], -np.inf, dtype=np.float32)
    kth = width if depth is None else min(width, int(depth.max(initial=1)) + int(left_out.sum(axis=1).max(initial=0)))
    if kth >= width:
        return _positions(block, bound, items, values, real, pairs, budget, no_floor)[0]
    cut = block.cut(kth)
    spread = np.zeros(block.shape[0]) if bound is None else 2 * bound
    while True:
        targets = real & (values <= _outward(cut, spread, +1)[:, None])
        pruned = np.flatnonzero((real & ~targets).any(axis=1))
        floor = no_floor.copy()
        floor[pruned] = cut[pruned]
        position, cands = _positions(block, bound, items, values, targets, pairs, budget, floor)
        short = pruned[cands.count(pruned, cut[pruned], "right") < kth]
        if short.size == 0:
            return position
        cut[short] = block.exact_kth(short, kth)
        values = block.take(items)  # a sparse block's rows made whole now hold more of their items


def match_ranks(source: DistanceBlocks, labels: Labels, *, depth: np.ndarray | None = None,
                num_threads: int | None = None, progress: bool | None = None,
                description: str = "ranking") -> tuple[np.ndarray, np.ndarray]:
    """(ranks, num_matches) of every query: ``block_ranks`` over blocks of queries, padded to
    one width with ``BEYOND``. ``depth``: per query, as there. ``num_threads``: worker threads
    over the blocks of a source that allows it (default: torch's thread count)."""
    num_q = source.num_query
    groups = LabelGroups.of(labels.g_pids)
    threads = max(1, min(int(num_threads if num_threads is not None else torch.get_num_threads()),
                         os.cpu_count() or 1))
    workers = threads if source.parallel else 1
    blocks = query_blocks(source, slice(0, num_q), workers)
    workers = min(workers, len(blocks))

    def run(block: slice) -> BlockRanks:
        if workers > 1:  # this worker thread's own torch thread count (an OpenMP setting per thread)
            torch.set_num_threads(1)
        return block_ranks(source, block, labels.q_pids[block], labels.q_camids[block], groups, labels.g_camids,
                           depth=None if depth is None else depth[block])

    parts: list[BlockRanks] = []
    with progress_bar(total=num_q, desc=description, unit="query", progress=progress) as bar:
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            for block, part in zip(blocks, pool.map(run, blocks) if pool else map(run, blocks)):
                parts.append(part)
                bar.update(block.stop - block.start)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    stacked = stack_ranks(parts)
    return stacked.ranks, stacked.num_matches


def query_blocks(source: DistanceBlocks, rows: slice, workers: int = 1) -> list[slice]:
    """``rows`` in blocks of about ``_BLOCK_ELEMENTS`` distances (at least ``source.min_rows``),
    ``workers`` of which share the source's memory budget at a time."""
    max_rows = max(1, source.max_rows // workers)
    size = max(1, min(rows.stop - rows.start, max_rows,
                      max(min(source.min_rows, max_rows), _BLOCK_ELEMENTS // max(source.num_gallery, 1))))
    return [slice(s, min(s + size, rows.stop)) for s in range(rows.start, rows.stop, size)]


def stack_ranks(parts: list[BlockRanks]) -> BlockRanks:
    """Consecutive blocks' ranks as one, padded to one width with ``BEYOND``."""
    width = max([part.ranks.shape[1] for part in parts], default=1)
    ranks = np.full((sum(part.ranks.shape[0] for part in parts), width), BEYOND, dtype=np.int64)
    start = 0
    for part in parts:
        ranks[start:start + part.ranks.shape[0], :part.ranks.shape[1]] = part.ranks
        start += part.ranks.shape[0]
    num_matches = np.concatenate([part.num_matches for part in parts]) if parts else np.zeros(0, dtype=np.int64)
    return BlockRanks(ranks=ranks, num_matches=num_matches)
