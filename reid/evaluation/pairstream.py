"""The protocol's query x gallery pair distances streamed from features, for the verification
metrics at any size: what they read, without holding the pairs.

The metrics (``reid.evaluation.verification``) need every positive pair's distance (same pid,
other camera: few, kept sorted in memory) and, of the negatives, only

* how many lie below each positive distance (AUC, the ROC's vertices, the EER's first
  positive), and the largest negative below each one (the ROC's thresholds);
* a few order statistics: the smallest negative ``v`` at which a monotone condition on the
  counts below ``v`` holds (the (k+1)-th smallest negative for a TPR at FPR, the EER crossing),
  the counts at it and the largest negative before it.

The first pass over the pairs computes the counts at the positives and a histogram of the
negatives over the top 16 bits of their float32 order keys (``ordering._order_keys``: ordered
like the values). The histogram tells which bin holds each order statistic; a second pass
collects the negatives of that bin (at most ``_COLLECT_LIMIT``) and settles it exactly, or, for a
bin holding more, histograms its low 16 bits, which pins the value itself. Every distance is the
canonical one (``FeatureDistances.exact``, what ``pairwise_distance`` returns), so the result
equals the metrics of the dense matrix to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..progress import progress_bar
from .arrays import ArrayLike
from .distance import FeatureDistances, as_feature_pair
from .ordering import _order_keys, block_rows_for
from .protocol import Labels, PairKinds, pair_kinds

_BITS = 16  # key bits a histogram resolves (2^16 bins)
_COLLECT_LIMIT = 1 << 24  # negatives gathered at once to settle an order statistic (128 MiB of keys)
# bytes per pair of a block while it is counted (values, mask, keys, bin indices)
_PAIR_BYTES = 40


def _key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of order keys (the inverse of ``ordering._order_keys``)."""
    ordered = (np.asarray(keys, dtype=np.int64) - (1 << 31)).astype(np.int32)
    bits = ordered ^ ((ordered >> 31) & np.int32(0x7FFFFFFF))
    return bits.view(np.float32)


def _first_accepted(accepts: Callable[[int, int], bool], neg_le: np.ndarray, pos_le: np.ndarray) -> int:
    """The first index at which the monotone ``accepts(neg_le[i], pos_le[i])`` holds (it holds at
    the last), by binary search."""
    lo, hi = 0, neg_le.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if accepts(int(neg_le[mid]), int(pos_le[mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class _Query:
    """One order statistic being narrowed: the smallest negative key in ``[base, base + 2^bits)``
    at which ``accepts`` holds; ``below`` negatives lie under the window, the largest of them
    has key ``before`` (-1: none), ``count`` lie in it."""

    accepts: Callable[[int, int], bool]
    base: int = 0
    bits: int = 32
    below: int = 0
    before: int = -1
    count: int = 0
    answer: tuple[np.float32, int, int, float] | None = None  # value, negatives < and <= it, largest before


class StreamedPairs:
    """The pairs of ``space`` (query rows x gallery columns) that ``kinds`` describes, junk-free:
    positives in memory, negatives streamed. The interface of ``verification._Pairs``."""

    def __init__(self, space: FeatureDistances, kinds: PairKinds, memory_mb: float | None,
                 progress: bool | None) -> None:
        self.space, self.progress = space, progress
        self.rows = block_rows_for(space.num_gallery, memory_mb, _PAIR_BYTES)
        self.positives = np.sort(space.pairs(kinds.positive_rows, kinds.positive_cols))
        self.num_excluded = kinds.num_left_out
        same_rows = np.concatenate([kinds.positive_rows, kinds.left_out_rows])
        order = np.argsort(same_rows, kind="stable")
        self._same_rows = same_rows[order]
        self._same_cols = np.concatenate([kinds.positive_cols, kinds.left_out_cols])[order]
        self._distinct = np.unique(self.positives)
        self._queries: dict[Callable, _Query] = {}
        self._counted = False

    @classmethod
    def of_features(cls, query_features: ArrayLike, gallery_features: ArrayLike, q_pids: ArrayLike,
                    g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike, *, metric: str,
                    memory_mb: float | None, progress: bool | None) -> "StreamedPairs":
        q, g = as_feature_pair(query_features, gallery_features, "query_features", "gallery_features")
        if q.shape[0] == 0 or g.shape[0] == 0:
            raise ValueError(f"empty query or gallery features ({q.shape[0]} x {g.shape[0]})")
        labels = Labels.of(q.shape[0], g.shape[0], q_pids, g_pids, q_camids, g_camids)
        kinds = pair_kinds(labels)
        if not (kinds.kept_gallery.all() and kinds.usable_query.all()):  # junk takes part in no pair
            q = q.index_select(0, torch.from_numpy(np.flatnonzero(kinds.usable_query)).to(q.device))
            g = g.index_select(0, torch.from_numpy(np.flatnonzero(kinds.kept_gallery)).to(g.device))
            labels = Labels(labels.q_pids[kinds.usable_query], labels.g_pids[kinds.kept_gallery],
                            labels.q_camids[kinds.usable_query], labels.g_camids[kinds.kept_gallery])
            kinds = pair_kinds(labels)
        space = FeatureDistances(q, g, metric)  # built once, on the pairs that count
        return cls(space, kinds, memory_mb, progress)

    # ------------------------------------------------------------------ the passes

    def negative_blocks(self, description: str) -> Iterator[np.ndarray]:
        """The negative distances of each block of query rows (float32, 1-D)."""
        num_q = self.space.num_query
        with progress_bar(total=num_q, desc=description, unit="query", progress=self.progress) as bar:
            for start in range(0, num_q, self.rows):
                stop = min(num_q, start + self.rows)
                values = self.space.exact(slice(start, stop)).cpu().numpy()
                lo, hi = np.searchsorted(self._same_rows, (start, stop))
                keep = np.ones(values.shape, dtype=bool)
                keep[self._same_rows[lo:hi] - start, self._same_cols[lo:hi]] = False
                yield values[keep]
                bar.update(stop - start)

    def _count(self) -> None:
        """Pass 1: negatives at or below each distinct positive, the largest below each, and the
        top-bits histogram of every negative (count and largest key per bin)."""
        distinct = torch.from_numpy(self._distinct)
        m = distinct.numel()
        at_or_below = torch.zeros(m + 1, dtype=torch.int64)
        equal_to = torch.zeros(m + 1, dtype=torch.int64)
        largest = torch.full((m + 1,), -np.inf, dtype=torch.float32)
        bins = torch.zeros(1 << _BITS, dtype=torch.int64)
        bin_max = torch.full((1 << _BITS,), -1, dtype=torch.int64)
        total, smallest = 0, np.inf
        for negatives in self.negative_blocks("verification pairs"):
            total += negatives.size
            smallest = min(smallest, float(negatives.min(initial=np.inf)))
            values = torch.from_numpy(negatives)
            slot = torch.searchsorted(distinct, values)  # positives < v: v lies in (D[slot-1], D[slot]]
            equal = (slot < m) & (distinct[slot.clamp(max=max(m - 1, 0))] == values) if m else slot < 0
            at_or_below += torch.bincount(slot, minlength=m + 1)
            equal_to += torch.bincount(slot[equal], minlength=m + 1)
            largest.scatter_reduce_(0, slot + equal, values, "amax")  # v < D[j] exactly when slot + equal <= j
            keys = torch.from_numpy(_order_keys(negatives))
            top = keys >> (32 - _BITS)
            bins += torch.bincount(top, minlength=1 << _BITS)
            bin_max.scatter_reduce_(0, top, keys, "amax")
        self._num_negatives, self._smallest_negative = total, smallest
        le = torch.cumsum(at_or_below, 0)[:m].numpy()
        self._le, self._lt = le, le - equal_to[:m].numpy()
        self._largest_below = torch.cummax(largest, 0).values[:m].numpy()
        self._bins, self._bin_max = bins.numpy(), bin_max.numpy()
        nonempty = np.flatnonzero(self._bins)
        self._largest_negative = float(_key_values(self._bin_max[nonempty[-1]])) if nonempty.size else -np.inf
        self._counted = True

    def _settle(self, accepts: Callable[[int, int], bool]) -> _Query:
        """Narrow and settle the order statistic ``accepts``, and every other one still open."""
        if not self._counted:
            self._count()
        query = self._queries.setdefault(accepts, _Query(accepts))
        open_queries = [q for q in self._queries.values() if q.answer is None]
        for q in open_queries:
            if q.bits == 32:
                self._narrow(q, self._bins, self._bin_max)
        while any(q.answer is None for q in open_queries):
            self._pass([q for q in open_queries if q.answer is None])
        return query

    def _narrow(self, q: _Query, bins: np.ndarray, bin_max: np.ndarray) -> None:
        """Move ``q``'s window to the first bin whose largest negative is accepted (every value
        in an earlier bin fails: the condition is monotone); settle it if that bin is one key."""
        width_bits = q.bits - _BITS
        nonempty = np.flatnonzero(bins)
        cum = q.below + np.cumsum(bins[nonempty])
        tops = _key_values(bin_max[nonempty])
        # the last bin is accepted: it holds the window's largest negative
        lo = _first_accepted(q.accepts, cum, np.searchsorted(self.positives, tops, "right"))
        chosen = nonempty[lo]
        q.before = int(bin_max[nonempty[lo - 1]]) if lo > 0 else q.before
        q.below = int(cum[lo] - bins[chosen])
        q.base, q.bits, q.count = q.base + (int(chosen) << width_bits), width_bits, int(bins[chosen])
        if q.bits == 0:
            q.answer = self._answer(q.base, q.below, q.below + q.count, q.before)

    def _answer(self, key: int, lt: int, le: int, before: int) -> tuple[np.float32, int, int, float]:
        return _key_values(key)[()], lt, le, float(_key_values(before)) if before >= 0 else -np.inf

    def _pass(self, queries: list[_Query]) -> None:
        """One pass: collect the window of each small query and settle it; histogram the low bits
        of the window of each large one."""
        collect = [q for q in queries if q.count <= _COLLECT_LIMIT]
        wide = [q for q in queries if q.count > _COLLECT_LIMIT]
        gathered: list[list[np.ndarray]] = [[] for _ in collect]
        bins = [np.zeros(1 << _BITS, dtype=np.int64) for _ in wide]
        bin_max = [np.full(1 << _BITS, -1, dtype=np.int64) for _ in wide]
        for negatives in self.negative_blocks("verification thresholds"):
            keys = _order_keys(negatives)
            for q, parts in zip(collect, gathered):
                parts.append(keys[(keys >= q.base) & (keys < q.base + (1 << q.bits))])
            for q, counts, top in zip(wide, bins, bin_max):
                low = torch.from_numpy(keys[(keys >= q.base) & (keys < q.base + (1 << q.bits))] - q.base)
                counts += torch.bincount(low, minlength=1 << _BITS).numpy()
                top[:] = torch.from_numpy(top).scatter_reduce_(0, low, low + q.base, "amax").numpy()
        for q, parts in zip(collect, gathered):
            self._settle_collected(q, np.sort(np.concatenate(parts)))
        for q, counts, top in zip(wide, bins, bin_max):
            q.bits = _BITS  # the window's key bits, all resolved by this histogram
            self._narrow(q, counts, top)

    def _settle_collected(self, q: _Query, keys: np.ndarray) -> None:
        unique, counts = np.unique(keys, return_counts=True)
        cum = q.below + np.cumsum(counts)
        lo = _first_accepted(q.accepts, cum, np.searchsorted(self.positives, _key_values(unique), "right"))
        q.answer = self._answer(int(unique[lo]), int(cum[lo] - counts[lo]), int(cum[lo]),
                                int(unique[lo - 1]) if lo > 0 else q.before)

    # ------------------------------------------------------------------ what the metrics read

    def prepare(self, conditions: list[Callable[[int, int], bool]]) -> None:
        """Settle these order statistics together (one pass for all of them)."""
        if not self._counted:
            self._count()
        for accepts in conditions:
            self._queries.setdefault(accepts, _Query(accepts))
        if conditions:
            self._settle(conditions[0])

    @property
    def largest(self) -> float:
        if not self._counted:
            self._count()
        return float(max(self._largest_negative, self.positives[-1]))

    @property
    def smallest(self) -> float:
        """The smallest distance of any pair."""
        if not self._counted:
            self._count()
        return float(min(self._smallest_negative, self.positives[0]))

    @property
    def num_negatives(self) -> int:
        if not self._counted:
            self._count()
        return self._num_negatives

    def _known(self, value: np.float32) -> tuple[int, int, float] | None:
        for q in self._queries.values():
            if q.answer is not None and q.answer[0] == value:
                return q.answer[1], q.answer[2], q.answer[3]
        return None

    def _at_positives(self, values: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self._distinct, values)
        if index.size and (index.max() >= self._distinct.size or np.any(self._distinct[index] != values)):
            raise RuntimeError("streamed pairs: counts asked at a distance that is neither a positive's nor "
                               "a settled threshold")
        return index

    def below(self, values, side: str) -> tuple[np.ndarray, np.ndarray]:
        if not self._counted:
            self._count()
        v = np.asarray(values, dtype=np.float32)
        positives = np.searchsorted(self.positives, v, side)
        known = self._known(v[()]) if v.ndim == 0 else None
        if known is not None:
            return np.int64(known[0] if side == "left" else known[1]), positives
        index = self._at_positives(v)
        return (self._lt if side == "left" else self._le)[index], positives

    def largest_negative_below(self, values) -> np.ndarray:
        if not self._counted:
            self._count()
        v = np.asarray(values, dtype=np.float32)
        known = self._known(v[()]) if v.ndim == 0 else None
        if known is not None:
            return np.float64(known[2])
        return self._largest_below[self._at_positives(v)].astype(np.float64)

    def first_negative(self, accepts: Callable[[int, int], bool]) -> np.float32:
        return self._settle(accepts).answer[0]
