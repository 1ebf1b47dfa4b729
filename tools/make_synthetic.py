"""Write the synthetic Market-1501 dataset and print what was written.

    python tools/make_synthetic.py                      # datasets/synthetic/Market-1501-v15.09.15
    python tools/make_synthetic.py --train-ids 751 --test-ids 750 --workers 2
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.data.synthetic import MANIFEST_NAME, SPLIT_FOLDERS, make_synthetic_market  # noqa: E402

DEFAULT_ROOT = Path("datasets/synthetic/Market-1501-v15.09.15")
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}\.jpg$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate a synthetic dataset in the Market-1501 layout.")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset folder (default: %(default)s)")
    parser.add_argument("--train-ids", type=int, default=100, help="training identities")
    parser.add_argument("--test-ids", type=int, default=100, help="query/gallery identities")
    parser.add_argument("--cameras", type=int, default=6, help="cameras, 2..9")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-camera", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--cameras-per-id", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"))
    parser.add_argument("--queries-per-camera", type=int, default=1)
    parser.add_argument("--distractors", type=int, default=100, help="0000_* gallery images")
    parser.add_argument("--junk", type=int, default=50, help="-1_* gallery images")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--overwrite", action="store_true", help="replace a tree made with other arguments")
    return parser.parse_args(argv)


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


def dataset_summary(root: Path) -> str:
    """The loaders' own summary when the loaders are installed, else one from the names."""
    try:
        from reid.data import build_dataset
    except ImportError:
        return summary_from_names(root)
    return build_dataset("market1501", str(root)).summary()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    manifest = args.root / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    start = time.perf_counter()
    try:
        root = make_synthetic_market(
            args.root, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
            num_cameras=args.cameras, image_size=(args.height, args.width), seed=args.seed,
            cameras_per_id=tuple(args.cameras_per_id), images_per_camera=tuple(args.images_per_camera),
            queries_per_camera=args.queries_per_camera, num_distractors=args.distractors,
            num_junk=args.junk, overwrite=args.overwrite, workers=args.workers,
        )
    except (FileExistsError, ValueError) as error:  # bad arguments or a clash: a message, no traceback
        raise SystemExit(f"make_synthetic.py: error: {error}") from None
    seconds = time.perf_counter() - start
    images = sum(len(list((root / f).iterdir())) for f in SPLIT_FOLDERS)
    reused = before is not None and manifest.stat().st_mtime_ns == before
    how = "already there with these arguments: reused" if reused else f"written in {seconds:.1f} s"
    print(f"synthetic Market-1501 in {root.resolve()}: {images} images, {how}")
    print(dataset_summary(root))
    return root


if __name__ == "__main__":
    main()
