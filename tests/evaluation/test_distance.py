"""Canonical distances: an independent scalar implementation of the definition, exact rational
values, every chunk size and thread count, and the fast paths' error bounds."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from reid.evaluation import pairwise_distance
from reid.evaluation import distance as distance_module
from reid.evaluation.distance import FeatureDistances, tree_sum


def _scalar_tree(values: list[float]) -> float:
    """The definition's pairwise order, one Python float addition at a time."""
    while len(values) > 1:
        half = len(values) // 2
        head = [values[k] + values[k + half] for k in range(half)]
        values = head + values[2 * half:]
    return values[0] if values else 0.0


def _scalar_canonical(x: np.ndarray, y: np.ndarray, metric: str) -> np.float32:
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if metric == "euclidean":
        return np.float32(_scalar_tree([(a - b) * (a - b) for a, b in zip(xs, ys)]))
    nx = max(_scalar_tree([a * a for a in xs]) ** 0.5, 1e-12)
    ny = max(_scalar_tree([b * b for b in ys]) ** 0.5, 1e-12)
    return np.float32(min(max(1 - _scalar_tree([a * b for a, b in zip(xs, ys)]) / (nx * ny), 0.0), 2.0))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dim", [1, 7, 24, 129])
def test_every_entry_is_the_definition(metric: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((23, dim)).astype(np.float32)
    y = np.concatenate([rng.standard_normal((30, dim)), x[:5], 3 * x[5:8]]).astype(np.float32)
    got = pairwise_distance(x, y, metric=metric)
    want = np.array([[_scalar_canonical(a, b, metric) for b in y] for a in x])
    np.testing.assert_array_equal(got, want)
    space = FeatureDistances(x, y, metric)
    r, c = np.divmod(np.arange(x.shape[0] * y.shape[0]), y.shape[0])
    np.testing.assert_array_equal(space.pairs(r, c).reshape(got.shape), want)


def test_canonical_squared_distance_is_the_exact_value_rounded() -> None:
    # the tree of float64 squares of float32 differences is exact for these small dyadic values,
    # so the canonical value is the float32 rounding of the exact rational distance
    rng = np.random.default_rng(3)
    x = (rng.integers(-512, 512, (6, 40)) / 64).astype(np.float32)
    y = (rng.integers(-512, 512, (9, 40)) / 64).astype(np.float32)
    got = pairwise_distance(x, y)
    for i in range(6):
        for j in range(9):
            exact = sum((Fraction(float(a)) - Fraction(float(b))) ** 2 for a, b in zip(x[i], y[j]))
            assert got[i, j] == np.float32(float(exact))


def test_tree_sum_order_is_fixed() -> None:
    x = torch.tensor([[1e16, 1.0, -1e16, 1.0, 1.0]], dtype=torch.float64)
    # levels: [1e16 + -1e16, 1 + 1] + [1] -> [0 + 2] + [1] -> 2 + 1 = 3 (a left-to-right sum gives 2)
    assert float(tree_sum(x)[0]) == _scalar_tree([1e16, 1.0, -1e16, 1.0, 1.0]) == 3.0
    assert tree_sum(torch.zeros((3, 0), dtype=torch.float64)).tolist() == [0.0, 0.0, 0.0]


def _reference(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    x, y = x.astype(np.float64), y.astype(np.float64)
    if metric == "euclidean":
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return 1.0 - xn @ yn.T


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunks_and_threads_change_no_bit(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 24)).astype(np.float32)
    y = np.concatenate([rng.standard_normal((90, 24)), x[:10]]).astype(np.float32)
    want = pairwise_distance(x, y, metric=metric)
    assert isinstance(want, np.ndarray) and want.shape == (150, 100) and want.dtype == np.float32
    threads = torch.get_num_threads()
    try:
        for chunk_size, num_threads in [(1, 1), (7, 2), (64, 1), (1000, 2)]:
            torch.set_num_threads(num_threads)
            np.testing.assert_array_equal(pairwise_distance(x, y, metric=metric, chunk_size=chunk_size), want)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_tiles_of_rows_and_columns_change_no_bit(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 300 x 7 elements a tile: 256 rows x 8 columns, then the last 44 rows, across a column slice
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    y = np.concatenate([rng.standard_normal((60, 12)), x[:5]]).astype(np.float32)
    want = pairwise_distance(x, y, metric=metric)
    monkeypatch.setattr(distance_module, "_BLOCK_ELEMENTS", 2100)
    space = FeatureDistances(x, y, metric)
    np.testing.assert_array_equal(space.exact(slice(None)).numpy(), want)
    np.testing.assert_array_equal(space.exact(np.array([299, 3, 3]), slice(10, 61)).numpy(), want[[299, 3, 3], 10:61])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_large_sets_are_converted_a_tile_at_a_time(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # sets over _AUGMENTED_ELEMENTS: the float64 products take their rows and tiles as they go,
    # never a float64 copy of a whole set, and give the same canonical values
    rng = np.random.default_rng(2)
    x = rng.standard_normal((70, 12)).astype(np.float32)
    y = rng.standard_normal((90, 12)).astype(np.float32)
    want = pairwise_distance(x, y, metric=metric)
    monkeypatch.setattr(distance_module, "_AUGMENTED_ELEMENTS", 500)
    monkeypatch.setattr(distance_module, "_COLUMN_TILE", 16)
    space = FeatureDistances(x, y, metric)
    np.testing.assert_array_equal(space.exact(slice(None)).numpy(), want)
    q, g, _, _ = space._operands(torch.float64)
    assert q.dtype == g.dtype == torch.float32 and q.data_ptr() == space.query.data_ptr()
    values, bound = space.fast(slice(None))
    assert np.all(np.abs(values.numpy().astype(np.float64) - want) <= bound[:, None])


def test_torch_in_torch_out_and_float64_evaluated_in_float64() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 8))
    y = rng.standard_normal((30, 8))
    got = pairwise_distance(torch.from_numpy(x), torch.from_numpy(y), chunk_size=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    want = np.array([[_scalar_canonical(a, b, "euclidean") for b in y] for a in x])
    np.testing.assert_array_equal(got.numpy(), want)  # from the float64 values, then rounded
    as_numpy = pairwise_distance(x.astype(np.float32), y.astype(np.float32))
    as_torch = pairwise_distance(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32)))
    np.testing.assert_array_equal(as_numpy, as_torch.numpy())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", ["normal", "offset", "unit", "duplicates", "float64"])
def test_fast_values_stay_within_their_bound(metric: str, case: str) -> None:
    rng = np.random.default_rng(7)
    dim = 2048 if case == "unit" else 256
    x = rng.standard_normal((70, dim))
    y = rng.standard_normal((300, dim))
    if case == "offset":  # large norms, small differences: the products cancel
        x, y = x + 100, y * 0.01 + 100
    if case == "unit":
        x, y = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    if case == "duplicates":
        y[:70] = x
    dtype = np.float64 if case == "float64" else np.float32
    space = FeatureDistances(x.astype(dtype), y.astype(dtype), metric)
    fast, bound = space.fast(slice(None))
    r, c = np.divmod(np.arange(70 * 300), 300)
    canonical = space.pairs(r, c).reshape(70, 300).astype(np.float64)
    error = np.abs(fast.numpy().astype(np.float64) - canonical)
    assert (error <= bound[:, None]).all()
    assert error.max() > 0 or case == "float64"  # the test sees real rounding
    np.testing.assert_array_equal(space.exact(slice(None)).numpy(), canonical.astype(np.float32))


def within_bound(canonical: torch.Tensor, bound: np.ndarray, shift) -> torch.Tensor:
    """float32 values at ``canonical + shift * bound`` (``|shift| <= 1``, broadcast), as another
    BLAS could return them: a value that float32 rounding carried past the bound is stepped one
    unit back toward the canonical one. (Moving the fast values themselves by up to the bound
    would leave it: they already differ from the canonical values.)"""
    exact = canonical.to(torch.float64)
    limit = torch.as_tensor(np.broadcast_to(bound, canonical.shape).copy(), dtype=torch.float64)
    moved = (exact + torch.as_tensor(shift, dtype=torch.float64) * limit).clamp_(min=0).to(torch.float32)
    over = (moved.double() - exact).abs() > limit
    moved[over] = torch.nextafter(moved[over], canonical.to(torch.float32)[over])
    assert ((moved.double() - exact).abs() <= limit).all()
    return moved


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_products_error_is_within_both_rows_bounds(metric: str) -> None:
    # A set against itself: the product of (i, j) serves row i and, read by columns, row j
    # (reid.evaluation.symmetric), so it must lie within the bound of each. Norms spread widely.
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((400, 128)) * rng.lognormal(0, 1.5, (400, 1)) + 3).astype(np.float32)
    space = FeatureDistances(x, x, metric)
    fast, bound = space.fast(slice(None))
    r, c = np.divmod(np.arange(400 * 400), 400)
    canonical = space.pairs(r, c).reshape(400, 400).astype(np.float64)
    error = np.abs(fast.numpy().astype(np.float64) - canonical)
    assert (error <= np.minimum(bound[:, None], bound[None, :])).all() and error.max() > 0
    if metric == "euclidean":
        assert bound.max() > 2 * bound.min()  # the rows' bounds really differ


def test_integer_features_are_computed_in_float32() -> None:
    x = np.array([[0, 0], [3, 4]], dtype=np.int64)
    got = pairwise_distance(x, x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0, 25], [25, 0]])


def test_no_negative_distances_and_zero_for_identical_rows() -> None:
    # |x|^2 + |x|^2 - 2 x.x rounds to tiny negatives for large norms; the canonical value is 0
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 256)) * 30 + 100).astype(np.float32)
    d = pairwise_distance(x, x)
    assert d.min() >= 0 and (np.diag(d) == 0).all()
    c = pairwise_distance(x, x, metric="cosine")
    assert c.min() >= 0 and c.max() <= 2


def test_cosine_known_values() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=np.float32)
    got = pairwise_distance(x, x, metric="cosine")
    np.testing.assert_allclose(got, [[0, 1, 2], [1, 0, 1], [2, 1, 0]], atol=1e-6)


def test_empty_query_gives_empty_matrix() -> None:
    assert pairwise_distance(np.zeros((0, 4), np.float32), np.ones((5, 4), np.float32)).shape == (0, 5)


@pytest.mark.parametrize(
    "x, y, kwargs, message",
    [
        (np.zeros((3, 4)), np.zeros((5, 3)), {}, "feature widths differ"),
        (np.zeros((3, 4)), np.zeros((5, 4)), {"metric": "manhattan"}, "metric='manhattan'"),
        (np.zeros(4), np.zeros((5, 4)), {}, "must be 2-D"),
        (np.zeros((3, 4)), np.zeros((5, 4)), {"chunk_size": 0}, "chunk_size=0"),
        (np.full((3, 4), np.nan), np.zeros((5, 4)), {}, "x contains NaN or inf"),
        (np.full((3, 4), 1e30), np.zeros((5, 4)), {}, "too large for float32"),
    ],
)
def test_errors_name_the_problem(x: np.ndarray, y: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pairwise_distance(x, y, **kwargs)


def test_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match="x: expected a numpy array or torch tensor"):
        pairwise_distance([[1.0, 2.0]], np.zeros((1, 2)))


def test_computing_distances_leaves_torch_matmul_settings_alone() -> None:
    # torch.set_float32_matmul_precision rewrites backend settings (mkldnn's "none" -> "ieee"),
    # which changed how the training around an evaluation computed: the default is left alone
    from reid.evaluation.distance import _matmul_settings, full_float32_matmul

    before = [value for _, value in _matmul_settings()], torch.get_float32_matmul_precision()
    pairwise_distance(np.ones((3, 4), np.float32), np.zeros((5, 4), np.float32))
    assert ([value for _, value in _matmul_settings()], torch.get_float32_matmul_precision()) == before
    torch.set_float32_matmul_precision("medium")
    reduced = [value for _, value in _matmul_settings()], "medium"
    try:
        with full_float32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
        assert ([value for _, value in _matmul_settings()], torch.get_float32_matmul_precision()) == reduced
    finally:
        torch.set_float32_matmul_precision("highest")
        for holder, value in zip([h for h, _ in _matmul_settings()], before[0]):
            holder.fp32_precision = value


_KERNEL_PROBE = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {root!r})
from reid.evaluation import cluster_metrics, evaluate_rank, evaluate_retrieval, pairwise_distance, rerank
rng = np.random.default_rng(3)
labels = rng.integers(0, 40, 600)
feats = (rng.standard_normal((40, 96))[labels] + 0.9 * rng.standard_normal((600, 96))).astype(np.float32)
feats = np.concatenate([feats, feats[:30] * np.float32(2)])  # scaled copies: cosine ties
labels = np.concatenate([labels, labels[:30]])
cams = rng.integers(0, 4, len(labels))
parts = [pairwise_distance(feats, feats).tobytes(), pairwise_distance(feats, feats, metric="cosine").tobytes(),
         rerank(feats[:100], feats[100:]).tobytes(),
         repr(evaluate_retrieval(feats, labels, ks=(1, 5, 50), metric="cosine").__dict__).encode(),
         repr(evaluate_rank(pairwise_distance(feats[:100], feats[100:]), labels[:100], labels[100:], cams[:100],
                            cams[100:]).all_AP.tolist()).encode(),
         cluster_metrics(feats, labels, restarts=2).assignments.tobytes()]
print(hashlib.sha256(b"".join(parts)).hexdigest())
"""


@pytest.mark.slow
def test_other_cpu_kernels_and_thread_counts_give_the_same_bits() -> None:
    """The same evaluation in processes that may pick other kernels: MKL and ATen held to AVX2
    (on an Intel AVX-512 machine other product kernels; MKL on AMD CPUs dispatches AVX2 either
    way) and one thread instead of two. Every hash must agree."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = _KERNEL_PROBE.format(root=root)
    settings = [{"OMP_NUM_THREADS": "2"},
                {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}]
    hashes = set()
    for extra in settings:
        env = {**os.environ, **extra}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        hashes.add(done.stdout.strip().splitlines()[-1])
    assert len(hashes) == 1, hashes
