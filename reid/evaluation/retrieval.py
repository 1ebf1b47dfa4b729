"""Deep-metric-learning retrieval and clustering metrics: Recall@K, R-precision, MAP@R, NMI, F1.

Retrieval follows Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020), the
protocol of pytorch-metric-learning's ``AccuracyCalculator``: for every query the gallery is
ranked by ascending distance (exact ties: lower gallery index first, a stable order), and with
``R`` = the number of gallery items sharing the query's label,

* Recall@k = 1 if at least one of the k nearest items is a hit (the CUB/Cars/SOP "Recall@K" of
  the DML papers, i.e. top-k accuracy), averaged over the queries;
* R-precision = (hits among the R nearest) / R;
* MAP@R = (1/R) * sum_{i <= R} precision@i * [item i is a hit];
* precision@1 = Recall@1.

Without a separate gallery the query set is its own gallery, leave-one-out: each query's own
row is excluded by index (and only it: duplicates of the same image stay). Queries with R = 0
are skipped and counted.

How the memory stays bounded: the distances are computed one block of queries at a time
(about ``_BLOCK_ELEMENTS`` distances, with ``reid.evaluation.distance``'s formula op for op) and
of each block row only its K nearest items are kept, K = max(largest k, largest R in the block)
(+1 for the query itself in leave-one-out). ``torch.topk`` selects them; it may order equal
distances arbitrarily and pick any of several items tied with the K-th distance, so:
the selection is re-sorted by (distance, index) (a sort by index, then a stable sort by
distance), and rows where the (K+1)-th nearest ties with the K-th (the cut falls inside a run
of equal distances) are redone exactly (every item <= the K-th distance, stably sorted). The
result is exactly the first K of a full stable sort of the row.

Clustering: k-means with k = the number of classes (faiss when importable, else a numpy
k-means++ / Lloyd), then NMI (scikit-learn's ``normalized_mutual_info_score`` with its default
arithmetic normalisation) and the clustering F1 of the DML papers (Song, Jegelka, Rathod and
Murphy, "Deep Metric Learning via Facility Location", CVPR 2017): pairwise precision and recall
of "same cluster" against "same class" over all unordered pairs, from the contingency table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np
import torch

from .arrays import ArrayLike, as_labels, as_numpy
from .distance import METRICS, MIN_CHUNK_ROWS, as_feature_pair, squared_euclidean_block

# Distances per block of queries: ~4M float32 (16 MiB), as in rank.py.
_BLOCK_ELEMENTS = 1 << 22
# Fewest queries per block: below 64 rows the distance product runs a small-matrix kernel
# (slower per row, and it rounds differently from pairwise_distance's chunks).
_MIN_BLOCK_ROWS = MIN_CHUNK_ROWS

KMEANS_BACKENDS = ("auto", "faiss", "numpy")


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval metrics averaged over the valid queries (those with R >= 1).

    recall: ``{k: fraction of valid queries with a same-label item among the k nearest}``, for
        each requested k (a k larger than the gallery is clipped to the gallery size).
    precision_at_1, r_precision, map_at_r: means over the valid queries.
    num_valid_queries, num_skipped_queries: queries with and without a same-label gallery item.
    all_r_precision, all_map_at_r: per query (length = number of queries), NaN where skipped.
    """

    recall: dict[int, float]
    precision_at_1: float
    r_precision: float
    map_at_r: float
    num_valid_queries: int
    num_skipped_queries: int
    all_r_precision: np.ndarray = field(repr=False)
    all_map_at_r: np.ndarray = field(repr=False)

    @property
    def num_queries(self) -> int:
        return self.num_valid_queries + self.num_skipped_queries


@dataclass(frozen=True)
class ClusterResult:
    """k-means clustering of a feature set scored against its labels.

    nmi: normalized mutual information (arithmetic mean of the entropies, natural log).
    f1: pairwise F1; precision, recall: its pairwise precision and recall.
    assignments: cluster index of every sample (int64, length n).
    backend: ``"faiss"`` or ``"numpy"``, the k-means that ran.
    num_clusters: k.
    """

    nmi: float
    f1: float
    precision: float
    recall: float
    assignments: np.ndarray = field(repr=False)
    backend: str
    num_clusters: int


# --------------------------------------------------------------------------- retrieval


def _check_ks(ks: Union[int, Iterable[int]]) -> list[int]:
    values = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks={ks!r}: expected positive integers")
    return [int(k) for k in values]


def _same_label_counts(q_labels: np.ndarray, g_labels: np.ndarray) -> np.ndarray:
    """Number of gallery items carrying each query's label."""
    values, counts = np.unique(g_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(values, q_labels), len(values) - 1)
    return np.where(values[pos] == q_labels, counts[pos], 0)


class _BlockDistances:
    """Query-block x gallery distances, the same values as ``pairwise_distance`` on the block.

    The gallery's norms (euclidean) or unit rows (cosine) are computed once instead of once
    per block; the operations per element are pairwise_distance's, in its order.
    """

    def __init__(self, gallery: torch.Tensor, metric: str):
        self.metric = metric
        if metric == "euclidean":
            self.gallery = gallery
            self.gallery_sq = gallery.pow(2).sum(dim=1)
        else:
            self.gallery = torch.nn.functional.normalize(gallery, p=2, dim=1)

    def __call__(self, queries: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.metric == "euclidean":
            block = squared_euclidean_block(queries, self.gallery, queries.pow(2).sum(dim=1), self.gallery_sq, out=out)
            return block.clamp_(min=0)
        unit = torch.nn.functional.normalize(queries, p=2, dim=1)
        torch.mm(unit, self.gallery.t(), out=out)
        return out.neg_().add_(1).clamp_(min=0, max=2)  # 1 - cos, as pairwise_distance


def _stable_nearest(dist: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` nearest items of every row, ordered by (distance, index)."""
    rows, width = dist.shape
    if count >= width:
        return torch.sort(dist, dim=1, stable=True).indices
    values, index = torch.topk(dist, count + 1, dim=1, largest=False, sorted=True)
    # Rows whose cut falls inside a run of equal distances: topk's choice among them is arbitrary.
    cut_ties = torch.nonzero(values[:, count - 1] == values[:, count]).flatten().tolist()
    values, index = values[:, :count], index[:, :count]
    # Rows with equal distances inside the selection: topk may order them any way.
    inner_ties = torch.nonzero((values[:, 1:] == values[:, :-1]).any(dim=1)).flatten()
    if inner_ties.numel():
        sub_values, sub_index = values[inner_ties], index[inner_ties]
        # (distance, index) order: sort by index, then a stable sort by distance
        sub_index, perm = torch.sort(sub_index, dim=1)
        order = torch.sort(torch.gather(sub_values, 1, perm), dim=1, stable=True).indices
        index[inner_ties] = torch.gather(sub_index, 1, order)
    for r in cut_ties:
        row = dist[r]
        candidates = torch.nonzero(row <= values[r, count - 1]).flatten()  # ascending index
        index[r] = candidates[torch.sort(row[candidates], stable=True).indices[:count]]
    return index


def _drop_self(index: torch.Tensor, self_index: torch.Tensor) -> torch.Tensor:
    """Remove each row's own index (or its last column when the row does not hold it)."""
    rows, width = index.shape
    is_self = index == self_index[:, None]
    position = torch.where(is_self.any(dim=1), is_self.to(torch.uint8).argmax(dim=1), width - 1)
    column = torch.arange(width - 1, device=index.device)[None, :]
    return torch.gather(index, 1, column + (column >= position[:, None]))


def evaluate_retrieval(query_features: ArrayLike, query_labels: ArrayLike,
                       gallery_features: ArrayLike | None = None, gallery_labels: ArrayLike | None = None,
                       ks: Union[int, Iterable[int]] = (1, 2, 4, 8), metric: str = "euclidean") -> RetrievalResult:
    """Recall@k, precision@1, R-precision and MAP@R (Musgrave et al., ECCV 2020).

    Args:
        query_features: num_query x dim features, numpy or torch (any device; the distances
            and the nearest-neighbour selection run there).
        query_labels: integer class labels of the queries (numpy or torch).
        gallery_features, gallery_labels: the gallery; both or neither. Without them the
            queries are their own gallery (leave-one-out): each query's own row is excluded by
            index, nothing else (duplicate images stay), so the gallery size is num_query - 1.
        ks: the k of Recall@k. A k larger than the gallery size is clipped to it (Recall at
            the gallery size is 1.0 for every valid query); the result keeps the requested k.
        metric: ``"euclidean"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``): the values
            of ``reid.evaluation.distance.pairwise_distance``, in float32 (float64 if a
            feature set is float64). Exact ties are broken by gallery index, lower first.

    Returns:
        RetrievalResult over the valid queries; a query without a same-label gallery item
        (R = 0) is skipped and counted in ``num_skipped_queries``. Raises ValueError if no
        query is valid.

    Memory: blocks of about ``_BLOCK_ELEMENTS`` distances (at least 64 query rows) plus the
    K nearest of each block row, K = max(largest k, largest R); never a full distance matrix.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {', '.join(METRICS)}")
    requested = _check_ks(ks)
    if (gallery_features is None) != (gallery_labels is None):
        raise ValueError("gallery_features and gallery_labels: give both (query vs gallery) or neither (leave-one-out)")
    leave_one_out = gallery_features is None
    if leave_one_out:
        queries, gallery = as_feature_pair(query_features, query_features, "query_features", "query_features")
    else:
        queries, gallery = as_feature_pair(query_features, gallery_features, "query_features", "gallery_features")
    num_q, num_g = queries.shape[0], gallery.shape[0]
    q_labels = as_labels(query_labels, "query_labels", num_q, "one per query row")
    g_labels = q_labels if leave_one_out else as_labels(gallery_labels, "gallery_labels", num_g, "one per gallery row")
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    queries = queries.to(dtype)
    gallery = gallery.to(device=queries.device, dtype=dtype)
    checks = [("query_features", queries)] + ([] if leave_one_out else [("gallery_features", gallery)])
    for name, feats in checks:
        if feats.numel() and not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{name} contains NaN or inf; expected finite features")

    searchable = num_g - int(leave_one_out)  # gallery size seen by each query
    same = _same_label_counts(q_labels, g_labels) - int(leave_one_out) if num_g else np.zeros(num_q, np.int64)
    valid_idx = np.flatnonzero(same > 0)
    if valid_idx.size == 0:
        raise ValueError("no query has a same-label item in the gallery (leave-one-out excludes the query itself); "
                         "expected at least one valid query")
    clipped = [min(k, searchable) for k in requested]
    max_k = max(clipped, default=1)

    distances = _BlockDistances(gallery, metric)
    if metric == "euclidean":
        # |a|^2 + |b|^2 - 2ab can overflow (inf - inf = NaN) only with squared norms this large
        largest = float(distances.gallery_sq.max())
        if not leave_one_out:
            largest = max(largest, float(queries.pow(2).sum(dim=1).max()))
        if largest > torch.finfo(dtype).max / 4:
            raise ValueError(f"features too large for {dtype} squared distances (squared norm {largest:.3g})")
    rows = max(_MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // num_g)
    rows = min(rows, valid_idx.size)
    out = torch.empty((rows, num_g), dtype=dtype, device=queries.device)
    first_hit = np.empty(valid_idx.size, dtype=np.int64)  # 0-based rank of the first hit (K if none)
    r_prec = np.empty(valid_idx.size, dtype=np.float64)
    map_r = np.empty(valid_idx.size, dtype=np.float64)
    for start in range(0, valid_idx.size, rows):
        stop = min(start + rows, valid_idx.size)
        members = valid_idx[start:stop]
        r = same[members]
        count = min(max(max_k, int(r.max())), searchable)
        members_t = torch.from_numpy(members).to(queries.device)
        dist = distances(queries.index_select(0, members_t), out[: stop - start])
        nearest = _stable_nearest(dist, count + int(leave_one_out))
        if leave_one_out:
            nearest = _drop_self(nearest, members_t)
        hits = g_labels[nearest.cpu().numpy()] == q_labels[members][:, None]  # rows x count
        found = hits.any(axis=1)
        first_hit[start:stop] = np.where(found, hits.argmax(axis=1), count)
        width = int(r.max())
        head = hits[:, :width]
        in_r = np.arange(width)[None, :] < r[:, None]
        relevant = head & in_r
        precision = np.cumsum(relevant, axis=1) / np.arange(1, width + 1, dtype=np.float64)
        r_prec[start:stop] = relevant.sum(axis=1) / r
        map_r[start:stop] = np.where(relevant, precision, 0.0).sum(axis=1) / r

    recall = {k: float(np.mean(first_hit < c)) for k, c in zip(requested, clipped)}
    all_rp = np.full(num_q, np.nan)
    all_map = np.full(num_q, np.nan)
    all_rp[valid_idx] = r_prec
    all_map[valid_idx] = map_r
    return RetrievalResult(recall=recall, precision_at_1=float(np.mean(first_hit == 0)),
                           r_precision=float(r_prec.mean()), map_at_r=float(map_r.mean()),
                           num_valid_queries=int(valid_idx.size), num_skipped_queries=int(num_q - valid_idx.size),
                           all_r_precision=all_rp, all_map_at_r=all_map)


# --------------------------------------------------------------------------- clustering scores


def _partition(x: ArrayLike, name: str, length: int | None = None) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
        expected = "a 1-D array" if length is None else f"a 1-D array of length {length}"
        raise ValueError(f"{name}: expected {expected}, got shape {arr.shape}")
    return arr


def _contingency(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, ...]:
    """Class sizes, cluster sizes and the non-zero cells of the contingency table: their
    counts, class index and cluster index (int64)."""
    true = _partition(labels_true, "labels_true")
    pred = _partition(labels_pred, "labels_pred", true.shape[0])
    _, t = np.unique(true, return_inverse=True)
    clusters, p = np.unique(pred, return_inverse=True)
    t, p = t.reshape(-1).astype(np.int64), p.reshape(-1).astype(np.int64)
    width = max(len(clusters), 1)
    # only the non-zero cells: a dense classes x clusters table can be huge (SOP: 11k x 11k)
    codes, cells = np.unique(t * width + p, return_counts=True)
    return np.bincount(t), np.bincount(p), cells, codes // width, codes % width


def normalized_mutual_info(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """NMI = MI / ((H(true) + H(pred)) / 2), natural log: scikit-learn's default
    ``normalized_mutual_info_score`` (``average_method="arithmetic"``).

    Labels are 1-D arrays of any values np.unique can sort (numpy or torch). As scikit-learn:
    1.0 when both labelings are a single cluster (or empty), 0.0 when the mutual information is
    0 (e.g. only one of them is a single cluster).
    """
    class_sizes, cluster_sizes, cells, rows, cols = _contingency(labels_true, labels_pred)
    if len(class_sizes) == len(cluster_sizes) and len(class_sizes) <= 1:
        return 1.0  # no split on either side (or no sample): zero entropies, a perfect match
    if len(class_sizes) == 1 or len(cluster_sizes) == 1:
        return 0.0  # MI <= min(H(true), H(pred)) = 0
    n = float(cells.sum())
    log_n = math.log(n)
    # MI = sum_ij n_ij/n log(n n_ij / (a_i b_j)), over the non-zero cells
    log_a, log_b = np.log(class_sizes.astype(np.float64)), np.log(cluster_sizes.astype(np.float64))
    terms = cells / n * (np.log(cells.astype(np.float64)) + log_n - log_a[rows] - log_b[cols])
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0  # rounding noise, dropped as scikit-learn does
    mi = float(terms.sum())
    if mi <= 0.0:  # independent labelings
        return 0.0
    h_true = -float(np.sum(class_sizes / n * (log_a - log_n)))
    h_pred = -float(np.sum(cluster_sizes / n * (log_b - log_n)))
    return float(mi / ((h_true + h_pred) / 2))


def _pairs(sizes: np.ndarray) -> int:
    """sum of C(s, 2): unordered pairs inside the groups."""
    sizes = sizes.astype(np.int64)
    return int(np.sum(sizes * (sizes - 1) // 2))


def pairwise_f1(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[float, float, float]:
    """(F1, precision, recall) of "same cluster" against "same class" over all unordered pairs.

    TP = sum_ij C(n_ij, 2); precision = TP / sum_j C(b_j, 2) (pairs put together by the
    clustering); recall = TP / sum_i C(a_i, 2) (pairs of the same class). When a labeling has
    no pair (all singletons) the ratio it divides is 0, unless neither has a pair: then the
    partitions are identical and all three are 1.0.
    """
    class_sizes, cluster_sizes, cells, _, _ = _contingency(labels_true, labels_pred)
    tp, same_cluster, same_class = _pairs(cells), _pairs(cluster_sizes), _pairs(class_sizes)
    if same_cluster == 0 and same_class == 0:
        return 1.0, 1.0, 1.0
    precision = tp / same_cluster if same_cluster else 0.0
    recall = tp / same_class if same_class else 0.0
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return float(f1), float(precision), float(recall)


# --------------------------------------------------------------------------- k-means


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, max_iter: int) -> np.ndarray:
    import faiss

    n, dim = x.shape
    # max_points_per_centroid >= n / k: no subsampling; min_points_per_centroid=1: no warning
    # about "too few points" (DML sets have few points per class by design).
    kmeans = faiss.Kmeans(dim, k, niter=max_iter, seed=seed, verbose=False, gpu=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(n, 1))
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def _nearest_centre(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of (first, on ties) and squared distance to the nearest centre, blocked."""
    c_sq = centres.pow(2).sum(dim=1)
    rows = max(1, _BLOCK_ELEMENTS // max(centres.shape[0], 1))
    assign = torch.empty(x.shape[0], dtype=torch.int64)
    best = torch.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0], rows):
        d = squared_euclidean_block(x[s:s + rows], centres, x_sq[s:s + rows], c_sq)
        best[s:s + rows], assign[s:s + rows] = d.min(dim=1)
    return assign, best.clamp_(min=0)


def _kmeans_plus_plus(x: torch.Tensor, x_sq: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii, SODA 2007): each next centre is drawn with
    probability proportional to the squared distance to the nearest centre chosen so far."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    closest = squared_euclidean_block(x, x[chosen[0]][None], x_sq, x_sq[chosen[0]][None])[:, 0].clamp_(min=0)
    closest = closest.double().numpy()
    closest[chosen[0]] = 0.0
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            pick = min(pick, n - 1)
            while closest[pick] == 0.0:  # rounding at the end of the cumulative sum
                pick -= 1
        else:  # every point sits on a centre: any point not chosen yet
            rest = np.setdiff1d(np.arange(n), chosen)
            pick = int(rest[rng.integers(rest.size)])
        chosen.append(pick)
        d = squared_euclidean_block(x, x[pick][None], x_sq, x_sq[pick][None])[:, 0].clamp_(min=0)
        np.minimum(closest, d.double().numpy(), out=closest)
        closest[pick] = 0.0
    return x[chosen].clone()


def _numpy_kmeans(features: np.ndarray, k: int, seed: int, max_iter: int) -> np.ndarray:
    """Lloyd's k-means from a k-means++ seeding; stops when the assignments stop changing."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    x_sq = x.pow(2).sum(dim=1)
    rng = np.random.default_rng(seed)
    centres = _kmeans_plus_plus(x, x_sq, k, rng)
    assign, best = _nearest_centre(x, x_sq, centres)
    x64 = features.astype(np.float64, copy=False)
    for _ in range(max_iter):
        labels = assign.numpy()
        counts = np.bincount(labels, minlength=k)
        order = np.argsort(labels, kind="stable")
        nonempty = np.flatnonzero(counts)
        starts = (np.cumsum(counts) - counts)[nonempty]
        sums = np.add.reduceat(x64[order], starts, axis=0)
        new = centres.double().numpy()
        new[nonempty] = sums / counts[nonempty, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # re-seed empty clusters on the points farthest from their centre
            far = np.argsort(-best.double().numpy(), kind="stable")[: empty.size]
            new[empty] = x64[far]
        centres = torch.from_numpy(new.astype(np.float32))
        new_assign, best = _nearest_centre(x, x_sq, centres)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign.numpy().astype(np.int64)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def cluster_metrics(features: ArrayLike, labels: ArrayLike, num_clusters: int | None = None, seed: int = 0,
                    max_iter: int = 20, backend: str = "auto") -> ClusterResult:
    """k-means on ``features`` with k = the number of distinct labels, scored by NMI and F1.

    Args:
        features: n x dim, numpy or torch (clustered on the CPU in float32).
        labels: the n class labels (1-D, numpy or torch).
        num_clusters: k (default: the number of distinct labels).
        seed: k-means seed; a given seed and backend give the same clustering.
        max_iter: Lloyd iterations: faiss runs exactly this many (``niter``; 20 as
            pytorch-metric-learning's ``AccuracyCalculator``); numpy stops earlier when the
            assignments stop changing.
        backend: ``"faiss"`` (``faiss.Kmeans``: random initial centres from ``seed``, all
            points used), ``"numpy"`` (k-means++ seeding from ``np.random.default_rng(seed)``,
            blocked distances, empty clusters re-seeded on the farthest points; its seeding is
            O(n k dim) one centre at a time, slow for 10k+ clusters) or ``"auto"`` (faiss when
            importable). The two give different clusterings.

    Returns:
        ClusterResult (``nmi`` as ``normalized_mutual_info``, ``f1``/``precision``/``recall``
        as ``pairwise_f1``, the ``assignments``, the ``backend`` that ran).
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(KMEANS_BACKENDS)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r}: expected a positive integer")
    x = as_numpy(features, "features")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features: expected a non-empty 2-D n x dim array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("features contains NaN or inf; expected finite features")
    y = _partition(labels, "labels", x.shape[0])
    k = len(np.unique(y)) if num_clusters is None else num_clusters
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"num_clusters={k!r}: expected an integer in [1, {x.shape[0]}] (the number of samples)")
    k = int(k)
    if backend == "auto":
        backend = "faiss" if _faiss_available() else "numpy"
    if backend == "faiss":
        assignments = _faiss_kmeans(x, k, seed, int(max_iter))
    else:
        assignments = _numpy_kmeans(x, k, seed, int(max_iter))
    f1, precision, recall = pairwise_f1(y, assignments)
    return ClusterResult(nmi=normalized_mutual_info(y, assignments), f1=f1, precision=precision, recall=recall,
                         assignments=assignments, backend=backend, num_clusters=k)
