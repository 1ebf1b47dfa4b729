"""reid crops: the tracker, MOT detections, crop names and tracklets.csv on a generated video."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

import reid.cli
from reid.crops import (
    Box,
    HogPeopleDetector,
    IouTracker,
    MotionPeopleDetector,
    crop_name,
    hog_available,
    iou_matrix,
    read_mot_detections,
    read_tracklets,
    write_crops,
)

FRAMES = 12


def _people(frame: int) -> list[tuple[int, int, int, int]]:
    """Ground-truth boxes (x, y, w, h) of frame 1..FRAMES: A walks right from frame 1, B walks left
    from frame 3 to 10 (they never overlap), a one-frame blip C in frame 6."""
    boxes = [(10 + 6 * frame, 20, 30, 70)]
    if 3 <= frame <= 10:
        boxes.append((200 - 5 * frame, 30, 28, 66))
    if frame == 6:
        boxes.append((120, 100, 20, 50))
    return boxes


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An MJPG .avi: coloured rectangles (the people of _people) on grey, and its det.txt."""
    folder = tmp_path_factory.mktemp("video")
    path = folder / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (240, 160))
    assert writer.isOpened()
    lines = []
    for frame in range(1, FRAMES + 1):
        image = np.full((160, 240, 3), 128, np.uint8)
        for colour, (x, y, w, h) in zip([(0, 0, 255), (255, 0, 0), (0, 255, 0)], _people(frame)):
            image[y:y + h, x:x + w] = colour
            lines.append(f"{frame},-1,{x},{y},{w},{h},0.9,-1,-1,-1")
        writer.write(image)
    writer.release()
    (folder / "det.txt").write_text("\n".join(lines) + "\n")
    return path, folder / "det.txt"


def test_iou_matrix_values() -> None:
    a = [Box(0, 0, 10, 10), Box(100, 100, 5, 5)]
    b = [Box(5, 0, 10, 10)]
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150], [0.0]])
    assert iou_matrix([], b).shape == (0, 1)


def test_tracker_links_by_constant_velocity_across_a_gap() -> None:
    tracker = IouTracker(min_iou=0.2, max_gap=3)
    assert tracker.update(1, [Box(0, 0, 10, 20)]) == [0]
    assert tracker.update(2, [Box(6, 0, 10, 20)]) == [0]  # IoU 0.25; velocity 6 px / frame
    # missed at frame 3; at frame 4 the box is at 18: without the velocity the IoU with the last
    # box (x = 6) would be 0; predicted at x = 18 it is 1
    assert tracker.update(4, [Box(18, 0, 10, 20), Box(60, 0, 10, 20)]) == [0, 1]
    assert tracker.update(9, [Box(48, 0, 10, 20)]) == [2]  # gap 5 > 3: track 0 ended, a new one


def test_tracker_matches_greedily_by_overlap() -> None:
    tracker = IouTracker(min_iou=0.1)
    tracker.update(1, [Box(0, 0, 10, 10), Box(8, 0, 10, 10)])
    # the box at x = 7 overlaps track 1 (x = 8) most; the one at x = 1 then takes track 0
    assert tracker.update(2, [Box(1, 0, 10, 10), Box(7, 0, 10, 10)]) == [0, 1]


def test_crop_names() -> None:
    assert crop_name(7, 2, 1, 451) == "0007_c2s1_000451_00.jpg"
    assert crop_name(12345, 9, 9, 999999) == "12345_c9s9_999999_00.jpg"
    with pytest.raises(ValueError, match="camera 10"):
        crop_name(1, 10, 1, 1)


def test_crops_from_detections(video, tmp_path) -> None:
    path, det = video
    summary = write_crops([path], tmp_path / "crops", camera=3, detections=[det], min_length=3, min_height=40)
    assert summary == {"videos": 1, "frames": FRAMES, "tracklets": 2, "crops": FRAMES + 8,
                       "tracklets_csv": str(tmp_path / "crops" / "tracklets.csv")}
    names = sorted(p.name for p in (tmp_path / "crops").glob("*.jpg"))
    # A is tracklet 1 (frames 1-12), B tracklet 2 (frames 3-10); the blip C (1 frame, 50 px) is left out
    assert names == sorted([f"0001_c3s1_{f:06d}_00.jpg" for f in range(1, FRAMES + 1)]
                           + [f"0002_c3s1_{f:06d}_00.jpg" for f in range(3, 11)])
    crop = cv2.imread(str(tmp_path / "crops" / "0001_c3s1_000005_00.jpg"))
    assert crop.shape == (70, 30, 3) and abs(int(crop[..., 2].mean()) - 255) < 12  # A's red rectangle
    rows = read_tracklets(tmp_path / "crops" / "tracklets.csv")
    assert rows["0002_c3s1_000004_00.jpg"].tracklet == 2 and rows["0002_c3s1_000004_00.jpg"].frame == 4
    with open(tmp_path / "crops" / "tracklets.csv") as handle:
        first = next(csv.DictReader(handle))
    assert first["image"] == "0001_c3s1_000001_00.jpg" and float(first["x"]) == 16 and float(first["h"]) == 70
    assert not list((tmp_path / "crops").glob(".*.tmp"))


def test_two_videos_are_two_cameras_and_refuse_a_second_run(video, tmp_path) -> None:
    path, det = video
    out = tmp_path / "crops"
    write_crops([path, path], out, detections=[det, det], min_height=40)
    assert len(list(out.glob("*_c1s1_*.jpg"))) == len(list(out.glob("*_c2s1_*.jpg"))) == FRAMES + 8
    assert {p.name[:4] for p in out.glob("*_c2s1_*.jpg")} == {"0003", "0004"}  # tracklets count on
    with pytest.raises(FileExistsError, match="already holds crops"):
        write_crops([path], out, detections=[det])
    (out / "notes.txt").write_text("mine")
    write_crops([path], out, detections=[det], min_height=40, overwrite=True)
    assert len(list(out.glob("*.jpg"))) == FRAMES + 8 and (out / "notes.txt").read_text() == "mine"


needs_hog = pytest.mark.skipif(not hog_available(), reason=f"OpenCV {cv2.__version__} has no cv2.HOGDescriptor")


@needs_hog
def test_hog_detector_runs_on_a_frame() -> None:
    frame = np.full((256, 128, 3), 200, np.uint8)
    cv2.rectangle(frame, (44, 40), (84, 220), (30, 30, 30), -1)
    boxes = HogPeopleDetector(min_score=-10.0)(frame)
    assert all(isinstance(b, Box) and b.w > 0 and b.h > 0 for b in boxes)


@needs_hog
def test_hog_pipeline_writes_a_csv(video, tmp_path) -> None:
    summary = write_crops([video[0]], tmp_path / "hog")
    assert summary["frames"] == FRAMES and (tmp_path / "hog" / "tracklets.csv").read_text().startswith("image,")


@pytest.mark.skipif(hog_available(), reason="this OpenCV build has the HOG detector")
def test_without_hog_the_error_names_the_way_out(video, tmp_path) -> None:
    with pytest.raises(OSError, match="has no HOG people detector .* pass --detections det.txt"):
        write_crops([video[0]], tmp_path / "out", detector="hog")
    assert not (tmp_path / "out").exists()


def test_motion_detector_finds_people_walking_in() -> None:
    """Two textured people enter a static textured scene (frames 10 and 12) and cross it."""
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(90, 160, (160, 240, 3)).astype(np.uint8), (7, 7), 0)
    texture_a = rng.integers(0, 255, (70, 30, 3)).astype(np.uint8)
    texture_b = rng.integers(0, 255, (66, 28, 3)).astype(np.uint8)
    detector = MotionPeopleDetector(history=50)
    for frame in range(1, 27):
        image, truth = scene.copy(), []
        if frame >= 10:
            x = 5 + 5 * (frame - 10)
            image[30:100, x:x + 30] = texture_a
            truth.append(Box(x, 30, 30, 70))
        if frame >= 12:
            x = 200 - 5 * (frame - 12)
            image[40:106, x:x + 28] = texture_b
            truth.append(Box(x, 40, 28, 66))
        found = detector(image)
        if frame < 10:
            assert found == []  # the background alone: nothing
        elif frame != 14:  # MOG2 loses both for one frame as its learning rate settles
            assert (iou_matrix(truth, found).max(axis=1) >= 0.45).all(), frame


def test_bad_detections_file(tmp_path) -> None:
    bad = tmp_path / "det.txt"
    bad.write_text("1,-1,10,20,30,40,0.9\n2,-1,10,x,30,40,0.9\n")
    with pytest.raises(ValueError, match=r"det.txt, line 2: expected 'frame, id, left"):
        read_mot_detections(bad)


@pytest.mark.parametrize("content", [None, b"not a video at all"])
def test_missing_or_unreadable_video_is_one_error_line(tmp_path, capsys, content) -> None:
    path = tmp_path / "clip.avi"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        reid.cli.main(["crops", str(path), "--output", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = f"error: video file {path} not found" if content is None else f"error: video file {path} could not be read"
    assert len(err) == 1 and err[0].startswith(want)
    assert not (tmp_path / "out").exists()  # nothing written


def test_reid_crops_command(video, tmp_path) -> None:
    path, det = video
    summary = reid.cli.main(["crops", str(path), "--detections", str(det), "--camera", "2", "--min-height", "40",
                             "--output", str(tmp_path / "out"), "--quiet"])
    assert summary["tracklets"] == 2 and (tmp_path / "out" / "0001_c2s1_000001_00.jpg").is_file()
    with pytest.raises(SystemExit):  # a second run into the same folder refuses
        reid.cli.main(["crops", str(path), "--detections", str(det), "--output", str(tmp_path / "out"), "--quiet"])


def test_crops_are_synced_once_before_the_csv(video, tmp_path, monkeypatch) -> None:
    """One sync for all the crops, then the csv (the only file fsync'ed on its own): a csv on
    disk never lists a crop that a power loss could take back."""
    import os

    import reid.crops

    path, det = video
    out = tmp_path / "crops"
    fsynced, synced = [], []
    real_fsync = os.fsync

    def fsync(fd):
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(reid.crops, "sync_files", lambda: synced.append(
        (len(list(out.glob("*.jpg"))), (out / "tracklets.csv").exists())))
    write_crops([path, path], out, detections=[det, det], min_height=40)
    assert synced == [(2 * (FRAMES + 8), False)]
    assert len(fsynced) == 1 and os.path.basename(fsynced[0]).startswith(".tracklets.csv.")
