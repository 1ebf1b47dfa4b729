"""reid: person re-identification with timm backbones, Group Loss and camera-aware evaluation."""

__version__ = "0.1.0"
