"""Person crops from video: boxes (OpenCV's HOG people detector, or a MOT-Challenge ``det.txt``),
tracklets (an IoU tracker with constant-velocity prediction) and crops in the Market layout.

What ``reid crops`` writes into its output folder:

* one JPEG per tracked box, ``TTTT_cCsS_FFFFFF_00.jpg``: tracklet ``TTTT`` (1, 2, ... over the
  whole run, at least 4 digits), camera ``C`` and sequence ``S`` (one digit each: the video),
  frame ``FFFFFF`` (numbered from 1, as MOT files number them). The name parses as a Market
  name, so every loader and ``reid extract`` read the crops; the "pid" is the tracklet, not a
  person: one person walking through two videos gives two tracklets.
* ``tracklets.csv``: one row per crop (``TRACKLET_COLUMNS``), what :func:`read_tracklets` reads
  back for adaptation's video constraints (one tracklet is one person; two crops of one frame
  are two people).

Every file is written atomically (:mod:`reid.io`): a killed run leaves whole crops and no
``tracklets.csv``, so the folder is never mistaken for a finished one. The crops are made
durable with one sync when the last video is done, before the csv is written, instead of one
fsync (one disk flush) per crop. Boxes of a tracklet are
held back until the tracklet has ``min_length`` boxes (one-off false detections never reach
the disk).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_write, atomic_write_text, sync_files
from .progress import progress_bar

log = logging.getLogger("reid")

TRACKLETS_FILE = "tracklets.csv"
TRACKLET_COLUMNS = ("image", "tracklet", "camera", "sequence", "frame", "x", "y", "w", "h", "score")
CROP_PATTERN = re.compile(r"(?P<tracklet>\d{4,})_c(?P<camera>[1-9])s(?P<sequence>[1-9])_(?P<frame>\d{6})_00\.jpg")
MAX_FRAME = 999_999
JPEG_QUALITY = 95


def crop_name(tracklet: int, camera: int, sequence: int, frame: int) -> str:
    """``TTTT_cCsS_FFFFFF_00.jpg``; refuses what the name cannot hold."""
    if not (1 <= camera <= 9 and 1 <= sequence <= 9):
        raise ValueError(f"camera {camera} / sequence {sequence}: expected 1..9 (one digit each in the crop name)")
    if not 1 <= frame <= MAX_FRAME:
        raise ValueError(f"frame {frame}: expected 1..{MAX_FRAME} (six digits in the crop name)")
    return f"{tracklet:04d}_c{camera}s{sequence}_{frame:06d}_00.jpg"


# ---------------------------------------------------------------------------------------------
# Boxes


@dataclass(frozen=True)
class Box:
    """A detection in pixels: top-left corner, width, height, and the detector's score."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """Intersection over union of every box of ``a`` with every box of ``b`` (len(a) x len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    xa = np.array([(p.x, p.y, p.x + p.w, p.y + p.h) for p in a], dtype=np.float64)
    xb = np.array([(p.x, p.y, p.x + p.w, p.y + p.h) for p in b], dtype=np.float64)
    left = np.maximum(xa[:, None, 0], xb[None, :, 0])
    top = np.maximum(xa[:, None, 1], xb[None, :, 1])
    right = np.minimum(xa[:, None, 2], xb[None, :, 2])
    bottom = np.minimum(xa[:, None, 3], xb[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (xa[:, 2] - xa[:, 0]) * (xa[:, 3] - xa[:, 1])
    area_b = (xb[:, 2] - xb[:, 0]) * (xb[:, 3] - xb[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def read_mot_detections(path: str | os.PathLike) -> dict[int, list[Box]]:
    """A MOT-Challenge ``det.txt``: ``frame, id, left, top, width, height, score[, x, y, z]`` per
    line (comma-separated, frames from 1); boxes per frame. A line that does not parse is an
    error naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file {path} not found")
    boxes: dict[int, list[Box]] = {}
    with open(path, newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(",")]
            try:
                frame, values = int(float(fields[0])), [float(f) for f in fields[2:7]]
                if len(values) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                raise ValueError(f"{path}, line {number}: expected 'frame, id, left, top, width, height, score, ...' "
                                 f"(MOT-Challenge det.txt), got {line.strip()[:80]!r}") from None
            left, top, width, height, score = values
            if frame < 1 or width <= 0 or height <= 0 or not all(map(math.isfinite, values)):
                raise ValueError(f"{path}, line {number}: expected a frame >= 1 and a box of positive finite size, "
                                 f"got {line.strip()[:80]!r}")
            boxes.setdefault(frame, []).append(Box(left, top, width, height, score))
    return boxes


class HogPeopleDetector:
    """OpenCV's built-in HOG + linear SVM pedestrian detector (Dalal and Triggs 2005): no weights
    to download. ``min_score``: the SVM margin a box needs; boxes overlapping a stronger one by
    more than ``nms_iou`` are dropped."""

    def __init__(self, *, win_stride: int = 8, scale: float = 1.05, min_score: float = 0.3,
                 nms_iou: float = 0.4) -> None:
        if not hog_available():
            raise OSError(f"this OpenCV build ({cv2.__version__}) has no HOG people detector (cv2.HOGDescriptor "
                          "left the main modules in OpenCV 5); pass --detections det.txt (boxes of any detector, "
                          "MOT-Challenge format), or use an OpenCV 4 build (opencv-python-headless<5)")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.win_stride, self.scale, self.min_score, self.nms_iou = win_stride, scale, min_score, nms_iou

    def __call__(self, frame: np.ndarray) -> list[Box]:
        rects, weights = self.hog.detectMultiScale(frame, winStride=(self.win_stride, self.win_stride),
                                                   padding=(8, 8), scale=self.scale)
        boxes = [Box(float(x), float(y), float(w), float(h), float(s))
                 for (x, y, w, h), s in zip(np.reshape(rects, (-1, 4)), np.ravel(weights)) if s >= self.min_score]
        return non_maximum_suppression(boxes, self.nms_iou)


class MotionPeopleDetector:
    """Moving people for a static camera, where no HOG detector is available: the MOG2 background
    subtractor (Zivkovic 2004; shadows left out), a morphological clean-up, and the connected
    foreground regions shaped like a standing person (height / width in ``aspect``, height at
    most ``max_height`` of the frame). The score is the region's fill of its box. Call it on
    every frame in order: the background model learns from each."""

    def __init__(self, *, history: int = 200, min_area: int = 400, aspect: tuple[float, float] = (1.2, 5.0),
                 max_height: float = 0.8) -> None:
        self.subtractor = cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=True)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self.min_area, self.aspect, self.max_height = min_area, aspect, max_height

    def __call__(self, frame: np.ndarray) -> list[Box]:
        mask = self.subtractor.apply(frame)
        mask = np.where(mask == 255, 255, 0).astype(np.uint8)  # 127: shadow
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self.kernel, iterations=2)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = []
        for x, y, w, h, area in stats[1:count]:
            if area >= self.min_area and self.aspect[0] <= h / w <= self.aspect[1] \
                    and h <= self.max_height * frame.shape[0]:
                boxes.append(Box(float(x), float(y), float(w), float(h), float(area) / float(w * h)))
        return boxes


DETECTORS = ("auto", "hog", "motion")


def hog_available() -> bool:
    """Whether this OpenCV build has the HOG people detector (OpenCV 4 does; 5's main modules do not)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector")


def non_maximum_suppression(boxes: Sequence[Box], max_iou: float) -> list[Box]:
    """The boxes by descending score, each kept unless it overlaps a kept one by more than ``max_iou``."""
    ordered = sorted(boxes, key=lambda b: -b.score)
    kept: list[Box] = []
    for box in ordered:
        if not kept or iou_matrix([box], kept).max() <= max_iou:
            kept.append(box)
    return kept


# ---------------------------------------------------------------------------------------------
# Tracking


@dataclass
class _Track:
    key: int
    box: Box
    frame: int
    velocity: tuple[float, float] = (0.0, 0.0)
    hits: int = 1

    def predicted(self, frame: int) -> Box:
        """The last box moved by the velocity of its centre (constant-velocity model)."""
        gap = frame - self.frame
        return Box(self.box.x + self.velocity[0] * gap, self.box.y + self.velocity[1] * gap, self.box.w, self.box.h)


class IouTracker:
    """Links each frame's boxes into tracks: a box continues the track whose predicted box
    (constant velocity) overlaps it most, greedily by descending IoU, if that IoU reaches
    ``min_iou``; other boxes start new tracks. A track unmatched for more than ``max_gap``
    frames ends. ``update`` returns each box's track key (keys count from 0 in order of birth).
    """

    def __init__(self, *, min_iou: float = 0.3, max_gap: int = 5) -> None:
        self.min_iou, self.max_gap = min_iou, max_gap
        self.tracks: list[_Track] = []
        self._next_key = 0

    def update(self, frame: int, boxes: Sequence[Box]) -> list[int]:
        self.tracks = [t for t in self.tracks if frame - t.frame <= self.max_gap]
        overlap = iou_matrix([t.predicted(frame) for t in self.tracks], list(boxes))
        keys = [-1] * len(boxes)
        used: set[int] = set()
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            t, b = divmod(int(flat), len(boxes))
            if overlap[t, b] < self.min_iou:
                break
            if t in used or keys[b] >= 0:
                continue
            used.add(t)
            keys[b] = self._extend(self.tracks[t], frame, boxes[b])
        for b, box in enumerate(boxes):
            if keys[b] < 0:
                self.tracks.append(_Track(self._next_key, box, frame))
                keys[b] = self._next_key
                self._next_key += 1
        return keys

    @staticmethod
    def _extend(track: _Track, frame: int, box: Box) -> int:
        (x0, y0), (x1, y1) = track.box.centre, box.centre
        gap = frame - track.frame
        measured = ((x1 - x0) / gap, (y1 - y0) / gap)
        # the first step sets the velocity; later ones smooth it (detections jitter)
        track.velocity = measured if track.hits == 1 else tuple(0.5 * v + 0.5 * m for v, m in
                                                                zip(track.velocity, measured))
        track.box, track.frame, track.hits = box, frame, track.hits + 1
        return track.key


# ---------------------------------------------------------------------------------------------
# Videos -> crops


@dataclass
class _Pending:
    """A track's crops until it is long enough to be written (then ``tracklet`` is set)."""

    tracklet: int = 0
    crops: list[tuple[int, Box, np.ndarray]] = field(default_factory=list)


@dataclass
class CropWriter:
    """Writes the crops of one run and collects the rows of ``tracklets.csv``."""

    output: Path
    min_length: int
    rows: list[dict] = field(default_factory=list)
    next_tracklet: int = 1

    def add(self, pending: _Pending, camera: int, sequence: int, frame: int, box: Box, crop: np.ndarray) -> None:
        pending.crops.append((frame, box, crop))
        if pending.tracklet == 0 and len(pending.crops) >= self.min_length:
            pending.tracklet, self.next_tracklet = self.next_tracklet, self.next_tracklet + 1
        if pending.tracklet:
            for item in pending.crops:
                self._write(pending.tracklet, camera, sequence, *item)
            pending.crops.clear()

    def _write(self, tracklet: int, camera: int, sequence: int, frame: int, box: Box, crop: np.ndarray) -> None:
        name = crop_name(tracklet, camera, sequence, frame)
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f"could not encode the crop {name} as JPEG")
        # atomic, not fsync'ed one by one: finish() makes all the crops durable with one sync
        atomic_write(self.output / name, lambda handle: handle.write(encoded.tobytes()), sync=False)
        self.rows.append({"image": name, "tracklet": tracklet, "camera": camera, "sequence": sequence,
                          "frame": frame, "x": round(box.x, 1), "y": round(box.y, 1), "w": round(box.w, 1),
                          "h": round(box.h, 1), "score": round(box.score, 4)})

    def finish(self) -> Path:
        """Sync the crops to disk, then write ``tracklets.csv``: a csv on disk lists only durable crops."""
        sync_files()
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=TRACKLET_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return atomic_write_text(self.output / TRACKLETS_FILE, text.getvalue())


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, int]:
    """An opened video whose first frame decodes, and its frame count (0 when unknown)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} not found")
    capture = cv2.VideoCapture(str(path))
    ok = capture.isOpened() and capture.read()[0]
    if not ok:
        capture.release()
        raise OSError(f"video file {path} could not be read: OpenCV decodes no frame of it "
                      "(not a video, truncated, or a codec this OpenCV build lacks)")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture, max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))


def _clipped(box: Box, width: int, height: int) -> Box | None:
    x0, y0 = max(0, int(round(box.x))), max(0, int(round(box.y)))
    x1, y1 = min(width, int(round(box.x + box.w))), min(height, int(round(box.y + box.h)))
    if x1 - x0 < 8 or y1 - y0 < 16:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0, box.score)


def crops_from_video(capture: cv2.VideoCapture, frames: int, detect: Callable[[int, np.ndarray], list[Box]],
                     writer: CropWriter, camera: int, sequence: int, *, tracker: IouTracker,
                     min_height: int, description: str, progress: bool | None) -> int:
    """Detect, track and crop every frame of one opened video; returns its frame count."""
    pending: dict[int, _Pending] = {}
    number = 0
    with progress_bar(total=frames or None, desc=description, unit="frame", progress=progress) as bar:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            number += 1
            height, width = image.shape[:2]
            boxes = [b for b in (_clipped(box, width, height) for box in detect(number, image))
                     if b is not None and b.h >= min_height]
            for key, box in zip(tracker.update(number, boxes), boxes):
                x, y, w, h = int(box.x), int(box.y), int(box.w), int(box.h)
                writer.add(pending.setdefault(key, _Pending()), camera, sequence, number, box,
                           image[y:y + h, x:x + w].copy())
            alive = {t.key for t in tracker.tracks}
            for key in [k for k in pending if k not in alive]:
                del pending[key]  # an ended track: what it held back was too short to keep
            bar.update()
    return number


def write_crops(videos: Sequence[str | os.PathLike], output: str | os.PathLike, *, camera: int | None = None,
                detections: Sequence[str | os.PathLike] | None = None, min_length: int = 3, min_height: int = 48,
                min_iou: float = 0.3, max_gap: int = 5, min_score: float = 0.3, detector: str = "auto",
                overwrite: bool = False, progress: bool | None = None) -> dict:
    """Crops of the people in ``videos`` into ``output`` (see the module docstring).

    ``camera``: the camera number (1..9) of every video, their sequences 1, 2, ...; default:
    video i is camera i (sequence 1). ``detections``: one MOT ``det.txt`` per video instead of
    a detector. ``detector``: ``hog`` (:class:`HogPeopleDetector`), ``motion``
    (:class:`MotionPeopleDetector`, static cameras) or ``auto`` (HOG where this OpenCV build
    has it, else motion, with a warning). Tracklets shorter than ``min_length`` boxes and boxes lower than
    ``min_height`` pixels are left out. Everything is checked (videos decode, detection files
    parse, the output folder holds no earlier crops unless ``overwrite``) before any file is
    written. Returns a summary (videos, frames, tracklets, crops, the csv path).
    """
    videos = [Path(v) for v in videos]
    if not videos:
        raise ValueError("no video given")
    if len(videos) > 9:
        raise ValueError(f"{len(videos)} videos: at most 9 (camera and sequence are one digit each in the names)")
    if camera is not None and not 1 <= camera <= 9:
        raise ValueError(f"--camera {camera}: expected 1..9 (one digit in the crop names)")
    if detections is not None and len(detections) != len(videos):
        raise ValueError(f"{len(detections)} detection files for {len(videos)} videos: expected one det.txt per video")
    if min_length < 1 or min_height < 16:
        raise ValueError(f"min_length {min_length} / min_height {min_height}: expected >= 1 and >= 16")
    boxes_per_video = [read_mot_detections(d) for d in detections] if detections is not None else None
    captures = []
    try:
        for video in videos:
            captures.append(open_video(video))
        if boxes_per_video is None:
            detector = _detector_kind(detector)
            if detector == "hog":
                HogPeopleDetector(min_score=min_score)  # fails here, before any file, on a build without it
        output = _prepare_output(Path(output), overwrite)
        writer = CropWriter(output, min_length)
        frames = 0
        for index, (capture, count) in enumerate(captures):
            cam, seq = (camera, index + 1) if camera is not None else (index + 1, 1)
            if boxes_per_video is not None:
                table = boxes_per_video[index]
                detect = lambda number, image, table=table: table.get(number, [])  # noqa: E731
            else:
                made = HogPeopleDetector(min_score=min_score) if detector == "hog" else MotionPeopleDetector()
                detect = lambda number, image, made=made: made(image)  # noqa: E731
            frames += crops_from_video(capture, count, detect, writer, cam, seq,
                                       tracker=IouTracker(min_iou=min_iou, max_gap=max_gap), min_height=min_height,
                                       description=f"crops {videos[index].name}", progress=progress)
        csv_path = writer.finish()
    finally:
        for capture, _ in captures:
            capture.release()
    return {"videos": len(videos), "frames": frames, "tracklets": writer.next_tracklet - 1,
            "crops": len(writer.rows), "tracklets_csv": str(csv_path)}


def _detector_kind(detector: str) -> str:
    if detector not in DETECTORS:
        raise ValueError(f"detector={detector!r}: expected one of {', '.join(DETECTORS)}")
    if detector != "auto":
        return detector
    if hog_available():
        return "hog"
    log.warning("this OpenCV build (%s) has no HOG people detector: using the motion detector (background "
                "subtraction, for static cameras); --detector hog needs OpenCV 4, --detections takes any "
                "detector's boxes", cv2.__version__)
    return "motion"


def _prepare_output(output: Path, overwrite: bool) -> Path:
    """The output folder, refusing one that holds crops or a tracklets.csv (``overwrite`` removes
    those, and only those)."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file, not a folder")
    ours = sorted(p for p in output.iterdir() if p.name == TRACKLETS_FILE or CROP_PATTERN.fullmatch(p.name)) \
        if output.is_dir() else []
    if ours and not overwrite:
        raise FileExistsError(f"--output {output} already holds crops ({len(ours)} files, e.g. {ours[0].name}); "
                              "choose another folder or pass --overwrite to replace them")
    for path in ours:
        path.unlink()
    output.mkdir(parents=True, exist_ok=True)
    return output


# ---------------------------------------------------------------------------------------------
# Reading tracklets back


@dataclass(frozen=True)
class TrackletRow:
    tracklet: int
    camera: int
    sequence: int
    frame: int


def read_tracklets(path: str | os.PathLike) -> dict[str, TrackletRow]:
    """``tracklets.csv`` -> {image name: its tracklet, camera, sequence, frame}. A missing column,
    a value that is not an integer or a repeated image is an error naming the file and line."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("image", "tracklet", "camera", "sequence", "frame") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: expected the columns {', '.join(TRACKLET_COLUMNS)}; missing {', '.join(missing)}")
        rows: dict[str, TrackletRow] = {}
        for number, row in enumerate(reader, start=2):
            try:
                entry = TrackletRow(int(row["tracklet"]), int(row["camera"]), int(row["sequence"]), int(row["frame"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {number}: tracklet, camera, sequence and frame must be integers, "
                                 f"got {dict(row)}") from None
            if row["image"] in rows:
                raise ValueError(f"{path}, line {number}: image {row['image']} is listed twice")
            rows[row["image"]] = entry
    return rows
