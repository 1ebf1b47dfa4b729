"""MSMT17, CUHK03-NP and Market-1501+500k read from tiny trees in their real layouts (built in tmp_path)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import build_dataset

MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((4, 2, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# MSMT17

# list file -> lines "PID/NAME.jpg LABEL"; the labels are already 0-based per split in the real
# lists; here train labels skip 1 (a subset) to show the relabelling, test labels start at 0.
MSMT17_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_15_0303noon_0100_1.jpg 0",
                       "0002/0002_000_07_0304afternoon_0200_0.jpg 2"],
    "list_val.txt": ["0005/0005_000_03_0303morning_0300_0.jpg 5", "0000/0000_002_02_0303morning_0016_0.jpg 0"],
    "list_query.txt": ["0000/0000_000_10_0113morning_0001_0.jpg 0", "0003/0003_000_12_0113noon_0002_0.jpg 3"],
    "list_gallery.txt": ["0000/0000_001_11_0113morning_0005_1.jpg 0", "0003/0003_001_12_0113noon_0009_0.jpg 3",
                         "0004/0004_000_05_0114morning_0010_0.jpg 4"],
}
TRAIN_LISTS = ("list_train.txt", "list_val.txt")


def write_msmt17(folder: Path, *, train: str = "train", test: str = "test", lists=MSMT17_LISTS) -> Path:
    for list_name, lines in lists.items():
        image_folder = folder / (train if list_name in TRAIN_LISTS else test)
        for line in lines:
            write_image(image_folder / line.split()[0])
        (folder / list_name).write_text("\n".join(lines) + "\n")
    return folder


def test_msmt17_v1_exact_items_train_is_train_plus_val(tmp_path: Path) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V1")
    ds = build_dataset("msmt17", tmp_path)  # the parent of MSMT17_V1/
    tr, te = folder / "train", folder / "test"
    assert ds.name == "msmt17" and ds.root == str(folder) and ds.protocol == "reid" and ds.distractor_pid is None
    # train + val, sorted by path; labels 0, 2, 5 -> 0, 1, 2; camera field 01..15 -> camid 0..14
    assert ds.train == [
        (str(tr / "0000/0000_000_01_0303morning_0015_0.jpg"), 0, 0),
        (str(tr / "0000/0000_001_15_0303noon_0100_1.jpg"), 0, 14),
        (str(tr / "0000/0000_002_02_0303morning_0016_0.jpg"), 0, 1),
        (str(tr / "0002/0002_000_07_0304afternoon_0200_0.jpg"), 1, 6),
        (str(tr / "0005/0005_000_03_0303morning_0300_0.jpg"), 2, 2),
    ]
    # test labels as listed: pid 0 is a real person here (no distractor pid in MSMT17)
    assert ds.query == [(str(te / "0000/0000_000_10_0113morning_0001_0.jpg"), 0, 9),
                        (str(te / "0003/0003_000_12_0113noon_0002_0.jpg"), 3, 11)]
    assert ds.gallery == [(str(te / "0000/0000_001_11_0113morning_0005_1.jpg"), 0, 10),
                          (str(te / "0003/0003_001_12_0113noon_0009_0.jpg"), 3, 11),
                          (str(te / "0004/0004_000_05_0114morning_0010_0.jpg"), 4, 4)]
    assert (ds.num_train_pids, len(ds.train), len(ds.query), len(ds.gallery)) == (3, 5, 2, 3)


def test_msmt17_v2_folders_and_the_version_folder_itself(tmp_path: Path) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V2", train="mask_train_v2", test="mask_test_v2")
    for root in (tmp_path, folder):
        ds = build_dataset("msmt17", root)
        assert ds.root == str(folder)
        assert [Path(p).parent.parent.name for p, _, _ in ds.train] == ["mask_train_v2"] * 5
        assert [Path(p).parent.parent.name for p, _, _ in ds.query + ds.gallery] == ["mask_test_v2"] * 5


def test_msmt17_missing_list_file_names_it_and_the_layout(tmp_path: Path) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V1")
    (folder / "list_val.txt").unlink()
    expected = (f"msmt17: dataset not found: expected train/ or mask_train_v2/, test/ or mask_test_v2/, list_train.txt, "
                f"list_val.txt, list_query.txt, list_gallery.txt in {tmp_path} or in one of its subfolders "
                f"MSMT17_V1/, MSMT17_V2/ ({folder} lacks list_val.txt). Get MSMT17")
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        build_dataset("msmt17", tmp_path)


def test_msmt17_line_naming_a_missing_image_names_the_list_line(tmp_path: Path) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V1")
    missing = folder / "test" / "0003/0003_001_12_0113noon_0009_0.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"msmt17: {folder / 'list_gallery.txt'}, line 2: image file {missing} does not exist")):
        build_dataset("msmt17", folder)


@pytest.mark.parametrize("line, reason", [
    ("0000/0000_000_01_0303morning_0015_0.jpg", "expected 'PID/NAME.jpg LABEL' (e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0'), "
                                                "got '0000/0000_000_01_0303morning_0015_0.jpg'"),
    ("0000/0000_000_01_0303morning_0015_0.jpg x", "label 'x' is not a non-negative integer"),
    ("0000/0000_000_16_0303morning_0015_0.jpg 0", "'0000_000_16_0303morning_0015_0.jpg' has no camera 01..15 as its third '_' field"),
    ("0000/0000.jpg 0", "'0000.jpg' has no camera 01..15"),
    ("../0000_000_01_0303morning_0015_0.jpg 0", "image path '../0000_000_01_0303morning_0015_0.jpg' must lie inside"),
    ("0000/0000_000_01_0303morning_0015_0.jpg 0\n0000/0000_000_01_0303morning_0015_0.jpg 0",
     "2: image 0000/0000_000_01_0303morning_0015_0.jpg is already listed at "),
])
def test_msmt17_bad_list_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V1")
    (folder / "list_train.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'list_train.txt'}, line ") + ".*" + re.escape(reason)):
        build_dataset("msmt17", folder)


def test_msmt17_mixed_or_doubled_version_folders_are_refused(tmp_path: Path) -> None:
    folder = write_msmt17(tmp_path / "MSMT17_V1", train="train", test="mask_test_v2")
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"msmt17: {folder} mixes the image folders of two versions (mask_test_v2/, train/); expected "
            "MSMT17_V1/ with train/ and test/ or MSMT17_V2/ with mask_train_v2/ and mask_test_v2/")):
        build_dataset("msmt17", folder)
    write_msmt17(folder, train="mask_train_v2", test="test")
    with pytest.raises(ValueError, match="holds the image folders of both versions"):
        build_dataset("msmt17", folder)


# ---------------------------------------------------------------------------------------------
# CUHK03-NP

CUHK03_NP_FILES = {
    "detected": {
        "bounding_box_train": ["0003_c1_1.png", "0001_c2_6.png", "0001_c1_1.png", "0003_c2_10.png"],
        "query": ["0002_c1_1.png", "0004_c2_6.png"],
        "bounding_box_test": ["0002_c2_7.png", "0004_c1_2.png", "0004_c1_3.png"],
    },
    "labeled": {
        "bounding_box_train": ["0001_c1_2.png", "0005_c2_7.png"],
        "query": ["0002_c2_6.png"],
        "bounding_box_test": ["0002_c1_1.png"],
    },
}


@pytest.fixture
def cuhk03_np_root(tmp_path: Path) -> Path:
    for kind, splits in CUHK03_NP_FILES.items():
        for split, names in splits.items():
            for name in names:
                write_image(tmp_path / "cuhk03-np" / kind / split / name)
    return tmp_path


def test_cuhk03_np_detected_and_labeled_exact_items(cuhk03_np_root: Path) -> None:
    detected = build_dataset("cuhk03_np", cuhk03_np_root)
    folder = cuhk03_np_root / "cuhk03-np" / "detected"
    assert detected.name == "cuhk03_np" and detected.root == str(folder) and detected.distractor_pid is None
    train = folder / "bounding_box_train"
    assert detected.train == [(str(train / "0001_c1_1.png"), 0, 0), (str(train / "0001_c2_6.png"), 0, 1),
                              (str(train / "0003_c1_1.png"), 1, 0), (str(train / "0003_c2_10.png"), 1, 1)]
    assert detected.query == [(str(folder / "query" / "0002_c1_1.png"), 2, 0),
                              (str(folder / "query" / "0004_c2_6.png"), 4, 1)]
    assert [(Path(p).name, pid, cam) for p, pid, cam in detected.gallery] == [
        ("0002_c2_7.png", 2, 1), ("0004_c1_2.png", 4, 0), ("0004_c1_3.png", 4, 0)]
    labeled = build_dataset("cuhk03_np", cuhk03_np_root / "cuhk03-np", cuhk03_labeled=True)
    assert labeled.root == str(cuhk03_np_root / "cuhk03-np" / "labeled")
    assert [(Path(p).name, pid, cam) for p, pid, cam in labeled.train] == [("0001_c1_2.png", 0, 0), ("0005_c2_7.png", 1, 1)]
    assert [(Path(p).name, pid) for p, pid, _ in labeled.query + labeled.gallery] == [("0002_c2_6.png", 2), ("0002_c1_1.png", 2)]


def test_cuhk03_np_the_other_release_folder_is_refused(cuhk03_np_root: Path) -> None:
    labeled = cuhk03_np_root / "cuhk03-np" / "labeled"
    assert build_dataset("cuhk03_np", labeled, cuhk03_labeled=True).root == str(labeled)
    with pytest.raises(ValueError, match=re.escape(
            f"cuhk03_np: data.root={labeled} is the labeled release but data.cuhk03_labeled=false asks for the "
            f"detected one: point data.root at {labeled.parent}")):
        build_dataset("cuhk03_np", labeled)


def test_cuhk03_np_bad_camera_and_missing_layout(cuhk03_np_root: Path, tmp_path: Path) -> None:
    bad = cuhk03_np_root / "cuhk03-np" / "detected" / "query" / "0002_c3_1.png"
    write_image(bad)
    with pytest.raises(ValueError, match=re.escape(f"invalid image file name {bad}: camera 3 is outside the dataset's "
                                                   "camera range 1..2")):
        build_dataset("cuhk03_np", cuhk03_np_root)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"dataset not found: expected the folders bounding_box_train/, query/, bounding_box_test/ in {empty} or in "
            f"{empty / 'cuhk03-np' / 'detected'}. Get CUHK03-NP")):
        build_dataset("cuhk03_np", empty)


# ---------------------------------------------------------------------------------------------
# Market-1501+500k

MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0007_c2s1_000100_01.jpg"],
    "query": ["0003_c1s1_000300_01.jpg"],
    "bounding_box_test": ["0003_c4s2_000301_01.jpg", "0000_c1s1_000010_01.jpg", "-1_c3s1_000011_01.jpg"],
    # the distractors: every one is pid 0 whatever its name says (0003 included: never a match)
    "images": ["0000_c6s1_000001_00.jpg", "0003_c2s1_000002_00.jpg", "-1_c1s1_000003_00.jpg"],
}


@pytest.fixture
def market_500k_root(tmp_path: Path) -> Path:
    folder = tmp_path / "Market-1501-v15.09.15"
    for split, names in MARKET_FILES.items():
        for name in names:
            write_image(folder / split / name)
    return tmp_path


def test_market_500k_adds_every_image_of_images_as_a_distractor(market_500k_root: Path) -> None:
    folder = market_500k_root / "Market-1501-v15.09.15"
    plain = build_dataset("market1501", market_500k_root)
    big = build_dataset("market1501", market_500k_root, market1501_500k=True)
    assert plain.distractor_pid == 0 and big.train == plain.train and big.query == plain.query
    extra = [(str(folder / "images" / name), 0, camid) for name, camid in
             (("-1_c1s1_000003_00.jpg", 0), ("0000_c6s1_000001_00.jpg", 5), ("0003_c2s1_000002_00.jpg", 1))]
    assert big.gallery == sorted(plain.gallery + extra)
    assert len(plain.gallery) == 2 and len(big.gallery) == 5


def test_market_500k_missing_folder_and_bad_name(market_500k_root: Path) -> None:
    folder = market_500k_root / "Market-1501-v15.09.15"
    bad = folder / "images" / "distractor_7.jpg"
    write_image(bad)
    with pytest.raises(ValueError, match=re.escape(f"invalid image file name {bad}: a distractor name must start PID_cC "
                                                   "with camera C in 1..6")):
        build_dataset("market1501", market_500k_root, market1501_500k=True)
    with pytest.warns(UserWarning, match="skipped 1 image file"):
        assert len(build_dataset("market1501", market_500k_root, market1501_500k=True, skip_invalid=True).gallery) == 5
    for path in (folder / "images").iterdir():
        path.unlink()
    (folder / "images").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"market1501: data.market1501_500k=true needs the Market-1501+500k distractor images in {folder / 'images'}/, "
            f"which does not exist: extract the 500k distractor set so that images/ lies beside bounding_box_train/, "
            f"query/, bounding_box_test/ in {folder}")):
        build_dataset("market1501", market_500k_root, market1501_500k=True)
