"""Histograms of the match and non-match distances of the protocol's query x gallery pairs.

The pairs are the verification's (``reid.evaluation.protocol.pair_kinds``): matches are the
positives (same pid, another camera), non-matches the negatives (another pid); same-pid
same-camera pairs and junk are in neither. Both kinds share one set of ``bins`` equal bins from
the smallest to the largest finite distance of either kind, fixed before any value is binned, so
the counts can be summed over blocks of pairs: every count equals ``numpy.histogram`` of all the
pairs with the same edges, however the pairs were streamed (``pair_histograms`` reads them in the
blocks ``StreamedPairs`` hands over, within its memory budget). Each kind's mean is exact (the
float32 distances summed as integers, one rounding at the end), so it too is independent of the
blocks and of their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable

import numpy as np

DEFAULT_BINS = 60
_CHUNK = 1 << 18  # values binned at once: a few MiB of temporaries, whatever the block of pairs
_SUBNORMAL_EXPONENT = 149  # float32's smallest subnormal is 2^-149: the unit of the exact sums


def exact_float32_sum(values: np.ndarray) -> int:
    """The exact sum of finite float32 ``values`` in units of 2^-149 (a Python integer).

    A float32 is ``m * 2^(s - 149)`` with an integer mantissa ``m`` (sign included, < 2^24) and a
    shift ``s`` in 0..253; the mantissas are summed per shift, split into 12-bit halves whose
    float64 sums stay exact (below 2^53) for up to 2^41 values, then shifted into one integer."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    biased = (bits >> 23) & 0xFF
    mantissa = (bits & 0x7FFFFF) | np.where(biased > 0, np.int32(1 << 23), np.int32(0))
    mantissa = np.where(bits < 0, -mantissa, mantissa)
    shift = np.maximum(biased, 1) - 1
    high = np.bincount(shift, weights=mantissa >> 12, minlength=254)
    low = np.bincount(shift, weights=mantissa & 0xFFF, minlength=254)
    return sum((int(h) * 4096 + int(lo)) << s for s, (h, lo) in enumerate(zip(high.tolist(), low.tolist()))
               if h or lo)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``numpy.histogram(values, bins=edges)[0]`` without its sort (O(n log bins), not O(n log n)):
    a value ``x`` is in bin ``i`` when ``edges[i] <= x < edges[i + 1]`` (compared in float64, as
    numpy compares), the last bin also holding its right edge; values outside, +-inf and NaN in none."""
    index = np.searchsorted(edges, values, side="right") - 1
    last = edges.size - 2
    index[values == edges[-1]] = last
    return np.bincount(index[(index >= 0) & (index <= last)], minlength=last + 1)


@dataclass(frozen=True, eq=False)
class DistanceCounts:
    """One kind of pair, binned.

    counts: per bin, as ``numpy.histogram`` (the last bin holds its right edge; distances outside
        the edges, +inf, are in no bin).
    size: the pairs of this kind (also those in no bin).
    mean: their mean distance, exactly rounded (inf or NaN as numpy's mean; NaN with no pair).
    """

    counts: np.ndarray = field(repr=False)
    size: int
    mean: float

    def density(self, edges: np.ndarray) -> np.ndarray:
        """Counts normalised to unit area, as ``numpy.histogram(..., density=True)`` computes them."""
        return self.counts / np.diff(edges) / self.counts.sum()


@dataclass(frozen=True, eq=False)
class PairHistograms:
    """The match and non-match histograms over the shared ``edges`` (``bins + 1`` float64 values)."""

    edges: np.ndarray = field(repr=False)
    matches: DistanceCounts
    non_matches: DistanceCounts


class _Binned:
    """Counts, size and exact sum of one kind of pair, accumulated block by block."""

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = edges
        self.counts = np.zeros(edges.size - 1, dtype=np.int64)
        self.size, self.exact, self.special = 0, 0, 0.0

    def add(self, values: np.ndarray) -> None:
        for start in range(0, values.size, _CHUNK):
            part = np.asarray(values[start:start + _CHUNK], dtype=np.float32)
            self.counts += bin_counts(part, self.edges)
            self.size += part.size
            finite = np.isfinite(part)
            if not finite.all():  # inf and NaN: the float sum that numpy's mean would give
                with np.errstate(invalid="ignore"):  # inf - inf is NaN, as in numpy's mean, without its warning
                    self.special += float(np.sum(part[~finite], dtype=np.float64))
                part = part[finite]
            self.exact += exact_float32_sum(part)

    def result(self) -> DistanceCounts:
        if self.size == 0:
            mean = float("nan")
        elif self.special != 0.0:  # a sum of infinities and NaNs: +-inf or NaN, whatever the finite values add
            mean = self.special
        else:
            mean = float(Fraction(self.exact, self.size << _SUBNORMAL_EXPONENT))
        return DistanceCounts(self.counts, self.size, mean)


def histogram_edges(low: float, high: float, bins: int = DEFAULT_BINS) -> np.ndarray:
    """``bins`` equal bins from ``low`` to ``high`` (one unit wide in all when they are equal)."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins={bins!r}: expected a positive integer")
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def _finite_range(arrays: Iterable[np.ndarray]) -> tuple[float, float]:
    """(smallest, largest) finite value of all ``arrays``; (0, 1) when none is finite."""
    bounds = [(float(a[np.isfinite(a)].min()), float(a[np.isfinite(a)].max())) for a in arrays if np.isfinite(a).any()]
    return (min(b[0] for b in bounds), max(b[1] for b in bounds)) if bounds else (0.0, 1.0)


def _binned(edges: np.ndarray, matches: Iterable[np.ndarray], non_matches: Iterable[np.ndarray]) -> PairHistograms:
    sides = (_Binned(edges), _Binned(edges))
    for side, blocks in zip(sides, (matches, non_matches)):
        for block in blocks:
            side.add(block)
    return PairHistograms(edges, sides[0].result(), sides[1].result())


def value_histograms(matches: np.ndarray, non_matches: np.ndarray, bins: int = DEFAULT_BINS) -> PairHistograms:
    """The histograms of match and non-match distances given as arrays (e.g.
    ``reid.visualization.split_distances`` of a matrix); the edges span their finite values."""
    matches, non_matches = np.asarray(matches, dtype=np.float32), np.asarray(non_matches, dtype=np.float32)
    return _binned(histogram_edges(*_finite_range((matches, non_matches)), bins), [matches], [non_matches])


def pair_histograms(pairs, bins: int = DEFAULT_BINS) -> PairHistograms:
    """The histograms of the pairs of ``reid.evaluation.verification.protocol_pairs`` (distances of
    features: finite), the non-matches read block by block (one more pass when they are streamed).
    The edges span the smallest to the largest pair distance, which the pairs know before the pass."""
    edges = histogram_edges(pairs.smallest, pairs.largest, bins)
    return _binned(edges, [pairs.positives], pairs.negative_blocks("distance histograms"))
