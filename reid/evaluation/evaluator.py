"""From query/gallery features to the field's metrics, and how they are reported.

Pure functions: :class:`reid.evaluation.features.FeatureSet` arrays in, dicts of numbers (and
their text) out. The post-processing switches of Group Loss++ that act on arrays (beta
normalisation) are applied here; re-ranking is an option of the metrics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .distance import pairwise_distance
from .features import FeatureSet, postprocess_features
from .protocol import check_protocol
from .rank import evaluate_features
from .rerank import evaluate_reranked, rerank as rerank_features


def _fpr_key(fpr: float) -> str:
    return repr(float(fpr))


def _finite_or_none(value: float) -> float | None:
    """-inf (threshold "accept nothing") is not JSON: null."""
    return None if math.isinf(value) and value < 0 else float(value)


def verification_summary(result) -> dict[str, Any]:
    """A ``VerificationResult`` as the JSON block of ``metrics.json`` (FPR keys as ``repr(float(f))``)."""
    return {
        "auc": float(result.auc),
        "eer": float(result.eer),
        "eer_threshold": float(result.eer_threshold),
        "tpr_at_fpr": {_fpr_key(f): float(v) for f, v in result.tpr_at_fpr.items()},
        "threshold_at_fpr": {_fpr_key(f): _finite_or_none(v) for f, v in result.threshold_at_fpr.items()},
        "num_positive_pairs": int(result.num_positive_pairs),
        "num_negative_pairs": int(result.num_negative_pairs),
        "num_excluded_pairs": int(result.num_excluded_pairs),
    }


def _summary(result) -> dict[str, float]:
    cmc = result.cmc
    return {
        "mAP": float(result.mAP),
        "mINP": float(result.mINP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "num_valid_queries": int(result.num_valid_queries),
    }


def _retrieval_summary(result) -> dict[str, Any]:
    return {
        **{f"recall@{k}": float(v) for k, v in result.recall.items()},
        "precision_at_1": float(result.precision_at_1),
        "r_precision": float(result.r_precision),
        "map_at_r": float(result.map_at_r),
        "num_valid_queries": int(result.num_valid_queries),
        "num_skipped_queries": int(result.num_skipped_queries),
    }


def postprocess_pair(query: FeatureSet, gallery: FeatureSet, *, normalize: bool = True,
                     beta: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The post-processed features of both sets, as the re-ID metrics compare them (one array when
    they are one set: a leave-one-out set passes the same FeatureSet twice)."""
    qf = postprocess_features(query.features, normalize=normalize, beta=beta)
    return qf, qf if gallery is query else postprocess_features(gallery.features, normalize=normalize, beta=beta)


def query_gallery_distances(query: FeatureSet, gallery: FeatureSet, *, normalize: bool = True, beta: float = 0.0,
                            metric: str = "euclidean", rerank: bool = False, k1: int = 20, k2: int = 6,
                            lambda_value: float = 0.3,
                            progress: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(distances, re-ranked distances or None) of post-processed features: the dense q x g
    matrices the re-ID evaluation ranks (without holding them: ``metrics_from_features``), which
    ``reid visualize`` draws. A leave-one-out set passes the same FeatureSet twice."""
    qf, gf = postprocess_pair(query, gallery, normalize=normalize, beta=beta)
    plain = np.asarray(pairwise_distance(qf, gf, metric=metric, progress=progress))
    if not rerank:
        return plain, None
    return plain, rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, progress=progress)


def _retrieval_metrics(query: FeatureSet, gallery: FeatureSet, protocol: str, recall_ks: tuple[int, ...], nmi: bool,
                       normalize: bool, beta: float, metric: str) -> dict[str, Any]:
    from .retrieval import cluster_metrics, evaluate_retrieval

    qf = postprocess_features(query.features, normalize=normalize, beta=beta)
    if protocol == "leave_one_out":
        metrics = _retrieval_summary(evaluate_retrieval(qf, query.pids, ks=recall_ks, metric=metric))
        if nmi:
            clusters = cluster_metrics(qf, query.pids)
            metrics.update(nmi=float(clusters.nmi), f1=float(clusters.f1))
        return metrics
    gf = postprocess_features(gallery.features, normalize=normalize, beta=beta)
    return _retrieval_summary(evaluate_retrieval(qf, query.pids, gf, gallery.pids, ks=recall_ks, metric=metric))


def metrics_from_features(
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    protocol: str = "reid",
    recall_ks: tuple[int, ...] = (1, 2, 4, 8),
    nmi: bool = True,
    normalize: bool = True,
    beta: float = 0.0,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank_knn: str = "torch",
    max_rank: int = 50,
    verification: bool = False,
    memory_mb: float | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The metrics of the dataset's protocol (fractions), from post-processed features.

    ``protocol="reid"`` (camera-aware, :func:`reid.evaluation.rank.evaluate_features`, which ranks
    straight from the features in bounded memory, equal to ``evaluate_rank`` of the matrix): mAP, mINP,
    Rank-1/5/10, plus the same under k-reciprocal re-ranking when ``rerank`` (its neighbours
    searched by ``rerank_knn``, ``knn_backend`` of :func:`reid.evaluation.rerank.rerank`).
    ``"leave_one_out"`` (query and gallery are one list; each query leaves out only itself) and
    ``"query_gallery"``: Recall@K for ``recall_ks``, precision@1, R-precision and MAP@R
    (:func:`reid.evaluation.retrieval.evaluate_retrieval`); leave-one-out sets also get the
    k-means NMI and clustering F1 of the test set when ``nmi`` (the Group Loss papers' clustering
    metrics). Re-ranking belongs to the re-ID protocol and is ignored here.
    ``verification`` (re-ID): also the ``"verification"`` block (ROC AUC, EER, TPR and distance
    threshold at FPR 1e-4/1e-3/1e-2 over the protocol's query-gallery pairs,
    :func:`reid.evaluation.verification.verification_metrics`), about a second at Market size.
    ``memory_mb``: the most one block of the re-ID evaluation (ranking, re-ranking, verification)
    may take, in MiB (None: a quarter of the memory available now); the results do not depend on it.
    ``progress``: bars over the distances, the ranking and the re-ranking (see
    :mod:`reid.progress`; None: on a terminal only).
    """
    check_protocol(protocol)
    if protocol != "reid":
        return _retrieval_metrics(query, gallery, protocol, recall_ks, nmi, normalize, beta, metric)
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    qf, gf = postprocess_pair(query, gallery, normalize=normalize, beta=beta)
    # straight from the features: never the q x g matrix (equal to ranking it, bit for bit)
    metrics: dict[str, Any] = _summary(evaluate_features(qf, gf, *labels, metric=metric, max_rank=max_rank,
                                                         memory_mb=memory_mb, progress=progress))
    if verification:  # streamed too: equal to the metrics of the dense matrix
        from .verification import verification_from_features

        metrics["verification"] = verification_summary(
            verification_from_features(qf, gf, *labels, metric=metric, memory_mb=memory_mb, progress=progress))
    if rerank:  # the re-ranked distances are ranked a block at a time too
        metrics["rerank"] = _summary(evaluate_reranked(qf, gf, *labels, k1=k1, k2=k2, lambda_value=lambda_value,
                                                       max_rank=max_rank, knn_backend=rerank_knn, memory_mb=memory_mb,
                                                       progress=progress))
    return metrics


def primary_score(metrics: dict[str, Any]) -> float:
    """The number a run keeps its best checkpoint by: mAP (re-ID) or MAP@R (retrieval)."""
    return float(metrics["mAP"] if "mAP" in metrics else metrics["map_at_r"])


_REID_COLUMNS = [("mAP", "mAP"), ("mINP", "mINP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10")]
_RETRIEVAL_COLUMNS = [("map_at_r", "MAP@R"), ("r_precision", "R-prec"), ("nmi", "NMI"), ("f1", "F1")]


def metric_columns(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The (key, header) columns of a results table for these rows: re-ID or retrieval metrics."""
    if any("mAP" in metrics for metrics in rows.values()):
        return _REID_COLUMNS
    recalls = sorted({key for metrics in rows.values() for key in metrics if key.startswith("recall@")},
                     key=lambda key: int(key.split("@")[1]))
    return [(key, "R@" + key.split("@")[1]) for key in recalls] + _RETRIEVAL_COLUMNS


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table in percent, one row per named result: mAP, mINP and Rank-1/5/10 for
    re-ID; Recall@K, MAP@R, R-precision, NMI and F1 for retrieval."""
    columns = metric_columns(rows)
    width = max([len("run")] + [len(name) for name in rows])
    lines = [f"| {'run':<{width}} | " + " | ".join(f"{title:>7}" for _, title in columns) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 9 for _ in columns) + "|"]
    for name, metrics in rows.items():
        cells = " | ".join(f"{100 * metrics[key]:7.2f}" if key in metrics else f"{'-':>7}" for key, _ in columns)
        lines.append(f"| {name:<{width}} | {cells} |")
    return "\n".join(lines)


def metrics_line(metrics: dict[str, Any]) -> str:
    """The headline numbers on one line (the training log's): 'mAP 0.4455 rank1 0.5000 mINP 0.2045'."""
    keys = ["mAP", "rank1", "mINP"] if "mAP" in metrics else [
        *(key for key in metrics if key.startswith("recall@")), "map_at_r", "nmi"]
    return " ".join(f"{key} {metrics[key]:.4f}" for key in keys if key in metrics)
