"""``reid adapt``: adapt a trained model to unlabelled images of new cameras (clustering pseudo-labels)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import add_quiet_argument, add_weights_argument, progress_setting, setup_logging

log = logging.getLogger("reid")

SUMMARY = "adapt a model to unlabelled images (DBSCAN pseudo-labels, cluster-memory loss)"
DESCRIPTION = f"""{SUMMARY}.

Each round extracts the features of the images, standardises them per camera, computes their
k-reciprocal Jaccard distance, clusters them with DBSCAN into pseudo-identities (with the video constraints of a
tracklets.csv written by `reid crops`: one tracklet is one person, two crops of one frame are
two people) and trains on them with a cluster-memory contrastive loss, camera-balanced.
RUN/last.pt, written after every round, is a normal checkpoint for `reid test`, `extract` and
`report`; train.log and log.jsonl hold one record per round. key=value overrides apply to the
source checkpoint's config: the adapt.* keys (configs/base.yaml; the batch: adapt.num_identities,
adapt.num_instances), train.device. Ctrl-C stops; resume=true continues after the last finished
round; overwrite=true replaces a run in RUN."""
EPILOG = """examples:
  reid adapt --weights outputs/demo/last.pt --images crops/ --output outputs/adapted
  reid adapt --weights outputs/demo/last.pt --images cam1/ cam2/ --output outputs/adapted adapt.rounds=4 adapt.eps=0.5
  reid adapt --weights outputs/demo/last.pt --images crops/ --output outputs/adapted resume=true"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_argument(parser)
    parser.add_argument("--images", type=Path, nargs="+", required=True, metavar="DIR",
                        help="folders of unlabelled crops (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, metavar="RUN", help="the run's folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. adapt.rounds=4")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns the summary (one record per round, the checkpoint path); exits 130 when interrupted."""
    from reid.adaptation.adapt import adapt, adaptation_config
    from reid.engine import TrainingInterrupted

    cfg, source = adaptation_config(args.weights, args.overrides, args.output)
    setup_logging()  # console; adapt() adds RUN/train.log
    try:
        summary = adapt(cfg, source, args.weights, args.images, progress=progress_setting(args))
    except TrainingInterrupted as err:
        log.warning("%s", err)
        raise SystemExit(130) from None
    log.info("adapted model: %s (evaluate: reid test --weights %s data.name=... data.root=...)",
             summary["checkpoint"], summary["checkpoint"])
    return summary
