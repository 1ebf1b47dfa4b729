"""Evaluation: distances, camera-aware ranking metrics, re-ranking, retrieval and verification metrics.

Pure functions over arrays (numpy or torch); see each module for the protocol it follows.
Nothing here runs a model: features come from ``reid.inference`` (or a saved
:class:`FeatureSet`), and :func:`metrics_from_features` turns query/gallery feature sets into
the metrics of a dataset's protocol.
"""

from .distance import pairwise_distance
from .evaluator import metrics_from_features, metrics_line, metrics_table, primary_score
from .features import FeatureSet, postprocess_features
from .rank import RankResult, average_precision, evaluate_rank, query_average_precision
from .rerank import rerank, rerank_distances
from .retrieval import ClusterResult, RetrievalResult, cluster_metrics, evaluate_retrieval
from .retrieval import normalized_mutual_info
from .verification import VerificationResult, roc_curve, verification_metrics

__all__ = ["RankResult", "average_precision", "evaluate_rank", "query_average_precision", "pairwise_distance",
           "rerank", "rerank_distances", "FeatureSet", "postprocess_features",
           "metrics_from_features", "metrics_line", "metrics_table", "primary_score",
           "VerificationResult", "roc_curve", "verification_metrics",
           "ClusterResult", "RetrievalResult", "cluster_metrics", "evaluate_retrieval", "normalized_mutual_info"]
