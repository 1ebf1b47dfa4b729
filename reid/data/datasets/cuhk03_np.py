"""CUHK03-NP: CUHK03 (Li et al., CVPR 2014) in the new protocol of Zhong et al. (CVPR 2017), Market layout.

Layout: ``cuhk03-np/{detected, labeled}/{bounding_box_train, query, bounding_box_test}/``; the boxes
of a person detector (``detected``, the harder and more reported setting, and the default) or drawn
by hand (``labeled``: ``cuhk03_labeled=True``, torchreid's and fast-reid's option of that name).
File name ``PPPP_cC_N.png``, e.g. ``0001_c1_1.png``: person ``PPPP``, camera ``C`` (1..2, the two
views of a camera pair -> camid 0..1), image ``N``. No junk, no distractor pid. Sizes: 767 train
ids, 700 test ids; detected 7,365 train / 1,400 query / 5,332 gallery images, labeled 7,368 / 1,400 /
5,328.

The classic release (``cuhk-03.mat``, an HDF5 file, with the new protocol's split files) is not
read here: it needs h5py, and its loaders in the peers extract some 28,000 PNG files into the dataset
folder first; the NP release is the same images in the layout above.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import NameFormat, ReidDataset, load_split_folders

CUHK03_NP_FORMAT = NameFormat(
    pattern=re.compile(r"(?P<pid>\d{4})_c(?P<cam>\d)_\d+"),
    example="0001_c1_1.png",
    first_camera=1,
    num_cameras=2,
    distractor_pid=None,
)
CUHK03_NP_SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
CUHK03_NP_FOLDER = "cuhk03-np"
CUHK03_NP_KINDS = ("detected", "labeled")
CUHK03_NP_HOW_TO_GET = (
    "Get CUHK03-NP (cuhk03-np.zip, the new-protocol release of Zhong et al., CVPR 2017) and extract it "
    "so that cuhk03-np/detected/ and cuhk03-np/labeled/ each hold the three split folders"
)


def load_cuhk03_np(root: str | os.PathLike, *, skip_invalid: bool = False, cuhk03_labeled: bool = False) -> ReidDataset:
    """CUHK03-NP's detected boxes (``cuhk03_labeled=True``: the labeled ones) from ``root``: the
    folder holding ``cuhk03-np/``, ``cuhk03-np/`` itself, or the ``detected/`` / ``labeled/`` folder
    (then it must be the one asked for). ``skip_invalid`` as in :func:`load_market1501`."""
    kind = CUHK03_NP_KINDS[int(cuhk03_labeled)]
    root_path = Path(root).expanduser().absolute()
    folder = root_path
    for candidate in (root_path / CUHK03_NP_FOLDER / kind, root_path / kind):
        if candidate.is_dir():
            folder = candidate
            break
    else:
        other = CUHK03_NP_KINDS[1 - int(cuhk03_labeled)]
        if root_path.name == other and any((root_path / split).is_dir() for split in CUHK03_NP_SPLIT_FOLDERS):
            asked, flip = ("true", "false") if cuhk03_labeled else ("false", "true")
            raise ValueError(
                f"cuhk03_np: data.root={root_path} is the {other} release but data.cuhk03_labeled={asked} asks "
                f"for the {kind} one: point data.root at {root_path.parent} (the folder holding both) or set "
                f"data.cuhk03_labeled={flip}"
            )
    return load_split_folders(
        folder,
        name="cuhk03_np",
        archive_folder=f"{CUHK03_NP_FOLDER}/{kind}",
        split_folders=CUHK03_NP_SPLIT_FOLDERS,
        name_format=CUHK03_NP_FORMAT,
        how_to_get=CUHK03_NP_HOW_TO_GET,
        skip_invalid=skip_invalid,
    )
