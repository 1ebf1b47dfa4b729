"""Evaluation: distances, camera-aware ranking metrics and k-reciprocal re-ranking.

Pure functions over arrays (numpy or torch); see each module for the protocol it follows.
Feature extraction (``reid.evaluation.features``) is imported from its own module.
"""

from .distance import pairwise_distance
from .rank import RankResult, evaluate_rank
from .rerank import rerank, rerank_distances
from .retrieval import ClusterResult, RetrievalResult, cluster_metrics, evaluate_retrieval
from .retrieval import normalized_mutual_info
from .verification import VerificationResult, roc_curve, verification_metrics

__all__ = ["RankResult", "evaluate_rank", "pairwise_distance", "rerank", "rerank_distances",
           "VerificationResult", "roc_curve", "verification_metrics",
           "ClusterResult", "RetrievalResult", "cluster_metrics", "evaluate_retrieval", "normalized_mutual_info"]
