"""Market-1501, DukeMTMC-reID and custom datasets read from tiny trees built in tmp_path."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import DATASETS, ReidDataset, build_dataset, register_dataset

MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((4, 2, 3), np.uint8))


def write_tree(root: Path, files: dict[str, list[str]]) -> Path:
    """Each split folder with the given names: images for image extensions, text otherwise."""
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                write_image(root / folder / name)
            else:
                (root / folder / name).write_text("not an image")
    return root


MARKET_FILES = {
    "bounding_box_train": [
        "0007_c2s1_000100_01.jpg",
        "0002_c1s1_000451_03.jpg",
        "0002_c3s1_000551_01.jpg",
        "0010_c6s2_001200_02.jpg",
        "0007_c1s1_000101_01.JPG",  # upper-case extension is still an image
        "Thumbs.db",
        "readme.txt",
    ],
    "query": ["0005_c2s1_000200_01.jpg", "0003_c1s1_000300_01.jpg"],
    "bounding_box_test": [
        "0003_c4s2_000301_01.jpg",
        "0005_c5s3_000201_02.jpg",
        "0000_c1s1_000010_01.jpg",  # distractor: kept
        "-1_c3s1_000011_01.jpg",  # junk: dropped
        "-1_c2s1_000012_02.jpg",
        "0003_c1s1_000302_01.png",
        "notes.txt",
    ],
}


@pytest.fixture
def market_root(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "market", MARKET_FILES)


def names(items: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [(Path(path).name, pid, camid) for path, pid, camid in items]


def test_market_exact_items(market_root: Path) -> None:
    ds = build_dataset("market1501", market_root)
    # train: sorted by path, pids 2, 7, 10 relabelled 0, 1, 2, cameras c1..c6 -> 0..5
    assert names(ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c3s1_000551_01.jpg", 0, 2),
        ("0007_c1s1_000101_01.JPG", 1, 0),
        ("0007_c2s1_000100_01.jpg", 1, 1),
        ("0010_c6s2_001200_02.jpg", 2, 5),
    ]
    assert names(ds.query) == [("0003_c1s1_000300_01.jpg", 3, 0), ("0005_c2s1_000200_01.jpg", 5, 1)]
    assert names(ds.gallery) == [
        ("0000_c1s1_000010_01.jpg", 0, 0),
        ("0003_c1s1_000302_01.png", 3, 0),
        ("0003_c4s2_000301_01.jpg", 3, 3),
        ("0005_c5s3_000201_02.jpg", 5, 4),
    ]
    assert ds.num_train_pids == 3
    assert ds.num_train_cams == 4
    assert ds.root == str(market_root.absolute())
    assert all(Path(path).parent == market_root / "bounding_box_train" for path, _, _ in ds.train)
    assert all(Path(path).is_absolute() for path, _, _ in ds.train + ds.query + ds.gallery)


def test_market_parent_folder_is_accepted(tmp_path: Path) -> None:
    write_tree(tmp_path / "Market-1501-v15.09.15", MARKET_FILES)
    ds = build_dataset("market1501", tmp_path)
    assert ds.root == str((tmp_path / "Market-1501-v15.09.15").absolute())
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 2, 4)


def test_summary_table(market_root: Path) -> None:
    ds = build_dataset("market1501", market_root)
    expected = "\n".join(
        [
            f"market1501 ({market_root.absolute()})",
            "  split   | identities | images | cameras",
            "  --------+------------+--------+--------",
            "  train   |          3 |      5 |       4",
            "  query   |          2 |      2 |       2",
            "  gallery |          3 |      4 |       3",
        ]
    )
    assert ds.summary() == expected


def test_missing_root_names_path_and_how_to_get_data(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*Market-1501-v15\.09\.15.*reid make-synthetic"):
        build_dataset("market1501", missing)


def test_missing_split_folder_names_it(market_root: Path) -> None:
    for name in MARKET_FILES["query"]:
        (market_root / "query" / name).unlink()
    (market_root / "query").rmdir()
    expected = re.escape(str(market_root / "query")) + " does not exist.*reid make-synthetic"
    with pytest.raises(FileNotFoundError, match=expected):
        build_dataset("market1501", market_root)


def test_empty_split_is_an_error(market_root: Path) -> None:
    for name in MARKET_FILES["query"]:
        (market_root / "query" / name).unlink()
    (market_root / "query" / "Thumbs.db").write_text("")
    with pytest.raises(ValueError, match=re.escape(str(market_root / "query")) + " is empty"):
        build_dataset("market1501", market_root)


def test_split_of_only_junk_is_an_error(market_root: Path) -> None:
    for name in MARKET_FILES["query"]:
        (market_root / "query" / name).unlink()
    write_image(market_root / "query" / "-1_c1s1_000001_01.jpg")
    with pytest.raises(ValueError, match=re.escape(str(market_root / "query")) + " holds no usable images"):
        build_dataset("market1501", market_root)


@pytest.mark.parametrize(
    ("folder", "bad_name", "reason"),
    [
        ("bounding_box_train", "0002_c1_000451_03.jpg", "does not match"),  # Duke-like name in Market
        ("bounding_box_train", "person.jpg", "does not match"),
        ("bounding_box_test", "0003_c7s1_000301_01.jpg", "camera 7 is outside .* 1..6"),
        ("bounding_box_train", "0000_c1s1_000301_01.jpg", "distractor"),  # distractors are gallery-only
        ("query", "0000_c1s1_000301_01.jpg", "distractor"),
        ("bounding_box_test", "0003_c0s1_000301_01.jpg", "camera 0 is outside"),
    ],
)
def test_invalid_name_error_names_the_file(market_root: Path, folder: str, bad_name: str, reason: str) -> None:
    write_image(market_root / folder / bad_name)
    with pytest.raises(ValueError, match=rf"{re.escape(bad_name)}: .*{reason}.*skip_invalid=True"):
        build_dataset("market1501", market_root)


def test_skip_invalid_warns_once_with_count(market_root: Path) -> None:
    for bad in ("person.jpg", "0003_c7s1_000301_01.jpg"):
        write_image(market_root / "bounding_box_test" / bad)
    write_image(market_root / "bounding_box_train" / "0000_c1s1_000301_01.jpg")
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("market1501", market_root, skip_invalid=True)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert "skipped 3 image file(s)" in messages[0]
    assert "person.jpg" in messages[0] and "0003_c7s1_000301_01.jpg" in messages[0]
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 2, 4)


def test_no_warning_without_invalid_files(market_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dataset("market1501", market_root, skip_invalid=True)


DUKE_FILES = {
    "bounding_box_train": ["0005_c2_f0046182.jpg", "0001_c8_f0000001.jpg", "0001_c1_f0000002.jpg", "desktop.ini"],
    "query": ["0011_c3_f0100000.jpg"],
    "bounding_box_test": ["0011_c4_f0100001.jpg", "0011_c3_f0100002.jpg", "0042_c7_f0000003.jpg"],
}


def test_duke_exact_items_from_parent_folder(tmp_path: Path) -> None:
    write_tree(tmp_path / "DukeMTMC-reID", DUKE_FILES)
    ds = build_dataset("dukemtmcreid", tmp_path)
    assert names(ds.train) == [
        ("0001_c1_f0000002.jpg", 0, 0),
        ("0001_c8_f0000001.jpg", 0, 7),
        ("0005_c2_f0046182.jpg", 1, 1),
    ]
    assert names(ds.query) == [("0011_c3_f0100000.jpg", 11, 2)]
    assert names(ds.gallery) == [
        ("0011_c3_f0100002.jpg", 11, 2),
        ("0011_c4_f0100001.jpg", 11, 3),
        ("0042_c7_f0000003.jpg", 42, 6),
    ]
    assert (ds.num_train_pids, ds.num_train_cams) == (2, 3)


@pytest.mark.parametrize("bad_name", ["0001_c9_f0000001.jpg", "0002_c1s1_000451_03.jpg"])
def test_duke_rejects_bad_camera_and_market_names(tmp_path: Path, bad_name: str) -> None:
    root = write_tree(tmp_path / "duke", DUKE_FILES)
    write_image(root / "bounding_box_train" / bad_name)
    with pytest.raises(ValueError, match=re.escape(bad_name)):
        build_dataset("dukemtmcreid", root)


def test_duke_missing_root_mentions_its_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID"):
        build_dataset("dukemtmcreid", tmp_path)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'market'; valid names: cars196, cub200, cuhk03_np, custom, dukemtmcreid, fashion_mnist, inshop, market1501, msmt17, sop"):
        build_dataset("market", tmp_path)


def test_register_dataset(tmp_path: Path) -> None:
    def tiny(root: str, *, size: int) -> ReidDataset:
        item = (str(root), 0, 0)
        return ReidDataset("tiny", str(root), [item] * size, [item], [item])

    register_dataset("tiny_for_test", tiny)
    try:
        assert len(build_dataset("tiny_for_test", tmp_path, size=3).train) == 3
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("tiny_for_test", lambda root: tiny(root, size=1))
    finally:
        del DATASETS["tiny_for_test"]


# custom ---------------------------------------------------------------------------------------


def test_custom_folders_with_plain_split_names(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "train": ["12_c1_a.jpg", "3_c10_b.jpg", "12_c2.png"],
            "query": ["0007_c1s1_000001_01.jpg"],
            "gallery": ["0007_c3s1_000002_01.jpg", "0_c1_x.jpg", "-1_c1_y.jpg"],
        },
    )
    ds = build_dataset("custom", root)
    assert names(ds.train) == [("12_c1_a.jpg", 1, 0), ("12_c2.png", 1, 1), ("3_c10_b.jpg", 0, 9)]
    assert names(ds.query) == [("0007_c1s1_000001_01.jpg", 7, 0)]
    assert names(ds.gallery) == [("0007_c3s1_000002_01.jpg", 7, 2), ("0_c1_x.jpg", 0, 0)]


def test_custom_folders_in_market_layout(market_root: Path) -> None:
    ds = build_dataset("custom", market_root)
    market = build_dataset("market1501", market_root)
    assert (ds.train, ds.query, ds.gallery) == (market.train, market.query, market.gallery)


def test_custom_name_without_camera_is_an_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"train": ["12_a.jpg"], "query": ["1_c1.jpg"], "gallery": ["1_c2.jpg"]})
    with pytest.raises(ValueError, match="12_a.jpg"):
        build_dataset("custom", root)


def test_custom_csv_with_and_without_header(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.jpg"):
        write_image(tmp_path / "images" / name)
    (tmp_path / "train.csv").write_text("path,pid,camid\nimages/b.jpg,40,3\nimages/a.jpg,9,0\n\n# a comment\n")
    (tmp_path / "query.csv").write_text("images/c.jpg, 5, 1\n")
    (tmp_path / "gallery.csv").write_text(f"{tmp_path / 'images/sub/d.jpg'},5,2\nimages/a.jpg,6,1\n")
    ds = build_dataset("custom", tmp_path)
    images = tmp_path.absolute() / "images"
    assert ds.train == [(str(images / "a.jpg"), 0, 0), (str(images / "b.jpg"), 1, 3)]
    assert ds.query == [(str(images / "c.jpg"), 5, 1)]
    assert ds.gallery == [(str(images / "a.jpg"), 6, 1), (str(images / "sub/d.jpg"), 5, 2)]


def test_custom_csv_without_camids_gives_query_and_gallery_different_cameras(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / name)
    (tmp_path / "train.csv").write_text("path,pid\na.jpg,1\nb.jpg,2\n")
    (tmp_path / "query.csv").write_text("c.jpg,1\n")
    (tmp_path / "gallery.csv").write_text("a.jpg,1\nb.jpg,1\n")
    with pytest.warns(UserWarning, match="no camera ids for train, query, gallery.*camid 1 for gallery"):
        ds = build_dataset("custom", tmp_path)
    assert [camid for _, _, camid in ds.train] == [0, 0]
    assert [camid for _, _, camid in ds.query] == [0]
    assert [camid for _, _, camid in ds.gallery] == [1, 1]


def test_custom_csv_camids_in_only_one_test_split_is_an_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "train.csv").write_text("a.jpg,1,0\n")
    (tmp_path / "query.csv").write_text("a.jpg,1,0\n")
    (tmp_path / "gallery.csv").write_text("a.jpg,1\n")
    with pytest.raises(ValueError, match="gallery CSV list has no camid column"):
        build_dataset("custom", tmp_path)


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("a.jpg,1,0\na.jpg,x,0\n", 2, "pid 'x' is not a non-negative integer"),
        ("a.jpg,1,0\n\na.jpg,-3,0\n", 3, "pid '-3'"),
        ("a.jpg,1,0\na.jpg,1\n", 2, "2 columns where the rows above have 3"),
        ("a.jpg\n", 1, "expected 'path,pid' or 'path,pid,camid'"),
        ("a.jpg,1,0\nmissing.jpg,1,0\n", 2, "missing.jpg does not exist"),
        ("path,person\na.jpg,1\n", 1, "header"),
    ],
)
def test_custom_csv_bad_row_names_file_and_line(tmp_path: Path, content: str, line: int, reason: str) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "train.csv").write_text(content)
    (tmp_path / "query.csv").write_text("a.jpg,1,0\n")
    (tmp_path / "gallery.csv").write_text("a.jpg,1,1\n")
    with pytest.raises((ValueError, FileNotFoundError), match=rf"train\.csv, line {line}: .*{reason}"):
        build_dataset("custom", tmp_path)


def test_custom_explicit_sources_and_ambiguity(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": ["1_c1.jpg"], "bounding_box_train": ["2_c1.jpg"], "query": ["3_c1.jpg"]})
    write_tree(tmp_path, {"gallery": ["3_c2.jpg"]})
    with pytest.raises(ValueError, match="train split is ambiguous.*pass train=PATH"):
        build_dataset("custom", tmp_path)
    ds = build_dataset("custom", tmp_path, train="bounding_box_train")
    assert names(ds.train) == [("2_c1.jpg", 0, 0)]


def test_custom_missing_split_lists_candidates(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": ["1_c1.jpg"], "query": ["3_c1.jpg"]})
    with pytest.raises(FileNotFoundError, match=r"no gallery split in .*gallery\.csv"):
        build_dataset("custom", tmp_path)
    with pytest.raises(FileNotFoundError, match="custom dataset root .*nowhere does not exist"):
        build_dataset("custom", tmp_path / "nowhere")


# --- validation split (data.val_ids) ---------------------------------------------------------


def test_validation_split_holds_out_the_last_training_ids_market_style() -> None:
    from reid.data.datasets.base import validation_split

    train = [(f"{pid:04d}_c{cam}_{n}.jpg", label, cam - 1)
             for label, pid in enumerate((3, 5, 8))
             for cam, n in ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0))]
    ds = ReidDataset("toy", "/toy", train, [("q.jpg", 9, 0)], [("g.jpg", 9, 1)])
    val = validation_split(ds, 2)
    # pid 3 (label 0) stays, relabelled 0; labels 1 and 2 (pids 5 and 8) are held out
    assert val.train == [item for item in train if item[1] == 0]
    # per held-out identity and camera: the first image by path is the query, the rest gallery
    assert val.query == [("0005_c1_0.jpg", 1, 0), ("0005_c2_0.jpg", 1, 1), ("0005_c3_0.jpg", 1, 2),
                         ("0008_c1_0.jpg", 2, 0), ("0008_c2_0.jpg", 2, 1), ("0008_c3_0.jpg", 2, 2)]
    assert val.gallery == [("0005_c1_1.jpg", 1, 0), ("0005_c2_1.jpg", 1, 1),
                           ("0008_c1_1.jpg", 2, 0), ("0008_c2_1.jpg", 2, 1)]
    assert val.protocol == "reid" and "2 training ids held out" in val.name
    # the remaining training ids are relabelled 0..N-1 in pid order
    assert [p for _, p, _ in validation_split(ReidDataset("toy", "/toy", train[::-1], [], []), 1).train] == \
        [1] * 5 + [0] * 5


def test_validation_split_of_a_retrieval_set_is_leave_one_out_and_checks_the_count() -> None:
    from reid.data.datasets.base import validation_split

    train = [(f"{c}_{i}.png", c, 0) for c in range(4) for i in range(3)]
    items = [("t.png", 9, 0)]
    ds = ReidDataset("toy", "/toy", train, items, items, protocol="leave_one_out", recall_ks=(1, 2))
    val = validation_split(ds, 1)
    assert val.query is val.gallery and val.query == train[9:]
    assert (val.protocol, val.recall_ks, val.num_train_pids) == ("leave_one_out", (1, 2), 3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match=rf"data.val_ids={bad}: expected 1..3 \(the dataset toy has 4"):
            validation_split(ds, bad)


def test_val_ids_config_builds_the_validation_split(market_root: Path) -> None:
    from reid.builders import dataset_from_config
    from reid.config import load_config

    cfg = load_config(None, [f"data.root={market_root}", "data.name=market1501", "data.val_ids=1"])
    full = build_dataset("market1501", market_root)
    val = dataset_from_config(cfg)
    assert val.num_train_pids == full.num_train_pids - 1
    assert {p for _, p, _ in val.query} == {full.num_train_pids - 1}
    assert not set(val.query + val.gallery) & set(full.query + full.gallery)
