"""What every re-ID dataset shares: the item type, the dataset record and one file-name parser.

A re-ID dataset is three lists of ``(path, pid, camid)``: ``train`` (pids relabelled to
0..N-1, sorted by original pid), ``query`` and ``gallery`` (original pids kept, so a query
and its gallery matches share the number written in their file names). Market-1501,
DukeMTMC-reID and a user's folder in Market naming differ only in the file-name pattern and
the camera range, so one parser (:func:`read_split`) serves all of them.

Every listed image file also passes a cheap integrity check when the dataset is built
(:func:`check_images`, :func:`check_image_file`): a file that is empty, not an image or
truncated is an error naming it (:class:`ImageReadError`), or, with ``skip_invalid``, is left
out of the lists with one warning naming it. This module needs only the standard library.

The same record also carries the retrieval benchmarks of deep metric learning (CUB-200-2011,
Cars196, Stanford Online Products, In-Shop, Fashion-MNIST): there the "pid" is a class label,
every camid is 0, and ``protocol`` says how query and gallery are compared (:data:`PROTOCOLS`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ...evaluation.protocol import JUNK_PID, PROTOCOLS

Item = tuple[str, int, int]
"""One image: (path, pid, camid)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "query", "gallery")
# How a dataset's query and gallery are compared, and the junk pid its loaders drop, are the
# evaluation protocol's facts (reid.evaluation.protocol): reid (Market-1501, DukeMTMC-reID, custom,
# synthetic), leave_one_out (CUB-200-2011, Cars196, SOP, Fashion-MNIST), query_gallery (In-Shop).
DEFAULT_RECALL_KS = (1, 5, 10)
"""The ranks a re-ID dataset reports (CMC rank-1/5/10); retrieval datasets set their own."""

SYNTHETIC_HINT = (
    "or make the synthetic dataset in Market-1501 layout with `reid make-synthetic`"
)
SKIP_HINT = "set data.skip_invalid=true (skip_invalid=True) to skip such files"
SHOWN_SKIPPED = 10
"""How many skipped files a warning or an error names before "and N more"."""
# The integrity check of long lists runs in threads, by chunks: the reads of files not yet in
# the page cache then overlap (~4x faster cold), and cached ones cost no more than in one thread.
CHECK_CHUNK = 512
CHECK_THREADS = 8


@dataclass
class ReidDataset:
    """Train / query / gallery lists of ``(path, pid, camid)``, each sorted by path.

    ``protocol`` (one of :data:`PROTOCOLS`) says how query and gallery are evaluated and
    ``recall_ks`` the ranks K the dataset's papers report (Recall@K / CMC rank-K). Both have
    defaults (the re-ID protocol, ranks 1, 5, 10), so ``ReidDataset(name, root, train, query,
    gallery)`` is a re-ID dataset. With ``leave_one_out`` the query and the gallery are the
    same list (the loaders pass one list object for both).
    """

    name: str
    root: str
    train: list[Item] = field(repr=False)
    query: list[Item] = field(repr=False)
    gallery: list[Item] = field(repr=False)
    protocol: str = "reid"
    recall_ks: tuple[int, ...] = DEFAULT_RECALL_KS
    distractor_pid: int | None = None
    """The pid of the gallery's distractor images (Market-1501's ``0000``), which match no query and
    are no identity: training on a test split (``data.combine_all``) leaves them out. None: every
    pid is a person (DukeMTMC-reID, MSMT17, CUHK03-NP, whose test pid 0 is a real identity)."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"dataset {self.name}: unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        ks = tuple(self.recall_ks)
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
            raise ValueError(f"dataset {self.name}: recall_ks must be positive integers, got {self.recall_ks!r}")
        self.recall_ks = ks
        if self.protocol == "leave_one_out" and self.query is not self.gallery and self.query != self.gallery:
            raise ValueError(
                f"dataset {self.name}: the leave_one_out protocol needs query and gallery to be the same list "
                f"({len(self.query)} and {len(self.gallery)} items differ)"
            )

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({camid for _, _, camid in self.train})

    def summary(self) -> str:
        """A table with one row per split: identities, images, cameras.

        Retrieval datasets (protocol other than ``reid``) count classes and images only (their
        camid is always 0); leave-one-out shows one ``query = gallery`` row; a last line names
        the protocol and its Recall@K.
        """
        if self.protocol == "reid":
            header: tuple[str, ...] = ("split", "identities", "images", "cameras")
            splits = (("train", self.train), ("query", self.query), ("gallery", self.gallery))
        else:
            header = ("split", "classes", "images")
            if self.protocol == "leave_one_out":
                splits = (("train", self.train), ("query = gallery", self.query))
            else:
                splits = (("train", self.train), ("query", self.query), ("gallery", self.gallery))
        rows = []
        for split, items in splits:
            row = [split, str(len({p for _, p, _ in items})), str(len(items))]
            if self.protocol == "reid":
                row.append(str(len({c for _, _, c in items})))
            rows.append(tuple(row))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
            return "  " + " | ".join([first, *rest])

        rule = "  " + "-+-".join("-" * width for width in widths)
        lines = [f"{self.name} ({self.root})", line(header), rule, *(line(r) for r in rows)]
        if self.protocol != "reid":
            how = {
                "leave_one_out": "leave-one-out: query = gallery, each query excludes only itself",
                "query_gallery": "queries against a separate gallery, no camera filtering",
            }[self.protocol]
            ks = ", ".join(str(k) for k in self.recall_ks)
            lines.append(f"  protocol {self.protocol} ({how}); Recall@K for K = {ks}")
        return "\n".join(lines)


@dataclass(frozen=True)
class NameFormat:
    """How a dataset writes (pid, camera) into an image's file name.

    ``pattern`` is matched against the whole file stem (the name without its extension) and
    has the named groups ``pid`` and ``cam``. Cameras are numbered from ``first_camera`` in
    file names and become camids 0, 1, ... (``num_cameras`` of them; ``None``: no upper bound).
    ``distractor_pid`` marks gallery-only distractor images (Market-1501's ``0000``).
    """

    pattern: re.Pattern[str]
    example: str
    first_camera: int = 1
    num_cameras: int | None = None
    distractor_pid: int | None = None

    def parse(self, stem: str) -> tuple[int, int]:
        """(pid, camid) of a file stem; ValueError saying what is wrong otherwise."""
        match = self.pattern.fullmatch(stem)
        if match is None:
            raise ValueError(f"the name does not match the pattern {self.pattern.pattern!r} (e.g. {self.example})")
        pid, camera = int(match["pid"]), int(match["cam"])
        if self.num_cameras is None:
            last_camera, expected = None, f">= {self.first_camera}"
        else:
            last_camera = self.first_camera + self.num_cameras - 1
            expected = f"{self.first_camera}..{last_camera}"
        if camera < self.first_camera or (last_camera is not None and camera > last_camera):
            raise ValueError(f"camera {camera} is outside the dataset's camera range {expected}")
        return pid, camera - self.first_camera


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; other files (Thumbs.db, notes) are ignored."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [folder / name for name in sorted(names)]


def read_split(
    folder: Path, name_format: NameFormat, *, allow_distractors: bool, skip_invalid: bool
) -> tuple[list[Item], list[str]]:
    """Parse every image name in one split folder.

    Junk images (pid -1) are dropped, as every Market-1501 peer does. Distractors are only
    meaningful in the gallery (they match no query), so elsewhere they are invalid: in a
    training split they would silently become one big fake identity. The image files kept
    then pass :func:`check_images` (empty, not an image, truncated?).
    Returns the items sorted by path and the messages for the files skipped as invalid:
    names that break ``name_format`` and unreadable images. Without ``skip_invalid`` such a
    file raises instead: a ``ValueError`` for a name, an ``ImageReadError`` for an image.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"split folder {folder} does not exist")
    files = list_image_files(folder)
    if not files:
        raise ValueError(f"split folder {folder} is empty: it holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    items: list[Item] = []
    skipped: list[str] = []
    for path in files:
        try:
            pid, camid = name_format.parse(path.stem)
            if pid == name_format.distractor_pid and not allow_distractors:
                raise ValueError(f"pid {pid} marks a distractor, which belongs in the gallery only")
        except ValueError as error:
            message = f"{path}: {error}"
            if not skip_invalid:
                raise ValueError(f"invalid image file name {message} ({SKIP_HINT})") from None
            skipped.append(message)
            continue
        if pid != JUNK_PID:
            items.append((str(path), pid, camid))
    items, unreadable = check_images(items, skip_invalid=skip_invalid, where=f"split folder {folder}")
    skipped.extend(unreadable)
    if not items:
        why = f": {format_listing(skipped)}" if skipped else ""
        raise ValueError(f"split folder {folder} holds no usable images ({len(files)} files, all junk or skipped){why}")
    return items, skipped


def check_images(
    items: Sequence[Item], *, skip_invalid: bool, where: str, hint: str = SKIP_HINT
) -> tuple[list[Item], list[str]]:
    """The items whose image files pass :func:`check_image_file`, and
    the error messages of those that do not (left out with ``skip_invalid``).

    Why check when the dataset is built rather than when an image is loaded: the train,
    query and gallery lists then never hold a file known to be bad, so the identity sampler,
    the class count and the query / gallery evaluation are built on the images really used,
    and a bad file stops a run at its start, not hours into it (or, with ``skip_invalid``,
    is left out of every list, where a loader could not drop an image from a batch plan or
    a gallery already laid out). The check reads only the head and the tail of each file
    (size > 0, a known signature, the JPEG end marker FF D9 / the PNG IEND chunk) and does
    not decode: ~7 us per small JPEG in the page cache, ~0.2 s for the 32,000 files of
    Market-1501 (~30 us per file, ~1 s, when none is cached: the reads run in
    ``CHECK_THREADS`` threads). A file that passes but does not decode (corrupt data inside)
    still raises :class:`reid.data.transforms.ImageReadError` naming it when it is read.

    Without ``skip_invalid`` any bad file raises one ``ImageReadError`` naming every bad file
    of ``items`` (up to :data:`SHOWN_SKIPPED` of them; ``where`` says where they are listed)
    and, in ``hint``, how to skip them. A missing file is a ``FileNotFoundError``, always.
    """
    chunks = [items[start : start + CHECK_CHUNK] for start in range(0, len(items), CHECK_CHUNK)]
    if len(chunks) > 1:
        with ThreadPoolExecutor(min(CHECK_THREADS, len(chunks))) as pool:
            errors = [error for chunk_errors in pool.map(_check_chunk, chunks) for error in chunk_errors]
    else:
        errors = [error for chunk in chunks for error in _check_chunk(chunk)]
    good = [item for item, error in zip(items, errors) if error is None]
    bad = [error for error in errors if error is not None]
    messages = [str(error) for error in bad]
    if bad and not skip_invalid:
        if len(bad) == 1:
            raise ImageReadError(f"{messages[0]} ({hint})", path=bad[0].path, reason=bad[0].reason)
        raise ImageReadError(
            f"{len(bad)} unreadable image files in {where}: {format_listing(messages)} ({hint})",
            path=bad[0].path,
            reason=bad[0].reason,
        )
    return good, messages


def _check_chunk(items: Sequence[Item]) -> list[ImageReadError | None]:
    errors: list[ImageReadError | None] = []
    for path, _, _ in items:
        try:
            check_image_file(path)
        except ImageReadError as error:
            errors.append(error)
        else:
            errors.append(None)
    return errors


def format_listing(messages: Sequence[str], shown: int = SHOWN_SKIPPED) -> str:
    """The first ``shown`` messages joined by "; ", then "(and N more)" if there are more."""
    more = f" (and {len(messages) - shown} more)" if len(messages) > shown else ""
    return "; ".join(messages[:shown]) + more


def relabel_train(items: Sequence[Item]) -> list[Item]:
    """Train pids -> 0..N-1 in order of the original pid (classification targets)."""
    label_of = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, label_of[pid], camid) for path, pid, camid in items]


def validation_split(dataset: ReidDataset, num_ids: int) -> ReidDataset:
    """``dataset`` with its last ``num_ids`` training identities held out as query and gallery.

    For tuning without touching the test split: the remaining training identities are relabelled
    0..N-1; the held-out ones become the evaluation set. Re-ID datasets (camera-aware protocol)
    take, for each held-out identity and camera, the first image (by path) as a query and the
    rest as gallery, as Market-1501's query holds one image per identity and camera; retrieval
    datasets evaluate the held-out classes leave-one-out. The test split is not used.
    """
    pids = sorted({pid for _, pid, _ in dataset.train})
    if not 0 < num_ids < len(pids):
        raise ValueError(f"data.val_ids={num_ids}: expected 1..{len(pids) - 1} (the dataset {dataset.name} has "
                         f"{len(pids)} training identities, and at least one must stay for training)")
    held = set(pids[-num_ids:])
    train = relabel_train([item for item in dataset.train if item[1] not in held])
    val = [item for item in dataset.train if item[1] in held]
    name = f"{dataset.name} validation ({num_ids} training ids held out)"
    if dataset.protocol != "reid":
        return ReidDataset(name, dataset.root, train, val, val, protocol="leave_one_out",
                           recall_ks=dataset.recall_ks)
    query, gallery, seen = [], [], set()
    for item in sorted(val):
        key = (item[1], item[2])
        (gallery if key in seen else query).append(item)
        seen.add(key)
    return ReidDataset(name, dataset.root, train, query, gallery, recall_ks=dataset.recall_ks)


def warn_skipped(dataset_name: str, skipped: Sequence[str], shown: int = SHOWN_SKIPPED) -> None:
    """One warning for all files skipped by ``skip_invalid``: their count and (the first
    ``shown`` of) their names, each with what is wrong with it."""
    if not skipped:
        return
    warnings.warn(
        f"{dataset_name}: skipped {len(skipped)} image file(s) with invalid names or unreadable images "
        f"(skip_invalid): {format_listing(skipped, shown)}",
        stacklevel=2,
    )


def find_dataset_folder(
    root: str | os.PathLike, archive_folder: str, split_folders: Sequence[str], how_to_get: str
) -> Path:
    """The folder holding the split folders: ``root`` itself, or ``root/archive_folder``."""
    root_path = Path(root).expanduser().absolute()
    for candidate in (root_path, root_path / archive_folder):
        if any((candidate / split).is_dir() for split in split_folders):
            return candidate
    expected = ", ".join(f"{s}/" for s in split_folders)
    raise FileNotFoundError(
        f"dataset not found: expected the folders {expected} in {root_path} or in {root_path / archive_folder}. "
        f"{how_to_get}, {SYNTHETIC_HINT}."
    )


def load_split_folders(
    root: str | os.PathLike,
    *,
    name: str,
    archive_folder: str,
    split_folders: Sequence[str],
    name_format: NameFormat,
    how_to_get: str,
    skip_invalid: bool = False,
) -> ReidDataset:
    """A dataset stored as three folders of images (train, query, gallery order in ``split_folders``).

    With ``skip_invalid``, files with invalid names and unreadable images are left out with
    one warning for the whole dataset (see :func:`read_split`).
    """
    folder = find_dataset_folder(root, archive_folder, split_folders, how_to_get)
    for split in split_folders:
        if not (folder / split).is_dir():
            raise FileNotFoundError(
                f"{name}: split folder {folder / split} does not exist. {how_to_get}, {SYNTHETIC_HINT}."
            )
    splits: list[list[Item]] = []
    skipped: list[str] = []
    for split_name, split_folder in zip(SPLITS, split_folders):
        items, skipped_here = read_split(
            folder / split_folder,
            name_format,
            allow_distractors=split_name == "gallery",
            skip_invalid=skip_invalid,
        )
        splits.append(items)
        skipped.extend(skipped_here)
    warn_skipped(name, skipped)
    train, query, gallery = splits
    return ReidDataset(name=name, root=str(folder), train=relabel_train(train), query=query, gallery=gallery,
                       distractor_pid=name_format.distractor_pid)


# Image files: the cheap integrity check. Standard library only, like the rest of this module;
# reid.data.transforms.read_image runs the same checks on the bytes it decodes with OpenCV.


class ImageReadError(OSError):
    """An image file that exists but cannot be used: empty, truncated, not an image, undecodable.

    The message is ``"image file PATH REASON"`` (e.g. ``"image file a.jpg is empty (0 bytes)"``);
    ``path`` and ``reason`` hold its two parts. Both are None when the error was rebuilt from
    its message alone, as a DataLoader does when it re-raises an error of a worker process.
    A missing file is a ``FileNotFoundError`` instead.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def image_error(path: str | os.PathLike, reason: str) -> ImageReadError:
    """``ImageReadError("image file PATH REASON")``."""
    path = os.fspath(path)
    return ImageReadError(f"image file {path} {reason}", path=path, reason=reason)


TAIL_BYTES = 32  # a complete JPEG / PNG ends with its end marker within these (unless data was appended)
HEAD_BYTES = 16
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_END = b"\xff\xd9"


def image_format(head: bytes) -> str | None:
    """The format a file's first bytes announce: "JPEG", "PNG", "BMP", "WebP", "TIFF" or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


KNOWN_FORMATS = "JPEG, PNG, BMP, WebP or TIFF"


def _jpeg_is_complete(data: bytes) -> bool:
    """Whether an end-of-image marker (FF D9) follows the first scan of a JPEG.

    Walks the marker segments from the start (their lengths skip over EXIF thumbnails, which
    hold their own scan and end marker) to the first start-of-scan, then looks for FF D9:
    inside entropy-coded data an FF byte is always followed by 00 or a restart marker, so the
    first FF D9 after it is the real end. Data appended after the end marker (some cameras
    write trailers) is allowed.
    """
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:  # stray bytes between segments: skip to the next marker, as libjpeg does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return False
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:  # end marker before any scan: the decoder will refuse it
            return True
        elif 0xD0 <= marker <= 0xD7 or marker in (0x01, 0x00):  # markers without a length
            pos += 2
        elif marker == 0xDA:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            return data.find(_JPEG_END, pos + 2 + length) >= 0
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _png_is_complete(data: bytes) -> bool:
    """Whether the chunks of a PNG, followed by their lengths, reach an IEND chunk."""
    pos, size = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos += 12 + length
    return False


def structure_problem(fmt: str | None, head: bytes, tail: bytes, size: int, whole) -> str | None:
    """Why a file of ``size`` bytes cannot be a complete image, or None; reads no pixels.

    ``head`` and ``tail`` are its first and last bytes; ``whole()`` returns all of it, needed
    only for the rare file whose end marker is not in its last bytes.
    """
    if fmt == "JPEG":
        if _JPEG_END not in tail and not _jpeg_is_complete(whole()):
            return "is truncated (JPEG data ends before its end marker FF D9)"
    elif fmt == "PNG":
        if b"IEND" not in tail and not _png_is_complete(whole()):
            return "is truncated (PNG data ends before its IEND chunk)"
    elif fmt == "BMP" and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        if declared > size:
            return f"is truncated ({size} bytes where its BMP header says {declared})"
    elif fmt == "WebP":
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared > size:
            return f"is truncated ({size} bytes where its RIFF header says {declared})"
    return None


def read_error(path: str | os.PathLike, error: OSError) -> OSError:
    """The error to raise when opening or reading an image file failed with ``error``."""
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"image file {os.fspath(path)} does not exist")
    return image_error(path, f"cannot be read ({error.strerror or error})")


def check_image_file(path: str | os.PathLike) -> None:
    """Cheap integrity check of an image file, without decoding it (~5 us per cached file).

    Passes when the file is not empty, starts with the signature of a JPEG, PNG, BMP, WebP
    or TIFF file, and (JPEG, PNG) ends with its end marker / (BMP, WebP) is as long as its
    header says. Only the first and last bytes are read, plus the whole file in the rare
    case of a JPEG or PNG with data appended after its end marker. Raises
    ``FileNotFoundError`` for a missing file and :class:`ImageReadError` otherwise, naming
    the file. A file that passes can still fail to decode (corrupt data inside); then
    :func:`reid.data.transforms.read_image` raises.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise read_error(path, error) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise image_error(path, "is empty (0 bytes)")
        if size <= HEAD_BYTES + TAIL_BYTES:
            head = tail = os.read(fd, size)
        else:
            head = os.read(fd, HEAD_BYTES)
            os.lseek(fd, size - TAIL_BYTES, os.SEEK_SET)
            tail = os.read(fd, TAIL_BYTES)

        def whole() -> bytes:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, size)

        fmt = image_format(head)
        if fmt is None:
            # The file's own bytes stay out of the message: it may be anything, a secret included.
            raise image_error(path, f"is not an image: it does not start with the signature of a {KNOWN_FORMATS} file")
        problem = structure_problem(fmt, head, tail, size, whole)
        if problem is not None:
            raise image_error(path, problem)
    except ImageReadError:
        raise
    except OSError as error:
        raise read_error(path, error) from None
    finally:
        os.close(fd)
