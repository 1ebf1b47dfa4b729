"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) as a small metric-learning benchmark.

Source: the four idx files of the original release, gzip-compressed, in one folder:
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz`` (Debian's ``dataset-fashion-mnist`` package installs them in
``/usr/share/datasets/fashion-mnist/``, the default root; torchvision keeps them in
``FashionMNIST/raw/``). idx format: a big-endian header (magic 2051 for images, 2049 for labels;
the count; for images the height and width, 28 and 28), then one unsigned byte per pixel / label.

Split (classes, as the DML benchmarks split CUB and Cars): the train file's images of classes
0-4 (30,000) train, labels 0..4; the t10k file's images of classes 5-9 (5,000) the test set,
leave-one-out with Recall@1, 2, 4, 8, labels 5..9 as written. Every camid is 0.

The training pipeline reads image files, so the images are written once as 28 x 28
single-channel PNGs (``read_image`` decodes them to RGB) into a cache folder:
``CACHE/fashion_mnist/{train,test}/<class>/<index in its idx file, 5 digits>.png`` plus
``manifest.json`` (the cache format, each source file's size and SHA-256, the image count
per class). ``CACHE`` is ``cache_dir``, else the reid cache folder (``reid.io.cache_dir``:
``$REID_CACHE``, else ``$XDG_CACHE_HOME/reid``, else ``~/.cache/reid``). A later load reuses
the folder when the manifest matches the sources and every expected PNG is listed there, and
rebuilds it otherwise (sources changed, files deleted). A build writes into a temporary folder
beside it and renames it into place only when complete (the manifest is written last), so an
interrupted build is never taken for a complete one; a file lock (POSIX) makes concurrent loads (several processes of one run) build
it once. The PNGs are written with the standard library (zlib), no OpenCV needed.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from reid.io import cache_dir as reid_cache_dir  # "cache_dir" is the loaders' argument here
from reid.io import sha256_file

from .base import ReidDataset, relabel_train
from .lists import find_dataset_root

log = logging.getLogger(__name__)

FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_SUBFOLDERS = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")
FASHION_MNIST_CLASSES = {"train": range(0, 5), "test": range(5, 10)}  # train: of the train file; test: of t10k
FASHION_MNIST_RECALL_KS = (1, 2, 4, 8)
FASHION_MNIST_HOW_TO_GET = (
    "Get Fashion-MNIST: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them in "
    f"{FASHION_MNIST_DEBIAN_ROOT}) or the four .gz files from https://github.com/zalandoresearch/fashion-mnist"
)
IMAGE_SIZE = 28
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10
CACHE_FOLDER = "fashion_mnist"
CACHE_FORMAT = 1
MANIFEST = "manifest.json"


def load_fashion_mnist(
    root: str | os.PathLike = FASHION_MNIST_DEBIAN_ROOT,
    *,
    cache_dir: str | os.PathLike | None = None,
    skip_invalid: bool = False,
) -> ReidDataset:
    """Fashion-MNIST from ``root`` (the folder holding the four idx ``.gz`` files, or its parent
    holding ``fashion-mnist/``, ``fashion_mnist/`` or torchvision's ``FashionMNIST/raw/``):
    train-file classes 0-4 train, t10k classes 5-9 leave-one-out test, as PNGs in the cache
    (see the module docstring). ``skip_invalid`` is accepted for a uniform signature and has
    nothing to skip: the PNGs are generated from validated idx files."""
    del skip_invalid
    folder = find_dataset_root(
        root,
        name="fashion_mnist",
        required=tuple(FASHION_MNIST_FILES.values()),
        subfolders=FASHION_MNIST_SUBFOLDERS,
        how_to_get=FASHION_MNIST_HOW_TO_GET,
    )
    sources = {key: folder / name for key, name in FASHION_MNIST_FILES.items()}
    labels = {split: read_idx_labels(sources[f"{split}_labels"]) for split in ("train", "test")}
    expected = {split: _selected(labels[split], FASHION_MNIST_CLASSES[split]) for split in ("train", "test")}
    for split, selected in expected.items():
        if not selected:
            classes = FASHION_MNIST_CLASSES[split]
            raise ValueError(
                f"fashion_mnist: the {split} split is empty: {sources[f'{split}_labels']} has no label "
                f"{classes.start}..{classes.stop - 1}"
            )
    cache = fashion_mnist_cache(sources, expected, cache_dir)
    items = {
        split: sorted((str(cache / split / str(label) / _png_name(index)), label, 0) for index, label in selected)
        for split, selected in expected.items()
    }
    return ReidDataset(
        "fashion_mnist",
        str(folder),
        relabel_train(items["train"]),
        items["test"],
        items["test"],
        protocol="leave_one_out",
        recall_ks=FASHION_MNIST_RECALL_KS,
    )


# --- idx files ---------------------------------------------------------------------------------


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise ValueError(f"{path} is not a readable gzip file ({type(error).__name__}: {error})") from None


def _check_idx_header(path: Path, data: bytes, magic: int, kind: str) -> int:
    """The item count of an idx file after checking its magic number."""
    header = 16 if magic == IDX_IMAGES_MAGIC else 8
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, too short for the {header}-byte header of an idx {kind} file")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        other = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}.get(found)
        hint = f" (an idx {other} file: are the file names swapped?)" if other else ""
        raise ValueError(f"{path}: magic number {found}, expected {magic} (idx {kind}: unsigned bytes){hint}")
    return int.from_bytes(data[4:8], "big")


def read_idx_labels(path: Path) -> bytes:
    """The labels of an idx1 file (one byte each, 0..9), validated."""
    data = _read_gz(path)
    count = _check_idx_header(path, data, IDX_LABELS_MAGIC, "labels")
    labels = data[8:]
    if len(labels) != count:
        raise ValueError(f"{path}: the header says {count} labels but {len(labels)} bytes follow it")
    if labels and max(labels) >= NUM_CLASSES:
        index = next(i for i, label in enumerate(labels) if label >= NUM_CLASSES)
        raise ValueError(f"{path}: label {labels[index]} of item {index} is outside 0..{NUM_CLASSES - 1}")
    return labels


def read_idx_images(path: Path, expected_count: int, labels_path: Path) -> bytes:
    """The pixels of an idx3 file of ``expected_count`` 28 x 28 images, validated, row-major."""
    data = _read_gz(path)
    count = _check_idx_header(path, data, IDX_IMAGES_MAGIC, "images")
    height, width = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
    if (height, width) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{path}: images of {height} x {width} pixels, expected {IMAGE_SIZE} x {IMAGE_SIZE}")
    if count != expected_count:
        raise ValueError(f"{path} holds {count} images but {labels_path} holds {expected_count} labels")
    pixels = data[16:]
    if len(pixels) != count * IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(
            f"{path}: the header says {count} images of {IMAGE_SIZE} x {IMAGE_SIZE} "
            f"({count * IMAGE_SIZE * IMAGE_SIZE} bytes) but {len(pixels)} bytes follow it"
        )
    return pixels


def _selected(labels: bytes, classes: range) -> list[tuple[int, int]]:
    """(index, label) of the items whose label is in ``classes``."""
    return [(index, label) for index, label in enumerate(labels) if label in classes]


# --- the PNG cache -----------------------------------------------------------------------------


def _png_name(index: int) -> str:
    return f"{index:05d}.png"


def png_gray(pixels: bytes, width: int, height: int) -> bytes:
    """A complete 8-bit greyscale PNG of ``pixels`` (row-major, one byte each)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = b"".join(b"\x00" + pixels[row * width : (row + 1) * width] for row in range(height))  # filter 0: none
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


def _fingerprint(sources: dict[str, Path]) -> dict[str, dict[str, object]]:
    """Each source file's size and SHA-256 (~0.1 s for the 30 MB of Fashion-MNIST)."""
    result: dict[str, dict[str, object]] = {}
    for path in sources.values():
        result[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return result


def _class_counts(expected: dict[str, list[tuple[int, int]]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split, selected in expected.items():
        per_class = counts.setdefault(split, {})
        for _, label in selected:
            per_class[str(label)] = per_class.get(str(label), 0) + 1
    return {split: dict(sorted(per_class.items())) for split, per_class in counts.items()}


def _manifest(sources: dict[str, Path], expected: dict[str, list[tuple[int, int]]]) -> dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "dataset": "fashion_mnist",
        "split": {split: f"classes {r.start}-{r.stop - 1}" for split, r in FASHION_MNIST_CLASSES.items()},
        "sources": _fingerprint(sources),
        "images": _class_counts(expected),
    }


def _cache_is_complete(
    cache: Path, manifest: dict[str, object], expected: dict[str, list[tuple[int, int]]]
) -> str | None:
    """None when ``cache`` holds the build ``manifest`` describes, else why not."""
    try:
        with open(cache / MANIFEST, encoding="utf-8") as file:
            found = json.load(file)
    except FileNotFoundError:
        return "no cache yet" if not cache.exists() else f"{cache / MANIFEST} is missing"
    except (OSError, ValueError) as error:
        return f"{cache / MANIFEST} is unreadable ({error})"
    if found != manifest:
        return "the source files or the cache format changed"
    for split, selected in expected.items():
        wanted: dict[str, set[str]] = {}
        for index, label in selected:
            wanted.setdefault(str(label), set()).add(_png_name(index))
        for label, names in wanted.items():
            try:
                with os.scandir(cache / split / label) as entries:
                    present = {entry.name for entry in entries}
            except OSError:
                return f"{cache / split / label} is missing"
            if present != names:
                return f"{cache / split / label} does not hold the {len(names)} expected PNG files"
    return None


def fashion_mnist_cache(
    sources: dict[str, Path], expected: dict[str, list[tuple[int, int]]], cache_dir: str | os.PathLike | None = None
) -> Path:
    """The cache folder of these sources, built (or rebuilt) first if needed."""
    parent = Path(cache_dir).expanduser() if cache_dir is not None else reid_cache_dir()
    parent = parent.absolute()
    parent.mkdir(parents=True, exist_ok=True)
    cache = parent / CACHE_FOLDER
    manifest = _manifest(sources, expected)
    with _lock(parent / f".{CACHE_FOLDER}.lock") as locked:
        why = _cache_is_complete(cache, manifest, expected)
        if why is None:
            return cache
        if locked:
            _remove_stale_builds(parent)
        start = time.perf_counter()
        _build(parent, cache, sources, expected, manifest)
        total = sum(len(selected) for selected in expected.values())
        log.info(
            "fashion_mnist: wrote %d PNG images into %s in %.1f s (%s)", total, cache, time.perf_counter() - start, why
        )
    return cache


def _build(
    parent: Path,
    cache: Path,
    sources: dict[str, Path],
    expected: dict[str, list[tuple[int, int]]],
    manifest: dict[str, object],
) -> None:
    """Write every PNG and the manifest into a temporary folder, then rename it to ``cache``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_FOLDER}.tmp-", dir=parent))
    old = None
    try:
        size = IMAGE_SIZE * IMAGE_SIZE
        for split, selected in expected.items():
            labels_path = sources[f"{split}_labels"]
            count = len(read_idx_labels(labels_path))
            pixels = read_idx_images(sources[f"{split}_images"], count, labels_path)
            for label in sorted({label for _, label in selected}):
                (tmp / split / str(label)).mkdir(parents=True)
            for index, label in selected:
                png = png_gray(pixels[index * size : (index + 1) * size], IMAGE_SIZE, IMAGE_SIZE)
                with open(tmp / split / str(label) / _png_name(index), "wb") as file:
                    file.write(png)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as file:  # last: a folder without it is incomplete
            json.dump(manifest, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        if cache.exists():  # an outdated build: move it aside, put the new one in, then delete the old
            old = Path(tempfile.mkdtemp(prefix=f".{CACHE_FOLDER}.old-", dir=parent))
            os.replace(cache, old / CACHE_FOLDER)
        try:
            os.replace(tmp, cache)
        except OSError:  # without a lock another process may have put its complete build in place first
            if _cache_is_complete(cache, manifest, expected) is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_stale_builds(parent: Path) -> None:
    """Delete the temporary folders of builds that were interrupted (killed) before their rename.
    Called only while holding the lock, so no build is running."""
    for stale in [*parent.glob(f".{CACHE_FOLDER}.tmp-*"), *parent.glob(f".{CACHE_FOLDER}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive lock on ``path`` (POSIX ``flock``; yields False where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are still atomic, only not serialised
        yield False
        return
    with open(path, "a+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
