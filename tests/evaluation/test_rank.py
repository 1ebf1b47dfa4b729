"""evaluate_rank against a slow per-query loop and hand-computed cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reid.evaluation import evaluate_rank
from reid.evaluation import ordering as ordering_module
from reid.evaluation import rank as rank_module


def _loop_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, junk_pid=-1):
    """One query at a time, exactly as the protocol reads (stable order by gallery index; junk,
    pid -1, left out of every list)."""
    all_ap, all_trap, all_inp, cmcs = [], [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) & (g_pids[order] != junk_pid)
        hits = (g_pids[order] == q_pids[i])[keep].astype(int)
        if hits.sum() == 0:
            all_ap.append(np.nan), all_trap.append(np.nan), all_inp.append(np.nan)
            continue
        ranks = np.flatnonzero(hits) + 1
        all_ap.append(np.mean([(k + 1) / r for k, r in enumerate(ranks)]))
        all_inp.append(len(ranks) / ranks[-1])
        # Market-1501 MATLAB compute_AP, position by position
        ap, old_recall, old_precision, found = 0.0, 0.0, 1.0, 0
        for j, h in enumerate(hits):
            found += h
            recall, precision = found / len(ranks), found / (j + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if found == len(ranks):
                break
        all_trap.append(ap)
        cmc = np.minimum(np.cumsum(hits), 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)))])[:max_rank]
        cmcs.append(cmc)
    return np.array(all_ap), np.array(all_trap), np.array(all_inp), np.mean(cmcs, axis=0)


def _random_case(seed: int, num_q: int = 40, num_g: int = 300):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 25, num_q)
    # gallery: the query ids, distractors (pid 0) and junk-like pid -1 items
    g_pids = rng.choice(np.concatenate([np.arange(1, 30), [0, 0, 0, -1]]), num_g)
    q_camids = rng.integers(0, 3, num_q)  # few cameras: many same-camera removals
    g_camids = rng.integers(0, 3, num_g)
    q_pids[0] = 1000  # not in the gallery
    q_pids[1], g_pids[:2], g_camids[:2] = 500, 500, q_camids[1]  # only in the query's own camera
    distmat = rng.random((num_q, num_g)).astype(np.float32)
    distmat -= 0.4 * (q_pids[:, None] == g_pids[None, :])  # matches tend to rank higher
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("path", ["candidates", "sort-all"])
def test_matches_loop_reference(seed: int, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # force each of the two counting strategies, and small blocks over several threads
    monkeypatch.setattr(ordering_module, "_SORT_ALL_FRACTION", 2.0 if path == "candidates" else -1.0)
    monkeypatch.setattr(ordering_module, "_BLOCK_ELEMENTS", 7 * 300)
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(seed)
    ap, trap, inp, cmc = _loop_reference(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    valid = ~np.isnan(ap)
    assert 0 < valid.sum() < len(ap)  # the case has skipped queries too
    got = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, num_threads=2)
    assert got.num_valid_queries == valid.sum() and got.num_queries == len(ap)
    np.testing.assert_allclose(got.cmc, cmc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.all_AP, ap, rtol=1e-12)  # NaN where skipped, on both sides
    np.testing.assert_allclose(got.all_INP, inp, rtol=1e-12)
    assert got.mAP == pytest.approx(ap[valid].mean(), abs=1e-12)
    assert got.mINP == pytest.approx(inp[valid].mean(), abs=1e-12)
    trapezoid = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, ap="trapezoid")
    np.testing.assert_allclose(trapezoid.all_AP, trap, rtol=1e-12)
    assert trapezoid.mAP < got.mAP


@pytest.mark.parametrize("path", ["candidates", "sort-all"])
def test_ties_broken_by_gallery_index_in_random_integer_distances(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ordering_module, "_SORT_ALL_FRACTION", 2.0 if path == "candidates" else -1.0)
    rng = np.random.default_rng(7)
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(7)
    distmat = rng.integers(0, 4, distmat.shape).astype(np.float32)  # massive exact ties
    ap, _, inp, cmc = _loop_reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    got = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    np.testing.assert_allclose(got.all_AP, ap, rtol=1e-12)
    np.testing.assert_allclose(got.all_INP, inp, rtol=1e-12)
    np.testing.assert_allclose(got.cmc, cmc, atol=1e-12)


# One query (pid 1, camera 0) against six gallery items:
#   index:     0      1      2      3      4      5
#   distance:  0.5    0.1    0.3    0.2    0.7    0.6
#   pid/cam:   1/0    2/1    1/1    0/2    1/2    3/0
# Ranked: 1 (other id), 3 (distractor), 2 (MATCH), 0 (same pid+camera: removed), 5, 4 (MATCH)
# -> matches at ranks 3 and 5 of the 5 kept items.
HAND = {
    "distmat": np.array([[0.5, 0.1, 0.3, 0.2, 0.7, 0.6]], dtype=np.float32),
    "q_pids": np.array([1]), "g_pids": np.array([1, 2, 1, 0, 1, 3]),
    "q_camids": np.array([0]), "g_camids": np.array([0, 1, 1, 2, 2, 0]),
}


def test_hand_computed_single_query() -> None:
    got = evaluate_rank(**HAND, max_rank=5)
    assert got.mAP == pytest.approx((1 / 3 + 2 / 5) / 2)  # 11/30
    assert got.mINP == pytest.approx(2 / 5)
    np.testing.assert_array_equal(got.cmc, [0, 0, 1, 1, 1])
    assert got.num_valid_queries == 1


def test_hand_computed_trapezoid() -> None:
    # hit 1 at rank 3: (precision at rank 2 = 0/2, at rank 3 = 1/3) -> 1/6
    # hit 2 at rank 5: (1/4, 2/5) -> 0.325;  AP = (1/6 + 0.325) / 2 = 59/240
    got = evaluate_rank(**HAND, max_rank=5, ap="trapezoid")
    assert got.mAP == pytest.approx(59 / 240)
    # a first hit at rank 1 starts from precision 1.0: hits at ranks 1 and 3 -> (1 + 7/12) / 2
    got = evaluate_rank(np.array([[0.1, 0.2, 0.3]]), [1], [1, 2, 1], [0], [1, 1, 1], max_rank=3, ap="trapezoid")
    assert got.mAP == pytest.approx(19 / 24)


def test_same_camera_match_is_removed_not_counted() -> None:
    # the only same-pid item at distance 0.05 is in the query's camera: junk, not a hit
    got = evaluate_rank(np.array([[0.05, 0.1, 0.2]]), [1], [1, 2, 1], [0], [0, 1, 1], max_rank=2)
    assert got.mAP == pytest.approx(0.5)  # the match is 2nd of the 2 kept items
    np.testing.assert_array_equal(got.cmc, [0, 1])


def test_query_without_valid_match_is_skipped() -> None:
    distmat = np.vstack([HAND["distmat"], HAND["distmat"]])
    # second query: pid 3, camera 0 -- its only gallery image (index 5) is in camera 0
    got = evaluate_rank(distmat, [1, 3], HAND["g_pids"], [0, 0], HAND["g_camids"], max_rank=5)
    assert got.num_valid_queries == 1 and got.num_queries == 2 and got.num_skipped_queries == 1
    assert np.isnan(got.all_AP[1]) and np.isnan(got.all_INP[1])
    assert got.mAP == pytest.approx(11 / 30)


def test_no_valid_query_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [0, 1], max_rank=2)


def test_ties_broken_by_gallery_index_hand_computed() -> None:
    # all distances equal: the order is the gallery order -> matches at ranks 2 and 4
    got = evaluate_rank(np.zeros((1, 4)), [1], [2, 1, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    assert got.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert got.mINP == pytest.approx(2 / 4)
    np.testing.assert_array_equal(got.cmc, [0, 1, 1, 1])
    # a removed same-camera item tied with a match does not shift it
    got = evaluate_rank(np.zeros((1, 3)), [1], [1, 2, 1], [0], [0, 1, 1], max_rank=2)
    assert got.mAP == pytest.approx(1 / 2)


def test_small_gallery_warns_and_pads_cmc() -> None:
    with pytest.warns(UserWarning, match="fewer than max_rank=10"):
        got = evaluate_rank(**HAND, max_rank=10)
    assert got.cmc.shape == (10,)
    np.testing.assert_array_equal(got.cmc, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])


def test_torch_and_numpy_inputs_agree() -> None:
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(11)
    a = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    b = evaluate_rank(torch.from_numpy(distmat).double(), torch.from_numpy(q_pids), torch.from_numpy(g_pids),
                      torch.from_numpy(q_camids), torch.from_numpy(g_camids))
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP, a.num_valid_queries) == (b.mAP, b.mINP, b.num_valid_queries)


def test_no_warning_when_gallery_is_large_enough() -> None:
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"q_pids": np.array([1, 2])}, ValueError, "q_pids: expected a 1-D array of length 1"),
        ({"g_camids": np.zeros(5, dtype=int)}, ValueError, "g_camids: expected a 1-D array of length 6"),
        ({"g_pids": np.zeros(6)}, TypeError, "g_pids: expected integer labels"),
        ({"distmat": np.full((1, 6), np.nan, dtype=np.float32)}, ValueError, "distmat contains NaN"),
        ({"distmat": np.zeros(6)}, ValueError, "distmat: expected a 2-D"),
        ({"ap": "interpolated"}, ValueError, "ap='interpolated'"),
        ({"max_rank": 0}, ValueError, "max_rank=0"),
    ],
)
def test_invalid_inputs(change: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        evaluate_rank(**{**HAND, "max_rank": 5, **change})


def test_junk_pid_leaves_those_gallery_items_out() -> None:
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(4)
    assert (g_pids == -1).any()
    q_pids[2] = -1  # a query of unknown identity: no true match once junk is left out
    keep = g_pids != -1
    got = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, junk_pid=-1)
    without = evaluate_rank(distmat[:, keep], q_pids, g_pids[keep], q_camids, g_camids[keep], max_rank=20)
    np.testing.assert_array_equal(got.all_AP, without.all_AP)
    np.testing.assert_array_equal(got.all_INP, without.all_INP)
    np.testing.assert_array_equal(got.cmc, without.cmc)
    assert np.isnan(got.all_AP[2]) and got.num_valid_queries == without.num_valid_queries
    default = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)  # the protocol's junk policy
    np.testing.assert_array_equal(default.all_AP, got.all_AP)
    counted = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, junk_pid=None)
    assert counted.mAP != got.mAP  # junk counted as ordinary (wrong) matches
    per_query = rank_module.query_average_precision(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid=-1)
    np.testing.assert_array_equal(per_query, got.all_AP)


def test_query_average_precision_is_all_nan_without_a_true_match() -> None:
    # unlabelled features (pid -1 everywhere): no error, nothing to score
    ap = rank_module.query_average_precision(np.zeros((2, 3)), [-1, -1], [-1, -1, -1], [0, 1], [0, 1, 2], junk_pid=-1)
    assert ap.shape == (2,) and np.isnan(ap).all()
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(np.zeros((2, 3)), [-1, -1], [-1, -1, -1], [0, 1], [0, 1, 2], max_rank=2, junk_pid=-1)


def test_average_precision_of_one_list() -> None:
    assert rank_module.average_precision([False, True, True, False]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(rank_module.average_precision([False, False]))


def test_first_hit_ranks_equal_a_brute_force_loop() -> None:
    rng = np.random.default_rng(3)
    num_q, num_g = 40, 70
    dist = rng.integers(0, 6, size=(num_q, num_g)).astype(np.float32)  # many exact ties
    dist[rng.random(dist.shape) < 0.05] = np.inf
    q_pids, g_pids = rng.integers(-1, 8, num_q), rng.integers(-1, 8, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    expected = []
    for i in range(num_q):
        order = sorted(range(num_g), key=lambda j: (dist[i, j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]) and g_pids[j] != -1]
        hits = [rank for rank, j in enumerate(kept, start=1) if g_pids[j] == q_pids[i]]
        expected.append(hits[0] if hits else 0)
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert result.first_hit_rank.tolist() == expected
    as_torch = evaluate_rank(torch.from_numpy(dist), *map(torch.from_numpy, (q_pids, g_pids, q_cams, g_cams)),
                             max_rank=20)
    assert as_torch.first_hit_rank.tolist() == expected
    # the CMC is the distribution of these ranks
    got = result.first_hit_rank
    valid = ~np.isnan(result.all_AP)
    assert np.array_equal(valid, got > 0)
    assert np.allclose(result.cmc, [(got[valid] <= k).mean() for k in range(1, 21)])
