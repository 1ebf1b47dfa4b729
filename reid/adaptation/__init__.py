"""Unsupervised domain adaptation by clustering: pseudo-labels (:mod:`.pseudo_labels`) and the
round loop of ``reid adapt`` (:mod:`.adapt`)."""

from .pseudo_labels import OUTLIER, VideoConstraints, clustering_quality, constrained_distance, pseudo_labels

__all__ = ["OUTLIER", "VideoConstraints", "clustering_quality", "constrained_distance", "pseudo_labels"]
