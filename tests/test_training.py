"""A training run never loses what a user has: folder checks, finished runs, failed evaluations."""

import gc
import json
import multiprocessing

import pytest
import torch
from torch import nn

from reid import builders
from reid import losses as reid_losses
from reid import training
from reid.checkpoint import load_checkpoint
from reid.config import ConfigError, load_config


def run_files(folder):
    """name -> bytes of every file of a run folder (what must survive a refused command)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def finished_run(tiny_train_args, tmp_path):
    """A tiny 2-epoch run, trained once (shared set-up of the tests below)."""
    metrics = training.train(load_config(None, tiny_train_args))
    return tmp_path / "run", metrics


def test_resume_on_a_finished_run_says_so_and_changes_nothing(finished_run, tiny_train_args, caplog):
    run, metrics = finished_run
    before = run_files(run)
    with caplog.at_level("INFO", logger="reid"):
        again = training.train(load_config(None, tiny_train_args + ["resume=true"]))
    assert again == json.loads(json.dumps(metrics))  # the stored metrics, nothing re-run
    assert "has finished all 2 epochs" in caplog.text and "train.epochs=N" in caplog.text
    assert run_files(run) == before


def test_a_run_ends_its_loader_workers_with_it(tiny_train_args, monkeypatch):
    # They leave SIGTERM to the main process: a worker still alive at exit (a loader held by a
    # reference cycle) would make multiprocessing's exit handler wait for ever. A caught error
    # kept in a local ties the run's frames, and so its loaders, into such a cycle (as the hub's
    # error once did); only the run's own shutdown may end the workers then.
    build = builders.model_from_config

    def model_from_config(*args, **kwargs):
        try:
            raise ConnectionError("the hub is offline")
        except ConnectionError as err:
            kept = err  # noqa: F841 - the frame holds the error, the error's traceback the frame
        return build(*args, **kwargs)

    monkeypatch.setattr(builders, "model_from_config", model_from_config)
    gc.collect()
    gc.disable()
    try:
        training.train(load_config(None, [*tiny_train_args, "data.num_workers=2"]))
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()
        gc.collect()


def test_a_fresh_run_into_a_run_folder_refuses_before_anything_else(finished_run, tiny_train_args, tmp_path):
    run, _ = finished_run
    before = run_files(run)
    # even with data that would fail later, the folder check comes first and nothing is touched
    args = tiny_train_args + [f"data.root={tmp_path / 'no_such_data'}"]
    with pytest.raises(FileExistsError, match=r"output_dir=.*run already holds a run \(best.pt, config.yaml, "
                                              r"last.pt, log.jsonl, metrics.json, train.log\); continue it with "
                                              r"resume=true, choose a new output_dir, or .* overwrite=true"):
        training.train(load_config(None, args))
    assert run_files(run) == before


def test_overwrite_replaces_the_old_run_and_names_the_files_it_keeps(finished_run, tiny_train_args, caplog):
    run, _ = finished_run
    (run / "best_test_metrics.json").write_text("{}")  # written by `reid test`, not by the run
    with caplog.at_level("WARNING", logger="reid"):
        training.train(load_config(None, tiny_train_args + ["overwrite=true", "train.epochs=1",
                                                            "train.eval_every=5"]))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]  # a fresh log, not appended to the old one
    assert load_checkpoint(run / "last.pt")["progress"]["epoch"] == 1
    assert (run / "best_test_metrics.json").read_text() == "{}"
    warning = (f"overwrite=true replaced the previous run in {run} but kept the files it did not write, "
               "which may describe the previous model: best_test_metrics.json")
    assert warning in caplog.text and warning in (run / "train.log").read_text()


def test_a_resumed_run_must_be_the_same_experiment(finished_run, tiny_train_args):
    run, _ = finished_run
    before = run_files(run)
    with pytest.raises(ConfigError, match=r"train.lr: 0.01 differs from 0.00035 in the checkpoint .*last.pt; "
                                          r"a resumed run continues the same experiment"):
        training.train(load_config(None, tiny_train_args + ["resume=true", "train.epochs=3", "train.lr=0.01"]))
    assert run_files(run) == before
    # a longer schedule is allowed: epoch 3 continues from the checkpoint
    training.train(load_config(None, tiny_train_args + ["resume=true", "train.epochs=3"]))
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_failing_final_evaluation_keeps_the_trained_checkpoint_and_logs_the_error(
        tiny_train_args, tmp_path, monkeypatch):
    def broken_evaluate(*args, **kwargs):
        raise ValueError("evaluation failed on purpose")

    monkeypatch.setattr(training, "evaluate", broken_evaluate)
    with pytest.raises(ValueError, match="on purpose"):
        training.train(load_config(None, tiny_train_args + ["train.eval_every=5"]))
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["progress"]["epoch"] == 2  # both epochs of training kept
    assert "ERROR ValueError: evaluation failed on purpose" in (run / "train.log").read_text()
    assert not (run / "metrics.json").exists()


class LearnedScale(nn.Module):
    """A loss with a learnable parameter: optimised, and saved with the run."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, embeddings, logits, labels):
        return self.scale * embeddings.pow(2).mean()


def test_loss_parameters_are_optimised_and_checkpointed(tiny_train_args, tmp_path, monkeypatch):
    monkeypatch.setitem(reid_losses.LOSSES, "learned_scale", LearnedScale)
    args = tiny_train_args + ["losses=[{name: cross_entropy}, {name: learned_scale}]", "train.eval_every=5",
                              "test.rerank=false", "train.lr=0.01"]
    training.train(load_config(None, args))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["loss"]["terms.learned_scale.scale"].item() != 1.0


def write_fashion_mnist(folder, per_class=8, seed=0):
    """Tiny idx files in Fashion-MNIST's real format: a class-dependent stripe pattern plus noise."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 60, (len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, :, 2 * label:2 * label + 6] = 250  # a vertical band whose place is the class
        header = struct.pack(">IIII", 2051, len(labels), 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
        header = struct.pack(">II", 2049, len(labels))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))
    return folder


def test_training_on_a_retrieval_set_reports_recall_map_at_r_and_nmi(tmp_path, monkeypatch):
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "cache"))
    root = write_fashion_mnist(tmp_path / "fashion-mnist")
    args = ["data.name=fashion_mnist", f"data.root={root}", "data.pipeline=retrieval", "data.height=32",
            "data.width=32", "data.resize=32", "data.num_identities=5", "data.num_instances=4",
            "data.num_workers=0", "model.backbone=test_resnet", "model.pretrained=false", "model.embedding_dim=16",
            "model.last_stride=2",
            "train.epochs=2", "train.warmup_epochs=0", "train.device=cpu", "train.eval_every=1",
            "train.eval_untrained=true", f"output_dir={tmp_path / 'run'}"]
    import reid.cli

    metrics = reid.cli.main(["train", *args])  # the real entry point, as a user runs it
    keys = {"recall@1", "recall@2", "recall@4", "recall@8", "precision_at_1", "r_precision", "map_at_r", "nmi", "f1"}
    assert keys <= set(metrics) and "mAP" not in metrics and "rerank" not in metrics
    assert metrics["num_valid_queries"] == 5 * 8  # leave-one-out over the 5 unseen classes' 8 images each
    assert metrics["recall@1"] == metrics["precision_at_1"] and 0 <= metrics["map_at_r"] <= 1
    assert keys <= set(metrics["untrained"])
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [set(r["metrics"]) >= keys for r in records] == [True, True]
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    assert state["progress"]["best_score"] == max(r["metrics"]["map_at_r"] for r in records)
    assert "recall@1" in (tmp_path / "run" / "train.log").read_text()
