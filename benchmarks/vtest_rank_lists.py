"""Rank lists of real pedestrian crops before and after `reid adapt` (the README's real-footage example).

The crops come from `reid crops` on a video (Debian's `opencv-doc` ships `vtest.avi`). There are
no identity labels, but the tracker gives one kind of ground truth: the crops of one tracklet
are one person. Each long tracklet (at least ``--min-crops`` crops) is cut in two: its crop at
one quarter is a query, the crops of its second half (at least 20 frames after the query) are
that query's true matches in the gallery, beside every ``--stride``-th crop of every other
tracklet. The score is the mAP of that split ("tracklet-split mAP"), an optimistic, one-camera
measure (later crops of the same walk share pose, light and background, and the adapted model
trained on these very crops with the tracklet constraints): a sanity check and a picture, not
the cross-camera goal of the issue.

    .venv/bin/python benchmarks/vtest_rank_lists.py --crops crops/ --weights outputs/demo/last.pt \\
        outputs/adapted/last.pt --output docs/images/vtest_rank_lists.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.crops import TRACKLETS_FILE, read_tracklets  # noqa: E402
from reid.evaluation import evaluate_rank, pairwise_distance  # noqa: E402
from reid.inference import FeatureExtractor  # noqa: E402
from reid.visualization import compose_rank_list, save_image  # noqa: E402


def split(crops: Path, min_crops: int, stride: int):
    """(query (path, tracklet), gallery (paths, tracklets, camids)); queries camid 0, gallery 1 so that
    the protocol's same-camera rule keeps the true matches."""
    rows = read_tracklets(crops / TRACKLETS_FILE)
    by_tracklet: dict[int, list[tuple[int, str]]] = {}
    for name, row in rows.items():
        by_tracklet.setdefault(row.tracklet, []).append((row.frame, str(crops / name)))
    queries, gallery = [], []
    for tracklet, items in sorted(by_tracklet.items()):
        items.sort()
        if len(items) >= min_crops:
            q_frame, q_path = items[len(items) // 4]
            queries.append((q_path, tracklet))
            gallery += [(p, tracklet) for f, p in items[len(items) // 2:] if f >= q_frame + 20]
        else:
            gallery += [(p, tracklet) for _, p in items[::stride]]
    return queries, gallery


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=Path, required=True)
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="checkpoints, one row block each")
    parser.add_argument("--output", type=Path, required=True, help="PNG of the rank lists")
    parser.add_argument("--min-crops", type=int, default=60)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--shown", type=int, default=3, help="queries drawn per checkpoint")
    args = parser.parse_args(argv)
    queries, gallery = split(args.crops, args.min_crops, args.stride)
    g_paths = [p for p, _ in gallery]
    g_pids = np.array([t for _, t in gallery])
    g_camids = np.ones(len(gallery), dtype=np.int64)
    q_pids = np.array([t for _, t in queries])
    rows = []
    for weights in args.weights:
        extractor = FeatureExtractor.from_checkpoint(weights, progress=False)
        qf, gf = extractor([p for p, _ in queries]), extractor(g_paths)
        distances = pairwise_distance(qf, gf)
        result = evaluate_rank(distances, q_pids, g_pids, np.zeros(len(queries), dtype=np.int64), g_camids,
                               max_rank=10)
        print(f"{weights}: {len(queries)} queries, {len(gallery)} gallery crops, tracklet-split mAP "
              f"{100 * result.mAP:.2f}, Rank-1 {100 * result.cmc[0]:.2f}")
        shown = np.linspace(0, len(queries) - 1, args.shown).round().astype(int)
        rows += [compose_rank_list(distances[i], (queries[i][0], int(q_pids[i]), 0), (g_paths, g_pids, g_camids),
                                   top_k=8) for i in shown]
    save_image(np.vstack(rows), args.output, colors=160)


if __name__ == "__main__":
    main()
