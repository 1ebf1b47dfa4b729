"""Leave-one-out rankings from half the products (reid.evaluation.symmetric) equal the dense
ordering's to the bit: ties, any rounding within the bound, cuts that fall short, the dense
fallback, strips and threads; and evaluate_retrieval takes them where they pay."""

from __future__ import annotations

import numpy as np
import pytest

from reid.evaluation import evaluate_retrieval, ordering, symmetric  # noqa: F401
from reid.evaluation import retrieval as retrieval_module
from reid.evaluation.distance import FeatureDistances
from reid.evaluation.ordering import FeatureBlocks, match_ranks
from reid.evaluation.protocol import Labels, protocol_camids
from reid.evaluation.symmetric import symmetric_applies, symmetric_match_ranks

from tests.evaluation.test_distance import within_bound
from tests.evaluation.test_retrieval import _assert_same, _brute_force, _clustered_case, _integer_case, _near_tie_case


@pytest.fixture
def small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips of 16 rows and cut samples of at least 8 columns: several strips on a few hundred
    items; canonical pairs for every near tie (a strip's budget scales with its rows: 16 x 300
    entries would afford 18 pairs, so tied sets would take the dense blocks)."""
    monkeypatch.setattr(symmetric, "_STRIP_ROWS", 16)
    monkeypatch.setattr(ordering, "_MIN_CUT_SAMPLE", 8)
    monkeypatch.setattr(ordering, "_PAIR_COST_ENTRIES", 1e-6)


def _inputs(feats: np.ndarray, labels: np.ndarray, max_k: int, metric: str = "euclidean"):
    """(space, Labels, depth) as evaluate_retrieval builds them for leave-one-out."""
    space = FeatureDistances(feats, feats, metric)
    n = len(labels)
    ids = Labels(labels, labels, *protocol_camids("leave_one_out", np.zeros(n), np.zeros(n)))
    same = np.bincount(labels)[labels] - 1
    depth = np.where(same > 0, np.minimum(np.maximum(max_k, same), n - 1), 1)
    return space, ids, depth


def _assert_equal_to_dense(feats, labels, max_k, metric="euclidean", *, dense_fallback: bool = False,
                           **kwargs) -> None:
    """symmetric_match_ranks == match_ranks; no strip ranked from its dense block unless ``dense_fallback``."""
    space, ids, depth = _inputs(feats, labels, max_k, metric)
    want_ranks, want_matches = match_ranks(FeatureBlocks(space), ids, depth=depth)
    block_ranks, dense_blocks = symmetric.block_ranks, []

    def spy(*args, **kw):
        dense_blocks.append(args[1])
        return block_ranks(*args, **kw)

    symmetric.block_ranks = spy
    try:
        ranks, matches = symmetric_match_ranks(space, ids, depth, **kwargs)
    finally:
        symmetric.block_ranks = block_ranks
    assert bool(dense_blocks) == dense_fallback
    width = max(ranks.shape[1], want_ranks.shape[1])
    pad = lambda r: np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=ordering.BEYOND)  # noqa: E731
    np.testing.assert_array_equal(pad(ranks), pad(want_ranks))
    np.testing.assert_array_equal(matches, want_matches)


def _relabelled(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", ["clustered", "integer_ties", "near_ties", "float64"])
def test_equal_to_the_dense_ordering(case: str, metric: str, small_strips: None) -> None:
    feats, labels = {"clustered": lambda: _clustered_case(6, n=300),
                     "integer_ties": lambda: _integer_case(7, n=290, dim=3, num_labels=40),
                     "near_ties": lambda: _near_tie_case(8, n=320),
                     "float64": lambda: _near_tie_case(15, n=320)}[case]()
    if case == "float64":  # a float64 product rounded to float32, with its own bound
        feats = feats.astype(np.float64)
    labels = _relabelled(labels)
    for threads in (1, 2):
        _assert_equal_to_dense(feats, labels, 4, metric, num_threads=threads)


def test_evaluate_retrieval_through_it_equals_brute_force(small_strips: None, monkeypatch: pytest.MonkeyPatch) -> None:
    feats, labels = _near_tie_case(3, n=300)
    calls = []
    monkeypatch.setattr(retrieval_module, "symmetric_applies", lambda *args: calls.append(args) or True)
    for metric in ("euclidean", "cosine"):
        got = evaluate_retrieval(feats, labels, ks=(1, 2, 4), metric=metric)
        _assert_same(got, _brute_force(feats, labels, ks=(1, 2, 4), metric=metric), exact=False)
    assert len(calls) == 2


@pytest.mark.parametrize("strip", [7, 16, 64, 299])
def test_any_strip_size(strip: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(symmetric, "_STRIP_ROWS", strip)
    monkeypatch.setattr(ordering, "_MIN_CUT_SAMPLE", 8)
    monkeypatch.setattr(ordering, "_PAIR_COST_ENTRIES", 1e-6)
    feats, labels = _clustered_case(9, n=300)
    _assert_equal_to_dense(feats, _relabelled(labels), 3)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_any_rounding_within_the_pairs_bound_gives_the_same_ranks(metric: str, small_strips: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A tile serves its rows and its columns, so another BLAS's product of a pair may lie anywhere
    within the pair's own error bound, which both rows' bounds cover (the module docstring): push
    every fast value to either end of min(bound of its row, bound of its column), or anywhere in it."""
    feats, labels = _clustered_case(10, n=260)
    feats = np.concatenate([feats, feats[:40] * np.float32(1.5), feats[:20]])  # exact and scaled duplicates
    labels = _relabelled(np.concatenate([labels, labels[:40], labels[:20]]))
    space, ids, depth = _inputs(feats, labels, 4, metric)
    want, _ = match_ranks(FeatureBlocks(space), ids, depth=depth)
    for side in (-1.0, 1.0, 0.0):
        rng = np.random.default_rng(int(side) + 3)

        def pushed(self, rows, cols=slice(None), side=side, rng=rng):
            bound = self.fast_bound(rows)
            pair = np.minimum(bound[:, None], self.fast_bound(np.arange(self.num_gallery)[cols])[None, :])
            canonical = self.exact(rows, cols)
            shift = side if side else rng.uniform(-1, 1, canonical.shape)
            return within_bound(canonical, pair, shift), bound

        monkeypatch.setattr(FeatureDistances, "fast", pushed)
        ranks, _ = symmetric_match_ranks(space, ids, depth)
        width = max(ranks.shape[1], want.shape[1])
        np.testing.assert_array_equal(np.pad(ranks, ((0, 0), (0, width - ranks.shape[1])), constant_values=ordering.BEYOND),
                                      np.pad(want, ((0, 0), (0, width - want.shape[1])), constant_values=ordering.BEYOND))


@pytest.mark.parametrize("cut", ["too_low", "too_high"])
def test_a_cut_that_falls_short_makes_its_rows_whole(cut: str, small_strips: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # too low: every pruned row holds too few items below it and is made whole from its dense
    # row; too high: every row keeps all its items
    feats, labels = _clustered_case(11, n=300)
    made_whole = []
    exact_kth = ordering.SparseRows.exact_kth
    monkeypatch.setattr(ordering.SparseRows, "exact_kth",
                        lambda self, rows, kth: made_whole.append(rows.size) or exact_kth(self, rows, kth))
    chosen = {"too_low": lambda sample, kth, width: sample.min(axis=1),
              "too_high": lambda sample, kth, width: sample.max(axis=1)}[cut]
    monkeypatch.setattr(symmetric, "cut_from_sample", chosen)
    _assert_equal_to_dense(feats, _relabelled(labels), 4)
    assert (sum(made_whole) > 100) if cut == "too_low" else not made_whole


def test_too_many_near_ties_take_the_dense_blocks(small_strips: None, monkeypatch: pytest.MonkeyPatch) -> None:
    feats, labels = _near_tie_case(12, n=320)
    dense_blocks = []
    block_ranks = symmetric.block_ranks
    monkeypatch.setattr(symmetric, "block_ranks", lambda *a, **k: dense_blocks.append(a[1]) or block_ranks(*a, **k))
    monkeypatch.setattr(ordering, "_PAIR_COST_ENTRIES", 1e9)  # no canonical pair is affordable
    # a memory budget of 5 rows a dense block (320 x 48 bytes a row; the budget is a quarter of this)
    monkeypatch.setattr(ordering, "available_memory_mb", lambda: 4 * 5.5 * 320 * 48 / 2 ** 20)
    _assert_equal_to_dense(feats, _relabelled(labels), 4, dense_fallback=True)
    assert sum(block.stop - block.start for block in dense_blocks) == 320  # every strip, in blocks of 5
    assert max(block.stop - block.start for block in dense_blocks) == 5


def test_refuses_two_sets_and_too_few_items(small_strips: None) -> None:
    feats, labels = _clustered_case(13, n=100)
    _, ids, depth = _inputs(feats, _relabelled(labels), 4)
    with pytest.raises(ValueError, match="one feature set ranked against itself"):
        symmetric_match_ranks(FeatureDistances(feats, feats.copy()), ids, depth)
    with pytest.raises(ValueError, match="too few for a sampled cut"):
        symmetric_match_ranks(FeatureDistances(feats, feats), ids, np.full(100, 60))


def test_where_it_applies() -> None:
    def space(num: int, dim: int) -> FeatureDistances:
        feats = np.zeros((num, dim), dtype=np.float32)
        return FeatureDistances(feats, feats)

    sop = space(60502, 512)
    assert symmetric_applies(sop, 1001, memory_mb=4096)
    assert not symmetric_applies(sop, 1001, memory_mb=256)  # its entries would not fit
    assert not symmetric_applies(space(60502, 128), 1001, memory_mb=4096)  # products too cheap to halve
    assert not symmetric_applies(space(24000, 512), 1001, memory_mb=4096)
    assert not symmetric_applies(space(5000, 512), 5, memory_mb=4096)  # fewer than four strips
    feats = np.zeros((60502, 512), dtype=np.float32)
    assert not symmetric_applies(FeatureDistances(feats, feats.copy()), 1001, memory_mb=4096)


def test_evaluate_retrieval_takes_it_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    # 9,000 items, 8-d, Recall@{1,2,4}: half the products outweigh the entries at the default settings
    rng = np.random.default_rng(14)
    labels = np.repeat(np.arange(2250), 4)
    feats = (rng.standard_normal((2250, 8))[labels] + 0.25 * rng.standard_normal((9000, 8))).astype(np.float32)
    used = []
    monkeypatch.setattr(retrieval_module, "symmetric_match_ranks",
                        lambda *a, **k: used.append(1) or symmetric_match_ranks(*a, **k))
    got = evaluate_retrieval(feats, labels, ks=(1, 2, 4))
    assert used
    monkeypatch.setattr(retrieval_module, "symmetric_applies", lambda *args: False)
    want = evaluate_retrieval(feats, labels, ks=(1, 2, 4))
    _assert_same(got, want.__dict__, exact=True)
    assert 0.2 < got.map_at_r < 0.9
