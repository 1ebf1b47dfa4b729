"""CUB-200-2011 (Wah et al., 2011) in the deep-metric-learning split.

Layout: ``CUB_200_2011/`` with ``images.txt`` (lines ``ID RELPATH``, e.g.
``1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``, paths under ``images/``)
and ``image_class_labels.txt`` (lines ``ID CLASS``, classes 1..200), joined on the image ID.

The split of the DML papers (Song et al., CVPR 2016; the Group Loss, ECCV 2020): classes 1-100
train (5,864 images), classes 101-200 test (5,924 images), evaluated leave-one-out with
Recall@1, 2, 4, 8. ``train_test_split.txt`` (the classification split, which shares every
class between train and test) is NOT used. Train labels: classes 1..100 -> 0..99; test
labels: the class numbers 101..200 as written. Every camid is 0.
"""

from __future__ import annotations

import os

from .base import ReidDataset, relabel_train
from .lists import SplitLists, find_dataset_root, parse_int, read_fields

CUB200_FOLDER = "CUB_200_2011"
CUB200_NUM_CLASSES = 200
CUB200_TRAIN_CLASSES = range(1, 101)  # classes 1-100 train; 101-200 test
CUB200_RECALL_KS = (1, 2, 4, 8)
CUB200_HOW_TO_GET = (
    "Get CUB-200-2011 (CUB_200_2011.tgz, from the Caltech-UCSD Birds-200-2011 page, "
    "https://www.vision.caltech.edu/datasets/cub_200_2011/) and extract it"
)


def load_cub200(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """CUB-200-2011 from ``root`` (the folder holding ``images.txt``, ``image_class_labels.txt``
    and ``images/``, or its parent holding ``CUB_200_2011/``): classes 1-100 train, 101-200
    test, leave-one-out. Every listed image passes a cheap integrity check; ``skip_invalid``
    leaves unreadable ones out (one warning) instead of raising."""
    folder = find_dataset_root(
        root,
        name="cub200",
        required=("images.txt", "image_class_labels.txt", "images/"),
        subfolders=(CUB200_FOLDER,),
        how_to_get=CUB200_HOW_TO_GET,
    )
    images_txt, labels_txt = folder / "images.txt", folder / "image_class_labels.txt"
    paths: dict[int, tuple[str, int]] = {}  # image ID -> (relative path, line)
    for line_number, fields in read_fields(images_txt, 2, "'ID RELPATH' (e.g. '1 001.Black_footed_Albatross/...jpg')"):
        image_id = parse_int(fields[0], images_txt, line_number, "image ID")
        if image_id in paths:
            first = paths[image_id][1]
            raise ValueError(f"{images_txt}, line {line_number}: image ID {image_id} already listed on line {first}")
        paths[image_id] = (fields[1], line_number)
    classes: dict[int, tuple[int, int]] = {}  # image ID -> (class, line)
    for line_number, fields in read_fields(labels_txt, 2, "'ID CLASS' (e.g. '1 1')"):
        image_id = parse_int(fields[0], labels_txt, line_number, "image ID")
        label = parse_int(fields[1], labels_txt, line_number, "class")
        if not 1 <= label <= CUB200_NUM_CLASSES:
            raise ValueError(f"{labels_txt}, line {line_number}: class {label} is outside 1..{CUB200_NUM_CLASSES}")
        if image_id in classes:
            raise ValueError(
                f"{labels_txt}, line {line_number}: image ID {image_id} already listed on line {classes[image_id][1]}"
            )
        if image_id not in paths:
            raise ValueError(f"{labels_txt}, line {line_number}: image ID {image_id} is not listed in {images_txt}")
        classes[image_id] = (label, line_number)
    unlabelled = [image_id for image_id in paths if image_id not in classes]
    if unlabelled:
        first = unlabelled[0]
        raise ValueError(
            f"{images_txt}, line {paths[first][1]}: image ID {first} has no class in {labels_txt}"
            + (f" ({len(unlabelled) - 1} more IDs have none)" if len(unlabelled) > 1 else "")
        )
    lists = SplitLists()
    for image_id, (relative, line_number) in paths.items():
        label = classes[image_id][0]
        split = "train" if label in CUB200_TRAIN_CLASSES else "test"
        lists.add(split, str(folder / "images" / relative), label, f"{images_txt}, line {line_number}")
    train, test = lists.finish(
        "cub200",
        {"train": f"images of classes 1-100 in {images_txt}", "test": f"images of classes 101-200 in {images_txt}"},
        skip_invalid=skip_invalid,
    )
    return ReidDataset(
        "cub200", str(folder), relabel_train(train), test, test, protocol="leave_one_out", recall_ks=CUB200_RECALL_KS
    )
