"""What the list-file loaders share (cub200, cars196, sop, inshop, fashion_mnist; msmt17):
finding the dataset folder, reading numbered lines and fields with errors that name the file and
line, and assembling train / test splits."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .base import Item, check_images, format_listing, warn_skipped


def find_dataset_root(
    root: str | os.PathLike,
    *,
    name: str,
    required: Sequence[str | tuple[str, ...]],
    subfolders: Sequence[str],
    how_to_get: str,
) -> Path:
    """The folder holding everything in ``required``: ``root`` itself or ``root/SUB`` for SUB in
    ``subfolders`` (the first that does). Each requirement is a relative path (a trailing ``/``:
    a folder, else a file) or a tuple of alternatives. A FileNotFoundError says what was looked
    for where (and what a candidate lacks when it holds part of it) and how to get the data."""
    root_path = Path(root).expanduser().absolute()
    candidates = [root_path, *(root_path / sub for sub in subfolders)]

    def present(folder: Path, requirement: str | tuple[str, ...]) -> bool:
        options = (requirement,) if isinstance(requirement, str) else requirement
        return any((folder / p).is_dir() if p.endswith("/") else (folder / p).is_file() for p in options)

    def describe(requirement: str | tuple[str, ...]) -> str:
        return requirement if isinstance(requirement, str) else " or ".join(requirement)

    partial: list[str] = []
    for folder in candidates:
        found = [present(folder, requirement) for requirement in required]
        if all(found):
            return folder
        if any(found):
            missing = ", ".join(describe(r) for r, ok in zip(required, found) if not ok)
            partial.append(f"{folder} lacks {missing}")
    expected = ", ".join(describe(r) for r in required)
    where = str(root_path)
    if len(subfolders) == 1:
        where += f" or in its subfolder {subfolders[0]}/"
    elif subfolders:
        where += " or in one of its subfolders " + ", ".join(f"{sub}/" for sub in subfolders)
    if not root_path.exists():
        where += f" ({root_path} does not exist)"
    elif partial:
        where += f" ({'; '.join(partial)})"
    raise FileNotFoundError(f"{name}: dataset not found: expected {expected} in {where}. {how_to_get}.")


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line of a UTF-8 text file (a BOM is dropped)."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            for line_number, line in enumerate(file, start=1):
                text = line.strip()
                if text:
                    yield line_number, text
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 text file ({error})") from None


def read_fields(path: Path, count: int, expected: str, *, skip_lines: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line after the first ``skip_lines`` lines, split
    on whitespace; a line with another number of fields is a ValueError naming the file, the
    line and ``expected``."""
    for line_number, text in read_lines(path):
        if line_number <= skip_lines:
            continue
        fields = text.split()
        if len(fields) != count:
            raise ValueError(f"{path}, line {line_number}: expected {expected}, got {text!r}")
        yield line_number, fields


def parse_int(text: str, path: Path, line_number: int, what: str) -> int:
    """A non-negative integer field, or a ValueError naming the file and the line."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{path}, line {line_number}: {what} {text!r} is not a non-negative integer")
    return int(text)


class SplitLists:
    """Items gathered per split, each remembering where it was listed (for error messages)."""

    def __init__(self) -> None:
        self.items: dict[str, list[Item]] = {}
        self.origin: dict[str, str] = {}  # path -> "LIST FILE, line N"

    def add(self, split: str, path: str, label: int, origin: str, camid: int = 0) -> None:
        self.items.setdefault(split, []).append((path, label, camid))
        self.origin.setdefault(path, origin)

    def finish(self, name: str, splits: dict[str, str], *, skip_invalid: bool) -> tuple[list[Item], ...]:
        """The items of each split of ``splits`` (split -> what it holds, e.g. "the images of
        classes 1-100 in images.txt", for messages), sorted by path, after :func:`check_images`:
        a listed file that is missing is a FileNotFoundError naming where it is listed;
        unreadable images raise or, with ``skip_invalid``, are left out with one warning for
        the whole dataset; an empty split is a ValueError."""
        result: list[list[Item]] = []
        skipped: list[str] = []
        for split, holds in splits.items():
            items = sorted(self.items.get(split, []))
            if not items:
                raise ValueError(f"{name}: the {split} split is empty: there are no {holds}")
            try:
                good, bad = check_images(items, skip_invalid=skip_invalid, where=f"the {split} split of {name}")
            except FileNotFoundError:
                raise self._missing_error(name, items) from None
            if not good:
                raise ValueError(f"{name}: the {split} split holds no usable images ({holds}): {format_listing(bad)}")
            skipped.extend(bad)
            result.append(good)
        warn_skipped(name, skipped)
        return tuple(result)

    def _missing_error(self, name: str, items: Sequence[Item]) -> FileNotFoundError:
        missing = [path for path, _, _ in items if not os.path.isfile(path)]
        missing.sort(key=self._origin_key)
        first = missing[0] if missing else items[0][0]
        others = len(missing) - 1
        more = f" (and {others} more listed image{'s' if others > 1 else ''} missing)" if others else ""
        return FileNotFoundError(f"{name}: {self.origin[first]}: image file {first} does not exist{more}")

    def _origin_key(self, path: str) -> tuple[str, int]:
        origin = self.origin[path]
        head, _, number = origin.rpartition(" ")
        return (head, int(number)) if number.isdigit() else (origin, 0)
