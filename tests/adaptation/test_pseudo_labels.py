"""DBSCAN pseudo-labels with the video constraints, on hand-made distances with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from reid.adaptation import VideoConstraints, clustering_quality, constrained_distance, pseudo_labels
from reid.adaptation.adapt import centroids, training_labels


def _sparse(n: int, pairs: dict[tuple[int, int], float]) -> sp.csr_matrix:
    """Symmetric distances: the diagonal 0, the given pairs, every other pair absent (distance 1)."""
    rows = list(range(n)) + [i for i, _ in pairs] + [j for _, j in pairs]
    cols = list(range(n)) + [j for _, j in pairs] + [i for i, _ in pairs]
    data = [0.0] * n + list(pairs.values()) * 2
    return sp.csr_matrix((np.array(data, np.float32), (rows, cols)), shape=(n, n))


def _chain(ids: list[int], d: float) -> dict[tuple[int, int], float]:
    """Every pair within ``ids`` at distance d."""
    return {(a, b): d for k, a in enumerate(ids) for b in ids[k + 1:]}


def test_dbscan_clusters_and_outliers() -> None:
    # two tight groups of 3, one loose point near the first group, one isolated point
    pairs = {**_chain([0, 1, 2], 0.1), **_chain([3, 4, 5], 0.2), (2, 6): 0.5}
    labels = pseudo_labels(_sparse(8, pairs), eps=0.3, min_samples=3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, -1, -1])
    # a larger eps lets the loose point join its group as a border point
    labels = pseudo_labels(_sparse(8, pairs), eps=0.6, min_samples=3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 0, -1])


def test_numbering_follows_the_first_image_and_singletons_become_outliers() -> None:
    pairs = {**_chain([4, 5], 0.1), **_chain([1, 3], 0.1)}
    labels = pseudo_labels(_sparse(6, pairs), eps=0.3, min_samples=1)  # every image a core point
    np.testing.assert_array_equal(labels, [-1, 0, -1, 0, 1, 1])


def test_tracklet_must_link() -> None:
    # images 0-3 are one tracklet; only 0-1 are close by features, 2 and 3 are far from everything
    pairs = {(0, 1): 0.1, **_chain([4, 5, 6], 0.1)}
    constraints = VideoConstraints(np.array([7, 7, 7, 7, -1, -1, -1]), np.full(7, -1))
    np.testing.assert_array_equal(pseudo_labels(_sparse(7, pairs), eps=0.3, min_samples=3),
                                  [-1, -1, -1, -1, 0, 0, 0])
    np.testing.assert_array_equal(pseudo_labels(_sparse(7, pairs), eps=0.3, min_samples=3, constraints=constraints),
                                  [0, 0, 0, 0, 1, 1, 1])


def test_a_tracklet_across_two_groups_joins_them() -> None:
    # tracklet {2, 3, 4}: 2 and 3 sit with group A (0, 1), 4 with group B (5, 6); the tracklet's
    # pairs become 0, so DBSCAN links A and B through it: one person
    pairs = {**_chain([0, 1, 2, 3], 0.1), **_chain([4, 5, 6], 0.1)}
    constraints = VideoConstraints(np.array([-1, -1, 9, 9, 9, -1, -1]), np.full(7, -1))
    labels = pseudo_labels(_sparse(7, pairs), eps=0.3, min_samples=3, constraints=constraints)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0, 0, 0])  # one tracklet joins both groups


def test_same_frame_cannot_link() -> None:
    # 0-4 all close; 0 and 4 were seen in the same frame: they are two people
    pairs = _chain([0, 1, 2, 3, 4], 0.1)
    plain = pseudo_labels(_sparse(5, pairs), eps=0.3, min_samples=2)
    np.testing.assert_array_equal(plain, [0, 0, 0, 0, 0])
    constraints = VideoConstraints(np.full(5, -1), np.array([1, -1, -1, -1, 1]))
    labels = pseudo_labels(_sparse(5, pairs), eps=0.3, min_samples=2, constraints=constraints)
    # DBSCAN still chains 0 and 4 through 1-3; the cluster keeps the first image's unit, the
    # other one of that frame leaves as a cluster of one image: an outlier
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, -1])


def test_cannot_link_keeps_the_larger_tracklet() -> None:
    # tracklet A = {0, 1}, tracklet B = {2, 3, 4}; crop 1 (of A) and crop 4 (of B) share a frame
    pairs = _chain([0, 1, 2, 3, 4], 0.1)
    constraints = VideoConstraints(np.array([0, 0, 1, 1, 1]), np.array([-1, 5, -1, -1, 5]))
    labels = pseudo_labels(_sparse(5, pairs), eps=0.3, min_samples=2, constraints=constraints)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])  # A leaves B's cluster as one of its own


def test_automatic_eps_is_the_quantile_of_the_k_distance() -> None:
    from reid.adaptation.pseudo_labels import automatic_eps

    d = _sparse(5, {(0, 1): 0.1, (1, 2): 0.3, (3, 4): 0.2})  # unstored pairs count as 1
    # min_samples=2: each image's nearest other image: 0.1, 0.1, 0.3, 0.2, 0.2 -> sorted 0.1 0.1 0.2 0.2 0.3
    assert automatic_eps(d, 2, 0.5) == pytest.approx(0.2)
    assert automatic_eps(d, 2, 0.9) == pytest.approx(0.2 + 0.6 * 0.1)  # position 3.6 of 0..4
    assert automatic_eps(d, 2, 1.0) == pytest.approx(0.3)
    # min_samples=3: the second nearest: 1 (one stored neighbour), 0.3, 1, 1, 1 -> 0.3 1 1 1 1
    assert automatic_eps(d, 3, 0.1) == pytest.approx(0.3 + 0.4 * 0.7)
    with pytest.raises(ValueError, match=r"min_samples=1: the automatic eps needs min_samples >= 2"):
        automatic_eps(d, 1)


def test_automatic_eps_makes_the_core_fraction_core_points() -> None:
    """Against a brute-force k-distance on a dense random distance; DBSCAN then finds at least
    that fraction of core points."""
    from sklearn.cluster import DBSCAN

    from reid.adaptation.pseudo_labels import automatic_eps

    rng = np.random.default_rng(3)
    dense = rng.uniform(0.05, 1.0, (40, 40))
    dense = np.triu(dense, 1) + np.triu(dense, 1).T
    dense[dense > 0.6] = 1.0  # unstored
    stored = sp.csr_matrix(np.where(dense < 1, dense, 0))
    stored.setdiag(0.0)  # the diagonal as explicit zeros, as k_reciprocal_jaccard stores it
    for min_samples, fraction in [(2, 0.6), (4, 0.5), (4, 0.8)]:
        k_distance = np.sort(dense + np.diag(np.full(40, np.inf)), axis=1)[:, min_samples - 2]
        eps = automatic_eps(stored, min_samples, fraction)
        assert eps == pytest.approx(np.quantile(k_distance, fraction))
        core = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(stored).core_sample_indices_
        assert core.size >= fraction * 40


def test_constrained_distance_entries() -> None:
    d = _sparse(4, {(0, 1): 0.2, (1, 2): 0.3})
    c = VideoConstraints(np.array([0, -1, -1, 0]), np.array([-1, 4, 4, -1]))
    out = constrained_distance(d, c).toarray()
    want = np.zeros((4, 4), np.float32)
    want[0, 1] = want[1, 0] = 0.2  # kept
    # (1, 2): same frame, removed; (0, 3): same tracklet, stored as 0 (so it is an explicit entry)
    np.testing.assert_array_equal(out, want)
    coo = constrained_distance(d, c).tocoo()
    assert {(int(r), int(col)) for r, col in zip(coo.row, coo.col)} >= {(0, 3), (3, 0)}
    assert (1, 2) not in {(int(r), int(col)) for r, col in zip(coo.row, coo.col)}


def test_constraints_from_keys() -> None:
    keys = [(("a", 1), ("f", 10)), None, (("a", 1), ("f", 11)), (("b", 2), ("f", 10))]
    c = VideoConstraints.from_keys(keys)
    np.testing.assert_array_equal(c.tracklets, [0, -1, 0, 1])
    np.testing.assert_array_equal(c.frames, [0, -1, 1, 0])


def test_majority_label_when_the_tracklet_is_split() -> None:
    from reid.adaptation.pseudo_labels import _tracklets_together

    labels = _tracklets_together(np.array([0, 0, 1, 1, 1, -1, 2]), np.array([5, 5, 5, 5, 5, 6, 6]))
    # tracklet 5: labels 0, 0, 1, 1, 1 -> 1 (most); tracklet 6: -1 and 2 -> 2 (outliers do not vote)
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 1, 2, 2])
    tie = _tracklets_together(np.array([3, 1, -1]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(tie, [1, 1, 1])  # a tie: the smaller label


def test_quality_counts_outliers_as_singletons() -> None:
    # true ids [1, 1, 2, 2]; labels [0, 0, -1, -1]: one correct pair, the id-2 pair missed
    q = clustering_quality(np.array([0, 0, -1, -1]), np.array([1, 1, 2, 2]))
    assert q["precision"] == 1.0 and q["recall"] == 0.5
    assert q["nmi"] == pytest.approx(0.8, abs=1e-12)  # 2 ln 2 / (ln 2 + 1.5 ln 2)


def test_training_labels_and_centroids() -> None:
    labels = np.array([0, -1, 1, 0, -1])
    np.testing.assert_array_equal(training_labels(labels, "drop"), labels)
    np.testing.assert_array_equal(training_labels(labels, "instances"), [0, 2, 1, 0, 3])
    features = np.array([[1, 0], [9, 9], [0, 1], [3, 0], [9, 9]], np.float32)
    np.testing.assert_allclose(centroids(features, labels).numpy(), [[2, 0], [0, 1]])


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="eps=0"):
        pseudo_labels(_sparse(3, {}), eps=0.0)


def test_camera_standardized_values_and_camera_offsets_vanish() -> None:
    from reid.adaptation.pseudo_labels import camera_standardized

    features = np.array([[1.0, 2.0], [3.0, 2.0], [10.0, 0.0], [10.0, 4.0], [5.0, 5.0]])
    camids = np.array([1, 1, 2, 2, 3])
    out = camera_standardized(features, camids)
    # camera 1: x centred 2 -> -1, +1 (std 1); y constant -> centred to 0, not scaled
    # camera 2: x constant -> 0; y 0, 4 -> -1, +1; camera 3 (one image): only normalised
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out, [[-1, 0], [1, 0], [0, -1], [0, 1], [s, s]], atol=1e-6)
    shifted = features + np.where(camids[:, None] == 2, [[7.0, -3.0]], 0.0) * np.array([[1.0], [1.0], [1.0], [1.0], [0.0]])
    np.testing.assert_allclose(camera_standardized(shifted, camids)[:4], out[:4], atol=1e-6)
    with pytest.raises(ValueError, match=r"camids: expected one per feature row \(5\), got shape \(4,\)"):
        camera_standardized(features, camids[:4])
