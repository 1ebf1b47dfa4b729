"""The retrieval datasets of the Group Loss papers read from tiny trees in their real formats.

CUB-200-2011 (images.txt + image_class_labels.txt), Cars196 (cars_annos.mat written by
scipy.io.savemat with the struct-array layout of the real file), Stanford Online Products
(Ebay_train.txt / Ebay_test.txt), In-Shop (Eval/list_eval_partition.txt) and Fashion-MNIST
(idx .gz files, materialised as PNGs into a cache folder).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import DATASETS, ReidDataset, build_dataset, read_image
from reid.data.datasets import PROTOCOLS
from reid.data.datasets import fashion_mnist as fm
from reid.data.transforms import ImageReadError


def write_jpeg(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rel(items: list[tuple[str, int, int]], base: Path) -> list[tuple[str, int, int]]:
    return [(Path(path).relative_to(base).as_posix(), label, camid) for path, label, camid in items]


def check_common(ds: ReidDataset) -> None:
    for items in (ds.train, ds.query, ds.gallery):
        assert items == sorted(items)
        assert all(Path(path).is_absolute() and camid == 0 for path, _, camid in items)
    train_labels = sorted({label for _, label, _ in ds.train})
    assert train_labels == list(range(len(train_labels)))


def test_registered_and_protocols() -> None:
    for name in ("cub200", "cars196", "sop", "inshop", "fashion_mnist"):
        assert name in DATASETS
    assert PROTOCOLS == ("reid", "leave_one_out", "query_gallery")


# ReidDataset: the new fields ------------------------------------------------------------------


def test_reid_dataset_defaults_positional_and_validation() -> None:
    item = ("a.jpg", 1, 0)
    ds = ReidDataset("tiny", "/r", [item], [item], [("b.jpg", 1, 1)])
    assert (ds.protocol, ds.recall_ks) == ("reid", (1, 5, 10))
    ds = ReidDataset("tiny", "/r", [item], [item], [item], "leave_one_out", [1, 2])
    assert ds.recall_ks == (1, 2)
    with pytest.raises(ValueError, match="unknown protocol 'market'; valid: reid, leave_one_out, query_gallery"):
        ReidDataset("tiny", "/r", [item], [item], [item], protocol="market")
    with pytest.raises(ValueError, match="recall_ks must be positive integers"):
        ReidDataset("tiny", "/r", [item], [item], [item], recall_ks=(0, 1))
    with pytest.raises(ValueError, match="leave_one_out protocol needs query and gallery to be the same list"):
        ReidDataset("tiny", "/r", [item], [item], [("b.jpg", 1, 0)], protocol="leave_one_out")


def test_summary_of_retrieval_protocols() -> None:
    a, b, c = ("a.jpg", 0, 0), ("b.jpg", 0, 0), ("c.jpg", 7, 0)
    loo = ReidDataset("cub200", "/data/CUB", [a, b], [a, c], [a, c], protocol="leave_one_out", recall_ks=(1, 2, 4, 8))
    assert loo.summary() == "\n".join(
        [
            "cub200 (/data/CUB)",
            "  split           | classes | images",
            "  ----------------+---------+-------",
            "  train           |       1 |      2",
            "  query = gallery |       2 |      2",
            "  protocol leave_one_out (leave-one-out: query = gallery, each query excludes only itself); "
            "Recall@K for K = 1, 2, 4, 8",
        ]
    )
    qg = ReidDataset("inshop", "/x", [a], [c], [b, c], protocol="query_gallery", recall_ks=(1, 10))
    lines = qg.summary().splitlines()
    assert lines[1:6] == [
        "  split   | classes | images",
        "  --------+---------+-------",
        "  train   |       1 |      1",
        "  query   |       1 |      1",
        "  gallery |       2 |      2",
    ]
    assert lines[6].startswith("  protocol query_gallery (") and lines[6].endswith("Recall@K for K = 1, 10")


# CUB-200-2011 -----------------------------------------------------------------------------------

CUB_IMAGES = [  # (ID, relative path under images/, class), not in path order
    (1, "002.Laysan_Albatross/Laysan_Albatross_0001_545.jpg", 2),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1),
    (3, "101.White_Pelican/White_Pelican_0025_97604.jpg", 101),
    (4, "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg", 1),
    (5, "200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg", 200),
    (6, "100.Brown_Pelican/Brown_Pelican_0001_100.jpg", 100),
    (7, "101.White_Pelican/White_Pelican_0001_97.jpg", 101),
]


def write_cub(folder: Path, images=CUB_IMAGES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _ in images))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c in images))
    # The classification split shares classes between train and test: a loader using it would be wrong.
    (folder / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i, _, _ in images))
    for _, path, _ in images:
        write_jpeg(folder / "images" / path)
    return folder


def test_cub200_split_labels_order_and_protocol(tmp_path: Path) -> None:
    folder = write_cub(tmp_path / "CUB_200_2011")
    ds = build_dataset("cub200", folder)
    base = folder.absolute() / "images"
    assert rel(ds.train, base) == [
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg", 0, 0),
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0, 0),
        ("002.Laysan_Albatross/Laysan_Albatross_0001_545.jpg", 1, 0),
        ("100.Brown_Pelican/Brown_Pelican_0001_100.jpg", 2, 0),
    ]
    assert rel(ds.query, base) == [
        ("101.White_Pelican/White_Pelican_0001_97.jpg", 101, 0),
        ("101.White_Pelican/White_Pelican_0025_97604.jpg", 101, 0),
        ("200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg", 200, 0),
    ]
    assert ds.gallery is ds.query
    assert (ds.name, ds.root) == ("cub200", str(folder.absolute()))
    assert (ds.protocol, ds.recall_ks) == ("leave_one_out", (1, 2, 4, 8))
    check_common(ds)
    assert "query = gallery" in ds.summary()


def test_cub200_parent_folder_and_missing_root(tmp_path: Path) -> None:
    write_cub(tmp_path / "CUB_200_2011")
    ds = build_dataset("cub200", tmp_path)
    assert ds.root == str((tmp_path / "CUB_200_2011").absolute())
    expected = (
        r"cub200: dataset not found: expected images\.txt, image_class_labels\.txt, images/ in .*nowhere "
        r"or in its subfolder CUB_200_2011/ \(.*nowhere does not exist\)\. Get CUB-200-2011 \(CUB_200_2011\.tgz"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("cub200", tmp_path / "nowhere")
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"CUB_200_2011 lacks image_class_labels\.txt"):
        build_dataset("cub200", tmp_path)


def test_cub200_missing_listed_image_names_list_and_line(tmp_path: Path) -> None:
    folder = write_cub(tmp_path / "CUB_200_2011")
    (folder / "images" / CUB_IMAGES[4][1]).unlink()  # ID 5, line 5
    (folder / "images" / CUB_IMAGES[6][1]).unlink()  # ID 7, line 7
    expected = re.escape(f"{folder.absolute() / 'images.txt'}, line 5: image file ") + r".*Common_Yellowthroat.*" \
        r"does not exist \(and 1 more listed image missing\)"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("cub200", folder, skip_invalid=True)  # a missing file is an error even then


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("images.txt", "1 a.jpg\n2 b.jpg extra\n", r"images\.txt, line 2: expected 'ID RELPATH'"),
        ("images.txt", "1 a.jpg\nx b.jpg\n", r"images\.txt, line 2: image ID 'x' is not a non-negative integer"),
        ("images.txt", "1 a.jpg\n1 b.jpg\n", r"images\.txt, line 2: image ID 1 already listed on line 1"),
        ("image_class_labels.txt", "1 1\n2 201\n", r"image_class_labels\.txt, line 2: class 201 is outside 1\.\.200"),
        ("image_class_labels.txt", "1 1\n\n9 2\n", r"image_class_labels\.txt, line 3: image ID 9 is not listed"),
        ("image_class_labels.txt", "1 1\n", r"images\.txt, line 2: image ID 2 has no class"),
    ],
)
def test_cub200_malformed_lines(tmp_path: Path, file: str, content: str, message: str) -> None:
    folder = write_cub(tmp_path, [(1, "001.A/a.jpg", 1), (2, "101.B/b.jpg", 101)])
    (folder / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        build_dataset("cub200", folder)


def test_cub200_empty_split(tmp_path: Path) -> None:
    folder = write_cub(tmp_path, [(1, "001.A/a.jpg", 1), (2, "002.B/b.jpg", 2)])
    with pytest.raises(ValueError, match=r"cub200: the test split is empty: there are no images of classes 101-200"):
        build_dataset("cub200", folder)


def test_cub200_truncated_image_and_skip_invalid(tmp_path: Path) -> None:
    folder = write_cub(tmp_path / "CUB_200_2011")
    bad = folder / "images" / CUB_IMAGES[2][1]
    truncate(bad)
    with pytest.raises(ImageReadError, match=re.escape(str(bad.absolute())) + r" is truncated.*skip_invalid"):
        build_dataset("cub200", folder)
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("cub200", folder, skip_invalid=True)
    assert len(record) == 1 and "cub200: skipped 1 image file(s)" in str(record[0].message)
    assert str(bad.absolute()) not in {path for path, _, _ in ds.query}
    assert (len(ds.train), len(ds.query)) == (4, 2)


# Cars196 --------------------------------------------------------------------------------------

CARS = [(1, 1), (2, 99), (3, 2), (4, 196), (5, 1), (6, 98), (7, 150)]  # (image number, class)


def write_cars(folder: Path, cars=CARS, *, drop: int | None = None) -> Path:
    """cars_annos.mat as the real file: 'annotations' a 1 x N struct array whose fields each hold
    a MATLAB array (a char row for relative_im_path, 1 x 1 numbers), 'class_names' a 1 x 196 cell."""
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(cars)), dtype=[(name, object) for name in fields])
    for i, (number, label) in enumerate(cars):
        name = f"car_ims/{number:06d}.jpg"
        annotations[0, i] = (
            np.array([name]),
            np.array([[10]], np.uint16), np.array([[5]], np.uint16), np.array([[90]], np.uint16),
            np.array([[70]], np.uint16), np.array([[label]], np.uint8), np.array([[i % 2]], np.uint8),
        )
        if number != drop:
            write_jpeg(folder / name)
    class_names = np.empty((1, 196), dtype=object)
    for k in range(196):
        class_names[0, k] = np.array([f"Make Model {k + 1}"])
    folder.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return folder


def test_cars196_mat_has_the_real_structure(tmp_path: Path) -> None:
    import scipy.io

    mat = scipy.io.loadmat(write_cars(tmp_path) / "cars_annos.mat")
    annotations = mat["annotations"]
    assert annotations.shape == (1, len(CARS))
    assert annotations[0][1]["relative_im_path"][0] == "car_ims/000002.jpg"
    assert annotations[0][1]["class"][0][0] == 99
    assert annotations[0][1]["test"][0][0] == 1
    assert mat["class_names"].shape == (1, 196) and mat["class_names"][0][3][0] == "Make Model 4"


def test_cars196_split_labels_and_protocol(tmp_path: Path) -> None:
    folder = write_cars(tmp_path / "cars196")
    ds = build_dataset("cars196", tmp_path)  # the parent folder
    assert ds.root == str(folder.absolute())
    base = folder.absolute()
    # classes 1, 2, 98 -> 0, 1, 2 whatever the 'test' field says
    assert rel(ds.train, base) == [
        ("car_ims/000001.jpg", 0, 0),
        ("car_ims/000003.jpg", 1, 0),
        ("car_ims/000005.jpg", 0, 0),
        ("car_ims/000006.jpg", 2, 0),
    ]
    assert rel(ds.query, base) == [
        ("car_ims/000002.jpg", 99, 0), ("car_ims/000004.jpg", 196, 0), ("car_ims/000007.jpg", 150, 0)
    ]
    assert ds.gallery is ds.query
    assert (ds.protocol, ds.recall_ks) == ("leave_one_out", (1, 2, 4, 8))
    check_common(ds)


def test_cars196_errors(tmp_path: Path) -> None:
    expected = r"cars_annos\.mat, car_ims/ in .* or in one of its subfolders cars196/, CARS196/.*car_dataset"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("cars196", tmp_path)
    folder = write_cars(tmp_path / "a", drop=4)
    mat = (folder / "cars_annos.mat").absolute()
    expected = re.escape(f"{mat}, annotation 4: image file ") + r".*000004\.jpg does not exist"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("cars196", folder)
    folder = write_cars(tmp_path / "b", [(1, 1), (2, 197)])
    with pytest.raises(ValueError, match=r"cars_annos\.mat, annotation 2: class 197 is outside 1\.\.196"):
        build_dataset("cars196", folder)
    folder = write_cars(tmp_path / "c", [(1, 1), (2, 2)])
    with pytest.raises(ValueError, match=r"cars196: the test split is empty: there are no images of classes 99-196"):
        build_dataset("cars196", folder)
    (folder / "cars_annos.mat").write_bytes(b"not a mat file at all, just text" * 10)
    with pytest.raises(ValueError, match=r"cars_annos\.mat is not a readable MATLAB \.mat file"):
        build_dataset("cars196", folder)


def test_cars196_skip_invalid(tmp_path: Path) -> None:
    folder = write_cars(tmp_path)
    truncate(folder / "car_ims" / "000003.jpg")
    with pytest.raises(ImageReadError, match=r"000003\.jpg is truncated"):
        build_dataset("cars196", folder)
    with pytest.warns(UserWarning, match=r"cars196: skipped 1 image file"):
        ds = build_dataset("cars196", folder, skip_invalid=True)
    assert [label for _, label, _ in ds.train] == [0, 0, 1]  # classes 1, 1, 98: relabelled after the skip


# Stanford Online Products ---------------------------------------------------------------------

SOP_HEADER = "image_id class_id super_class_id path\n"
SOP_TRAIN = [(1, 1, 1, "bicycle_final/111085122871_0.JPG"), (2, 1, 1, "bicycle_final/111085122871_1.JPG"),
             (3, 5, 2, "chair_final/111088888_0.JPG"), (4, 3, 1, "bicycle_final/111099_0.JPG")]
SOP_TEST = [(5, 11319, 1, "bicycle_final/222_0.JPG"), (6, 11320, 2, "chair_final/333_0.JPG"),
            (7, 11319, 1, "bicycle_final/222_1.JPG")]


def write_sop(folder: Path) -> Path:
    for name, rows in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        for row in rows:
            write_jpeg(folder / row[3])
        (folder / name).write_text(SOP_HEADER + "".join(" ".join(map(str, row)) + "\n" for row in rows))
    (folder / "Ebay_info.txt").write_text("image_id class_id super_class_id path\n")
    return folder


def test_sop_split_labels_and_protocol(tmp_path: Path) -> None:
    folder = write_sop(tmp_path / "Stanford_Online_Products")
    ds = build_dataset("sop", tmp_path)
    base = folder.absolute()
    assert ds.root == str(base)
    assert rel(ds.train, base) == [
        ("bicycle_final/111085122871_0.JPG", 0, 0), ("bicycle_final/111085122871_1.JPG", 0, 0),
        ("bicycle_final/111099_0.JPG", 1, 0), ("chair_final/111088888_0.JPG", 2, 0),
    ]
    assert rel(ds.query, base) == [
        ("bicycle_final/222_0.JPG", 11319, 0),
        ("bicycle_final/222_1.JPG", 11319, 0),
        ("chair_final/333_0.JPG", 11320, 0),
    ]
    assert ds.gallery is ds.query
    assert (ds.protocol, ds.recall_ks) == ("leave_one_out", (1, 10, 100, 1000))
    check_common(ds)


def test_sop_errors(tmp_path: Path) -> None:
    expected = r"Ebay_train\.txt, Ebay_test\.txt in .* or in its subfolder Stanford_Online_Products/\. .*lifted_struct"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("sop", tmp_path)
    folder = write_sop(tmp_path / "sop")
    test_list = folder / "Ebay_test.txt"
    (folder / SOP_TEST[2][3]).unlink()
    expected = re.escape(f"{test_list.absolute()}, line 4: image file ") + r".*222_1\.JPG"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("sop", folder)
    test_list.write_text(SOP_HEADER + "5 11319 1 bicycle_final/222_0.JPG\n6 x 2 chair_final/333_0.JPG\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt, line 3: class_id 'x' is not a non-negative integer"):
        build_dataset("sop", folder)
    test_list.write_text(SOP_HEADER + "5 11319 bicycle_final/222_0.JPG\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt, line 2: expected 'image_id class_id super_class_id path'"):
        build_dataset("sop", folder)
    test_list.write_text("5 11319 1 bicycle_final/222_0.JPG\n")
    with pytest.raises(ValueError, match=r"Ebay_test\.txt, line 1: expected the header 'image_id class_id"):
        build_dataset("sop", folder)
    test_list.write_text(SOP_HEADER)
    with pytest.raises(ValueError, match=r"sop: the test split is empty: there are no images listed in .*Ebay_test"):
        build_dataset("sop", folder)


# In-Shop ----------------------------------------------------------------------------------------

INSHOP_HEADER = "image_name item_id evaluation_status\n"
INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/WOMEN/Tees/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/WOMEN/Tees/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
    ("img/MEN/Shirts/id_00000011/03_1_front.jpg", "id_00000011", "query"),
    ("img/MEN/Shirts/id_00000011/03_4_full.jpg", "id_00000011", "gallery"),
    ("img/MEN/Shirts/id_00000011/03_2_side.jpg", "id_00000011", "gallery"),
]


def write_inshop(folder: Path, rows=INSHOP_ROWS, *, image_base: str = "") -> Path:
    for path, _, _ in rows:
        write_jpeg(folder / image_base / path)
    (folder / "Eval").mkdir(parents=True, exist_ok=True)
    lines = [f"{len(rows)}\n", INSHOP_HEADER]
    lines += [f"{path:<60} {item:<15} {status}\n" for path, item, status in rows]  # the real file pads with spaces
    (folder / "Eval" / "list_eval_partition.txt").write_text("".join(lines))
    return folder


def test_inshop_split_labels_and_protocol(tmp_path: Path) -> None:
    folder = write_inshop(tmp_path / "In-shop Clothes Retrieval Benchmark")
    ds = build_dataset("inshop", tmp_path)
    base = folder.absolute()
    assert ds.root == str(base)
    assert rel(ds.train, base) == [
        ("img/MEN/Denim/id_00000080/01_1_front.jpg", 1, 0),
        ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", 0, 0),
        ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", 0, 0),
    ]
    assert rel(ds.query, base) == [
        ("img/MEN/Shirts/id_00000011/03_1_front.jpg", 11, 0), ("img/WOMEN/Tees/id_00000007/01_1_front.jpg", 7, 0)
    ]
    assert rel(ds.gallery, base) == [
        ("img/MEN/Shirts/id_00000011/03_2_side.jpg", 11, 0),
        ("img/MEN/Shirts/id_00000011/03_4_full.jpg", 11, 0),
        ("img/WOMEN/Tees/id_00000007/01_2_side.jpg", 7, 0),
    ]
    assert (ds.protocol, ds.recall_ks) == ("query_gallery", (1, 10, 20, 30, 40, 50))
    check_common(ds)


def test_inshop_images_under_img_folder_of_the_download(tmp_path: Path) -> None:
    folder = write_inshop(tmp_path / "InShop", image_base="Img")
    ds = build_dataset("inshop", folder)
    assert all(Path(path).is_relative_to(folder.absolute() / "Img" / "img") for path, _, _ in ds.train + ds.gallery)
    assert len(ds.gallery) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"8\n{INSHOP_HEADER}img/a.jpg id_00000002 training\n",
         r"line 3: evaluation_status 'training' should be one of train, query, gallery"),
        (f"1\n{INSHOP_HEADER}img/a.jpg 00000002 train\n", r"line 3: item_id '00000002' should look like"),
        (f"1\n{INSHOP_HEADER}img/a.jpg id_00000002\n", r"line 3: expected 'image_name item_id evaluation_status'"),
        ("1\nimage_name item_id\n", r"line 2: expected the header 'image_name item_id evaluation_status'"),
        ("many\n", r"line 1: the image count 'many' is not a non-negative integer"),
        (f"9\n{INSHOP_HEADER}img/a.jpg id_00000002 train\n", r"line 1 says 9 images but 1 are listed"),
    ],
)
def test_inshop_malformed_list(tmp_path: Path, content: str, message: str) -> None:
    folder = write_inshop(tmp_path)
    (folder / "Eval" / "list_eval_partition.txt").write_text(content)
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt.*" + message):
        build_dataset("inshop", folder)


def test_inshop_missing_root_image_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Eval/list_eval_partition\.txt or list_eval_partition\.txt, img/ or "
                       r"Img/img/ in .* subfolders In-shop Clothes Retrieval Benchmark/, InShop/.*InShopRetrieval"):
        build_dataset("inshop", tmp_path)
    folder = write_inshop(tmp_path / "a")
    (folder / INSHOP_ROWS[6][0]).unlink()
    expected = r"list_eval_partition\.txt, line 9: image file .*03_4_full\.jpg does not exist"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("inshop", folder)
    folder = write_inshop(tmp_path / "b", [row for row in INSHOP_ROWS if row[2] != "query"])
    expected = r"inshop: the query split is empty: there are no images with evaluation_status query"
    with pytest.raises(ValueError, match=expected):
        build_dataset("inshop", folder)


def test_inshop_skip_invalid(tmp_path: Path) -> None:
    folder = write_inshop(tmp_path)
    truncate(folder / INSHOP_ROWS[4][0])
    with pytest.warns(UserWarning, match=r"inshop: skipped 1 image file.*01_2_side\.jpg"):
        ds = build_dataset("inshop", folder, skip_invalid=True)
    assert len(ds.gallery) == 2


# Fashion-MNIST ----------------------------------------------------------------------------------


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def fm_pixels(index: int, offset: int) -> bytes:
    return bytes((offset + index * 7 + k) % 256 for k in range(28 * 28))


def write_fashion_mnist(folder: Path, train_labels=None, test_labels=None) -> Path:
    """20 images per file, labels i % 10 (train) and (i + 3) % 10 (t10k) unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = [i % 10 for i in range(20)] if train_labels is None else train_labels
    test_labels = [(i + 3) % 10 for i in range(20)] if test_labels is None else test_labels
    for prefix, labels, offset in (("train", train_labels, 0), ("t10k", test_labels, 100)):
        images = b"".join(fm_pixels(i, offset) for i in range(len(labels)))
        images_idx = idx_bytes(2051, (len(labels), 28, 28), images)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images_idx))
        labels_idx = idx_bytes(2049, (len(labels),), bytes(labels))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels_idx))
    return folder


def png_files(cache: Path) -> list[Path]:
    return sorted((cache / "fashion_mnist").rglob("*.png"))


def test_fashion_mnist_split_labels_pixels_and_protocol(tmp_path: Path) -> None:
    source = write_fashion_mnist(tmp_path / "fashion-mnist")
    cache = tmp_path / "cache"
    ds = build_dataset("fashion_mnist", tmp_path, cache_dir=cache)  # the parent folder
    assert ds.root == str(source.absolute())
    base = cache.absolute() / "fashion_mnist"
    # train file: i % 10 in 0..4 -> i in {0..4, 10..14}; t10k: (i + 3) % 10 in 5..9 -> i in {2..6, 12..16}
    assert rel(ds.train, base) == sorted(
        (f"train/{i % 10}/{i:05d}.png", i % 10, 0) for i in [*range(5), *range(10, 15)]
    )
    assert rel(ds.query, base) == sorted(
        (f"test/{(i + 3) % 10}/{i:05d}.png", (i + 3) % 10, 0) for i in [*range(2, 7), *range(12, 17)]
    )
    assert ds.gallery is ds.query
    assert (ds.protocol, ds.recall_ks) == ("leave_one_out", (1, 2, 4, 8))
    check_common(ds)
    path, label, _ = ds.query[3]
    index = int(Path(path).stem)
    image = read_image(path)  # a single-channel PNG, read as RGB
    assert image.shape == (28, 28, 3)
    expected = np.frombuffer(fm_pixels(index, 100), np.uint8).reshape(28, 28)
    assert all((image[..., c] == expected).all() for c in range(3))
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).ndim == 2
    assert len(png_files(cache)) == 20
    manifest = json.loads((base / "manifest.json").read_text())
    assert manifest["images"] == {"train": {str(c): 2 for c in range(5)}, "test": {str(c): 2 for c in range(5, 10)}}
    assert set(manifest["sources"]) == set(fm.FASHION_MNIST_FILES.values())


def test_fashion_mnist_cache_reused_and_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_fashion_mnist(tmp_path / "src")
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "env_cache"))  # cache_dir defaults to $REID_CACHE
    first = build_dataset("fashion_mnist", source)
    cache = tmp_path / "env_cache"
    assert len(png_files(cache)) == 20

    def no_build(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(fm, "_build", no_build)
        again = build_dataset("fashion_mnist", source)
    assert (again.train, again.query) == (first.train, first.query)

    # sources changed (other labels): rebuilt, the outdated PNGs gone
    write_fashion_mnist(source, train_labels=[0] * 20)
    changed = build_dataset("fashion_mnist", source)
    assert len(changed.train) == 20 and {label for _, label, _ in changed.train} == {0}
    assert len(png_files(cache)) == 30
    assert not (cache / "fashion_mnist" / "train" / "1").exists()

    # a PNG deleted from the cache: rebuilt
    os.remove(changed.train[5][0])
    build_dataset("fashion_mnist", source)
    assert Path(changed.train[5][0]).is_file()
    assert not list(cache.glob(".fashion_mnist.*-*"))  # no temporary folders left


def test_fashion_mnist_cache_follows_the_one_reid_cache_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PNGs go where converted pretrained weights go: $REID_CACHE, else $XDG_CACHE_HOME/reid,
    else ~/.cache/reid (reid.io.cache_dir); an explicit cache_dir beats all three."""
    from reid.io import cache_dir
    from reid.models.pretrained import default_cache_dir as weights_cache

    source = write_fashion_mnist(tmp_path / "src")
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "rc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    build_dataset("fashion_mnist", source)
    assert len(png_files(tmp_path / "rc")) == 20 and not (tmp_path / "xdg").exists()
    assert weights_cache().parent == cache_dir() == tmp_path / "rc"
    monkeypatch.setenv("REID_CACHE", "")  # empty counts as unset
    build_dataset("fashion_mnist", source)
    assert len(png_files(tmp_path / "xdg" / "reid")) == 20
    assert weights_cache().parent == cache_dir() == tmp_path / "xdg" / "reid"
    monkeypatch.delenv("XDG_CACHE_HOME")
    build_dataset("fashion_mnist", source)
    assert len(png_files(tmp_path / "home" / ".cache" / "reid")) == 20
    assert weights_cache().parent == cache_dir() == tmp_path / "home" / ".cache" / "reid"
    build_dataset("fashion_mnist", source, cache_dir=tmp_path / "explicit")
    assert len(png_files(tmp_path / "explicit")) == 20
    # the manifest's digests are the files' SHA-256
    manifest = json.loads((tmp_path / "explicit" / "fashion_mnist" / "manifest.json").read_text())
    for name, entry in manifest["sources"].items():
        data = (source / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_fashion_mnist_interrupted_build_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_fashion_mnist(tmp_path / "src")
    cache = tmp_path / "cache"
    calls = []
    real_png = fm.png_gray

    def failing_png(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the build
        return real_png(*args)

    with monkeypatch.context() as patch:
        patch.setattr(fm, "png_gray", failing_png)
        with pytest.raises(KeyboardInterrupt):
            build_dataset("fashion_mnist", source, cache_dir=cache)
    assert not (cache / "fashion_mnist").exists()
    assert not list(cache.glob(".fashion_mnist.tmp-*"))
    # a build killed outright leaves its temporary folder: never taken as the cache, removed by the next build
    stale = cache / ".fashion_mnist.tmp-killed"
    (stale / "train" / "0").mkdir(parents=True)
    ds = build_dataset("fashion_mnist", source, cache_dir=cache)
    assert len(ds.train) == 10 and not stale.exists()
    assert all(Path(path).is_file() for path, _, _ in ds.train + ds.query)


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (TRAIN_IMAGES, idx_bytes(2049, (20, 28, 28), b""), r"magic number 2049, expected 2051 .*swapped"),
        (TEST_LABELS, idx_bytes(2051, (20,), bytes(20)), r"magic number 2051, expected 2049"),
        (TRAIN_LABELS, idx_bytes(1234, (20,), bytes(20)), r"magic number 1234, expected 2049 \(idx labels"),
        (TRAIN_LABELS, idx_bytes(2049, (21,), bytes(20)), r"header says 21 labels but 20 bytes follow"),
        (TRAIN_LABELS, idx_bytes(2049, (20,), bytes([10] * 20)), r"label 10 of item 0 is outside 0\.\.9"),
        (TEST_IMAGES, idx_bytes(2051, (20, 32, 32), bytes(20 * 1024)), r"32 x 32 pixels, expected 28 x 28"),
        (TEST_IMAGES, idx_bytes(2051, (19, 28, 28), bytes(19 * 784)), r"holds 19 images but .*t10k-labels"),
        (TEST_IMAGES, idx_bytes(2051, (20, 28, 28), bytes(784)), r"\(15680 bytes\) but 784 bytes follow"),
        (TEST_LABELS, b"\x00\x00", r"too short for the 8-byte header"),
    ],
)
def test_fashion_mnist_bad_idx_files(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    source = write_fashion_mnist(tmp_path / "src")
    (source / name).write_bytes(gzip.compress(data))
    with pytest.raises(ValueError, match=re.escape(name) + ".*" + message):
        build_dataset("fashion_mnist", source, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "fashion_mnist").exists()


def test_fashion_mnist_missing_root_not_gzip_and_empty_split(tmp_path: Path) -> None:
    expected = r"train-images-idx3-ubyte\.gz, .* in .*subfolders fashion-mnist/, fashion_mnist/, FashionMNIST/raw/.*"
    with pytest.raises(FileNotFoundError, match=expected + r"apt-get install dataset-fashion-mnist"):
        build_dataset("fashion_mnist", tmp_path)
    source = write_fashion_mnist(tmp_path / "src")
    (source / "train-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz is not a readable gzip file"):
        build_dataset("fashion_mnist", source, cache_dir=tmp_path / "cache")
    write_fashion_mnist(source, test_labels=[0, 1, 2] * 6)
    with pytest.raises(ValueError, match=r"the test split is empty: .*t10k-labels-idx1-ubyte\.gz has no label 5\.\.9"):
        build_dataset("fashion_mnist", source, cache_dir=tmp_path / "cache")


def test_fashion_mnist_png_writer_matches_opencv() -> None:
    pixels = bytes(range(256)) * 3 + bytes(16)
    data = fm.png_gray(pixels, 28, 28)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (28, 28) and (decoded == np.frombuffer(pixels, np.uint8).reshape(28, 28)).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not all((Path(fm.FASHION_MNIST_DEBIAN_ROOT) / name).is_file() for name in fm.FASHION_MNIST_FILES.values()),
    reason=f"no Fashion-MNIST files in {fm.FASHION_MNIST_DEBIAN_ROOT} (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_real_debian_files(tmp_path: Path) -> None:
    try:
        start = time.perf_counter()
        ds = build_dataset("fashion_mnist", fm.FASHION_MNIST_DEBIAN_ROOT, cache_dir=tmp_path)
        first = time.perf_counter() - start
        assert (len(ds.train), len(ds.query)) == (30_000, 5_000)
        assert sorted({label for _, label, _ in ds.train}) == [0, 1, 2, 3, 4]
        assert sorted({label for _, label, _ in ds.query}) == [5, 6, 7, 8, 9]
        assert len(png_files(tmp_path)) == 35_000
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            start = time.perf_counter()
            again = build_dataset("fashion_mnist", fm.FASHION_MNIST_DEBIAN_ROOT, cache_dir=tmp_path)
        assert again.train == ds.train and time.perf_counter() - start < first
        assert read_image(ds.query[0][0]).shape == (28, 28, 3)
    finally:  # pytest keeps the last runs' temporary folders: do not leave 35,000 files there
        shutil.rmtree(tmp_path / "fashion_mnist", ignore_errors=True)
