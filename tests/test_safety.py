"""Nothing lost, round two (issue 20): every command refuses to replace what it did not write,
runs own their folders (marker, lock), signals and full disks lose no work, and untrusted files
are bounded by what they declare before anything is allocated. One test (or case) per defect.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import reid.cli
import reid.io
from reid import training
from reid.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reid.config import ConfigError, load_config
from reid.evaluation.features import FeatureSet
from tests.test_cli import assert_one_error_line, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_market, save_tiny_checkpoint) -> Path:
    """A run folder holding best.pt (a tiny 64x32 model over tiny_market) and a copy as last.pt."""
    run = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(run / "best.pt", [
        "data.name=market1501", f"data.root={tiny_market}", "data.num_workers=0", "data.test_batch_size=64",
        "train.device=cpu", "test.k1=5", "test.k2=2", "test.max_rank=10", "test.rerank=false",
    ])
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    return run


@pytest.fixture
def no_model_work(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before the checks")

    monkeypatch.setattr("reid.builders.model_from_checkpoint", forbidden)
    monkeypatch.setattr("reid.inference.extract_features", forbidden)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Commands never replace a file they did not just create (1, 3, 7)


def test_test_output_refuses_to_replace_a_checkpoint(run_dir, capsys, no_model_work):
    before = (run_dir / "last.pt").read_bytes()
    code, _, err = run_cli(["test", "--weights", run_dir / "best.pt", "--output", run_dir / "last.pt"], capsys)
    line = assert_one_error_line(code, err, run_dir / "last.pt", "--overwrite")
    assert line == f"error: --output {run_dir / 'last.pt'} already exists; choose another name or pass --overwrite " \
                   "to replace it"
    assert (run_dir / "last.pt").read_bytes() == before


def test_test_output_with_overwrite_replaces_it(run_dir, tmp_path, capsys):
    target = tmp_path / "old.json"
    target.write_text("{}")
    code, _, err = run_cli(["test", "--weights", run_dir / "best.pt", "--output", target, "--overwrite", "--quiet"],
                           capsys)
    assert code == 0, err
    assert "mAP" in json.loads(target.read_text())


def test_extract_checks_the_npz_it_really_writes(run_dir, tiny_market, tmp_path, capsys, no_model_work):
    feats = tmp_path / "feats.npz"
    feats.write_bytes(b"my features")
    code, _, err = run_cli(["extract", "--weights", run_dir / "best.pt", "--images", tiny_market / "query",
                            "--output", tmp_path / "feats"], capsys)
    assert_one_error_line(code, err, f"{feats} already exists", "--overwrite")
    assert feats.read_bytes() == b"my features"


@pytest.mark.parametrize("existing", ["cmc.png", "roc.png", "rank_list_00003.png", "training_curves.png"])
def test_report_refuses_to_replace_any_of_its_files(run_dir, tmp_path, existing, capsys, no_model_work):
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / existing).write_bytes(b"mine")
    code, _, err = run_cli(["report", "--weights", run_dir / "best.pt", "--output", folder], capsys)
    line = assert_one_error_line(code, err, folder, existing, "--overwrite")
    assert "already holds a report" in line
    assert files_of(folder) == {existing: b"mine"}


@pytest.mark.parametrize("existing", ["index.html", "cmc.png", "query_00001.png", "rank_lists.png"])
def test_visualize_refuses_to_replace_its_files_without_overwrite(run_dir, tmp_path, existing, capsys, monkeypatch):
    folder = tmp_path / "vis"
    folder.mkdir()
    (folder / existing).write_bytes(b"mine")
    argv = ["visualize", "--weights", run_dir / "best.pt", "--num-queries", "1", "--top-k", "2", "--html", "--quiet",
            "--output", folder]
    with monkeypatch.context() as patch:
        patch.setattr("reid.builders.model_from_checkpoint", lambda *a, **k: pytest.fail("model work started"))
        code, _, err = run_cli(argv, capsys)
    assert_one_error_line(code, err, folder, existing, "--overwrite")
    assert files_of(folder) == {existing: b"mine"}
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert (folder / "index.html").read_bytes() != b"mine"


# ---------------------------------------------------------------------------------------------
# A run's folder: the marker, overwrite=true, the lock, an unfinished final evaluation (2, 5, 6)


def test_overwrite_never_removes_files_reid_did_not_write(tiny_train_args, tmp_path):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.mine").write_bytes(b"my own curves")
    (run / "config.yaml").write_text("my: own config\n")
    before = files_of(run)
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(FileExistsError) as info:
            training.train(load_config(None, tiny_train_args + extra))
        assert str(info.value) == (
            f"output_dir={run} holds config.yaml, tensorboard but no .reid-run.json (the marker reid writes into its "
            "run folders), so they are not files of a reid run and even overwrite=true leaves them alone; choose a "
            "new output_dir, or move those files away yourself")
        assert files_of(run) == before


def test_a_run_marks_its_folder_and_overwrite_clears_only_a_marked_run(tiny_train_args, tmp_path):
    run = tmp_path / "run"
    args = tiny_train_args + ["train.epochs=1", "train.eval_every=5", "test.rerank=false"]
    training.train(load_config(None, args))
    marker = json.loads((run / ".reid-run.json").read_text())
    assert marker["format"] == "reid-run" and marker["version"] == 1
    assert not (run / ".reid-run.lock").exists()  # released when the run ended
    (run / "notes.txt").write_text("mine")
    training.train(load_config(None, args + ["overwrite=true"]))
    assert (run / "notes.txt").read_text() == "mine" and (run / "last.pt").is_file()


def test_a_run_killed_in_its_final_evaluation_finishes_it_on_resume(tiny_train_args, tmp_path, monkeypatch):
    args = tiny_train_args + ["train.eval_every=5", "test.rerank=false"]
    straight = training.train(load_config(None, args + [f"output_dir={tmp_path / 'straight'}"]))
    real_evaluate = training.evaluate

    def killed(*a, **k):
        raise KeyboardInterrupt  # what SIGKILL or a second Ctrl-C during the evaluation leaves behind

    monkeypatch.setattr(training, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(load_config(None, args))
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["progress"]["epoch"] == 2
    assert not (run / "metrics.json").exists() and not (run / "best.pt").exists()
    monkeypatch.setattr(training, "evaluate", real_evaluate)
    finished = training.train(load_config(None, args + ["resume=true"]))
    assert finished == straight
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(straight))
    assert load_checkpoint(run / "best.pt")["progress"]["best_epoch"] == 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    straight_records = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # the epoch's own record, with its losses, and the metrics
    assert records[1]["loss"] == straight_records[1]["loss"] and records[1]["metrics"] == straight_records[1]["metrics"]


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run: Path, pid: int) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lock = run / ".reid-run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}))
    return lock


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_train_args, tmp_path, sleeper):
    run = tmp_path / "run"
    lock = write_lock(run, sleeper.pid)
    before = files_of(run)
    with pytest.raises(FileExistsError) as info:
        training.train(load_config(None, tiny_train_args))
    assert str(info.value) == (
        f"output_dir={run} is in use by another run (process {sleeper.pid} on {socket.gethostname()}, started "
        f"2026-01-01T00:00:00); wait for it to end or choose another output_dir. If no such process runs, delete {lock}")
    assert files_of(run) == before


def test_a_stale_lock_is_taken_over_with_a_warning(tiny_train_args, tmp_path, caplog):
    run = tmp_path / "run"
    pid = dead_pid()
    write_lock(run, pid)
    with caplog.at_level("WARNING", logger="reid"):
        training.train(load_config(None, tiny_train_args + ["train.epochs=1", "test.rerank=false"]))
    assert f"removed a stale lock of process {pid} (started 2026-01-01T00:00:00), which no longer runs" in caplog.text
    assert (run / "metrics.json").is_file() and not (run / ".reid-run.lock").exists()


def test_a_save_leaves_a_live_writers_temporary_alone(tmp_path, sleeper):
    live = tmp_path / f".last.pt.{sleeper.pid}.abcd1234.tmp"
    dead = tmp_path / f".last.pt.{dead_pid()}.efgh5678.tmp"
    for path in (live, dead):
        path.write_bytes(b"x")
    save_checkpoint({"model": {}}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "last.pt"])


# ---------------------------------------------------------------------------------------------
# Signals and a full disk (4, 18)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_and_exits_cleanly(tiny_train_args, tmp_path):
    run = tmp_path / "run"
    args = [a for a in tiny_train_args if not a.startswith(("data.num_workers", "train.epochs"))]
    args += ["data.num_workers=2", "train.epochs=200", "train.eval_every=1000", "test.rerank=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "reid", "train", "--config", str(REPO / "configs/base.yaml"),
                                *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)  # what timeout, SLURM and systemd do
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, out[-3000:] + err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert "received SIGTERM: finishing this step, then saving a checkpoint" in out
    progress = load_checkpoint(run / "last.pt")["progress"]
    assert progress["epoch"] >= 1 and f"stopped at epoch {progress['epoch'] + 1}, step {progress['step']}" in out \
        or f"stopped after epoch {progress['epoch']}" in out
    time.sleep(1)
    with pytest.raises(ProcessLookupError):  # the workers ended with the main process
        os.killpg(process.pid, 0)


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_a_full_disk_while_saving_is_one_error_line_and_keeps_the_previous_checkpoint(
        tiny_train_args, tmp_path, capsys, monkeypatch):
    real_fdopen = os.fdopen
    saves = []

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            saves.append(fd)
            if len(saves) > 1:  # epoch 1's last.pt is written, epoch 2's finds the disk full
                return _FullDisk(handle)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", REPO / "configs/base.yaml", *tiny_train_args,
                            "train.eval_every=5"], capsys)
    line = assert_one_error_line(code, err, run / "last.pt")
    assert line == (f"error: {run / 'last.pt'}: could not be written (No space left on device); the previous file, "
                    "if any, is unchanged")
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["progress"]["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Untrusted files: bounded by what they declare, before allocation (8, 15, 16, 17, 22, 23, 24)


def _rewrite_zip(source: Path, target: Path, change) -> Path:
    """A copy of a zip archive, each member's (name, data, compression) passed through ``change``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            name, data, compression = change(info.filename, old.read(info))
            new.writestr(name, data, compress_type=compression)
    return target


def test_a_compressed_checkpoint_record_is_refused_before_it_expands(tmp_path):
    torch.save({"model": {"w": torch.zeros(2_500_000)}}, tmp_path / "big.pt")  # 10 MB of zeros
    bomb = _rewrite_zip(tmp_path / "big.pt", tmp_path / "bomb.pt", lambda name, data: (
        name, data, zipfile.ZIP_DEFLATED if "/data/" in name else zipfile.ZIP_STORED))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(CheckpointError, match=r"bomb.pt: refused: record big/data/0 is compressed \([\d,]+ bytes "
                                              r"expanding to 10,000,000\); torch.save stores records as they are"):
        load_checkpoint(bomb)


def test_a_checkpoint_tensor_larger_than_its_record_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "full.pt")
    short = _rewrite_zip(tmp_path / "full.pt", tmp_path / "short.pt", lambda name, data: (
        name, data[:40] if name.endswith("/data/0") else data, zipfile.ZIP_STORED))
    with pytest.raises(CheckpointError, match=r"short.pt: refused: a tensor declares 4,000 bytes of data but the file "
                                              r"holds 40 for it"):
        load_checkpoint(short)


@pytest.mark.parametrize("field, value, expected", [
    ("num_classes", 10**13, "an integer in 0..10,000,000"),
    ("num_classes", 7, "6 (the rows of the stored classifier.weight)"),
    ("config", 5, "a mapping (the run's resolved config)"),
    ("config", ["a"], "a mapping (the run's resolved config)"),
])
def test_crafted_checkpoint_fields_are_one_error_line(run_dir, tmp_path, field, value, expected, capsys):
    state = load_checkpoint(run_dir / "best.pt")
    state[field] = value
    crafted = save_checkpoint(state, tmp_path / "crafted.pt")
    code, _, err = run_cli(["test", "--weights", crafted, "--output", tmp_path / "m.json"], capsys)
    line = assert_one_error_line(code, err, crafted)
    assert line == f"error: {crafted}: field {field!r}: expected {expected}, got {value!r}"
    assert not (tmp_path / "m.json").exists()


def test_a_checkpoints_hf_hub_backbone_never_reaches_for_the_network(run_dir, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants as hf_constants

    state = load_checkpoint(run_dir / "best.pt")
    state["config"]["model"]["backbone"] = "hf-hub:timm/resnet18.a1_in1k"
    crafted = save_checkpoint(state, tmp_path / "hub.pt")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # nothing cached
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    code, _, err = run_cli(["test", "--weights", crafted, "--output", tmp_path / "m.json"], capsys)
    assert_one_error_line(code, err, crafted, "model.backbone='hf-hub:timm/resnet18.a1_in1k'", "never downloads")
    assert attempts == []


def _npz(path: Path, **arrays) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_an_npz_that_expands_far_beyond_its_size_is_refused(tmp_path):
    n = 20_000
    bomb = _npz(tmp_path / "bomb.npz", features=np.zeros((n, 512), np.float32), pids=np.zeros(n, np.int64),
                camids=np.zeros(n, np.int64), paths=np.array(["a.jpg"] * n))
    size = bomb.stat().st_size
    assert size < 200_000  # 41 MB of arrays
    with pytest.raises(ValueError, match=rf"bomb.npz: its arrays unpack to [\d,]+ bytes, more than 64 times the "
                                         rf"file's {size:,}; a damaged or crafted file"):
        FeatureSet.load(bomb)


def test_an_npz_array_declaring_more_than_it_holds_is_refused(tmp_path):
    good = _npz(tmp_path / "good.npz", features=np.zeros((2, 4), np.float32), pids=np.zeros(2, np.int64),
                camids=np.zeros(2, np.int64), paths=np.array(["a", "b"]))

    def grow(name, data):
        if name == "features.npy":  # the header claims 10**6 rows (same header length); the data is still 2 rows
            length = struct.unpack("<H", data[8:10])[0]
            header = data[10:10 + length].replace(b"(2, 4)", b"(1000000, 4)").rstrip(b"\n").rstrip(b" ")
            data = data[:10] + header.ljust(length - 1) + b"\n" + data[10 + length:]
        return name, data, zipfile.ZIP_DEFLATED

    crafted = _rewrite_zip(good, tmp_path / "crafted.npz", grow)
    with pytest.raises(ValueError, match=r"crafted.npz: array features.npy declares \(1000000, 4\) float32 "
                                         r"\(16,000,000 bytes\) but holds 32 bytes"):
        FeatureSet.load(crafted)


def test_float_pids_are_refused_not_truncated(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, features=np.zeros((2, 4), np.float32), pids=np.array([1.7, 2.2]), camids=np.zeros(2, np.int64),
             paths=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"f.npz: pids are float64, expected integers"):
        FeatureSet.load(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    from reid.data.transforms import ImageReadError, read_image

    # 30000 x 30000 RGB declared in a file of a few hundred bytes: 2.7 GB if decoded
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    png = tmp_path / "huge.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                    + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageReadError) as info:
        read_image(png)
    assert info.value.reason == ("is too large to decode: 30000 x 30000 = 900,000,000 pixels, more than the limit of "
                                 "100,000,000 (set REID_MAX_IMAGE_PIXELS=N to raise it for files you trust)")
    import cv2

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((200, 300, 3), np.uint8))
    assert read_image(small).shape == (200, 300, 3)
    monkeypatch.setenv("REID_MAX_IMAGE_PIXELS", "59999")
    with pytest.raises(ImageReadError, match=r"small.png is too large to decode: 300 x 200 = 60,000 pixels, more than "
                                             r"the limit of 59,999"):
        read_image(small)


def test_the_not_an_image_error_never_shows_the_files_bytes(tmp_path):
    from reid.data.transforms import ImageReadError, check_image_file, read_image

    secret = tmp_path / "id_rsa.jpg"
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY----- hunter2")
    for function in (read_image, check_image_file):
        with pytest.raises(ImageReadError) as info:
            function(secret)
        assert "BEGIN" not in str(info.value) and "----" not in str(info.value), str(info.value)
        assert str(info.value).startswith(f"image file {secret} is ")


def _safetensors(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> Path:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize("case, reason", [
    ("huge length", "its header claims 1,000,000,000,000 bytes; the file has 2 after the length (and headers are "
                    "at most 16,777,216)"),
    ("not json", "the header is not JSON"),
    ("not an object", "the header is not a JSON object"),
    ("no offsets", "entry 'w': expected dtype, shape and data_offsets [start, end]"),
    ("beyond the data", "entry 'w': F32 [4] does not fit its bytes 0..16 of 8"),
    ("short", "5 bytes, shorter than the 8-byte header length"),
])
def test_malformed_safetensors_headers_are_one_line_errors(tmp_path, case, reason):
    from reid.models.weights import read_state_dict

    path = tmp_path / "w.safetensors"
    if case == "huge length":
        _safetensors(path, b"{}", length=10**12)
    elif case == "not json":
        _safetensors(path, b"{nope")
    elif case == "not an object":
        _safetensors(path, b"[1, 2]")
    elif case == "no offsets":
        _safetensors(path, b'{"w": {"dtype": "F32", "shape": [2]}}', b"\0" * 8)
    elif case == "beyond the data":
        _safetensors(path, b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8)
    else:
        path.write_bytes(b"\x05" + b"\0" * 4)
    with pytest.raises(ValueError) as info:
        read_state_dict(path)
    assert str(info.value) == f"pretrained weights file {path}: not a valid safetensors file ({reason})"


# ---------------------------------------------------------------------------------------------
# Config gaps: one error line, exit 2, nothing written (12, 13, 14, 19, 20, 21)


@pytest.mark.parametrize("text, message", [
    ("_base_: 5\n", "_base_: expected the path of another config file (a string), got 5"),
    ("a: " + "[" * 50 + "]" * 50 + "\n", "nested too deeply (expected at most 32 levels)"),
    ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply (expected at most 32 levels)"),
])
def test_malformed_config_files_are_one_error_line(tmp_path, text, message, capsys, monkeypatch):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--config", config, f"output_dir={tmp_path / 'run'}"], capsys)
    assert_one_error_line(code, err, config, message)
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=inf", "train.lr: expected a finite number, got 'inf'"),
    ("train.weight_decay=.inf", "train.weight_decay: expected a finite number, got inf"),
    ("test.beta=.inf", "test.beta: expected a finite number, got inf"),
    ("losses=[{name: cross_entropy, weight: -1.0}]", "losses[0].weight: expected a number >= 0, got -1.0"),
    ("losses=[{name: cross_entropy, weight: .nan}]", "losses[0].weight: expected a finite number, got nan"),
    ("output_dir=", "output_dir: expected a folder name, not empty (use . for this folder), got ''"),
    ("data.num_workers=1000", "data.num_workers: expected at most 4 per CPU of this machine"),
    ("a.b=" + "[" * 40 + "]" * 40, "nested too deeply"),
])
def test_config_values_that_passed_validation_are_one_error_line(tmp_path, override, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--config", REPO / "configs/base.yaml", override], capsys)
    assert_one_error_line(code, err, message)
    assert os.listdir(tmp_path) == []  # nothing written, the current folder included


def test_num_workers_is_checked_against_this_machines_cpus(monkeypatch):
    import reid.config

    monkeypatch.setattr(reid.config, "usable_cpus", lambda: 3)
    assert load_config(None, ["data.num_workers=12"]).data.num_workers == 12
    with pytest.raises(ConfigError, match=r"^data.num_workers: expected at most 4 per CPU of this machine "
                                          r"\(3 CPUs: 12\), got 13$"):
        load_config(None, ["data.num_workers=13"])
