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


def automatic_eps(distance: sp.csr_matrix, rho: float = 1.6e-3) -> float:
    """DBSCAN's eps from the distances alone: the mean of the ``rho`` fraction of smallest
    distances among all pairs i < j (unstored pairs count as 1). The rule of SSG (Fu et al.,
    ICCV 2019) and MMT (Ge et al., ICLR 2020), made for this Jaccard distance (the classic
    re-ranking's, rows normalised by their maximum), whose values run lower than those of
    Cluster Contrast's un-normalised variant that eps = 0.6 was chosen for."""
    n = distance.shape[0]
    coo = sp.triu(distance, k=1).tocoo()
    count = max(1, int(round(rho * n * (n - 1) / 2)))
    smallest = np.sort(coo.data)[:count]
    return float(np.concatenate([smallest, np.ones(count - smallest.size)]).mean())


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
