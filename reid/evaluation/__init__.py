"""Evaluation: distances, camera-aware ranking metrics, re-ranking, retrieval and verification metrics.

Pure functions over arrays (numpy or torch); see each module for the protocol it follows.
Nothing here runs a model: features come from ``reid.inference`` (or a saved
:class:`FeatureSet`), and :func:`metrics_from_features` turns query/gallery feature sets into
the metrics of a dataset's protocol.
"""

from .distance import FeatureDistances, pairwise_distance
from .evaluator import metrics_from_features, metrics_line, metrics_table, primary_score, query_gallery_distances
from .features import FeatureSet, postprocess_features
from .protocol import JUNK_PID, PROTOCOLS, protocol_camids
from .rank import RankResult, average_precision, evaluate_features, evaluate_rank, query_average_precision
from .rerank import evaluate_reranked, rerank, rerank_distances
from .retrieval import ClusterResult, RetrievalResult, cluster_metrics, evaluate_retrieval
from .retrieval import normalized_mutual_info
from .verification import VerificationResult, roc_curve, verification_from_features, verification_metrics

__all__ = ["FeatureDistances", "JUNK_PID", "PROTOCOLS", "protocol_camids", "pairwise_distance",
           "RankResult", "average_precision", "evaluate_features", "evaluate_rank", "query_average_precision",
           "rerank", "rerank_distances", "evaluate_reranked", "FeatureSet", "postprocess_features",
           "metrics_from_features", "query_gallery_distances", "metrics_line", "metrics_table", "primary_score",
           "VerificationResult", "roc_curve", "verification_from_features", "verification_metrics",
           "ClusterResult", "RetrievalResult", "cluster_metrics", "evaluate_retrieval", "normalized_mutual_info"]
