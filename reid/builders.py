"""Config -> components. The only place where the config schema meets the library.

The library's functions take plain arguments; the tools call these builders so that every
script reads a config the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import Config, ConfigError, from_dict
from .data import DATASETS, build_dataset, combine_datasets
from .data.datasets.base import ReidDataset, validation_split
from .data.datasets.combine import SourceOffsets
from .data.loaders import build_test_loader, build_train_loader
from .losses import build_loss
from .losses.weighted import WeightedLosses
from .models import ReidModel, build_model
from .models.model import check_feature
from .models.pretrained import hub_offline
from .models.weights import is_network_error
from .optim import Optimization, amp_settings, build_optimizer, build_scheduler

log = logging.getLogger("reid")

# data keys that some loaders take (passed to those whose signature has them)
DATASET_OPTIONS = ("market1501_500k", "cuhk03_labeled")
# test keys that choose the test sets, not how one is scored
TEST_SET_KEYS = ("datasets", "roots")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return device


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of a run: its name (``synthetic`` or a key of ``DATASETS``) and its folder."""

    name: str
    root: str


@dataclass
class RunDatasets:
    """What a training run reads: the training set (several sources combined), where each source
    landed in it, and the test sets by label (a dataset's name; ``name (root)`` when two test
    sets share a name), each evaluated on its own."""

    train: ReidDataset
    sources: list[SourceOffsets]
    tests: dict[str, ReidDataset]


def training_sources(cfg: Config) -> list[DatasetSource]:
    """``data.name`` with ``data.root``: one source, or one per list entry (config.py checks the lengths)."""
    names = cfg.data.name if isinstance(cfg.data.name, list) else [cfg.data.name]
    roots = cfg.data.root if isinstance(cfg.data.root, list) else [cfg.data.root] * len(names)
    return [DatasetSource(name, root) for name, root in zip(names, roots)]


def test_sources(cfg: Config) -> list[DatasetSource]:
    """The test sets: ``test.datasets`` (in ``test.roots``, else in the folder of the training source
    of that name), or, when it is empty, every training source."""
    sources, names = training_sources(cfg), cfg.test.datasets
    if not names:
        return sources
    if cfg.test.roots:
        return [DatasetSource(name, root) for name, root in zip(names, cfg.test.roots)]
    roots: dict[str, str] = {}
    for source in sources:
        roots.setdefault(source.name, source.root)
    for i, name in enumerate(names):
        if name not in roots:
            raise ValueError(f"test.datasets[{i}]: {name} is not among data.name ({', '.join(roots)}), so its folder "
                             f"is unknown: give one folder per test.datasets entry in test.roots")
    return [DatasetSource(name, roots[name]) for name in names]


def known_root(cfg: Config, name: str) -> str | None:
    """The folder ``cfg`` gives the dataset ``name``: a test set's (``test.roots``), else the first
    training source's of that name; None when it names none."""
    listed = list(zip(cfg.test.datasets, cfg.test.roots)) + [(s.name, s.root) for s in training_sources(cfg)]
    return next((root for listed_name, root in listed if listed_name == name), None)


def datasets_from_config(cfg: Config, *, generate: bool = True) -> RunDatasets:
    """Every dataset of a training run, each read (and checked) once before any work: the training
    sources combined (:func:`reid.data.combine_datasets`, ``data.combine_all``), the test sets.
    With ``data.val_ids`` > 0 the training set's validation split is both (:func:`validation_split`;
    held out are the highest combined ids, so each source's offset still holds)."""
    loaded: dict[DatasetSource, ReidDataset] = {}

    def load(source: DatasetSource) -> ReidDataset:
        if source not in loaded:
            loaded[source] = load_source(cfg, source, generate=generate)
        return loaded[source]

    training = [load(source) for source in training_sources(cfg)]
    tests = [] if cfg.data.val_ids else [(source, load(source)) for source in test_sources(cfg)]
    train, offsets = combine_datasets(training, combine_all=cfg.data.combine_all)
    if cfg.data.val_ids:
        train = validation_split(train, cfg.data.val_ids)
        return RunDatasets(train, offsets, {train.name: train})
    counts = Counter(source.name for source, _ in tests)
    labelled = {source.name if counts[source.name] == 1 else f"{source.name} ({source.root})": dataset
                for source, dataset in tests}
    return RunDatasets(train, offsets, labelled)


def dataset_from_config(cfg: Config, *, generate: bool = True) -> ReidDataset:
    """The one dataset a config evaluates on (its training set too when it names one source);
    ``synthetic`` is generated on first use (cached in its root).

    ``generate=False`` (evaluation tools) never writes: a synthetic dataset that is not there
    is an error naming the folder, instead of a new dataset quietly made in the working folder.
    With ``data.val_ids`` > 0, the (combined) training set's validation split. A config with
    several test sets is an error that says how to choose one.
    """
    if cfg.data.val_ids:
        return datasets_from_config(cfg, generate=generate).train
    tests = test_sources(cfg)
    if len(tests) > 1:
        names = ", ".join(f"{source.name} ({source.root})" for source in tests)
        raise ValueError(f"this config evaluates {len(tests)} test sets ({names}); choose one with "
                         "test.datasets=[NAME] (and test.roots=[FOLDER]), or reid test --dataset NAME")
    return load_source(cfg, tests[0], generate=generate)


def load_source(cfg: Config, source: DatasetSource, *, generate: bool) -> ReidDataset:
    """One dataset: read from its folder with the ``data`` options its loader takes
    (``skip_invalid``, ``market1501_500k``, ``cuhk03_labeled``), or the synthetic set."""
    if source.name == "synthetic":
        from .data.synthetic import MANIFEST_NAME, make_synthetic_market

        s = cfg.synthetic
        if not generate:
            folder = Path(source.root)
            if not (folder / MANIFEST_NAME).is_file():
                raise FileNotFoundError(
                    f"data.root={source.root}: no synthetic dataset in {folder.resolve()} (evaluation does not "
                    "generate one); point data.root at the folder the model was trained with, or make it "
                    f"with: reid make-synthetic --root {folder} --train-ids {s.num_train_ids} --test-ids "
                    f"{s.num_test_ids} --cameras {s.num_cameras} --height {s.height} --width {s.width} --seed {s.seed}")
            return build_dataset("market1501" if s.num_cameras <= 6 else "custom", folder)
        folder = make_synthetic_market(
            source.root, num_train_ids=s.num_train_ids, num_test_ids=s.num_test_ids,
            num_cameras=s.num_cameras, image_size=(s.height, s.width), seed=s.seed,
        )
        # Market's rule allows cameras 1..6; a synthetic set with more is read by the custom
        # loader, which takes the same names without the camera limit.
        return build_dataset("market1501" if s.num_cameras <= 6 else "custom", folder)
    accepted = inspect.signature(DATASETS[source.name]).parameters
    options = {key: getattr(cfg.data, key) for key in DATASET_OPTIONS if key in accepted}
    return build_dataset(source.name, source.root, skip_invalid=cfg.data.skip_invalid, **options)


def train_loader_from_config(cfg: Config, dataset: ReidDataset | None, rank: int = 0, world_size: int = 1, *,
                             items=None, camera_balanced: bool = False):
    """Training batches of ``dataset.train`` (or of ``items``: reid adapt's pseudo-labelled images)."""
    d = cfg.data
    return build_train_loader(
        dataset.train if items is None else items, camera_balanced=camera_balanced, height=d.height, width=d.width, num_identities=d.num_identities,
        num_instances=d.num_instances, num_workers=d.num_workers, seed=cfg.train.seed,
        rank=rank, world_size=world_size, pipeline=d.pipeline, flip_prob=d.flip_prob, padding=d.padding,
        color_jitter=d.color_jitter, erasing_prob=d.erasing_prob,
    )


def test_loader_from_config(cfg: Config, items):
    """Un-augmented images of ``items`` in order, sized and batched as ``cfg``'s test pipeline says."""
    d = cfg.data
    return build_test_loader(items, height=d.height, width=d.width, batch_size=d.test_batch_size,
                             num_workers=d.num_workers, pipeline=d.pipeline, resize=d.resize)


def test_loaders_from_config(cfg: Config, dataset: ReidDataset):
    """(query loader, gallery loader); one loader twice for a leave-one-out dataset."""
    query_loader = test_loader_from_config(cfg, dataset.query)
    if dataset.gallery is dataset.query:
        return query_loader, query_loader
    return query_loader, test_loader_from_config(cfg, dataset.gallery)


def model_from_config(cfg: Config, num_classes: int, *, load_pretrained: bool = True) -> ReidModel:
    m = cfg.model
    pretrained: bool | str = False
    if load_pretrained:
        pretrained = m.weights or m.pretrained
    return build_model(
        m.backbone, num_classes, pretrained=pretrained, last_stride=m.last_stride, pooling=m.pooling,
        gem_p=m.gem_p, pool_lambda=m.pool_lambda, embedding_dim=m.embedding_dim, neck=m.neck, leaky_relu=m.leaky_relu,
        channels_last=m.channels_last, freeze_bn=m.freeze_bn, freeze_layers=m.freeze_layers,
    )


def criterion_from_config(cfg: Config) -> WeightedLosses:
    """The weighted sum of ``cfg.losses``; a name may appear once (the log keys terms by name)."""
    losses: dict[str, tuple[float, nn.Module]] = {}
    for i, spec in enumerate(cfg.losses):
        if spec.name in losses:
            raise ValueError(f"losses[{i}]: loss {spec.name!r} is listed twice")
        try:
            losses[spec.name] = (spec.weight, build_loss(spec.name, **spec.params))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"losses[{i}] ({spec.name}): {err}") from None
    return WeightedLosses(losses)


def optimization_from_config(cfg: Config, modules: list[nn.Module], steps_per_epoch: int,
                             device: torch.device) -> Optimization:
    """Optimizer over the trainable parameters of ``modules`` (model and criterion), its
    per-iteration LR schedule, mixed precision, and the trunk's L2-SP anchors as ``train`` says.
    Called on the model as built, before a checkpoint is restored into it."""
    t = cfg.train
    # Parameter groups: the heads and loss parameters at lr, then (when train.trunk_lr_factor
    # is not 1) the trunk (a ReidModel's ``backbone``) at lr * trunk_lr_factor.
    trunk = {id(p) for module in modules if isinstance(module, ReidModel) for p in module.backbone.parameters()}
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params}]
    if t.trunk_lr_factor != 1.0:
        groups = [{"params": [p for p in params if id(p) not in trunk]},
                  {"params": [p for p in params if id(p) in trunk], "lr": t.lr * t.trunk_lr_factor}]
    optimizer = build_optimizer(groups, t.optimizer, t.lr, t.weight_decay, t.momentum)
    scheduler = build_scheduler(
        optimizer, epochs=t.epochs, steps_per_epoch=steps_per_epoch, schedule=t.scheduler,
        warmup_epochs=t.warmup_epochs, warmup_factor=t.warmup_factor, milestones=t.milestones, gamma=t.gamma,
    )
    amp_dtype, scaler = amp_settings(t.amp, device)
    # The anchors of decoupled L2-SP: the trunk's weights as built (pretrained), before any step.
    anchors = {p: p.detach().clone() for p in params if id(p) in trunk} if t.trunk_anchor > 0 else {}
    return Optimization(optimizer, scheduler, scaler, amp_dtype, t.grad_clip, anchors, t.trunk_anchor)


def steps_per_epoch(cfg: Config, train_loader) -> int:
    """One pass of the identity sampler, or ``train.iters_per_epoch`` batches when that is fewer."""
    steps = len(train_loader)
    return min(steps, cfg.train.iters_per_epoch) if cfg.train.iters_per_epoch > 0 else steps


def embedding_options(cfg: Config, *, feature: str | None = None, flip: bool | None = None) -> dict[str, Any]:
    """``feature`` and ``flip`` for ``ReidModel.embed`` / ``extract_features``: the given ones, else
    the config's ``test.feature`` / ``test.flip`` (a checkpoint's: the embeddings its evaluation
    ranked with)."""
    return {"feature": check_feature(cfg.test.feature if feature is None else feature),
            "flip": bool(cfg.test.flip if flip is None else flip)}


def metric_options(cfg: Config, dataset: ReidDataset | None = None, *, rerank: bool | None = None) -> dict[str, Any]:
    """Keyword arguments of ``metrics_from_features``: the ``test`` section without the embedding
    keys, and the dataset's protocol and Recall@K when a dataset is given."""
    options = {k: v for k, v in dataclasses.asdict(cfg.test).items()
               if k not in embedding_options(cfg) and k not in TEST_SET_KEYS}
    options["memory_mb"] = options["memory_mb"] or None  # 0: the library's default budget
    if rerank is not None:
        options["rerank"] = rerank
    if dataset is not None:
        options.update(protocol=dataset.protocol, recall_ks=tuple(dataset.recall_ks))
    return options


def eval_options(cfg: Config, dataset: ReidDataset | None = None, *, rerank: bool | None = None) -> dict[str, Any]:
    """Keyword arguments of ``reid.engine.evaluate``: :func:`embedding_options` and :func:`metric_options`."""
    return {**embedding_options(cfg), **metric_options(cfg, dataset, rerank=rerank)}


def checkpoint_config(state: dict[str, Any], path: str | Path) -> Config:
    """The config stored in a loaded checkpoint ``state`` (read from ``path``, named in errors)."""
    if "config" not in state or "num_classes" not in state:
        raise ValueError(f"{path}: checkpoint has no stored config/num_classes; was it written by reid train?")
    try:
        return from_dict(state["config"])
    except ConfigError as err:
        raise ConfigError(f"{path}: stored config: {err}") from None


def model_from_checkpoint(state: dict[str, Any], path: str | Path, device: str | torch.device = "cpu") -> ReidModel:
    """The model a loaded checkpoint ``state`` was trained with (architecture from its stored
    config), on ``device`` in eval mode."""
    cfg = checkpoint_config(state, path)
    try:
        # Local files only: an `hf-hub:` backbone's architecture (or any other hub lookup) never
        # makes reading a checkpoint reach for the network.
        with hub_offline(True):
            model = model_from_config(cfg, state["num_classes"], load_pretrained=False)
    except Exception as err:
        if not is_network_error(err):
            raise
        raise FileNotFoundError(
            f"{path}: model.backbone={cfg.model.backbone!r} needs files from the Hugging Face hub that are not in the "
            "local cache, and loading a checkpoint never downloads; build the model once where the hub is reachable "
            f"(timm.create_model({cfg.model.backbone!r}) caches them), then run again") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit model {cfg.model.backbone!r}: {err}") from None
    return model.to(device).eval()


def load_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ReidModel, Config]:
    """Read a checkpoint (as data only) and rebuild its model; (model, stored config)."""
    state = load_checkpoint(path)
    return model_from_checkpoint(state, path, device), checkpoint_config(state, path)
