"""Typed experiment configuration: dataclass schema, YAML files as deltas, dotted overrides.

Precedence (lowest to highest): the dataclass defaults, ``configs/base.yaml`` (or whatever the
file names in ``_base_``), the experiment file, then ``key=value`` overrides from the command
line. Every key is checked against the schema: an unknown key or a value of the wrong type is
an error that names the key and what was expected. Two levels only (``train.lr``), so a config
reads like a table.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | market1501 | dukemtmcreid | custom (see reid.data.DATASETS)
    root: str = "datasets/synthetic"
    height: int = 256
    width: int = 128
    num_identities: int = 16  # P identities per batch (per process)
    num_instances: int = 4  # K images per identity
    num_workers: int = 2
    test_batch_size: int = 128
    flip_prob: float = 0.5
    padding: int = 10
    color_jitter: bool = False
    erasing_prob: float = 0.5
    skip_invalid: bool = False  # skip file names that do not match the dataset's pattern


@dataclass
class SyntheticConfig:
    """Arguments of reid.data.synthetic.make_synthetic_market, used when data.name == synthetic."""

    num_train_ids: int = 100
    num_test_ids: int = 100
    num_cameras: int = 6
    height: int = 128
    width: int = 64
    seed: int = 0


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # any timm model name
    pretrained: bool = False  # weights from the timm hub (needs network)
    weights: str = ""  # or a local weights file for the trunk
    last_stride: int = 1
    pooling: str = "avg"  # avg | max | gem | mix
    gem_p: float = 3.0
    pool_lambda: float = 0.5  # mix pooling: lam * max + (1 - lam) * avg
    neck: bool = True  # BNNeck (Luo et al. 2019)
    leaky_relu: float = 0.0  # > 0: leaky final ReLU of the trunk (Group Loss++)
    channels_last: bool = False


@dataclass
class LossConfig:
    name: str = "cross_entropy"
    weight: float = 1.0
    params: dict = field(default_factory=dict)


def _default_losses() -> list[LossConfig]:
    return [
        LossConfig("group", 1.0, {"temperature": 80.0, "num_anchors": 2, "num_iterations": 1}),
        LossConfig("cross_entropy", 1.0, {"label_smoothing": 0.1}),
    ]


@dataclass
class TrainConfig:
    epochs: int = 60
    iters_per_epoch: int = 0  # 0: one pass of the identity sampler
    optimizer: str = "radam"  # adam | adamw | sgd | radam
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | step
    warmup_epochs: int = 5
    warmup_factor: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [40, 50])
    gamma: float = 0.1
    amp: str = "none"  # none | bf16 | fp16 (CUDA only)
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 10  # evaluate every N epochs (and always after the last)
    eval_untrained: bool = False  # also evaluate the initial model (the demo's baseline)
    deterministic: bool = False


@dataclass
class TestConfig:
    feature: str = "bn"  # bn: after BNNeck | pre_bn: pooled trunk features
    flip: bool = False  # flip test-time augmentation
    normalize: bool = True  # L2-normalise features before matching
    beta: float = 0.0  # > 0: beta normalisation normalize(f) + beta * f (Group Loss++)
    metric: str = "euclidean"  # euclidean (squared) | cosine
    rerank: bool = True  # also report k-reciprocal re-ranking in metrics.json
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    max_rank: int = 50


@dataclass
class Config:
    output_dir: str = "outputs/run"
    resume: Union[bool, str] = False  # true: the output folder's last checkpoint; or a path
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: list[LossConfig] = field(default_factory=_default_losses)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# ---------------------------------------------------------------------------------------------
# Type checking and merging


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
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
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
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
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file, following ``_base_: other.yaml`` (relative to the file) first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
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


_CHOICES = {
    "model.pooling": ("avg", "max", "gem", "mix"),
    "train.optimizer": ("adam", "adamw", "sgd", "radam"),
    "train.scheduler": ("cosine", "step"),
    "train.amp": ("none", "bf16", "fp16"),
    "test.feature": ("bn", "pre_bn"),
    "test.metric": ("cosine", "euclidean"),
}


def validate(cfg: Config) -> None:
    """Checks that types alone cannot express: choices and ranges."""
    for dotted, choices in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{dotted}: expected one of {', '.join(choices)}, got {value!r}")
    positive = ["data.height", "data.width", "data.num_identities", "data.num_instances",
                "data.test_batch_size", "train.epochs", "train.eval_every", "test.k1", "test.max_rank"]
    for dotted in positive:
        section, name = dotted.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{dotted}: expected a positive integer, got {getattr(getattr(cfg, section), name)}")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: expected a positive number, got {cfg.train.lr}")
    if not cfg.losses:
        raise ConfigError("losses: expected at least one loss, e.g. [{name: cross_entropy}]")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    """Rebuild a Config from ``to_dict`` output (e.g. the copy stored in a checkpoint)."""
    return _merge(Config(), values)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
