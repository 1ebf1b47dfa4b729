"""MSMT17 (Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person Re-Identification", CVPR 2018).

Layout, V1: ``MSMT17_V1/`` holding the image folders ``train/`` and ``test/`` and four lists,
``list_train.txt``, ``list_val.txt``, ``list_query.txt`` and ``list_gallery.txt``; V2 (faces
blurred): ``MSMT17_V2/`` with ``mask_train_v2/`` and ``mask_test_v2/`` and the same lists. Each
list line is ``PID/NAME.jpg LABEL`` (e.g. ``0000/0000_000_01_0303morning_0015_0.jpg 0``), the
path relative to the image folder of its split (train and val: the train folder; query and
gallery: the test folder). The name's third ``_`` field is the camera, ``01``..``15`` -> camid
0..14.

Labels are used as listed, as torchreid and fast-reid do: the lists number each split's
identities from 0 (train and val share the 1,041 training identities; query and gallery the
3,060 test ones, test pid 0 being a real person, not a distractor). Train = the train list plus
the val list, the paper's training set (torchreid and fast-reid add the val list only with
``combineall``). Sizes: train 32,621 images (30,248 + 2,373) of 1,041 ids, query 11,659 and
gallery 82,161 images of 3,060 ids, 15 cameras.

Bad input is an error before any image is read beyond the cheap check: a missing list or image
folder names what is missing and the expected layout; a line that breaks the format, names an
image twice or names a file that does not exist names the list file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .base import ReidDataset, relabel_train
from .lists import SplitLists, find_dataset_root, parse_int, read_fields

MSMT17_NUM_CAMERAS = 15
# (version folder, train image folder, test image folder)
MSMT17_VERSIONS = (("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2"))
# split -> (list files, which image folder: 0 train, 1 test)
MSMT17_LISTS = {
    "train": (("list_train.txt", "list_val.txt"), 0),
    "query": (("list_query.txt",), 1),
    "gallery": (("list_gallery.txt",), 1),
}
MSMT17_LINE = "'PID/NAME.jpg LABEL' (e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0')"
MSMT17_HOW_TO_GET = (
    "Get MSMT17 (MSMT17_V1.tar.gz or MSMT17_V2, on request from the authors, "
    "http://www.pkuvmc.com/publications/msmt17.html) and extract it"
)


def load_msmt17(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """MSMT17 V1 or V2 from ``root`` (the version folder itself, or its parent holding
    ``MSMT17_V1/`` or ``MSMT17_V2/``; see the module docstring). Every listed image passes the
    cheap integrity check; ``skip_invalid`` leaves unreadable ones out (one warning) instead of
    raising. A listed file that does not exist is always an error."""
    folder = find_dataset_root(
        root,
        name="msmt17",
        required=(
            tuple(f"{train}/" for _, train, _ in MSMT17_VERSIONS),
            tuple(f"{test}/" for _, _, test in MSMT17_VERSIONS),
            *(name for names, _ in MSMT17_LISTS.values() for name in names),
        ),
        subfolders=tuple(version for version, _, _ in MSMT17_VERSIONS),
        how_to_get=MSMT17_HOW_TO_GET,
    )
    image_folders = _image_folders(folder)
    lists = SplitLists()
    for split, (list_names, which) in MSMT17_LISTS.items():
        for list_name in list_names:
            _read_list(folder / list_name, image_folders[which], split, lists)
    train, query, gallery = lists.finish(
        "msmt17",
        {split: f"lines in {' and '.join(names)}" for split, (names, _) in MSMT17_LISTS.items()},
        skip_invalid=skip_invalid,
    )
    return ReidDataset("msmt17", str(folder), relabel_train(train), query, gallery)


def _image_folders(folder: Path) -> tuple[Path, Path]:
    """(train, test) image folders of the version ``folder`` holds: V1's or V2's, never a mix."""
    versions = [(folder / train, folder / test) for _, train, test in MSMT17_VERSIONS
                if (folder / train).is_dir() and (folder / test).is_dir()]
    layouts = " or ".join(f"{version}/ with {train}/ and {test}/" for version, train, test in MSMT17_VERSIONS)
    if len(versions) == 1:
        return versions[0]
    found = ", ".join(f"{name}/" for name in sorted(os.listdir(folder)) if (folder / name).is_dir())
    if versions:
        raise ValueError(f"msmt17: {folder} holds the image folders of both versions ({found}); expected {layouts}: "
                         "point data.root at one version folder")
    raise FileNotFoundError(f"msmt17: {folder} mixes the image folders of two versions ({found}); expected {layouts}")


def _read_list(list_path: Path, image_folder: Path, split: str, lists: SplitLists) -> None:
    """Add the images of one list file to ``split``, each with its label and camera."""
    for line_number, (relative, label_text) in read_fields(list_path, 2, MSMT17_LINE):
        where = f"{list_path}, line {line_number}"
        label = parse_int(label_text, list_path, line_number, "label")
        name = PurePosixPath(relative)
        if name.is_absolute() or ".." in name.parts:
            raise ValueError(f"{where}: image path {relative!r} must lie inside {image_folder}; expected {MSMT17_LINE}")
        fields = name.name.split("_")
        camera = fields[2] if len(fields) > 2 else ""
        if not (camera.isascii() and camera.isdigit() and 1 <= int(camera) <= MSMT17_NUM_CAMERAS):
            raise ValueError(f"{where}: {name.name!r} has no camera 01..{MSMT17_NUM_CAMERAS} as its third '_' field "
                             f"(e.g. 0000_000_01_0303morning_0015_0.jpg: camera 01)")
        path = str(image_folder / name)
        if path in lists.origin:
            raise ValueError(f"{where}: image {relative} is already listed at {lists.origin[path]}")
        lists.add(split, path, label, where, camid=int(camera) - 1)
