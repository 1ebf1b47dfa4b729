"""Camera-aware ranking metrics: CMC, mAP (non-interpolated or trapezoidal) and mINP.

The protocol is the field's shared evaluation code (torchreid's compiled ``evaluate_cy``, the
Market-1501 protocol): for every query the gallery is ranked by ascending distance, gallery
items with the query's pid AND camid are removed, queries left without a true match are
skipped, CMC is the cumulative hit curve clipped at 1 averaged over the valid queries, AP is the
mean of the precision at each hit, INP = (number of hits) / (rank of the last hit) (Ye et al.,
"Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021; their ReID-Survey
and fast-reid code). ``ap="trapezoid"`` is the official Market-1501 MATLAB ``compute_AP``
(Zheng et al., ICCV 2015), which averages the precision before and at each hit.

How it is fast without sorting every row: only the ranks of the true matches matter. For a
match ``p`` of query ``i`` its rank among all gallery items is the number of items ``j`` with
``(d_ij, j) < (d_ip, p)`` (distance, then gallery index: a stable order), minus the removed
same-camera items before it. Every item counted lies at or below the query's farthest match,
so only those "candidates" are sorted (all items when candidates are most of the row, via a
row sort). The matches are found by grouping the gallery by pid, so the cost is one pass over
the distance matrix plus a sort of the candidates, spread over threads by blocks of queries.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..progress import progress_bar
from .arrays import ArrayLike, as_labels, as_numpy

AP_KINDS = ("standard", "trapezoid")
# Elements of the distance matrix per block of queries: ~4M float32 (16 MiB) keeps a block's
# temporaries in the caches' neighbourhood and gives the threads enough blocks to share.
_BLOCK_ELEMENTS = 1 << 22
# Above this fraction of candidates a row sort (SIMD) beats extracting and sorting candidates.
_SORT_ALL_FRACTION = 0.4


@dataclass(frozen=True)
class RankResult:
    """Metrics over the valid queries.

    cmc: CMC curve, ``cmc[k]`` = fraction of valid queries with a true match within the top k+1
        (length ``max_rank``).
    mAP, mINP: means over the valid queries.
    num_valid_queries: queries with at least one true match left after same-camera removal.
    all_AP, all_INP: per query (length = number of queries), NaN for the skipped queries.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    all_AP: np.ndarray = field(repr=False)
    all_INP: np.ndarray = field(repr=False)

    @property
    def num_queries(self) -> int:
        return int(self.all_AP.shape[0])

    @property
    def num_skipped_queries(self) -> int:
        """Queries without a true match after same-camera removal (left out of every mean)."""
        return self.num_queries - self.num_valid_queries


def protocol_arrays(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                    g_camids: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inputs of the protocol checked and as numpy: the q x g distances (dtype kept) and four int64 label arrays."""
    dist = as_numpy(distmat, "distmat")
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D num_query x num_gallery matrix, got shape {dist.shape}")
    num_q, num_g = dist.shape
    return (dist, as_labels(q_pids, "q_pids", num_q, "one per distmat row"),
            as_labels(g_pids, "g_pids", num_g, "one per distmat column"),
            as_labels(q_camids, "q_camids", num_q, "one per distmat row"),
            as_labels(g_camids, "g_camids", num_g, "one per distmat column"))


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in [0, 2^32) ordered like the float32 ``values`` (NaN-free, -0.0 == +0.0)."""
    bits = (values + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    return ordered.astype(np.int64) + (1 << 31)


def _count_below(block: np.ndarray, thresholds: np.ndarray, limit: np.ndarray,
                 workspace: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many items are < and <= each threshold (thresholds above ``limit`` unused).

    ``limit`` is each row's largest threshold that matters; items above it are never counted,
    so only the items <= limit are sorted, unless they are a large part of the block.
    ``workspace`` holds this thread's reusable buffers (fresh pages cost more than the work).
    """
    rows, width = block.shape
    below = _buffer(workspace, "below", block.shape, np.bool_)
    np.less_equal(block, limit[:, None], out=below)
    flat = np.flatnonzero(below)  # far faster than boolean indexing when candidates are few
    if flat.size > _SORT_ALL_FRACTION * rows * width:
        ordered = _buffer(workspace, "ordered", block.shape, np.float32)
        ordered[...] = block
        ordered.sort(axis=1)
        sorted_rows = torch.from_numpy(ordered)
        t = torch.from_numpy(np.ascontiguousarray(thresholds))
        less = torch.searchsorted(sorted_rows, t, side="left").numpy()
        less_equal = torch.searchsorted(sorted_rows, t, side="right").numpy()
        return less, less_equal
    # Sort the candidates of all rows at once: key = (row, value) packed in one int64.
    row = flat // width
    keys = (row << 32) | _order_keys(block.reshape(-1)[flat])
    keys.sort()
    counts = np.bincount(row, minlength=rows)
    starts = np.cumsum(counts) - counts
    t_keys = (np.arange(rows, dtype=np.int64)[:, None] << 32) | _order_keys(thresholds)
    less = np.searchsorted(keys, t_keys, side="left") - starts[:, None]
    less_equal = np.searchsorted(keys, t_keys, side="right") - starts[:, None]
    return less, less_equal


def _buffer(workspace: dict[str, np.ndarray], name: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A rows x width view of a per-thread buffer, grown when needed."""
    buf = workspace.get(name)
    if buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0]:
        buf = np.empty(shape, dtype=dtype)
        workspace[name] = buf
    return buf[: shape[0]]


def _block_metrics(dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray,
                   groups: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                   workspace: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """AP (standard and trapezoid), INP and first-hit rank of each query in a block (NaN/0 if invalid)."""
    group_pids, group_starts, group_sizes, gallery_by_pid = groups
    num_g = dist.shape[1]
    pos = np.minimum(np.searchsorted(group_pids, q_pids), len(group_pids) - 1)
    sizes = np.where(group_pids[pos] == q_pids, group_sizes[pos], 0)
    width = max(int(sizes.max()), 1)
    slot = np.arange(width)
    in_group = slot[None, :] < sizes[:, None]
    # Gallery items sharing the query's pid: the true matches and the same-camera "junk".
    same_pid = gallery_by_pid[np.where(in_group, group_starts[pos][:, None] + slot[None, :], 0)]
    same_pid_dist = np.take_along_axis(dist, same_pid, axis=1)
    junk = in_group & (g_camids[same_pid] == q_camids[:, None])
    match = in_group & ~junk
    num_matches = match.sum(axis=1)
    valid = num_matches > 0

    thresholds = np.where(match, same_pid_dist, -np.inf).astype(np.float32)
    limit = thresholds.max(axis=1)  # farthest match; -inf for a query without one
    less, less_equal = _count_below(dist, thresholds, limit, workspace)
    before = less.astype(np.int64)
    # Exact distance ties with a match: the stable order puts lower gallery indices first.
    tied_r, tied_c = np.nonzero(match & (less_equal - less > 1))
    for r, c in zip(tied_r.tolist(), tied_c.tolist()):
        g = int(same_pid[r, c])
        before[r, c] += int(np.count_nonzero(dist[r, :g] == dist[r, g]))

    # Order the query's same-pid items by (distance, gallery index) to count junk before each match.
    order = np.lexsort((np.where(in_group, same_pid, num_g), np.where(in_group, same_pid_dist, np.inf)), axis=1)
    junk_sorted = np.take_along_axis(junk, order, axis=1)
    match_sorted = np.take_along_axis(match, order, axis=1)
    junk_before = np.cumsum(junk_sorted, axis=1) - junk_sorted
    rank = np.take_along_axis(before, order, axis=1) - junk_before + 1  # 1-based, junk removed
    hit = np.cumsum(match_sorted, axis=1)  # hit number at each match
    rank_f = np.where(match_sorted, rank, 1).astype(np.float64)
    hit_f = hit.astype(np.float64)
    precision = np.where(match_sorted, hit_f / rank_f, 0.0)
    # Market MATLAB compute_AP: precision just before the hit ((hits-1)/(rank-1)), 1.0 at rank 1.
    previous = np.where(rank_f > 1, (hit_f - 1) / np.maximum(rank_f - 1, 1), 1.0)
    trapezoid = np.where(match_sorted, (previous + precision) / 2, 0.0)

    n = np.maximum(num_matches, 1).astype(np.float64)
    ap = np.where(valid, precision.sum(axis=1) / n, np.nan)
    ap_trapezoid = np.where(valid, trapezoid.sum(axis=1) / n, np.nan)
    last_rank = np.where(match_sorted, rank, 0).max(axis=1)
    first_rank = np.where(match_sorted, rank, np.iinfo(np.int64).max).min(axis=1)
    inp = np.where(valid, num_matches / np.maximum(last_rank, 1), np.nan)
    first_rank = np.where(valid, first_rank, 0)
    return ap, ap_trapezoid, inp, first_rank


def _group_gallery(g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    gallery_by_pid = np.argsort(g_pids, kind="stable")
    group_pids, group_starts, group_sizes = np.unique(g_pids[gallery_by_pid], return_index=True, return_counts=True)
    return group_pids, group_starts, group_sizes, gallery_by_pid


def average_precision(matches: ArrayLike) -> float:
    """Non-interpolated AP of one full ranked list (``matches[r]``: a true match at rank r + 1).

    The mean of the precision at each hit; NaN without a hit. This is the definition
    :func:`evaluate_rank` computes for every query at once.
    """
    hits = np.flatnonzero(np.asarray(matches, dtype=bool))
    if hits.size == 0:
        return float("nan")
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


def _without_junk(dist: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
                  junk_pid: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gallery columns whose pid is not ``junk_pid`` (all of them when it is None)."""
    if junk_pid is None:
        return dist, g_pids, g_camids
    keep = g_pids != junk_pid
    if keep.all():
        return dist, g_pids, g_camids
    return dist[:, keep], g_pids[keep], g_camids[keep]


def _per_query(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
               g_camids: np.ndarray, num_threads: int | None, progress: bool | None) -> tuple[np.ndarray, ...]:
    """(AP, trapezoid AP, INP, first-hit rank) of every query; NaN (rank 0) where a query has no true match."""
    num_q, num_g = dist.shape
    if num_g == 0:  # every gallery item was junk
        nan = np.full(num_q, np.nan)
        return nan, nan.copy(), nan.copy(), np.zeros(num_q, dtype=np.int64)
    dist = np.ascontiguousarray(dist, dtype=np.float32)
    groups = _group_gallery(g_pids)
    rows = max(1, min(num_q, _BLOCK_ELEMENTS // num_g))
    blocks = [(s, min(s + rows, num_q)) for s in range(0, num_q, rows)]

    local = threading.local()

    def run(bounds: tuple[int, int]) -> tuple[np.ndarray, ...]:
        s, e = bounds
        block = dist[s:e]
        if np.isnan(block.max()):  # max propagates NaN: one pass finds any
            raise ValueError(f"distmat contains NaN (in rows {s}..{e - 1}); expected numbers (inf is allowed)")
        if not hasattr(local, "workspace"):
            local.workspace = {}
        return _block_metrics(block, q_pids[s:e], q_camids[s:e], g_camids, groups, local.workspace)

    workers = num_threads if num_threads is not None else torch.get_num_threads()
    workers = max(1, min(int(workers), len(blocks), os.cpu_count() or 1))
    parts = []
    with progress_bar(total=num_q, desc="ranking", unit="query", progress=progress) as bar:
        if workers == 1:
            results = map(run, blocks)
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            results = pool.map(run, blocks)
        try:
            for (s, e), part in zip(blocks, results):
                parts.append(part)
                bar.update(e - s)
        finally:
            if workers > 1:
                pool.shutdown(wait=True, cancel_futures=True)
    return tuple(np.concatenate(p) for p in zip(*parts))


def query_average_precision(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                            g_camids: ArrayLike, *, ap: str = "standard", junk_pid: int | None = None,
                            num_threads: int | None = None, progress: bool | None = None) -> np.ndarray:
    """Per-query AP under the protocol (``evaluate_rank(...).all_AP``), NaN where a query has no true match.

    Unlike :func:`evaluate_rank` it is no error when no query has one (every entry is NaN then,
    e.g. for unlabelled features). ``ap``, ``junk_pid``, ``num_threads`` and ``progress``: as there.
    """
    if ap not in AP_KINDS:
        raise ValueError(f"ap={ap!r}: expected one of {', '.join(AP_KINDS)}")
    dist, q_pids, g_pids, q_camids, g_camids = protocol_arrays(distmat, q_pids, g_pids, q_camids, g_camids)
    dist, g_pids, g_camids = _without_junk(dist, g_pids, g_camids, junk_pid)
    ap_std, ap_trap, _, _ = _per_query(dist, q_pids, g_pids, q_camids, g_camids, num_threads, progress)
    return ap_std if ap == "standard" else ap_trap


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                  g_camids: ArrayLike, max_rank: int = 50, ap: str = "standard",
                  num_threads: int | None = None, *, junk_pid: int | None = None,
                  progress: bool | None = None) -> RankResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (smaller = more similar).

    Args:
        distmat: num_query x num_gallery distances, numpy or torch (any device). Compared in
            float32, as the classic compiled evaluation does (it casts to float32); exact ties
            are broken by gallery index (a stable sort). NaN is an error; inf is allowed.
        q_pids, g_pids, q_camids, g_camids: integer labels (numpy or torch).
        max_rank: length of the CMC curve. If the gallery is smaller, a warning is issued and
            the curve still has ``max_rank`` entries: every valid query has its first hit
            within the gallery, so the entries past the gallery size equal 1.0 (the classic
            code truncates the curve instead).
        ap: ``"standard"`` (non-interpolated, the field's default) or ``"trapezoid"`` (official
            Market-1501 MATLAB ``compute_AP``; lower).
        num_threads: worker threads over blocks of queries (default: torch's thread count).
        junk_pid: gallery items with this pid are left out of every list, as the official
            Market-1501 MATLAB evaluation does with its junk boxes (pid -1); queries with it
            then have no true match. None (the default, as torchreid's code, whose loaders drop
            junk images instead): every gallery item counts.
        progress: a bar over the queries (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        RankResult. Queries without a true match after same-camera removal are skipped
        (their ``all_AP``/``all_INP`` are NaN). Raises ValueError if none is left.
    """
    if ap not in AP_KINDS:
        raise ValueError(f"ap={ap!r}: expected one of {', '.join(AP_KINDS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r}: expected a positive integer")
    dist, q_pids, g_pids, q_camids, g_camids = protocol_arrays(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat: empty query or gallery (shape {dist.shape})")
    dist, g_pids, g_camids = _without_junk(dist, g_pids, g_camids, junk_pid)
    num_g = dist.shape[1]
    no_valid_query = ("no query has a true match in the gallery after removing same-pid same-camera items"
                      + (f" and junk (pid {junk_pid})" if junk_pid is not None else "") + "; expected at least one "
                      "valid query")
    if num_g == 0:
        raise ValueError(no_valid_query)
    if num_g < max_rank:
        warnings.warn(f"gallery has {num_g} items, fewer than max_rank={max_rank}: CMC entries past rank "
                      f"{num_g} equal 1.0", stacklevel=2)

    ap_std, ap_trap, inp, first_rank = _per_query(dist, q_pids, g_pids, q_camids, g_camids, num_threads, progress)
    valid = ~np.isnan(ap_std)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(no_valid_query)
    all_ap = ap_std if ap == "standard" else ap_trap
    # cmc[k] = share of valid queries whose first hit is within rank k+1.
    first = first_rank[valid]
    hist = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist) / num_valid
    return RankResult(cmc=cmc, mAP=float(all_ap[valid].mean()), mINP=float(inp[valid].mean()),
                      num_valid_queries=num_valid, all_AP=all_ap, all_INP=inp)
