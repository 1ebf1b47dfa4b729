"""Several training sources in one run: identity and camera offsets, combine_all, test sets by config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reid import builders
from reid.config import ConfigError, load_config
from reid.data import ReidDataset, SourceOffsets, build_dataset, combine_datasets, describe_sources

from .test_reid_benchmarks import write_image, write_msmt17

MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c6s1_000100_01.jpg"],
    "query": ["0003_c1s1_000300_01.jpg"],
    "bounding_box_test": ["0003_c4s2_000301_01.jpg", "0000_c1s1_000010_01.jpg", "-1_c3s1_000011_01.jpg",
                          "0009_c2s1_000012_01.jpg"],
}
DUKE = {
    "bounding_box_train": ["0005_c2_f0000001.jpg", "0008_c8_f0000002.jpg"],
    "query": ["0001_c1_f0000003.jpg"],
    "bounding_box_test": ["0001_c3_f0000004.jpg", "0000_c4_f0000005.jpg"],  # Duke's pid 0 is a person
}


def write_folders(root: Path, files: dict[str, list[str]]) -> Path:
    for split, names in files.items():
        for name in names:
            write_image(root / split / name)
    return root


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    return {"market1501": write_folders(tmp_path / "market", MARKET),
            "dukemtmcreid": write_folders(tmp_path / "duke", DUKE),
            "msmt17": write_msmt17(tmp_path / "msmt" / "MSMT17_V1")}


def names(items):
    return [(Path(path).name, pid, camid) for path, pid, camid in items]


def test_two_sources_offset_identities_and_cameras(roots) -> None:
    market = build_dataset("market1501", roots["market1501"])
    duke = build_dataset("dukemtmcreid", roots["dukemtmcreid"])
    combined, offsets = combine_datasets([market, duke])
    # market: pids 2, 7 -> 0, 1, camids 0, 2, 5 (6 camera ids); duke: pids 5, 8 -> 2, 3, camids 1, 7 -> 7, 13
    assert names(combined.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c3s1_000551_01.jpg", 0, 2), ("0007_c6s1_000100_01.jpg", 1, 5),
        ("0005_c2_f0000001.jpg", 2, 7), ("0008_c8_f0000002.jpg", 3, 13)]
    assert offsets == [SourceOffsets("market1501", market.root, 0, 0, 2, 6, 3),
                       SourceOffsets("dukemtmcreid", duke.root, 2, 6, 2, 8, 2)]
    assert combined.name == "market1501+dukemtmcreid" and combined.query == [] and combined.gallery == []
    assert combined.num_train_pids == 4
    table = describe_sources(offsets)
    assert table.splitlines()[2].split("|")[1:] == ["          2 ", "      3 ", "       6 ", "          0 ", "            0"]
    assert table.splitlines()[-1].split("|")[1:4] == ["          4 ", "      5 ", "      14 "]


def test_one_source_comes_back_unchanged(roots) -> None:
    market = build_dataset("market1501", roots["market1501"])
    combined, offsets = combine_datasets([market])
    assert combined is market
    assert offsets == [SourceOffsets("market1501", market.root, 0, 0, 2, 6, 3)]


def test_combine_all_trains_on_test_ids_without_junk_or_distractors(roots) -> None:
    market = build_dataset("market1501", roots["market1501"])
    msmt = build_dataset("msmt17", roots["msmt17"])
    combined, offsets = combine_datasets([market, msmt], combine_all=True)
    # market: train 2, 7 -> 0, 1; test pids 3, 9 -> 2, 3 (distractor 0000 and junk dropped)
    assert names(combined.train[:6]) == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c3s1_000551_01.jpg", 0, 2), ("0007_c6s1_000100_01.jpg", 1, 5),
        ("0003_c1s1_000300_01.jpg", 2, 0), ("0003_c4s2_000301_01.jpg", 2, 3), ("0009_c2s1_000012_01.jpg", 3, 1)]
    # msmt17: 3 train ids, then test pids 0 (a person here), 3, 4 -> 3, 4, 5; offset by 4 ids and 6 cameras
    msmt_part = combined.train[6:]
    assert [pid for _, pid, _ in msmt_part] == [4, 4, 4, 5, 6, 7, 8, 7, 8, 9]
    assert offsets[1] == SourceOffsets("msmt17", msmt.root, 4, 6, 6, 15, 10)
    assert offsets[0].num_pids == 4 and offsets[0].num_images == 6
    assert [camid - 6 for _, _, camid in msmt_part] == [0, 14, 1, 6, 2, 9, 11, 10, 11, 4]


def test_training_pids_must_be_contiguous() -> None:
    broken = ReidDataset("broken", "/x", [("a.jpg", 3, 0)], [], [])
    with pytest.raises(ValueError, match="training pids must be 0..N-1"):
        combine_datasets([broken, broken])


def test_config_sources_test_sets_and_their_folders(roots) -> None:
    cfg = load_config(None, [f"data.name=[market1501, dukemtmcreid]",
                             f"data.root=[{roots['market1501']}, {roots['dukemtmcreid']}]",
                             "test.datasets=[dukemtmcreid, msmt17]", f"test.roots=[{roots['dukemtmcreid']}, {roots['msmt17']}]"])
    data = builders.datasets_from_config(cfg)
    assert data.train.num_train_pids == 4 and list(data.tests) == ["dukemtmcreid", "msmt17"]
    assert data.tests["msmt17"].root == str(roots["msmt17"])
    with pytest.raises(ValueError, match=r"this config evaluates 2 test sets \(dukemtmcreid \(.*duke\), msmt17 .*\); "
                                         r"choose one with test.datasets=\[NAME\]"):
        builders.dataset_from_config(cfg)
    # without test.roots a test set is found in the folder of the training source of its name
    only = load_config(None, [f"data.name=[market1501, dukemtmcreid]",
                              f"data.root=[{roots['market1501']}, {roots['dukemtmcreid']}]", "test.datasets=[dukemtmcreid]"])
    assert builders.dataset_from_config(only).root == str(roots["dukemtmcreid"])
    unknown = load_config(None, [f"data.root={roots['market1501']}", "data.name=market1501", "test.datasets=[msmt17]"])
    with pytest.raises(ValueError, match=re.escape("test.datasets[0]: msmt17 is not among data.name (market1501), so its "
                                                   "folder is unknown: give one folder per test.datasets entry in test.roots")):
        builders.test_sources(unknown)


def test_default_test_sets_are_the_sources_and_one_source_is_unchanged(roots) -> None:
    two = load_config(None, ["data.name=[market1501, msmt17]", f"data.root=[{roots['market1501']}, {roots['msmt17']}]"])
    data = builders.datasets_from_config(two)
    assert list(data.tests) == ["market1501", "msmt17"] and data.train.num_train_pids == 5
    one = load_config(None, ["data.name=market1501", f"data.root={roots['market1501']}"])
    single = builders.datasets_from_config(one)
    assert single.train is single.tests["market1501"]  # trained and tested as before several sources existed
    assert single.train == build_dataset("market1501", roots["market1501"])
    same = load_config(None, ["data.name=[market1501]", f"data.root=[{roots['market1501']}]"])
    assert builders.datasets_from_config(same).train == single.train


def test_two_test_sets_of_one_name_are_labelled_by_folder(roots, tmp_path: Path) -> None:
    other = write_folders(tmp_path / "market2", MARKET)
    cfg = load_config(None, ["data.name=[market1501, market1501]", f"data.root=[{roots['market1501']}, {other}]"])
    data = builders.datasets_from_config(cfg)
    assert list(data.tests) == [f"market1501 ({roots['market1501']})", f"market1501 ({other})"]
    assert data.train.num_train_pids == 4


@pytest.mark.parametrize("overrides, message", [
    (["data.name=[market1501, msmt17]"], "data.root: expected one folder per data.name entry (2), e.g. data.root=["
                                         "datasets/market1501, datasets/msmt17] for data.name=[market1501, msmt17]; got "
                                         "'datasets/synthetic'"),
    (["data.name=[market1501, msmt17]", "data.root=[a]"], "data.root: expected one folder per data.name entry (2)"),
    (["data.name=[market1501, market1501]", "data.root=[a, a]"], "data.name[1]: market1501 in a is listed twice"),
    (["data.name=[market1501, market]", "data.root=[a, b]"], "data.name[1]: expected one of synthetic, "),
    (["data.name=[]", "data.root=[]"], "data.name: expected a dataset name or a non-empty list of them"),
    (["test.datasets=[msmt17]", "test.roots=[a, b]"], "test.roots: expected one folder per test.datasets entry (1), "
                                                      "got ['a', 'b']"),
    (["test.datasets=[msmt17]", "data.val_ids=3"], "test.datasets: data.val_ids > 0 evaluates on held-out training ids"),
    (["data.cuhk03_labeled=true"], "data.cuhk03_labeled: true, but neither data.name nor test.datasets names cuhk03_np"),
    (["test.datasets=[cuhk]"], "test.datasets[0]: expected one of synthetic, "),
])
def test_config_errors_name_the_key(overrides, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_dataset_options_reach_the_loaders_that_take_them(tmp_path: Path) -> None:
    folder = tmp_path / "Market-1501-v15.09.15"
    write_folders(folder, {**MARKET, "images": ["0000_c2s1_000001_00.jpg"]})
    cfg = load_config(None, ["data.name=[market1501, dukemtmcreid]", f"data.root=[{tmp_path}, {tmp_path / 'duke'}]",
                             "data.market1501_500k=true", "data.combine_all=true"])
    write_folders(tmp_path / "duke", DUKE)
    data = builders.datasets_from_config(cfg)
    market = data.tests["market1501"]
    assert names(market.gallery)[-1] == ("0000_c2s1_000001_00.jpg", 0, 1)  # a distractor in the gallery...
    assert not any("images" in Path(path).parts for path, _, _ in data.train.train)  # ...never a training class
    assert [s.num_pids for s in data.sources] == [4, 4]  # Duke's gallery pid 0 is a person: kept
