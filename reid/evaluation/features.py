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
        """Write an .npz (features, pids, camids, paths) atomically; a name without .npz gets it."""
        from ..io import atomic_write

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")  # what np.savez would write
        atomic_write(path, lambda handle: np.savez(handle, features=self.features, pids=self.pids,
                                                    camids=self.camids, paths=np.asarray(self.paths)))

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


def _retrieval_summary(result) -> dict[str, Any]:
    return {
        **{f"recall@{k}": float(v) for k, v in result.recall.items()},
        "precision_at_1": float(result.precision_at_1),
        "r_precision": float(result.r_precision),
        "map_at_r": float(result.map_at_r),
        "num_valid_queries": int(result.num_valid_queries),
        "num_skipped_queries": int(result.num_skipped_queries),
    }


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
    max_rank: int = 50,
) -> dict[str, Any]:
    """The metrics of the dataset's protocol (fractions), from post-processed features.

    ``protocol="reid"`` (camera-aware, :func:`reid.evaluation.rank.evaluate_rank`): mAP, mINP,
    Rank-1/5/10, plus the same under k-reciprocal re-ranking when ``rerank``.
    ``"leave_one_out"`` (query and gallery are one list; each query leaves out only itself) and
    ``"query_gallery"``: Recall@K for ``recall_ks``, precision@1, R-precision and MAP@R
    (:func:`reid.evaluation.retrieval.evaluate_retrieval`); leave-one-out sets also get the
    k-means NMI and clustering F1 of the test set when ``nmi`` (the Group Loss papers' clustering
    metrics; minutes at SOP size). Re-ranking belongs to the re-ID protocol and is ignored here.
    """
    qf = postprocess_features(query.features, normalize=normalize, beta=beta)
    if protocol in ("leave_one_out", "query_gallery"):
        from .retrieval import cluster_metrics, evaluate_retrieval

        if protocol == "leave_one_out":
            metrics = _retrieval_summary(evaluate_retrieval(qf, query.pids, ks=recall_ks, metric=metric))
            if nmi:
                clusters = cluster_metrics(qf, query.pids)
                metrics.update(nmi=float(clusters.nmi), f1=float(clusters.f1))
            return metrics
        gf = postprocess_features(gallery.features, normalize=normalize, beta=beta)
        return _retrieval_summary(evaluate_retrieval(qf, query.pids, gf, gallery.pids, ks=recall_ks, metric=metric))
    if protocol != "reid":
        raise ValueError(f"protocol: expected reid, leave_one_out or query_gallery, got {protocol!r}")
    gf = postprocess_features(gallery.features, normalize=normalize, beta=beta)
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    distmat = pairwise_distance(qf, gf, metric=metric)
    metrics: dict[str, Any] = _summary(evaluate_rank(distmat, *labels, max_rank=max_rank))
    if rerank:
        reranked = rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value)
        metrics["rerank"] = _summary(evaluate_rank(reranked, *labels, max_rank=max_rank))
    return metrics


def primary_score(metrics: dict[str, Any]) -> float:
    """The number a run keeps its best checkpoint by: mAP (re-ID) or MAP@R (retrieval)."""
    return float(metrics["mAP"] if "mAP" in metrics else metrics["map_at_r"])


_REID_COLUMNS = [("mAP", "mAP"), ("mINP", "mINP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10")]
_RETRIEVAL_COLUMNS = [("map_at_r", "MAP@R"), ("r_precision", "R-prec"), ("nmi", "NMI"), ("f1", "F1")]


def _columns(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    if any("mAP" in metrics for metrics in rows.values()):
        return _REID_COLUMNS
    recalls = sorted({key for metrics in rows.values() for key in metrics if key.startswith("recall@")},
                     key=lambda key: int(key.split("@")[1]))
    return [(key, "R@" + key.split("@")[1]) for key in recalls] + _RETRIEVAL_COLUMNS


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table in percent, one row per named result: mAP, mINP and Rank-1/5/10 for
    re-ID; Recall@K, MAP@R, R-precision, NMI and F1 for retrieval."""
    columns = _columns(rows)
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
