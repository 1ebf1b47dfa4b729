"""Cars196 (Stanford Cars, Krause et al., 3dRR 2013) in the deep-metric-learning split.

Layout: one folder holding ``cars_annos.mat`` and ``car_ims/`` (``car_ims.tgz`` extracts to
``car_ims/000001.jpg`` ... ``016185.jpg``). ``cars_annos.mat`` (a MATLAB v5 file, read with
``scipy.io.loadmat``, which never unpickles) holds ``annotations``, a 1 x 16,185 struct array
with the fields ``relative_im_path`` (``car_ims/000001.jpg``, relative to the .mat file's
folder), ``bbox_x1``, ``bbox_y1``, ``bbox_x2``, ``bbox_y2``, ``class`` (1..196) and ``test``,
and ``class_names`` (1 x 196).

The split of the DML papers (Song et al., CVPR 2016; the Group Loss, ECCV 2020): classes 1-98
train (8,054 images), classes 99-196 test (8,131 images), evaluated leave-one-out with
Recall@1, 2, 4, 8. The ``test`` field (the classification split, which shares every class) is
ignored, as the field does, and so are the boxes (the whole images are used). Train labels:
classes 1..98 -> 0..97; test labels: the class numbers 99..196 as written. Every camid is 0.
"""

from __future__ import annotations

import os
from typing import Any

from .base import ReidDataset, relabel_train
from .lists import SplitLists, find_dataset_root

CARS196_ANNOTATIONS = "cars_annos.mat"
CARS196_IMAGES = "car_ims"
CARS196_SUBFOLDERS = ("cars196", "CARS196", "Cars196", "cars", "stanford_cars")
CARS196_NUM_CLASSES = 196
CARS196_TRAIN_CLASSES = range(1, 99)  # classes 1-98 train; 99-196 test
CARS196_RECALL_KS = (1, 2, 4, 8)
CARS196_HOW_TO_GET = (
    "Get Cars196 (car_ims.tgz and cars_annos.mat, from the Stanford Cars dataset page, "
    "https://ai.stanford.edu/~jkrause/cars/car_dataset.html) and put both in one folder"
)


def load_cars196(root: str | os.PathLike, *, skip_invalid: bool = False) -> ReidDataset:
    """Cars196 from ``root`` (the folder holding ``cars_annos.mat`` and ``car_ims/``, or its
    parent holding one of ``cars196/``, ``CARS196/``, ``Cars196/``, ``cars/``,
    ``stanford_cars/``): classes 1-98 train, 99-196 test, leave-one-out. Every listed image
    passes a cheap integrity check; ``skip_invalid`` leaves unreadable ones out (one warning)."""
    folder = find_dataset_root(
        root,
        name="cars196",
        required=(CARS196_ANNOTATIONS, f"{CARS196_IMAGES}/"),
        subfolders=CARS196_SUBFOLDERS,
        how_to_get=CARS196_HOW_TO_GET,
    )
    mat_path = folder / CARS196_ANNOTATIONS
    lists = SplitLists()
    for index, relative, label in read_cars_annotations(mat_path):
        split = "train" if label in CARS196_TRAIN_CLASSES else "test"
        lists.add(split, str(folder / relative), label, f"{mat_path}, annotation {index}")
    train, test = lists.finish(
        "cars196",
        {"train": f"images of classes 1-98 in {mat_path}", "test": f"images of classes 99-196 in {mat_path}"},
        skip_invalid=skip_invalid,
    )
    return ReidDataset(
        "cars196", str(folder), relabel_train(train), test, test, protocol="leave_one_out", recall_ks=CARS196_RECALL_KS
    )


def read_cars_annotations(mat_path: os.PathLike) -> list[tuple[int, str, int]]:
    """``(annotation number from 1, relative_im_path, class)`` of every record of the .mat file's
    ``annotations``; a ValueError naming the file (and the record) says what is wrong."""
    import numpy as np  # scipy / numpy load on first use: the dataset package needs only the standard library
    import scipy.io

    try:
        mat = scipy.io.loadmat(os.fspath(mat_path))
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{mat_path} cannot be read by scipy.io.loadmat ({error}); expected the MATLAB v5 file "
                         "cars_annos.mat of the Cars196 download") from None
    except Exception as error:  # scipy raises ValueError, TypeError, OSError... for files that are not .mat
        raise ValueError(f"{mat_path} is not a readable MATLAB .mat file ({type(error).__name__}: {error})") from None
    annotations = mat.get("annotations")
    fields = ("relative_im_path", "class")
    if not isinstance(annotations, np.ndarray) or annotations.dtype.names is None:
        raise ValueError(f"{mat_path}: expected a struct array 'annotations' (1 x 16,185 records), found "
                         + ("no such variable" if annotations is None else f"a {type(annotations).__name__}"))
    lacking = [name for name in fields if name not in annotations.dtype.names]
    if lacking:
        raise ValueError(f"{mat_path}: the 'annotations' records lack the field(s) {', '.join(lacking)} "
                         f"(they have {', '.join(annotations.dtype.names)})")
    records = annotations.ravel()
    if records.size == 0:
        raise ValueError(f"{mat_path}: 'annotations' holds no records")
    result = []
    for index, record in enumerate(records, start=1):
        where = f"{mat_path}, annotation {index}"
        path = _scalar(record["relative_im_path"])
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: relative_im_path should be a path like 'car_ims/000001.jpg', got {path!r}")
        label = _scalar(record["class"])
        if isinstance(label, (float, np.floating)) and float(label).is_integer():
            label = int(label)
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise ValueError(f"{where}: class should be an integer 1..{CARS196_NUM_CLASSES}, got {label!r}")
        label = int(label)
        if not 1 <= label <= CARS196_NUM_CLASSES:
            raise ValueError(f"{where}: class {label} is outside 1..{CARS196_NUM_CLASSES}")
        result.append((index, path, label))
    return result


def _scalar(value: Any) -> Any:
    """The one element of a loadmat field (``array(['car_ims/000001.jpg'])``, ``array([[1]])``) as
    a Python str / number, or None when the field does not hold exactly one."""
    import numpy as np

    array = np.asarray(value)
    if array.dtype == object:  # a cell or nested struct: unwrap one level
        flat = array.ravel()
        return _scalar(flat[0]) if flat.size == 1 else None
    flat = array.ravel()
    if flat.size != 1:
        return None
    item = flat[0]
    return str(item) if isinstance(item, np.str_) else item.item() if isinstance(item, np.generic) else item
