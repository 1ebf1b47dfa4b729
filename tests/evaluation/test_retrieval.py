"""evaluate_retrieval, NMI, clustering F1 and k-means against brute-force loops and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from reid.evaluation import (ClusterResult, RetrievalResult, cluster_metrics, evaluate_retrieval,
                             normalized_mutual_info, pairwise_distance)
from reid.evaluation import kmeans as kmeans_module
from reid.evaluation import retrieval as retrieval_module
from reid.evaluation.retrieval import pairwise_f1
from tests.evaluation.test_distance import within_bound


def _brute_force(qf, ql, gf=None, gl=None, ks=(1, 2, 4, 8), metric="euclidean"):
    """One query at a time: full sort of the gallery by (distance, index), own row removed."""
    leave_one_out = gf is None
    if leave_one_out:
        gf, gl = qf, ql
    dist = np.asarray(pairwise_distance(np.asarray(qf), np.asarray(gf), metric=metric))
    recall = {k: [] for k in ks}
    p1, all_rp, all_map = [], [], []
    for i in range(len(qf)):
        order = sorted(range(len(gf)), key=lambda j: (dist[i, j], j))
        if leave_one_out:
            order = [j for j in order if j != i]
        hits = [bool(gl[j] == ql[i]) for j in order]
        r = sum(hits)
        if r == 0:
            all_rp.append(np.nan), all_map.append(np.nan)
            continue
        for k in ks:
            recall[k].append(any(hits[:k]))  # slicing clips k to the gallery size
        p1.append(hits[0])
        all_rp.append(sum(hits[:r]) / r)
        found, total = 0, 0.0
        for position, hit in enumerate(hits[:r], start=1):
            found += hit
            total += found / position if hit else 0.0
        all_map.append(total / r)
    all_rp, all_map = np.array(all_rp), np.array(all_map)
    valid = ~np.isnan(all_rp)
    return {"recall": {k: float(np.mean(v)) for k, v in recall.items()}, "precision_at_1": float(np.mean(p1)),
            "r_precision": float(all_rp[valid].mean()), "map_at_r": float(all_map[valid].mean()),
            "num_valid_queries": int(valid.sum()), "num_skipped_queries": int((~valid).sum()),
            "all_r_precision": all_rp, "all_map_at_r": all_map}


def _assert_same(got: RetrievalResult, ref: dict, exact: bool = False) -> None:
    tol = 0.0 if exact else 1e-12
    assert got.num_valid_queries == ref["num_valid_queries"]
    assert got.num_skipped_queries == ref["num_skipped_queries"]
    assert list(got.recall) == list(ref["recall"])
    for k in ref["recall"]:
        assert got.recall[k] == pytest.approx(ref["recall"][k], abs=tol), k
    for name in ("precision_at_1", "r_precision", "map_at_r"):
        assert getattr(got, name) == pytest.approx(ref[name], abs=tol), name
    np.testing.assert_allclose(got.all_r_precision, ref["all_r_precision"], rtol=0, atol=tol)
    np.testing.assert_allclose(got.all_map_at_r, ref["all_map_at_r"], rtol=0, atol=tol)


def _integer_case(seed: int, n: int = 120, dim: int = 3, num_labels: int = 30):
    """Small integer coordinates: exact float32 distances with many exact ties; a few singletons."""
    rng = np.random.default_rng(seed)
    feats = rng.integers(0, 3, (n, dim)).astype(np.float32)
    labels = rng.integers(0, num_labels, n)
    labels[:3] = [1000, 1001, 1002]  # singleton classes: skipped in leave-one-out
    return feats, labels


def _clustered_case(seed: int, n: int = 150, dim: int = 8, num_labels: int = 25):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, n)
    centres = rng.standard_normal((num_labels, dim))
    feats = (centres[labels] + 0.8 * rng.standard_normal((n, dim))).astype(np.float32)
    return feats, labels


# --------------------------------------------------------------------------- retrieval vs brute force


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_integer_features_with_ties(seed: int) -> None:
    feats, labels = _integer_case(seed)
    ks = (1, 2, 4, 8, 16, 50)
    got = evaluate_retrieval(feats, labels, ks=ks)
    _assert_same(got, _brute_force(feats, labels, ks=ks))
    assert got.num_skipped_queries >= 3


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_float_features(seed: int, metric: str) -> None:
    feats, labels = _clustered_case(seed)
    got = evaluate_retrieval(feats, labels, ks=(1, 3, 10), metric=metric)
    _assert_same(got, _brute_force(feats, labels, ks=(1, 3, 10), metric=metric))
    assert 0.0 < got.map_at_r < got.recall[10] <= 1.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_query_gallery(metric: str) -> None:
    feats, labels = _clustered_case(3, n=200)
    qf, ql, gf, gl = feats[:60], labels[:60].copy(), feats[60:], labels[60:]
    ql[:4] = -1  # not in the gallery: skipped
    got = evaluate_retrieval(qf, ql, gf, gl, ks=(1, 5, 20), metric=metric)
    _assert_same(got, _brute_force(qf, ql, gf, gl, ks=(1, 5, 20), metric=metric))
    assert got.num_skipped_queries >= 4
    assert np.isnan(got.all_map_at_r[:4]).all()
    # integer features in query/gallery mode: ties across the two sets
    feats, labels = _integer_case(4, n=160)
    got = evaluate_retrieval(feats[:50], labels[:50], feats[50:], labels[50:], ks=(1, 4, 30))
    _assert_same(got, _brute_force(feats[:50], labels[:50], feats[50:], labels[50:], ks=(1, 4, 30)))


def test_duplicates_stay_and_cut_ties_use_the_lower_index() -> None:
    # every image twice (rows i and i + 40): the duplicate is a hit at distance 0 in leave-one-out
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2, (40, 2)).astype(np.float32)  # only 4 distinct points: long tie runs
    feats = np.concatenate([base, base])
    labels = np.concatenate([np.arange(40), np.arange(40)]) % 13
    for ks in [(1,), (1, 2, 3, 7, 11, 25)]:
        got = evaluate_retrieval(feats, labels, ks=ks)
        _assert_same(got, _brute_force(feats, labels, ks=ks))
    # all gallery items at one distance: the order is the gallery index
    gallery = np.ones((9, 4), dtype=np.float32)
    g_labels = np.array([3, 1, 2, 1, 2, 2, 3, 1, 1])
    query, q_labels = np.zeros((3, 4), dtype=np.float32), np.array([1, 2, 3])
    got = evaluate_retrieval(query, q_labels, gallery, g_labels, ks=(1, 2, 3))
    _assert_same(got, _brute_force(query, q_labels, gallery, g_labels, ks=(1, 2, 3)))
    # label 1: ranks 2,4,8,9 (R=4) -> hits in top 4: 2 -> RP 1/2;  label 2: ranks 3,5,6 (R=3) -> RP 1/3
    # label 3: ranks 1,7 (R=2) -> RP 1/2
    np.testing.assert_allclose(got.all_r_precision, [1 / 2, 1 / 3, 1 / 2])
    assert got.recall == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


def test_k_larger_than_gallery_is_clipped() -> None:
    feats, labels = _integer_case(6, n=30)
    got = evaluate_retrieval(feats, labels, ks=(1, 29, 30, 1000))
    assert got.recall[29] == got.recall[30] == got.recall[1000] == 1.0  # 29 = leave-one-out gallery
    _assert_same(got, _brute_force(feats, labels, ks=(1, 29, 30, 1000)))
    got = evaluate_retrieval(feats[:5], labels[:5], feats[5:], labels[5:], ks=(100,))
    assert list(got.recall) == [100]


def test_torch_input_matches_numpy() -> None:
    feats, labels = _clustered_case(7)
    want = evaluate_retrieval(feats, labels, ks=(1, 4))
    got = evaluate_retrieval(torch.from_numpy(feats), torch.from_numpy(labels), ks=(1, 4))
    _assert_same(got, want.__dict__, exact=True)
    q = torch.from_numpy(feats[:50]).requires_grad_()
    got = evaluate_retrieval(q, torch.from_numpy(labels[:50]), torch.from_numpy(feats[50:]), labels[50:], ks=(1, 4))
    want = evaluate_retrieval(feats[:50], labels[:50], feats[50:], labels[50:], ks=(1, 4))
    _assert_same(got, want.__dict__, exact=True)
    got64 = evaluate_retrieval(feats.astype(np.float64), labels, ks=(1, 4))  # float64 stays float64
    _assert_same(got64, _brute_force(feats.astype(np.float64), labels, ks=(1, 4)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_matches_brute_force() -> None:
    feats, labels = _integer_case(8, n=200)
    got = evaluate_retrieval(torch.from_numpy(feats).cuda(), torch.from_numpy(labels).cuda(), ks=(1, 2, 8, 64))
    _assert_same(got, _brute_force(feats, labels, ks=(1, 2, 8, 64)))


def _near_tie_case(seed: int, n: int = 160, dim: int = 24):
    """Integer directions at several scales: many exact ties in real arithmetic (duplicates,
    scaled copies under cosine) that float32 products round apart, block shape by block shape."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 3, (n // 4, dim)).astype(np.float32) + np.float32(0.5)
    feats = np.concatenate([base, base, base * 3, base * np.float32(0.1)])
    labels = rng.integers(0, 12, n)
    return feats, labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_same_result_whatever_the_block_size_threads_and_path(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.evaluation import ordering

    feats, labels = _near_tie_case(9)
    ks = (1, 2, 8, 40)
    want = evaluate_retrieval(feats, labels, ks=ks, metric=metric)
    _assert_same(want, _brute_force(feats, labels, ks=ks, metric=metric))
    threads = torch.get_num_threads()
    try:
        for block_rows, num_threads, pair_cost, sort_all in [(7, 1, 256, 0.4), (1, 2, 256, 2.0), (64, 2, 1e-9, -1.0),
                                                             (13, 1, 1e9, 0.4)]:
            monkeypatch.setattr(ordering, "_BLOCK_ELEMENTS", block_rows * len(feats))
            monkeypatch.setattr(ordering, "_PAIR_COST_ENTRIES", pair_cost)  # 1e9: the canonical block at once
            monkeypatch.setattr(ordering, "_SORT_ALL_FRACTION", sort_all)
            torch.set_num_threads(num_threads)
            got = evaluate_retrieval(feats, labels, ks=ks, metric=metric)
            _assert_same(got, want.__dict__, exact=True)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_any_rounding_within_the_bound_gives_the_same_result(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another BLAS (AVX2 or AVX-512 kernels, another thread split) rounds the products
    differently, within the bound: the result must not move. Put every fast value at either end
    of its bound around the canonical value, or anywhere within it, and move every dense float64
    product within its error bound."""
    from reid.evaluation import distance

    feats, labels = _clustered_case(4, n=200)
    feats = np.concatenate([feats, feats[:40]])  # duplicates: exact ties
    labels = np.concatenate([labels, labels[:40]])
    want = evaluate_retrieval(feats, labels, ks=(1, 4, 16), metric=metric)
    product = distance.FeatureDistances._product
    for side in (-1.0, 1.0, 0.0):
        rng = np.random.default_rng(int(side) + 5)

        def pushed_fast(self, rows, cols=slice(None), side=side, rng=rng):
            bound = self.fast_bound(rows)
            canonical = self.exact(rows, cols)
            return within_bound(canonical, bound[:, None], side if side else rng.uniform(-1, 1, canonical.shape)), bound

        def pushed_product(self, rows, dtype, cols=slice(None), rng=rng):
            out = product(self, rows, dtype, cols)
            if dtype == torch.float64:  # the bound is twice the product's own error bound: half of it stays within
                bound = torch.from_numpy(self._bound(np.asarray(rows), distance._U64)).to(out.device)[:, None]
                out = (out + torch.from_numpy(rng.uniform(-1, 1, out.shape)) * bound * 0.499).clamp_(min=0)
            return out

        monkeypatch.setattr(distance.FeatureDistances, "fast", pushed_fast)
        monkeypatch.setattr(distance.FeatureDistances, "_product", pushed_product)
        got = evaluate_retrieval(feats, labels, ks=(1, 4, 16), metric=metric)
        _assert_same(got, want.__dict__, exact=True)


@pytest.mark.parametrize("cut", ["sampled", "too_low", "too_high", "exact"])
def test_any_depth_cut_gives_the_same_result(cut: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # a gallery wide enough for the sampled cut (5,000 items, R <= 4, Recall@{1,2,4}); a cut that
    # holds too few items must be caught and redone, one that holds too many only prunes less
    from reid.evaluation import ordering

    rng = np.random.default_rng(21)
    labels = np.repeat(np.arange(1250), 4)
    feats = (rng.standard_normal((1250, 6))[labels] + 0.7 * rng.standard_normal((5000, 6))).astype(np.float32)
    want = evaluate_retrieval(feats, labels, ks=(1, 2, 4))
    sampled = ordering._sampled_cut
    choices = {"sampled": sampled, "exact": ordering._exact_kth,
               "too_low": lambda block, kth: block.min(axis=1), "too_high": lambda block, kth: block.max(axis=1)}
    calls = []
    monkeypatch.setattr(ordering, "_sampled_cut", lambda block, kth: calls.append(kth) or choices[cut](block, kth))
    got = evaluate_retrieval(feats, labels, ks=(1, 2, 4))
    assert calls and max(calls) < 5000 // 2  # the cut was used
    _assert_same(got, want.__dict__, exact=True)
    if cut == "exact":  # against full stable sorts of the canonical distances
        dist = pairwise_distance(feats, feats)
        np.fill_diagonal(dist, np.inf)
        order = np.argsort(dist, axis=1, kind="stable")[:, :4]
        hits = labels[order] == labels[:, None]
        assert got.recall[1] == pytest.approx(hits[:, 0].mean(), abs=1e-15)
        assert got.recall[4] == pytest.approx(hits.any(axis=1).mean(), abs=1e-15)
        precision = np.cumsum(hits, axis=1) / np.arange(1, 5)
        np.testing.assert_allclose(got.all_map_at_r, (precision * hits)[:, :3].sum(axis=1) / 3, rtol=0, atol=1e-15)


def test_junk_labels_are_in_no_list() -> None:
    feats, labels = _clustered_case(5, n=220)
    labels = labels.copy()
    labels[::7] = -1  # junk: left out of every list, as evaluate_rank does
    qf, ql, gf, gl = feats[:60], labels[:60], feats[60:], labels[60:]
    keep = gl != -1
    got = evaluate_retrieval(qf, ql, gf, gl, ks=(1, 5))
    _assert_same(got, evaluate_retrieval(qf, ql, gf[keep], gl[keep], ks=(1, 5)).__dict__, exact=True)
    assert np.isnan(got.all_map_at_r[ql == -1]).all()
    loo = evaluate_retrieval(feats, labels, ks=(1, 5))
    kept = labels != -1
    clean = evaluate_retrieval(feats[kept], labels[kept], ks=(1, 5))
    assert loo.num_valid_queries == clean.num_valid_queries and loo.map_at_r == clean.map_at_r
    np.testing.assert_array_equal(loo.all_map_at_r[kept], clean.all_map_at_r)


def test_r_precision_and_map_at_r_by_hand() -> None:
    # 5 gallery items on a line, ranked 1..5 from both queries (at 0): labels A B A A B.
    #   query A (R = 3): hit miss hit hit miss
    #     R-precision = 2 hits in the top 3 / 3 = 2/3
    #     MAP@R = (1/3) * (P@1 + P@3) = (1/3) * (1/1 + 2/3) = 5/9
    #   query B (R = 2): miss hit miss miss hit
    #     R-precision = 1 hit in the top 2 / 2 = 1/2
    #     MAP@R = (1/2) * P@2 = (1/2) * (1/2) = 1/4
    #   means: R-precision (2/3 + 1/2) / 2 = 7/12, MAP@R (5/9 + 1/4) / 2 = 29/72;
    #   precision@1 = Recall@1 = 1/2, Recall@2 = 1.
    gallery = np.arange(1, 6, dtype=np.float32)[:, None]
    g_labels = np.array([0, 1, 0, 0, 1])
    queries, q_labels = np.zeros((2, 1), dtype=np.float32), np.array([0, 1])
    got = evaluate_retrieval(queries, q_labels, gallery, g_labels, ks=(1, 2))
    np.testing.assert_allclose(got.all_r_precision, [2 / 3, 1 / 2], rtol=1e-15)
    np.testing.assert_allclose(got.all_map_at_r, [5 / 9, 1 / 4], rtol=1e-15)
    assert got.r_precision == pytest.approx(7 / 12, abs=1e-15)
    assert got.map_at_r == pytest.approx(29 / 72, abs=1e-15)
    assert got.precision_at_1 == got.recall[1] == 0.5 and got.recall[2] == 1.0
    assert (got.num_valid_queries, got.num_skipped_queries, got.num_queries) == (2, 0, 2)


def test_skipped_queries_and_errors() -> None:
    feats = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="no query has a same-label item"):
        evaluate_retrieval(feats, np.arange(4))  # all singletons in leave-one-out
    got = evaluate_retrieval(feats, np.array([0, 0, 1, 2]), ks=1)
    assert (got.num_valid_queries, got.num_skipped_queries) == (2, 2)
    with pytest.raises(ValueError, match="both"):
        evaluate_retrieval(feats, np.arange(4), gallery_features=feats)
    with pytest.raises(ValueError, match="metric"):
        evaluate_retrieval(feats, np.arange(4), metric="manhattan")
    for bad in [(0,), (1, -2), (1.5,), (True,)]:
        with pytest.raises(ValueError, match="ks"):
            evaluate_retrieval(feats, np.array([0, 0, 1, 1]), ks=bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_retrieval(np.full((4, 2), np.nan, dtype=np.float32), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="length"):
        evaluate_retrieval(feats, np.array([0, 0, 1]))


# --------------------------------------------------------------------------- NMI


def test_nmi_by_hand() -> None:
    # true = [0 0 1 1], pred = [0 0 0 1]; N = 4, class sizes (2, 2), cluster sizes (3, 1),
    # cells n_00 = 2, n_10 = 1, n_11 = 1.
    #   H(true) = ln 2
    #   H(pred) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 2 ln 2 - 3/4 ln 3
    #   MI = 2/4 ln(4*2/(2*3)) + 1/4 ln(4*1/(2*3)) + 1/4 ln(4*1/(2*1)) = 3/2 ln 2 - 3/4 ln 3
    #   NMI = MI / ((H(true) + H(pred)) / 2) = (3/2 ln 2 - 3/4 ln 3) / ((3 ln 2 - 3/4 ln 3) / 2) ~ 0.3437
    ln2, ln3 = math.log(2), math.log(3)
    want = (1.5 * ln2 - 0.75 * ln3) / ((3 * ln2 - 0.75 * ln3) / 2)
    assert normalized_mutual_info([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(0.343712, abs=1e-6)
    # symmetric, invariant to renaming, any sortable labels, torch input
    assert normalized_mutual_info([5, 5, 5, 9], ["a", "a", "b", "b"]) == pytest.approx(want, rel=1e-12)
    assert normalized_mutual_info(torch.tensor([0, 0, 1, 1]), np.array([7, 7, 7, 2])) == pytest.approx(want, rel=1e-12)


def test_nmi_edge_cases() -> None:
    assert normalized_mutual_info([1, 1, 1], [4, 4, 4]) == 1.0  # both one cluster: scikit-learn's 1.0
    assert normalized_mutual_info([], []) == 1.0
    assert normalized_mutual_info([1, 1, 1, 1], [0, 1, 2, 3]) == 0.0  # one side a single cluster
    assert normalized_mutual_info([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(1.0, abs=1e-15)
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0  # independent
    with pytest.raises(ValueError):
        normalized_mutual_info([0, 1, 2], [0, 1])


def test_nmi_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    for n, a, b in [(50, 3, 4), (500, 40, 25), (2000, 300, 300), (30, 1, 5), (30, 30, 30)]:
        true, pred = rng.integers(0, a, n), rng.integers(0, b, n)
        pred[: n // 2] = true[: n // 2]  # correlated
        assert normalized_mutual_info(true, pred) == pytest.approx(metrics.normalized_mutual_info_score(true, pred),
                                                                   abs=1e-12)
    assert normalized_mutual_info([2, 2], [3, 3]) == metrics.normalized_mutual_info_score([2, 2], [3, 3])


# --------------------------------------------------------------------------- clustering F1 and k-means


def _f1_pair_loop(true, pred):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(true)), 2):
        same_class, same_cluster = true[i] == true[j], pred[i] == pred[j]
        tp += same_class and same_cluster
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def test_pairwise_f1_matches_pair_loop() -> None:
    rng = np.random.default_rng(12)
    for n, a, b in [(40, 4, 6), (120, 15, 10), (200, 30, 30)]:
        true, pred = rng.integers(0, a, n), rng.integers(0, b, n)
        pred[: n // 3] = true[: n // 3]
        np.testing.assert_allclose(pairwise_f1(true, pred), _f1_pair_loop(true, pred), rtol=1e-12)
    # by hand: true [0 0 0 1 1], pred [0 0 1 1 1]: same-class pairs 3 + 1 = 4, same-cluster pairs
    # 1 + 3 = 4, both (cells (0,0)=2, (0,1)=1, (1,1)=2): 1 + 0 + 1 = 2 -> P = R = F1 = 1/2
    assert pairwise_f1([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == (0.5, 0.5, 0.5)
    assert pairwise_f1([0, 1, 2], [5, 6, 7]) == (1.0, 1.0, 1.0)  # all singletons on both sides
    assert pairwise_f1([0, 0, 1], [5, 6, 7]) == (0.0, 0.0, 0.0)  # no pair put together


def _blobs(seed: int = 0, per_class: int = 20, num_classes: int = 6, dim: int = 5):
    rng = np.random.default_rng(seed)
    centres = 20.0 * rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    feats = centres[labels] + 0.1 * rng.standard_normal((len(labels), dim))
    perm = rng.permutation(len(labels))
    return feats[perm].astype(np.float32), labels[perm]


def test_numpy_kmeans_recovers_well_separated_blobs() -> None:
    feats, labels = _blobs()
    got = cluster_metrics(feats, labels, backend="numpy")
    assert isinstance(got, ClusterResult) and got.backend == "numpy" and got.num_clusters == 6
    assert got.nmi == pytest.approx(1.0, abs=1e-12) and got.f1 == pytest.approx(1.0, abs=1e-12)
    assert got.assignments.shape == labels.shape and got.assignments.dtype == np.int64
    assert got.nmi == pytest.approx(normalized_mutual_info(labels, got.assignments))
    assert (got.f1, got.precision, got.recall) == pairwise_f1(labels, got.assignments)
    # torch input, explicit k
    got = cluster_metrics(torch.from_numpy(feats), torch.from_numpy(labels), num_clusters=3, backend="numpy")
    assert len(np.unique(got.assignments)) == 3 and got.recall == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_kmeans_is_deterministic_for_a_seed(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    feats, labels = _clustered_case(13, n=300, num_labels=12)
    a = cluster_metrics(feats, labels, seed=3, backend=backend)
    b = cluster_metrics(feats, labels, seed=3, backend=backend)
    assert a.backend == b.backend == backend
    np.testing.assert_array_equal(a.assignments, b.assignments)
    assert (a.nmi, a.f1) == (b.nmi, b.f1)
    assert 0.0 < a.nmi <= 1.0 and 0.0 < a.f1 <= 1.0
    c = cluster_metrics(feats, labels, seed=4, backend=backend)
    assert not np.array_equal(a.assignments, c.assignments)  # the seed matters


def test_cluster_backend_auto_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    feats, labels = _blobs(1)
    assert cluster_metrics(feats, labels).backend == "numpy"  # small: the machine-independent one
    monkeypatch.setattr(retrieval_module, "_NUMPY_KMEANS_LIMIT", 10)
    expected = "faiss" if retrieval_module._faiss_available() else "numpy"
    assert cluster_metrics(feats, labels).backend == expected
    with pytest.raises(ValueError, match="backend"):
        cluster_metrics(feats, labels, backend="sklearn")
    with pytest.raises(ValueError, match="num_clusters"):
        cluster_metrics(feats, labels, num_clusters=len(labels) + 1)
    with pytest.raises(ValueError, match="length"):
        cluster_metrics(feats, labels[:-1])
    with pytest.raises(ValueError, match="restarts=0"):
        cluster_metrics(feats, labels, restarts=0)


def test_restarts_recover_twenty_separated_blobs() -> None:
    # 20 well separated classes (3,000 x 32, noise 0.05): one k-means++ start can merge two
    # classes and split another (NMI about 0.95); the lowest-inertia restart recovers them.
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32))
    labels = rng.integers(0, 20, 3000)
    feats = (centres[labels] + 0.05 * rng.standard_normal((3000, 32))).astype(np.float32)
    got = cluster_metrics(feats, labels, backend="numpy")
    assert got.nmi >= 0.99
    single = [cluster_metrics(feats, labels, backend="numpy", restarts=1, seed=s).nmi for s in range(5)]
    assert got.nmi >= max(single)


def test_kmeans_does_not_depend_on_the_block_size_or_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    feats, labels = _near_tie_case(3, n=200, dim=8)
    want = cluster_metrics(feats, labels, backend="numpy", restarts=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(kmeans_module, "_CLUSTER_BLOCK", 7 * 12)
        got = cluster_metrics(feats, labels, backend="numpy", restarts=2)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(got.assignments, want.assignments)
