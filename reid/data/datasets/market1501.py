"""Market-1501 (Zheng et al., ICCV 2015), read with the conventions every peer follows.

Layout: ``Market-1501-v15.09.15/{bounding_box_train, query, bounding_box_test}/``.
File name ``PPPP_cCsS_FFFFFF_DD.jpg``, e.g. ``0002_c1s1_000451_03.jpg``: person ``PPPP``,
camera ``C`` (1..6 -> camid 0..5), sequence ``S``, frame ``FFFFFF``, box ``DD``.
pid ``-1`` (``-1_c1s1_...``) marks junk boxes: dropped at load. pid ``0000`` marks distractors:
kept in the gallery (they match no query and only push true matches down the ranking), and
refused in train and query. Expected sizes: train 12,936 images / 751 ids, query 3,368 / 750,
gallery 15,913 / 751 (750 ids + the distractor pid 0).

Market-1501+500k (Zheng et al.'s 500,000 extra distractor boxes; ``market1501_500k=True``, as
torchreid's and fast-reid's option of that name): the distractor images are expected in
``images/`` beside the three split folders (``Market-1501-v15.09.15/images/``). Every image there
joins the gallery as a distractor (pid 0, never a match, whatever pid its name carries); its
camera is read from the ``_cC`` of its Market-style name (``PID_cC...``, C in 1..6, the only part
of the name the loader needs). The gallery then holds 15,913 + 500,000 = 515,913 images (the
papers' 519,732 counts the 3,819 junk boxes the loaders drop).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...evaluation.protocol import DISTRACTOR_PID
from .base import (
    SKIP_HINT,
    Item,
    NameFormat,
    ReidDataset,
    check_images,
    find_dataset_folder,
    list_image_files,
    load_split_folders,
    warn_skipped,
)

MARKET1501_FORMAT = NameFormat(
    pattern=re.compile(r"(?P<pid>-1|\d{4})_c(?P<cam>\d)s\d_\d{6}_\d{2}"),
    example="0002_c1s1_000451_03.jpg",
    first_camera=1,
    num_cameras=6,
    distractor_pid=DISTRACTOR_PID,
)
MARKET1501_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
MARKET1501_HOW_TO_GET = (
    "Get Market-1501 (Market-1501-v15.09.15.zip, from the authors' page) and extract it "
    "so that this folder holds the three split folders"
)


MARKET1501_500K_FOLDER = "images"
# The 500k distractors: only the camera of the name is read (its pid field may be anything).
MARKET1501_500K_CAMERA = re.compile(r"(?:-1|\d+)_c(?P<cam>\d)(?:\D.*)?")
MARKET1501_ARCHIVE_FOLDER = "Market-1501-v15.09.15"


def load_market1501(
    root: str | os.PathLike, *, skip_invalid: bool = False, market1501_500k: bool = False
) -> ReidDataset:
    """Market-1501 from ``root`` (the folder holding the split folders, or its parent
    holding ``Market-1501-v15.09.15/``). Every listed image passes a cheap integrity check
    (empty, not an image, truncated?). ``skip_invalid`` skips files whose names do not
    follow the pattern and unreadable images (one warning names them) instead of raising.
    ``market1501_500k``: the gallery also holds the 500k distractors of ``images/`` (module
    docstring); a missing ``images/`` is an error before any split is read."""
    folder = find_dataset_folder(root, MARKET1501_ARCHIVE_FOLDER, MARKET1501_SPLIT_FOLDERS, MARKET1501_HOW_TO_GET)
    distractor_folder = folder / MARKET1501_500K_FOLDER
    if market1501_500k and not distractor_folder.is_dir():
        raise FileNotFoundError(
            f"market1501: data.market1501_500k=true needs the Market-1501+500k distractor images in "
            f"{distractor_folder}/, which does not exist: extract the 500k distractor set so that "
            f"{MARKET1501_500K_FOLDER}/ lies beside {', '.join(f'{s}/' for s in MARKET1501_SPLIT_FOLDERS)} in {folder}"
        )
    dataset = load_split_folders(
        folder,
        name="market1501",
        archive_folder=MARKET1501_ARCHIVE_FOLDER,
        split_folders=MARKET1501_SPLIT_FOLDERS,
        name_format=MARKET1501_FORMAT,
        how_to_get=MARKET1501_HOW_TO_GET,
        skip_invalid=skip_invalid,
    )
    if market1501_500k:
        distractors, skipped = read_distractor_folder(distractor_folder, skip_invalid=skip_invalid)
        warn_skipped("market1501 (500k distractors)", skipped)
        dataset.gallery = sorted(dataset.gallery + distractors)
    return dataset


def read_distractor_folder(folder: Path, *, skip_invalid: bool) -> tuple[list[Item], list[str]]:
    """Every image of ``folder`` as a distractor ``(path, DISTRACTOR_PID, camid)``, sorted by path,
    and the messages of the files skipped (``skip_invalid``: a name without a Market camera, an
    unreadable image); without ``skip_invalid`` the first such file raises, naming it."""
    files = list_image_files(folder)
    if not files:
        raise ValueError(f"market1501: the distractor folder {folder} holds no images")
    items: list[Item] = []
    skipped: list[str] = []
    last_camera = MARKET1501_FORMAT.first_camera + MARKET1501_FORMAT.num_cameras - 1
    for path in files:
        match = MARKET1501_500K_CAMERA.fullmatch(path.stem)
        camera = int(match["cam"]) if match is not None else 0
        if not MARKET1501_FORMAT.first_camera <= camera <= last_camera:
            message = (f"{path}: a distractor name must start PID_cC with camera C in "
                       f"{MARKET1501_FORMAT.first_camera}..{last_camera} (e.g. 0000_c1s1_000151_01.jpg)")
            if not skip_invalid:
                raise ValueError(f"invalid image file name {message} ({SKIP_HINT})")
            skipped.append(message)
            continue
        items.append((str(path), DISTRACTOR_PID, camera - MARKET1501_FORMAT.first_camera))
    items, unreadable = check_images(items, skip_invalid=skip_invalid, where=f"distractor folder {folder}")
    return items, skipped + unreadable
