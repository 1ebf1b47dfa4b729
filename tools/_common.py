"""What the tools share: config arguments, logging set-up, the metrics table."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def add_config_arguments(parser: argparse.ArgumentParser, *, config_required: bool = False) -> None:
    parser.add_argument("--config", type=Path, required=config_required,
                        help="experiment YAML (a delta over configs/base.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.epochs=3 model.backbone=resnet18")


def model_and_config(parser: argparse.ArgumentParser, weights: Path, config: Path | None, overrides: list[str]):
    """(model on its device, config, device) for a checkpoint: the config is ``config`` if given,
    else the one stored in the checkpoint, with ``overrides`` on top; a bad key exits with a message."""
    from reid import builders
    from reid.config import ConfigError, apply_overrides, load_config

    model, stored = builders.load_model_from_checkpoint(weights)
    try:
        cfg = load_config(config, overrides) if config else apply_overrides(stored, overrides)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    device = builders.resolve_device(cfg.train.device)
    return model.to(device), cfg, device


def setup_logging(
    output_dir: Path | None = None, *, is_main: bool = True, filename: str = "train.log", stream: TextIO = sys.stdout
) -> None:
    """INFO to ``stream`` (and to OUTPUT_DIR/filename) on the main process; warnings only elsewhere."""
    logger = logging.getLogger("reid")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
    if output_dir is not None and is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / filename))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per named result: mAP, mINP and Rank-1/5/10 in percent."""
    columns = [("mAP", "mAP"), ("mINP", "mINP"), ("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10")]
    width = max([len("run")] + [len(name) for name in rows])
    lines = [f"| {'run':<{width}} | " + " | ".join(f"{title:>7}" for _, title in columns) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 9 for _ in columns) + "|"]
    for name, metrics in rows.items():
        cells = " | ".join(f"{100 * metrics[key]:7.2f}" if key in metrics else f"{'-':>7}" for key, _ in columns)
        lines.append(f"| {name:<{width}} | {cells} |")
    return "\n".join(lines)
