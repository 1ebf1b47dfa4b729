"""``reid train``: train a re-ID model from a config and key=value overrides."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .common import add_config_arguments, demo_config, setup_logging

log = logging.getLogger("reid")

SUMMARY = "train a model from a config (default: the demo) and key=value overrides"
DESCRIPTION = f"""{SUMMARY}.

A config is a small delta over configs/base.yaml; any key can be overridden on the command
line. With no --config it runs the demo (configs/demo.yaml of the source tree: a synthetic
dataset, generated on first use, and the ImageNet MobileNetV2 to fine-tune). The run writes to
output_dir: config.yaml, train.log, log.jsonl, last.pt, best.pt and metrics.json.

Stop with Ctrl-C (or SIGTERM) at any time: the checkpoint to resume from is written and the
command exits with status 130; resume=true continues exactly where it stopped. Several
processes: torchrun --nproc_per_node=N -m reid train --config FILE (or tools/train.py)."""
EPILOG = """examples:
  reid train                                    # the demo
  reid train --config configs/market1501_resnet50_group.yaml train.epochs=60
  reid train --config configs/market1501_resnet50_group.yaml resume=true"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_help="experiment YAML, a delta over configs/base.yaml "
                                             "(default: configs/demo.yaml of the source tree)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns the final metrics (also written to OUTPUT_DIR/metrics.json); exits 130 when interrupted."""
    from reid.config import load_config
    from reid.distributed import launcher_rank

    # Overrides alone apply to the demo config.
    cfg = load_config(args.config if args.config is not None else demo_config(), args.overrides)
    setup_logging(is_main=launcher_rank() == 0)  # console; train() adds OUTPUT_DIR/train.log

    from reid.engine import TrainingInterrupted
    from reid.training import train

    try:
        return train(cfg)
    except TrainingInterrupted as err:
        log.warning("%s", err)
        raise SystemExit(130) from None
