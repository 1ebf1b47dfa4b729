"""tools/train.py (`reid train`) end to end on a tiny synthetic set: outputs, exact resume, torchrun with gloo."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from reid import losses as reid_losses
from reid.checkpoint import load_checkpoint
from tools import train as train_tool
from tools import test as test_tool

METRIC_KEYS = {"mAP", "mINP", "rank1", "rank5", "rank10"}


def test_train_writes_config_log_checkpoints_and_metrics(tiny_train_args, tmp_path):
    metrics = train_tool.main(tiny_train_args + ["train.eval_untrained=true"])
    run = tmp_path / "run"
    assert {"config.yaml", "log.jsonl", "last.pt", "best.pt", "metrics.json", "train.log"} <= set(os.listdir(run))
    written = json.loads((run / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert METRIC_KEYS <= set(written) and METRIC_KEYS <= set(written["rerank"]) and METRIC_KEYS <= set(written["untrained"])
    assert all(0.0 <= written[k] <= 1.0 for k in METRIC_KEYS)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]["loss"]) == {"group", "cross_entropy", "total"}
    assert "metrics" in records[0] and "rerank" not in records[0]["metrics"]  # re-ranking only at the end
    last = load_checkpoint(run / "last.pt")
    assert last["progress"]["epoch"] == 2 and last["progress"]["step"] == 0
    assert last["num_classes"] == 8 and last["config"]["train"]["epochs"] == 2

    # tools/test.py (`reid test`) rebuilds the model from the checkpoint and reproduces the final metrics
    tested = test_tool.main(["--weights", str(run / "last.pt"), "--rerank", "--output", str(tmp_path / "m.json")])
    for key in METRIC_KEYS:
        assert tested[key] == pytest.approx(metrics[key], abs=1e-6)
        assert tested["rerank"][key] == pytest.approx(metrics["rerank"][key], abs=1e-6)


class InterruptAt(nn.Module):
    """A zero-weight loss term that sends this process SIGINT on its ``at_step``-th call.

    ``at_step`` is a class attribute, not a loss parameter: a resumed run must have the same
    config as the interrupted one.
    """

    at_step = -1

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, embeddings, logits, labels):
        self.calls += 1
        if self.calls == self.at_step:
            signal.raise_signal(signal.SIGINT)
        return embeddings.sum() * 0.0


def test_interrupted_run_resumes_to_the_same_weights(tiny_train_args, tmp_path, monkeypatch):
    monkeypatch.setitem(reid_losses.LOSSES, "interrupt_at", InterruptAt)
    losses = ("losses=[{name: group, params: {temperature: 10.0}}, {name: cross_entropy},"
              " {name: interrupt_at, weight: 0.0}]")
    args = tiny_train_args + ["train.eval_every=5", "test.rerank=false", "data.erasing_prob=0.5", losses]

    train_tool.main(args + [f"output_dir={tmp_path / 'straight'}"])
    monkeypatch.setattr(InterruptAt, "at_step", 5)
    with pytest.raises(SystemExit) as stopped:  # SIGINT at step 2 of epoch 2 (step 5 overall)
        train_tool.main(args + [f"output_dir={tmp_path / 'stopped'}"])
    assert stopped.value.code == 130
    saved = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 2)
    monkeypatch.setattr(InterruptAt, "at_step", -1)
    train_tool.main(args + [f"output_dir={tmp_path / 'stopped'}", "resume=true"])

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


class NanLoss(nn.Module):
    """A loss term that turns non-finite (a weight of nan is refused by the config itself)."""

    def forward(self, embeddings, logits, labels):
        return embeddings.sum() * float("nan")


def test_non_finite_loss_stops_with_the_values(tiny_train_args, monkeypatch):
    monkeypatch.setitem(reid_losses.LOSSES, "nan_loss", NanLoss)
    with pytest.raises(FloatingPointError, match=r"non-finite loss: group=.*nan_loss=nan"):
        train_tool.main(tiny_train_args + ["losses=[{name: group}, {name: nan_loss}]"])


def test_bad_override_exits_with_a_message(tiny_train_args, capsys):
    with pytest.raises(SystemExit) as exited:
        train_tool.main(tiny_train_args + ["train.epochz=3"])
    assert exited.value.code == 2
    assert "unknown key 'train.epochz'" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny_train_args, tmp_path, repo_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(repo_root / "tools" / "train.py"), *tiny_train_args, "train.eval_every=2", "test.rerank=false"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes the log
    # each rank ran iters_per_epoch steps of its own P x K batches
    assert all(r["images_per_s"] > 0 for r in records)
    assert json.loads((run / "metrics.json").read_text())["num_valid_queries"] > 0
