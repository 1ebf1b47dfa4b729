"""What the commands share: config arguments, checkpoint + config loading, console logging.

Importing this module is cheap (standard library only): ``reid --help`` imports it, and
must not pay for torch, timm or OpenCV. Everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # annotations only
    from reid.config import Config
    from reid.data import ReidDataset

log = logging.getLogger("reid")
# test.metric -> how the pages and plots name the distance
METRIC_NAMES = {"euclidean": "squared Euclidean", "cosine": "cosine"}

REPO = Path(__file__).resolve().parents[2]
"""The source tree this package was imported from (its configs/ exist in a checkout only)."""
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# Copies of library constants, so that building the parsers imports no torch; tests/test_cli.py
# checks that they equal reid.models.FEATURE_KINDS and reid.ablation.INFERENCE_SWITCHES.
FEATURE_KINDS = ("bn", "pre_bn")
INFERENCE_SWITCHES = ("flip", "mix", "leaky", "beta", "rerank")


# ---------------------------------------------------------------------------------------------
# Arguments


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str | None = None) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help=config_help or "experiment YAML (a delta over configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=3 model.backbone=resnet18")


def add_weights_argument(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--weights", type=Path, required=required, metavar="CKPT",
                        help="checkpoint written by `reid train` (last.pt or best.pt of a run)")


def add_allow_resize_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-resize", action="store_true",
                        help="run at a data.height x data.width other than the checkpoint's training size "
                             "(a warning instead of an error; accuracy usually drops a lot)")


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (default: shown on a terminal, for steps longer than a second)")


def progress_setting(args: argparse.Namespace) -> bool | None:
    """The library's ``progress`` for a command: False with --quiet, else None (a bar when stderr is a terminal)."""
    return False if getattr(args, "quiet", False) else None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (the parser names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Configs and checkpoints


def demo_config() -> Path:
    """configs/demo.yaml of the source tree; a clear error where the package was installed without it."""
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(
            f"no --config given and the default {DEMO_CONFIG} is not there (configs/ ships with the "
            "source repository, not with an installed package); pass --config FILE")
    return DEMO_CONFIG


def checkpoint_config(weights: Path) -> "Config":
    """The config stored in a checkpoint (reads the file as data only; builds no model)."""
    from reid import builders
    from reid.checkpoint import load_checkpoint

    return builders.checkpoint_config(load_checkpoint(weights), weights)


def run_config(stored: "Config", config: Path | None, overrides: list[str]) -> "Config":
    """``config`` if given, else the checkpoint's stored config, with ``overrides`` on top."""
    from reid.config import apply_overrides, load_config

    return load_config(config, overrides) if config else apply_overrides(stored, overrides)


def check_input_size(weights: Path, stored: "Config", cfg: "Config", *, allow_resize: bool) -> None:
    """Refuse to run a model at a size other than its training size, unless ``allow_resize``."""
    trained = (stored.data.height, stored.data.width)
    requested = (cfg.data.height, cfg.data.width)
    if trained == requested:
        return
    message = (f"{weights} was trained at {trained[0]}x{trained[1]} (data.height x data.width) but this run "
               f"would use {requested[0]}x{requested[1]}")
    if not allow_resize:
        raise ValueError(f"{message}; use the training size (drop the data.height/data.width override or the "
                         f"--config that changes it), or pass --allow-resize to run at "
                         f"{requested[0]}x{requested[1]} anyway")
    log.warning("%s (--allow-resize): expect lower accuracy than at the training size", message)


def evaluation_setup(args: argparse.Namespace) -> tuple["Config", Any, "ReidDataset", dict]:
    """(config, device, dataset, checkpoint state) for an evaluation command, with every cheap
    check done first:

    the checkpoint is read (once, as data only) and its config resolved with ``--config`` /
    overrides, the device and the input size are checked, and the dataset is listed (never
    generated), all before any model is built or image decoded (``load_model(state, ...)``).
    """
    from reid import builders
    from reid.checkpoint import load_checkpoint

    state = load_checkpoint(args.weights)
    stored = builders.checkpoint_config(state, args.weights)
    cfg = run_config(stored, args.config, args.overrides)
    device = builders.resolve_device(cfg.train.device)
    check_input_size(args.weights, stored, cfg, allow_resize=args.allow_resize)
    dataset = builders.dataset_from_config(cfg, generate=False)
    return cfg, device, dataset, state


def evaluation_features(args: argparse.Namespace, *, check_queries=None):
    """(config, query, gallery, protocol, recall_ks, base folder, training log) for the commands
    that work from a checkpoint (``--weights``: the dataset's test split, features extracted as
    its ``test`` section says) or from saved features (``--query-features``/``--gallery-features``
    .npz, re-ID protocol). ``check_queries(num_queries, source)`` runs before any feature work.
    """
    if args.weights is not None:
        cfg, device, dataset, state = evaluation_setup(args)
        if check_queries is not None:
            check_queries(len(dataset.query), f"the query split of {dataset.name} ({dataset.root})")

        query, gallery = test_features(cfg, dataset, load_model(state, args.weights, device), device,
                                       progress=progress_setting(args))
        log_file = getattr(args, "log", None) or args.weights.parent / "log.jsonl"
        return cfg, query, gallery, dataset.protocol, dataset.recall_ks, args.weights.parent, log_file
    from reid.config import load_config
    from reid.evaluation.features import FeatureSet

    cfg = load_config(args.config, args.overrides)
    query, gallery = FeatureSet.load(args.query_features), FeatureSet.load(args.gallery_features)
    if check_queries is not None:
        check_queries(len(query), str(args.query_features))
    return cfg, query, gallery, "reid", (1, 5, 10), args.query_features.parent, getattr(args, "log", None)


def test_features(cfg: "Config", dataset: "ReidDataset", model: Any, device: Any, *, progress: bool | None,
                  distributed: Any = None):
    """(query, gallery) features of the dataset's test split, embedded as ``cfg.test`` says
    (``distributed``: a torchrun job's ``DistInfo``, see ``reid.inference.extract_features``)."""
    from reid import builders
    from reid.inference import extract_query_gallery

    query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    return extract_query_gallery(model, query_loader, gallery_loader, device, progress=progress,
                                 distributed=distributed, **builders.embedding_options(cfg))


def distances(query, gallery, cfg: "Config", *, rerank: bool = True, progress: bool | None = None):
    """(distances, re-ranked distances or None), features post-processed and compared as
    ``cfg.test`` says: the matrices the evaluation ranks with."""
    from reid import builders
    from reid.evaluation.evaluator import query_gallery_distances

    options = builders.metric_options(cfg, rerank=rerank)
    keys = ("normalize", "beta", "metric", "rerank", "k1", "k2", "lambda_value")
    return query_gallery_distances(query, gallery, progress=progress, **{k: options[k] for k in keys})


def load_model(state: dict, weights: Path, device: Any):
    """The model of the checkpoint ``state`` read from ``weights``, on ``device`` in eval mode."""
    from reid import builders

    return builders.model_from_checkpoint(state, weights, device)


# ---------------------------------------------------------------------------------------------
# Output


def check_new_file(path: Path, *, overwrite: bool, option: str = "--output") -> None:
    """Before any work: ``path`` must not exist (nor be a folder), unless ``overwrite`` and it is a file."""
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder, not a file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{option} {path} already exists; choose another name or pass --overwrite to replace it")


def check_new_files_in(folder: Path, names: Iterable[str], *, overwrite: bool, what: str) -> None:
    """Before any work: ``folder`` (created later if missing) must hold none of the files this
    command writes there (``names``: names or glob patterns such as ``rank_list_*.png``),
    unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder for {what}")
    if overwrite or not folder.is_dir():
        return
    found = sorted({path.name for name in names for path in folder.glob(name)})
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise FileExistsError(f"{folder} already holds {what} ({shown}); choose another folder or pass --overwrite "
                              "to replace those files")


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """The ``reid`` logger as it was before, after the block: a command run in-process (``main(argv)``
    from a notebook or a test) leaves no handler on a stream that may be closed by then, and no level
    or propagation of its own, behind."""
    logger = logging.getLogger("reid")
    level, propagate, handlers = logger.level, logger.propagate, logger.handlers[:]
    try:
        yield
    finally:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def setup_logging(
    output_dir: Path | None = None, *, is_main: bool = True, filename: str = "train.log", stream: TextIO | None = None
) -> None:
    """INFO to ``stream`` (default stdout; and to OUTPUT_DIR/filename) on the main process; warnings only elsewhere."""
    logger = logging.getLogger("reid")
    for handler in logger.handlers[:]:  # detached, not closed: logging_restored puts a caller's back
        logger.removeHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout if stream is None else stream)]
    if output_dir is not None and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / filename))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
