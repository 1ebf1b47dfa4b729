"""`torchrun --nproc_per_node 2 -m reid extract|test`: two gloo processes on the CPU split the images
and give the one-process features, files, rankings and metrics exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reid.cli


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tiny_market, save_tiny_checkpoint) -> Path:
    """A tiny checkpoint whose config points at tiny_market, with test batches of 4: 15 query
    images are 4 batches (2 per process: 8 + 7 images), 27 gallery images 7 batches (16 + 11)."""
    path = tmp_path_factory.mktemp("torchrun") / "best.pt"
    save_tiny_checkpoint(path, [
        "data.name=market1501", f"data.root={tiny_market}", "data.num_workers=0", "data.test_batch_size=4",
        "train.device=cpu", "test.k1=5", "test.k2=2", "test.max_rank=10", "test.rerank=false",
    ])
    return path


def torchrun(argv: list[str], repo_root: Path) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 -m reid ARGV``, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "reid", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def one_process(argv: list[str], capsys) -> str:
    """``reid ARGV`` in this process with one thread (as each torchrun process has): its stdout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        reid.cli.main(argv)
        return capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def table(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("|")]


@pytest.mark.slow
def test_torchrun_extract_writes_the_one_process_features_and_ranking(weights, tiny_market, tmp_path, repo_root,
                                                                      capsys):
    # Batches of 16: the 15 query images are one batch (rank 1 extracts none of them), the 30
    # gallery images 16 + 14. Splitting the gallery 15 + 15 instead (batches of other sizes than
    # one process's) changes features in their last bits on this CPU: whole batches are the point.
    def argv(output_dir: Path) -> list[str]:
        return ["extract", "--weights", str(weights), "--query", str(tiny_market / "query"),
                "--gallery", str(tiny_market / "bounding_box_test"), "--top-k", "3", "--device", "cpu",
                "--batch-size", "16", "--output-dir", str(output_dir)]

    single = one_process(argv(tmp_path / "single"), capsys)
    done = torchrun(argv(tmp_path / "two"), repo_root)
    assert done.stdout == single  # the ranking, printed once (rank 0)
    assert single.startswith("15 query images against 30 gallery images")
    for name, count in (("query.npz", 15), ("gallery.npz", 30)):
        with np.load(tmp_path / "single" / name) as expected, np.load(tmp_path / "two" / name) as got:
            assert got["features"].shape == (count, expected["features"].shape[1])
            for key in ("features", "pids", "camids"):
                assert got[key].dtype == expected[key].dtype and np.array_equal(got[key], expected[key]), key
            assert got["paths"].tolist() == expected["paths"].tolist()
    assert sorted(os.listdir(tmp_path / "two")) == ["gallery.npz", "query.npz"]


@pytest.mark.slow
@pytest.mark.parametrize("options", [["--rerank"], ["--ablate", "flip"]], ids=["rerank", "ablate"])
def test_torchrun_test_gives_the_one_process_metrics(weights, tmp_path, repo_root, capsys, options):
    single = one_process(["test", "--weights", str(weights), *options, "--output", str(tmp_path / "single.json")],
                         capsys)
    done = torchrun(["test", "--weights", str(weights), *options, "--output", str(tmp_path / "two.json")], repo_root)
    expected = json.loads((tmp_path / "single.json").read_text())
    assert json.loads((tmp_path / "two.json").read_text()) == expected
    rows = {"--rerank": ["model", "model + re-ranking"], "--ablate": ["baseline", "flip"]}[options[0]]
    assert [line.split("|")[1].strip() for line in table(single)[2:]] == rows
    assert table(done.stdout) == table(single)  # printed once, by rank 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["single.json", "two.json"]
