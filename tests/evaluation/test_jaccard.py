"""k_reciprocal_jaccard: every pair of one set, against a dense transcription and against rerank."""

from __future__ import annotations

import numpy as np
import pytest

from reid.evaluation import pairwise_distance, rerank
from reid.evaluation.rerank import k_reciprocal_jaccard
from tests.evaluation.test_rerank import dense_encoding  # the classic's steps in plain loops, one copy


def _dense_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """docs/ARCHITECTURE.md steps 1-6 with every row a query and a gallery item, dense, plain loops."""
    n = x.shape[0]
    squared = np.square(pairwise_distance(x, x)).astype(np.float32)
    dist = squared / squared.max(axis=1, keepdims=True)
    v = dense_encoding(dist, k1, k2)
    shared = np.stack([np.minimum(v[i][None, :], v).sum(axis=1) for i in range(n)])
    return 1 - shared / (2 - shared)


def _stored(sparse) -> np.ndarray:
    """Where the matrix stores an entry (explicit zeros included)."""
    coo = sparse.tocoo()
    out = np.zeros(sparse.shape, dtype=bool)
    out[coo.row, coo.col] = True
    return out


def _clusters(seed: int, n: int, dim: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)) * 2
    return (centres[rng.integers(0, 6, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("k1, k2", [(20, 6), (5, 1), (7, 3)])
def test_equals_the_dense_transcription(k1: int, k2: int) -> None:
    x = _clusters(0, 90)
    sparse = k_reciprocal_jaccard(x, k1, k2, block_size=64)
    dense = sparse.toarray()
    dense[~_stored(sparse)] = 1.0  # pairs not stored have J = 1
    want = _dense_jaccard(x, k1, k2)
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(dense, want, rtol=0, atol=2e-6)
    assert _stored(sparse)[np.diag_indices(90)].all() and np.all(sparse.diagonal() == 0) and sparse.has_sorted_indices
    np.testing.assert_array_equal(sparse.toarray(), sparse.toarray().T)


def test_blocks_of_rerank_with_lambda_zero() -> None:
    """rerank(q, g, lambda=0) is the q x g block of the joint set's Jaccard distance, bit for bit."""
    x = _clusters(3, 120)
    sparse = k_reciprocal_jaccard(x, 20, 6)
    full = sparse.toarray()
    full[~_stored(sparse)] = 1.0
    np.testing.assert_array_equal(rerank(x[:30], x[30:], 20, 6, 0.0), full[:30, 30:])


def test_errors() -> None:
    with pytest.raises(ValueError, match="expected at least 2 rows"):
        k_reciprocal_jaccard(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="k1=0"):
        k_reciprocal_jaccard(_clusters(0, 10), k1=0)
