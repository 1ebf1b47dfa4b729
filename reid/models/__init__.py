"""Re-ID models: any timm trunk, pooling, BNNeck and a bias-free identity classifier."""

from .backbone import backbone_feature_map, build_backbone, set_final_activation, set_last_stride_one
from .heads import POOLINGS, AvgPool, BNNeck, GeM, MaxPool, MixPool, build_classifier, build_pooling
from .model import FEATURE_KINDS, EmbeddingModule, ModelOutput, ReidModel, build_model, check_feature
from .weights import load_weights_file, read_state_dict

__all__ = [
    "FEATURE_KINDS",
    "POOLINGS",
    "AvgPool",
    "BNNeck",
    "EmbeddingModule",
    "GeM",
    "MaxPool",
    "MixPool",
    "ModelOutput",
    "ReidModel",
    "backbone_feature_map",
    "build_backbone",
    "build_classifier",
    "build_model",
    "build_pooling",
    "check_feature",
    "load_weights_file",
    "read_state_dict",
    "set_final_activation",
    "set_last_stride_one",
]
