"""Pseudo-identities of unlabelled crops: DBSCAN over the k-reciprocal Jaccard distance, with the
free constraints of video.

The recipe of SpCL (Ge et al., NeurIPS 2020) and Cluster Contrast (Dai et al., ACCV 2022):
cluster the Jaccard distance of the features (:func:`reid.evaluation.rerank.k_reciprocal_jaccard`)
with DBSCAN (``eps``, ``min_samples``, ``metric="precomputed"``); DBSCAN's noise points are the
outliers (label -1), left out of the round's training.

Video constraints (:class:`VideoConstraints`), when the crops come with tracklets:

* must-link: crops of one tracklet are one person. Their distances are set to 0 before DBSCAN
  (a tracklet is one dense blob), and afterwards every crop of a tracklet takes the label most
  of its clustered crops got (ties: the smaller label); a tracklet with no clustered crop stays
  outlier.
* cannot-link: two crops of one frame are two people. Their distances are removed (never
  neighbours), and since DBSCAN can still chain them into one cluster through others, each
  cluster is then checked: its units (tracklets, or single crops without one) are taken
  largest first (ties: the first image), and a unit sharing a frame with a unit already taken
  leaves the cluster as a cluster of its own.

Clusters left with fewer than 2 crops become outliers; the labels are renumbered 0..C-1 in
order of their first crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..evaluation.retrieval import normalized_mutual_info, pairwise_f1

OUTLIER = -1


@dataclass(frozen=True)
class VideoConstraints:
    """Per image: its tracklet (-1: none) and its frame (-1: unknown), as integers; images with
    the same tracklet are one person, images with the same frame are different people."""

    tracklets: np.ndarray
    frames: np.ndarray

    @classmethod
    def from_keys(cls, keys: Sequence[tuple | None]) -> "VideoConstraints":
        """Per image ``(tracklet key, frame key)`` (any hashable values) or None (no constraint);
        the keys are numbered here in order of first appearance."""
        tracklet_ids: dict = {}
        frame_ids: dict = {}
        tracklets = np.full(len(keys), -1, dtype=np.int64)
        frames = np.full(len(keys), -1, dtype=np.int64)
        for index, key in enumerate(keys):
            if key is not None:
                tracklets[index] = tracklet_ids.setdefault(key[0], len(tracklet_ids))
                frames[index] = frame_ids.setdefault(key[1], len(frame_ids))
        return cls(tracklets, frames)


def _same_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j, with keys[i] == keys[j] >= 0."""
    order = np.flatnonzero(keys >= 0)
    order = order[np.argsort(keys[order], kind="stable")]
    _, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    rows, cols = [], []
    for start, count in zip(starts, counts):
        if count > 1:
            members = order[start:start + count]
            r, c = np.meshgrid(members, members, indexing="ij")
            keep = r != c
            rows.append(r[keep])
            cols.append(c[keep])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def constrained_distance(distance: sp.csr_matrix, constraints: VideoConstraints) -> sp.csr_matrix:
    """``distance`` with same-frame pairs removed and same-tracklet pairs set to 0 (stored)."""
    coo = distance.tocoo()
    n = distance.shape[0]
    pair = coo.row.astype(np.int64) * n + coo.col
    must_r, must_c = _same_key_pairs(constraints.tracklets)
    cannot_r, cannot_c = _same_key_pairs(constraints.frames)
    drop = np.isin(pair, np.concatenate([must_r * n + must_c, cannot_r * n + cannot_c]))
    rows = np.concatenate([coo.row[~drop], must_r])
    cols = np.concatenate([coo.col[~drop], must_c])
    data = np.concatenate([coo.data[~drop], np.zeros(must_r.size, dtype=coo.data.dtype)])
    out = sp.csr_matrix((data, (rows, cols)), shape=distance.shape)
    out.sort_indices()
    return out


def pseudo_labels(distance: sp.csr_matrix, *, eps: float = 0.6, min_samples: int = 4,
                  constraints: VideoConstraints | None = None) -> np.ndarray:
    """Cluster labels 0..C-1 (int64), -1 for outliers, from an N x N sparse distance (stored
    entries only: a missing pair is no neighbour; the diagonal stored as 0), e.g. the Jaccard
    distance. See the module docstring for the constraints."""
    from sklearn.cluster import DBSCAN  # scikit-learn: imported when clustering, not with the package

    if eps <= 0 or min_samples < 1:
        raise ValueError(f"eps={eps!r} / min_samples={min_samples!r}: expected eps > 0 and min_samples >= 1")
    if constraints is not None:
        distance = constrained_distance(distance, constraints)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distance)
    labels = labels.astype(np.int64)
    if constraints is not None:
        labels = _tracklets_together(labels, constraints.tracklets)
        labels = _frames_apart(labels, constraints)
    return _renumbered(labels)


def _tracklets_together(labels: np.ndarray, tracklets: np.ndarray) -> np.ndarray:
    labels = labels.copy()
    for tracklet in np.unique(tracklets[tracklets >= 0]):
        members = np.flatnonzero(tracklets == tracklet)
        clustered = labels[members][labels[members] != OUTLIER]
        if clustered.size:
            values, counts = np.unique(clustered, return_counts=True)
            labels[members] = values[np.argmax(counts)]  # argmax: the first (smallest) of the ties
        else:
            labels[members] = OUTLIER
    return labels


def _frames_apart(labels: np.ndarray, constraints: VideoConstraints) -> np.ndarray:
    """Per cluster, units taken largest first; a unit sharing a frame with one taken leaves the
    cluster and becomes a cluster of its own (a tracklet is still one person)."""
    labels = labels.copy()
    next_label = int(labels.max(initial=-1)) + 1
    # a unit: a tracklet, or one image without a tracklet
    units = np.where(constraints.tracklets >= 0, constraints.tracklets, constraints.tracklets.max(initial=0) + 1
                     + np.arange(labels.size))
    for cluster in np.unique(labels[labels != OUTLIER]):
        members = np.flatnonzero(labels == cluster)
        unit_ids, first, sizes = np.unique(units[members], return_index=True, return_counts=True)
        taken: set[int] = set()
        for u in np.lexsort((first, -sizes)):
            in_unit = members[units[members] == unit_ids[u]]
            frames = {int(f) for f in constraints.frames[in_unit] if f >= 0}
            if frames & taken:
                labels[in_unit] = next_label
                next_label += 1
            else:
                taken |= frames
    return labels


def automatic_eps(distance: sp.csr_matrix, min_samples: int, core_fraction: float = 0.6) -> float:
    """DBSCAN's eps from the distances alone, so that about ``core_fraction`` of the images are
    core points: the ``core_fraction`` quantile (numpy's linear interpolation) of each image's
    distance to its ``min_samples - 1``-th nearest other image, an unstored pair counting as 1
    (the k-distance of DBSCAN's paper, Ester et al. 1996, with k = min_samples - 1).

    Why not a fixed eps or the mean of the smallest pairs (SSG / MMT's rho): both assume a
    data set of Market's shape. A fixed eps (Cluster Contrast's 0.6) holds for one k1 and one
    number of images per person (on 728 synthetic images of 60 people, 0.6 merges nearly all at
    k1=30 and fits at k1=10); the smallest-pairs rule assumes the share of same-person pairs
    (about 0.17% on Market; 1.75% on those 60 people), and left 90% of their images outliers.
    The k-distance quantile follows the distances of each round, whatever k1 and the data."""
    if min_samples < 2:
        raise ValueError(f"min_samples={min_samples!r}: the automatic eps needs min_samples >= 2 (an image's "
                         "distance to its min_samples - 1-th neighbour); set adapt.eps instead")
    if not 0 < core_fraction <= 1:
        raise ValueError(f"core_fraction={core_fraction!r}: expected a number in (0, 1]")
    n = distance.shape[0]
    k = min_samples - 1
    off_diagonal = distance.tocoo()
    keep = off_diagonal.row != off_diagonal.col
    rows, values = off_diagonal.row[keep], off_diagonal.data[keep].astype(np.float64)
    order = np.lexsort((values, rows))  # each row's stored distances, ascending
    rows, values = rows[order], values[order]
    starts = np.searchsorted(rows, np.arange(n))
    counts = np.bincount(rows, minlength=n)
    k_distance = np.ones(n)
    has_k = counts >= k
    k_distance[has_k] = values[starts[has_k] + k - 1]
    return float(np.quantile(k_distance, core_fraction))


def camera_standardized(features: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """The features to cluster: per camera, each dimension standardised over that camera's images
    (mean 0, standard deviation 1; a dimension constant in a camera is only centred), then every
    row L2-normalised. Images of an unknown camera (-1) are one group; a group of one image is
    only normalised.

    Why: a source model's features on new cameras carry each camera's style (light, colour,
    blur), so an image's nearest neighbour is mostly another person of its camera (91% of the
    nearest neighbours on the synthetic dusk domain) and DBSCAN splits people by camera.
    Removing each camera's mean and scale (the camera ids come from the file names, as
    unsupervised re-ID methods use them) raised the pairwise F1 of the first round's
    pseudo-labels there from 0.36 to 0.52 (``benchmarks/bench_adapt.py``, seed 0), and the
    adapted model's test mAP from 34 (3 rounds without) to 61 (4 rounds with). The model still
    trains on its own features."""
    features = np.asarray(features, dtype=np.float64)
    camids = np.asarray(camids)
    if camids.shape != features.shape[:1]:
        raise ValueError(f"camids: expected one per feature row ({features.shape[0]}), got shape {camids.shape}")
    out = features.copy()
    for camera in np.unique(camids):
        rows = camids == camera
        if rows.sum() < 2:
            continue
        part = out[rows] - out[rows].mean(axis=0)
        spread = part.std(axis=0)
        out[rows] = part / np.where(spread > 0, spread, 1.0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _renumbered(labels: np.ndarray) -> np.ndarray:
    """Clusters of one image become outliers; the rest numbered 0.. in order of first image."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    out = np.full(labels.size, OUTLIER, dtype=np.int64)
    kept = [(f, v) for v, f, c in zip(values, first, counts) if v != OUTLIER and c >= 2]
    for new, (_, value) in enumerate(sorted(kept)):
        out[labels == value] = new
    return out


def clustering_quality(labels: np.ndarray, true_ids: np.ndarray) -> dict[str, float]:
    """NMI and pairwise precision / recall / F1 of pseudo-labels against the true identities,
    every outlier counted as a cluster of its own (the usual convention of SpCL's reports)."""
    labels = np.asarray(labels, dtype=np.int64)
    singletons = np.where(labels == OUTLIER, labels.max(initial=0) + 1 + np.arange(labels.size), labels)
    f1, precision, recall = pairwise_f1(true_ids, singletons)
    return {"nmi": normalized_mutual_info(true_ids, singletons), "precision": precision, "recall": recall, "f1": f1}
