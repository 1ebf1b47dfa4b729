"""The synthetic Market-1501 generator: layout, names, counts, determinism, caching, crash safety."""

from __future__ import annotations

import collections
import errno
import importlib.util
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data.synthetic import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SPLIT_FOLDERS,
    _make_identities,
    make_synthetic_market,
    market_name,
)

# Market-1501: 4-digit pid (or -1), camera, sequence 1..6, 6-digit frame, 2-digit detection.
NAME = re.compile(r"^(-1|\d{4})_c([1-9])s([1-6])_(\d{6})_(\d{2})\.jpg$")

TINY = dict(num_train_ids=5, num_test_ids=4, num_cameras=4, image_size=(64, 32), seed=3,
            cameras_per_id=(2, 3), images_per_camera=(2, 4), num_distractors=6, num_junk=4)


def parse(folder: Path) -> list[tuple[int, int, str]]:
    """(pid, camera 1-based, name) of every file; fails on any non-Market name."""
    rows = []
    for path in sorted(folder.iterdir()):
        match = NAME.match(path.name)
        assert match is not None, f"{path.name} is not a Market-1501 name"
        rows.append((int(match.group(1)), int(match.group(2)), path.name))
    return rows


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {f"{f}/{p.name}": p.read_bytes() for f in SPLIT_FOLDERS for p in sorted((root / f).iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synthetic_market(tmp_path_factory.mktemp("synthetic") / "Market-1501-v15.09.15", **TINY)


def test_market_name_format():
    assert market_name(2, 1, 1, 451, 3) == "0002_c1s1_000451_03.jpg"
    assert market_name(0, 6, 2, 12, 1) == "0000_c6s2_000012_01.jpg"
    assert market_name(-1, 3, 5, 999999, 8) == "-1_c3s5_999999_08.jpg"


def test_layout_and_names(tiny):
    assert tiny.name == "Market-1501-v15.09.15"
    assert sorted(p.name for p in tiny.iterdir()) == sorted([*SPLIT_FOLDERS, MANIFEST_NAME])
    for folder in SPLIT_FOLDERS:
        rows = parse(tiny / folder)
        assert rows, f"{folder} is empty"
        assert all(1 <= cam <= TINY["num_cameras"] for _, cam, _ in rows)
    first = next((tiny / "query").iterdir())
    image = cv2.imread(str(first))
    assert image.shape == (64, 32, 3) and image.dtype == np.uint8
    assert first.read_bytes()[:2] == b"\xff\xd8"  # JPEG start-of-image marker


def test_every_image_decodes(tiny):
    for folder in SPLIT_FOLDERS:
        for path in (tiny / folder).iterdir():
            image = cv2.imread(str(path))
            assert image is not None and image.shape == (64, 32, 3), path


def test_counts_match_arguments_and_manifest(tiny):
    manifest = json.loads((tiny / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True and manifest["version"] == GENERATOR_VERSION
    assert manifest["arguments"]["num_train_ids"] == 5 and manifest["arguments"]["image_size"] == [64, 32]
    train, query, gallery = (parse(tiny / f) for f in SPLIT_FOLDERS)
    for folder, rows in zip(SPLIT_FOLDERS, (train, query, gallery)):
        assert manifest["counts"][folder]["images"] == len(rows)
    people = [r for r in gallery if r[0] > 0]
    assert len({r[0] for r in train}) == TINY["num_train_ids"] == manifest["counts"]["bounding_box_train"]["identities"]
    assert len({r[0] for r in query}) == TINY["num_test_ids"]
    assert len({r[0] for r in people}) == TINY["num_test_ids"]
    assert sum(r[0] == 0 for r in gallery) == TINY["num_distractors"] == manifest["counts"]["bounding_box_test"]["distractors"]
    assert sum(r[0] == -1 for r in gallery) == TINY["num_junk"] == manifest["counts"]["bounding_box_test"]["junk"]
    # Per identity: 2..3 cameras; per (identity, camera) tracklet: 2..4 frames, of which
    # exactly queries_per_camera (1) went to the query folder for a test identity.
    per_track = collections.Counter((pid, cam) for pid, cam, _ in train + query + people)
    assert all(2 <= n <= 4 for n in per_track.values()), per_track
    cams_per_id = collections.Counter(pid for pid, _ in per_track)
    assert all(2 <= n <= 3 for n in cams_per_id.values()), cams_per_id
    assert collections.Counter((pid, cam) for pid, cam, _ in query) == {
        key: 1 for key in per_track if key[0] in {r[0] for r in query}}


def test_distractors_and_junk_only_in_gallery(tiny):
    for folder in ("bounding_box_train", "query"):
        assert all(pid > 0 for pid, _, _ in parse(tiny / folder)), folder


def test_train_and_test_identities_are_disjoint(tiny):
    train = {pid for pid, _, _ in parse(tiny / "bounding_box_train")}
    test = {pid for pid, _, _ in parse(tiny / "query")} | {
        pid for pid, _, _ in parse(tiny / "bounding_box_test") if pid > 0}
    assert train == {1, 3, 5, 7, 9} and test == {2, 4, 6, 8}


def test_every_query_has_a_cross_camera_gallery_match(tiny):
    gallery = {(pid, cam) for pid, cam, _ in parse(tiny / "bounding_box_test")}
    for pid, cam, name in parse(tiny / "query"):
        assert any(p == pid and c != cam for p, c in gallery), f"query {name} has no valid match"


def test_same_arguments_give_identical_bytes_and_workers_do_not_matter(tiny, tmp_path):
    again = make_synthetic_market(tmp_path / "again", **TINY, workers=2)
    assert tree_bytes(again) == tree_bytes(tiny)


def test_other_seed_gives_other_images(tiny, tmp_path):
    other = make_synthetic_market(tmp_path / "other", **{**TINY, "seed": 4})
    a, b = tree_bytes(tiny), tree_bytes(other)
    assert a != b
    assert all(a[k] != b[k] for k in set(a) & set(b))  # even a file name in common holds another image


def test_complete_tree_is_reused_without_rewriting(tmp_path):
    root = make_synthetic_market(tmp_path / "cache", **TINY)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert make_synthetic_market(tmp_path / "cache", **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_incomplete_tree_with_same_arguments_is_regenerated(tmp_path):
    root = make_synthetic_market(tmp_path / "partial", **TINY)
    expected = tree_bytes(root)
    victim = next((root / "query").iterdir())
    victim.unlink()
    make_synthetic_market(root, **TINY)
    assert tree_bytes(root) == expected


def test_tree_from_older_generator_version_is_regenerated(tmp_path, monkeypatch):
    import reid.data.synthetic as synthetic

    root = make_synthetic_market(tmp_path / "stale", **TINY)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", GENERATOR_VERSION + 1)
    synthetic.make_synthetic_market(root, **TINY)  # same arguments: no error, rewritten
    assert json.loads((root / MANIFEST_NAME).read_text())["version"] == GENERATOR_VERSION + 1


def test_other_arguments_on_existing_tree_need_overwrite(tmp_path):
    root = make_synthetic_market(tmp_path / "clash", **TINY)
    with pytest.raises(FileExistsError, match=r"num_train_ids: 5 \(on disk\) != 6.*overwrite=True"):
        make_synthetic_market(root, **{**TINY, "num_train_ids": 6})
    make_synthetic_market(root, **{**TINY, "num_train_ids": 6}, overwrite=True)
    assert len({pid for pid, _, _ in parse(root / "bounding_box_train")}) == 6
    assert json.loads((root / MANIFEST_NAME).read_text())["arguments"]["num_train_ids"] == 6


def test_foreign_dataset_is_not_overwritten(tmp_path):
    real = tmp_path / "Market-1501-v15.09.15"
    (real / "query").mkdir(parents=True)
    (real / "query" / "0001_c1s1_001051_00.jpg").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not made by this generator"):
        make_synthetic_market(real, **TINY)
    assert (real / "query" / "0001_c1s1_001051_00.jpg").read_bytes() == b"real data"


def test_unrelated_files_in_root_are_kept(tmp_path):
    (tmp_path / "readme.txt").write_text("mine")
    make_synthetic_market(tmp_path, **TINY)
    assert (tmp_path / "readme.txt").read_text() == "mine"


class _FullDisk:
    """A file handle whose write stores the first half of the data, then fails: a crash mid-write."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        self.handle.write(bytes(data)[:len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


def fail_manifest_write(monkeypatch, call: int) -> None:
    """Make the ``call``-th atomic write (reid.io opens its temporary with os.fdopen) fail mid-write.

    The generator writes the manifest twice: 1 marks the tree as ours and incomplete, 2 as complete.
    """
    import reid.io

    real_fdopen = os.fdopen
    calls = []

    def fdopen(fd, *args, **kwargs):
        calls.append(fd)
        handle = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(handle) if len(calls) == call else handle

    monkeypatch.setattr(reid.io.os, "fdopen", fdopen)


def test_crash_while_completing_the_manifest_keeps_the_incomplete_one(tiny, tmp_path, monkeypatch):
    root = tmp_path / "crash"
    fail_manifest_write(monkeypatch, call=2)
    with pytest.raises(OSError, match="No space left on device"):
        make_synthetic_market(root, **TINY)
    monkeypatch.undo()
    manifest = json.loads((root / MANIFEST_NAME).read_text())  # a whole JSON object, not half of one
    assert manifest["generator"] == "reid.data.synthetic" and manifest["complete"] is False
    assert manifest["arguments"]["num_train_ids"] == TINY["num_train_ids"]
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLIT_FOLDERS, MANIFEST_NAME])  # no temporary
    # Ours and incomplete: the next run regenerates it without asking (no "not made by this generator").
    assert make_synthetic_market(root, **TINY) == root
    assert tree_bytes(root) == tree_bytes(tiny)
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is True


def test_crash_while_claiming_a_tree_leaves_it_untouched(tmp_path, monkeypatch):
    root = make_synthetic_market(tmp_path / "claimed", **TINY)
    images, manifest = tree_bytes(root), (root / MANIFEST_NAME).read_bytes()
    fail_manifest_write(monkeypatch, call=1)
    with pytest.raises(OSError, match="No space left on device"):
        make_synthetic_market(root, **{**TINY, "num_train_ids": 6}, overwrite=True)
    # The manifest is written before the split folders are emptied: the old tree is still whole.
    assert (root / MANIFEST_NAME).read_bytes() == manifest and tree_bytes(root) == images
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLIT_FOLDERS, MANIFEST_NAME])


def test_crash_while_writing_an_image_leaves_no_truncated_jpeg(tiny, tmp_path, monkeypatch):
    import reid.data.synthetic as synthetic

    calls = []

    def open_(path, mode="r", *args, **kwargs):
        calls.append(path)
        handle = open(path, mode, *args, **kwargs)
        return _FullDisk(handle) if len(calls) == 5 else handle

    monkeypatch.setattr(synthetic, "open", open_, raising=False)  # shadows the builtin in the module only
    root = tmp_path / "half"
    with pytest.raises(OSError, match=r"could not write the synthetic image .*No space left on device"):
        make_synthetic_market(root, **TINY)
    monkeypatch.undo()
    written = [root / f / name for f in SPLIT_FOLDERS for _, _, name in parse(root / f)]  # Market names only
    assert len(written) == 4
    assert all(cv2.imread(str(path)) is not None for path in written)
    assert json.loads((root / MANIFEST_NAME).read_text())["complete"] is False
    make_synthetic_market(root, **TINY)
    assert tree_bytes(root) == tree_bytes(tiny)


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / f".{MANIFEST_NAME}.k1ll3d.tmp").write_text('{"generator": "reid.da')
    make_synthetic_market(tmp_path, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*SPLIT_FOLDERS, MANIFEST_NAME])


@pytest.mark.parametrize("bad, message", [
    ({"num_cameras": 1}, "num_cameras must be in 2..9"),
    ({"num_cameras": 10}, "num_cameras must be in 2..9"),
    ({"images_per_camera": (1, 3)}, r"images_per_camera must be \(min, max\) with 2 <= min"),
    ({"images_per_camera": (2, 1001)}, "images_per_camera max must be <= 1000"),
    ({"cameras_per_id": (1, 3)}, r"cameras_per_id must be \(min, max\) with 2 <= min"),
    ({"num_train_ids": 5001}, "pids have 4 digits"),
    ({"image_size": (16, 8)}, "image_size must be"),
    ({"num_test_ids": 0}, "must be >= 1"),
])
def test_bad_arguments_are_named(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_market(tmp_path, **{**TINY, **bad})
    assert not any(tmp_path.iterdir())  # nothing written before the check


def test_identity_clash_is_redrawn(monkeypatch):
    import types

    import reid.data.synthetic as synthetic

    draws = iter([(1,), (1,), (1,), (2,)])  # pid 1 gets (1,); pid 2 draws (1,) twice, then (2,)
    monkeypatch.setattr(synthetic, "sample_identity", lambda rng: types.SimpleNamespace(key=next(draws)))
    identities = synthetic._make_identities(0, [2, 1])
    assert identities[1].key == (1,) and identities[2].key == (2,)


def test_identities_are_unique_at_market_scale():
    identities = _make_identities(0, range(1, 1502))
    assert len({identity.key for identity in identities.values()}) == 1501


def raw_pixel_map(root: Path) -> float:
    """Market protocol, written as a plain loop: rank gallery, drop same pid+camera, mean precision at hits."""
    def load(folder):
        rows = [r for r in parse(root / folder) if r[0] != -1]
        feats = np.stack([cv2.resize(cv2.imread(str(root / folder / n)), (16, 32), interpolation=cv2.INTER_AREA)
                          .ravel().astype(np.float64) for _, _, n in rows])
        return feats, [r[0] for r in rows], [r[1] for r in rows]
    qf, qp, qc = load("query")
    gf, gp, gc = load("bounding_box_test")
    aps = []
    for i in range(len(qp)):
        dist = ((gf - qf[i]) ** 2).sum(1)
        hits, seen = [], 0
        for j in np.argsort(dist, kind="stable"):
            if gp[j] == qp[i] and gc[j] == qc[i]:
                continue
            seen += 1
            if gp[j] == qp[i]:
                hits.append((len(hits) + 1) / seen)  # precision at this hit
        aps.append(np.mean(hits))
    return float(np.mean(aps))


def test_raw_pixels_match_poorly(tmp_path):
    """Not trivial: raw-pixel matching stays far below what a trained model reaches.

    On this set random distances score about 0.04 and raw pixels 0.10; with 200 or 750 test
    identities raw pixels drop to 0.02 / 0.006 mAP while a linear metric learnt on the
    training split reaches 0.24 / 0.16 (benchmarks/bench_synthetic.py).
    """
    root = make_synthetic_market(tmp_path, num_train_ids=1, num_test_ids=30, image_size=(64, 32),
                                 num_distractors=20, num_junk=0)
    assert raw_pixel_map(root) < 0.3


def _load_tool():
    path = Path(__file__).resolve().parents[2] / "tools" / "make_synthetic.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_summary_from_names(tiny):
    tool = _load_tool()
    lines = tool.summary_from_names(tiny).splitlines()
    train, query, gallery = (parse(tiny / f) for f in SPLIT_FOLDERS)
    # Gallery: junk left out; the distractors stay and count as one identity (0000), as in torchreid.
    kept = [r for r in gallery if r[0] != -1]
    assert lines[1].split() == ["train", "5", str(len(train)), str(len({c for _, c, _ in train}))]
    assert lines[2].split() == ["query", "4", str(len(query)), str(len({c for _, c, _ in query}))]
    assert lines[3].split() == ["gallery", "5", str(len(kept)), str(len({c for _, c, _ in kept}))]


def test_tool_main_writes_and_prints(tmp_path, capsys):
    tool = _load_tool()
    root = tool.main(["--root", str(tmp_path / "ds"), "--train-ids", "3", "--test-ids", "2", "--cameras", "3",
                      "--height", "64", "--width", "32", "--images-per-camera", "2", "3",
                      "--distractors", "2", "--junk", "1"])
    out = capsys.readouterr().out
    assert root == tmp_path / "ds" and str(root.resolve()) in out
    assert len({pid for pid, _, _ in parse(root / "bounding_box_train")}) == 3


def test_tool_reports_a_clash_without_traceback(tmp_path, capsys):
    tool = _load_tool()
    args = ["--root", str(tmp_path / "ds"), "--train-ids", "2", "--test-ids", "2", "--cameras", "2",
            "--height", "64", "--width", "32", "--images-per-camera", "2", "2", "--distractors", "0", "--junk", "0"]
    tool.main(args)
    with pytest.raises(SystemExit) as exited:
        tool.main([*args[:3], "3", *args[4:]])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: .*num_train_ids: 2 \(on disk\) != 3", err) and "Traceback" not in err


def test_second_domain_is_an_option_that_leaves_the_default_alone(tmp_path) -> None:
    import json

    from reid.data.synthetic import make_synthetic_market

    small = dict(num_train_ids=3, num_test_ids=2, num_cameras=2, image_size=(64, 32), num_distractors=1, num_junk=1)
    market = make_synthetic_market(tmp_path / "a", **small)
    dusk = make_synthetic_market(tmp_path / "b", domain="dusk", **small)
    assert "domain" not in json.loads((market / "synthetic.json").read_text())["arguments"]
    assert json.loads((dusk / "synthetic.json").read_text())["arguments"]["domain"] == "dusk"
    names = sorted(p.relative_to(market).as_posix() for p in market.rglob("*.jpg"))
    assert names == sorted(p.relative_to(dusk).as_posix() for p in dusk.rglob("*.jpg"))  # the same plan
    differing = [n for n in names if (market / n).read_bytes() != (dusk / n).read_bytes()]
    assert len(differing) == len(names)
    again = make_synthetic_market(tmp_path / "c", domain="dusk", **small)
    assert all((dusk / n).read_bytes() == (again / n).read_bytes() for n in names)
    with pytest.raises(ValueError, match="domain='night': expected one of market, dusk"):
        make_synthetic_market(tmp_path / "d", domain="night", **small)
