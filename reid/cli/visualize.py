"""``reid visualize``: rank lists, CMC curves, distance histograms and training curves."""

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
    distances,
    evaluation_features,
    positive_int,
    progress_setting,
    setup_logging,
)

log = logging.getLogger("reid")

SUMMARY = "draw rank lists, CMC curves, distance histograms and training curves"
DESCRIPTION = f"""{SUMMARY}.

From a checkpoint (the model and the dataset are rebuilt from its stored config; --config and
key=value overrides as in `reid test`; a synthetic dataset must exist already), or from saved
features (.npz with features, pids, camids, paths, e.g. from `reid extract`).

Writes under --output (default: a `visualize` folder next to the checkpoint or the query
features): rank-list PNGs (query_<index>.png, or rank_lists.png with --grid), cmc.png (with and
without re-ranking), distances.png and, when a log.jsonl is next to the checkpoint or given
with --log, training_curves.png. Features are post-processed and compared as the config's
`test` section says. Query choices (--query-index) are checked before any feature is extracted."""
EPILOG = """examples:
  reid visualize --weights outputs/demo/last.pt --worst 5 --grid --html
  reid visualize --weights outputs/demo/best.pt --query-index 0 --query-index 7 --top-k 5
  reid visualize --query-features q.npz --gallery-features g.npz --output vis/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_weights_argument(parser, required=False)
    parser.add_argument("--query-features", type=Path, help=".npz of query features (with --gallery-features)")
    parser.add_argument("--gallery-features", type=Path, help=".npz of gallery features")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--num-queries", type=positive_int, default=None, metavar="N",
                       help="this many random queries (default 10)")
    which.add_argument("--worst", type=positive_int, default=None, metavar="N", help="the N queries with the lowest AP")
    which.add_argument("--query-index", type=int, action="append", default=None, metavar="I",
                       help="this query (0-based; repeatable)")
    parser.add_argument("--top-k", type=positive_int, default=10, help="gallery images per rank list (default 10)")
    parser.add_argument("--grid", action="store_true", help="one figure with a row per query")
    parser.add_argument("--html", action="store_true", help="also write index.html listing the rank lists")
    parser.add_argument("--rerank", action="store_true", help="rank lists (and histogram) from re-ranked distances")
    parser.add_argument("--png-colors", type=int, default=None, metavar="N",
                        help="write rank lists as palette PNGs of N colours (2-256; small files for docs)")
    parser.add_argument("--max-rank", type=positive_int, default=20, help="ranks on the CMC plot (default 20)")
    parser.add_argument("--log", type=Path, default=None, help="training log.jsonl (default: next to --weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random query choice")
    parser.add_argument("--output", type=Path, default=None, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace figures already in the output folder")
    add_allow_resize_argument(parser)
    add_quiet_argument(parser)


def check_arguments(args: argparse.Namespace) -> None:
    from_features = args.query_features is not None or args.gallery_features is not None
    if (args.weights is not None) == from_features:
        raise ValueError("give either --weights CKPT or both --query-features and --gallery-features")
    if from_features and (args.query_features is None or args.gallery_features is None):
        raise ValueError("--query-features and --gallery-features go together")
    if args.png_colors is not None and not 2 <= args.png_colors <= 256:
        raise ValueError(f"--png-colors: expected 2 to 256 colours, got {args.png_colors}")
    if args.log is not None and not args.log.is_file():
        raise FileNotFoundError(f"--log {args.log}: no such file")


# Every file `reid visualize` may write into its folder (rank lists as patterns): none is replaced without --overwrite.
OUTPUT_FILES = ("query_*.png", "rank_lists.png", "index.html", "cmc.png", "distances.png", "training_curves.png")


def check_query_indices(indices: list[int] | None, num_queries: int, source: str) -> None:
    """--query-index values must name queries that exist (checked before any feature work)."""
    bad = [i for i in indices or () if not 0 <= i < num_queries]
    if bad:
        raise ValueError(f"--query-index {bad[0]}: out of range; {source} has {num_queries} queries "
                         f"(valid indices 0..{num_queries - 1})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns {"rank_lists": [png, ...], "cmc", "distances", "training_curves"} (the paths written)."""
    check_arguments(args)
    base = args.weights.parent if args.weights is not None else args.query_features.parent
    output = args.output or base / "visualize"
    check_new_files_in(output, OUTPUT_FILES, overwrite=args.overwrite, what="figures of reid visualize")
    setup_logging()
    cfg, query, gallery, protocol, _, _, log_file = evaluation_features(
        args, check_queries=lambda count, source: check_query_indices(args.query_index, count, source))
    return draw(args, cfg, query, gallery, output, log_file, protocol)


def draw(args: argparse.Namespace, cfg, query, gallery, output: Path, log_file: Path | None,
         protocol: str = "reid") -> dict[str, Any]:
    import numpy as np

    from reid import visualization as vis
    from reid.evaluation.protocol import protocol_camids
    from reid.evaluation.rank import evaluate_rank, query_average_precision

    progress = progress_setting(args)
    plain, reranked = distances(query, gallery, cfg, progress=progress)
    shown = reranked if args.rerank else plain
    # Retrieval protocols through the camera rule: leave-one-out leaves out only the query itself.
    q_camids, g_camids = protocol_camids(protocol, query.camids, gallery.camids)
    labels = (query.pids, gallery.pids, q_camids, g_camids)
    written: dict[str, Any] = {}
    written["rank_lists"] = vis.save_rank_lists(
        shown, (query.paths, query.pids, q_camids), (gallery.paths, gallery.pids, g_camids), output,
        query_indices=args.query_index, num_random=args.num_queries, worst=args.worst, top_k=args.top_k,
        grid=args.grid, html=args.html, seed=args.seed, png_colors=args.png_colors, cameras=protocol == "reid",
    )
    # Unlabelled crops (pid -1, e.g. from `reid extract`) have no true matches: nothing to score.
    if np.isnan(query_average_precision(shown, *labels)).all():
        log.warning("no query has a true match in the gallery: skipping cmc.png and distances.png")
    else:
        max_rank = min(args.max_rank, len(gallery))
        metric = METRIC_NAMES[cfg.test.metric]
        results = {name: evaluate_rank(d, *labels, max_rank=max_rank, progress=progress)
                   for name, d in ((metric, plain), (f"{metric} + re-ranking", reranked))}
        title = f"CMC ({results[metric].num_valid_queries} queries)"
        written["cmc"] = vis.plot_cmc({name: r.cmc for name, r in results.items()}, output / "cmc.png",
                                      max_rank=max_rank, title=title)
        kind = "re-ranked" if args.rerank else metric
        written["distances"] = vis.plot_distance_histogram(shown, *labels, output / "distances.png",
                                                           title=f"query-gallery distances ({kind})")
    if log_file is not None and log_file.is_file():
        written["training_curves"] = vis.plot_training_curves(log_file, output / "training_curves.png")
    for name, paths in written.items():
        for path in paths if isinstance(paths, list) else [paths]:
            log.info("wrote %s (%s)", path, name)
    return written
