"""pairwise_distance: chunked results against a float64 full-matrix reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import pairwise_distance


def _reference(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    x, y = x.astype(np.float64), y.astype(np.float64)
    if metric == "euclidean":
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(axis=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return 1.0 - xn @ yn.T


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 1000])
def test_chunked_matches_full_matrix(metric: str, chunk_size: int | None) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 24)).astype(np.float32)
    y = rng.standard_normal((90, 24)).astype(np.float32)
    got = pairwise_distance(x, y, metric=metric, chunk_size=chunk_size)
    assert isinstance(got, np.ndarray) and got.shape == (150, 90) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(x, y, metric), rtol=1e-5, atol=1e-4)
    # chunking never changes a value beyond float32 rounding
    np.testing.assert_allclose(got, pairwise_distance(x, y, metric=metric), rtol=1e-6, atol=1e-5)


def test_torch_in_torch_out_and_float64_kept() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 8))
    y = rng.standard_normal((30, 8))
    got = pairwise_distance(torch.from_numpy(x), torch.from_numpy(y), chunk_size=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _reference(x, y, "euclidean"), rtol=1e-12, atol=1e-12)
    as_numpy = pairwise_distance(x.astype(np.float32), y.astype(np.float32))
    as_torch = pairwise_distance(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32)))
    np.testing.assert_array_equal(as_numpy, as_torch.numpy())


def test_integer_features_are_computed_in_float32() -> None:
    x = np.array([[0, 0], [3, 4]], dtype=np.int64)
    got = pairwise_distance(x, x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[0, 25], [25, 0]])


def test_no_negative_distances_for_identical_rows() -> None:
    # |x|^2 + |x|^2 - 2 x.x rounds to tiny negatives for large norms; they are clamped to 0
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 256)) * 30 + 100).astype(np.float32)
    d = pairwise_distance(x, x)
    assert d.min() >= 0
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
    ],
)
def test_errors_name_the_problem(x: np.ndarray, y: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pairwise_distance(x, y, **kwargs)


def test_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match="x: expected a numpy array or torch tensor"):
        pairwise_distance([[1.0, 2.0]], np.zeros((1, 2)))
