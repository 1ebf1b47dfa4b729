"""`reid train` on two datasets at once, tested on a third and on a source; `reid test --dataset` across them."""

from __future__ import annotations

import json
import re

import pytest

from reid.checkpoint import load_checkpoint
from reid.data.synthetic import make_synthetic_market
from tools import test as test_tool
from tools import train as train_tool

METRIC_KEYS = {"mAP", "mINP", "rank1", "rank5", "rank10"}


@pytest.fixture(scope="module")
def three_sets(tmp_path_factory):
    """Three small synthetic sets in Market layout (different seeds: different people and cameras)."""
    base = tmp_path_factory.mktemp("three_sets")
    return [make_synthetic_market(base / name, num_train_ids=4, num_test_ids=4, num_cameras=3, image_size=(64, 32),
                                  seed=seed, images_per_camera=(2, 3), num_distractors=3, num_junk=1)
            for seed, name in enumerate(("a", "b", "c"))]


@pytest.mark.slow
def test_two_training_sources_tested_on_a_third_and_reid_test_dataset(three_sets, tiny_train_args, tmp_path, capsys):
    a, b, c = three_sets
    run = tmp_path / "run"
    args = [arg for arg in tiny_train_args if not arg.startswith(("data.name=", "data.root="))] + [
        "data.name=[market1501, market1501]", f"data.root=[{a}, {b}]",
        # the third set read by the custom loader (the same Market names), and one source's own test split
        "test.datasets=[custom, market1501]", f"test.roots=[{c}, {a}]"]
    metrics = train_tool.main(args)

    written = json.loads((run / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics)) and set(written) == {"datasets"}
    assert list(written["datasets"]) == ["custom", "market1501"]
    for block in written["datasets"].values():
        assert METRIC_KEYS <= set(block) and METRIC_KEYS <= set(block["rerank"])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [list(r["metrics"]["datasets"]) for r in records] == [["custom", "market1501"]] * 2
    log = (run / "train.log").read_text()
    assert "results on custom (" in log and "results on market1501 (" in log
    assert re.search(r"epoch 2: .* img/s \| custom: mAP \d\.\d{4} rank1 \d\.\d{4} mINP \d\.\d{4} \| market1501: mAP ", log)
    assert "training on market1501+market1501: 8 identities" in log

    last = load_checkpoint(run / "last.pt")
    train_ids = [len({n.name.split("_")[0] for n in (root / "bounding_box_train").iterdir() if n.name.endswith(".jpg")})
                 for root in (a, b)]
    assert train_ids == [4, 4] and last["num_classes"] == 8
    assert [(s["root"], s["pid_offset"], s["camid_offset"], s["num_pids"]) for s in last["sources"]] == [
        (str(a), 0, 0, 4), (str(b), 4, 3, 4)]
    assert last["config"]["data"]["name"] == ["market1501", "market1501"]

    # reid test --dataset: its folder from the checkpoint's config (a test set's), or given with --root
    for name, root, block in (("custom", None, "custom"), ("market1501", a, "market1501")):
        output = tmp_path / f"{name}.json"
        tested = test_tool.main(["--weights", str(run / "last.pt"), "--dataset", name, "--rerank", "--output",
                                 str(output), *(["--root", str(root)] if root else [])])
        for key in METRIC_KEYS:
            assert tested[key] == pytest.approx(metrics["datasets"][block][key], abs=1e-6)
            assert tested["rerank"][key] == pytest.approx(metrics["datasets"][block]["rerank"][key], abs=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # two test sets: the command asks which
        test_tool.main(["--weights", str(run / "last.pt"), "--output", str(tmp_path / "x.json")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: this config evaluates 2 test sets" in err and "reid test --dataset NAME" in err
    assert not (tmp_path / "x.json").exists()


def test_a_missing_source_is_one_error_line_before_any_file(three_sets, tiny_train_args, tmp_path, capsys):
    a = three_sets[0]
    run = tmp_path / "run"
    missing = tmp_path / "msmt"
    (missing / "MSMT17_V1" / "train").mkdir(parents=True)
    (missing / "MSMT17_V1" / "test").mkdir()
    args = [arg for arg in tiny_train_args if not arg.startswith(("data.name=", "data.root="))] + [
        "data.name=[market1501, msmt17]", f"data.root=[{a}, {missing}]"]
    with pytest.raises(SystemExit) as exited:
        train_tool.main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: msmt17: dataset not found: expected train/ or mask_train_v2/")
    assert f"({missing / 'MSMT17_V1'} lacks list_train.txt, list_val.txt, list_query.txt, list_gallery.txt)" in err[0]
    assert not run.exists()
