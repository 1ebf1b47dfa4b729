"""``reid make-synthetic``: write the synthetic dataset (Market-1501 layout) and summarise it."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from .common import positive_int

DEFAULT_ROOT = Path("datasets/synthetic/Market-1501-v15.09.15")
# The split folders of the Market layout: reid.data.synthetic.SPLIT_FOLDERS, copied so that
# summary_from_names (and --help) need no OpenCV; tests/test_cli.py checks they agree.
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}\.jpg$")

SUMMARY = "generate the synthetic dataset in the Market-1501 layout"
DESCRIPTION = f"""{SUMMARY}.

Rendered pedestrians: identities combine clothing colours and patterns, body shape, hair, bags
and shoes from small palettes; each camera changes background, colour cast, brightness, blur
and viewpoint. A folder made with the same arguments is reused; one made with other arguments
is an error unless --overwrite. `reid train` generates the configured synthetic set itself;
`reid test` and `reid visualize` never do."""
EPILOG = f"""examples:
  reid make-synthetic                                  # {DEFAULT_ROOT}
  reid make-synthetic --train-ids 751 --test-ids 750 --workers 2 --root datasets/synthetic_big"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset folder (default: %(default)s)")
    parser.add_argument("--train-ids", type=int, default=100, help="training identities (default 100)")
    parser.add_argument("--test-ids", type=int, default=100, help="query/gallery identities (default 100)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras, 2..9 (default 6)")
    parser.add_argument("--height", type=positive_int, default=128, help="image height (default 128)")
    parser.add_argument("--width", type=positive_int, default=64, help="image width (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-camera", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--cameras-per-id", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--queries-per-camera", type=int, default=1)
    parser.add_argument("--distractors", type=int, default=100, help="0000_* gallery images (default 100)")
    parser.add_argument("--junk", type=int, default=50, help="-1_* gallery images (default 50)")
    parser.add_argument("--workers", type=positive_int, default=1, help="rendering processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a tree made with other arguments")


def summary_from_names(root: Path) -> str:
    """Identities / images / cameras per split, counted from the Market file names.

    Counted as the loaders (and torchreid) do: junk (-1) is left out; the distractors
    (0000) stay in the gallery and count as one identity there.
    """
    lines = [f"{'split':<10} {'identities':>10} {'images':>7} {'cameras':>7}"]
    for label, folder in zip(("train", "query", "gallery"), SPLIT_FOLDERS):
        pids, cams, images = set(), set(), 0
        for path in (root / folder).iterdir():
            match = _NAME.match(path.name)
            if match is None or match.group(1) == "-1":
                continue
            images += 1
            cams.add(match.group(2))
            pids.add(match.group(1))
        lines.append(f"{label:<10} {len(pids):>10} {images:>7} {len(cams):>7}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> Path:
    """Returns the dataset folder. Bad arguments or a clash with an existing tree are ValueError /
    FileExistsError (one `error:` line from the command)."""
    from reid.data import build_dataset
    from reid.data.synthetic import MANIFEST_NAME, SPLIT_FOLDERS, make_synthetic_market

    manifest = args.root / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    start = time.perf_counter()
    root = make_synthetic_market(
        args.root, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
        num_cameras=args.cameras, image_size=(args.height, args.width), seed=args.seed,
        cameras_per_id=tuple(args.cameras_per_id), images_per_camera=tuple(args.images_per_camera),
        queries_per_camera=args.queries_per_camera, num_distractors=args.distractors,
        num_junk=args.junk, overwrite=args.overwrite, workers=args.workers,
    )
    seconds = time.perf_counter() - start
    images = sum(len(list((root / f).iterdir())) for f in SPLIT_FOLDERS)
    reused = before is not None and manifest.stat().st_mtime_ns == before
    how = "already there with these arguments: reused" if reused else f"written in {seconds:.1f} s"
    print(f"synthetic Market-1501 in {root.resolve()}: {images} images, {how}")
    print(build_dataset("market1501" if args.cameras <= 6 else "custom", str(root)).summary())
    return root
