"""What every re-ID dataset shares: the item type, the dataset record and one file-name parser.

A re-ID dataset is three lists of ``(path, pid, camid)``: ``train`` (pids relabelled to
0..N-1, sorted by original pid), ``query`` and ``gallery`` (original pids kept, so a query
and its gallery matches share the number written in their file names). Market-1501,
DukeMTMC-reID and a user's folder in Market naming differ only in the file-name pattern and
the camera range, so one parser (:func:`read_split`) serves all of them.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

Item = tuple[str, int, int]
"""One image: (path, pid, camid)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_PID = -1
SPLITS = ("train", "query", "gallery")

SYNTHETIC_HINT = (
    "or make the synthetic dataset in Market-1501 layout with `python tools/make_synthetic.py`"
)


@dataclass
class ReidDataset:
    """Train / query / gallery lists of ``(path, pid, camid)``, each sorted by path."""

    name: str
    root: str
    train: list[Item] = field(repr=False)
    query: list[Item] = field(repr=False)
    gallery: list[Item] = field(repr=False)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({camid for _, _, camid in self.train})

    def summary(self) -> str:
        """A table with one row per split: identities, images, cameras."""
        header = ("split", "identities", "images", "cameras")
        rows = [
            (split, str(len({p for _, p, _ in items})), str(len(items)), str(len({c for _, _, c in items})))
            for split, items in (("train", self.train), ("query", self.query), ("gallery", self.gallery))
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
            return "  " + " | ".join([first, *rest])

        rule = "  " + "-+-".join("-" * width for width in widths)
        return "\n".join([f"{self.name} ({self.root})", line(header), rule, *(line(r) for r in rows)])


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
    training split they would silently become one big fake identity.
    Returns the items sorted by path and the messages for the files skipped as invalid
    (an invalid file raises instead unless ``skip_invalid``).
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
                raise ValueError(
                    f"invalid image file name {message} (pass skip_invalid=True to skip such files)"
                ) from None
            skipped.append(message)
            continue
        if pid != JUNK_PID:
            items.append((str(path), pid, camid))
    if not items:
        raise ValueError(f"split folder {folder} holds no usable images ({len(files)} files, all junk or skipped)")
    return items, skipped


def relabel_train(items: Sequence[Item]) -> list[Item]:
    """Train pids -> 0..N-1 in order of the original pid (classification targets)."""
    label_of = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, label_of[pid], camid) for path, pid, camid in items]


def warn_skipped(dataset_name: str, skipped: Sequence[str], shown: int = 5) -> None:
    """One warning for all files skipped by ``skip_invalid``, with their count."""
    if not skipped:
        return
    more = f" (and {len(skipped) - shown} more)" if len(skipped) > shown else ""
    warnings.warn(
        f"{dataset_name}: skipped {len(skipped)} image file(s) with invalid names: "
        + "; ".join(skipped[:shown])
        + more,
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
    """A dataset stored as three folders of images (train, query, gallery order in ``split_folders``)."""
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
    return ReidDataset(name=name, root=str(folder), train=relabel_train(train), query=query, gallery=gallery)
