"""Camera-aware ranking metrics: CMC, mAP (non-interpolated or trapezoidal) and mINP.

The protocol is the field's shared evaluation code (torchreid's compiled ``evaluate_cy``, the
Market-1501 protocol; its rules live in ``reid.evaluation.protocol``): for every query the
gallery is ranked by ascending distance (exact ties: lower gallery index first), gallery items
with the query's pid AND camid are removed, junk (pid -1) is removed from every list, queries
left without a true match are skipped, CMC is the cumulative hit curve clipped at 1 averaged
over the valid queries, AP is the mean of the precision at each hit, INP = (number of hits) /
(rank of the last hit) (Ye et al., "Deep Learning for Person Re-identification: A Survey and
Outlook", TPAMI 2021; their ReID-Survey and fast-reid code). ``ap="trapezoid"`` is the official
Market-1501 MATLAB ``compute_AP`` (Zheng et al., ICCV 2015), which averages the precision
before and at each hit.

Only the ranks of the true matches matter, and ``reid.evaluation.ordering`` finds them without
sorting whole rows, spread over threads by blocks of queries.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .arrays import ArrayLike
from .distance import FeatureDistances
from .ordering import BEYOND, DistanceBlocks, FeatureBlocks, MatrixBlocks, match_ranks
from .protocol import JUNK_PID, Labels, check_distmat

AP_KINDS = ("standard", "trapezoid")


@dataclass(frozen=True)
class RankResult:
    """Metrics over the valid queries.

    cmc: CMC curve, ``cmc[k]`` = fraction of valid queries with a true match within the top k+1
        (length ``max_rank``).
    mAP, mINP: means over the valid queries.
    num_valid_queries: queries with at least one true match left after same-camera removal.
    all_AP, all_INP: per query (length = number of queries), NaN for the skipped queries.
    first_hit_rank: per query, the 1-based rank of its first true match (0 for a skipped query).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    all_AP: np.ndarray = field(repr=False)
    all_INP: np.ndarray = field(repr=False)
    first_hit_rank: np.ndarray = field(repr=False)

    @property
    def num_queries(self) -> int:
        return int(self.all_AP.shape[0])

    @property
    def num_skipped_queries(self) -> int:
        """Queries without a true match after same-camera removal (left out of every mean)."""
        return self.num_queries - self.num_valid_queries


def _per_query(ranks: np.ndarray, num_matches: np.ndarray) -> tuple[np.ndarray, ...]:
    """(AP, trapezoid AP, INP, first-hit rank) of every query from its match ranks (ascending,
    1-based, ``BEYOND`` padded); NaN (rank 0) where a query has no true match."""
    valid = num_matches > 0
    real = ranks != BEYOND
    rank_f = np.where(real, ranks, 1).astype(np.float64)
    hit_f = np.broadcast_to(np.arange(1, ranks.shape[1] + 1, dtype=np.float64), ranks.shape)
    precision = np.where(real, hit_f / rank_f, 0.0)
    # Market MATLAB compute_AP: precision just before the hit ((hits-1)/(rank-1)), 1.0 at rank 1.
    previous = np.where(rank_f > 1, (hit_f - 1) / np.maximum(rank_f - 1, 1), 1.0)
    trapezoid = np.where(real, (previous + precision) / 2, 0.0)
    n = np.maximum(num_matches, 1).astype(np.float64)
    ap = np.where(valid, precision.sum(axis=1) / n, np.nan)
    ap_trapezoid = np.where(valid, trapezoid.sum(axis=1) / n, np.nan)
    last_rank = np.where(real, ranks, 0).max(axis=1, initial=0)
    inp = np.where(valid, num_matches / np.maximum(last_rank, 1), np.nan)
    first_rank = np.where(valid, ranks[:, 0] if ranks.shape[1] else 0, 0)
    return ap, ap_trapezoid, inp, first_rank


def rank_metrics(source: DistanceBlocks, labels: Labels, *, junk_pid: int | None = JUNK_PID,
                 num_threads: int | None = None, progress: bool | None = None) -> tuple[np.ndarray, ...]:
    """(AP, trapezoid AP, INP, first-hit rank) of every query of any distance source (a matrix or
    features, ``reid.evaluation.ordering``) under the protocol; NaN (rank 0) without a true match."""
    keep = labels.kept_gallery(junk_pid)
    if not keep.all():
        source, labels = source.columns(keep), labels.gallery_subset(keep)
    if source.num_gallery == 0:  # every gallery item was junk
        nan = np.full(source.num_query, np.nan)
        return nan, nan.copy(), nan.copy(), np.zeros(source.num_query, dtype=np.int64)
    ranks, num_matches = match_ranks(source, labels, num_threads=num_threads, progress=progress)
    return _per_query(ranks, num_matches)


def average_precision(matches: ArrayLike) -> float:
    """Non-interpolated AP of one full ranked list (``matches[r]``: a true match at rank r + 1).

    The mean of the precision at each hit; NaN without a hit. This is the definition
    :func:`evaluate_rank` computes for every query at once.
    """
    hits = np.flatnonzero(np.asarray(matches, dtype=bool))
    if hits.size == 0:
        return float("nan")
    return float(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))


def _matrix_source(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                   g_camids: ArrayLike) -> tuple[MatrixBlocks, Labels]:
    dist = check_distmat(distmat)
    return MatrixBlocks(dist), Labels.of(*dist.shape, q_pids, g_pids, q_camids, g_camids)


def check_ap(ap: str) -> None:
    if ap not in AP_KINDS:
        raise ValueError(f"ap={ap!r}: expected one of {', '.join(AP_KINDS)}")


def query_average_precision(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                            g_camids: ArrayLike, *, ap: str = "standard", junk_pid: int | None = JUNK_PID,
                            num_threads: int | None = None, progress: bool | None = None) -> np.ndarray:
    """Per-query AP under the protocol (``evaluate_rank(...).all_AP``), NaN where a query has no true match.

    Unlike :func:`evaluate_rank` it is no error when no query has one (every entry is NaN then,
    e.g. for unlabelled features). ``ap``, ``junk_pid``, ``num_threads`` and ``progress``: as there.
    """
    check_ap(ap)
    source, labels = _matrix_source(distmat, q_pids, g_pids, q_camids, g_camids)
    ap_std, ap_trap, _, _ = rank_metrics(source, labels, junk_pid=junk_pid, num_threads=num_threads,
                                         progress=progress)
    return ap_std if ap == "standard" else ap_trap


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                  g_camids: ArrayLike, max_rank: int = 50, ap: str = "standard",
                  num_threads: int | None = None, *, junk_pid: int | None = JUNK_PID,
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
        junk_pid: gallery items with this pid are left out of every list (the protocol's junk,
            ``reid.evaluation.protocol.JUNK_PID`` = -1, as the official Market-1501 evaluation;
            our loaders drop junk images already); queries with it have no true match. None:
            every gallery item counts.
        progress: a bar over the queries (see :mod:`reid.progress`; None: on a terminal only).

    Returns:
        RankResult. Queries without a true match after same-camera removal are skipped
        (their ``all_AP``/``all_INP`` are NaN). Raises ValueError if none is left.
    """
    check_ap(ap)
    check_max_rank(max_rank)
    source, labels = _matrix_source(distmat, q_pids, g_pids, q_camids, g_camids)
    if source.num_query == 0 or source.num_gallery == 0:
        raise ValueError(f"distmat: empty query or gallery (shape {source.distmat.shape})")
    return rank_result(source, labels, max_rank=max_rank, ap=ap, junk_pid=junk_pid, num_threads=num_threads,
                        progress=progress)


def evaluate_features(query_features: ArrayLike, gallery_features: ArrayLike, q_pids: ArrayLike,
                      g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike, metric: str = "euclidean",
                      max_rank: int = 50, ap: str = "standard", *, memory_mb: float | None = None,
                      junk_pid: int | None = JUNK_PID, progress: bool | None = None) -> RankResult:
    """:func:`evaluate_rank` of the canonical distances of two feature sets, without ever holding
    the query x gallery matrix: equal to ``evaluate_rank(pairwise_distance(query_features,
    gallery_features, metric), ...)`` to the last bit (CMC, mAP, mINP, per-query AP and INP).

    The gallery is ranked for blocks of queries at a time from float32 products and their error
    bounds (``reid.evaluation.ordering``); a block and its temporaries take at most ``memory_mb``
    MiB (default: a quarter of the memory available now), so Market-1501+500k (3,368 x 519,732)
    needs the features and about that much more. The other arguments: as :func:`evaluate_rank`.
    """
    check_ap(ap)
    check_max_rank(max_rank)
    space = FeatureDistances(query_features, gallery_features, metric)
    if space.num_query == 0 or space.num_gallery == 0:
        raise ValueError(f"empty query or gallery features ({space.num_query} x {space.num_gallery})")
    labels = Labels.of(space.num_query, space.num_gallery, q_pids, g_pids, q_camids, g_camids)
    return rank_result(FeatureBlocks(space, memory_mb), labels, max_rank=max_rank, ap=ap, junk_pid=junk_pid,
                        num_threads=None, progress=progress)


def check_max_rank(max_rank: int) -> None:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r}: expected a positive integer")


def rank_result(source: DistanceBlocks, labels: Labels, *, max_rank: int, ap: str, junk_pid: int | None,
                 num_threads: int | None, progress: bool | None) -> RankResult:
    """The RankResult of a non-empty distance source (the tail of both evaluate functions)."""
    num_g = int(labels.kept_gallery(junk_pid).sum())
    no_valid_query = ("no query has a true match in the gallery after removing same-pid same-camera items"
                      + (f" and junk (pid {junk_pid})" if junk_pid is not None else "") + "; expected at least one "
                      "valid query")
    if num_g == 0:
        raise ValueError(no_valid_query)
    if num_g < max_rank:
        warnings.warn(f"gallery has {num_g} items, fewer than max_rank={max_rank}: CMC entries past rank "
                      f"{num_g} equal 1.0", stacklevel=3)
    ap_std, ap_trap, inp, first_rank = rank_metrics(source, labels, junk_pid=junk_pid, num_threads=num_threads,
                                                    progress=progress)
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
                      num_valid_queries=num_valid, all_AP=all_ap, all_INP=inp, first_hit_rank=first_rank)
