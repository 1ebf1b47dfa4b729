"""DeepFashion In-Shop Clothes Retrieval (Liu et al., CVPR 2016) with its own train/query/gallery split.

Layout: the benchmark folder (``In-shop Clothes Retrieval Benchmark/``) holding
``Eval/list_eval_partition.txt`` and the images of ``img.zip`` extracted as ``img/`` (the
download keeps ``img.zip`` in ``Img/``, so ``Img/img/`` is accepted too; a
``list_eval_partition.txt`` directly in the folder as well). The list: line 1 the number of
images, line 2 the header ``image_name item_id evaluation_status``, then one image per line,
e.g. ``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`` (paths relative to the
folder holding ``img/``), status ``train``, ``query`` or ``gallery``.

Split: as listed: train 25,882 images of 3,997 items, query 14,218 and gallery 12,612 images
of 3,985 items, evaluated query against gallery (no camera filtering) with Recall@1, 10, 20,
30, 40, 50. Labels: the item number (``id_00000002`` -> 2); train ones relabelled 0..3,996 in
order of the item number, query / gallery ones as written. Every camid is 0.
"""

from __future__ import annotations

import os
import re

from .base import ReidDataset, relabel_train
from .lists import SplitLists, find_dataset_root, parse_int, read_fields, read_lines

INSHOP_SUBFOLDERS = ("In-shop Clothes Retrieval Benchmark", "InShop", "inshop", "In-Shop", "In-shop", "in_shop")
INSHOP_LISTS = ("Eval/list_eval_partition.txt", "list_eval_partition.txt")
INSHOP_IMAGE_BASES = ("", "Img")  # the folder holding img/: the benchmark folder or its Img/
INSHOP_HEADER = "image_name item_id evaluation_status"
INSHOP_STATUSES = ("train", "query", "gallery")
INSHOP_ITEM_ID = re.compile(r"id_(\d+)")
INSHOP_RECALL_KS = (1, 10, 20, 30, 40, 50)
INSHOP_HOW_TO_GET = (
    "Get DeepFashion In-shop Clothes Retrieval Benchmark (Eval/list_eval_partition.txt and Img/img.zip, "
    "from https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html) and extract img.zip "
    "next to Eval/"
)


def load_inshop(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """In-Shop from ``root`` (the folder holding ``Eval/list_eval_partition.txt`` and ``img/``, or
    its parent holding one of ``In-shop Clothes Retrieval Benchmark/``, ``InShop/``, ``inshop/``,
    ``In-Shop/``, ``In-shop/``, ``in_shop/``): train, query and gallery as listed, query against
    gallery. Every listed image passes a cheap integrity check; ``skip_invalid`` leaves
    unreadable ones out (one warning)."""
    folder = find_dataset_root(
        root,
        name="inshop",
        required=(INSHOP_LISTS, tuple(f"{base}/img/".lstrip("/") for base in INSHOP_IMAGE_BASES)),
        subfolders=INSHOP_SUBFOLDERS,
        how_to_get=INSHOP_HOW_TO_GET,
    )
    list_path = next(folder / name for name in INSHOP_LISTS if (folder / name).is_file())
    image_base = next(folder / base for base in INSHOP_IMAGE_BASES if (folder / base / "img").is_dir())
    declared = _check_head(list_path)
    lists = SplitLists()
    count = 0
    expected = f"'{INSHOP_HEADER}' (e.g. 'img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train')"
    for line_number, (path, item, status) in read_fields(list_path, 3, expected, skip_lines=2):
        match = INSHOP_ITEM_ID.fullmatch(item)
        if match is None:
            raise ValueError(f"{list_path}, line {line_number}: item_id {item!r} should look like 'id_00000002'")
        if status not in INSHOP_STATUSES:
            raise ValueError(
                f"{list_path}, line {line_number}: evaluation_status {status!r} should be one of "
                + ", ".join(INSHOP_STATUSES)
            )
        lists.add(status, str(image_base / path), int(match[1]), f"{list_path}, line {line_number}")
        count += 1
    if count != declared:
        raise ValueError(f"{list_path}: line 1 says {declared} images but {count} are listed (a truncated file?)")
    train, query, gallery = lists.finish(
        "inshop",
        {status: f"images with evaluation_status {status} in {list_path}" for status in INSHOP_STATUSES},
        skip_invalid=skip_invalid,
    )
    return ReidDataset(
        "inshop",
        str(folder),
        relabel_train(train),
        query,
        gallery,
        protocol="query_gallery",
        recall_ks=INSHOP_RECALL_KS,
    )


def _check_head(list_path: os.PathLike) -> int:
    """The image count of line 1, after checking that line 2 is the header."""
    count = None
    for line_number, text in read_lines(list_path):
        if count is None:
            if line_number != 1:
                raise ValueError(f"{list_path}, line 1: expected the image count, got an empty line")
            count = parse_int(text, list_path, 1, "the image count")
            continue
        if line_number != 2 or text.split() != INSHOP_HEADER.split():
            got = repr(text) if line_number == 2 else "an empty line"
            raise ValueError(f"{list_path}, line 2: expected the header {INSHOP_HEADER!r}, got {got}")
        return count
    raise ValueError(
        f"{list_path} is empty or too short: expected the image count on line 1, the header {INSHOP_HEADER!r} "
        "on line 2, then one line per image"
    )
