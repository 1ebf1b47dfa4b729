"""Typed experiment configuration: dataclass schema, YAML files as deltas, dotted overrides.

Precedence (lowest to highest): the dataclass defaults, ``configs/base.yaml`` (or whatever the
file names in ``_base_``), the experiment file, then ``key=value`` overrides from the command
line. Every key is checked against the schema: an unknown key or a value of the wrong type is
an error that names the key and what was expected. Two levels only (``train.lr``), so a config
reads like a table.

The schema below is the one home of every key: its default, its one-line help, its valid
choices (the constants of the modules that use them) and its valid range. ``configs/base.yaml``
is generated from it (``python -m reid.config --write``) and a test keeps the two equal.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from .data import DATASETS
from .data.transforms import PIPELINES
from .evaluation.distance import METRICS
from .io import atomic_write_text
from .losses import LOSSES, loss_parameters
from .models.heads import POOLINGS
from .models.model import FEATURE_KINDS
from .optim import AMP_MODES, OPTIMIZERS, SCHEDULES

BASE_YAML = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
GENERATE_COMMAND = "python -m reid.config --write"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# ---------------------------------------------------------------------------------------------
# Schema helpers: a key is a dataclass field whose metadata holds its help, and optionally its
# choices (a tuple, or a function returning one for registries that grow at run time) and a
# range check (predicate, "what was expected").

Check = tuple[Callable[[Any], bool], str]


def _key(default: Any, help: str, *, choices: Any = None, check: Check | None = None) -> Any:
    metadata = {"help": help, "choices": choices, "check": check}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_POSITIVE: Check = (lambda v: v >= 1, "a positive integer")
_FRACTION: Check = (lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _int_at_least(low: int) -> Check:
    return (lambda v: v >= low, f"an integer >= {low}")


def _int_between(low: int, high: int) -> Check:
    return (lambda v: low <= v <= high, f"an integer in {low}..{high}")


def _at_least(low: float) -> Check:
    return (lambda v: v >= low, f"a number >= {low:g}")


def _above(low: float) -> Check:
    return (lambda v: v > low, f"a number > {low:g}")


# DataLoader workers per CPU beyond which a config is refused: each worker is a process with its
# own copy of the dataset lists and of torch (hundreds of MB); 1000 of them exhaust any machine.
MAX_WORKERS_PER_CPU = 4
# Sections deeper than this in a YAML file or an override value are refused (the schema has two
# levels; loss parameters a few more), before a deep tree exhausts the parser's recursion.
MAX_YAML_DEPTH = 32


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or container allotment)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _dataset_names() -> tuple[str, ...]:
    return ("synthetic", *sorted(DATASETS))  # the registry as it is now: register_dataset adds names


def _loss_names() -> tuple[str, ...]:
    return tuple(sorted(LOSSES))


# ---------------------------------------------------------------------------------------------
# The schema


@dataclass
class DataConfig:
    name: Union[str, list[str]] = _key("synthetic", "synthetic: generated into root; the others: read from root; "
                                       "a list [market1501, msmt17]: train on all of them at once (identities and "
                                       "cameras offset so that they never collide)", choices=_dataset_names)
    root: Union[str, list[str]] = _key("datasets/synthetic",
                                       "for a real dataset: the folder holding (or the parent of) its split folders; "
                                       "with a list data.name, a list of as many folders")
    height: int = _key(256, "input height in pixels", check=_POSITIVE)
    width: int = _key(128, "input width in pixels", check=_POSITIVE)
    num_identities: int = _key(16, "P identities per batch (per process)", check=_POSITIVE)
    num_instances: int = _key(4, "K images per identity", check=_POSITIVE)
    num_workers: int = _key(2, "data loader processes; 0: load in the main process; at most 4 per CPU",
                            check=_int_at_least(0))
    test_batch_size: int = _key(128, "images per batch when extracting features", check=_POSITIVE)
    pipeline: str = _key("reid", "reid: resize, flip, pad + crop, erasing; retrieval: random resized crop + "
                         "flip, tests resized then centre-cropped", choices=PIPELINES)
    resize: int = _key(256, "retrieval pipeline: shorter side of test images before the centre crop",
                       check=_POSITIVE)
    flip_prob: float = _key(0.5, "probability of a random horizontal flip", check=_FRACTION)
    padding: int = _key(10, "pad then random-crop back to height x width; 0: off", check=_int_at_least(0))
    color_jitter: bool = _key(False, "random brightness, contrast, saturation and hue")
    erasing_prob: float = _key(0.5, "random erasing (Zhong et al. 2020) probability", check=_FRACTION)
    skip_invalid: bool = _key(False, "skip (with one warning naming them) images whose file names break the "
                              "dataset's pattern or that cannot be read")
    val_ids: int = _key(0, "> 0: tune without the test split: hold out the last N training identities and "
                        "evaluate on them (query/gallery) instead of the test split", check=_int_at_least(0))
    combine_all: bool = _key(False, "also train on the query and gallery identities of every data.name dataset "
                             "(torchreid's combineall; junk and distractors left out)")
    market1501_500k: bool = _key(False, "market1501: add the 500,000 distractors of images/ (beside the split "
                                 "folders) to the gallery")
    cuhk03_labeled: bool = _key(False, "cuhk03_np: the hand-drawn (labeled) boxes instead of the detected ones")


@dataclass
class SyntheticConfig:
    """Arguments of reid.data.synthetic.make_synthetic_market, used when data.name == synthetic.

    The ranges are that function's own limits (4-digit pids, 1-digit cameras, crops >= 32 x 16).
    """

    num_train_ids: int = _key(100, "training identities (odd pids)", check=_int_between(1, 5000))
    num_test_ids: int = _key(100, "query and gallery identities (even pids)", check=_int_between(1, 4999))
    num_cameras: int = _key(6, "more than 6 is read with the custom loader", check=_int_between(2, 9))
    height: int = _key(128, "height of the generated crops", check=_int_at_least(32))
    width: int = _key(64, "width of the generated crops", check=_int_at_least(16))
    seed: int = _key(0, "the same seed and settings give byte-identical images", check=_int_at_least(0))


@dataclass
class ModelConfig:
    backbone: str = _key("resnet50", "any timm model name")
    pretrained: bool = _key(False, "ImageNet weights: the timm hub, else a local source (mobilenetv2_100 offline)")
    weights: str = _key("", "or a local weights file for the trunk")
    last_stride: int = _key(1, "ResNet-style trunks: stride of the last stage, 1 or 2",
                            check=(lambda v: v in (1, 2), "1 or 2"))
    pooling: str = _key("avg", "mix: pool_lambda * max + (1 - pool_lambda) * avg", choices=POOLINGS)
    gem_p: float = _key(3.0, "gem pooling: initial exponent p", check=_above(0))
    pool_lambda: float = _key(0.5, "mix pooling: weight of max pooling", check=_FRACTION)
    embedding_dim: int = _key(0, "> 0: a linear layer from the pooled features to this many dimensions "
                              "(512 in the retrieval papers); 0: none", check=_int_at_least(0))
    neck: bool = _key(True, "BNNeck (Luo et al. 2019)")
    freeze_bn: bool = _key(False, "the trunk's BatchNorm layers keep their (ImageNet) running statistics while "
                           "training; their affine weights still learn")
    freeze_layers: list[str] = _key([], "trunk layers kept exactly as built (weights and BatchNorm statistics), "
                                    "named as in the timm model, e.g. [conv_stem, bn1, blocks.0]")
    leaky_relu: float = _key(0.0, "> 0: leaky final ReLU of the trunk with this slope (Group Loss++)",
                             check=_at_least(0))
    channels_last: bool = _key(False, "channels-last memory format for the convolutions")


@dataclass
class LossConfig:
    name: str = _key("cross_entropy", "a loss of reid.losses.LOSSES", choices=_loss_names)
    weight: float = _key(1.0, "multiplies this loss in the sum; 0: computed and logged, not trained",
                         check=_at_least(0))
    params: dict = _key({}, "keyword arguments of the loss class")


@dataclass
class TrainConfig:
    epochs: int = _key(60, "training epochs", check=_POSITIVE)
    iters_per_epoch: int = _key(0, "0: one pass of the identity sampler; N: at most N batches",
                                check=_int_at_least(0))
    optimizer: str = _key("radam", "RAdam is the Group Loss papers' optimizer", choices=OPTIMIZERS)
    lr: float = _key(3.5e-4, "base learning rate", check=_above(0))
    trunk_lr_factor: float = _key(1.0, "the trunk learns at lr * this (the heads and loss parameters at lr); "
                                  "< 1 keeps more of a pretrained trunk", check=_above(0))
    trunk_anchor: float = _key(0.0, "> 0: decoupled L2-SP: after each step the trunk's weights move toward their "
                               "initial (pretrained) values by trunk lr * this * (w - w0); trunk lr * this must stay below 1",
                               check=_at_least(0))
    weight_decay: float = _key(5e-4, "L2 penalty of the optimizer", check=_at_least(0))
    momentum: float = _key(0.9, "sgd only", check=_at_least(0))
    scheduler: str = _key("cosine", "after warmup; step: milestones, gamma", choices=SCHEDULES)
    warmup_epochs: int = _key(5, "linear warmup from warmup_factor * lr to lr", check=_int_at_least(0))
    warmup_factor: float = _key(0.01, "learning-rate factor at the start of warmup",
                                check=(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    milestones: list[int] = _key([40, 50], "step schedule: epochs at which the lr is multiplied by gamma")
    gamma: float = _key(0.1, "step schedule: lr factor at each milestone", check=_above(0))
    amp: str = _key("none", "mixed precision, CUDA only", choices=AMP_MODES)
    grad_clip: float = _key(0.0, "max gradient norm; 0: off", check=_at_least(0))
    seed: int = _key(0, "random seed (plus the process rank)", check=_int_at_least(0))
    device: str = _key("auto", "auto: cuda when available; or cpu, cuda, cuda:N",
                       check=(lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                              "auto, cpu, cuda or cuda:N"))
    eval_every: int = _key(10, "evaluate every N epochs (and always after the last)", check=_POSITIVE)
    eval_untrained: bool = _key(False, "also evaluate the model before training")
    deterministic: bool = _key(False, "deterministic algorithms (slower)")


@dataclass
class TestConfig:
    feature: str = _key("bn", "bn: after BNNeck; pre_bn: pooled trunk features", choices=FEATURE_KINDS)
    flip: bool = _key(False, "flip test-time augmentation")
    normalize: bool = _key(True, "L2-normalise features")
    beta: float = _key(0.0, "beta normalisation normalize(f) + beta * f; 0: off (Group Loss++)",
                       check=_at_least(0))
    metric: str = _key("euclidean", "euclidean is squared", choices=METRICS)
    rerank: bool = _key(True, "the final evaluation also reports k-reciprocal re-ranking")
    k1: int = _key(20, "re-ranking: size of the k-reciprocal neighbourhoods", check=_POSITIVE)
    k2: int = _key(6, "re-ranking: neighbours of the query expansion (at most k1 + 1)", check=_int_at_least(1))
    lambda_value: float = _key(0.3, "re-ranking: weight of the original distance", check=_FRACTION)
    rerank_knn: str = _key("torch", "re-ranking neighbours: torch or faiss (exact search, the same result), or "
                           "faiss-hnsw (approximate, for sets too large for the N x N sweep; its recall is "
                           "logged)", choices=("torch", "faiss", "faiss-hnsw"))
    nmi: bool = _key(True, "retrieval (leave-one-out) sets: also k-means NMI and clustering F1 of the test set")
    max_rank: int = _key(50, "CMC ranks computed", check=_POSITIVE)
    memory_mb: float = _key(0.0, "MiB one block of the re-ID evaluation and the report may take (the query x gallery "
                            "distances are never held whole; results do not depend on it); 0: a quarter of the "
                            "memory available", check=_at_least(0))
    datasets: list[str] = _key([], "the test sets evaluated, each on its own (cross-domain testing); []: each "
                               "data.name dataset", choices=_dataset_names)
    roots: list[str] = _key([], "one folder per test.datasets entry; []: the data.root of the data.name entry "
                            "of the same name")


@dataclass
class AdaptConfig:
    """reid adapt: unsupervised adaptation by clustering (reid/adaptation/); defaults: Cluster Contrast."""

    rounds: int = _key(8, "rounds of extract -> Jaccard distance -> DBSCAN -> training", check=_POSITIVE)
    iters_per_round: int = _key(0, "training batches per round; 0: one pass of the identity sampler over the "
                                "pseudo-labelled images", check=_int_at_least(0))
    lr: float = _key(3.5e-4, "Adam learning rate (constant)", check=_above(0))
    num_identities: int = _key(16, "P: pseudo-identities per batch (the source's data.num_identities is its own "
                               "recipe's)", check=_int_at_least(2))
    num_instances: int = _key(4, "K: images per pseudo-identity in a batch", check=_int_at_least(1))
    k1: int = _key(20, "Jaccard distance: size of the k-reciprocal neighbourhoods (about the images of one "
                   "person; SpCL's 30 is for Market's 12,936)", check=_POSITIVE)
    k2: int = _key(6, "Jaccard distance: neighbours of the query expansion (at most k1 + 1)", check=_POSITIVE)
    eps: float = _key(0.0, "DBSCAN: largest Jaccard distance between neighbours; 0: automatic, each round "
                      "the eps that makes adapt.core_fraction of the images core points",
                      check=(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    core_fraction: float = _key(0.6, "adapt.eps=0: eps is this quantile of each image's distance to its "
                                "(min_samples - 1)-th nearest image", check=(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    min_samples: int = _key(4, "DBSCAN: neighbours (itself included) that make an image a core point",
                            check=_POSITIVE)
    outliers: str = _key("drop", "DBSCAN's noise: drop (left out of the round) or instances (one "
                         "pseudo-identity each)", choices=("drop", "instances"))
    temperature: float = _key(0.05, "cluster-memory InfoNCE temperature", check=_above(0))
    momentum: float = _key(0.1, "cluster memory: weight of the old centroid in each update", check=_FRACTION)
    feature: str = _key("bn", "the feature clustered and trained: bn (after BNNeck) or pre_bn",
                        choices=FEATURE_KINDS)
    camera_standardized: bool = _key(True, "cluster features standardised per camera (each dimension's mean and "
                                     "std over the camera's images): people, not camera styles, cluster")
    camera_balanced: bool = _key(True, "each pseudo-identity's K images of a batch from as many cameras as possible")
    tracklets: bool = _key(True, "use IMAGES/tracklets.csv (reid crops): one tracklet is one person, two crops "
                           "of one frame are two")


@dataclass
class Config:
    output_dir: str = _key("outputs/run", "the run's folder: checkpoints, logs, metrics",
                           check=(lambda v: v.strip() != "", "a folder name, not empty (use . for this folder)"))
    resume: Union[bool, str] = _key(False, "true: continue from OUTPUT_DIR/last.pt; or a checkpoint path")
    overwrite: bool = _key(False, "true: a fresh run may replace the run already in output_dir "
                           "(its checkpoints, logs and metrics)")
    data: DataConfig = _key(DataConfig, "the dataset, the P x K identity batches and the augmentations")
    synthetic: SyntheticConfig = _key(SyntheticConfig, "used when data.name is synthetic: generated once into "
                                      "data.root")
    model: ModelConfig = _key(ModelConfig, "trunk, pooling and head")
    losses: list[LossConfig] = _key([
        LossConfig("group", 1.0, {"temperature": 80.0, "num_anchors": 2, "num_iterations": 1}),
        LossConfig("cross_entropy", 1.0, {"label_smoothing": 0.1}),
    ], "summed with their weights")
    train: TrainConfig = _key(TrainConfig, "optimisation and the training loop")
    test: TestConfig = _key(TestConfig, "evaluation: features, matching, re-ranking")
    adapt: AdaptConfig = _key(AdaptConfig, "reid adapt: pseudo-labels by clustering unlabelled images")


# ---------------------------------------------------------------------------------------------
# Type checking and merging


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, getattr(types, "UnionType", Union)):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping with keys {_field_names(tp)}, got {value!r}")
        return _merge(tp(), value, key)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        # YAML reads 1e-4 as a string and 3 as an int; both are meant as floats.
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # inf / nan pass every range check and poison the training
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # a schema bug, not user error


def _field_names(cls: Any) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _merge(obj: Any, values: dict, prefix: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with ``values`` (a nested dict) merged in."""
    obj = copy.deepcopy(obj)
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            if (prefix, name) in RETIRED_KEYS:
                raise ConfigError(f"{key}: this key was retired; use {RETIRED_KEYS[prefix, name]}")
            where = f"section '{prefix}'" if prefix else "the top level"
            raise ConfigError(f"unknown key '{key}'; valid keys in {where}: {_field_names(obj)}")
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            setattr(obj, name, _merge(current, value, key))
        else:
            setattr(obj, name, _coerce(value, tp, key))
    return obj


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-3", "losses=[{name: triplet}]"]`` -> a nested dict (values read as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.epochs=3")
        value = _safe_yaml(raw, f"override '{item}': value") if raw != "" else ""
        _set_dotted(tree, key.strip(), value)
    return tree


def _safe_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``; invalid or too deeply nested YAML is a ConfigError naming ``what``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: not valid YAML ({err})") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply (expected at most {MAX_YAML_DEPTH} levels)") from None
    pending = [(data, 1)]
    while pending:  # iteratively: the check itself must not recurse
        node, depth = pending.pop()
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{what}: nested too deeply (expected at most {MAX_YAML_DEPTH} levels)")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children)
    return data


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file, following ``_base_: other.yaml`` (relative to the file) first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = _safe_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: _base_: expected the path of another config file (a string), got {base!r}")
    merged = _read_yaml(path.parent / base, seen + (path,))
    return _deep_update(merged, data)


def _deep_update(base: dict, delta: dict) -> dict:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (and its ``_base_`` chain), then dotted overrides."""
    cfg = Config()
    if path is not None:
        try:
            cfg = _merge(cfg, _read_yaml(Path(path)))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A validated copy of ``cfg`` with ``key=value`` overrides applied."""
    cfg = _merge(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that types alone cannot express: choices, ranges and the losses' parameters."""
    _check_fields(cfg, "")
    if cfg.adapt.k2 > cfg.adapt.k1 + 1:
        raise ConfigError(f"adapt.k2: expected an integer <= k1 + 1 = {cfg.adapt.k1 + 1}, got {cfg.adapt.k2!r}")
    workers, cpus = cfg.data.num_workers, usable_cpus()
    if workers > MAX_WORKERS_PER_CPU * cpus:
        raise ConfigError(f"data.num_workers: expected at most {MAX_WORKERS_PER_CPU} per CPU of this machine "
                          f"({cpus} CPUs: {MAX_WORKERS_PER_CPU * cpus}), got {workers}")
    if cfg.test.k2 > cfg.test.k1 + 1:
        raise ConfigError(f"test.k2: expected an integer <= k1 + 1 = {cfg.test.k1 + 1}, got {cfg.test.k2!r}")
    t = cfg.train
    trunk_lr = t.lr * t.trunk_lr_factor  # the pull's rate is the trunk's lr * trunk_anchor
    if t.trunk_anchor * trunk_lr >= 1:
        raise ConfigError(f"train.trunk_anchor: expected lr * trunk_lr_factor * trunk_anchor < 1 (a larger pull "
                          f"overshoots the pretrained weights), got {t.trunk_anchor!r} at trunk lr {trunk_lr!r}")
    _check_sources(cfg)
    if not cfg.losses:
        raise ConfigError("losses: expected at least one loss, e.g. [{name: cross_entropy}]")
    for i, spec in enumerate(cfg.losses):
        accepted = loss_parameters(spec.name)
        unexpected = sorted(set(spec.params) - set(accepted))
        if unexpected:
            names = ", ".join(repr(str(p)) for p in unexpected)
            raise ConfigError(f"losses[{i}].params: unexpected parameter{'s' if len(unexpected) > 1 else ''} "
                              f"{names} for loss {spec.name!r}; valid: {', '.join(accepted)}")


def _check_sources(cfg: Config) -> None:
    """The dataset lists: one root per name, no source twice, options that name a dataset in use."""
    d = cfg.data
    names = d.name if isinstance(d.name, list) else [d.name]
    if not names:
        raise ConfigError("data.name: expected a dataset name or a non-empty list of them")
    roots = d.root if isinstance(d.root, list) else [d.root] * len(names)
    if len(roots) != len(names) or (len(names) > 1 and not isinstance(d.root, list)):
        raise ConfigError(f"data.root: expected one folder per data.name entry ({len(names)}), e.g. data.root=["
                          f"datasets/market1501, datasets/msmt17] for data.name=[market1501, msmt17]; got {d.root!r}")
    seen = set()
    for i, source in enumerate(zip(names, roots)):
        if source in seen:
            raise ConfigError(f"data.name[{i}]: {source[0]} in {source[1]} is listed twice")
        seen.add(source)
    t = cfg.test
    if t.roots and len(t.roots) != len(t.datasets):
        raise ConfigError(f"test.roots: expected one folder per test.datasets entry ({len(t.datasets)}), "
                          f"got {t.roots!r}")
    if t.datasets and d.val_ids:
        raise ConfigError("test.datasets: data.val_ids > 0 evaluates on held-out training ids instead of test "
                          "sets; set only one of them")
    for option, dataset in (("market1501_500k", "market1501"), ("cuhk03_labeled", "cuhk03_np")):
        if getattr(d, option) and dataset not in names and dataset not in t.datasets:
            raise ConfigError(f"data.{option}: true, but neither data.name nor test.datasets names {dataset}")


def _check_fields(obj: Any, prefix: str) -> None:
    """Each field's choices and range check from its metadata, sections and list items included."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_fields(item, f"{key}[{i}].")
        choices = _choices(f)
        if choices is not None:  # a list value (data.name, test.datasets): each of its items
            for item_key, item in ([(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list)
                                   else [(key, value)]):
                if item not in choices:
                    raise ConfigError(f"{item_key}: expected one of {', '.join(choices)}, got {item!r}")
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"{key}: expected {check[1]}, got {value!r}")


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


# Keys an earlier version stored in every checkpoint's config and this one no longer has: a stored
# config drops them (its checkpoint still loads); a config file or override naming one is refused.
RETIRED_KEYS = {("adapt", "rho"): "adapt.core_fraction (the automatic eps rule changed)"}


def from_dict(values: dict) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. the copy stored in a checkpoint), less the
    ``RETIRED_KEYS`` an earlier version stored."""
    values = dict(values)
    for section, key in RETIRED_KEYS:
        if isinstance(values.get(section), dict) and key in values[section]:
            values[section] = {k: v for k, v in values[section].items() if k != key}
    return _merge(Config(), values)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (all keys), atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# configs/base.yaml, generated from the schema

_HEADER = f"""\
# Every key, its default and what it means. GENERATED from the schema in reid/config.py: change
# the defaults and their help there, then run `{GENERATE_COMMAND}`.
# Experiment files name this file in `_base_` and change only what differs; the command line
# overrides any key: `reid train --config F train.lr=1e-3`.
"""
_COMMENT_COLUMN = 28


def render_base_yaml() -> str:
    """The text of ``configs/base.yaml``: every key with its default and its help as a comment."""
    lines: list[str] = []
    _render(Config(), "", "", lines)
    return _HEADER + "\n".join(lines) + "\n"


def _render(obj: Any, prefix: str, indent: str, lines: list[str], *, comments: bool = True,
            first: str | None = None) -> None:
    """Append the YAML lines of dataclass ``obj``; ``first`` replaces ``indent`` on its first line
    (``- `` for a list item). List items after the first carry no comments."""
    for i, f in enumerate(dataclasses.fields(obj)):
        value, key = getattr(obj, f.name), prefix + f.name
        lead = first if first is not None and i == 0 else indent
        note = _help(f) if comments else ""
        if dataclasses.is_dataclass(value):
            lines.append(_commented(f"{lead}{f.name}:", note))
            _render(value, key + ".", indent + "  ", lines)
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            lines.append(_commented(f"{lead}{f.name}:", note))
            for j, item in enumerate(value):
                _render(item, key + "[].", indent + "  ", lines, comments=comments and j == 0, first=indent + "- ")
        elif isinstance(value, dict) and value:
            lines.append(_commented(f"{lead}{f.name}:", note))
            lines += [f"{indent}  {k}: {_scalar(v)}" for k, v in value.items()]
        else:
            lines.append(_commented(f"{lead}{f.name}: {_scalar(value)}", note))


def _help(f: dataclasses.Field) -> str:
    text, choices = f.metadata.get("help", ""), _choices(f)
    if choices:
        text = " | ".join(choices) + (f" ({text})" if text else "")
    return text


def _commented(line: str, note: str) -> str:
    return f"{line:<{_COMMENT_COLUMN - 2}}  # {note}" if note else line


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").rstrip("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reid.config",
        description="Print configs/base.yaml as generated from the schema in reid/config.py.")
    parser.add_argument("--write", nargs="?", const=BASE_YAML, type=Path, metavar="PATH",
                        help=f"write it (atomically) instead; PATH defaults to {BASE_YAML}")
    args = parser.parse_args(argv)
    text = render_base_yaml()
    if args.write is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.write, text)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
