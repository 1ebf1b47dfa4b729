"""``reid report``: one self-contained HTML page of an evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import (
    add_allow_resize_argument,
    add_config_arguments,
    add_quiet_argument,
    METRIC_NAMES,
    add_weights_argument,
    check_new_files_in,
    evaluation_features,
    positive_int,
    progress_setting,
    setup_logging,
)

log = logging.getLogger("reid")

SUMMARY = "write a self-contained HTML evaluation report (metrics, ROC, rank lists, per-query table)"
DESCRIPTION = f"""{SUMMARY}.

From a checkpoint (--weights, with the options of `reid test`: the dataset's test split, features
as its `test` section says) or from saved features (--query-features/--gallery-features .npz).
Writes into --output DIR (created if missing): index.html, which works from file:// with no
network (PNG images beside it), and metrics.json (the test metrics plus "verification": ROC AUC,
EER, TPR and distance threshold at FPR 1e-4/1e-3/1e-2). The page holds the metrics table (with
and without re-ranking), CMC and ROC curves, match / non-match distance histograms, a sortable
per-query table (AP, INP, rank of the first true match; filter to failures), rank lists of the
worst, best and random queries, and the training curves when a log.jsonl is beside the
checkpoint. Any set size: the page is computed from the features a block of query rows at a
time, never from the whole query x gallery matrix (test.memory_mb=MIB: the most a block may take;
0, the default: a quarter of the available memory). An existing report in DIR is replaced only
with --overwrite.
`reid test --report DIR` writes the same page at the end of an evaluation."""
EPILOG = """examples:
  reid report --weights outputs/demo/best.pt --rerank --output outputs/demo/report
  reid report --query-features q.npz --gallery-features g.npz --output report/"""


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The page's options (shared with `reid test --report`)."""
    parser.add_argument("--worst", type=positive_int, default=8, metavar="N", help="rank lists of the N lowest-AP queries")
    parser.add_argument("--best", type=positive_int, default=4, metavar="N", help="... of the N highest-AP queries")
    parser.add_argument("--random", type=positive_int, default=4, metavar="N", help="... of N random queries")
    parser.add_argument("--top-k", type=positive_int, default=10, help="gallery images per rank list (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random query choice")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files that already exist (a report in the folder; with reid test, --output too)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_weights_argument(parser, required=False)
    parser.add_argument("--query-features", type=Path, help=".npz of query features (with --gallery-features)")
    parser.add_argument("--gallery-features", type=Path, help=".npz of gallery features")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the report")
    parser.add_argument("--rerank", action="store_true", help="also evaluate k-reciprocal re-ranking")
    parser.add_argument("--log", type=Path, default=None, help="training log.jsonl (default: next to --weights)")
    add_report_arguments(parser)
    add_allow_resize_argument(parser)
    add_quiet_argument(parser)


def check_report_folder(folder: Path, *, overwrite: bool) -> None:
    """Before any work: DIR must be a folder (or not exist) and hold none of a report's files unless --overwrite."""
    from reid.report import REPORT_FILES

    check_new_files_in(folder, REPORT_FILES, overwrite=overwrite, what="a report")


def write(args: argparse.Namespace, folder: Path, cfg, query, gallery, *, protocol: str, recall_ks,
          log_file: Path | None, metrics: dict[str, Any] | None = None, ablation: dict | None = None) -> Path:
    """The metrics (unless given) and the page, from the features as the evaluation compares them
    (``cfg.test``: post-processing, metric, re-ranking, the memory budget ``test.memory_mb``)."""
    from reid import builders
    from reid.evaluation.evaluator import metrics_from_features
    from reid.report import write_report

    progress = progress_setting(args)
    rerank = bool(args.rerank) and protocol == "reid"
    options = builders.metric_options(cfg, rerank=rerank)
    if metrics is None:
        metrics = metrics_from_features(query, gallery, protocol=protocol, recall_ks=tuple(recall_ks),
                                        verification=protocol == "reid", progress=progress, **options)
    keys = ("normalize", "beta", "metric", "rerank", "k1", "k2", "lambda_value", "rerank_knn", "memory_mb")
    title = f"{args.weights}" if getattr(args, "weights", None) else f"{query.paths[0] if len(query) else 'features'}"
    page = write_report(
        folder, query=query, gallery=gallery, metrics=metrics, **{k: options[k] for k in keys}, progress=progress,
        ablation=ablation, training_log=log_file, title=f"reid evaluation: {title}", top_k=args.top_k,
        num_worst=args.worst, num_best=args.best, num_random=args.random, seed=args.seed,
        metric_name=METRIC_NAMES[cfg.test.metric], protocol=protocol,
    )
    log.info("wrote %s (open it in a browser; metrics in %s)", page, folder / "metrics.json")
    return page


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns {"index": index.html, "metrics": the metrics written}."""
    import json

    if (args.weights is not None) == (args.query_features is not None or args.gallery_features is not None):
        raise ValueError("give either --weights CKPT or both --query-features and --gallery-features")
    if args.weights is None and (args.query_features is None or args.gallery_features is None):
        raise ValueError("--query-features and --gallery-features go together")
    if args.log is not None and not args.log.is_file():
        raise FileNotFoundError(f"--log {args.log}: no such file")
    check_report_folder(args.output, overwrite=args.overwrite)
    setup_logging()
    cfg, query, gallery, protocol, recall_ks, _, log_file = evaluation_features(args)
    page = write(args, args.output, cfg, query, gallery, protocol=protocol, recall_ks=recall_ks, log_file=log_file)
    return {"index": page, "metrics": json.loads((args.output / "metrics.json").read_text())}
