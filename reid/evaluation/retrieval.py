"""Deep-metric-learning retrieval and clustering metrics: Recall@K, R-precision, MAP@R, NMI, F1.

Retrieval follows Musgrave, Belongie and Lim, "A Metric Learning Reality Check" (ECCV 2020), the
protocol of pytorch-metric-learning's ``AccuracyCalculator``: for every query the gallery is
ranked by ascending canonical distance (``reid.evaluation.distance``; exact ties: lower gallery
index first), and with ``R`` = the number of gallery items sharing the query's label,

* Recall@k = 1 if at least one of the k nearest items is a hit (the CUB/Cars/SOP "Recall@K" of
  the DML papers, i.e. top-k accuracy), averaged over the queries;
* R-precision = (hits among the R nearest) / R;
* MAP@R = (1/R) * sum_{i <= R} precision@i * [item i is a hit];
* precision@1 = Recall@1.

Without a separate gallery the query set is its own gallery, leave-one-out: each query's own
row is excluded by index (and only it: duplicates of the same image stay; the protocol's camera
rule with ids ``0..N-1``, ``reid.evaluation.protocol``). Queries with R = 0 are skipped and counted.

Only ranks up to K = max(largest k, R) matter, so the shared ordering core
(``reid.evaluation.ordering``) places each query's hits from float32 products with their error
bound, in blocks of queries: the result is that of a full stable sort of canonical distances,
whatever the block size, thread count or CPU, and no q x g matrix is ever held.

Clustering: k-means with k = the number of classes (k-means++ seeding, several restarts, the
lowest inertia kept; see :func:`cluster_metrics`), then NMI (scikit-learn's
``normalized_mutual_info_score`` with its default arithmetic normalisation) and the clustering
F1 of the DML papers (Song, Jegelka, Rathod and Murphy, "Deep Metric Learning via Facility
Location", CVPR 2017): pairwise precision and recall of "same cluster" against "same class" over
all unordered pairs, from the contingency table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np

from .arrays import ArrayLike, as_labels, as_numpy
from .distance import FeatureDistances
from .kmeans import kmeans_plus_plus, lloyd
from .ordering import FeatureBlocks, LabelGroups, match_ranks
from .protocol import Labels, protocol_camids
from .symmetric import symmetric_applies, symmetric_match_ranks

KMEANS_BACKENDS = ("auto", "faiss", "numpy")
# Beyond this n * k * dim, "auto" picks faiss.
_NUMPY_KMEANS_LIMIT = 1 << 36


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


def _retrieval_scores(ranks: np.ndarray, same: np.ndarray, valid: np.ndarray, requested: list[int],
                      clipped: list[int]) -> tuple[dict[int, float], float, np.ndarray, np.ndarray]:
    """(recall per k, precision@1, R-precision, MAP@R per valid query) from the hits' ranks."""
    ranks, r = ranks[valid], same[valid].astype(np.float64)
    first = ranks[:, 0]  # BEYOND when no hit lies within the depth
    recall = {k: float(np.mean(first <= c)) for k, c in zip(requested, clipped)}
    within = ranks <= same[valid][:, None]  # hits among the R nearest
    position = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)  # the hit's number among the hits
    precision = np.where(within, position / np.where(within, ranks, 1), 0.0)
    return recall, float(np.mean(first == 1)), within.sum(axis=1) / r, precision.sum(axis=1) / r


def evaluate_retrieval(query_features: ArrayLike, query_labels: ArrayLike,
                       gallery_features: ArrayLike | None = None, gallery_labels: ArrayLike | None = None,
                       ks: Union[int, Iterable[int]] = (1, 2, 4, 8), metric: str = "euclidean") -> RetrievalResult:
    """Recall@k, precision@1, R-precision and MAP@R (Musgrave et al., ECCV 2020).

    Args:
        query_features: num_query x dim features, numpy or torch (any device; the products
            run there).
        query_labels: integer class labels of the queries (numpy or torch).
        gallery_features, gallery_labels: the gallery; both or neither. Without them the
            queries are their own gallery (leave-one-out): each query's own row is excluded by
            index, nothing else (duplicate images stay), so the gallery size is num_query - 1.
            Label -1 is the protocol's junk (``reid.evaluation.protocol``): such gallery items
            are in no list, and such queries are skipped.
        ks: the k of Recall@k. A k larger than the gallery size is clipped to it (Recall at
            the gallery size is 1.0 for every valid query); the result keeps the requested k.
        metric: ``"euclidean"`` (squared Euclidean) or ``"cosine"`` (``1 - cos``): the
            canonical distances of ``reid.evaluation.distance`` (those of ``pairwise_distance``).
            Exact ties are broken by gallery index, lower first.

    Returns:
        RetrievalResult over the valid queries; a query without a same-label gallery item
        (R = 0) is skipped and counted in ``num_skipped_queries``. Raises ValueError if no
        query is valid.

    Memory: blocks of about 4M distances plus the ranks of each query's hits within
    K = max(largest k, R); never a full distance matrix.
    """
    requested = _check_ks(ks)
    if (gallery_features is None) != (gallery_labels is None):
        raise ValueError("gallery_features and gallery_labels: give both (query vs gallery) or neither (leave-one-out)")
    leave_one_out = gallery_features is None
    if leave_one_out:
        space = FeatureDistances(query_features, query_features, metric, names=("query_features", "query_features"))
    else:
        space = FeatureDistances(query_features, gallery_features, metric)
    num_q, num_g = space.num_query, space.num_gallery
    q_labels = as_labels(query_labels, "query_labels", num_q, "one per query row")
    g_labels = q_labels if leave_one_out else as_labels(gallery_labels, "gallery_labels", num_g, "one per gallery row")
    protocol = "leave_one_out" if leave_one_out else "query_gallery"
    labels = Labels(q_labels, g_labels, *protocol_camids(protocol, np.zeros(num_q), np.zeros(num_g)))
    keep = labels.kept_gallery()
    if not keep.all():  # the protocol's junk (label -1) is in no list
        space, labels = space.gallery_subset(keep), labels.gallery_subset(keep)
        num_g = int(keep.sum())

    searchable = num_g - int(leave_one_out)  # gallery size seen by each query
    same = LabelGroups.of(labels.g_pids).sizes_of(q_labels) - int(leave_one_out)
    valid = same > 0
    if not valid.any():
        raise ValueError("no query has a same-label item in the gallery (leave-one-out excludes the query itself); "
                         "expected at least one valid query")
    clipped = [min(k, searchable) for k in requested]
    depth = np.where(valid, np.minimum(np.maximum(max(clipped), same), searchable), 1)
    if leave_one_out and keep.all() and symmetric_applies(space, int(depth.max()) + 1):
        ranks, _ = symmetric_match_ranks(space, labels, depth, progress=False)  # each pair's product once
    else:
        ranks, _ = match_ranks(FeatureBlocks(space), labels, depth=depth, progress=False)
    recall, precision_at_1, r_prec, map_r = _retrieval_scores(ranks, same, valid, requested, clipped)
    all_rp = np.full(num_q, np.nan)
    all_map = np.full(num_q, np.nan)
    all_rp[valid], all_map[valid] = r_prec, map_r
    return RetrievalResult(recall=recall, precision_at_1=precision_at_1, r_precision=float(r_prec.mean()),
                           map_at_r=float(map_r.mean()), num_valid_queries=int(valid.sum()),
                           num_skipped_queries=int(num_q - valid.sum()), all_r_precision=all_rp, all_map_at_r=all_map)


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


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, max_iter: int, restarts: int) -> np.ndarray:
    import faiss

    n, dim = x.shape
    # max_points_per_centroid >= n / k: no subsampling; min_points_per_centroid=1: no warning
    # about "too few points" (DML sets have few points per class by design). nredo: restarts,
    # faiss keeps the one with the lowest objective.
    kmeans = faiss.Kmeans(dim, k, niter=max_iter, nredo=restarts, seed=seed, verbose=False, gpu=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(n, 1))
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def _numpy_kmeans(x: np.ndarray, k: int, seed: int, max_iter: int, restarts: int) -> np.ndarray:
    """The restart with the lowest inertia (the first of equal ones); restart r draws from
    ``np.random.default_rng([seed, r])``."""
    best_assign, best_inertia = None, np.inf
    for restart in range(restarts):
        rng = np.random.default_rng([seed, restart])
        assign, inertia, _ = lloyd(x, kmeans_plus_plus(x, k, rng), max_iter)
        if inertia < best_inertia:
            best_assign, best_inertia = assign, inertia
    return best_assign


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def cluster_metrics(features: ArrayLike, labels: ArrayLike, num_clusters: int | None = None, seed: int = 0,
                    max_iter: int = 20, backend: str = "auto", restarts: int = 5) -> ClusterResult:
    """k-means on ``features`` with k = the number of distinct labels, scored by NMI and F1.

    Args:
        features: n x dim, numpy or torch (clustered on the CPU in float32).
        labels: the n class labels (1-D, numpy or torch).
        num_clusters: k (default: the number of distinct labels).
        seed: k-means seed; a given seed and backend give the same clustering.
        max_iter: Lloyd iterations per restart: faiss runs exactly this many (``niter``; 20 as
            pytorch-metric-learning's ``AccuracyCalculator``); numpy stops earlier when the
            assignments stop changing.
        backend: ``"numpy"`` (k-means++ seeding, Lloyd iterations on canonical distances: the
            same clustering on every machine, thread count and block size; its seeding is one
            pass over the points per centre), ``"faiss"`` (``faiss.Kmeans``: random initial
            centres, fast, but its float32 sums depend on the CPU and thread count) or
            ``"auto"``: numpy unless n * k * dim exceeds 2^36 (SOP's 60k x 11k x 512) and faiss
            is importable. The two give different clusterings.
        restarts: independent runs (k-means++ seeds, or faiss ``nredo``); the one with the
            lowest inertia is kept, so the score does not hang on one unlucky seeding.

    Returns:
        ClusterResult (``nmi`` as ``normalized_mutual_info``, ``f1``/``precision``/``recall``
        as ``pairwise_f1``, the ``assignments``, the ``backend`` that ran).
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(KMEANS_BACKENDS)}")
    for name, value in (("max_iter", max_iter), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
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
        large = x.shape[0] * k * x.shape[1] > _NUMPY_KMEANS_LIMIT
        backend = "faiss" if large and _faiss_available() else "numpy"
    if backend == "faiss":
        assignments = _faiss_kmeans(x, k, seed, int(max_iter), int(restarts))
    else:
        assignments = _numpy_kmeans(x, k, seed, int(max_iter), int(restarts))
    f1, precision, recall = pairwise_f1(y, assignments)
    return ClusterResult(nmi=normalized_mutual_info(y, assignments), f1=f1, precision=precision, recall=recall,
                         assignments=assignments, backend=backend, num_clusters=k)
