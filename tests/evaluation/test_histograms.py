"""The match / non-match distance histograms: numpy's counts, exact means, independent of the blocks."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from reid.evaluation import histograms
from reid.evaluation.histograms import exact_float32_sum, histogram_edges, pair_histograms, value_histograms
from reid.evaluation.verification import protocol_pairs


def _fraction_sum(values: np.ndarray) -> Fraction:
    return sum((Fraction(float(v)) for v in values), Fraction(0))


def test_exact_float32_sum_is_the_sum_of_the_exact_values():
    rng = np.random.default_rng(0)
    scaled = rng.normal(size=2000) * 10.0 ** rng.integers(-40, 38, 2000)
    values = np.concatenate([scaled, [0.0, -0.0, 1e-45, -1e-45, 3e-42, 1.2e-38]]).astype(np.float32)
    values = np.concatenate([values, np.full(3, np.finfo(np.float32).max), -np.full(2, np.finfo(np.float32).max)])
    assert np.isfinite(values).all() and (np.abs(values[values != 0]) < np.finfo(np.float32).tiny).any()
    assert Fraction(exact_float32_sum(values), 2 ** 149) == _fraction_sum(values)
    assert exact_float32_sum(np.zeros(0, dtype=np.float32)) == 0
    assert exact_float32_sum(np.array([1.5, 0.25], dtype=np.float32)) == 7 << 147  # 1.75 = 7 * 2^-2


def test_bin_counts_are_numpys_histogram():
    rng = np.random.default_rng(4)
    for edges in (np.linspace(0.1, 0.9, 9), np.linspace(0.125, 0.875, 7)):  # the second: float32 values, ties
        near = edges.astype(np.float32)
        values = np.concatenate([rng.random(10_000).astype(np.float32), near, np.nextafter(near, np.float32(-1)),
                                 np.nextafter(near, np.float32(2)), [np.inf, -np.inf, np.nan, -3.0, 5.0]])
        values = values.astype(np.float32)
        np.testing.assert_array_equal(histograms.bin_counts(values, edges), np.histogram(values, bins=edges)[0])
        assert histograms.bin_counts(values[:0], edges).tolist() == [0] * (edges.size - 1)


def test_counts_and_densities_are_numpys_and_means_exact():
    rng = np.random.default_rng(1)
    matches = (rng.random(300) * 0.7).astype(np.float32)
    non_matches = np.concatenate([(0.2 + rng.random(5000) * 1.5).astype(np.float32), [np.inf]]).astype(np.float32)
    found = value_histograms(matches, non_matches, bins=7)
    finite = np.concatenate([matches, non_matches[:-1]])
    edges = np.linspace(float(finite.min()), float(finite.max()), 8)
    np.testing.assert_array_equal(found.edges, edges)
    for side, data in ((found.matches, matches), (found.non_matches, non_matches)):
        np.testing.assert_array_equal(side.counts, np.histogram(data, bins=edges)[0])
        np.testing.assert_array_equal(side.density(edges), np.histogram(data, bins=edges, density=True)[0])
        assert side.size == data.size
    assert found.matches.mean == float(_fraction_sum(matches) / matches.size)
    assert f"{found.matches.mean:.3f}" == f"{np.mean(matches, dtype=np.float64):.3f}"
    assert found.non_matches.mean == np.inf  # as numpy's mean
    assert found.non_matches.counts.sum() == 5000  # +inf lies in no bin


def test_the_blocks_change_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    matches, non_matches = rng.random(999).astype(np.float32), rng.random(12_345).astype(np.float32)
    whole = value_histograms(matches, non_matches)
    monkeypatch.setattr(histograms, "_CHUNK", 7)
    chunked = value_histograms(matches, non_matches)
    for a, b in ((whole.matches, chunked.matches), (whole.non_matches, chunked.non_matches)):
        np.testing.assert_array_equal(a.counts, b.counts)
        assert (a.size, a.mean) == (b.size, b.mean)


def test_streamed_pairs_give_the_histograms_of_the_pairs_in_memory():
    rng = np.random.default_rng(3)
    qf, gf = rng.normal(size=(15, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    labels = (rng.integers(-1, 5, 15), rng.integers(-1, 5, 70), rng.integers(0, 3, 15), rng.integers(0, 3, 70))
    dense = pair_histograms(protocol_pairs(qf, gf, *labels, memory_mb=None))
    streamed_pairs = protocol_pairs(qf, gf, *labels, memory_mb=1e-9)
    assert type(streamed_pairs).__name__ == "StreamedPairs"  # one query row per block
    streamed = pair_histograms(streamed_pairs)
    np.testing.assert_array_equal(dense.edges, streamed.edges)
    for a, b in ((dense.matches, streamed.matches), (dense.non_matches, streamed.non_matches)):
        np.testing.assert_array_equal(a.counts, b.counts)
        assert (a.size, a.mean) == (b.size, b.mean)


def test_edge_cases():
    same = value_histograms(np.full(4, 0.5, dtype=np.float32), np.zeros(0, dtype=np.float32), bins=2)
    np.testing.assert_array_equal(same.edges, [0.5, 1.0, 1.5])  # one unit wide when every value is equal
    np.testing.assert_array_equal(same.matches.counts, [4, 0])
    assert same.non_matches.size == 0 and np.isnan(same.non_matches.mean)
    assert np.isnan(value_histograms(np.array([np.inf, -np.inf], dtype=np.float32), np.ones(2)).matches.mean)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"bins={bad!r}: expected a positive integer"):
            histogram_edges(0.0, 1.0, bad)
