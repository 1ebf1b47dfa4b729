"""Streaming evaluation (``evaluate_features``): equal to the dense path to the last bit."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from reid.evaluation.distance import pairwise_distance
from reid.evaluation.ordering import BLOCK_BYTES_PER_ENTRY, FeatureBlocks, block_rows_for, match_ranks
from reid.evaluation.distance import FeatureDistances
from reid.evaluation.protocol import Labels
from reid.evaluation.rank import evaluate_features, evaluate_rank


def _case(seed: int, num_q: int = 40, num_g: int = 300, dim: int = 16, ties: bool = False):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim)).astype(np.float32)
    q_pids = rng.integers(1, 12, num_q)
    g_pids = rng.integers(0, 12, num_g)  # 0: distractors, never a match
    g_pids[rng.random(num_g) < 0.1] = -1  # junk: left out of every list
    qf = centres[np.maximum(q_pids, 0)] + 0.8 * rng.standard_normal((num_q, dim)).astype(np.float32)
    gf = centres[np.maximum(g_pids, 0)] + 0.8 * rng.standard_normal((num_g, dim)).astype(np.float32)
    if ties:  # exact ties: duplicated gallery rows and queries equal to gallery rows
        gf[1::3] = gf[0::3][: gf[1::3].shape[0]]
        qf[::4] = gf[: qf[::4].shape[0]]
        gf = np.round(gf * 4) / 4
        qf = np.round(qf * 4) / 4
    return (qf, gf, q_pids, g_pids, rng.integers(0, 3, num_q), rng.integers(0, 3, num_g))


def _assert_same(streamed, dense) -> None:
    np.testing.assert_array_equal(streamed.cmc, dense.cmc)
    assert streamed.mAP == dense.mAP and streamed.mINP == dense.mINP
    assert streamed.num_valid_queries == dense.num_valid_queries
    np.testing.assert_array_equal(streamed.all_AP, dense.all_AP)  # NaN where skipped, both
    np.testing.assert_array_equal(streamed.all_INP, dense.all_INP)
    np.testing.assert_array_equal(streamed.first_hit_rank, dense.first_hit_rank)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("memory_mb", [1e-9, 0.05, None])  # one query row per block, a few rows, default
def test_streaming_equals_dense_bit_for_bit(metric: str, ties: bool, memory_mb) -> None:
    qf, gf, *labels = _case(seed=3, ties=ties)
    dense = evaluate_rank(pairwise_distance(qf, gf, metric), *labels, max_rank=20)
    streamed = evaluate_features(qf, gf, *labels, metric=metric, max_rank=20, memory_mb=memory_mb)
    _assert_same(streamed, dense)


def test_streaming_equals_dense_trapezoid_float64_and_no_junk_rule() -> None:
    qf, gf, *labels = _case(seed=5, num_q=30, num_g=200)
    qf, gf = qf.astype(np.float64), gf.astype(np.float64)
    for kwargs in ({"ap": "trapezoid"}, {"junk_pid": None}):
        dense = evaluate_rank(pairwise_distance(qf, gf), *labels, max_rank=5, **kwargs)
        _assert_same(evaluate_features(qf, gf, *labels, max_rank=5, memory_mb=1e-9, **kwargs), dense)


def test_streaming_takes_torch_tensors() -> None:
    qf, gf, *labels = _case(seed=7)
    dense = evaluate_rank(pairwise_distance(qf, gf), *labels)
    _assert_same(evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf), *map(torch.from_numpy, labels)), dense)


def test_memory_budget_sets_the_block_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    assert block_rows_for(1000, 1e-9) == 1
    assert block_rows_for(1000, 1.0) == 2 ** 20 // (1000 * BLOCK_BYTES_PER_ENTRY)
    space = FeatureDistances(np.zeros((600, 4), np.float32), np.ones((1000, 4), np.float32))
    blocks = FeatureBlocks(space, memory_mb=1.0)
    assert blocks.max_rows == blocks.min_rows == 21
    assert FeatureBlocks(space, memory_mb=10_000).min_rows == 256
    seen = []
    original = blocks.block
    blocks.block = lambda rows: (seen.append(rows.stop - rows.start), original(rows))[1]
    labels = Labels.of(600, 1000, np.zeros(600, int), np.zeros(1000, int), np.zeros(600, int), np.ones(1000, int))
    match_ranks(blocks, labels, num_threads=1, progress=False)
    assert max(seen) == 21 and sum(seen) == 600
    seen.clear()  # two blocks in flight share the budget
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    match_ranks(blocks, labels, num_threads=2, progress=False)
    assert max(seen) == 10 and sum(seen) == 600


def test_bad_input_is_one_clear_error() -> None:
    qf, gf, *labels = _case(seed=1)
    with pytest.raises(ValueError, match=r"memory_mb=0: expected a positive number of MiB or None"):
        evaluate_features(qf, gf, *labels, memory_mb=0)
    with pytest.raises(ValueError, match="max_rank=0: expected a positive integer"):
        evaluate_features(qf, gf, *labels, max_rank=0)
    with pytest.raises(ValueError, match=r"empty query or gallery features \(0 x 300\)"):
        evaluate_features(qf[:0], gf, labels[0][:0], labels[1], labels[2][:0], labels[3])
    with pytest.raises(ValueError, match="feature widths differ"):
        evaluate_features(qf[:, :3], gf, *labels)


# ----------------------------------------------------------------------------- verification

_FIELDS = ("auc", "eer", "eer_threshold", "tpr_at_fpr", "threshold_at_fpr", "num_positive_pairs",
           "num_negative_pairs", "num_excluded_pairs")


@pytest.mark.parametrize("collect_limit", [1 << 24, 40, 1])  # settle by collecting, or by two histograms
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_verification_equals_dense(monkeypatch, collect_limit: int, ties: bool, seed: int) -> None:
    import reid.evaluation.pairstream as pairstream
    from reid.evaluation.verification import verification_from_features, verification_metrics

    monkeypatch.setattr(pairstream, "_COLLECT_LIMIT", collect_limit)
    qf, gf, *labels = _case(seed, ties=ties)
    fprs = (1e-4, 0.01, 0.3, 0.5, 1.0)
    dense = verification_metrics(pairwise_distance(qf, gf), *labels, fprs=fprs, with_roc=True)
    streamed = verification_from_features(qf, gf, *labels, fprs=fprs, with_roc=True, memory_mb=0.01)
    for name in _FIELDS:
        assert getattr(streamed, name) == getattr(dense, name), name
    for a, b in zip(streamed.roc, dense.roc):
        np.testing.assert_array_equal(a, b)


def test_streamed_verification_works_in_blocks_of_the_budget(monkeypatch) -> None:
    from reid.evaluation.verification import verification_from_features

    qf, gf, *labels = _case(2)
    seen = []
    original = FeatureDistances.exact
    monkeypatch.setattr(FeatureDistances, "exact", lambda self, rows, cols=slice(None): (
        seen.append(rows.stop - rows.start), original(self, rows, cols))[1])
    verification_from_features(qf, gf, *labels, memory_mb=0.05)
    usable_gallery = int((labels[1] != -1).sum())
    assert max(seen) == int(0.05 * 2 ** 20 // (usable_gallery * 40))  # pairstream._PAIR_BYTES per pair
    assert len(seen) == 2 * -(-40 // max(seen))  # two passes over the 40 query rows: counts, thresholds


def test_streamed_verification_errors_name_the_problem() -> None:
    from reid.evaluation.verification import verification_from_features

    qf, gf, *labels = _case(3)
    q_pids, g_pids, q_camids, g_camids = labels
    with pytest.raises(ValueError, match="no positive pair"):
        verification_from_features(qf, gf, q_pids + 100, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match="drop_intermediate=False needs every pair"):
        from reid.evaluation.pairstream import StreamedPairs
        from reid.evaluation.verification import _roc
        _roc(StreamedPairs.of_features(qf, gf, *labels, metric="euclidean", memory_mb=None, progress=False), False)


# ----------------------------------------------------------------------------- re-ranking

@pytest.mark.parametrize("knn_backend", ["torch", "faiss"])
@pytest.mark.parametrize("memory_mb", [1e-9, None])
def test_streamed_reranking_equals_dense_bit_for_bit(knn_backend: str, memory_mb) -> None:
    from reid.evaluation.rerank import evaluate_reranked, rerank

    pytest.importorskip("faiss") if knn_backend == "faiss" else None
    qf, gf, *labels = _case(seed=4, num_q=50, num_g=260)
    dense = evaluate_rank(rerank(qf, gf, k1=12, k2=4, lambda_value=0.2, knn_backend=knn_backend), *labels,
                          max_rank=10)
    streamed = evaluate_reranked(qf, gf, *labels, k1=12, k2=4, lambda_value=0.2, max_rank=10, memory_mb=memory_mb,
                                 knn_backend=knn_backend)
    _assert_same(streamed, dense)


def test_reranked_blocks_are_the_rows_of_rerank() -> None:
    from reid.evaluation.rerank import RerankedBlocks, _from_features, rerank

    qf, gf, *_ = _case(seed=6, num_q=30, num_g=120)
    dense = rerank(qf, gf)
    reranking, _ = _from_features(qf, gf, 20, 6, 0.3, "torch", 2048, None, keep_distances=False)
    blocks = RerankedBlocks(reranking, memory_mb=None)
    np.testing.assert_array_equal(blocks.exact(slice(7, 19)), dense[7:19])
    keep = np.arange(120) % 3 != 0
    np.testing.assert_array_equal(blocks.columns(keep).exact(slice(0, 30)), dense[:, keep])
    np.testing.assert_array_equal(blocks.pairs(np.array([3, 3, 29]), np.array([0, 5, 119])), dense[[3, 3, 29], [0, 5, 119]])


def test_products_without_the_augmented_gallery_copy(monkeypatch) -> None:
    """Large galleries build their augmented operands per tile: the same canonical results."""
    import reid.evaluation.distance as distance

    qf, gf, *labels = _case(seed=8)
    dense = evaluate_rank(pairwise_distance(qf, gf), *labels)
    monkeypatch.setattr(distance, "_AUGMENTED_ELEMENTS", 0)
    monkeypatch.setattr(distance, "_COLUMN_TILE", 64)
    space = FeatureDistances(qf, gf)
    fast, bound = space.fast(slice(None))
    assert "torch.float32aug" not in space._cache
    assert (np.abs(fast.numpy().astype(np.float64) - space.exact(slice(None)).numpy()) <= bound[:, None]).all()
    _assert_same(evaluate_features(qf, gf, *labels, memory_mb=1e-9), dense)


def test_verification_pairs_that_fit_take_the_dense_path(monkeypatch) -> None:
    from reid.evaluation import pairstream
    from reid.evaluation.verification import verification_from_features, verification_metrics

    qf, gf, *labels = _case(5)
    dense = verification_metrics(pairwise_distance(qf, gf), *labels)
    monkeypatch.setattr(pairstream.StreamedPairs, "of_features", None)  # would fail if called
    fitted = verification_from_features(qf, gf, *labels, memory_mb=10.0)
    for name in _FIELDS:
        assert getattr(fitted, name) == getattr(dense, name), name
