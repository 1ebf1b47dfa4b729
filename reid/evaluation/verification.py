"""Verification metrics ("same person or not?") over query x gallery pairs: ROC, AUC, EER, TPR@FPR.

Pairs follow the protocol (``reid.evaluation.protocol``, the one the ranking metrics use): every
query x gallery pair is scored by its distance, except the pairs of the same identity seen by
the same camera, which the ranking protocol removes, and the pairs of a junk (pid -1) query or
gallery item, which take part in no list. A pair is positive when the two pids are equal (a
query pid never matches a gallery distractor's pid 0 unless the query itself is labelled 0). A threshold ``t`` accepts the pairs
with distance ``<= t``; ``TPR(t)`` = accepted positives / positives (the "TAR" of face
verification), ``FPR(t)`` = accepted negatives / negatives (the "FAR").

The thresholds swept are ``-inf`` (accepts nothing) and every distinct distance among the pairs,
so pairs with equal distances are accepted together. The ROC curve is the polyline through the
points ``(FPR(t), TPR(t))`` of that sweep, from (0, 0) to (1, 1), and the AUC is the trapezoid area
under it: a tie between a positive and a negative contributes a diagonal step, i.e. half a
"correct" pair, so the AUC equals the Mann-Whitney statistic P(d_neg > d_pos) + 0.5 P(d_neg ==
d_pos) (Hanley & McNeil, Radiology 1982; Fawcett, "An introduction to ROC analysis", Pattern
Recognition Letters 2006) and scikit-learn's ``roc_auc_score(is_positive, -distance)``.

How it is fast: only counts of pairs at or below a threshold are needed. The same-pid pairs
(few: ~59 k of Market-1501's 53.6 M) are found by grouping the gallery by pid and split into
positives and excluded pairs by camera. The negatives are sorted once as float32: a copy of the
matrix with the same-pid entries set to +inf, sorted in place (numpy's SIMD sort, ~0.3 s at
Market-1501 size; sorting (distance, label) packed in uint64 takes ~5x and a stable argsort
~25x as long), minus its last entries. Every count is then a binary search, and every metric is
integer arithmetic on counts with one final rounding. Extra memory: one float32 copy of the
matrix (the float32 conversion itself when the input is not float32), sorted in place.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Union

import numpy as np

from .arrays import ArrayLike
from .distance import pairwise_distance
from .ordering import block_rows_for
from .pairstream import StreamedPairs
from .protocol import Labels, check_distmat, pair_kinds

DEFAULT_FPRS = (1e-4, 1e-3, 1e-2)
# bytes per pair of the dense path: the matrix, its sorted copy, the same-pid bookkeeping
_DENSE_PAIR_BYTES = 12


@dataclass(frozen=True)
class VerificationResult:
    """Verification metrics over the query x gallery pairs (see the module docstring).

    auc: area under the ROC curve (trapezoid over the threshold sweep; ties count one half).
    eer: equal error rate, the FPR at the point of the ROC polyline where FPR = 1 - TPR (= FNR):
        the polyline crosses that line on the segment between two consecutive sweep points
        ``(x0, y0)`` (the last one with FPR < FNR; (0, 0) at -inf if none) and ``(x1, y1)`` (the
        first one with FPR >= FNR), and ``eer = x0 + s (x1 - x0)`` with ``s`` in (0, 1] solving
        ``x + y = 1`` on that segment (linear interpolation between the two sweep points).
    eer_threshold: the threshold of ``(x1, y1)``, always a distance from the data: the smallest
        one at which FPR >= FNR, so accepting distances ``<= eer_threshold`` gives
        ``FNR <= eer <= FPR`` (equalities when a sweep point lies on FPR = FNR).
    tpr_at_fpr: for each requested FPR bound ``f`` (the keys are the floats given), the largest
        TPR over the swept thresholds whose FPR <= f.
    threshold_at_fpr: the largest swept threshold whose FPR <= f: a distance from the data (as a
        float; ``d <= threshold`` on the float32 distances reproduces ``tpr_at_fpr[f]``), or
        ``-inf`` when only "accept nothing" qualifies, i.e. the nearest pairs already hold more
        than ``f * num_negative_pairs`` negatives (then ``tpr_at_fpr[f]`` is 0.0). ``f = 1``
        gives the largest distance and TPR 1.
    num_positive_pairs: same pid, different camera.
    num_negative_pairs: different pids.
    num_excluded_pairs: same pid, same camera (left out, as in the ranking protocol; pairs of junk,
        pid -1, are in no count).
    roc: ``(fpr, tpr, thresholds)`` as ``roc_curve`` returns them (its default
        ``drop_intermediate``) when asked for with ``with_roc=True``, else None: one split and
        sort of the pairs serves both.
    """

    auc: float
    eer: float
    eer_threshold: float
    tpr_at_fpr: dict[float, float]
    threshold_at_fpr: dict[float, float]
    num_positive_pairs: int
    num_negative_pairs: int
    num_excluded_pairs: int
    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class _Pairs:
    """The pairs' distances as the metrics read them: every negative sorted in memory."""

    negatives: np.ndarray  # float32, sorted ascending
    positives: np.ndarray  # float32, sorted ascending
    num_excluded: int

    @property
    def num_negatives(self) -> int:
        return int(self.negatives.size)

    @property
    def largest(self) -> float:
        """The largest distance of any pair."""
        return float(max(self.negatives[-1], self.positives[-1]))

    @property
    def smallest(self) -> float:
        """The smallest distance of any pair."""
        return float(min(self.negatives[0], self.positives[0]))

    def negative_blocks(self, description: str) -> Iterator[np.ndarray]:
        """The negative distances, as ``StreamedPairs`` hands them over (here: one block)."""
        yield self.negatives

    def below(self, values: np.ndarray | np.floating, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(negatives, positives) with distance < (side="left") or <= (side="right") each value."""
        # float32 keys: a float64 key would make searchsorted convert the whole array first.
        keys = np.asarray(values, dtype=np.float32)
        return np.searchsorted(self.negatives, keys, side), np.searchsorted(self.positives, keys, side)

    def largest_negative_below(self, values: np.ndarray) -> np.ndarray:
        """Per value, the largest negative distance < it (-inf if none)."""
        count = np.searchsorted(self.negatives, np.asarray(values, dtype=np.float32), "left")
        return np.where(count > 0, self.negatives[np.maximum(count - 1, 0)], -np.inf)

    def first_negative(self, accepts) -> np.float32:
        """The smallest negative distance ``v`` with ``accepts(negatives <= v, positives <= v)``
        (a predicate that is monotone in ``v`` and holds at the largest negative)."""
        lo, hi = 0, self.negatives.size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if accepts(*(int(c) for c in self.below(self.negatives[mid], "right"))):
                hi = mid
            else:
                lo = mid + 1
        return self.negatives[lo]


def _split_pairs(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                 g_camids: ArrayLike) -> _Pairs:
    """Checks the inputs and returns the sorted negative and positive pair distances."""
    given = check_distmat(distmat)
    if 0 in given.shape:
        raise ValueError(f"distmat: empty query or gallery (shape {given.shape})")
    labels = Labels.of(*given.shape, q_pids, g_pids, q_camids, g_camids)
    dist = np.ascontiguousarray(given, dtype=np.float32)
    kinds = pair_kinds(labels)
    if not (kinds.kept_gallery.all() and kinds.usable_query.all()):  # junk takes part in no pair
        dist = dist[kinds.usable_query][:, kinds.kept_gallery]
        labels = Labels(labels.q_pids[kinds.usable_query], labels.g_pids[kinds.kept_gallery],
                        labels.q_camids[kinds.usable_query], labels.g_camids[kinds.kept_gallery])
        kinds = pair_kinds(labels)
    num_g = dist.shape[1]
    positive_values = dist[kinds.positive_rows, kinds.positive_cols]
    same = np.concatenate([kinds.positive_rows * num_g + kinds.positive_cols,
                           kinds.left_out_rows * num_g + kinds.left_out_cols])  # flat indices of the same-pid pairs
    same_values = dist.reshape(-1)[same]
    positives = np.sort(positive_values)
    if np.isnan(same_values).any():
        raise ValueError("distmat contains NaN; expected numbers (inf is allowed)")
    if (same_values == -np.inf).any():
        raise ValueError("distmat contains -inf; expected distances > -inf (-inf is the threshold that accepts "
                         "no pair)")
    # The negatives: sort every distance with the same-pid ones set to +inf, then cut those off the
    # end (any +inf negatives left are equal to them). A copy and an in-place sort: no mask, no
    # compress (compressing 53.6 M values by a mask costs more than sorting them).
    flat = dist.reshape(-1) if not np.may_share_memory(dist, given) else dist.reshape(-1).copy()
    flat[same] = np.inf
    flat.sort()
    if flat.size and np.isnan(flat[-1]):  # the sort puts NaN last
        raise ValueError("distmat contains NaN; expected numbers (inf is allowed)")
    if flat.size and flat[0] == -np.inf:
        raise ValueError("distmat contains -inf; expected distances > -inf (-inf is the threshold that accepts "
                         "no pair)")
    negatives = flat[: flat.size - same.size]
    return _checked(_Pairs(negatives=negatives, positives=positives, num_excluded=kinds.num_left_out))


def _checked(pairs):
    """The pairs, if there is a positive and a negative (every metric needs both)."""
    if pairs.positives.size == 0:
        raise ValueError("no positive pair: no query shares its pid with a gallery item seen by another camera "
                         "(same-pid same-camera pairs and junk are excluded); expected at least one")
    if pairs.num_negatives == 0:
        raise ValueError("no negative pair: every query x gallery pair has the same pid; expected at least one "
                         "pair of different pids")
    return pairs


def check_fprs(fprs: Iterable[float]) -> tuple[float, ...]:
    if isinstance(fprs, (numbers.Number, np.ndarray)) and np.ndim(fprs) == 0:
        raise TypeError(f"fprs={fprs!r}: expected a sequence of false positive rates, e.g. (1e-3,)")
    checked = []
    for f in fprs:
        if isinstance(f, (bool, np.bool_)) or not isinstance(f, numbers.Real) or not 0.0 < float(f) <= 1.0:
            raise ValueError(f"fprs: expected false positive rates in (0, 1], got {f!r}")
        checked.append(float(f))
    return tuple(checked)


def _rate_limit(fpr: float, num_negatives: int) -> int:
    """Largest count k of accepted negatives with k / num_negatives <= fpr (as float64 divides)."""
    k = min(int(math.floor(fpr * num_negatives)), num_negatives)
    while k < num_negatives and (k + 1) / num_negatives <= fpr:
        k += 1
    while k > 0 and k / num_negatives > fpr:
        k -= 1
    return k


def _at_fpr(pairs, fpr: float) -> tuple[float, float]:
    """(largest TPR, largest threshold) over the swept thresholds whose FPR <= fpr."""
    pos = pairs.positives
    k = _rate_limit(fpr, pairs.num_negatives)
    if k == pairs.num_negatives:  # every threshold qualifies: accept everything
        return 1.0, pairs.largest
    # Thresholds with at most k accepted negatives are those below the (k+1)-th smallest negative.
    first_excess = pairs.first_negative(_NegativesBeyond(k))
    num_neg, num_pos = pairs.below(first_excess, "left")
    candidates = [float(pairs.largest_negative_below(first_excess))] if num_neg > 0 else []
    candidates += [float(pos[num_pos - 1])] if num_pos > 0 else []
    return int(num_pos) / pos.size, max(candidates, default=-math.inf)


@dataclass(frozen=True)
class _NegativesBeyond:
    """Holds at a threshold that accepts more than ``k`` negatives (the (k+1)-th smallest one)."""

    k: int

    def __call__(self, neg_le: int, pos_le: int) -> bool:
        return neg_le >= self.k + 1


@dataclass(frozen=True)
class _FprReachesFnr:
    """Holds at a threshold where FPR >= FNR, for ``n`` negatives and ``p`` positives."""

    n: int
    p: int

    def excess(self, fp: int, tp: int) -> int:
        """The sign of FPR - FNR = fp/n - (1 - tp/p), times n*p (exact integers)."""
        return int(fp) * self.p + int(tp) * self.n - self.n * self.p

    def __call__(self, neg_le: int, pos_le: int) -> bool:
        return self.excess(neg_le, pos_le) >= 0


def _equal_error(pairs) -> tuple[float, float]:
    """(EER, threshold of the first sweep point with FPR >= FNR); see VerificationResult."""
    pos = pairs.positives
    n, p = pairs.num_negatives, int(pos.size)

    crossing = _FprReachesFnr(n, p)
    # The first distinct distance with excess >= 0 is a positive's or a negative's distance.
    fp, tp = pairs.below(pos, "right")
    first_pos = pos[int(np.argmax((fp * p + tp * n - n * p) >= 0))]  # the largest positive qualifies
    # ... and the largest negative qualifies too
    threshold = min(first_pos, pairs.first_negative(crossing))
    fp1, tp1 = (int(c) for c in pairs.below(threshold, "right"))
    fp0, tp0 = (int(c) for c in pairs.below(threshold, "left"))  # the previous sweep point
    e0, e1 = crossing.excess(fp0, tp0), crossing.excess(fp1, tp1)  # e0 < 0 <= e1
    # FPR at s = -e0 / (e1 - e0) along the segment, as one rounded division of integers.
    eer = (fp0 * (e1 - e0) - e0 * (fp1 - fp0)) / (n * (e1 - e0))
    return eer, float(threshold)


def _mann_whitney_auc(pairs) -> float:
    """P(d_neg > d_pos) + 0.5 P(d_neg == d_pos) over all (positive, negative) couples: the ROC's trapezoid area."""
    pos = pairs.positives
    below, at_or_below = (pairs.below(pos, side)[0] for side in ("left", "right"))
    n, p = pairs.num_negatives, int(pos.size)
    greater = n * p - int(at_or_below.sum())
    ties = int(at_or_below.sum()) - int(below.sum())
    return (2 * greater + ties) / (2 * n * p)


def verification_metrics(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                         g_camids: ArrayLike, fprs: Iterable[float] = DEFAULT_FPRS,
                         with_roc: bool = False) -> VerificationResult:
    """AUC, EER and TPR at fixed FPRs of the query x gallery pairs (smaller distance = more similar).

    Args:
        distmat: num_query x num_gallery distances, numpy or torch (any device). Compared in
            float32, as ``evaluate_rank`` does: thresholds are float32 distance values (returned
            as Python floats) and apply to the float32 distances. NaN and -inf are errors; +inf
            is allowed.
        q_pids, g_pids, q_camids, g_camids: integer labels (numpy or torch).
        fprs: false positive rates in (0, 1] for ``tpr_at_fpr`` / ``threshold_at_fpr``; the
            keys of those dicts are these values as floats.
        with_roc: also fill ``roc`` (what ``roc_curve`` returns, without sorting the pairs again).

    Returns:
        VerificationResult (definitions there and in the module docstring). Raises ValueError
        when there is no positive pair (same pid, different camera) or no negative pair.
    """
    fprs = check_fprs(fprs)
    return _result(_split_pairs(distmat, q_pids, g_pids, q_camids, g_camids), fprs, with_roc)


def _result(pairs, fprs: tuple[float, ...], with_roc: bool) -> VerificationResult:
    n = pairs.num_negatives
    if isinstance(pairs, StreamedPairs):  # every order statistic in the same passes
        pairs.prepare([_FprReachesFnr(n, int(pairs.positives.size))]
                      + [_NegativesBeyond(k) for k in {_rate_limit(f, n) for f in fprs} if k < n])
    eer, eer_threshold = _equal_error(pairs)
    at_fpr = {f: _at_fpr(pairs, f) for f in fprs}
    return VerificationResult(auc=_mann_whitney_auc(pairs), eer=eer, eer_threshold=eer_threshold,
                              tpr_at_fpr={f: tpr for f, (tpr, _) in at_fpr.items()},
                              threshold_at_fpr={f: t for f, (_, t) in at_fpr.items()},
                              num_positive_pairs=int(pairs.positives.size),
                              num_negative_pairs=pairs.num_negatives, num_excluded_pairs=pairs.num_excluded,
                              roc=_roc(pairs, drop_intermediate=True) if with_roc else None)


def verification_from_features(query_features: ArrayLike, gallery_features: ArrayLike, q_pids: ArrayLike,
                               g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
                               metric: str = "euclidean", fprs: Iterable[float] = DEFAULT_FPRS,
                               with_roc: bool = False, *, memory_mb: float | None = None,
                               progress: bool | None = None) -> VerificationResult:
    """:func:`verification_metrics` of the canonical distances of two feature sets at any size,
    holding the pairs only where they fit: equal to ``verification_metrics(pairwise_distance(
    query_features, gallery_features, metric), ...)`` to the last bit.

    When the pairs fit in ``memory_mb`` MiB (default: a quarter of the memory available now) they
    are computed and sorted at once; otherwise they are streamed in blocks of query rows within
    it, in two passes (``reid.evaluation.pairstream``; see :func:`protocol_pairs`). ``with_roc``:
    the ROC vertices (``roc_curve``'s default).
    """
    fprs = check_fprs(fprs)
    pairs = protocol_pairs(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids, metric=metric,
                           memory_mb=memory_mb, progress=progress)
    return _result(pairs, fprs, with_roc)


Pairs = Union[_Pairs, StreamedPairs]


def protocol_pairs(query_features: ArrayLike, gallery_features: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                   q_camids: ArrayLike, g_camids: ArrayLike, *, metric: str = "euclidean",
                   memory_mb: float | None = None, progress: bool | None = None) -> Pairs:
    """The protocol's query x gallery pairs of two feature sets (canonical distances), as the
    verification metrics and the distance histograms read them: computed and sorted in memory
    when they fit in ``memory_mb`` MiB (default: a quarter of the memory available now), else
    streamed in blocks of query rows within it (``reid.evaluation.pairstream.StreamedPairs``).
    Raises ValueError without a positive or a negative pair. Read it with
    :func:`verification_of_pairs` and ``reid.evaluation.histograms.pair_histograms``."""
    num_query, num_gallery = len(query_features), len(gallery_features)
    if block_rows_for(num_gallery, memory_mb, _DENSE_PAIR_BYTES) >= num_query:
        # the pairs fit: one product and one sort beat the two passes (the same result)
        distmat = pairwise_distance(query_features, gallery_features, metric, progress=progress)
        return _split_pairs(distmat, q_pids, g_pids, q_camids, g_camids)
    return _checked(StreamedPairs.of_features(query_features, gallery_features, q_pids, g_pids, q_camids, g_camids,
                                              metric=metric, memory_mb=memory_mb, progress=progress))


def verification_of_pairs(pairs: Pairs, fprs: Iterable[float] = DEFAULT_FPRS,
                          with_roc: bool = False) -> VerificationResult:
    """The verification metrics of :func:`protocol_pairs` (``fprs``, ``with_roc``: as
    :func:`verification_metrics`)."""
    return _result(pairs, check_fprs(fprs), with_roc)


def _full_curve(pairs: _Pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accepted negatives, accepted positives, thresholds) at -inf and every distinct distance."""
    neg, pos = pairs.negatives, pairs.positives
    total = neg.size + pos.size
    pos_at = np.searchsorted(neg, pos, "right") + np.arange(pos.size)  # positions in the merged order
    merged = np.empty(total, dtype=np.float32)
    is_pos = np.zeros(total, dtype=bool)
    is_pos[pos_at] = True
    merged[pos_at] = pos
    merged[~is_pos] = neg
    del is_pos
    ends = np.flatnonzero(merged[1:] != merged[:-1])  # last index of each run of equal distances
    ends = np.append(ends, total - 1)
    tp = np.searchsorted(pos_at, ends, "right")
    fp = ends + 1 - tp
    thresholds = merged[ends].astype(np.float64)
    del merged, ends
    return (np.concatenate(([0], fp)), np.concatenate(([0], tp)),
            np.concatenate(([-np.inf], thresholds)))


def _vertices(pairs: _Pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sweep points where the ROC polyline changes direction, with both ends.

    Between two distinct positive distances the curve only moves right (negatives), so the
    candidates are: (0, 0), for each distinct positive distance u the point just below u and the
    point at u, and (1, 1); the collinear ones among them are then dropped.
    """
    pos = pairs.positives
    distinct = pos[np.append(pos[1:] != pos[:-1], True)]
    fp_below, tp_below = pairs.below(distinct, "left")
    fp_at, tp_at = pairs.below(distinct, "right")
    # The sweep point just below u is the largest distance < u, a negative's or a positive's.
    t_below = np.maximum(pairs.largest_negative_below(distinct),
                         np.where(tp_below > 0, pos[np.maximum(tp_below - 1, 0)], -np.inf))
    fp = np.concatenate(([0], np.stack([fp_below, fp_at], axis=1).reshape(-1), [pairs.num_negatives]))
    tp = np.concatenate(([0], np.stack([tp_below, tp_at], axis=1).reshape(-1), [pos.size]))
    thresholds = np.concatenate(([-np.inf], np.stack([t_below, distinct.astype(np.float64)], axis=1).reshape(-1),
                                 [pairs.largest]))
    new = np.append(True, (np.diff(fp) != 0) | (np.diff(tp) != 0))  # the same point met twice
    fp, tp, thresholds = fp[new], tp[new], thresholds[new]
    dfp, dtp = np.diff(fp), np.diff(tp)
    turn = dfp[:-1] * dtp[1:] != dfp[1:] * dtp[:-1]  # steps all point up/right: cross product 0 = same direction
    keep = np.concatenate(([True], turn, [True]))
    return fp[keep], tp[keep], thresholds[keep]


def roc_curve(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
              drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of the query x gallery pairs: ``fpr, tpr, thresholds`` (same pairs as ``verification_metrics``).

    Point ``i`` is ``(fpr[i], tpr[i])`` when accepting distances ``<= thresholds[i]``; thresholds
    increase from ``-inf`` (accept nothing: (0, 0)) to the largest distance ((1, 1)). Plot with
    straight segments between the points; ``np.trapezoid(tpr, fpr)`` is the AUC (up to rounding).

    Args:
        distmat, q_pids, g_pids, q_camids, g_camids: as ``verification_metrics``.
        drop_intermediate: keep only the points where the curve changes direction, and both
            ends (default): the polyline, its area and its EER crossing are unchanged, and there
            are at most about twice as many points as distinct positive distances. With False,
            every distinct distance is a point (20 bytes each; 33 M for random float32 distances
            at Market-1501 size: ~5 s and ~1.7 GiB above the input at peak).

    Returns:
        fpr, tpr (float64) and thresholds (float64 holding float32 distance values, ``-inf`` first).
    """
    return _roc(_split_pairs(distmat, q_pids, g_pids, q_camids, g_camids), drop_intermediate)


def _roc(pairs, drop_intermediate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not drop_intermediate and not isinstance(pairs, _Pairs):
        raise ValueError("drop_intermediate=False needs every pair's distance in memory; expected "
                         "drop_intermediate=True for streamed pairs (the same polyline)")
    fp, tp, thresholds = _full_curve(pairs) if not drop_intermediate else _vertices(pairs)
    return fp / pairs.num_negatives, tp / pairs.positives.size, thresholds
