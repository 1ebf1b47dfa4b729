"""Stanford Online Products (Song et al., CVPR 2016) in its standard deep-metric-learning split.

Layout: ``Stanford_Online_Products/`` with ``Ebay_train.txt`` and ``Ebay_test.txt`` (and
``Ebay_info.txt``, not used) and one folder per super-class (``bicycle_final/`` ...). Each list
starts with the header ``image_id class_id super_class_id path``, then one image per line, e.g.
``1 1 1 bicycle_final/111085122871_0.JPG`` (paths relative to ``Stanford_Online_Products/``).

Split: the two lists as given: train 59,551 images of 11,318 products, test 60,502 images of
11,316 products, evaluated leave-one-out with Recall@1, 10, 100, 1000. Labels are the
``class_id`` (product): train ones relabelled 0..11,317 in order of the class_id, test ones
(11,319..22,634) as written. Every camid is 0.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import ReidDataset, relabel_train
from .lists import SplitLists, find_dataset_root, parse_int, read_fields, read_lines

SOP_FOLDER = "Stanford_Online_Products"
SOP_LISTS = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
SOP_HEADER = "image_id class_id super_class_id path"
SOP_RECALL_KS = (1, 10, 100, 1000)
SOP_HOW_TO_GET = (
    "Get Stanford Online Products (Stanford_Online_Products.zip, from "
    "https://cvgl.stanford.edu/projects/lifted_struct/) and extract it"
)


def load_sop(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """Stanford Online Products from ``root`` (the folder holding ``Ebay_train.txt`` and
    ``Ebay_test.txt``, or its parent holding ``Stanford_Online_Products/``): the two lists as
    train and leave-one-out test. Every listed image passes a cheap integrity check;
    ``skip_invalid`` leaves unreadable ones out (one warning)."""
    folder = find_dataset_root(
        root, name="sop", required=tuple(SOP_LISTS.values()), subfolders=(SOP_FOLDER,), how_to_get=SOP_HOW_TO_GET
    )
    lists = SplitLists()
    for split, list_name in SOP_LISTS.items():
        list_path = folder / list_name
        _check_header(list_path)
        expected = "'image_id class_id super_class_id path' (e.g. '1 1 1 bicycle_final/111085122871_0.JPG')"
        for line_number, fields in read_fields(list_path, 4, expected, skip_lines=1):
            for text, what in zip(fields[:3], ("image_id", "class_id", "super_class_id")):
                parse_int(text, list_path, line_number, what)
            lists.add(split, str(folder / fields[3]), int(fields[1]), f"{list_path}, line {line_number}")
    train, test = lists.finish(
        "sop",
        {split: f"images listed in {folder / list_name}" for split, list_name in SOP_LISTS.items()},
        skip_invalid=skip_invalid,
    )
    return ReidDataset(
        "sop", str(folder), relabel_train(train), test, test, protocol="leave_one_out", recall_ks=SOP_RECALL_KS
    )


def _check_header(list_path: Path) -> None:
    for line_number, text in read_lines(list_path):
        if line_number != 1 or text.split() != SOP_HEADER.split():
            raise ValueError(f"{list_path}, line 1: expected the header {SOP_HEADER!r}, got "
                             + (repr(text) if line_number == 1 else "an empty line"))
        return
    raise ValueError(f"{list_path} is empty: expected the header {SOP_HEADER!r} and one line per image")
