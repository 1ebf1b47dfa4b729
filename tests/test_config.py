import dataclasses
import os

import pytest
import yaml

import reid.config as config_module
from reid.config import (
    GENERATE_COMMAND, Config, ConfigError, LossConfig, ModelConfig, TrainConfig, from_dict, load_config,
    render_base_yaml, save_config, to_dict,
)
from reid.data import DATASETS
from reid.evaluation.distance import METRICS
from reid.losses import LOSSES
from reid.models import FEATURE_KINDS
from reid.models.heads import POOLINGS
from reid.optim import AMP_MODES, OPTIMIZERS, SCHEDULES

EXPERIMENT_CONFIGS = ["demo.yaml", "demo_scratch.yaml", "demo_ce_triplet.yaml", "market1501_resnet50_group.yaml",
                      "dukemtmc_resnet50_group.yaml", "market1501_resnet50_ce_triplet.yaml", "cub200_group.yaml",
                      "cars196_group.yaml", "sop_group.yaml", "inshop_group.yaml", "fashion_mnist_group.yaml",
                      "msmt17_resnet50_group.yaml", "msmt17_resnet50_ce_triplet.yaml", "cuhk03_np_resnet50_group.yaml",
                      "cuhk03_np_resnet50_ce_triplet.yaml", "multi_source_resnet50_group.yaml"]


def _error(overrides):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# base.yaml: generated from the schema


def test_base_yaml_is_generated_from_the_schema(repo_root):
    shipped = (repo_root / "configs" / "base.yaml").read_text()
    assert shipped == render_base_yaml(), (
        f"configs/base.yaml is out of date with the schema in reid/config.py; regenerate it with: {GENERATE_COMMAND}")


def test_base_yaml_matches_the_dataclass_defaults(repo_root):
    assert load_config(repo_root / "configs" / "base.yaml") == Config()
    assert yaml.safe_load(render_base_yaml()) == to_dict(Config())


def _schema_fields(obj, prefix=""):
    for f in dataclasses.fields(obj):
        yield prefix + f.name, f
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _schema_fields(value, f"{prefix}{f.name}.")
        elif f.name == "losses":
            yield from _schema_fields(value[0], "losses[].")


def test_every_key_has_help_and_appears_in_base_yaml_with_it():
    text = render_base_yaml()
    for key, f in _schema_fields(Config()):
        assert f.metadata.get("help"), f"{key} has no help text"
        assert f.metadata["help"] in text, key


def test_generated_text_has_header_and_the_new_keys():
    text = render_base_yaml()
    assert text.startswith("# ") and "GENERATED" in text and f"`{GENERATE_COMMAND}`" in " ".join(text.splitlines()[:3])
    assert ("overwrite: false            # true: a fresh run may replace the run already in output_dir "
            "(its checkpoints, logs and metrics)") in text.splitlines()
    assert ("  skip_invalid: false       # skip (with one warning naming them) images whose file names break "
            "the dataset's pattern or that cannot be read") in text.splitlines()
    assert "  pooling: avg              # avg | max | gem | mix (" in text
    assert Config().overwrite is False and load_config(None, ["overwrite=true"]).overwrite is True


def test_generate_command_prints_and_writes(tmp_path, capsys):
    config_module.main([])
    assert capsys.readouterr().out == render_base_yaml()
    target = tmp_path / "base.yaml"
    config_module.main(["--write", str(target)])
    assert target.read_text() == render_base_yaml()
    assert load_config(target) == Config()


# ---------------------------------------------------------------------------------------------
# Experiment configs


@pytest.mark.parametrize("name", EXPERIMENT_CONFIGS)
def test_shipped_configs_load(repo_root, name):
    assert yaml.safe_load((repo_root / "configs" / name).read_text())["_base_"].endswith(".yaml")
    cfg = load_config(repo_root / "configs" / name)
    assert cfg.output_dir.startswith("outputs/")


def test_every_shipped_config_is_tested(repo_root):
    assert sorted(p.name for p in (repo_root / "configs").glob("*.yaml")) == sorted(EXPERIMENT_CONFIGS + ["base.yaml"])


def test_experiment_file_is_a_delta_over_its_base(repo_root):
    cfg = load_config(repo_root / "configs" / "market1501_resnet50_ce_triplet.yaml")
    assert cfg.data.name == "market1501" and cfg.data.height == 384  # from the group config
    assert (cfg.data.num_identities, cfg.data.num_instances) == (16, 4)  # its own change
    assert [(loss.name, loss.weight, loss.params) for loss in cfg.losses] == [
        ("cross_entropy", 1.0, {"label_smoothing": 0.1}), ("triplet", 1.0, {"margin": 0.3})]
    assert cfg.test.k1 == 20  # untouched defaults survive


def test_the_multi_source_config_names_every_source_and_test_set(repo_root):
    cfg = load_config(repo_root / "configs" / "multi_source_resnet50_group.yaml")
    assert cfg.data.name == ["market1501", "dukemtmcreid", "msmt17"] and len(cfg.data.root) == 3
    assert cfg.test.datasets == ["market1501", "dukemtmcreid", "msmt17", "cuhk03_np"] and len(cfg.test.roots) == 4
    assert cfg.data.height == 384 and cfg.losses[0].name == "group"  # the Market recipe underneath


# ---------------------------------------------------------------------------------------------
# Types and overrides


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "train.lr=1e-3", "resume=true", "model.weights=w.pth",
                             "train.milestones=[2, 4]", "losses=[{name: triplet, params: {margin: 0.5}}]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.resume is True and cfg.model.weights == "w.pth" and cfg.train.milestones == [2, 4]
    assert cfg.losses == [LossConfig("triplet", 1.0, {"margin": 0.5})]
    assert load_config(None, ["resume=outputs/x/last.pt"]).resume == "outputs/x/last.pt"
    assert load_config(None, ["train.lr=2"]).train.lr == 2.0  # an int is a valid float


def test_defaults_are_not_shared_between_instances():
    a, b = Config(), Config()
    a.train.milestones.append(99)
    a.losses[0].params["temperature"] = 1.0
    assert b.train.milestones == [40, 50] and b.losses[0].params["temperature"] == 80.0


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", r"unknown key 'train.epoch'; valid keys in section 'train': epochs,"),
    ("trian.epochs=3", r"unknown key 'trian'; valid keys in the top level: output_dir"),
    ("train.epochs=abc", r"train.epochs: expected an integer, got 'abc'"),
    ("train.epochs=1.5", r"train.epochs: expected an integer, got 1.5"),
    ("data.color_jitter=1", r"data.color_jitter: expected true or false, got 1"),
    ("model.pooling=median", r"model.pooling: expected one of avg, max, gem, mix, got 'median'"),
    ("losses=[{nam: group}]", r"unknown key 'losses\[0\].nam'; valid keys in section 'losses\[0\]': name, weight"),
    ("train.epochs", r"override 'train.epochs': expected key=value"),
    ("train.epochs=0", r"train.epochs: expected a positive integer, got 0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.epochz'"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(loop)


# ---------------------------------------------------------------------------------------------
# Ranges checked at load time


@pytest.mark.parametrize("override, message", [
    ("test.k2=0", "test.k2: expected an integer >= 1, got 0"),
    ("test.k2=22", "test.k2: expected an integer <= k1 + 1 = 21, got 22"),
    ("test.k1=0", "test.k1: expected a positive integer, got 0"),
    ("test.lambda_value=1.5", "test.lambda_value: expected a number in [0, 1], got 1.5"),
    ("test.lambda_value=-0.1", "test.lambda_value: expected a number in [0, 1], got -0.1"),
    ("test.beta=-1", "test.beta: expected a number >= 0, got -1.0"),
    ("data.num_workers=-1", "data.num_workers: expected an integer >= 0, got -1"),
    ("data.flip_prob=2", "data.flip_prob: expected a number in [0, 1], got 2.0"),
    ("data.erasing_prob=-0.5", "data.erasing_prob: expected a number in [0, 1], got -0.5"),
    ("data.padding=-1", "data.padding: expected an integer >= 0, got -1"),
    ("train.weight_decay=-1e-4", "train.weight_decay: expected a number >= 0, got -0.0001"),
    ("train.warmup_epochs=-1", "train.warmup_epochs: expected an integer >= 0, got -1"),
    ("train.warmup_factor=0", "train.warmup_factor: expected a number in (0, 1], got 0.0"),
    ("train.warmup_factor=1.5", "train.warmup_factor: expected a number in (0, 1], got 1.5"),
    ("train.iters_per_epoch=-1", "train.iters_per_epoch: expected an integer >= 0, got -1"),
    ("train.grad_clip=-1", "train.grad_clip: expected a number >= 0, got -1.0"),
    ("train.gamma=0", "train.gamma: expected a number > 0, got 0.0"),
    ("train.lr=0", "train.lr: expected a number > 0, got 0.0"),
    ("train.momentum=-0.9", "train.momentum: expected a number >= 0, got -0.9"),
    ("train.seed=-1", "train.seed: expected an integer >= 0, got -1"),
    ("train.device=gpu", "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train.device=cuda:x", "train.device: expected auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    ("train.device=CPU", "train.device: expected auto, cpu, cuda or cuda:N, got 'CPU'"),
    ("model.leaky_relu=-0.1", "model.leaky_relu: expected a number >= 0, got -0.1"),
    ("model.pool_lambda=1.1", "model.pool_lambda: expected a number in [0, 1], got 1.1"),
    ("model.gem_p=0", "model.gem_p: expected a number > 0, got 0.0"),
    ("model.last_stride=3", "model.last_stride: expected 1 or 2, got 3"),
    ("model.last_stride=0", "model.last_stride: expected 1 or 2, got 0"),
    ("synthetic.num_train_ids=0", "synthetic.num_train_ids: expected an integer in 1..5000, got 0"),
    ("synthetic.num_train_ids=5001", "synthetic.num_train_ids: expected an integer in 1..5000, got 5001"),
    ("synthetic.num_test_ids=5000", "synthetic.num_test_ids: expected an integer in 1..4999, got 5000"),
    ("synthetic.num_cameras=1", "synthetic.num_cameras: expected an integer in 2..9, got 1"),
    ("synthetic.num_cameras=10", "synthetic.num_cameras: expected an integer in 2..9, got 10"),
    ("synthetic.height=16", "synthetic.height: expected an integer >= 32, got 16"),
    ("synthetic.width=0", "synthetic.width: expected an integer >= 16, got 0"),
    ("synthetic.seed=-1", "synthetic.seed: expected an integer >= 0, got -1"),
])
def test_ranges_are_checked_at_load_time(override, message):
    assert _error([override]) == message


@pytest.mark.parametrize("override", [
    "test.k2=21", "test.k2=1", "test.lambda_value=0", "test.lambda_value=1", "data.num_workers=0",
    "data.flip_prob=1", "data.erasing_prob=0", "train.warmup_factor=1", "train.warmup_epochs=0",
    "train.iters_per_epoch=0", "train.grad_clip=0", "train.weight_decay=0", "model.last_stride=2",
    "model.pool_lambda=1", "synthetic.num_cameras=2", "synthetic.num_cameras=9", "synthetic.num_train_ids=5000",
    "synthetic.num_test_ids=4999", "synthetic.height=32", "synthetic.width=16", "train.device=cpu",
    "train.device=cuda", "train.device=cuda:1", "train.device=auto",
])
def test_range_boundaries_are_accepted(override):
    load_config(None, [override])


def test_synthetic_ranges_match_the_generator(tmp_path):
    """The limits checked at load time are the generator's own (see reid.data.synthetic)."""
    from reid.data.synthetic import make_synthetic_market

    for kwargs in ({"num_cameras": 10}, {"num_train_ids": 5001}, {"num_test_ids": 5000},
                   {"image_size": (31, 16)}, {"image_size": (32, 15)}, {"seed": -1}):
        with pytest.raises(ValueError):
            make_synthetic_market(tmp_path / "never", **kwargs)


# ---------------------------------------------------------------------------------------------
# Choices come from the modules that own them


@pytest.mark.parametrize("cls, name, owner", [
    (ModelConfig, "pooling", POOLINGS), (TrainConfig, "optimizer", OPTIMIZERS),
    (TrainConfig, "scheduler", SCHEDULES), (TrainConfig, "amp", AMP_MODES),
    (config_module.TestConfig, "feature", FEATURE_KINDS), (config_module.TestConfig, "metric", METRICS),
])
def test_choices_are_the_owners_constants(cls, name, owner):
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    assert f.metadata["choices"] is owner


@pytest.mark.parametrize("override, message", [
    ("train.amp=fp8", f"train.amp: expected one of {', '.join(AMP_MODES)}, got 'fp8'"),
    ("train.scheduler=poly", f"train.scheduler: expected one of {', '.join(SCHEDULES)}, got 'poly'"),
    ("test.metric=l1", f"test.metric: expected one of {', '.join(METRICS)}, got 'l1'"),
    ("test.feature=raw", f"test.feature: expected one of {', '.join(FEATURE_KINDS)}, got 'raw'"),
    ("train.optimizer=lamb", f"train.optimizer: expected one of {', '.join(OPTIMIZERS)}, got 'lamb'"),
])
def test_bad_choices_list_the_owners_values(override, message):
    assert _error([override]) == message


def test_dataset_names_come_from_the_registry(monkeypatch):
    expected = ", ".join(["synthetic", *sorted(DATASETS)])
    assert _error(["data.name=mars"]) == f"data.name: expected one of {expected}, got 'mars'"
    monkeypatch.setitem(DATASETS, "mars", lambda root, **kwargs: None)  # as register_dataset does
    assert load_config(None, ["data.name=mars"]).data.name == "mars"
    for name in ("synthetic", "market1501", "dukemtmcreid", "custom"):
        assert load_config(None, [f"data.name={name}"]).data.name == name


def test_loss_names_come_from_the_registry(monkeypatch):
    assert _error(["losses=[{name: arcface}]"]) == (
        f"losses[0].name: expected one of {', '.join(sorted(LOSSES))}, got 'arcface'")
    assert _error(["losses=[{name: triplet}, {name: arcface}]"]).startswith("losses[1].name: expected one of")

    class ArcFace:
        def __init__(self, scale: float = 30.0) -> None:
            pass

    monkeypatch.setitem(LOSSES, "arcface", ArcFace)
    assert load_config(None, ["losses=[{name: arcface, params: {scale: 64}}]"]).losses[0].name == "arcface"


@pytest.mark.parametrize("override, message", [
    ("losses=[{name: group, params: {temp: 1}}]",
     "losses[0].params: unexpected parameter 'temp' for loss 'group'; valid: temperature, num_anchors, num_iterations, detach_priors"),
    ("losses=[{name: cross_entropy}, {name: triplet, params: {margin: 0.3, p: 2, metric: cosine, k: 1}}]",
     "losses[1].params: unexpected parameters 'k', 'p' for loss 'triplet'; valid: margin, metric"),
    ("losses=[]", "losses: expected at least one loss, e.g. [{name: cross_entropy}]"),
])
def test_loss_entries_are_checked_against_the_loss_classes(override, message):
    assert _error([override]) == message


# ---------------------------------------------------------------------------------------------
# Saving


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "losses=[{name: triplet, weight: 2.0}]", "overwrite=true"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_from_dict_accepts_configs_stored_before_new_keys():
    stored = to_dict(Config())
    del stored["overwrite"]
    assert from_dict(stored) == Config()


@pytest.mark.parametrize("failing", ["os.fsync", "os.replace", "write"])
def test_save_config_is_atomic(tmp_path, monkeypatch, failing):
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    before = path.read_text()
    seen = {}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if failing == "write":  # the text is half written to the temporary file when the disk fills up
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            stream = real_fdopen(fd, *args, **kwargs)
            real_write = stream.write
            stream.write = lambda text: (real_write(text[: len(text) // 2]), boom())
            return stream

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        name = failing.split(".")[1]

        def record(*args, **kwargs):
            seen.setdefault(name, args)
            boom()

        monkeypatch.setattr(os, name, record)
    with pytest.raises(OSError, match="disk full"):
        save_config(load_config(None, ["train.epochs=3"]), path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left behind
    if failing == "os.replace":
        source, destination = seen["replace"][:2]
        assert os.path.dirname(source) == str(tmp_path) and str(destination) == str(path)


def test_save_config_replaces_through_a_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (calls.append((src, dst)), real_replace(src, dst)))
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    save_config(Config(), tmp_path / "config.yaml")
    assert len(calls) == 1 and os.path.dirname(calls[0][0]) == str(tmp_path) and fsyncs
    assert load_config(tmp_path / "config.yaml") == Config()


def test_the_memory_budget_reaches_the_metrics_in_mib_or_as_the_default():
    from reid import builders

    assert Config().test.memory_mb == 0.0 and builders.metric_options(Config())["memory_mb"] is None
    assert builders.metric_options(load_config(None, ["test.memory_mb=512"]))["memory_mb"] == 512
    with pytest.raises(ConfigError, match=r"test\.memory_mb.*a number >= 0"):
        load_config(None, ["test.memory_mb=-1"])


# The Group Loss paper's retrieval settings (temperature, classes x samples per batch, anchors).
@pytest.mark.parametrize("name, temperature, batch, anchors", [
    ("cub200_group.yaml", 24.0, (6, 9), 2), ("cars196_group.yaml", 79.0, (5, 7), 3), ("sop_group.yaml", 54.0, (10, 6), 2)])
def test_retrieval_configs_carry_the_papers_settings(repo_root, name, temperature, batch, anchors):
    cfg = load_config(repo_root / "configs" / name)
    group = cfg.losses[0]
    assert group.name == "group" and group.params == {"temperature": temperature, "num_anchors": anchors,
                                                      "num_iterations": 1}
    assert (cfg.data.num_identities, cfg.data.num_instances) == batch
    assert (cfg.data.pipeline, cfg.model.embedding_dim, cfg.train.optimizer) == ("retrieval", 512, "radam")


def test_retired_key_is_dropped_from_a_stored_config_and_refused_elsewhere() -> None:
    """A checkpoint of an earlier version stored adapt.rho: it still loads; naming it is an error."""
    stored = to_dict(load_config(None, ["adapt.k1=12"]))
    stored["adapt"]["rho"] = 0.0016
    assert from_dict(stored) == load_config(None, ["adapt.k1=12"])
    with pytest.raises(ConfigError, match=r"^adapt.rho: this key was retired; use adapt.core_fraction "):
        load_config(None, ["adapt.rho=0.01"])
