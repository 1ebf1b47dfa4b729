import pytest
import yaml

from reid.config import Config, ConfigError, LossConfig, from_dict, load_config, save_config, to_dict

CONFIGS = ["demo.yaml", "market1501_resnet50_group.yaml", "dukemtmc_resnet50_group.yaml",
           "market1501_resnet50_ce_triplet.yaml"]


def test_base_yaml_matches_the_dataclass_defaults(repo_root):
    assert load_config(repo_root / "configs" / "base.yaml") == Config()


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(repo_root, name):
    cfg = load_config(repo_root / "configs" / name)
    assert cfg.output_dir.startswith("outputs/")


def test_experiment_file_is_a_delta_over_its_base(repo_root):
    cfg = load_config(repo_root / "configs" / "market1501_resnet50_ce_triplet.yaml")
    assert cfg.data.name == "market1501" and cfg.data.height == 384  # from the group config
    assert (cfg.data.num_identities, cfg.data.num_instances) == (16, 4)  # its own change
    assert [(loss.name, loss.weight, loss.params) for loss in cfg.losses] == [
        ("cross_entropy", 1.0, {"label_smoothing": 0.1}), ("triplet", 1.0, {"margin": 0.3})]
    assert cfg.test.k1 == 20  # untouched defaults survive


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "train.lr=1e-3", "resume=true", "model.weights=w.pth",
                             "train.milestones=[2, 4]", "losses=[{name: triplet, params: {margin: 0.5}}]"])
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.resume is True and cfg.model.weights == "w.pth" and cfg.train.milestones == [2, 4]
    assert cfg.losses == [LossConfig("triplet", 1.0, {"margin": 0.5})]
    assert load_config(None, ["resume=outputs/x/last.pt"]).resume == "outputs/x/last.pt"
    assert load_config(None, ["train.lr=2"]).train.lr == 2.0  # an int is a valid float


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


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "losses=[{name: triplet, weight: 2.0}]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    assert from_dict(to_dict(cfg)) == cfg
