"""Look at results: rank lists, CMC curves, distance histograms and training curves.

From a checkpoint (the model and the dataset are rebuilt from its stored config; ``--config``
and ``key=value`` overrides as in tools/test.py)::

    python tools/visualize.py --weights outputs/demo/last.pt --worst 5 --grid --html

or from saved features (``.npz`` with features, pids, camids, paths)::

    python tools/visualize.py --query-features q.npz --gallery-features g.npz --output vis/

Writes under ``--output`` (default: a ``visualize`` folder next to the checkpoint or the
query features): rank-list PNGs (``query_<index>.png``, or ``rank_lists.png`` with
``--grid``), ``cmc.png`` (with and without re-ranking), ``distances.png`` and, when a
``log.jsonl`` is next to the checkpoint or given with ``--log``, ``training_curves.png``.
Features are post-processed and compared as the config's ``test`` section says.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` importable when run as a script

import numpy as np  # noqa: E402

from reid import builders  # noqa: E402
from reid import visualization as vis  # noqa: E402
from reid.config import Config, ConfigError, load_config  # noqa: E402
from reid.evaluation import evaluate_rank, pairwise_distance, rerank  # noqa: E402
from reid.evaluation.features import FeatureSet, extract_features, postprocess_features  # noqa: E402
from tools._common import add_config_arguments, model_and_config, setup_logging  # noqa: E402

log = logging.getLogger("reid")
METRIC_NAMES = {"euclidean": "squared Euclidean", "cosine": "cosine"}


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--weights", type=Path, help="checkpoint written by tools/train.py")
    parser.add_argument("--query-features", type=Path, help=".npz of query features (with --gallery-features)")
    parser.add_argument("--gallery-features", type=Path, help=".npz of gallery features")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--num-queries", type=int, default=None, help="this many random queries (default 10)")
    which.add_argument("--worst", type=int, default=None, metavar="N", help="the N queries with the lowest AP")
    which.add_argument("--query-index", type=int, action="append", default=None, metavar="I",
                       help="this query (repeatable)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery images per rank list")
    parser.add_argument("--grid", action="store_true", help="one figure with a row per query")
    parser.add_argument("--html", action="store_true", help="also write index.html listing the rank lists")
    parser.add_argument("--rerank", action="store_true", help="rank lists (and histogram) from re-ranked distances")
    parser.add_argument("--png-colors", type=int, default=None, metavar="N",
                        help="write rank lists as palette PNGs of N colours (2-256; small files for docs)")
    parser.add_argument("--max-rank", type=int, default=20, help="ranks on the CMC plot")
    parser.add_argument("--log", type=Path, default=None, help="training log.jsonl (default: next to --weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random query choice")
    parser.add_argument("--output", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    from_features = args.query_features is not None or args.gallery_features is not None
    if (args.weights is not None) == from_features:
        parser.error("give either --weights CKPT or both --query-features and --gallery-features")
    if from_features and (args.query_features is None or args.gallery_features is None):
        parser.error("--query-features and --gallery-features go together")
    if args.top_k < 1 or args.max_rank < 1:
        parser.error("--top-k and --max-rank must be positive")
    return parser, args


def features_from_checkpoint(args: argparse.Namespace, parser: argparse.ArgumentParser
                             ) -> tuple[FeatureSet, FeatureSet, Config]:
    """Rebuild model and dataset from the checkpoint's config and extract both feature sets."""
    model, cfg, device = model_and_config(parser, args.weights, args.config, args.overrides)
    dataset = builders.dataset_from_config(cfg)
    query_loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    options = {"feature": cfg.test.feature, "flip": cfg.test.flip}
    query = extract_features(model, query_loader, device, **options)
    gallery = extract_features(model, gallery_loader, device, **options)
    return query, gallery, cfg


def distances(query: FeatureSet, gallery: FeatureSet, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(distances, re-ranked distances), features post-processed as ``cfg.test`` says."""
    t = cfg.test
    qf = postprocess_features(query.features, normalize=t.normalize, beta=t.beta)
    gf = postprocess_features(gallery.features, normalize=t.normalize, beta=t.beta)
    plain = np.asarray(pairwise_distance(qf, gf, metric=t.metric))
    reranked = rerank(qf, gf, k1=t.k1, k2=t.k2, lambda_value=t.lambda_value)
    return plain, reranked


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser, args = parse_args(argv)
    setup_logging()
    if args.weights is not None:
        query, gallery, cfg = features_from_checkpoint(args, parser)
        output = args.output or args.weights.parent / "visualize"
        log_file = args.log or args.weights.parent / "log.jsonl"
    else:
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            parser.exit(2, f"error: {err}\n")
        query, gallery = FeatureSet.load(args.query_features), FeatureSet.load(args.gallery_features)
        output = args.output or args.query_features.parent / "visualize"
        log_file = args.log

    plain, reranked = distances(query, gallery, cfg)
    shown = reranked if args.rerank else plain
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    written: dict[str, Any] = {}
    written["rank_lists"] = vis.save_rank_lists(
        shown, (query.paths, query.pids, query.camids), (gallery.paths, gallery.pids, gallery.camids), output,
        query_indices=args.query_index, num_random=args.num_queries, worst=args.worst, top_k=args.top_k,
        grid=args.grid, html=args.html, seed=args.seed, png_colors=args.png_colors,
    )
    # Unlabelled crops (pid -1, e.g. from tools/extract.py) have no true matches: nothing to score.
    if np.isnan(vis.query_average_precision(shown, *labels)).all():
        log.warning("no query has a true match in the gallery: skipping cmc.png and distances.png")
    else:
        max_rank = min(args.max_rank, len(gallery))
        metric = METRIC_NAMES[cfg.test.metric]
        results = {name: evaluate_rank(d, *labels, max_rank=max_rank)
                   for name, d in ((metric, plain), (f"{metric} + re-ranking", reranked))}
        title = f"CMC ({results[metric].num_valid_queries} queries)"
        written["cmc"] = vis.plot_cmc({name: r.cmc for name, r in results.items()}, output / "cmc.png",
                                      max_rank=max_rank, title=title)
        kind = "re-ranked" if args.rerank else metric
        written["distances"] = vis.plot_distance_histogram(shown, *labels, output / "distances.png",
                                                           title=f"query-gallery distances ({kind})")
    if log_file is not None:
        if log_file.is_file():
            written["training_curves"] = vis.plot_training_curves(log_file, output / "training_curves.png")
        elif args.log is not None:
            raise FileNotFoundError(f"--log {log_file}: no such file")
    for name, paths in written.items():
        for path in paths if isinstance(paths, list) else [paths]:
            log.info("wrote %s (%s)", path, name)
    return written


if __name__ == "__main__":
    main()
