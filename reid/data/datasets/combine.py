"""Several datasets as one training set, and training on a dataset's test identities too.

Training on Market-1501, DukeMTMC-reID and MSMT17 at once (``data.name`` a list, as torchreid's
``sources`` and fast-reid's ``DATASETS.NAMES``) needs identities and cameras that never collide:
pid 5 of Market and pid 5 of Duke are two people, camera 0 of each two cameras. Each source's
training pids (0..N-1 after its own relabelling) are shifted by the number of training
identities of the sources before it, its camids by the number of camera ids before it (the
largest camid used + 1, so that a source with unused cameras still never overlaps the next).
The identity sampler then draws its P identities across all sources, a classifier gets one
class per identity of every source.

``combine_all`` (torchreid's ``combineall``) also trains on each source's query and gallery:
their identities are numbered after the source's training ones, in order of the original pid
(a query and its gallery matches become one class); junk (-1) and the source's distractor pid
(Market's 0000, which is no person) are left out. Such a run is for a model to deploy or to
test on *other* datasets: its scores on the sources' own test splits measure memory.

One source without ``combine_all`` is returned as it is, so a single-dataset run is exactly
what it was before multi-source training existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...evaluation.protocol import JUNK_PID
from .base import Item, ReidDataset


@dataclass(frozen=True)
class SourceOffsets:
    """Where one source's items landed in the combined training set (plain data: it goes into
    the checkpoint): classes ``pid_offset .. pid_offset + num_pids - 1`` and camids
    ``camid_offset .. camid_offset + num_cameras - 1`` are this source's."""

    name: str
    root: str
    pid_offset: int
    camid_offset: int
    num_pids: int
    num_cameras: int
    num_images: int


def training_items(dataset: ReidDataset, *, combine_all: bool = False) -> list[Item]:
    """The items a dataset gives a training set: its train list and, with ``combine_all``, its
    query and gallery images with labels after the training ones (module docstring)."""
    items = list(dataset.train)
    if not combine_all:
        return items
    first_label = max((pid for _, pid, _ in items), default=-1) + 1
    test = dataset.query if dataset.gallery is dataset.query else [*dataset.query, *dataset.gallery]
    unusable = {JUNK_PID, dataset.distractor_pid}
    seen: set[str] = set()
    kept = []
    for path, pid, camid in test:
        if pid not in unusable and path not in seen:
            seen.add(path)
            kept.append((path, pid, camid))
    label_of = {pid: first_label + i for i, pid in enumerate(sorted({pid for _, pid, _ in kept}))}
    return items + [(path, label_of[pid], camid) for path, pid, camid in kept]


def combine_datasets(
    datasets: Sequence[ReidDataset], *, combine_all: bool = False
) -> tuple[ReidDataset, list[SourceOffsets]]:
    """One training set from ``datasets`` (identities and cameras offset, see the module
    docstring) and where each source landed. Its query and gallery are empty: each test set is
    evaluated on its own. One dataset without ``combine_all`` comes back unchanged."""
    if not datasets:
        raise ValueError("combine_datasets needs at least one dataset")
    if len(datasets) == 1 and not combine_all:
        only = datasets[0]
        cameras = max((camid for _, _, camid in only.train), default=-1) + 1
        return only, [SourceOffsets(only.name, only.root, 0, 0, only.num_train_pids, cameras, len(only.train))]
    train: list[Item] = []
    offsets: list[SourceOffsets] = []
    pid_offset = camid_offset = 0
    for dataset in datasets:
        items = training_items(dataset, combine_all=combine_all)
        labels = sorted({pid for _, pid, _ in items})
        if labels != list(range(len(labels))):
            raise ValueError(f"dataset {dataset.name} ({dataset.root}): training pids must be 0..N-1 before they are "
                             f"combined, got {labels[:5]}...")  # a loader's bug, never a user's data
        cameras = max((camid for _, _, camid in items), default=-1) + 1
        train += [(path, pid + pid_offset, camid + camid_offset) for path, pid, camid in items]
        offsets.append(SourceOffsets(dataset.name, dataset.root, pid_offset, camid_offset, len(labels), cameras,
                                     len(items)))
        pid_offset += len(labels)
        camid_offset += cameras
    name = "+".join(dataset.name for dataset in datasets) + (" (combine_all)" if combine_all else "")
    root = ", ".join(dataset.root for dataset in datasets)
    first = datasets[0]
    return ReidDataset(name, root, train, [], [], protocol=first.protocol, recall_ks=first.recall_ks), offsets


def describe_sources(offsets: Sequence[SourceOffsets]) -> str:
    """A table with one row per training source: identities, images, cameras and their offsets."""
    header = ("source", "identities", "images", "cameras", "pid offset", "camid offset")
    rows = [(f"{s.name} ({s.root})", str(s.num_pids), str(s.num_images), str(s.num_cameras), str(s.pid_offset),
             str(s.camid_offset)) for s in offsets]
    total = ("all", str(sum(s.num_pids for s in offsets)), str(sum(s.num_images for s in offsets)),
             str(sum(s.num_cameras for s in offsets)), "", "")
    widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  " + " | ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))])

    rule = "  " + "-+-".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows), rule, line(total)])
