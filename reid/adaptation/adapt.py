"""``reid adapt``: a trained model adapted to unlabelled images of new cameras, round by round.

Each round (Cluster Contrast, Dai et al. 2022; SpCL, Ge et al. 2020):

1. extract the L2-normalised features of every image (``adapt.feature``) with the current model;
2. for clustering, standardise them per camera (``adapt.camera_standardized``,
   :func:`.pseudo_labels.camera_standardized`), then their k-reciprocal Jaccard distance
   (:func:`reid.evaluation.rerank.k_reciprocal_jaccard`);
3. DBSCAN pseudo-identities with the video constraints (:mod:`.pseudo_labels`; ``adapt.eps``,
   or the automatic eps of :func:`.pseudo_labels.automatic_eps`); outliers are left out
   (``adapt.outliers=drop``) or one pseudo-identity each (``instances``);
4. the cluster memory (:class:`reid.losses.ClusterMemoryLoss`) starts from each cluster's mean
   feature (of the model's own features), and the model trains on ``adapt.num_identities`` x
   ``adapt.num_instances`` batches of pseudo-identities, camera-balanced
   (``adapt.camera_balanced``), for one pass of the sampler (or ``adapt.iters_per_round``).

After each round ``RUN/last.pt`` is written: a normal checkpoint (the source's config with
the ``adapt`` section and ``output_dir`` of this run, its class count, the adapted weights), so
``reid test``, ``extract`` and ``report`` take it. ``train.log`` and ``log.jsonl`` get one record
per round (clusters, outliers, clustered images, loss, and the pseudo-labels' quality when
the caller knows the true ids). ``resume=true`` continues from the last finished round; a stop
(Ctrl-C / SIGTERM) in the middle of a round keeps the previous round's checkpoint and resume
redoes that round.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import builders
from ..checkpoint import Checkpointer, CheckpointError, Progress, load_checkpoint
from ..config import AdaptConfig, Config, ConfigError, apply_overrides, from_dict, save_config, to_dict
from ..crops import TRACKLETS_FILE, read_tracklets
from ..data.datasets.base import check_images
from ..data.loaders import shut_down_workers
from ..engine import StopRequest, TrainingInterrupted, seed_everything, train_one_epoch
from ..evaluation.rerank import k_reciprocal_jaccard
from ..inference import extract_features, find_images, labels_from_names
from ..losses import ClusterMemoryLoss
from ..losses.weighted import WeightedLosses
from ..models.model import ModelOutput
from ..optim import Optimization, build_optimizer
from ..training import RunFiles, _differences, check_output_folder
from .pseudo_labels import OUTLIER, VideoConstraints, automatic_eps, camera_standardized, pseudo_labels

log = logging.getLogger("reid")

# The config keys a resumed adaptation may change (how long it runs, where, how fast).
RESUMABLE_KEYS = ("adapt.rounds", "output_dir", "resume", "overwrite", "train.device", "data.num_workers",
                  "data.test_batch_size", "test.")


@dataclass
class AdaptImages:
    """The unlabelled images: paths, camera index per image (-1 where the name has none) and
    the video constraints of the folders that hold a ``tracklets.csv``."""

    paths: list[str]
    camids: np.ndarray
    constraints: VideoConstraints | None

    @property
    def items(self) -> list[tuple[str, int, int]]:
        return [(p, -1, int(c)) for p, c in zip(self.paths, self.camids)]


def list_images(folders: Sequence[str | Path], *, use_tracklets: bool = True, skip_invalid: bool = False) -> AdaptImages:
    """The images under ``folders`` (recursively), checked (a bad file is an error naming it, or
    left out with ``skip_invalid``); cameras from Market-style names; tracklet and frame keys from
    each folder's ``tracklets.csv`` (when ``use_tracklets``), which must list every crop."""
    paths: list[str] = []
    keys: list[tuple | None] = []
    for index, folder in enumerate(folders):
        found = [str(p) for p in find_images(folder)]
        table = Path(folder) / TRACKLETS_FILE
        rows = read_tracklets(table) if use_tracklets and table.is_file() else None
        for path in found:
            if rows is None:
                keys.append(None)
                continue
            row = rows.get(Path(path).name)
            if row is None:
                raise ValueError(f"{table} does not list {path}; expected a row for every crop in {folder} "
                                 "(or adapt.tracklets=false to ignore the file)")
            base = (index, row.camera, row.sequence)
            keys.append(((*base, "tracklet", row.tracklet), (*base, "frame", row.frame)))
        paths += found
    good, _ = check_images([(p, -1, -1) for p in paths], skip_invalid=skip_invalid, where="the images to adapt to")
    kept = {p for p, _, _ in good}
    keep = [i for i, p in enumerate(paths) if p in kept]
    paths, keys = [paths[i] for i in keep], [keys[i] for i in keep]
    _, camids = labels_from_names(paths)
    constraints = VideoConstraints.from_keys(keys) if any(k is not None for k in keys) else None
    return AdaptImages(paths, camids, constraints)


class _FeatureView(nn.Module):
    """The model with ``embeddings`` = the feature adaptation clusters ("bn": after the BNNeck)."""

    def __init__(self, model: nn.Module, feature: str) -> None:
        super().__init__()
        self.model, self.feature = model, feature

    def forward(self, images: torch.Tensor) -> ModelOutput:
        out = self.model(images)
        chosen = out.bn_embeddings if self.feature == "bn" else out.embeddings
        return ModelOutput(chosen, out.bn_embeddings, out.logits)


# ---------------------------------------------------------------------------------------------
# One round


def round_labels(model: nn.Module, cfg: Config, images: AdaptImages, device: torch.device, *,
                 progress: bool | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(pseudo-labels, L2-normalised features, DBSCAN's eps) of every image under the current model."""
    a = cfg.adapt
    loader = builders.test_loader_from_config(cfg, images.items)
    try:
        features = extract_features(model, loader, device, feature=a.feature, normalize=True, progress=progress,
                                    description="adapt: extracting").features
    finally:
        shut_down_workers(loader)
    clustered = camera_standardized(features, images.camids) if a.camera_standardized else features
    distance = k_reciprocal_jaccard(clustered, a.k1, a.k2, progress=progress)
    eps = a.eps if a.eps > 0 else automatic_eps(distance, a.min_samples, a.core_fraction)
    labels = pseudo_labels(distance, eps=eps, min_samples=a.min_samples, constraints=images.constraints)
    return labels, features, eps


def training_labels(labels: np.ndarray, outliers: str) -> np.ndarray:
    """The labels to train on: outliers dropped (-1) or each its own pseudo-identity."""
    if outliers == "drop":
        return labels
    out = labels.copy()
    noise = np.flatnonzero(labels == OUTLIER)
    out[noise] = labels.max(initial=-1) + 1 + np.arange(noise.size)
    return out


def centroids(features: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """Mean feature of each label 0..C-1 (images labelled -1 left out)."""
    kept = labels >= 0
    count = int(labels.max(initial=-1)) + 1
    sums = np.zeros((count, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[kept], features[kept])
    return torch.from_numpy(sums / np.bincount(labels[kept], minlength=count)[:, None]).float()


def _train_round(view: nn.Module, cfg: Config, images: AdaptImages, labels: np.ndarray, criterion: WeightedLosses,
                 optimization: Optimization, device: torch.device, round_index: int, stop: StopRequest):
    items = [(p, int(y), int(c)) for p, y, c in zip(images.paths, labels, images.camids) if y >= 0]
    batches = dataclasses.replace(cfg.data, num_identities=cfg.adapt.num_identities,
                                  num_instances=cfg.adapt.num_instances)  # adaptation's P x K, not the source's
    loader = builders.train_loader_from_config(dataclasses.replace(cfg, data=batches), None, items=items,
                                               camera_balanced=cfg.adapt.camera_balanced)
    loader.batch_sampler.set_epoch(round_index)
    steps = len(loader) if cfg.adapt.iters_per_round == 0 else cfg.adapt.iters_per_round
    result, done = None, 0
    pass_index = 0
    try:
        while done < steps:  # more passes of the sampler when iters_per_round asks for more batches
            loader.batch_sampler.set_epoch(round_index * 1000 + pass_index)
            part = train_one_epoch(view, loader, criterion, optimization, device=device, max_steps=steps - done,
                                   stop=stop, description=f"adapt round {round_index + 1}/{cfg.adapt.rounds}")
            done, pass_index = done + part.steps, pass_index + 1
            result = part if result is None else _merged(result, part)
            if part.interrupted:
                break
    finally:  # this round's workers end with it
        shut_down_workers(loader)
    return result


def _merged(a, b):
    total = a.steps + b.steps
    losses = {k: (a.losses.get(k, 0.0) * a.steps + v * b.steps) / max(total, 1) for k, v in b.losses.items()}
    a.losses, a.steps, a.images, a.seconds = losses, total, a.images + b.images, a.seconds + b.seconds
    a.interrupted = b.interrupted
    return a


# ---------------------------------------------------------------------------------------------
# The run


def adaptation_config(weights: str | Path, overrides: Sequence[str], output: str | Path) -> tuple[Config, dict]:
    """(the source checkpoint's config, its ``adapt`` section at the defaults, with ``overrides``
    and ``output_dir=output``; the checkpoint's state)."""
    state = load_checkpoint(weights)
    stored = builders.checkpoint_config(state, weights)
    # The adapt section starts from the schema's defaults: what a training run stored there never
    # applied to it, and an adapted source's settings are not this run's.
    stored = dataclasses.replace(stored, adapt=AdaptConfig(), resume=False, overwrite=False)
    cfg = apply_overrides(stored, [*overrides, f"output_dir={output}"])
    return cfg, state


def adapt(cfg: Config, source: dict, source_path: str | Path, image_folders: Sequence[str | Path], *,
          progress: bool | None = None,
          on_round: Callable[[dict[str, Any], np.ndarray, list[str]], None] | None = None) -> dict[str, Any]:
    """Adapt the model of the checkpoint ``source`` (read from ``source_path``) to the images
    under ``image_folders``, as ``cfg.adapt`` says, into ``cfg.output_dir``; returns a summary.

    Everything is checked before the first file is written: the output folder (a fresh run
    into a folder holding a run refuses unless ``overwrite=true``; ``resume=true`` continues
    it), the images, the source checkpoint's model. ``on_round(record, labels, paths)`` gets
    every round's record and pseudo-labels (the benchmark scores them against the true ids).
    """
    device = builders.resolve_device(cfg.train.device)
    output = Path(cfg.output_dir)
    resume_state = _resume_state(cfg, output)
    if resume_state is None:
        check_output_folder(output, overwrite=cfg.overwrite)
    images = list_images(image_folders, use_tracklets=cfg.adapt.tracklets, skip_invalid=cfg.data.skip_invalid)
    if len(images.paths) < cfg.adapt.num_identities * 2:
        raise ValueError(f"{len(images.paths)} images under {', '.join(map(str, image_folders))}: too few to cluster "
                         f"into batches of adapt.num_identities={cfg.adapt.num_identities} pseudo-identities")
    seed_everything(cfg.train.seed)
    model = builders.model_from_checkpoint(source, source_path, device)
    view = _FeatureView(model, cfg.adapt.feature)
    memory = ClusterMemoryLoss(cfg.adapt.temperature, cfg.adapt.momentum)
    criterion = WeightedLosses({"cluster_memory": (1.0, memory)}).to(device)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], "adam", cfg.adapt.lr,
                                weight_decay=cfg.train.weight_decay)
    optimization = Optimization(optimizer)
    checkpointer = Checkpointer(output, {"model": model, "optimizer": optimizer},
                                extra={"config": to_dict(cfg), "num_classes": source["num_classes"],
                                       "adapted_from": str(source_path),
                                       "adapt_images": [str(f) for f in image_folders]})
    start = checkpointer.restore(resume_state, output / "last.pt") if resume_state is not None else Progress()
    summary: dict[str, Any] = {"rounds": []}
    with RunFiles(output, fresh=resume_state is None, overwrite=cfg.overwrite) as files, StopRequest() as stop:
        save_config(cfg, output / "config.yaml")
        log.info("adapting %s (%s) to %d images%s; %s", source_path, cfg.model.backbone, len(images.paths),
                 " with tracklet constraints" if images.constraints is not None else "",
                 f"resumed after round {start.epoch}" if resume_state is not None else "from round 1")
        for round_index in range(start.epoch, cfg.adapt.rounds):
            record = _one_round(view, cfg, images, criterion, memory, optimization, device, round_index, stop,
                                progress, on_round)
            if record is None:
                raise TrainingInterrupted(f"stopped in round {round_index + 1}; resume=true redoes it from "
                                          f"{output / 'last.pt' if round_index else 'the source weights'}")
            checkpointer.save("last.pt", Progress(epoch=round_index + 1))
            files.log_epoch(record, unit="round")
            summary["rounds"].append(record)
    summary["checkpoint"] = str(output / "last.pt")
    return summary


def _one_round(view, cfg, images, criterion, memory, optimization, device, round_index, stop, progress, on_round):
    """Cluster, then train; the round's record, or None when a stop request cut the training."""
    start = time.perf_counter()
    labels, features, eps = round_labels(view.model, cfg, images, device, progress=progress)
    train_labels = training_labels(labels, cfg.adapt.outliers)
    clusters = int(labels.max(initial=-1)) + 1
    outliers = int((labels == OUTLIER).sum())
    identities = int(train_labels.max(initial=-1)) + 1
    if identities < cfg.adapt.num_identities:
        raise ValueError(f"round {round_index + 1}: DBSCAN found {clusters} clusters ({outliers} of "
                         f"{labels.size} images outliers), fewer than the adapt.num_identities="
                         f"{cfg.adapt.num_identities} a batch needs (DBSCAN eps {eps:.3f}); set adapt.eps, lower "
                         "adapt.min_samples or adapt.num_identities, or try adapt.outliers=instances")
    memory.reset(centroids(features, train_labels))
    result = _train_round(view, cfg, images, train_labels, criterion, optimization, device, round_index, stop)
    if result.interrupted:
        return None
    record = {"epoch": round_index + 1, "round": round_index + 1, "eps": round(eps, 4), "clusters": clusters,
              "outliers": outliers,
              "clustered_images": int((labels >= 0).sum()), "loss": result.losses, "lr": optimization.lr,
              "images_per_s": round(result.images_per_second, 2),
              "seconds": round(time.perf_counter() - start, 2)}
    log.info("round %d/%d: eps %.3f, %d clusters, %d outliers of %d images", round_index + 1, cfg.adapt.rounds, eps,
             clusters, outliers, labels.size)
    if on_round is not None:
        on_round(record, labels, images.paths)
    return record


def _resume_state(cfg: Config, output: Path) -> dict | None:
    """The checkpoint to continue from (``resume=true`` and ``RUN/last.pt`` exists), checked to be
    the same adaptation (only ``RESUMABLE_KEYS`` may change)."""
    last = output / "last.pt"
    if cfg.resume is False or not last.is_file():
        if cfg.resume is True:
            log.warning("resume=true but %s does not exist yet: starting from the source weights", last)
        return None
    if cfg.resume is not True:
        raise ConfigError(f"resume={cfg.resume!r}: reid adapt continues RUN/last.pt only; use resume=true")
    state = load_checkpoint(last)
    if "progress" not in state or "config" not in state:
        raise CheckpointError(f"{last}: cannot resume: it holds no adaptation progress")
    try:
        stored = to_dict(from_dict(state["config"]))
    except ConfigError as err:
        raise CheckpointError(f"{last}: its stored config no longer fits this version ({err})") from None
    changed = [k for k, _, _ in _differences(stored, to_dict(cfg)) if not k.startswith(RESUMABLE_KEYS)]
    if changed:
        raise ConfigError(f"{changed[0]}: differs from the run in {output} ({len(changed)} setting(s) changed); a "
                          "resumed adaptation continues the same one: drop the change, or choose a new --output")
    return state

