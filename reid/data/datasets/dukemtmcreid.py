"""DukeMTMC-reID (Zheng et al., ICCV 2017, re-ID subset of DukeMTMC).

Layout: ``DukeMTMC-reID/{bounding_box_train, query, bounding_box_test}/``.
File name ``PPPP_cC_fFFFFFFF.jpg``, e.g. ``0001_c2_f0046182.jpg``: person ``PPPP``, camera
``C`` (1..8 -> camid 0..7), frame ``FFFFFFF``. There are no junk images (a ``-1`` pid would
be dropped as in Market-1501) and no distractor pid: the gallery's 408 distractor identities
carry ordinary pids. Expected sizes: 16,522 train / 2,228 query / 17,661 gallery images.
"""

from __future__ import annotations

import os
import re

from .base import NameFormat, ReidDataset, load_split_folders

DUKEMTMCREID_FORMAT = NameFormat(
    pattern=re.compile(r"(?P<pid>-1|\d{4})_c(?P<cam>\d)_f\d{7}"),
    example="0001_c2_f0046182.jpg",
    first_camera=1,
    num_cameras=8,
    distractor_pid=None,
)
DUKEMTMCREID_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
DUKEMTMCREID_HOW_TO_GET = (
    "Get DukeMTMC-reID (DukeMTMC-reID.zip) and extract it so that this folder holds the three split folders"
)


def load_dukemtmcreid(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """DukeMTMC-reID from ``root`` (the folder holding the split folders, or its parent
    holding ``DukeMTMC-reID/``). ``skip_invalid`` as in :func:`load_market1501`."""
    return load_split_folders(
        root,
        name="dukemtmcreid",
        archive_folder="DukeMTMC-reID",
        split_folders=DUKEMTMCREID_SPLIT_FOLDERS,
        name_format=DUKEMTMCREID_FORMAT,
        how_to_get=DUKEMTMCREID_HOW_TO_GET,
        skip_invalid=skip_invalid,
    )
