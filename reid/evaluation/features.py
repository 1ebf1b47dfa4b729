"""From a model and images to features, and from query/gallery features to metrics.

The post-processing switches are the inference strategies of Group Loss++ that the test tool
can ablate: flip test-time augmentation (at extraction) and beta normalisation
``normalize(f) + beta * f`` (after extraction); re-ranking is an option of the metrics.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distance import pairwise_distance
from .rank import evaluate_rank
from .rerank import rerank as rerank_features

FEATURE_KINDS = ("bn", "pre_bn")


@dataclass
class FeatureSet:
    """Features of a list of images with their labels, row-aligned."""

    features: np.ndarray  # N x D float32
    pids: np.ndarray  # N int64 (-1 where unknown)
    camids: np.ndarray  # N int64 (-1 where unknown)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.features)

    def save(self, path: str | Path) -> None:
        np.savez(path, features=self.features, pids=self.pids, camids=self.camids, paths=np.asarray(self.paths))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"features file not found: {path}")
        expected = "expected an .npz with features, pids, camids, paths (FeatureSet.save, reid extract)"
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # zip signatures (an empty archive: the second)
            what = "a single .npy array" if magic.startswith(b"\x93NUM") else "the bytes are not a zip archive"
            raise ValueError(f"{path}: not a features file ({what}); {expected}")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ("features", "pids", "camids", "paths") if k not in data]
                if missing:
                    raise KeyError(f"{path}: missing key(s) {', '.join(missing)}; expected features, pids, camids, paths")
                out = cls(data["features"].astype(np.float32), data["pids"].astype(np.int64),
                          data["camids"].astype(np.int64), [str(p) for p in data["paths"]])
        except KeyError:
            raise
        except (ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            # Random bytes, a truncated archive, pickled or non-numeric arrays.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a readable features file ({reason}); {expected}") from None
        n = len(out.features)
        if out.features.ndim != 2 or not (len(out.pids) == len(out.camids) == len(out.paths) == n):
            raise ValueError(f"{path}: features must be N x D with N pids, camids and paths; got "
                             f"features {out.features.shape}, {len(out.pids)} pids, {len(out.camids)} camids, "
                             f"{len(out.paths)} paths")
        return out


def _select(output: Any, feature: str) -> torch.Tensor:
    if feature == "bn":
        return output.bn_embeddings
    if feature == "pre_bn":
        return output.embeddings
    raise ValueError(f"feature must be one of {', '.join(FEATURE_KINDS)}, got {feature!r}")


@torch.no_grad()
def extract_features(
    model: nn.Module, loader, device: torch.device | str = "cpu", *, feature: str = "bn", flip: bool = False
) -> FeatureSet:
    """Run ``model`` in eval mode over ``loader`` (batches of image, pid, camid, path).

    Features are returned as the model gives them (not normalised). With ``flip`` the
    features of the image and of its mirror image are averaged, the usual re-ID test-time
    augmentation.
    """
    was_training = model.training
    model.eval()
    chunks, pids, camids, paths = [], [], [], []
    try:
        for images, batch_pids, batch_camids, batch_paths in loader:
            images = images.to(device, non_blocking=True)
            feats = _select(model(images), feature).float()
            if flip:
                feats = 0.5 * (feats + _select(model(torch.flip(images, dims=[3])), feature).float())
            chunks.append(feats.cpu())
            pids.append(torch.as_tensor(batch_pids))
            camids.append(torch.as_tensor(batch_camids))
            paths.extend(batch_paths)
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("extract_features: the loader yielded no images")
    return FeatureSet(
        torch.cat(chunks).numpy(), torch.cat(pids).long().numpy(), torch.cat(camids).long().numpy(), paths
    )


def postprocess_features(features: np.ndarray, *, normalize: bool = True, beta: float = 0.0) -> np.ndarray:
    """L2-normalise rows, then add ``beta`` times the raw feature (Group Loss++ beta normalisation).

    ``beta`` keeps part of the feature norm, which carries the network's confidence; it only
    changes rankings under the Euclidean metric (cosine normalises it away again).
    """
    features = np.asarray(features, dtype=np.float32)
    out = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12) if normalize else features
    if beta:
        out = out + np.float32(beta) * features
    return out.astype(np.float32, copy=False)


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


def metrics_from_features(
    query: FeatureSet,
    gallery: FeatureSet,
    *,
    normalize: bool = True,
    beta: float = 0.0,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
) -> dict[str, Any]:
    """mAP, mINP and Rank-1/5/10 (fractions), plus the same under re-ranking when asked."""
    qf = postprocess_features(query.features, normalize=normalize, beta=beta)
    gf = postprocess_features(gallery.features, normalize=normalize, beta=beta)
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    distmat = pairwise_distance(qf, gf, metric=metric)
    metrics: dict[str, Any] = _summary(evaluate_rank(distmat, *labels, max_rank=max_rank))
    if rerank:
        reranked = rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value)
        metrics["rerank"] = _summary(evaluate_rank(reranked, *labels, max_rank=max_rank))
    return metrics


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per named result: mAP, mINP and Rank-1/5/10 in percent."""
    columns = [("mAP", "mAP"), ("mINP", "mINP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10")]
    width = max([len("run")] + [len(name) for name in rows])
    lines = [f"| {'run':<{width}} | " + " | ".join(f"{title:>7}" for _, title in columns) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 9 for _ in columns) + "|"]
    for name, metrics in rows.items():
        cells = " | ".join(f"{100 * metrics[key]:7.2f}" if key in metrics else f"{'-':>7}" for key, _ in columns)
        lines.append(f"| {name:<{width}} | {cells} |")
    return "\n".join(lines)
