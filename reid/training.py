"""A training run from a config: check everything, build, train, write the results.

The order is the point. Everything that can be wrong — the config, the output folder, the
checkpoint to resume from, the data, the model, the losses — is checked before the first file
of the run is written, so a mistake never costs a user the run already in ``output_dir``:

* a fresh run into a folder that holds a run refuses (``resume=true`` continues it, a new
  ``output_dir`` starts another, ``overwrite=true`` replaces it);
* a run folder is one that holds reid's marker ``.reid-run.json`` (written first into every
  run folder); ``overwrite=true`` removes only the files a run writes (``RUN_FILES``), and
  a folder whose files of those names reid did not write (no marker: the user's own
  ``config.yaml``, say) is refused even with ``overwrite=true``;
* one run at a time per folder: ``.reid-run.lock`` holds the process id, host and start time
  of the run using it; a second run is refused, and a lock whose process is gone (same host)
  is stale and taken over with a warning;
* ``resume=true`` on a finished run says so and changes nothing; on a run that stopped in or
  before its final evaluation (``metrics.json`` missing), it runs that evaluation;
* a resumed run must be the same experiment: a changed setting that shapes the training
  (model, data, losses, optimizer, schedule) is refused with the key and both values.

Files of a run (all in ``output_dir``): ``.reid-run.json``, ``config.yaml``, ``train.log``
(every message and every error), ``log.jsonl`` (one JSON line per epoch), ``last.pt``,
``best.pt``, ``metrics.json`` and ``untrained_metrics.json`` (with ``train.eval_untrained``),
``tensorboard/`` (when TensorBoard is installed); ``.reid-run.lock`` while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import builders
from .checkpoint import Checkpointer, CheckpointError, Progress, load_checkpoint
from .config import Config, ConfigError, from_dict, save_config, to_dict
from .data import describe_sources
from .data.loaders import shut_down_workers
from .distributed import DistInfo, cleanup_distributed, init_distributed
from .engine import TrainingInterrupted, evaluate, fit, seed_everything
from .evaluation.evaluator import metrics_line, metrics_table
from .io import atomic_write_json, process_alive, remove_stale_temporaries

log = logging.getLogger("reid")

RUN_FILES = ("config.yaml", "train.log", "log.jsonl", "last.pt", "best.pt", "metrics.json",
             "untrained_metrics.json", "tensorboard")
RUN_MARKER = ".reid-run.json"  # "this folder is a run reid wrote": what overwrite=true may clear
RUN_LOCK = ".reid-run.lock"  # "a run is using this folder now": {"pid", "host", "started"}

# Settings a resumed run may change: where and how fast it runs, how long, how it is evaluated.
RESUMABLE_CHANGES = ("output_dir", "resume", "overwrite", "train.epochs", "train.eval_every", "train.device",
                     "data.num_workers", "data.test_batch_size", "data.root", "data.market1501_500k", "test.",
                     "adapt.")


def train(cfg: Config) -> dict[str, Any]:
    """Train as ``cfg`` says; return the final metrics (also written to ``metrics.json``).

    Under torchrun every process calls this; only the main one writes files.
    """
    device = builders.resolve_device(cfg.train.device)
    dist_info, device = init_distributed(device)
    try:
        return _run(cfg, device, dist_info)
    finally:
        cleanup_distributed()


def _run(cfg: Config, device: torch.device, dist_info: DistInfo) -> dict[str, Any]:
    if not dist_info.is_main:
        log.setLevel(logging.WARNING)
    output_dir = Path(cfg.output_dir)
    resume_from = resume_checkpoint(cfg)
    resume_state = load_checkpoint(resume_from) if resume_from is not None else None
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir={output_dir} is a file, not a folder")
    with RunLock(output_dir, enabled=dist_info.is_main):
        if resume_from is None:
            check_output_folder(output_dir, overwrite=cfg.overwrite)
        else:
            finished = _check_resumable(cfg, resume_from, resume_state)
            if finished is not None:
                return finished
        return _train(cfg, device, dist_info, resume_from, resume_state)


def _train(cfg: Config, device: torch.device, dist_info: DistInfo, resume_from: Path | None,
           resume_state: dict[str, Any] | None) -> dict[str, Any]:
    seed_everything(cfg.train.seed + dist_info.rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    data = builders.datasets_from_config(cfg)
    train_loader = builders.train_loader_from_config(cfg, data.train, dist_info.rank, dist_info.world_size)
    test_loaders = {label: builders.test_loaders_from_config(cfg, test_set) for label, test_set in data.tests.items()}
    try:
        return _fit_and_record(cfg, data, train_loader, test_loaders, device, dist_info, resume_from, resume_state)
    finally:  # the run's worker processes end with it (see shut_down_workers)
        shut_down_workers(train_loader, *(loader for pair in test_loaders.values() for loader in pair))


def _fit_and_record(cfg: Config, data: builders.RunDatasets, train_loader: DataLoader,
                    test_loaders: dict[str, tuple[DataLoader, DataLoader]], device: torch.device, dist_info: DistInfo,
                    resume_from: Path | None, resume_state: dict[str, Any] | None) -> dict[str, Any]:
    output_dir = Path(cfg.output_dir)
    dataset = data.train
    steps = builders.steps_per_epoch(cfg, train_loader)
    model = builders.model_from_config(cfg, dataset.num_train_pids).to(device)
    criterion = builders.criterion_from_config(cfg).to(device)
    optimization = builders.optimization_from_config(cfg, [model, criterion], steps, device)
    checkpointer = Checkpointer(
        output_dir, {"model": model, "loss": criterion, **optimization.state_modules()},
        extra={"config": to_dict(cfg), "num_classes": dataset.num_train_pids,
               "sources": [dataclasses.asdict(source) for source in data.sources]}, is_main=dist_info.is_main,
    )
    start = checkpointer.restore(resume_state, resume_from) if resume_from is not None else Progress()

    # Everything is checked: from here on the run writes its files.
    with RunFiles(output_dir, fresh=resume_from is None, overwrite=cfg.overwrite, is_main=dist_info.is_main) as files:
        if dist_info.is_main:
            save_config(cfg, output_dir / "config.yaml")
        log_datasets(data, combine_all=cfg.data.combine_all)
        log.info("model %s: %d-d embeddings, %d classes, %.1fM parameters%s", cfg.model.backbone, model.feature_dim,
                 model.num_classes, sum(p.numel() for p in model.parameters()) / 1e6,
                 f"; resumed from {resume_from} at epoch {start.epoch + 1}, step {start.step}" if resume_from else "")
        if dist_info.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        def evaluate_fn(current_model: torch.nn.Module, final: bool) -> dict[str, Any]:
            # Re-ranking is costly; it runs on the final evaluation only. Several test sets: one
            # block each, {"datasets": {label: metrics}}; one: its metrics as they always were.
            blocks = {label: evaluate(current_model, *test_loaders[label], device,
                                      **builders.eval_options(cfg, test_set, rerank=cfg.test.rerank and final))
                      for label, test_set in data.tests.items()}
            return next(iter(blocks.values())) if len(blocks) == 1 else {"datasets": blocks}

        if cfg.train.eval_untrained and resume_from is None and dist_info.is_main:
            untrained = evaluate_fn(model, True)
            atomic_write_json(output_dir / "untrained_metrics.json", untrained)
            log.info("untrained model: %s", run_metrics_line(untrained))
        metrics = fit(model, train_loader, criterion, optimization, checkpointer, epochs=cfg.train.epochs,
                      steps_per_epoch=steps, device=device, start=start, evaluate_fn=evaluate_fn,
                      eval_every=cfg.train.eval_every, on_epoch=files.log_epoch,
                      last_record=(resume_state or {}).get("epoch_record"))
        if dist_info.is_main:
            metrics = files.write_metrics(metrics, next(iter(data.tests.values())).name)
    return metrics


def log_datasets(data: builders.RunDatasets, *, combine_all: bool) -> None:
    """The training set (each source with its offsets when there are several) and every test set."""
    train = data.train
    only_test = next(iter(data.tests.values())) if len(data.tests) == 1 else None
    if len(data.sources) == 1 and not combine_all and only_test is train:
        log.info("dataset %s (%s)\n%s", train.name, train.root, train.summary())
        return
    log.info("training on %s: %d identities, %d images\n%s", train.name, train.num_train_pids, len(train.train),
             describe_sources(data.sources))
    for label, test_set in data.tests.items():
        log.info("test set %s (%s)\n%s", label, test_set.root, test_set.summary())
        if combine_all and any((s.name, s.root) == (test_set.name, test_set.root) for s in data.sources):
            log.warning("data.combine_all=true trains on the query and gallery of %s: its test scores measure "
                        "memory, not re-identification (evaluate on other datasets with test.datasets)", label)


def metric_blocks(metrics: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    """label -> metrics of each test set of a run's metrics (one test set: ``{None: metrics}``)."""
    return dict(metrics["datasets"]) if "datasets" in metrics else {None: metrics}


def run_metrics_line(metrics: dict[str, Any]) -> str:
    """The headline numbers of every test set on one line ("msmt17: mAP ... | cuhk03_np: mAP ...")."""
    return " | ".join(metrics_line(block) if label is None else f"{label}: {metrics_line(block)}"
                      for label, block in metric_blocks(metrics).items())


def resume_checkpoint(cfg: Config) -> Path | None:
    """``resume=true``: the output folder's last.pt if there is one; a string: that file."""
    if cfg.resume is False or cfg.resume == "":
        return None
    if cfg.resume is True:
        last = Path(cfg.output_dir) / "last.pt"
        if last.is_file():
            return last
        log.warning("resume=true but %s does not exist yet: starting from scratch", last)
        return None
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint file")
    return path


def _check_resumable(cfg: Config, path: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse to resume a different experiment (``state``: the checkpoint read from ``path``);
    for a finished run, its metrics (nothing is run)."""
    if "progress" not in state or "config" not in state:
        raise CheckpointError(f"{path}: cannot resume: it holds no training progress "
                              "(a weights-only file; use model.weights=FILE to start from its weights)")
    try:
        stored = from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its stored config no longer fits this version ({err})") from None
    changed = [(key, old, new) for key, old, new in _differences(to_dict(stored), to_dict(cfg))
               if not key.startswith(RESUMABLE_CHANGES)]
    if changed:
        key, old, new = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ConfigError(f"{key}: {new!r} differs from {old!r} in the checkpoint {path}{more}; a resumed run "
                          "continues the same experiment: drop the change, or start a new output_dir")
    progress = Progress(**state["progress"])
    if progress.epoch < cfg.train.epochs:
        return None
    metrics_file = Path(cfg.output_dir) / "metrics.json"
    if progress.epoch == cfg.train.epochs and not metrics_file.is_file():
        log.info("the run in %s trained all %d epochs but its final evaluation did not finish (no %s): "
                 "running it now", cfg.output_dir, progress.epoch, metrics_file.name)
        return None
    log.info("the run in %s has finished all %d epochs (%s): nothing to do. Train longer with resume=true "
             "train.epochs=N (N > %d); evaluate with: reid test --weights %s", cfg.output_dir, progress.epoch,
             path, progress.epoch, path)
    return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(old.keys() | new.keys()):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
        return out
    return [] if old == new else [(prefix, old, new)]


class RunFiles:
    """The files of one run: the folder check, the log file, the per-epoch log and the metrics.

    On entry (main process, after :func:`check_output_folder` has passed): remove the old
    run's files when a fresh run ``overwrite``s one, create the folder, and send the log to
    ``train.log``. An error inside the ``with`` block is written to ``train.log`` too.
    """

    def __init__(self, output_dir: Path, *, fresh: bool, overwrite: bool, is_main: bool = True) -> None:
        self.output_dir, self.fresh, self.overwrite, self.is_main = output_dir, fresh, overwrite, is_main
        self._handler: logging.Handler | None = None
        self._writer = None

    def __enter__(self) -> "RunFiles":
        if not self.is_main:
            return self
        kept: list[str] = []
        if self.fresh and self.overwrite and any((self.output_dir / name).exists() for name in RUN_FILES):
            # check_output_folder has seen the marker: these names are files this run's kind wrote.
            for name in RUN_FILES:
                target = self.output_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
                remove_stale_temporaries(target)
            kept = sorted(path.name for path in self.output_dir.iterdir() if path.name not in (RUN_MARKER, RUN_LOCK))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        marker = self.output_dir / RUN_MARKER
        if not marker.is_file():  # first, so that every later file is known to be the run's
            from . import __version__

            atomic_write_json(marker, {"format": "reid-run", "version": 1, "reid": __version__,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self._handler = logging.FileHandler(self.output_dir / "train.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(self._handler)
        # The log file gets every INFO line even when the caller left the logger at WARNING.
        self._level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        if kept:  # e.g. what `reid test` wrote beside the old checkpoints: not ours to remove
            log.warning("overwrite=true replaced the previous run in %s but kept the files it did not write, "
                        "which may describe the previous model: %s", self.output_dir, ", ".join(kept))
        self._writer = _tensorboard(self.output_dir)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._handler is None:
            return
        if error is not None:
            # To the file only: the caller reports it on the console. A requested stop is no error.
            level = logging.WARNING if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) else logging.ERROR
            record = log.makeRecord(log.name, level, __file__, 0, "%s: %s", (kind.__name__, error), None)
            self._handler.handle(record)
        log.removeHandler(self._handler)
        log.setLevel(self._level)
        self._handler.close()
        if self._writer is not None:
            self._writer.close()

    def log_epoch(self, record: dict[str, Any], unit: str = "epoch") -> None:
        """One line in ``train.log`` (``unit`` names the step: reid adapt logs rounds), one in
        ``log.jsonl``, and the TensorBoard scalars at step ``record["epoch"]``."""
        losses = ", ".join(f"{k} {v:.4f}" for k, v in record["loss"].items())
        line = f"{unit} {record['epoch']}: {losses}, lr {record['lr']:.2e}, {record['images_per_s']:.1f} img/s"
        if "metrics" in record:
            line += " | " + run_metrics_line(record["metrics"])
        log.info(line)
        with open(self.output_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record["epoch"]
            for name, value in record["loss"].items():
                self._writer.add_scalar(f"loss/{name}", value, step)
            self._writer.add_scalar("lr", record["lr"], step)
            for label, block in metric_blocks(record.get("metrics", {})).items():
                for name in ("mAP", "mINP", "rank1"):
                    if name in block:
                        self._writer.add_scalar(f"eval/{name}" if label is None else f"eval/{label}/{name}",
                                                block[name], step)

    def write_metrics(self, metrics: dict[str, Any], dataset_name: str) -> dict[str, Any]:
        """``metrics.json`` (with the untrained block when there is one; several test sets: in each
        one's block) and the results table of each test set."""
        untrained_file = self.output_dir / "untrained_metrics.json"
        if untrained_file.is_file():
            untrained = json.loads(untrained_file.read_text())
            if "datasets" in metrics:
                before = untrained.get("datasets", {})  # a resumed run may test other sets than it began with
                metrics = {**metrics, "datasets": {label: {**block, **({"untrained": before[label]} if label in before
                                                                       else {})}
                                                   for label, block in metrics["datasets"].items()}}
            else:
                metrics = {**metrics, "untrained": untrained}
        path = atomic_write_json(self.output_dir / "metrics.json", metrics)
        for label, block in metric_blocks(metrics).items():
            rows = {"untrained": block["untrained"]} if "untrained" in block else {}
            rows["trained"] = block
            if "rerank" in block:
                rows["trained + re-ranking"] = block["rerank"]
            log.info("results on %s (%d valid queries)\n%s\nwritten to %s", dataset_name if label is None else label,
                     block.get("num_valid_queries", 0), metrics_table(rows), path)
        return metrics


def check_output_folder(output_dir: Path, *, overwrite: bool = False) -> None:
    """A fresh run may go into a new or empty folder; one that holds a run needs ``overwrite``,
    and files of a run's names that reid did not write (no marker) are never replaced."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir={output_dir} is a file, not a folder")
    held = sorted(name for name in RUN_FILES if (output_dir / name).exists())
    if held and not (output_dir / RUN_MARKER).is_file():
        raise FileExistsError(
            f"output_dir={output_dir} holds {', '.join(held)} but no {RUN_MARKER} (the marker reid writes into "
            "its run folders), so they are not files of a reid run and even overwrite=true leaves them alone; "
            "choose a new output_dir, or move those files away yourself")
    if held and not overwrite:
        raise FileExistsError(
            f"output_dir={output_dir} already holds a run ({', '.join(held)}); continue it with resume=true, "
            "choose a new output_dir, or replace it with overwrite=true")


class RunLock:
    """``OUTPUT_DIR/.reid-run.lock`` while a run uses its folder: one run per folder at a time.

    The lock is created atomically (a complete file linked into place, which fails when one is
    there) and holds the process id, host and start time. A lock of a process that no longer
    runs on this host is stale and taken over with a warning; a live one, or one from another
    host (whose processes cannot be seen from here), refuses the run naming the lock.
    On exit the lock is removed, and the folder too when the run created it and left it empty.
    """

    def __init__(self, output_dir: Path, *, enabled: bool = True) -> None:
        self.output_dir, self.enabled = output_dir, enabled
        self.path = output_dir / RUN_LOCK
        self._created_folder = False

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        self._created_folder = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):  # the lock released or taken over by another process meanwhile: look again
            if self._link(json.dumps(mine) + "\n"):
                return self
            text = self._read()
            if text is None:
                continue
            holder = _lock_holder(text)
            if holder is not None and not (holder["host"] == mine["host"] and not process_alive(holder["pid"])):
                self._tidy()
                raise FileExistsError(
                    f"output_dir={self.output_dir} is in use by another run (process {holder['pid']} on "
                    f"{holder['host']}, started {holder.get('started')}); wait for it to end or choose another "
                    f"output_dir. If no such process runs, delete {self.path}")
            self._take_over(text, holder)
        self._tidy()
        raise FileExistsError(f"output_dir={self.output_dir}: could not take the lock {self.path}; try again")

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        holder = _lock_holder(self._read() or "")
        if holder is not None and (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()):
            self.path.unlink(missing_ok=True)
        self._tidy()

    def _link(self, text: str) -> bool:
        """Put a complete lock file in place, unless there is one (a link never replaces a file)."""
        draft = self.output_dir / f".{RUN_LOCK}.{os.getpid()}.tmp"
        draft.write_text(text)
        try:
            os.link(draft, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            draft.unlink(missing_ok=True)

    def _read(self) -> str | None:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return None

    def _take_over(self, text: str, holder: dict[str, Any] | None) -> None:
        """Remove the stale lock ``text``, unless another process replaced it since it was read."""
        aside = self.output_dir / f".{RUN_LOCK}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text(errors="replace") != text:  # a fresh lock moved aside: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            who = f"process {holder['pid']} (started {holder.get('started')})" if holder else "an unreadable lock"
            log.warning("output_dir=%s: removed a stale lock of %s, which no longer runs", self.output_dir, who)
        aside.unlink(missing_ok=True)

    def _tidy(self) -> None:
        if self._created_folder and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()


def _lock_holder(text: str) -> dict[str, Any] | None:
    """The lock's holder ({"pid", "host", "started"}); None when the text is no lock reid wrote
    (locks are written whole, so a damaged one is no run in progress)."""
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
    return holder if ok else None


def _tensorboard(output_dir: Path):
    """A SummaryWriter when TensorBoard is installed; training does not depend on it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output_dir / "tensorboard"))
