"""tools/visualize.py (`reid visualize`) end to end: from a tiny trained checkpoint, and from saved feature files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reid import visualization as vis
from reid.data import build_dataset
from tools import train as train_tool
from tools import visualize as visualize_tool

L = vis.DEFAULT_LAYOUT


def row_size(top_k: int) -> tuple[int, int]:
    height = 2 * L.margin + L.cell_height + 2 * L.border + L.text_gap + L.text_lines * L.line_height
    width = 2 * L.margin + (top_k + 1) * (L.cell_width + 2 * L.border) + L.query_gap + (top_k - 1) * L.gap
    return height, width


def png_shape(path):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    return image.shape


@pytest.mark.slow
def test_from_checkpoint_writes_rank_lists_and_plots(tiny_train_args, tmp_path):
    train_tool.main(tiny_train_args)
    run = tmp_path / "run"
    out = tmp_path / "vis"
    written = visualize_tool.main(["--weights", str(run / "last.pt"), "--worst", "3", "--grid", "--html",
                                   "--top-k", "5", "--rerank", "--output", str(out)])
    assert [p.name for p in written["rank_lists"]] == ["rank_lists.png"]
    height, width = row_size(5)
    assert png_shape(out / "rank_lists.png") == (3 * height, width, 3)
    assert "rank_lists.png" in (out / "index.html").read_text()
    assert png_shape(out / "cmc.png") == (360, 500, 3)
    assert png_shape(out / "distances.png") == (360, 500, 3)
    assert png_shape(out / "training_curves.png") == (360, 1200, 3)  # log.jsonl found next to the checkpoint
    assert written["training_curves"] == out / "training_curves.png"

    # repeatable --query-index, one PNG per query, default output folder next to the checkpoint
    written = visualize_tool.main(["--weights", str(run / "last.pt"), "--query-index", "4", "--query-index", "0",
                                   "--top-k", "3"])
    assert [p.name for p in written["rank_lists"]] == ["query_00004.png", "query_00000.png"]
    assert all(p.parent == run / "visualize" for p in written["rank_lists"])
    assert png_shape(written["rank_lists"][0]) == (*row_size(3), 3)


def _feature_files(tiny_market, tmp_path, drop: str | None = None):
    """Query/gallery .npz of the tiny dataset with features that put each identity near its centre."""
    dataset = build_dataset("market1501", tiny_market)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2000, 16))
    files = []
    for name, items in (("query", dataset.query), ("gallery", dataset.gallery)):
        pids = np.array([pid for _, pid, _ in items])
        features = (centres[pids] + 0.8 * rng.normal(size=(len(items), 16))).astype(np.float32)
        arrays = {"features": features, "pids": pids, "camids": np.array([c for _, _, c in items]),
                  "paths": np.array([p for p, _, _ in items])}
        if drop is not None and name == "gallery":
            arrays.pop(drop)
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        files.append(path)
    return files


def test_from_saved_features(tiny_market, tmp_path):
    query_file, gallery_file = _feature_files(tiny_market, tmp_path)
    written = visualize_tool.main(["--query-features", str(query_file), "--gallery-features", str(gallery_file),
                                   "--num-queries", "2", "--top-k", "4", "--html", "test.k1=5", "test.k2=2"])
    out = tmp_path / "visualize"
    assert len(written["rank_lists"]) == 2 and all(p.parent == out for p in written["rank_lists"])
    assert all(png_shape(p) == (*row_size(4), 3) for p in written["rank_lists"])
    page = (out / "index.html").read_text()
    assert all(p.name in page for p in written["rank_lists"])
    assert png_shape(out / "cmc.png") == (360, 500, 3) and png_shape(out / "distances.png") == (360, 500, 3)
    assert "training_curves" not in written and not (out / "training_curves.png").exists()


def test_features_file_missing_a_key_names_file_and_key(tiny_market, tmp_path, capsys):
    query_file, gallery_file = _feature_files(tiny_market, tmp_path, drop="camids")
    with pytest.raises(SystemExit) as exit_info:
        visualize_tool.main(["--query-features", str(query_file), "--gallery-features", str(gallery_file)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {gallery_file}: missing key(s) camids") and err.count("\n") == 1
    with pytest.raises(KeyError, match=r"gallery\.npz: missing key\(s\) camids"):  # --debug: the exception itself
        visualize_tool.main(["--query-features", str(query_file), "--gallery-features", str(gallery_file), "--debug"])


def test_query_index_out_of_range_fails_before_any_drawing(tiny_market, tmp_path, capsys):
    query_file, gallery_file = _feature_files(tiny_market, tmp_path)
    num_queries = len(np.load(query_file)["pids"])
    with pytest.raises(SystemExit) as exit_info:
        visualize_tool.main(["--query-features", str(query_file), "--gallery-features", str(gallery_file),
                             "--query-index", "0", "--query-index", "99999"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: --query-index 99999: out of range; {query_file} has {num_queries} "
                                       f"queries (valid indices 0..{num_queries - 1})\n")
    assert not (tmp_path / "visualize").exists()


def test_weights_and_features_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        visualize_tool.main(["--weights", "a.pt", "--query-features", "q.npz", "--gallery-features", "g.npz"])
    assert "either --weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        visualize_tool.main(["--query-features", "q.npz"])
    with pytest.raises(SystemExit):
        visualize_tool.main(["--weights", "a.pt", "--worst", "2", "--num-queries", "3"])
