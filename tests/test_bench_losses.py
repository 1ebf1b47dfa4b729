"""benchmarks/bench_losses.py: the recipes' loss lists, the cell configs and the stored table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_losses", REPO / "benchmarks" / "bench_losses.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def loss_names(cfg) -> list[str]:
    return [spec.name for spec in cfg.losses]


def test_recipes_share_the_setting_losses_and_differ_only_in_them(bench, tmp_path):
    configs = {r: bench.cell_config("reid", r, 3, tmp_path) for r in bench.RECIPES}
    assert {r: loss_names(c) for r, c in configs.items()} == {
        "group_ce": ["group", "cross_entropy"], "ce_triplet": ["cross_entropy", "triplet"],
        "ce": ["cross_entropy"], "group": ["group"]}
    group = configs["group_ce"].losses[0].params
    ce = configs["group_ce"].losses[1].params
    assert configs["group"].losses[0].params == group and configs["ce"].losses[0].params == ce
    assert configs["ce_triplet"].losses[1].params == {"margin": 0.3}
    for cfg in configs.values():  # the same init, data, schedule and seed
        assert (cfg.train.seed, cfg.output_dir, cfg.data.val_ids, cfg.test.rerank) == (3, str(tmp_path), 0, False)
        assert cfg.model.pretrained and cfg.model == configs["ce"].model
        assert cfg.data == configs["ce"].data and cfg.train == configs["ce"].train


def test_sweep_changes_reach_group_loss_and_the_batch(bench, tmp_path):
    cfg = bench.cell_config("reid", "group_ce", 0, tmp_path, val_ids=30,
                            group={"temperature": 24.0, "num_anchors": 3, "pk": "8x8"})
    assert cfg.losses[0].params["temperature"] == 24.0 and cfg.losses[0].params["num_anchors"] == 3
    assert (cfg.data.num_identities, cfg.data.num_instances, cfg.data.val_ids) == (8, 8, 30)
    cfg = bench.cell_config("reid", "group_ce", 0, tmp_path,
                            group={"detach_priors": True, "label_smoothing": 0.0, "lr": 0.003})
    assert cfg.losses[0].params["detach_priors"] is True and cfg.losses[1].params["label_smoothing"] == 0.0
    assert cfg.train.lr == 0.003
    # every sweep's changes build a valid config (a typo would only fail after hours of training)
    for sweep in bench.SWEEPS.values():
        for change in sweep.changes:
            cell = {**sweep.base, **change}
            recipe = cell.pop("recipe", sweep.recipe)
            assert bench.cell_config("reid", recipe, 0, tmp_path, val_ids=30, group=cell).losses
    with pytest.raises(ValueError, match="unknown recipe 'arcface'"):
        bench.recipe_losses("arcface", [{"name": "group"}, {"name": "cross_entropy"}])
    with pytest.raises(ValueError, match="no group loss"):
        bench.recipe_losses("ce", [{"name": "cross_entropy"}])


def test_table_is_mean_and_sample_std_per_recipe(bench, tmp_path):
    seeds = {"0": {"mAP": 0.5, "rank1": 0.6, "mINP": 0.1}, "1": {"mAP": 0.7, "rank1": 0.8, "mINP": 0.3}}
    data = {"recipes": {"ce": {"seeds": seeds}}}
    lines = bench.table(data, "reid").splitlines()
    # mean 60, sample std sqrt(((50-60)^2 + (70-60)^2) / 1) = 14.14
    assert lines[2] == "| ce | 2 | 60.00 +- 14.14 | 70.00 +- 14.14 | 20.00 +- 14.14 |"
    assert len(lines) == 3
    path = tmp_path / "losses.json"
    path.write_text("{not json")
    with pytest.raises(bench.BenchError, match="not a readable results file"):
        bench.read_results(path)
    path.write_text(json.dumps(data))
    assert bench.read_results(path) == data


def test_stored_cells_of_another_setting_are_refused(bench, tmp_path):
    setting = bench.describe("reid")
    block = {"setting": {**setting, "lr": 1.0}, "recipes": {"ce": {"seeds": {"0": {}}}}}
    with pytest.raises(bench.BenchError, match=r"losses.json: its reid cells were measured with another setting "
                                         r"\(changed: lr\)"):
        bench.check_same_setting(block, setting, tmp_path / "losses.json")
    fresh: dict = {}
    bench.check_same_setting(fresh, setting, tmp_path / "losses.json")
    assert fresh == {"setting": setting}


def test_a_config_key_added_later_at_its_default_leaves_the_stored_cells_valid(bench, tmp_path):
    setting = bench.describe("reid")
    older = json.loads(json.dumps(setting))
    del older["config"]["model"]["freeze_layers"]  # cells measured before the key existed
    block = {"setting": older, "recipes": {"ce": {"seeds": {"0": {}}}}}
    bench.check_same_setting(block, setting, tmp_path / "losses.json")
    assert block["setting"] == setting
    # the same key away from its default changes what is measured
    changed = {**setting, "config": {**setting["config"],
                                     "model": {**setting["config"]["model"], "freeze_layers": ["conv_stem"]}}}
    block = {"setting": older, "recipes": {"ce": {"seeds": {"0": {}}}}}
    with pytest.raises(bench.BenchError, match=r"\(changed: config\)"):
        bench.check_same_setting(block, changed, tmp_path / "losses.json")


def test_a_bad_results_file_is_one_line_and_exit_2(bench, tmp_path, capsys):
    path = tmp_path / "losses.json"
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--table", "--results", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {path}: expected a JSON object at the top level\n"


def test_prior_sharpness_by_hand(bench):
    import math

    import torch

    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # softmax: [1/4, 3/4], [3/4, 1/4]
    row = bench.prior_sharpness(logits, temperatures=(1.0, 2.0))
    assert row["classes"] == 2 and row["row_spread"] == pytest.approx(math.log(3.0))
    assert row["logit_std"] == pytest.approx(float(logits.std()))
    assert row["top_prior@T1"] == pytest.approx(0.75)
    assert row["top_prior@T2"] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))  # softmax of [0, log(3) / 2]


def test_an_interrupted_cell_is_one_line_and_exit_130(bench, tmp_path, capsys, monkeypatch):
    from reid.engine import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("stopped at epoch 1, step 3")

    monkeypatch.setattr(bench, "run_cell", interrupted)
    results = tmp_path / "losses.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--all", "--settings", "reid", "--seeds", "0", "--recipes", "ce", "--results", str(results)])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == (f"interrupted: the cell in progress is lost; finished cells are in {results}, "
                                       "and a rerun continues from them\n")
    with pytest.raises(SystemExit):
        bench.main(["--recipe", "ce", "--results", str(results)])
    assert capsys.readouterr().err == "interrupted: the cell in progress is lost\n"
