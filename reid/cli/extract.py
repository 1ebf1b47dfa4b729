"""``reid extract``: embeddings of your own images, and query-vs-gallery rankings."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from .common import (
    FEATURE_KINDS,
    add_quiet_argument,
    add_weights_argument,
    positive_int,
    progress_setting,
    setup_logging,
)

log = logging.getLogger("reid")

SUMMARY = "embed a folder of your own images, or rank a query folder against a gallery folder"
DESCRIPTION = f"""{SUMMARY}.

Folders are searched recursively for image files (jpg, jpeg, png, bmp, webp, tif; any file
names; other and hidden files are skipped) and processed in sorted path order, at the
checkpoint's training size. The .npz holds features (N x D float32, L2-normalised unless
--no-normalize), pids and camids (parsed from Market / DukeMTMC-style names such as
0002_c1s1_000451_03.jpg, else -1) and paths; read it with
reid.evaluation.features.FeatureSet.load. With --query/--gallery, every query image is printed
with its --top-k nearest gallery images and their distances (squared Euclidean between
L2-normalised embeddings, 0..4, or cosine distance 1 - cos, 0..2; both rank alike) on stdout;
--output-dir also writes query.npz and gallery.npz. Flip test-time augmentation and the
feature (bn | pre_bn) default to the checkpoint's test settings."""
EPILOG = """examples:
  reid extract --weights outputs/demo/best.pt --images my_crops/ --output feats.npz
  reid extract --weights outputs/demo/best.pt --query q/ --gallery g/ --top-k 5 --output-dir feats/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_argument(parser)
    parser.add_argument("--images", type=Path, help="folder of images to embed (needs --output)")
    parser.add_argument("--output", type=Path, help="features file (.npz) for --images")
    parser.add_argument("--query", type=Path, help="folder of query images (with --gallery)")
    parser.add_argument("--gallery", type=Path, help="folder of gallery images (with --query)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="gallery matches printed per query (default 5)")
    parser.add_argument("--output-dir", type=Path, help="with --query/--gallery: write query.npz and gallery.npz here")
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                        help="distance printed in rankings (default: squared Euclidean)")
    parser.add_argument("--feature", choices=FEATURE_KINDS, default=None, help="default: the checkpoint's test.feature")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip test-time augmentation (default: the checkpoint's test.flip)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the saved features (default: yes)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out unreadable images (empty, truncated, not an image) with one warning naming "
                             "them; default: such a file is an error, before any model work")
    parser.add_argument("--overwrite", action="store_true", help="replace features files that already exist")
    same = parser.add_mutually_exclusive_group()
    same.add_argument("--same-person-fpr", type=float, default=None, metavar="FPR",
                      help="with --query/--gallery: mark each match 'same' or 'different' with the distance "
                           "threshold that gave this false positive rate (1e-4, 1e-3 or 1e-2) on the labelled "
                           "evaluation of `reid test` (its metrics file, see --metrics)")
    same.add_argument("--threshold", type=float, default=None,
                      help="with --query/--gallery: mark matches at or below this distance 'same'")
    parser.add_argument("--metrics", type=Path, default=None, metavar="FILE",
                        help="the `reid test` metrics file holding the thresholds (default: "
                             "<checkpoint stem>_test_metrics.json beside the checkpoint)")
    add_quiet_argument(parser)


def check_arguments(args: argparse.Namespace) -> None:
    if args.images is not None:
        if args.query is not None or args.gallery is not None:
            raise ValueError("give either --images or --query with --gallery, not both")
        if args.output is None:
            raise ValueError("--images needs --output FILE.npz")
    elif args.query is None or args.gallery is None:
        raise ValueError("give --images DIR --output FILE.npz, or --query DIR --gallery DIR")
    elif args.output is not None:
        raise ValueError("--output goes with --images; with --query/--gallery use --output-dir")
    for option, folder in (("--images", args.images), ("--query", args.query), ("--gallery", args.gallery)):
        if folder is not None and not folder.is_dir():
            what = "is not a folder" if folder.exists() else "no such folder"
            raise FileNotFoundError(f"{option} {folder}: {what}")
    if (args.same_person_fpr is not None or args.threshold is not None) and args.query is None:
        raise ValueError("--same-person-fpr / --threshold go with --query and --gallery")
    from reid.evaluation.features import features_file

    targets = [features_file(args.output)] if args.output is not None else []  # the file save() writes
    if args.output_dir is not None:
        targets += [args.output_dir / "query.npz", args.output_dir / "gallery.npz"]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "choose another output or pass --overwrite")


def extract_folder(extractor, folder: Path, *, skip_invalid: bool = False):
    from reid.inference import find_images, labels_from_names

    paths = find_images(folder)
    pids, camids = labels_from_names(paths)
    log.info("%s: %d images", folder, len(paths))
    return extractor.extract([str(p) for p in paths], pids, camids, skip_invalid=skip_invalid)


def save(features, path: Path) -> None:
    features.save(path)
    log.info("wrote %s (%d x %d)", path, *features.features.shape)


def top_matches(distances, k: int):
    """Indices and distances of the k nearest gallery items per query row.

    A stable sort: equal distances keep the gallery's (sorted path) order, so the output is
    the same on every run.
    """
    import numpy as np

    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def same_person_threshold(args: argparse.Namespace, test_options: dict[str, Any]) -> float | None:
    """The distance at or below which two images are called the same person, or None.

    ``--threshold`` as given, or ``--same-person-fpr F``: ``verification.threshold_at_fpr[F]`` of the
    checkpoint's `reid test` metrics, valid only for the distance that evaluation used.
    """
    import json

    if args.threshold is not None:
        return args.threshold
    if args.same_person_fpr is None:
        return None
    weights: Path = args.weights
    path = args.metrics or weights.with_name(f"{weights.stem}_test_metrics.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no test metrics to take the threshold from; run `reid test --weights "
                                f"{weights}` first (it stores thresholds at FPR 1e-4, 1e-3 and 1e-2), or give --threshold")
    try:
        thresholds = json.loads(path.read_text())["verification"]["threshold_at_fpr"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: no verification.threshold_at_fpr block; re-run `reid test --weights {weights}`") from None
    key = repr(float(args.same_person_fpr))
    if key not in thresholds:
        raise ValueError(f"--same-person-fpr {args.same_person_fpr:g}: {path} has thresholds at FPR "
                         f"{', '.join(thresholds)}; choose one of them")
    distance = "squared Euclidean" if args.metric == "euclidean" else "cosine"
    if (test_options["metric"], test_options["normalize"], test_options["beta"]) != (args.metric, args.normalize, 0.0):
        raise ValueError(f"--same-person-fpr: the thresholds in {path} are for the evaluation's distance "
                         f"(test.metric={test_options['metric']}, normalize={test_options['normalize']}, "
                         f"beta={test_options['beta']}), not this {distance} on "
                         f"{'normalised' if args.normalize else 'raw'} features; match the options or give --threshold")
    if thresholds[key] is None:
        raise ValueError(f"--same-person-fpr {args.same_person_fpr:g}: no distance reached that false positive rate "
                         f"in {path}; choose a larger FPR")
    log.info("same person: distance <= %.6f (FPR %g on the evaluation in %s)", thresholds[key], args.same_person_fpr, path)
    return float(thresholds[key])


def rank_folders(args: argparse.Namespace, extractor, threshold: float | None = None, *,
                 is_main: bool = True) -> dict[str, Any]:
    import numpy as np

    from reid.evaluation import pairwise_distance

    query = extract_folder(extractor, args.query, skip_invalid=args.skip_invalid)
    gallery = extract_folder(extractor, args.gallery, skip_invalid=args.skip_invalid)
    if not is_main:  # another process of a torchrun job: rank 0 ranks, prints and writes
        return {"query": query, "gallery": gallery}
    if args.output_dir is not None:
        save(query, args.output_dir / "query.npz")
        save(gallery, args.output_dir / "gallery.npz")
    distances = np.asarray(pairwise_distance(query.features, gallery.features, metric=args.metric,
                                             progress=progress_setting(args)))
    order, nearest = top_matches(distances, args.top_k)
    query_names = [Path(p).relative_to(args.query).as_posix() for p in query.paths]
    gallery_names = [Path(p).relative_to(args.gallery).as_posix() for p in gallery.paths]
    what = "squared Euclidean" if args.metric == "euclidean" else "cosine"
    print(f"{len(query)} query images against {len(gallery)} gallery images; {what} distance, nearest first")
    matches: dict[str, list[tuple[str, float]]] = {}
    for row, name in enumerate(query_names):
        matches[name] = [(gallery_names[j], float(d)) for j, d in zip(order[row], nearest[row])]
        print(f"\n{name}")
        for rank, (match, distance) in enumerate(matches[name], start=1):
            verdict = "" if threshold is None else ("  same     " if distance <= threshold else "  different")
            print(f"  {rank:>3}  {distance:.6f}{verdict}  {match}")
    return {"query": query, "gallery": gallery, "matches": matches, "threshold": threshold}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns {"features": FeatureSet} for --images, else {"query", "gallery", "matches"}
    (matches: query name -> [(gallery name, distance), ...], names relative to their folders).

    Under torchrun (``torchrun --nproc_per_node N -m reid extract ...``) every process extracts
    its share of the images and gets all the features; rank 0 alone writes and prints (the
    others return no "matches")."""
    from reid.distributed import cleanup_distributed

    try:
        return _run(args)
    finally:
        cleanup_distributed()


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from reid.distributed import init_distributed, launcher_rank

    check_arguments(args)
    setup_logging(stream=sys.stderr, is_main=launcher_rank() == 0)  # stdout carries the ranking (pipe-able)

    from reid import builders
    from reid.inference import FeatureExtractor

    try:
        device = builders.resolve_device(args.device)
    except ValueError:  # a CUDA device on a machine without CUDA
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine; "
                         "use --device cpu or auto") from None
    except RuntimeError:  # torch.device's parse error
        raise ValueError(f"--device {args.device!r}: not a device; expected auto, cpu, cuda or cuda:N") from None
    dist_info, device = init_distributed(device)
    from reid.cli.common import checkpoint_config

    threshold = same_person_threshold(args, vars(checkpoint_config(args.weights).test))  # before any model work
    extractor = FeatureExtractor.from_checkpoint(
        args.weights, device, flip=args.flip, feature=args.feature, normalize=args.normalize,
        batch_size=args.batch_size, num_workers=args.num_workers, progress=progress_setting(args),
        distributed=dist_info,
    )
    log.info("%s: feature=%s flip=%s input %dx%d", args.weights, extractor.feature, extractor.flip,
             extractor.height, extractor.width)
    if args.images is not None:
        features = extract_folder(extractor, args.images, skip_invalid=args.skip_invalid)
        if dist_info.is_main:
            save(features, args.output)
        return {"features": features}
    return rank_folders(args, extractor, threshold, is_main=dist_info.is_main)
