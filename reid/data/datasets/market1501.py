"""Market-1501 (Zheng et al., ICCV 2015), read with the conventions every peer follows.

Layout: ``Market-1501-v15.09.15/{bounding_box_train, query, bounding_box_test}/``.
File name ``PPPP_cCsS_FFFFFF_DD.jpg``, e.g. ``0002_c1s1_000451_03.jpg``: person ``PPPP``,
camera ``C`` (1..6 -> camid 0..5), sequence ``S``, frame ``FFFFFF``, box ``DD``.
pid ``-1`` (``-1_c1s1_...``) marks junk boxes: dropped at load. pid ``0000`` marks distractors:
kept in the gallery (they match no query and only push true matches down the ranking), and
refused in train and query. Expected sizes: train 12,936 images / 751 ids, query 3,368 / 750,
gallery 15,913 / 751 (750 ids + the distractor pid 0).
"""

from __future__ import annotations

import os
import re

from ...evaluation.protocol import DISTRACTOR_PID
from .base import NameFormat, ReidDataset, load_split_folders

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


def load_market1501(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """Market-1501 from ``root`` (the folder holding the split folders, or its parent
    holding ``Market-1501-v15.09.15/``). Every listed image passes a cheap integrity check
    (empty, not an image, truncated?). ``skip_invalid`` skips files whose names do not
    follow the pattern and unreadable images (one warning names them) instead of raising."""
    return load_split_folders(
        root,
        name="market1501",
        archive_folder="Market-1501-v15.09.15",
        split_folders=MARKET1501_SPLIT_FOLDERS,
        name_format=MARKET1501_FORMAT,
        how_to_get=MARKET1501_HOW_TO_GET,
        skip_invalid=skip_invalid,
    )
