"""reid adapt end to end on tiny synthetic data: a normal checkpoint, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import reid.cli
from reid.checkpoint import load_checkpoint
from reid.crops import TRACKLETS_FILE

ADAPT_ARGS = ["adapt.rounds=2", "adapt.k1=5", "adapt.k2=2", "adapt.eps=0.7", "adapt.min_samples=2",
              "adapt.iters_per_round=2", "adapt.num_identities=2", "adapt.num_instances=2", "data.num_workers=0",
              "train.device=cpu"]


@pytest.fixture(scope="module")
def source(tiny_market, tmp_path_factory, save_tiny_checkpoint):
    path = tmp_path_factory.mktemp("adapt_source") / "source.pt"
    save_tiny_checkpoint(path, ["data.name=market1501", f"data.root={tiny_market}", "test.k1=5", "test.k2=2",
                                "test.max_rank=10"])
    return path


def _adapt(source, images, output, *extra):
    return reid.cli.main(["adapt", "--weights", str(source), "--images", str(images), "--output", str(output),
                          "--quiet", *ADAPT_ARGS, *extra])


@pytest.mark.slow
def test_adapt_writes_a_checkpoint_that_reid_test_takes(source, tiny_market, tmp_path) -> None:
    summary = _adapt(source, tiny_market / "bounding_box_train", tmp_path / "run")
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all(r["clusters"] >= 2 for r in records)
    log_lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [line.split(" ", 2)[2].split(":")[0] for line in log_lines if " cluster_memory " in line] == \
        ["round 1", "round 2"]  # rounds, not epochs
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["progress"]["epoch"] == 2 and state["num_classes"] == 6 and state["config"]["adapt"]["rounds"] == 2
    before = load_checkpoint(source)["model"]
    assert any(not torch.equal(before[k], state["model"][k]) for k in before)  # the weights moved
    metrics = reid.cli.main(["test", "--weights", str(tmp_path / "run" / "last.pt"), "--quiet"])
    assert 0 <= metrics["mAP"] <= 1
    out = reid.cli.main(["extract", "--weights", str(tmp_path / "run" / "last.pt"), "--images",
                         str(tiny_market / "query"), "--output", str(tmp_path / "f.npz"), "--quiet"])
    assert out is not None


@pytest.mark.slow
def test_resume_continues_after_the_last_round_exactly(source, tiny_market, tmp_path) -> None:
    images = tiny_market / "bounding_box_train"
    _adapt(source, images, tmp_path / "straight")
    _adapt(source, images, tmp_path / "stopped", "adapt.rounds=1")
    summary = _adapt(source, images, tmp_path / "stopped", "resume=true")
    assert [r["round"] for r in summary["rounds"]] == [2]
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "stopped" / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    with pytest.raises(SystemExit):  # a fresh run into it refuses
        _adapt(source, images, tmp_path / "stopped")


@pytest.mark.slow
def test_adapt_with_tracklets(source, tiny_market, tmp_path) -> None:
    """A tracklets.csv beside the crops: every (pid, camera) of the synthetic names as one tracklet."""
    folder = tiny_market / "bounding_box_train"
    images = tmp_path / "crops"
    images.mkdir()
    rows = ["image,tracklet,camera,sequence,frame,x,y,w,h,score"]
    for path in sorted(folder.glob("*.jpg")):
        (images / path.name).write_bytes(path.read_bytes())
        pid, cam = int(path.name[:4]), int(path.name[6])
        rows.append(f"{path.name},{pid},{cam},1,{int(path.name[10:16])},0,0,32,64,1")
    (images / TRACKLETS_FILE).write_text("\n".join(rows) + "\n")
    summary = _adapt(source, images, tmp_path / "run", "adapt.rounds=1")
    assert summary["rounds"][0]["outliers"] == 0  # every tracklet of >= 2 crops is a cluster


@pytest.mark.parametrize("case", ["missing", "empty", "unlisted"])
def test_bad_images_are_one_error_line(source, tiny_market, tmp_path, capsys, case) -> None:
    images = tmp_path / "images"
    if case != "missing":
        images.mkdir()
    if case == "unlisted":
        for path in sorted((tiny_market / "query").glob("*.jpg"))[:3]:
            (images / path.name).write_bytes(path.read_bytes())
        (images / TRACKLETS_FILE).write_text("image,tracklet,camera,sequence,frame\n")
    with pytest.raises(SystemExit) as exit_info:
        _adapt(source, images, tmp_path / "run")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = {"missing": f"error: image folder {images} does not exist",
            "empty": f"error: image folder {images} holds no images",
            "unlisted": f"error: {images / TRACKLETS_FILE} does not list"}[case]
    assert len(err) == 1 and err[0].startswith(want)
    assert not (tmp_path / "run").exists()


def test_bad_adapt_key_is_one_error_line(source, tiny_market, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _adapt(source, tiny_market / "query", tmp_path / "run", "adapt.eps=1.5")
    assert capsys.readouterr().err.strip() == "error: adapt.eps: expected a number in [0, 1), got 1.5"


def test_adapt_settings_start_from_the_defaults(source, tmp_path) -> None:
    from reid.adaptation.adapt import adaptation_config
    from reid.checkpoint import save_checkpoint
    from reid.config import AdaptConfig

    state = load_checkpoint(source)
    state["config"]["adapt"]["eps"] = 0.6  # e.g. a source trained when the default was 0.6
    save_checkpoint(state, tmp_path / "old.pt")
    cfg, _ = adaptation_config(tmp_path / "old.pt", ["adapt.rounds=3"], tmp_path / "run")
    assert cfg.adapt == AdaptConfig(rounds=3) and str(cfg.output_dir) == str(tmp_path / "run")


def test_batch_size_is_adaptations_own(source, tiny_market, tmp_path, capsys) -> None:
    """adapt.num_identities sizes the pseudo-id batches (the source recipe's data.* do not), and
    too few images for it is one error line, before any file."""
    images = sorted(tiny_market.joinpath("query").glob("*.jpg"))
    with pytest.raises(SystemExit):
        _adapt(source, tiny_market / "query", tmp_path / "run", f"adapt.num_identities={len(images)}")
    assert capsys.readouterr().err.strip() == (
        f"error: {len(images)} images under {tiny_market / 'query'}: too few to cluster into batches of "
        f"adapt.num_identities={len(images)} pseudo-identities")
    assert not (tmp_path / "run").exists()


def test_source_checkpoint_of_an_earlier_version_with_adapt_rho_adapts(source, tmp_path) -> None:
    """The first version stored adapt.rho in every checkpoint: such a source still loads."""
    from reid.adaptation.adapt import adaptation_config
    from reid.checkpoint import save_checkpoint

    state = load_checkpoint(source)
    state["config"]["adapt"]["rho"] = 1.6e-3
    save_checkpoint(state, tmp_path / "old.pt")
    cfg, _ = adaptation_config(tmp_path / "old.pt", [], tmp_path / "run")
    assert cfg.adapt.core_fraction == 0.6
