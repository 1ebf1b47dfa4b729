"""The evaluation protocols, in one place: which gallery items count for a query, and which
query-gallery pairs count.

One rule serves every protocol: a gallery item with the query's label and the query's camera
is left out of the query's list (and its pair out of the verification pairs); the other
items with its label are its matches; everything else is a non-match. The protocols differ
only in the camera ids they hand to that rule (:func:`protocol_camids`):

* ``"reid"``: the cameras as given (the Market-1501 protocol of the field's shared code);
* ``"leave_one_out"`` (retrieval sets; query and gallery are one list of N): ids ``0..N-1`` on
  both sides, so only the query itself is left out;
* ``"query_gallery"`` (In-Shop): queries 0, gallery 1, so nothing is left out.

Junk (:data:`JUNK_PID`, Market-1501's ``-1`` boxes, also "unknown identity" in a user's
feature file) is one policy everywhere: gallery items with it are left out of every list and
every pair (the official Market-1501 evaluation's junk; the loaders drop junk images anyway),
and a query with it has no true match. Distractors (:data:`DISTRACTOR_PID`, Market's ``0000``)
stay in the gallery as non-matches of every query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import ArrayLike, as_labels, as_numpy

PROTOCOLS = ("reid", "leave_one_out", "query_gallery")
JUNK_PID = -1
DISTRACTOR_PID = 0


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def protocol_camids(protocol: str, query_camids: ArrayLike, gallery_camids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The (query, gallery) camera ids that make the camera rule the protocol's (module docstring)."""
    check_protocol(protocol)
    q = np.asarray(as_numpy(query_camids, "query camids")).astype(np.int64)
    g = np.asarray(as_numpy(gallery_camids, "gallery camids")).astype(np.int64)
    if protocol == "reid":
        return q, g
    if protocol == "leave_one_out":
        if len(q) != len(g):
            raise ValueError(f"protocol leave_one_out: query and gallery must be one list, got {len(q)} queries and "
                             f"{len(g)} gallery items")
        ids = np.arange(len(q), dtype=np.int64)
        return ids, ids.copy()
    return np.zeros(len(q), dtype=np.int64), np.ones(len(g), dtype=np.int64)


@dataclass(frozen=True)
class Labels:
    """The four label arrays of a query x gallery evaluation, checked, as int64 numpy."""

    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray

    @classmethod
    def of(cls, num_query: int, num_gallery: int, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
           g_camids: ArrayLike, *, what: str = "distmat") -> "Labels":
        """Checked against the sizes; ``what`` names the rows/columns they align with in errors."""
        row, column = (f"one per {what} row", f"one per {what} column") if what == "distmat" else (
            f"one per query {what}", f"one per gallery {what}")
        return cls(as_labels(q_pids, "q_pids", num_query, row), as_labels(g_pids, "g_pids", num_gallery, column),
                   as_labels(q_camids, "q_camids", num_query, row), as_labels(g_camids, "g_camids", num_gallery, column))

    def kept_gallery(self, junk_pid: int | None = JUNK_PID) -> np.ndarray:
        """Which gallery items stay in the lists: all but junk (every item when ``junk_pid`` is None)."""
        if junk_pid is None:
            return np.ones(self.g_pids.shape, dtype=bool)
        return self.g_pids != junk_pid

    def gallery_subset(self, keep: np.ndarray) -> "Labels":
        return Labels(self.q_pids, self.g_pids[keep], self.q_camids, self.g_camids[keep])


def list_mask(query_pid: int, query_camid: int, g_pids: np.ndarray, g_camids: np.ndarray,
              junk_pid: int | None = JUNK_PID) -> np.ndarray:
    """Which gallery items stay in one query's ranked list (rank lists draw exactly the lists the
    metrics rank): all but junk and the query's own pid-and-camera items. A query of unknown
    identity (the junk pid) has nothing to score, so its list keeps every item."""
    if junk_pid is not None and query_pid == junk_pid:
        return np.ones(g_pids.shape, dtype=bool)
    keep = ~((g_pids == query_pid) & (g_camids == query_camid))
    return keep if junk_pid is None else keep & (g_pids != junk_pid)


def block_pair_masks(labels: Labels, rows: slice, junk_pid: int | None = JUNK_PID) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) masks of the pairs of query ``rows`` x the gallery (see
    :func:`pair_kinds`; the same rule as dense masks, for a block of rows)."""
    q_pids, q_camids = labels.q_pids[rows], labels.q_camids[rows]
    same_pid = q_pids[:, None] == labels.g_pids[None, :]
    usable = labels.kept_gallery(junk_pid)[None, :]
    if junk_pid is not None:
        usable = usable & (q_pids != junk_pid)[:, None]
    same_camera = q_camids[:, None] == labels.g_camids[None, :]
    return usable & same_pid & ~same_camera, usable & ~same_pid


def check_distmat(distmat: ArrayLike) -> np.ndarray:
    """A 2-D query x gallery distance matrix as numpy (dtype kept)."""
    dist = as_numpy(distmat, "distmat")
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D num_query x num_gallery matrix, got shape {dist.shape}")
    if dist.dtype.kind not in "fiub":
        raise TypeError(f"distmat: expected real distances, got dtype {dist.dtype}")
    return dist


def same_pid_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every query x gallery pair with equal pids, found by grouping the gallery."""
    gallery_by_pid = np.argsort(g_pids, kind="stable")
    group_pids, group_starts, group_sizes = np.unique(g_pids[gallery_by_pid], return_index=True,
                                                      return_counts=True)
    if group_pids.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    group = np.minimum(np.searchsorted(group_pids, q_pids), len(group_pids) - 1)
    count = np.where(group_pids[group] == q_pids, group_sizes[group], 0)
    rows = np.repeat(np.arange(len(q_pids)), count)
    offset = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)  # 0, 1, ... within a query
    cols = gallery_by_pid[np.repeat(group_starts[group], count) + offset]
    return rows, cols


@dataclass(frozen=True)
class PairKinds:
    """Which query x gallery pairs count (verification, histograms): the same-pid pairs split into
    positives and left-out ones, and the columns that take part at all (junk is out)."""

    positive_rows: np.ndarray
    positive_cols: np.ndarray
    left_out_rows: np.ndarray
    left_out_cols: np.ndarray
    kept_gallery: np.ndarray  # bool per gallery column
    usable_query: np.ndarray  # bool per query row (junk queries take part in no pair)

    @property
    def num_left_out(self) -> int:
        return int(self.left_out_rows.size)


def pair_kinds(labels: Labels, junk_pid: int | None = JUNK_PID) -> PairKinds:
    """The protocol's pairs: a pair of a junk query or a junk gallery item never counts; a pair of
    equal pids is positive unless both are seen by one camera (left out); all other pairs of
    usable rows and columns are negatives."""
    kept = labels.kept_gallery(junk_pid)
    usable = np.ones(labels.q_pids.shape, dtype=bool) if junk_pid is None else labels.q_pids != junk_pid
    rows, cols = same_pid_pairs(labels.q_pids, labels.g_pids)
    real = kept[cols] & usable[rows]
    rows, cols = rows[real], cols[real]
    same_camera = labels.q_camids[rows] == labels.g_camids[cols]
    return PairKinds(rows[~same_camera], cols[~same_camera], rows[same_camera], cols[same_camera], kept, usable)
