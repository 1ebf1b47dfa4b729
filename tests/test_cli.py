"""The `reid` command: fast help, one `error:` line for every user mistake, checks before work,
`reid test` never touching a training run's metrics.json, and malicious checkpoints refused.

Most cases run the command in-process (``reid.cli.main([...])``); a few run it in a subprocess
to prove the entry points (``python -m reid``, ``python tools/X.py``, the console script).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import reid.cli
from reid.cli import COMMANDS, error_line, is_user_error
from reid.cli import common as cli_common

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 64, 32


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``reid.cli.main(argv)`` run in-process; 0 when it returns."""
    capsys.readouterr()
    try:
        reid.cli.main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *names: object) -> str:
    """Exit 2, stderr exactly one line `error: ...` naming every one of ``names``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("error: "), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def run_subprocess(args: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_market, save_tiny_checkpoint) -> Path:
    """A training run folder: best.pt (a tiny 64x32 model whose config points at tiny_market)
    and the run's own metrics.json."""
    run = tmp_path_factory.mktemp("run")
    save_tiny_checkpoint(run / "best.pt", [
        "data.name=market1501", f"data.root={tiny_market}", "data.num_workers=0", "data.test_batch_size=64",
        "train.device=cpu", "test.k1=5", "test.k2=2", "test.max_rank=10", "test.rerank=false",
    ])
    (run / "metrics.json").write_text(json.dumps({"mAP": 0.5, "rank1": 0.6, "note": "the training run's"}, indent=2))
    return run


@pytest.fixture(scope="module")
def weights(run_dir) -> Path:
    return run_dir / "best.pt"


# ---------------------------------------------------------------------------------------------
# Structure and help


def test_every_command_has_a_summary_a_description_and_an_example(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in COMMANDS:
        assert name in out
    for name in COMMANDS:
        code, out, _ = run_cli([name, "--help"], capsys)
        assert code == 0
        assert out.startswith(f"usage: reid {name} ")
        module = sys.modules[f"reid.cli.{COMMANDS[name]}"]
        assert "\n" not in module.SUMMARY and module.SUMMARY in out
        assert "example" in out and f"reid {name}" in out.split("example", 1)[1]
        assert hasattr(module, "add_arguments") and hasattr(module, "run")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from reid.cli import main\n"
        "for argv in (['--help'], *[[c, '--help'] for c in "
        f"{list(COMMANDS)!r}]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'timm', 'cv2', 'albumentations', 'scipy', 'matplotlib') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = run_subprocess(["-c", code])
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_help_is_fast():
    start = time.perf_counter()
    done = run_subprocess(["-m", "reid", "--help"])
    seconds = time.perf_counter() - start
    assert done.returncode == 0 and "usage: reid" in done.stdout
    assert seconds < 5, f"reid --help took {seconds:.2f} s"  # about 0.05 s; torch alone takes ~2 s


def test_parser_constants_equal_the_library_ones():
    from reid.data.synthetic import SPLIT_FOLDERS
    from reid.ablation import INFERENCE_SWITCHES
    from reid.models import FEATURE_KINDS
    from reid.cli import make_synthetic

    assert cli_common.FEATURE_KINDS == FEATURE_KINDS
    assert cli_common.INFERENCE_SWITCHES == INFERENCE_SWITCHES
    assert make_synthetic.SPLIT_FOLDERS == SPLIT_FOLDERS


def test_scripts_and_module_entry_points(tmp_path):
    done = run_subprocess(["-m", "reid", "--version"])
    assert done.returncode == 0 and done.stdout.startswith("reid ")
    done = run_subprocess([str(REPO / "tools" / "make_synthetic.py"), "--help"], cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("usage: reid make-synthetic")
    console = Path(sys.executable).with_name("reid")
    if console.is_file():  # installed with pip install -e .
        done = subprocess.run([str(console), "export", "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("usage: reid export")


def test_tools_shims_return_the_command_result(tmp_path):
    from tools import make_synthetic

    root = make_synthetic.main(["--root", str(tmp_path / "syn"), "--train-ids", "2", "--test-ids", "2",
                                "--cameras", "2", "--height", "32", "--width", "16", "--distractors", "1",
                                "--junk", "0", "--images-per-camera", "2", "2", "--cameras-per-id", "2", "2"])
    assert root == tmp_path / "syn" and (root / "query").is_dir()


# ---------------------------------------------------------------------------------------------
# The error rule


def test_error_line_folds_messages():
    assert error_line(ValueError("first\n  second\n\nthird")) == "first second third"
    assert error_line(KeyError("x.npz: missing key(s) camids")) == "x.npz: missing key(s) camids"
    worker = FileNotFoundError(
        "Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise FileNotFoundError(msg)\nFileNotFoundError: image not found: a.jpg\n')
    assert error_line(worker) == "image not found: a.jpg"
    assert error_line(ValueError()) == "ValueError"


def test_which_exceptions_are_user_mistakes():
    from reid.config import ConfigError

    assert is_user_error(ConfigError("x")) and is_user_error(FileNotFoundError("x"))
    assert is_user_error(PermissionError("x")) and is_user_error(ValueError("x"))
    assert is_user_error(KeyError("f.npz: missing key(s) camids"))
    assert not is_user_error(KeyError("model"))  # a bare key: a bug's lookup
    assert not is_user_error(RuntimeError("x")) and not is_user_error(TypeError("x"))


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_reraises_with_the_traceback(where, tmp_path):
    argv = ["test", "--weights", str(tmp_path / "missing.pt")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        reid.cli.main(argv)


def test_bugs_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("reid.cli.convert.run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        reid.cli.main(["convert-checkpoint", "a.pt", "b.pt"])

    def bare_key(args):
        return {}["model"]

    monkeypatch.setattr("reid.cli.convert.run", bare_key)
    with pytest.raises(KeyError):
        reid.cli.main(["convert-checkpoint", "a.pt", "b.pt"])


def test_overrides_may_follow_options(capsys):
    args = reid.cli.parse_args(["test", "--weights", "w.pt", "a.b=1", "--rerank", "c.d=2", "--debug"])
    assert args.overrides == ["a.b=1", "c.d=2"] and args.rerank and args.debug
    code, _, err = run_cli(["extract", "--weights", "w.pt", "stray"], capsys)
    assert code == 2 and "unrecognized arguments: stray" in err


def test_result_is_returned_to_callers_not_to_the_console_script(monkeypatch):
    monkeypatch.setattr("reid.cli.convert.run", lambda args: {"a": 1})
    assert reid.cli.main(["convert-checkpoint", "a.pt", "b.pt"]) == {"a": 1}
    monkeypatch.setattr(sys, "argv", ["reid", "convert-checkpoint", "a.pt", "b.pt"])
    assert reid.cli.main() is None  # the console script does sys.exit(main()): status 0


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_run_in_process_leaves_the_reid_logger_as_it_was(fails, monkeypatch, tmp_path, capsys):
    # A handler left on a stream the caller has since closed fails every later log call ("Logging
    # error"), and a level or propagation of ours changes what the caller's own handlers see.
    from reid.cli.common import setup_logging

    logger = logging.getLogger("reid")
    mine = logging.StreamHandler(io.StringIO())
    added: list[logging.Handler] = []

    def run(args):
        setup_logging(tmp_path)
        added.extend(logger.handlers)
        logger.info("working")
        if fails:
            raise ValueError("bad value")
        return 1

    monkeypatch.setattr("reid.cli.convert.run", run)
    before = logger.level, logger.propagate
    logger.addHandler(mine)
    logger.setLevel(logging.WARNING)
    logger.propagate = True
    try:
        code, _, _ = run_cli(["convert-checkpoint", "a.pt", "b.pt"], capsys)
        assert (code == 2) == fails
        assert logger.handlers[-1] is mine and mine not in added and len(added) == 2
        assert all(handler not in logger.handlers for handler in added)
        assert (logger.level, logger.propagate) == (logging.WARNING, True)
        assert "working" in (tmp_path / "train.log").read_text() and mine.stream.getvalue() == ""
        assert added[1].stream is None  # the command's file handler is closed
        logger.warning("after")
        assert mine.stream.getvalue() == "after\n"  # the caller's handler still works
    finally:
        logger.removeHandler(mine)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def test_argparse_errors_exit_2(capsys):
    code, _, err = run_cli(["test"], capsys)
    assert code == 2 and "--weights" in err
    code, _, err = run_cli(["no-such-command"], capsys)
    assert code == 2 and "invalid choice" in err


def test_console_entry_point_one_line_and_debug_traceback(tmp_path):
    missing = tmp_path / "missing.pt"
    done = run_subprocess(["-m", "reid", "test", "--weights", str(missing)])
    assert done.returncode == 2
    assert done.stderr == f"error: checkpoint not found: {missing}\n"
    done = run_subprocess(["-m", "reid", "--debug", "test", "--weights", str(missing)])
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and str(missing) in done.stderr


def test_script_entry_point_one_line(tmp_path, weights):
    done = run_subprocess([str(REPO / "tools" / "extract.py"), "--weights", str(weights),
                           "--images", str(tmp_path / "no-crops"), "--output", str(tmp_path / "f.npz")], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: --images {tmp_path / 'no-crops'}: no such folder\n"


# ---------------------------------------------------------------------------------------------
# Ordinary mistakes, each one line naming the file, key or value


def test_missing_dataset_folder(weights, tmp_path, capsys):
    code, _, err = run_cli(["test", "--weights", weights, f"data.root={tmp_path / 'nowhere'}"], capsys)
    assert_one_error_line(code, err, tmp_path / "nowhere")


def test_missing_checkpoint(tmp_path, capsys):
    for command in (["test"], ["visualize"], ["export", "--output", tmp_path / "m.onnx"],
                    ["extract", "--images", tmp_path, "--output", tmp_path / "f.npz"]):
        code, _, err = run_cli([*command, "--weights", tmp_path / "nope.pt"], capsys)
        assert_one_error_line(code, err, tmp_path / "nope.pt")


def test_corrupt_checkpoints(weights, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pt"
    data = weights.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        for command in (["test"], ["export", "--output", tmp_path / "m.onnx"]):
            code, _, err = run_cli([*command, "--weights", path], capsys)
            assert_one_error_line(code, err, path)
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_backbone_in_a_checkpoint(weights, tmp_path, capsys):
    from reid.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(weights)
    state["config"]["model"]["backbone"] = "resnet5O"
    save_checkpoint(state, tmp_path / "typo.pt")
    code, _, err = run_cli(["export", "--weights", tmp_path / "typo.pt", "--output", tmp_path / "m.onnx"], capsys)
    line = assert_one_error_line(code, err, "resnet5O", "model.backbone")
    assert "resnet50" in line  # a suggestion


def test_unknown_backbone_in_training(tiny_train_args, capsys):
    code, _, err = run_cli(["train", *tiny_train_args, "model.backbone=convnext_tiniy"], capsys)
    line = assert_one_error_line(code, err, "convnext_tiniy", "model.backbone")
    assert "convnext_tiny" in line


def test_unknown_dataset_name(weights, capsys):
    code, _, err = run_cli(["test", "--weights", weights, "data.name=nosuchset"], capsys)
    assert_one_error_line(code, err, "nosuchset")


def test_garbage_and_incomplete_feature_files(tiny_market, tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, features=np.zeros((2, 4), np.float32), pids=np.arange(2), camids=np.arange(2),
             paths=np.array(["a.jpg", "b.jpg"]))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(1).bytes(2048))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    partial = tmp_path / "partial.npz"
    np.savez(partial, features=np.zeros((2, 4), np.float32), paths=np.array(["a.jpg", "b.jpg"]))
    for bad, names in ((garbage, [garbage]), (truncated, [truncated]), (partial, [partial, "pids", "camids"])):
        code, _, err = run_cli(["visualize", "--query-features", good, "--gallery-features", bad,
                                "--output", tmp_path / "vis"], capsys)
        assert_one_error_line(code, err, *names)
    assert not (tmp_path / "vis").exists()


def test_missing_images_folder(weights, tmp_path, capsys):
    code, _, err = run_cli(["extract", "--weights", weights, "--images", tmp_path / "crops",
                            "--output", tmp_path / "f.npz"], capsys)
    assert_one_error_line(code, err, "--images", tmp_path / "crops")
    code, _, err = run_cli(["extract", "--weights", weights, "--query", tmp_path, "--gallery", tmp_path / "g"], capsys)
    assert_one_error_line(code, err, "--gallery", tmp_path / "g")


@pytest.mark.parametrize("override, names", [
    ("train.epochz=3", ["train.epochz"]),
    ("nonsense", ["nonsense", "key=value"]),
    ("data.height=tall", ["data.height", "tall"]),
])
def test_bad_overrides(weights, override, names, capsys):
    code, _, err = run_cli(["test", "--weights", weights, override], capsys)
    assert_one_error_line(code, err, *names)


def test_bad_override_in_training(tiny_train_args, capsys):
    code, _, err = run_cli(["train", *tiny_train_args, "train.epochz=3"], capsys)
    assert_one_error_line(code, err, "unknown key 'train.epochz'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(weights, tmp_path, tiny_train_args, capsys):
    code, _, err = run_cli(["test", "--weights", weights, "train.device=cuda"], capsys)
    assert_one_error_line(code, err, "train.device", "cuda")
    code, _, err = run_cli(["extract", "--weights", weights, "--images", tmp_path, "--output", tmp_path / "f.npz",
                            "--device", "cuda:0"], capsys)
    assert_one_error_line(code, err, "--device", "cuda:0")
    code, _, err = run_cli(["train", *tiny_train_args, "train.device=cuda"], capsys)
    assert_one_error_line(code, err, "train.device", "cuda")


def test_missing_demo_config_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli_common, "DEMO_CONFIG", tmp_path / "configs" / "demo.yaml")
    code, _, err = run_cli(["train", "train.epochs=1"], capsys)
    assert_one_error_line(code, err, tmp_path / "configs" / "demo.yaml", "--config")


def test_make_synthetic_clash_is_one_line(tmp_path, capsys):
    args = ["make-synthetic", "--root", tmp_path / "syn", "--train-ids", "2", "--test-ids", "2", "--cameras", "2",
            "--height", "32", "--width", "16", "--distractors", "1", "--junk", "0", "--images-per-camera", "2", "2",
            "--cameras-per-id", "2", "2"]
    code, _, _ = run_cli(args, capsys)
    assert code == 0
    code, _, err = run_cli([*args, "--seed", "3"], capsys)
    assert_one_error_line(code, err, tmp_path / "syn", "--overwrite")


# ---------------------------------------------------------------------------------------------
# Checks before work


@pytest.fixture
def no_model_work(monkeypatch):
    """Any model building or feature extraction fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before the checks")

    monkeypatch.setattr("reid.builders.model_from_checkpoint", forbidden)
    monkeypatch.setattr("reid.inference.extract_features", forbidden)


def test_query_index_is_checked_before_any_model_work(weights, tiny_market, tmp_path, no_model_work, capsys):
    from reid.data import build_dataset

    num_queries = len(build_dataset("market1501", tiny_market).query)
    code, _, err = run_cli(["visualize", "--weights", weights, "--query-index", "99999",
                            "--output", tmp_path / "vis"], capsys)
    assert_one_error_line(code, err, "--query-index 99999", f"{num_queries} queries")
    assert not (tmp_path / "vis").exists()


@pytest.mark.parametrize("command", [["test"], ["visualize", "--top-k", "2"]])
def test_another_input_size_is_refused(weights, command, tmp_path, no_model_work, capsys):
    code, _, err = run_cli([*command, "--weights", weights, "data.height=128", "--output", tmp_path / "out"], capsys)
    assert_one_error_line(code, err, weights, f"{HEIGHT}x{WIDTH}", f"128x{WIDTH}", "--allow-resize")


def test_allow_resize_runs_with_a_warning(weights, tmp_path, capsys):
    code, out, err = run_cli(["test", "--weights", weights, "data.height=96", "--allow-resize",
                              "--output", tmp_path / "m.json"], capsys)
    assert code == 0, err
    assert "WARNING" in out and f"{HEIGHT}x{WIDTH}" in out and f"96x{WIDTH}" in out
    assert (tmp_path / "m.json").is_file()


@pytest.mark.parametrize("command", [["test"], ["visualize"]])
def test_evaluation_never_generates_a_synthetic_dataset(weights, command, tmp_path, no_model_work, capsys):
    folder = tmp_path / "synthetic"
    code, _, err = run_cli([*command, "--weights", weights, "data.name=synthetic", f"data.root={folder}"], capsys)
    assert_one_error_line(code, err, folder, "reid make-synthetic")
    assert not folder.exists()


# ---------------------------------------------------------------------------------------------
# `reid test` writes its own file, never the training run's metrics.json


def test_test_writes_beside_the_checkpoint_and_never_metrics_json(run_dir, weights, capsys):
    metrics_json = run_dir / "metrics.json"
    before = metrics_json.read_bytes()

    code, _, err = run_cli(["test", "--weights", weights], capsys)
    assert code == 0, err
    written = json.loads((run_dir / "best_test_metrics.json").read_text())
    assert {"mAP", "mINP", "rank1", "rank5", "rank10"} <= set(written)
    assert metrics_json.read_bytes() == before

    code, _, err = run_cli(["test", "--weights", weights, "--ablate", "flip"], capsys)
    assert code == 0, err
    ablation = json.loads((run_dir / "best_ablation.json").read_text())
    assert len(ablation) == 2  # flip off / on
    assert metrics_json.read_bytes() == before

    # run again: its own file is replaced (atomically: no temporary left behind)
    code, _, err = run_cli(["test", "--weights", weights], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "best_test_metrics.json").read_text()) == written
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    code, _, err = run_cli(["test", "--weights", weights, "--output", metrics_json], capsys)
    assert_one_error_line(code, err, metrics_json)
    assert metrics_json.read_bytes() == before


def test_bad_ablation_switch_is_named(weights, capsys):
    code, _, err = run_cli(["test", "--weights", weights, "--ablate", "flip,flop"], capsys)
    assert_one_error_line(code, err, "flop", "--ablate")


# ---------------------------------------------------------------------------------------------
# Checkpoints: malicious files are refused; old ones are converted on request


class Evil:
    """Unpickling this (with weights_only=False) creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "num_classes": 2, "payload": Evil(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_malicious_checkpoint_runs_nothing(evil_checkpoint, tiny_train_args, tmp_path, capsys):
    evil, marker = evil_checkpoint
    images = tmp_path / "images"
    images.mkdir()
    commands = [
        ["test", "--weights", evil],
        ["extract", "--weights", evil, "--images", images, "--output", tmp_path / "f.npz"],
        ["export", "--weights", evil, "--output", tmp_path / "m.onnx"],
        ["visualize", "--weights", evil],
        ["train", *tiny_train_args, f"resume={evil}", f"output_dir={tmp_path / 'resumed'}"],
    ]
    for argv in commands:
        code, _, err = run_cli(argv, capsys)
        assert_one_error_line(code, err, evil)
        assert not marker.exists(), argv
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "f.npz").exists()


def _old_checkpoint(weights: Path, path: Path) -> Path:
    """A checkpoint as reid 0.1 wrote it: live numpy / Python RNG states, pickled."""
    from reid.checkpoint import load_checkpoint

    state = load_checkpoint(weights)
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    state["epoch"] = 3
    for key in ("format", "version"):
        state.pop(key, None)
    torch.save(state, path)
    return path


def test_convert_checkpoint(weights, tmp_path, capsys):
    old = _old_checkpoint(weights, tmp_path / "old.pt")
    code, _, err = run_cli(["export", "--weights", old, "--output", tmp_path / "m.onnx"], capsys)
    assert_one_error_line(code, err, old, "reid convert-checkpoint")

    new = tmp_path / "new.pt"
    code, out, err = run_cli(["convert-checkpoint", old, new], capsys)
    assert code == 0, err
    assert err.startswith("warning: ") and str(old) in err and "trust" in err
    assert str(new) in out
    from reid.checkpoint import load_checkpoint

    converted = load_checkpoint(new)
    original = load_checkpoint(weights)
    assert converted["num_classes"] == original["num_classes"] and converted["config"] == original["config"]
    for key, value in original["model"].items():
        assert torch.equal(converted["model"][key], value), key

    # NEW exists: refused (before the warning, nothing unpickled) unless --overwrite
    before = new.read_bytes()
    code, _, err = run_cli(["convert-checkpoint", old, new], capsys)
    assert_one_error_line(code, err, new, "--overwrite")
    assert new.read_bytes() == before
    code, _, err = run_cli(["convert-checkpoint", old, new, "--overwrite"], capsys)
    assert code == 0, err

    code, _, err = run_cli(["convert-checkpoint", tmp_path / "absent.pt", tmp_path / "x.pt"], capsys)
    assert_one_error_line(code, err, tmp_path / "absent.pt")


def test_extract_skips_unreadable_images_when_asked_and_never_overwrites(tiny_checkpoint, tiny_market, tmp_path, capsys):
    import shutil

    weights, _ = tiny_checkpoint
    folder = tmp_path / "crops"
    folder.mkdir()
    names = sorted(p.name for p in (tiny_market / "query").iterdir())[:3]
    for name in names:
        shutil.copy(tiny_market / "query" / name, folder / name)
    good = (folder / names[0]).read_bytes()
    (folder / "0999_c1s1_000001_00.jpg").write_bytes(good[: len(good) // 2])  # truncated
    output = tmp_path / "feats.npz"
    with pytest.raises(SystemExit) as exited:
        reid.cli.main(["extract", "--weights", str(weights), "--images", str(folder), "--output", str(output)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exited.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "0999_c1s1_000001_00.jpg" in errors[0] and "truncated" in errors[0]
    assert not output.exists()
    with pytest.warns(UserWarning, match=r"left out 1 unreadable image file\(s\).*0999_c1s1_000001_00.jpg is truncated"):
        result = reid.cli.main(["extract", "--weights", str(weights), "--images", str(folder), "--output", str(output),
                                "--skip-invalid"])
    assert [Path(p).name for p in result["features"].paths] == names and output.is_file()
    before = output.read_bytes()
    with pytest.raises(SystemExit) as exited:
        reid.cli.main(["extract", "--weights", str(weights), "--images", str(folder), "--output", str(output), "--skip-invalid"])
    assert exited.value.code == 2 and "feats.npz already exists" in capsys.readouterr().err
    assert output.read_bytes() == before
    with pytest.warns(UserWarning, match="left out 1 unreadable"):
        reid.cli.main(["extract", "--weights", str(weights), "--images", str(folder), "--output", str(output),
                       "--skip-invalid", "--overwrite"])


# ---------------------------------------------------------------------------------------------
# Progress bars: on a terminal unless --quiet


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, as an interactive user's is."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command, bars", [
    (["test"], ["extracting query", "extracting gallery", "img/s", "ranking"]),
    (["visualize", "--top-k", "2", "--num-queries", "1"], ["extracting query", "re-ranking"]),
    (["extract"], ["extracting features", "img/s"]),
])
def test_progress_on_a_terminal_and_quiet_with_the_flag(command, bars, weights, tiny_market, tmp_path, monkeypatch):
    monkeypatch.setattr("reid.progress.QUIET_DELAY_S", 0.0)  # tiny steps finish within the usual delay
    for quiet in (False, True):
        out = tmp_path / f"quiet_{quiet}"
        target = ["--images", tiny_market / "query", "--output", out / "f.npz"] if command == ["extract"] else [
            "--output", out / ("m.json" if command == ["test"] else "vis")]
        stderr = _Terminal()
        with monkeypatch.context() as patch:
            patch.setattr(sys, "stderr", stderr)
            reid.cli.main([str(a) for a in [*command, "--weights", weights, *target, *(["--quiet"] if quiet else [])]])
        text = stderr.getvalue()
        for bar in bars:
            assert (bar in text) != quiet, (quiet, bar, text[-2000:])


# ---------------------------------------------------------------------------------------------
# The report and the "same person?" threshold


def test_test_report_and_report_command_write_the_page_and_verification(run_dir, weights, tmp_path, capsys):
    code, _, err = run_cli(["test", "--weights", weights, "--report", tmp_path / "page", "--quiet"], capsys)
    assert code == 0, err
    tested = json.loads((run_dir / "best_test_metrics.json").read_text())
    written = json.loads((tmp_path / "page" / "metrics.json").read_text())
    assert written["verification"] == tested["verification"]  # the same distances, the same thresholds
    assert written["mAP"] == tested["mAP"] and (tmp_path / "page" / "index.html").is_file()
    # the thresholds are those of the pairs the protocol keeps, on the distances the metrics used
    result = reid.cli.main(["report", "--weights", str(weights), "--output", str(tmp_path / "again"), "--quiet"])
    assert result["metrics"]["verification"] == tested["verification"]
    assert set(tested["verification"]["threshold_at_fpr"]) == {"0.0001", "0.001", "0.01"}
    before = (tmp_path / "page" / "index.html").read_bytes()
    code, _, err = run_cli(["report", "--weights", weights, "--output", tmp_path / "page"], capsys)
    assert_one_error_line(code, err, "already holds a report", "--overwrite")
    assert (tmp_path / "page" / "index.html").read_bytes() == before


def test_extract_says_same_person_with_the_threshold_of_a_chosen_fpr(run_dir, weights, tiny_market, tmp_path, capsys):
    import shutil

    query, gallery = tmp_path / "q", tmp_path / "g"
    query.mkdir()
    gallery.mkdir()
    for name in sorted(p.name for p in (tiny_market / "query").iterdir())[:2]:
        shutil.copy(tiny_market / "query" / name, query / name)
    for name in sorted(p.name for p in (tiny_market / "bounding_box_test").iterdir())[:6]:
        shutil.copy(tiny_market / "bounding_box_test" / name, gallery / name)
    args = ["extract", "--weights", weights, "--query", query, "--gallery", gallery, "--top-k", "6", "--quiet"]
    missing = tmp_path / "none.json"
    code, _, err = run_cli([*args, "--same-person-fpr", "0.01", "--metrics", missing], capsys)
    assert_one_error_line(code, err, missing, "reid test --weights")  # no evaluation to take it from
    assert run_cli(["test", "--weights", weights, "--quiet"], capsys)[0] == 0
    threshold = json.loads((run_dir / "best_test_metrics.json").read_text())["verification"]["threshold_at_fpr"]["0.01"]
    result = reid.cli.main([str(a) for a in [*args, "--same-person-fpr", "0.01"]])
    out = capsys.readouterr().out
    assert result["threshold"] == threshold
    for matches in result["matches"].values():
        for name, distance in matches:
            verdict = "same" if distance <= threshold else "different"
            assert f"{distance:.6f}  {verdict}" in out
    code, _, err = run_cli([*args, "--same-person-fpr", "0.05"], capsys)
    assert_one_error_line(code, err, "--same-person-fpr 0.05", "0.0001, 0.001, 0.01")
    code, _, err = run_cli([*args, "--same-person-fpr", "0.01", "--metric", "cosine"], capsys)
    assert_one_error_line(code, err, "test.metric=euclidean", "--threshold")


def test_report_has_no_size_limit_and_its_memory_budget_changes_no_byte(tiny_market, tmp_path, capsys):
    """From saved features: the report streams within test.memory_mb (here: one query row per
    block), and every file it writes is the one the default budget writes."""
    from reid.data import build_dataset
    from reid.evaluation.features import FeatureSet

    dataset = build_dataset("market1501", str(tiny_market))
    rng = np.random.default_rng(0)
    for name, items in (("q", dataset.query), ("g", dataset.gallery)):
        paths, pids, camids = zip(*items)
        FeatureSet(rng.normal(size=(len(items), 16)).astype(np.float32), np.array(pids), np.array(camids),
                   [str(p) for p in paths]).save(tmp_path / f"{name}.npz")
    base = ["report", "--query-features", tmp_path / "q.npz", "--gallery-features", tmp_path / "g.npz", "--rerank",
            "--worst", "2", "--best", "1", "--random", "1", "--quiet"]
    assert run_cli([*base, "--output", tmp_path / "default", "test.max_rank=10"], capsys)[0] == 0
    assert run_cli([*base, "--output", tmp_path / "tiny", "test.max_rank=10", "test.memory_mb=1e-9"], capsys)[0] == 0
    names = sorted(p.name for p in (tmp_path / "default").iterdir())
    assert "distances.png" in names and "metrics.json" in names and any(n.startswith("rank_list_") for n in names)
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == names
    for name in names:
        assert (tmp_path / "tiny" / name).read_bytes() == (tmp_path / "default" / name).read_bytes(), name
    code, _, err = run_cli([*base, "--output", tmp_path / "bad", "test.memory_mb=-1"], capsys)
    assert_one_error_line(code, err, "test.memory_mb", ">= 0")
    assert not (tmp_path / "bad").exists()
