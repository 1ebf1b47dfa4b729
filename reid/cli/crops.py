"""``reid crops``: person crops and tracklets from videos, ready for ``reid adapt``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import add_quiet_argument, positive_int, progress_setting, setup_logging

log = logging.getLogger("reid")

SUMMARY = "person crops and tracklets from videos (HOG detector or a MOT det.txt)"
DESCRIPTION = f"""{SUMMARY}.

Boxes come from OpenCV's built-in HOG people detector (no weights to download; OpenCV 4
builds), from background subtraction (--detector motion, static cameras; the fallback where
OpenCV has no HOG), or from a MOT-Challenge det.txt of any detector (--detections, one per video). An IoU tracker with
constant-velocity prediction links them into tracklets. Crops are written as
TTTT_cCsS_FFFFFF_00.jpg (tracklet, camera, sequence, frame from 1) with a tracklets.csv that
`reid adapt` reads for its video constraints (one tracklet is one person, two crops of one
frame are two people). Video i is camera i unless --camera N makes them all camera N
(sequences 1, 2, ...)."""
EPILOG = """examples:
  reid crops /usr/share/doc/opencv-doc/examples/data/vtest.avi --output crops/
  reid crops cam1.mp4 cam2.mp4 --output crops/ --min-length 5
  reid crops MOT17-04/img.mp4 --detections MOT17-04/det/det.txt --camera 3 --output crops/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files (anything OpenCV decodes)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder for the crops")
    parser.add_argument("--camera", type=int, default=None, metavar="N", help="camera number 1..9 of every video")
    parser.add_argument("--detections", type=Path, nargs="+", default=None, metavar="DET_TXT",
                        help="MOT-Challenge det.txt files, one per video, instead of the HOG detector")
    parser.add_argument("--detector", choices=("auto", "hog", "motion"), default="auto",
                        help="hog: OpenCV's HOG people detector (needs OpenCV 4); motion: background subtraction "
                             "(static cameras); auto (default): hog where available, else motion")
    parser.add_argument("--min-length", type=positive_int, default=3,
                        help="boxes a tracklet needs to be kept (default 3)")
    parser.add_argument("--min-height", type=positive_int, default=48, help="smallest box height kept (default 48)")
    parser.add_argument("--min-iou", type=float, default=0.3, help="tracker: IoU that links a box (default 0.3)")
    parser.add_argument("--max-gap", type=positive_int, default=5,
                        help="tracker: frames a tracklet may miss (default 5)")
    parser.add_argument("--min-score", type=float, default=0.3, help="HOG: smallest SVM score kept (default 0.3)")
    parser.add_argument("--overwrite", action="store_true", help="replace the crops already in DIR")
    add_quiet_argument(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns the summary (videos, frames, tracklets, crops, the tracklets.csv path)."""
    from reid.crops import write_crops

    setup_logging()
    summary = write_crops(args.videos, args.output, camera=args.camera, detections=args.detections,
                          min_length=args.min_length, min_height=args.min_height, min_iou=args.min_iou,
                          max_gap=args.max_gap, min_score=args.min_score, detector=args.detector,
                          overwrite=args.overwrite,
                          progress=progress_setting(args))
    log.info("%d crops of %d tracklets from %d frames of %d video(s) in %s (%s)", summary["crops"],
             summary["tracklets"], summary["frames"], summary["videos"], args.output, summary["tracklets_csv"])
    return summary
