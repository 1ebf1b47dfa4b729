"""k-reciprocal re-ranking against a direct dense transcription of the classic steps."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import tracemalloc

import numpy as np
import pytest
import torch

from reid.evaluation import pairwise_distance, rerank, rerank_distances
from reid.evaluation.rerank import evaluate_reranked
from tests.evaluation.test_distance import within_bound


def dense_encoding(dist: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The classic's V after the k2 query expansion, from its normalised N x N ``dist``, in plain
    loops (the k-reciprocal sets, their expansion, the Gaussian weights; shared with test_jaccard)."""
    n = dist.shape[0]
    nearest = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2))

    def reciprocal(i: int, k: int) -> list[int]:
        return [int(c) for c in nearest[i, : k + 1] if i in nearest[c, : k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        members = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                members |= set(rc)
        idx = np.array(sorted(members), dtype=int)
        weights = np.exp(-dist[i, idx])
        v[i, idx] = weights / weights.sum()
    if k2 != 1:
        v = np.stack([v[nearest[i, :k2]].mean(axis=0) for i in range(n)])
    return v


def _classic_dense(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """The classic function step by step (docs/ARCHITECTURE.md), with dense N x N arrays and plain loops.

    Ties are ordered by index (stable sort), the order re-ranking promises.
    """
    q = q_g.shape[0]
    n = q + q_g.shape[1]
    joint = np.block([[q_q, q_g], [q_g.T, g_g]])
    squared = np.square(joint).astype(np.float32)
    # the classic divides each column by its maximum and then transposes
    dist = (squared / squared.max(axis=0)).T
    v = dense_encoding(dist, k1, k2)
    jaccard = np.empty((q, n), dtype=np.float32)
    for i in range(q):
        shared = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    return ((1 - lam) * jaccard + lam * dist[:q])[:, q:]


def _squared_euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torchreid's formula in float32, without clamping (what the classic is fed)."""
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    d = ta.pow(2).sum(1, keepdim=True) + tb.pow(2).sum(1, keepdim=True).t()
    return d.addmm_(ta, tb.t(), beta=1, alpha=-2).numpy()


def _features(seed: int, q: int, g: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim))
    qf = centres[rng.integers(0, 12, q)] + 0.6 * rng.standard_normal((q, dim))
    gf = centres[rng.integers(0, 12, g)] + 0.6 * rng.standard_normal((g, dim))
    return qf.astype(np.float32), gf.astype(np.float32)


PARAMS = [(20, 6, 0.3), (5, 1, 0.0), (7, 8, 1.0), (1, 1, 0.5), (3, 2, 0.3), (6, 4, 0.7)]


@pytest.mark.parametrize("k1, k2, lam", PARAMS)
@pytest.mark.parametrize("seed, q, g", [(0, 15, 60), (1, 9, 131)])
def test_features_and_distances_match_dense_transcription(k1: int, k2: int, lam: float, seed: int, q: int, g: int) -> None:
    qf, gf = _features(seed, q, g)
    q_g, q_q, g_g = _squared_euclidean(qf, gf), _squared_euclidean(qf, qf), _squared_euclidean(gf, gf)
    expected = _classic_dense(q_g, q_q, g_g, k1, k2, lam)
    from_features = rerank(qf, gf, k1=k1, k2=k2, lambda_value=lam, block_size=64)  # several blocks
    from_distances = rerank_distances(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert from_features.shape == (q, g) and from_features.dtype == np.float32
    np.testing.assert_allclose(from_features, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(from_distances, expected, rtol=0, atol=1e-5)


def test_defaults_and_torch_inputs() -> None:
    qf, gf = _features(3, 20, 100)
    q_g, q_q, g_g = _squared_euclidean(qf, gf), _squared_euclidean(qf, qf), _squared_euclidean(gf, gf)
    expected = _classic_dense(q_g, q_q, g_g, 20, 6, 0.3)
    np.testing.assert_allclose(rerank(torch.from_numpy(qf), torch.from_numpy(gf)), expected, atol=1e-5)
    got = rerank_distances(torch.from_numpy(q_g), torch.from_numpy(q_q), torch.from_numpy(g_g))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distances_need_not_be_symmetric(dtype: type) -> None:
    # arbitrary matrices (negative entries too): the classic's transposition must be reproduced
    rng = np.random.default_rng(4)
    q_g, q_q, g_g = (rng.standard_normal(s).astype(dtype) for s in ((12, 70), (12, 12), (70, 70)))
    for k1, k2, lam in [(20, 6, 0.3), (4, 5, 0.6)]:
        expected = _classic_dense(q_g, q_q, g_g, k1, k2, lam)
        np.testing.assert_allclose(rerank_distances(q_g, q_q, g_g, k1, k2, lam), expected, atol=1e-5)


def test_exact_ties_follow_index_order() -> None:
    # integer features: every distance is an exact small integer, so ties abound and are the
    # same in every summation order; the neighbour lists must break them by index
    rng = np.random.default_rng(5)
    qf = rng.integers(0, 3, (10, 4)).astype(np.float32)
    gf = rng.integers(0, 3, (150, 4)).astype(np.float32)
    q_g, q_q, g_g = _squared_euclidean(qf, gf), _squared_euclidean(qf, qf), _squared_euclidean(gf, gf)
    for k1, k2, lam in [(20, 6, 0.3), (5, 3, 0.5)]:
        expected = _classic_dense(q_g, q_q, g_g, k1, k2, lam)
        np.testing.assert_allclose(rerank(qf, gf, k1, k2, lam, block_size=64), expected, atol=1e-5)
        np.testing.assert_allclose(rerank_distances(q_g, q_q, g_g, k1, k2, lam), expected, atol=1e-5)


def test_partial_selection_matches_full_sorts() -> None:
    # Rows wider than 1,024 take the thresholded selections (the sweep's diagonal blocks with
    # block_size=1024, the dense path's rows); 128-row blocks and the dense transcription's
    # full sorts (checked above on small sets) must agree with them.
    qf, gf = _features(6, 30, 1170, dim=8)
    q_g, q_q, g_g = _squared_euclidean(qf, gf), _squared_euclidean(qf, qf), _squared_euclidean(gf, gf)
    wide_blocks = rerank(qf, gf, block_size=1024)
    np.testing.assert_allclose(wide_blocks, rerank(qf, gf, block_size=128), atol=1e-6)
    np.testing.assert_allclose(rerank_distances(q_g, q_q, g_g), wide_blocks, atol=1e-6)


def test_no_dense_n_by_n_array(monkeypatch: pytest.MonkeyPatch) -> None:
    # N = 6,000: one N x N float32 array is 144 MB. With the fixed-size work blocks made small,
    # what remains is O(N k1) plus the q x g output: numpy's peak stays far below N x N.
    module = importlib.import_module("reid.evaluation.rerank")  # the package attribute is the function
    monkeypatch.setattr(module, "_JACCARD_ELEMENTS", 1 << 16)
    monkeypatch.setattr(module, "_JACCARD_TRIPLES", 1 << 14)
    monkeypatch.setattr(module, "_SETS_ROWS", 64)
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, 32))  # ~10 images per identity, as in re-ID test sets
    qf = (centres[rng.integers(0, 300, 100)] + 0.3 * rng.standard_normal((100, 32))).astype(np.float32)
    gf = (centres[rng.integers(0, 300, 5900)] + 0.3 * rng.standard_normal((5900, 32))).astype(np.float32)
    tracemalloc.start()
    try:
        rerank(qf, gf, block_size=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = 6000
    assert peak < n * n * 4 / 4, f"numpy peak {peak / 2**20:.1f} MiB"


def _canonical_inputs(qf: np.ndarray, gf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)


def _tied_features(seed: int, q: int = 24, g: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Scaled and repeated integer directions: exact ties and near-ties everywhere."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, (40, 6)).astype(np.float32) + np.float32(0.5)
    pool = np.concatenate([base, base, base * np.float32(1.5), base * np.float32(0.1)])
    feats = pool[rng.integers(0, len(pool), q + g)]
    return feats[:q], feats[q:]


@pytest.mark.parametrize("case", ["clusters", "ties"])
def test_features_equal_the_classic_on_canonical_matrices_bit_for_bit(case: str) -> None:
    qf, gf = _features(10, 20, 150) if case == "clusters" else _tied_features(11)
    matrices = _canonical_inputs(qf, gf)
    for k1, k2, lam in [(20, 6, 0.3), (5, 3, 0.5)]:
        want = rerank_distances(*matrices, k1, k2, lam)
        np.testing.assert_allclose(want, _classic_dense(*matrices, k1, k2, lam), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(rerank(qf, gf, k1, k2, lam, block_size=64), want)


def test_same_bits_whatever_the_block_size_threads_and_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.evaluation import distance

    qf, gf = _tied_features(12, q=30, g=260)
    want = rerank(qf, gf)
    threads = torch.get_num_threads()
    try:
        for block_size, num_threads in [(64, 1), (100, 2), (4096, 1)]:
            torch.set_num_threads(num_threads)
            np.testing.assert_array_equal(rerank(qf, gf, block_size=block_size), want)
    finally:
        torch.set_num_threads(threads)
    # another BLAS rounds the float32 products otherwise, within their bound: push them to its ends
    for side in (-1.0, 1.0):
        def pushed(self, rows, cols=slice(None), side=side):
            bound = self.fast_bound(rows)
            return within_bound(self.exact(rows, cols), bound[:, None], side), bound

        monkeypatch.setattr(distance.FeatureDistances, "fast", pushed)
        np.testing.assert_array_equal(rerank(qf, gf, block_size=64), want)


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed")
def test_faiss_backend_matches_torch_backend() -> None:
    for qf, gf in (_features(8, 25, 300), _tied_features(13)):
        a = rerank(qf, gf, knn_backend="torch", block_size=64)
        b = rerank(qf, gf, knn_backend="faiss")
        np.testing.assert_array_equal(a, b)


def _hnsw_quality(caplog: pytest.LogCaptureFixture, qf: np.ndarray, gf: np.ndarray) -> tuple[np.ndarray, object]:
    """rerank with knn_backend='faiss-hnsw', and the NeighbourQuality it logged."""
    caplog.clear()  # only this call's records
    with caplog.at_level(logging.INFO, logger="reid"):
        got = rerank(qf, gf, knn_backend="faiss-hnsw")
    quality = [r.neighbour_quality for r in caplog.records if hasattr(r, "neighbour_quality")]
    assert len(quality) == 1
    return got, quality[0]


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed")
def test_hnsw_backend_finds_everything_on_a_small_set(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # 325 items: the graph's search reaches every item, so the approximate lists are the exact ones
    qf, gf = _features(8, 25, 300)
    got, quality = _hnsw_quality(caplog, qf, gf)
    np.testing.assert_array_equal(got, rerank(qf, gf))
    assert (quality.k, quality.rows, quality.recall, quality.maxima_exact, quality.maxima_shortfall) == (21, 256, 1.0,
                                                                                                       1.0, 0.0)
    labels = (np.arange(25) % 7, np.arange(300) % 7, np.zeros(25, int), np.ones(300, int))
    want = evaluate_reranked(qf, gf, *labels)
    approx = evaluate_reranked(qf, gf, *labels, knn_backend="faiss-hnsw")
    np.testing.assert_array_equal(approx.all_AP, want.all_AP)
    # unit rows, a pool of one item: the farthest come from the reflected search (-x) alone
    rerank_module = importlib.import_module("reid.evaluation.rerank")
    monkeypatch.setattr(rerank_module, "_FAR_POOL", 1)
    unit_q, unit_g = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (qf, gf))
    got, quality = _hnsw_quality(caplog, unit_q, unit_g)
    np.testing.assert_array_equal(got, rerank(unit_q, unit_g))
    assert quality.maxima_exact == 1.0
    # unnormalised rows, the same pool: reflection no longer finds the farthest, and it shows
    got, quality = _hnsw_quality(caplog, qf * np.linspace(0.5, 3, 25)[:, None].astype(np.float32), gf)
    assert 0.0 < quality.maxima_exact < 1.0 and quality.maxima_shortfall > 0.0 and quality.recall == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k1": 0}, "k1=0"),
        ({"k2": 0}, "k2=0"),
        ({"k1": 5, "k2": 7}, "k2=7: expected an integer with 1 <= k2 <= k1 \\+ 1 = 6"),
        ({"lambda_value": -0.1}, "lambda_value=-0.1"),
        ({"lambda_value": 1.5}, "lambda_value=1.5"),
        ({"knn_backend": "annoy"}, "knn_backend='annoy'"),
        ({"block_size": 16}, "block_size=16"),
    ],
)
def test_parameter_errors(kwargs: dict, message: str) -> None:
    qf, gf = _features(9, 5, 30)
    with pytest.raises(ValueError, match=message):
        rerank(qf, gf, **kwargs)


def test_feature_errors() -> None:
    qf, gf = _features(10, 5, 30)
    with pytest.raises(ValueError, match="feature widths differ"):
        rerank(qf, gf[:, :8])
    bad = qf.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="query_features contains NaN or inf"):
        rerank(bad, gf)
    bad = gf.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="gallery_features contains NaN or inf"):
        rerank(qf, bad)
    with pytest.raises(ValueError, match="empty query or gallery"):
        rerank(qf[:0], gf)


def test_distance_errors() -> None:
    qf, gf = _features(11, 5, 30)
    q_g, q_q, g_g = _squared_euclidean(qf, gf), _squared_euclidean(qf, qf), _squared_euclidean(gf, gf)
    with pytest.raises(ValueError, match="shapes do not fit"):
        rerank_distances(q_g, q_q[:4, :4], g_g)
    bad = q_g.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="q_g contains NaN or inf"):
        rerank_distances(bad, q_q, g_g)
    with pytest.raises(ValueError, match="k2=0"):
        rerank_distances(q_g, q_q, g_g, k2=0)
    with pytest.raises(ValueError, match="q_g is empty"):
        rerank_distances(q_g[:0], q_q[:0, :0], g_g)
