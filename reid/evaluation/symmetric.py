"""Leave-one-out rankings from half the products: each pair's distance is computed once.

When a set is its own gallery, the distance of (i, j) is that of (j, i), so the float32 product
of a tile of rows I against columns J serves the rows of I and, read by columns, the rows of J.
The retrieval metrics need only a row's items up to a depth (``reid.evaluation.ordering``:
``_place`` counts the items at or below a cut), so a tile leaves, for each of its rows and each
of its columns, only the entries at or below that row's limit; a strip of rows is placed once
every tile that touches it has been computed, from those entries alone (``SparseRows``).

The cut of each row is estimated beforehand from an evenly spaced sample of the columns (a
product of about 13% of the whole at SOP size, as ``_sampled_cut`` samples a dense block), and
the limit is the cut widened twice by the row's bound, which holds every value ``_place`` reads.
Both orientations of a tile may use their own row's bound: the product's error for a pair is
bounded by ``(|x_i| + |x_j|)^2`` (euclidean; a constant for cosine), which each row's bound
``(|x_row| + max |x|)^2`` covers. A row whose sampled cut holds too few items is made whole
from its dense row (``SparseRows.exact_kth``); a strip whose near ties would take too many
canonical values is ranked again from its dense blocks (``ordering.block_ranks``). The result is
always that of a full stable sort of canonical distances, whatever the tiles, threads or CPU.

Memory: a strip's entries (about 1.25 x the depth per row) are held from the first tile that
touches the strip until the strip is placed; with strips placed in order that is about a
quarter of all entries at the peak, plus a tile per worker thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch

from ..progress import progress_bar
from .distance import FeatureDistances
from . import ordering
from .ordering import (BlockRanks, FeatureBlocks, LabelGroups, SparseRows, _NeedsExact, _outward, _place,
                       available_memory_mb, block_ranks, cut_from_sample, cut_sample_step, query_blocks, query_items,
                       ranks_from_positions, row_pairs, stack_ranks)
from .protocol import Labels

# Rows of a strip (a tile is strip x strip: 16 MiB of float32 at 2,048).
_STRIP_ROWS = 2048
# Bytes an entry takes while its strip waits (row, column, value), and their sort when placed.
_ENTRY_BYTES = 24
# An entry kept costs about as much as this many multiply-adds of a CPU product (measured on
# the 2-core box: about 60 ns an entry against 100 GFLOP/s a core).
_ENTRY_COST_MULTIPLY_ADDS = 3000


def symmetric_applies(space: FeatureDistances, kth: int, memory_mb: float | None = None) -> bool:
    """Whether ``symmetric_match_ranks`` is the faster way to rank a set against itself to
    ``kth`` items per row: on the CPU (a GPU's products cost next to nothing), with several
    strips and a sampled cut, when the products it saves (half the pairs, less the sample's,
    ``dim + 2`` multiply-adds each) outweigh the entries it keeps (about 1.25 kth a row), and
    those fit the budget (default: a quarter of the memory available now). At SOP size
    (60,502 items, 512-d, depth 1,001) it applies; at 128-d, or at 24,000 x 512, it does not."""
    num = space.num_query
    step = cut_sample_step(num, kth)
    if not (space.same_set and space.device.type == "cpu" and num >= 4 * _STRIP_ROWS and step > 0):
        return False
    saved = (num / 2 - len(range(0, num, step))) * (space.dim + 2)
    budget = (available_memory_mb() / 4 if memory_mb is None else memory_mb) * 2 ** 20
    return saved > 1.25 * kth * _ENTRY_COST_MULTIPLY_ADDS and num * 1.25 * kth * _ENTRY_BYTES / 2 <= budget


@dataclass
class _Strip:
    rows: slice
    pending: int  # tiles that touch it and are not done
    parts: list = field(default_factory=list)  # (local rows, columns, values) of finished tiles
    cut: np.ndarray | None = None  # each row's depth cut, estimated from the sample


def symmetric_match_ranks(space: FeatureDistances, labels: Labels, depth: np.ndarray, *,
                          num_threads: int | None = None, progress: bool | None = None,
                          description: str = "ranking") -> tuple[np.ndarray, np.ndarray]:
    """``ordering.match_ranks(FeatureBlocks(space), labels, depth=depth)`` for a set ranked
    against itself (``space.same_set``; the leave-one-out camera rule in ``labels``), from the
    products of the tiles on and above the diagonal only. Same result to the bit."""
    if not space.same_set:
        raise ValueError("symmetric_match_ranks: expected one feature set ranked against itself")
    threads = max(1, min(int(num_threads if num_threads is not None else torch.get_num_threads()),
                         os.cpu_count() or 1))
    with progress_bar(total=space.num_query, desc=description, unit="query", progress=progress) as bar:
        stacked = stack_ranks(_Run(space, labels, depth, threads).ranks(bar))  # strips in order
    return stacked.ranks, stacked.num_matches


class _Run:
    """The strips, their cuts and limits, and the three kinds of task: a strip's cut (a product
    against the sample columns), a tile (its entries to the strips of its rows and columns), a
    strip's placement (once every tile that touches it is done)."""

    def __init__(self, space: FeatureDistances, labels: Labels, depth: np.ndarray, threads: int) -> None:
        num = space.num_query
        self.space, self.labels, self.depth, self.threads = space, labels, depth, threads
        self.groups = LabelGroups.of(labels.g_pids)
        self.slot = np.empty(num, dtype=np.int64)
        self.slot[self.groups.members] = np.arange(num) - np.repeat(self.groups.starts, self.groups.sizes)
        self.kth = min(num, int(depth.max(initial=1)) + 1)  # + the query itself, which its list leaves out
        self.step = cut_sample_step(num, self.kth)
        if self.step == 0 or self.kth >= num:
            raise ValueError(f"symmetric_match_ranks: {num} items are too few for a sampled cut at depth {self.kth}")
        self.strips = [_Strip(slice(s, min(s + _STRIP_ROWS, num)), 0) for s in range(0, num, _STRIP_ROWS)]
        self.tiles = [(i, j) for i in range(len(self.strips)) for j in range(i, len(self.strips))]
        for i, j in self.tiles:
            self.strips[i].pending += 1
            self.strips[j].pending += int(j != i)
        self.bound = space.fast_bound()
        self.limit = np.empty(num, dtype=np.float32)
        self.lock = threading.Lock()

    def _one_thread(self) -> None:
        if self.threads > 1:  # this worker's own torch thread count (an OpenMP setting per thread)
            torch.set_num_threads(1)

    def cut(self, strip: _Strip) -> None:
        self._one_thread()
        num = self.space.num_query
        sample = self.space.fast(strip.rows, slice(0, num, self.step))[0].cpu().numpy()
        strip.cut = cut_from_sample(sample, self.kth, num)
        spread = 2 * self.bound[strip.rows]
        self.limit[strip.rows] = _outward(_outward(strip.cut, spread, +1), spread, +1)

    def tile(self, i: int, j: int) -> None:
        self._one_thread()
        rows, cols = self.strips[i].rows, self.strips[j].rows
        tile = self.space.fast(rows, cols)[0].cpu().numpy()
        width = tile.shape[1]
        flat = np.flatnonzero(tile <= self.limit[rows][:, None])  # (flat: a 2-D nonzero is several times slower)
        r, c = np.divmod(flat, width)
        found = [(i, r.astype(np.int32), (c + cols.start).astype(np.int32), tile.ravel()[flat])]
        if j != i:  # the tile read by columns: the rows of strip j
            flat = np.flatnonzero(tile <= self.limit[cols][None, :])
            r, c = np.divmod(flat, width)
            found.append((j, c.astype(np.int32), (r + rows.start).astype(np.int32), tile.ravel()[flat]))
        with self.lock:
            for index, *part in found:
                self.strips[index].parts.append(part)

    def place(self, strip: _Strip) -> BlockRanks:
        self._one_thread()
        parts, strip.parts = strip.parts, []
        local, cols, values = (np.concatenate(column) for column in zip(*parts))
        return _strip_ranks(self.space, self.labels, self.groups, self.slot, strip, local, cols, values,
                            self.limit, self.depth)

    def ranks(self, bar) -> list[BlockRanks]:
        """Every strip's BlockRanks, in order; a finished strip is placed before more tiles start,
        so that its entries are freed soonest."""
        done: dict[int, BlockRanks] = {}
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for future in [pool.submit(self.cut, strip) for strip in self.strips]:
                future.result()
            queue = list(reversed(self.tiles))
            running: dict[Future, tuple] = {}
            while queue or running:
                while queue and len(running) < self.threads + 1:
                    i, j = queue.pop()
                    running[pool.submit(self.tile, i, j)] = ("tile", i, j)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, *where = running.pop(future)
                    result = future.result()
                    if kind == "place":
                        done[where[0]] = result
                        bar.update(self.strips[where[0]].rows.stop - self.strips[where[0]].rows.start)
                        continue
                    for index in set(where):
                        self.strips[index].pending -= 1
                        if self.strips[index].pending == 0:
                            running[pool.submit(self.place, self.strips[index])] = ("place", index)
        return [done[index] for index in range(len(self.strips))]


def _strip_ranks(space: FeatureDistances, labels: Labels, groups: LabelGroups, slot: np.ndarray, strip: _Strip,
                 local: np.ndarray, cols: np.ndarray, values: np.ndarray, limit: np.ndarray,
                 depth: np.ndarray) -> BlockRanks:
    """The ranks of a strip's queries from its entries; from its dense blocks where too many near
    ties would take canonical values (or a read lies above a row's limit, which the limits rule out)."""
    rows = strip.rows
    q_labels, q_camids = labels.q_pids[rows], labels.q_camids[rows]
    items, real, left_out, match = query_items(groups, q_labels, q_camids, labels.g_camids)
    num_rows = rows.stop - rows.start

    def dense_rows(local_rows: np.ndarray) -> np.ndarray:
        return space.fast(local_rows + rows.start)[0].cpu().numpy()

    block = SparseRows(num_rows, space.num_gallery, local, cols, values, limit[rows], strip.cut, q_labels,
                       labels.g_pids, slot, dense_rows)
    source = FeatureBlocks(space)
    pairs = row_pairs(source, rows)
    try:
        position = _place(block, space.fast_bound(rows), items, real, left_out, depth[rows], pairs,
                          num_rows * space.num_gallery / ordering._PAIR_COST_ENTRIES)
    except _NeedsExact:  # the dense blocks of match_ranks' size
        return stack_ranks([block_ranks(source, part, labels.q_pids[part], labels.q_camids[part], groups,
                                        labels.g_camids, depth=depth[part]) for part in query_blocks(source, rows)])
    return ranks_from_positions(position, left_out, match, depth[rows])
