"""A user's own re-ID data: per split, a folder of images in Market naming or a CSV list.

Where each split comes from, unless given explicitly (``train=``, ``query=``, ``gallery=``:
a folder or a ``.csv`` file, absolute or relative to ``root``):

- train: ``root/bounding_box_train/``, ``root/train/`` or ``root/train.csv``
- query: ``root/query/`` or ``root/query.csv``
- gallery: ``root/bounding_box_test/``, ``root/gallery/`` or ``root/gallery.csv``

Exactly one candidate must exist per split (two is an error: pass the one you mean).

**Folders.** File names start with ``PID_cCAM``: Market names (``0002_c1s1_000451_03.jpg``)
and DukeMTMC-reID names (``0001_c2_f0046182.jpg``) both fit; the pid may have any number of
digits and cameras are numbered from 1 (``c1`` -> camid 0) with no upper bound. As in
Market-1501, pid ``-1`` is junk (dropped) and ``distractor_pid`` (default ``0``; ``None``
makes 0 an ordinary identity) is allowed in the gallery only.

**CSV lists.** One image per row, ``path,pid[,camid]``, with an optional header row
``path,pid[,camid]``; blank rows and rows starting with ``#`` are ignored. Paths are relative
to the CSV file's folder (or absolute). pid and camid are non-negative integers used as
written (camids are 0-based here). The camid column is optional but all rows of one file
must agree. Without camera ids the Market protocol, which drops gallery items with the
query's pid *and* camid, would drop every true match if query and gallery shared one camid,
so query images get camid 0 and gallery images camid 1 (train images camid 0); a warning
says so. Query and gallery must both have camera ids or both lack them. Bad rows (a missing
file included) always raise.

**Unreadable images.** Every image listed, by a folder or a CSV list, passes the cheap
integrity check of :func:`reid.data.datasets.base.check_images` when the dataset is built
(empty, not an image, truncated?): a file that fails it is an error naming it, or with
``skip_invalid`` is left out. ``skip_invalid`` also skips folder files whose names break
the naming rule; one warning names all skipped files.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

from ...evaluation.protocol import DISTRACTOR_PID
from .base import (
    SPLITS,
    SYNTHETIC_HINT,
    Item,
    NameFormat,
    ReidDataset,
    check_images,
    read_split,
    relabel_train,
    warn_skipped,
)

CUSTOM_NAME_PATTERN = re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:\D.*)?")
SPLIT_CANDIDATES = {
    "train": ("bounding_box_train", "train", "train.csv"),
    "query": ("query", "query.csv"),
    "gallery": ("bounding_box_test", "gallery", "gallery.csv"),
}
# Camera ids given to CSV splits without a camid column: query and gallery differ so that
# same-pid-same-camera filtering keeps every true match.
DEFAULT_CAMIDS = {"train": 0, "query": 0, "gallery": 1}

CsvRow = tuple[str, int, int | None]


def load_custom(
    root: str | os.PathLike,
    *,
    train: str | os.PathLike | None = None,
    query: str | os.PathLike | None = None,
    gallery: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    distractor_pid: int | None = DISTRACTOR_PID,
) -> ReidDataset:
    """A dataset from a user's folders and/or CSV lists (see the module docstring)."""
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"custom dataset root {root_path} does not exist: it should hold the train, query and "
            f"gallery splits as folders in Market naming or as CSV lists, {SYNTHETIC_HINT}"
        )
    given = {"train": train, "query": query, "gallery": gallery}
    name_format = NameFormat(
        pattern=CUSTOM_NAME_PATTERN,
        example="0002_c1s1_000451_03.jpg or 0001_c2_f0046182.jpg",
        first_camera=1,
        num_cameras=None,
        distractor_pid=distractor_pid,
    )
    splits: dict[str, list[Item]] = {}
    without_camids: list[str] = []
    skipped: list[str] = []
    for split in SPLITS:
        source = find_split_source(root_path, split, given[split])
        if source.is_dir():
            items, skipped_here = read_split(
                source, name_format, allow_distractors=split == "gallery", skip_invalid=skip_invalid
            )
            skipped.extend(skipped_here)
            splits[split] = items
            continue
        rows = read_csv_list(source)
        if rows[0][2] is None:
            without_camids.append(split)
        default_camid = DEFAULT_CAMIDS[split]
        items = sorted((path, pid, default_camid if camid is None else camid) for path, pid, camid in rows)
        items, skipped_here = check_images(items, skip_invalid=skip_invalid, where=f"CSV list {source}")
        if not items:
            raise ValueError(f"CSV list {source} holds no usable images ({len(rows)} rows, all unreadable and skipped)")
        skipped.extend(skipped_here)
        splits[split] = items
    warn_skipped("custom", skipped)
    _check_camids(without_camids)
    return ReidDataset(
        name="custom",
        root=str(root_path),
        train=relabel_train(splits["train"]),
        query=splits["query"],
        gallery=splits["gallery"],
        distractor_pid=distractor_pid,
    )


def find_split_source(root: Path, split: str, given: str | os.PathLike | None) -> Path:
    """The folder or CSV file holding one split."""
    if given is not None:
        path = Path(given).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.exists():
            raise FileNotFoundError(f"custom dataset: the {split} source {path} does not exist")
        if not path.is_dir() and path.suffix.lower() != ".csv":
            raise ValueError(f"custom dataset: the {split} source {path} is neither a folder nor a .csv list")
        return path
    candidates = [root / name for name in SPLIT_CANDIDATES[split]]
    found = [path for path in candidates if (path.is_dir() if path.suffix != ".csv" else path.is_file())]
    if not found:
        raise FileNotFoundError(
            f"custom dataset: no {split} split in {root}: expected one of "
            + ", ".join(str(path) for path in candidates)
            + f" (or pass {split}=PATH)"
        )
    if len(found) > 1:
        raise ValueError(
            f"custom dataset: the {split} split is ambiguous: both "
            + " and ".join(str(path) for path in found)
            + f" exist; pass {split}=PATH to choose one"
        )
    return found[0]


def read_csv_list(csv_path: Path) -> list[CsvRow]:
    """Rows ``(path, pid, camid or None)`` of a ``path,pid[,camid]`` list, in file order."""
    rows: list[CsvRow] = []
    num_columns: int | None = None
    with open(csv_path, newline="", encoding="utf-8") as file:
        for line_number, raw in enumerate(csv.reader(file), start=1):
            cells = [cell.strip() for cell in raw]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"{csv_path}, line {line_number}"
            if not rows and num_columns is None and cells[0].lower() == "path":
                if [c.lower() for c in cells] not in (["path", "pid"], ["path", "pid", "camid"]):
                    raise ValueError(f"{where}: header {','.join(raw)!r} should be 'path,pid' or 'path,pid,camid'")
                num_columns = len(cells)
                continue
            if len(cells) not in (2, 3):
                raise ValueError(f"{where}: expected 'path,pid' or 'path,pid,camid', got {','.join(raw)!r}")
            if num_columns is not None and len(cells) != num_columns:
                raise ValueError(
                    f"{where}: {len(cells)} columns where the rows above have {num_columns} "
                    "(the camid column must be given for every row or for none)"
                )
            num_columns = len(cells)
            rows.append(_parse_csv_row(cells, csv_path, where))
    if not rows:
        raise ValueError(f"CSV list {csv_path} lists no images")
    return rows


def _parse_csv_row(cells: list[str], csv_path: Path, where: str) -> CsvRow:
    numbers = []
    for column, text in zip(("pid", "camid"), cells[1:]):
        if not re.fullmatch(r"\d+", text):
            raise ValueError(f"{where}: {column} {text!r} is not a non-negative integer")
        numbers.append(int(text))
    path = Path(cells[0]).expanduser()
    path = path if path.is_absolute() else csv_path.parent / path
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image file {path} does not exist")
    return str(path), numbers[0], numbers[1] if len(numbers) == 2 else None


def _check_camids(without_camids: list[str]) -> None:
    has_query, has_gallery = "query" not in without_camids, "gallery" not in without_camids
    if has_query != has_gallery:
        lacking = "query" if not has_query else "gallery"
        raise ValueError(
            f"custom dataset: the {lacking} CSV list has no camid column but the other test split has "
            "camera ids; give camera ids for both query and gallery or for neither"
        )
    if without_camids:
        warnings.warn(
            "custom dataset: no camera ids for " + ", ".join(without_camids) + "; using camid 0 for train and "
            "query and camid 1 for gallery, so that same-camera filtering in the evaluation keeps every match",
            stacklevel=3,
        )
