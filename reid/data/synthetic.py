"""A synthetic pedestrian dataset written in the Market-1501 layout.

Nobody can download Market-1501 on an offline machine, so the demo, the tests and CI use
this generator instead. It writes the three folders of the Market-1501 release
(``bounding_box_train/``, ``query/``, ``bounding_box_test/``) with Market's exact file
names (``PPPP_cCsS_FFFFFF_DD.jpg``; ``0000_*`` distractors and ``-1_*`` junk in the gallery
folder only), so ``build_dataset("market1501", root)`` reads it like the real thing.

This module plans the dataset: identities and cameras, which identity walks past which
camera for how many frames, the split of each tracklet into query and gallery, the file
names, and the manifest that marks a complete tree. The pixels come from
:mod:`reid.data.render` (identities that share attributes, camera styles, tracklet frames,
occlusion), which is why raw-pixel matching scores far below a learned model (see
``benchmarks/bench_synthetic.py``), while a person stays recognisable across cameras.

Determinism: every random draw comes from a generator seeded by
``SeedSequence([seed, kind, pid, camera, index])``, so the files do not depend on the
order in which images are rendered, nor on the number of worker processes, and the same
arguments give byte-identical JPEGs.

Crash safety: the manifest is replaced atomically (:func:`reid.io.atomic_write_json`) and
each image appears under its name only once it is fully written, so an interrupted run
leaves either the previous manifest or the new one, never half of one, and no truncated JPEG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..io import atomic_write_json, remove_stale_temporaries
from .render import (
    DOMAINS,
    Camera,
    Identity,
    Track,
    render_false_detection,
    render_junk,
    render_tracklet_frame,
    restyle_camera,
    restyle_identity,
    sample_camera,
    sample_identity,
    sample_track,
)

__all__ = [
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MANIFEST_NAME",
    "SPLIT_FOLDERS",
    "make_synthetic_market",
    "market_name",
]

# Bump when the files change (reid.data.render's pixels, or the plan here), so a cached tree
# made by an older generator is not reused.
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic.json"
_GENERATOR = "reid.data.synthetic"  # written in the manifest: marks a tree as ours
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
JPEG_QUALITY = 90

# Seed-sequence domains: keep the random streams of the different uses apart.
_KIND_IDENTITY, _KIND_CAMERA, _KIND_PLAN, _KIND_PERSON, _KIND_DISTRACTOR, _KIND_JUNK = range(6)

# Market-1501 names hold 4-digit pids, cameras 1..6 (we allow up to 9: one digit),
# sequences 1..6, 6-digit frame numbers and 2-digit detection indices.
_MAX_PID = 9999
_MAX_CAMERAS = 9
_NUM_SEQUENCES = 6
_MAX_FRAME = 999_999


def market_name(pid: int, camera: int, sequence: int, frame: int, detection: int) -> str:
    """Market-1501 file name, e.g. ``market_name(2, 1, 1, 451, 3) == "0002_c1s1_000451_03.jpg"``.

    pid -1 (junk) is written ``-1`` as in the release; every other pid uses 4 digits.
    """
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s{sequence}_{frame:06d}_{detection:02d}.jpg"


@dataclasses.dataclass(frozen=True)
class _Job:
    """One image to write: where, under which name, and what to render into it."""

    folder: str
    name: str
    kind: int
    pid: int
    camera: int  # 1-based, as in the file name
    index: int
    track: Track | None


# --------------------------------------------------------------------------------------
# Planning: identities, cameras, and which images exist under which names


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _make_identities(seed: int, pids: Sequence[int], domain: str = "market") -> dict[int, Identity]:
    """One identity per pid; redraw (from the same pid's stream) on a full attribute clash."""
    identities: dict[int, Identity] = {}
    taken: set[tuple[int, ...]] = set()
    for pid in sorted(pids):
        rng = _rng(seed, _KIND_IDENTITY, pid)
        identity = sample_identity(rng)
        while identity.key in taken:
            identity = sample_identity(rng)
        taken.add(identity.key)
        identities[pid] = restyle_identity(identity, domain)
    return identities


def _make_cameras(seed: int, num_cameras: int, domain: str = "market") -> list[Camera]:
    """Cameras 1..num_cameras, each from its own stream (adding a camera keeps the others)."""
    return [restyle_camera(sample_camera(_rng(seed, _KIND_CAMERA, camera)), domain)
            for camera in range(1, num_cameras + 1)]


def _tracklet_jobs(seed: int, pid: int, identity: Identity, cameras: Sequence[Camera], is_test: bool,
                   cameras_per_id: Sequence[int], images_per_camera: Sequence[int],
                   queries_per_camera: int) -> list[_Job]:
    """The images of one identity: one tracklet per chosen camera, with increasing frame numbers.

    A test identity gives ``queries_per_camera`` frames of every tracklet to the query and the
    rest to the gallery, as Market does, so every query has a match in another camera.
    """
    num_cameras = len(cameras)
    rng = _rng(seed, _KIND_PLAN, pid)
    lo, hi = cameras_per_id[0], min(cameras_per_id[1], num_cameras)
    k = int(rng.integers(lo, hi + 1))
    chosen = sorted(int(c) + 1 for c in rng.choice(num_cameras, k, replace=False))
    jobs: list[_Job] = []
    for cam in chosen:
        n = int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))
        track = sample_track(identity, cameras[cam - 1], rng)
        sequence = int(rng.integers(1, _NUM_SEQUENCES + 1))
        step = int(rng.integers(4, 30))
        frame0 = int(rng.integers(0, _MAX_FRAME - step * n))
        detections = rng.integers(1, 9, n)
        query_idx = set(rng.choice(n, queries_per_camera, replace=False).tolist()) if is_test else set()
        for i in range(n):
            folder = ("query" if i in query_idx else "bounding_box_test") if is_test else "bounding_box_train"
            name = market_name(pid, cam, sequence, frame0 + i * step, int(detections[i]))
            jobs.append(_Job(folder, name, _KIND_PERSON, pid, cam, i, track))
    return jobs


def _false_detection_jobs(seed: int, kind: int, count: int, num_cameras: int) -> list[_Job]:
    """Distractors (pid 0) or junk (pid -1) of the gallery; frame numbers unique by index."""
    pid = 0 if kind == _KIND_DISTRACTOR else -1
    rng = _rng(seed, _KIND_PLAN, 0, kind)
    cams = rng.integers(1, num_cameras + 1, count)
    seqs = rng.integers(1, _NUM_SEQUENCES + 1, count)
    dets = rng.integers(1, 9, count)
    jobs: list[_Job] = []
    for i in range(count):
        frame = 1 + i * 9 + int(rng.integers(0, 9))
        name = market_name(pid, int(cams[i]), int(seqs[i]), frame, int(dets[i]))
        jobs.append(_Job("bounding_box_test", name, kind, pid, int(cams[i]), i, None))
    return jobs


def _plan(arguments: dict[str, Any]) -> tuple[list[Camera], list[_Job]]:
    """The cameras and every image to write, from the checked arguments (the manifest's form).

    Training identities get the odd pids, test identities the even ones: disjoint, as in Market.
    """
    seed, num_cameras = arguments["seed"], arguments["num_cameras"]
    train_pids = [2 * i + 1 for i in range(arguments["num_train_ids"])]
    test_pids = {2 * i + 2 for i in range(arguments["num_test_ids"])}
    domain = arguments.get("domain", "market")
    cameras = _make_cameras(seed, num_cameras, domain)
    identities = _make_identities(seed, [*train_pids, *test_pids], domain)
    jobs: list[_Job] = []
    for pid in sorted(identities):
        jobs += _tracklet_jobs(seed, pid, identities[pid], cameras, pid in test_pids,
                               arguments["cameras_per_id"], arguments["images_per_camera"],
                               arguments["queries_per_camera"])
    jobs += _false_detection_jobs(seed, _KIND_DISTRACTOR, arguments["num_distractors"], num_cameras)
    jobs += _false_detection_jobs(seed, _KIND_JUNK, arguments["num_junk"], num_cameras)
    # Unique names by construction (strictly increasing frames per tracklet, index-based
    # frames for distractors/junk); a clash would silently overwrite an image.
    assert len({(job.folder, job.name) for job in jobs}) == len(jobs), "duplicate synthetic file names"
    return cameras, jobs


# --------------------------------------------------------------------------------------
# Rendering and writing the images


def _render(job: _Job, camera: Camera, seed: int, size: tuple[int, int]) -> np.ndarray:
    """The pixels of one job, from its own stream: independent of the order jobs are rendered in."""
    pid_key = job.pid if job.kind == _KIND_PERSON else 0
    rng = _rng(seed, job.kind, pid_key, job.camera, job.index)
    if job.kind == _KIND_PERSON:
        assert job.track is not None
        return render_tracklet_frame(camera, job.track, job.index, rng, size)
    if job.kind == _KIND_DISTRACTOR:
        return render_false_detection(camera, rng, size)
    return render_junk(camera, rng, size)


def _write_image(path: str, img: np.ndarray) -> None:
    """Write ``img`` as a JPEG to a temporary name beside ``path``, then rename it to ``path``.

    A killed run then leaves no truncated JPEG under a real name (a loader would refuse it).
    Not :func:`reid.io.atomic_write`: its fsync per file would cost ~0.4 ms an image, about a
    third of the rendering time, for thousands of files that a rerun regenerates anyway; the
    manifest, written last and atomically, is what says the tree is complete. The temporary
    ``.NAME.tmp`` is not an image file, so a loader never lists it.
    """
    ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode the synthetic image {path!r} as JPEG")
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(encoded)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise OSError(f"could not write the synthetic image {path!r} ({error.strerror}; "
                      "is the folder writable?)") from error


def _write_jobs(root: str, jobs: Sequence[_Job], cameras: Sequence[Camera], seed: int,
                size: tuple[int, int]) -> int:
    for job in jobs:
        _write_image(os.path.join(root, job.folder, job.name), _render(job, cameras[job.camera - 1], seed, size))
    return len(jobs)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core; nested threads only contend


def _write_all_jobs(root: Path, jobs: Sequence[_Job], cameras: Sequence[Camera], seed: int,
                    size: tuple[int, int], workers: int) -> None:
    """Render and write every job, in ``workers`` processes; the files do not depend on it."""
    if workers == 1:
        _write_jobs(str(root), jobs, cameras, seed, size)
        return
    chunk = max(64, len(jobs) // (workers * 8) + 1)
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    # forkserver, not fork: a process that already ran torch or OpenCV holds thread pools whose
    # locks a forked child inherits mid-use (a deadlock seen after `reid visualize` in-process).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = [pool.submit(_write_jobs, str(root), c, cameras, seed, size) for c in chunks]
        for future in futures:
            future.result()


# --------------------------------------------------------------------------------------
# Arguments, the manifest, and an existing tree


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    if len(value) != 2 or int(value[0]) < low or int(value[1]) < int(value[0]):
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {tuple(value)!r}")
    return int(value[0]), int(value[1])


def _checked_arguments(num_train_ids: int, num_test_ids: int, num_cameras: int, image_size: Sequence[int],
                       seed: int, cameras_per_id: Sequence[int], images_per_camera: Sequence[int],
                       queries_per_camera: int, num_distractors: int, num_junk: int,
                       domain: str = "market") -> dict[str, Any]:
    """The arguments that decide the output, checked, in the JSON form stored in the manifest.

    The limits are those of Market's file names (4-digit pids, 1-digit cameras, 6-digit frames)
    and of the protocol (every query needs a gallery match in another camera).
    """
    height, width = (int(image_size[0]), int(image_size[1]))
    if height < 32 or width < 16:
        raise ValueError(f"image_size must be (height, width) with height >= 32 and width >= 16, got {image_size!r}")
    if not 2 <= num_cameras <= _MAX_CAMERAS:
        raise ValueError(f"num_cameras must be in 2..{_MAX_CAMERAS} (one digit in Market names, and "
                         f"queries need a second camera), got {num_cameras}")
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError(f"num_train_ids and num_test_ids must be >= 1, got {num_train_ids}, {num_test_ids}")
    if 2 * num_train_ids - 1 > _MAX_PID or 2 * num_test_ids > _MAX_PID:
        raise ValueError(f"pids have 4 digits in Market names: at most {(_MAX_PID + 1) // 2} train and "
                         f"{_MAX_PID // 2} test identities, got {num_train_ids} and {num_test_ids}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if queries_per_camera < 1:
        raise ValueError(f"queries_per_camera must be >= 1, got {queries_per_camera}")
    cams_range = _check_range("cameras_per_id", cameras_per_id, 2)
    images_range = _check_range("images_per_camera", images_per_camera, queries_per_camera + 1)
    if images_range[1] > 1000:  # a tracklet's frames must fit the 6-digit frame number
        raise ValueError(f"images_per_camera max must be <= 1000, got {images_range[1]}")
    if num_distractors < 0 or num_junk < 0 or max(num_distractors, num_junk) * 9 + 9 > _MAX_FRAME:
        raise ValueError(f"num_distractors and num_junk must be in 0..{_MAX_FRAME // 9 - 1}, "
                         f"got {num_distractors} and {num_junk}")
    arguments = dict(
        num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
        image_size=[height, width], seed=seed, cameras_per_id=list(cams_range),
        images_per_camera=list(images_range), queries_per_camera=queries_per_camera,
        num_distractors=num_distractors, num_junk=num_junk,
    )
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}: expected one of {', '.join(DOMAINS)}")
    if domain != "market":  # only then in the manifest: trees of the original domain keep theirs
        arguments["domain"] = domain
    return json.loads(json.dumps(arguments))


def _existing_files(root: Path) -> int:
    return sum(len(os.listdir(root / f)) for f in SPLIT_FOLDERS if (root / f).is_dir())


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    if manifest.get("complete") is not True:
        return False
    try:
        expected = {folder: int(manifest["counts"][folder]["images"]) for folder in SPLIT_FOLDERS}
    except (KeyError, TypeError, ValueError):
        return False
    return all((root / f).is_dir() and len(os.listdir(root / f)) == n for f, n in expected.items())


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's content, or {} when there is none or it is not a JSON object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return content if isinstance(content, dict) else {}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} (on disk) != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "none (the tree is incomplete)"


def _counts(jobs: Sequence[_Job]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for folder in SPLIT_FOLDERS:
        in_folder = [j for j in jobs if j.folder == folder]
        people = {j.pid for j in in_folder if j.kind == _KIND_PERSON}
        counts[folder] = {
            "images": len(in_folder),
            "identities": len(people),
            "cameras": len({j.camera for j in in_folder}),
            "distractors": sum(j.kind == _KIND_DISTRACTOR for j in in_folder),
            "junk": sum(j.kind == _KIND_JUNK for j in in_folder),
        }
    return counts


def _is_reusable(root: Path, arguments: dict[str, Any], overwrite: bool) -> bool:
    """True when ``root`` holds the complete tree these arguments make; raise when it holds another.

    A tree from an older generator version with the same arguments is a stale cache of ours,
    and an interrupted one is unfinished: both are regenerated without asking (False). A tree
    made with other arguments, or not by this generator, is refused unless ``overwrite``.
    """
    manifest_path = root / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    ours = manifest.get("generator") == _GENERATOR
    same_arguments = ours and manifest.get("arguments") == arguments
    current = same_arguments and manifest.get("version") == GENERATOR_VERSION
    if current and not overwrite and _is_complete(root, manifest):
        return True
    existing = _existing_files(root)
    if not overwrite and not same_arguments and (existing or manifest_path.exists()):
        what = (f"made with other arguments ({_differences(manifest.get('arguments') or {}, arguments)})"
                if ours else "not made by this generator")
        raise FileExistsError(
            f"{root} already holds a dataset ({existing} files in its split folders) {what}; "
            "pass overwrite=True (reid make-synthetic --overwrite) to replace it, or choose another root")
    return False


def _start_tree(root: Path, record: dict[str, Any]) -> None:
    """Claim ``root`` with the incomplete manifest, then empty its split folders.

    The manifest goes first: a run that dies after it leaves a tree that is ours with these
    arguments and incomplete, which the next run regenerates without asking; emptying the
    folders first would leave the previous manifest (perhaps of other arguments) over nothing.
    """
    manifest_path = root / MANIFEST_NAME
    remove_stale_temporaries(manifest_path)  # what a killed run's atomic write left
    atomic_write_json(manifest_path, record)
    for folder in SPLIT_FOLDERS:
        if (root / folder).exists():
            shutil.rmtree(root / folder)
        (root / folder).mkdir(parents=True)


# --------------------------------------------------------------------------------------
# Public entry point


def make_synthetic_market(
    root: str | os.PathLike[str],
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    num_cameras: int = 6,
    image_size: tuple[int, int] = (128, 64),
    seed: int = 0,
    *,
    cameras_per_id: tuple[int, int] = (2, 6),
    images_per_camera: tuple[int, int] = (2, 6),
    queries_per_camera: int = 1,
    num_distractors: int = 100,
    num_junk: int = 50,
    overwrite: bool = False,
    workers: int = 1,
    domain: str = "market",
) -> Path:
    """Write a synthetic re-ID dataset in the Market-1501 layout into ``root``; return ``Path(root)``.

    Args:
        root: the dataset folder; ``bounding_box_train/``, ``query/`` and
            ``bounding_box_test/`` are created directly inside it, next to a manifest
            ``synthetic.json`` (the arguments and the counts per split).
        num_train_ids: identities in ``bounding_box_train`` (pids 1, 3, 5, ...: odd).
        num_test_ids: identities in ``query`` + ``bounding_box_test`` (pids 2, 4, 6, ...: even),
            disjoint from the training identities as in Market-1501.
        num_cameras: 2..9 (Market has 6; the file name has one digit for the camera).
        image_size: (height, width) of every crop; Market's is (128, 64).
        seed: the same seed and arguments give byte-identical files.
        cameras_per_id: (min, max) cameras in which an identity appears (max is clipped to
            ``num_cameras``); min >= 2 so that every query has a cross-camera match.
        images_per_camera: (min, max) frames of one identity in one camera (one tracklet).
        queries_per_camera: query images taken from each (test identity, camera) tracklet,
            as Market does; the rest go to the gallery, so every camera of a test identity
            keeps a gallery image and every query has a match in another camera.
        num_distractors: ``0000_*`` gallery images (false detections: background or a body fragment).
        num_junk: ``-1_*`` gallery images (bad detections; loaders drop them).
        overwrite: replace an existing tree made with other arguments (or by someone else)
            instead of raising; it also forces regeneration of an identical tree.
        workers: processes used to render; the output does not depend on it.
        domain: ``"market"`` (the original) or ``"dusk"``, a second domain with the same plan
            and draws seen in other cameras and people (:data:`reid.data.render.DOMAINS`), for
            adaptation benchmarks; its labelled test split measures adaptation.

    A complete tree written with the same arguments is returned at once without rewriting
    (the manifest is written last, so an interrupted run is regenerated). Files outside
    the three split folders and the manifest are never touched.
    """
    arguments = _checked_arguments(num_train_ids, num_test_ids, num_cameras, image_size, seed, cameras_per_id,
                                   images_per_camera, queries_per_camera, num_distractors, num_junk, domain)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    if _is_reusable(root, arguments, overwrite):
        return root
    cameras, jobs = _plan(arguments)
    record = {"generator": _GENERATOR, "version": GENERATOR_VERSION, "arguments": arguments,
              "complete": False, "counts": _counts(jobs)}
    _start_tree(root, record)
    height, width = arguments["image_size"]
    _write_all_jobs(root, jobs, cameras, arguments["seed"], (height, width), workers)
    record["complete"] = True
    atomic_write_json(root / MANIFEST_NAME, record)
    return root
