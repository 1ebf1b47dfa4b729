"""Rank-list images checked pixel by pixel on a hand-made case; query selection; plots."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid import io as reid_io
from reid import visualization as vis
from reid.evaluation import evaluate_rank
from reid.evaluation.rank import average_precision, query_average_precision

L = vis.DEFAULT_LAYOUT
TILE_H, TILE_W = L.cell_height + 2 * L.border, L.cell_width + 2 * L.border

# Every image is one unique fill colour (none equal to a border or background colour, none grey
# like the anti-aliased black text),
# so a cell's centre pixel says which image was drawn there.
QUERY_FILL = (10, 20, 30)
# The hand-made gallery of one query (pid 1, camera 0). Distances and what the protocol does:
GALLERY = [
    # (pid, camid, distance, fill)
    (1, 0, 0.05, (200, 120, 40)),  # g0 same pid, same camera: left out
    (1, 1, 0.40, (60, 60, 160)),  # g1 match; ties with g6 and comes first (lower index)
    (2, 1, 0.10, (160, 60, 60)),  # g2 wrong identity, nearest left in
    (3, 2, 0.70, (60, 160, 160)),  # g3 wrong
    (1, 2, 0.20, (160, 160, 60)),  # g4 match
    (2, 0, 0.55, (100, 30, 100)),  # g5 wrong
    (4, 1, 0.40, (30, 100, 30)),  # g6 wrong, tied with g1
    (-1, 1, 0.15, (90, 90, 20)),  # g7 junk (pid -1): left out
]
# Rank order after the exclusions, and the truth of each rank.
EXPECTED_ORDER = [2, 4, 1, 6, 5, 3]
EXPECTED_MATCH = [False, True, True, False, False, False]
EXPECTED_AP = (1 / 2 + 2 / 3) / 2  # hits at ranks 2 and 3


def _write(path, fill, size=(40, 20)):
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = fill
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture
def case(tmp_path):
    query_path = _write(tmp_path / "query.png", QUERY_FILL, (50, 24))
    # different source sizes: every image is resized into the same cell
    paths = [_write(tmp_path / f"g{i}.png", fill, (30 + 5 * i, 20 + i)) for i, (*_, fill) in enumerate(GALLERY)]
    pids = np.array([g[0] for g in GALLERY])
    camids = np.array([g[1] for g in GALLERY])
    distances = np.array([g[2] for g in GALLERY], dtype=np.float32)
    return {"query": (query_path, 1, 0), "gallery": (paths, pids, camids), "distances": distances}


def expected_size(top_k: int) -> tuple[int, int]:
    """The documented layout: margins, a tile row, text lines; query gap, gallery gaps."""
    height = 2 * L.margin + TILE_H + L.text_gap + L.text_lines * L.line_height
    width = 2 * L.margin + (top_k + 1) * TILE_W + L.query_gap + (top_k - 1) * L.gap
    return height, width


def tile_origin(column: int, row_top: int = 0) -> tuple[int, int]:
    left = L.margin if column == 0 else L.margin + TILE_W + L.query_gap + (column - 1) * (TILE_W + L.gap)
    return row_top + L.margin, left


def border_pixels(image, column, row_top=0):
    top, left = tile_origin(column, row_top)
    tile = image[top:top + TILE_H, left:left + TILE_W]
    ring = np.ones((TILE_H, TILE_W), dtype=bool)
    ring[L.border:-L.border, L.border:-L.border] = False
    return tile[ring]


def cell_fill(image, column, row_top=0):
    """The one colour filling a tile's image area (an image is resized whole into its cell)."""
    top, left = tile_origin(column, row_top)
    cell = image[top + L.border:top + L.border + L.cell_height, left + L.border:left + L.border + L.cell_width]
    colours = np.unique(cell.reshape(-1, 3), axis=0)
    assert len(colours) == 1, f"column {column}: image area is not one colour"
    return tuple(int(v) for v in colours[0])


def contains_colour(image, colour):
    return bool(np.all(image == np.array(colour, dtype=np.uint8), axis=-1).any())


def test_ranked_gallery_applies_the_protocol(case):
    paths, pids, camids = case["gallery"]
    order, matches = vis.ranked_gallery(case["distances"], 1, 0, pids, camids)
    assert order.tolist() == EXPECTED_ORDER
    assert matches.tolist() == EXPECTED_MATCH
    assert average_precision(matches) == pytest.approx(EXPECTED_AP)


def test_rank_list_png_size_borders_and_left_out_items(case, tmp_path):
    top_k = 5
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=top_k)
    path = vis.save_image(image, tmp_path / "out" / "row.png")
    assert path.is_file() and path.stat().st_size > 0
    written = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # PNG is lossless: same pixels
    assert written.shape == (*expected_size(top_k), 3) == (194, 480, 3)
    assert np.array_equal(written, image)

    assert np.all(border_pixels(written, 0) == vis.QUERY_COLOR)
    assert cell_fill(written, 0) == QUERY_FILL
    for rank in range(1, top_k + 1):
        g = EXPECTED_ORDER[rank - 1]
        colour = vis.MATCH_COLOR if EXPECTED_MATCH[rank - 1] else vis.NON_MATCH_COLOR
        assert np.all(border_pixels(written, rank) == colour), f"rank {rank}"
        assert cell_fill(written, rank) == GALLERY[g][3], f"rank {rank} shows the wrong image"
    assert vis.MATCH_COLOR == (0, 200, 0) and vis.NON_MATCH_COLOR == (220, 0, 0)  # green and red, exactly
    # same-pid same-camera item and junk: nowhere in the picture; the 6th ranked item (g3) is past top_k
    for left_out in (0, 7, 3):
        assert not contains_colour(written, GALLERY[left_out][3]), f"g{left_out} should not be drawn"
    assert np.all(written[:L.margin] == vis.BACKGROUND_COLOR)  # top margin


def test_blank_columns_when_fewer_items_than_top_k(case):
    top_k = 8  # six items remain after the exclusions
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=top_k)
    assert image.shape == (*expected_size(top_k), 3)
    assert np.all(border_pixels(image, 6) == vis.NON_MATCH_COLOR)  # g3, rank 6
    for column in (7, 8):
        top, left = tile_origin(column)
        assert np.all(image[:, left:left + TILE_W] == vis.BACKGROUND_COLOR)


def test_unknown_query_pid_draws_neutral_borders_and_leaves_nothing_out(case):
    paths, pids, camids = case["gallery"]
    image = vis.compose_rank_list(case["distances"], (case["query"][0], -1, 0), case["gallery"], top_k=3)
    # plain distance order, junk and same-camera items included
    for rank, g in enumerate([0, 2, 7], start=1):
        assert np.all(border_pixels(image, rank) == vis.UNKNOWN_COLOR)
        assert cell_fill(image, rank) == GALLERY[g][3]


def test_unreadable_image_names_the_file(case, tmp_path):
    paths, pids, camids = case["gallery"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(OSError, match="broken.png"):
        vis.compose_rank_list(case["distances"], (str(broken), 1, 0), case["gallery"], top_k=3)
    missing = list(paths)
    missing[2] = str(tmp_path / "gone.jpg")  # rank 1
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        vis.compose_rank_list(case["distances"], case["query"], (missing, pids, camids), top_k=3)


def test_cell_size_scales_the_layout(case):
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=2, cell_size=(160, 80))
    layout = vis.RankListLayout.for_cell((160, 80))
    assert image.shape[:2] == layout.size(2)
    assert (layout.cell_height, layout.cell_width, layout.line_height) == (160, 80, 16)
    assert image.shape[:2] == (2 * 8 + 168 + 3 + 3 * 16, 2 * 8 + 3 * 88 + 16 + 4)


# --------------------------------------------------------------------------- several queries


def _random_problem(seed=0, num_q=7, num_g=40):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, 5, num_q)
    g_pids = rng.integers(-1, 5, num_g)  # includes junk
    q_camids = rng.integers(0, 3, num_q)
    g_camids = rng.integers(0, 3, num_g)
    distmat = rng.random((num_q, num_g)).astype(np.float32)
    distmat[0, 5] = distmat[0, 6]  # a tie
    return distmat, q_pids, g_pids, q_camids, g_camids


def test_query_average_precision_matches_the_drawn_lists_and_evaluate_rank():
    distmat, q_pids, g_pids, q_camids, g_camids = _random_problem()
    ap = query_average_precision(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid=vis.JUNK_PID)
    for i in range(len(q_pids)):  # reference: AP of the very list that is drawn
        _, matches = vis.ranked_gallery(distmat[i], q_pids[i], q_camids[i], g_pids, g_camids)
        expected = average_precision(matches)
        assert (np.isnan(ap[i]) and np.isnan(expected)) or ap[i] == pytest.approx(expected), i
    # without junk in the gallery it is evaluate_rank's per-query AP
    g_clean = np.where(g_pids == -1, 9, g_pids)
    ap_clean = query_average_precision(distmat, q_pids, g_clean, q_camids, g_camids, junk_pid=vis.JUNK_PID)
    reference = evaluate_rank(distmat, q_pids, g_clean, q_camids, g_camids, max_rank=5).all_AP
    np.testing.assert_allclose(ap_clean, reference, equal_nan=True)


def test_select_worst_random_and_given():
    ap = np.array([0.9, np.nan, 0.2, 0.5, 0.2, 1.0])
    assert vis.select_queries(6, count=3, worst=True, ap=ap).tolist() == [2, 4, 3]
    assert vis.select_queries(6, count=10, worst=True, ap=ap).tolist() == [2, 4, 3, 0, 5]
    first = vis.select_queries(100, count=5, seed=3)
    assert first.tolist() == vis.select_queries(100, count=5, seed=3).tolist()
    assert first.tolist() != vis.select_queries(100, count=5, seed=4).tolist()
    assert len(set(first.tolist())) == 5 and first.tolist() == sorted(first.tolist())
    assert vis.select_queries(6, indices=[4, 1]).tolist() == [4, 1]
    with pytest.raises(IndexError, match="query index 6"):
        vis.select_queries(6, indices=[6])
    with pytest.raises(ValueError, match="needs the per-query ap"):
        vis.select_queries(6, count=2, worst=True)


def _problem_with_images(tmp_path):
    """Three queries, whose APs are known, against a six-image gallery (unique fills)."""
    q_fills = [(5, 5, 100), (5, 100, 5), (100, 5, 5)]
    g_fills = [(20 * i + 30, 7, 7 * i + 3) for i in range(6)]
    q_paths = [_write(tmp_path / f"q{i}.png", f) for i, f in enumerate(q_fills)]
    g_paths = [_write(tmp_path / f"gal{i}.png", f) for i, f in enumerate(g_fills)]
    q_pids, q_camids = np.array([0, 1, 2]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([0, 1, 2, 3, 0, 1]), np.array([1, 1, 1, 1, 0, 0])
    distmat = np.array([
        [0.1, 0.5, 0.6, 0.7, 0.0, 0.8],  # q0: match g0 at rank 1 (g4 same camera left out): AP 1
        [0.1, 0.5, 0.2, 0.3, 0.4, 0.9],  # q1: matches g1 (rank 5 after g0, g2, g3, g4), g5 left out: AP 0.2
        [0.3, 0.1, 0.2, 0.9, 0.8, 0.7],  # q2: match g2 at rank 2: AP 0.5
    ], dtype=np.float32)
    return distmat, (q_paths, q_pids, q_camids), (g_paths, g_pids, g_camids)


def test_save_rank_lists_worst_grid_and_html(tmp_path):
    distmat, query, gallery = _problem_with_images(tmp_path)
    ap = query_average_precision(distmat, query[1], gallery[1], query[2], gallery[2], junk_pid=vis.JUNK_PID)
    np.testing.assert_allclose(ap, [1.0, 0.2, 0.5])

    out = tmp_path / "worst"
    files = vis.save_rank_lists(distmat, query, gallery, out, worst=2, top_k=4, html=True)
    assert [f.name for f in files] == ["query_00001.png", "query_00002.png"]  # lowest AP first
    row = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    assert row.shape == (*expected_size(4), 3)
    assert cell_fill(row, 0) == (5, 100, 5)  # q1
    assert [cell_fill(row, r) for r in range(1, 5)] == [(30, 7, 3), (70, 7, 17), (90, 7, 24), (110, 7, 31)]
    assert [tuple(border_pixels(row, r)[0]) for r in range(1, 5)] == [vis.NON_MATCH_COLOR] * 4
    page = (out / "index.html").read_text()
    assert "query_00001.png" in page and "query_00002.png" in page and "query_00000.png" not in page
    assert "AP 20.0%" in page and "AP 50.0%" in page

    grid_files = vis.save_rank_lists(distmat, query, gallery, tmp_path / "grid", query_indices=[2, 0, 1], top_k=3,
                                     grid=True, html=True)
    assert [f.name for f in grid_files] == ["rank_lists.png"]
    grid = cv2.cvtColor(cv2.imread(str(grid_files[0])), cv2.COLOR_BGR2RGB)
    height, width = expected_size(3)
    assert grid.shape == (3 * height, width, 3)
    for r, i in enumerate([2, 0, 1]):  # rows in the given order, each the single-query image
        single = vis.compose_rank_list(distmat[i], (query[0][i], query[1][i], query[2][i]), gallery, top_k=3)
        assert np.array_equal(grid[r * height:(r + 1) * height], single)
    assert np.all(border_pixels(grid, 1, row_top=height) == vis.MATCH_COLOR)  # q0's rank 1
    assert "rank_lists.png" in (tmp_path / "grid" / "index.html").read_text()

    random_files = vis.save_rank_lists(distmat, query, gallery, tmp_path / "random", num_random=2, seed=0, top_k=2)
    assert len(random_files) == 2 and all(f.is_file() for f in random_files)
    with pytest.raises(ValueError, match="query_indices, worst"):
        vis.save_rank_lists(distmat, query, gallery, tmp_path / "x", query_indices=[0], worst=1)



def test_retrieval_rank_lists_name_classes_not_cameras(tmp_path):
    distmat, query, gallery = _problem_with_images(tmp_path)
    assert vis._label(12, 2, True) == "pid 12 c3" and vis._label(vis.JUNK_PID, 0, True) == "pid ? c1"
    assert vis._label(12, 2, False) == "class 12"
    with_cameras = vis.compose_rank_list(distmat[0], (query[0][0], query[1][0], query[2][0]), gallery, top_k=3)
    without = vis.compose_rank_list(distmat[0], (query[0][0], query[1][0], query[2][0]), gallery, top_k=3,
                                    cameras=False)
    assert with_cameras.shape == without.shape and not np.array_equal(with_cameras, without)  # only the text differs
    vis.save_rank_lists(distmat, query, gallery, tmp_path / "retrieval", query_indices=[0], top_k=2, html=True,
                        cameras=False)
    page = (tmp_path / "retrieval" / "index.html").read_text()
    assert "<th>class</th>" in page and "camera" not in page and "<td>c1</td>" not in page
    assert "leave-one-out: itself" in page


# --------------------------------------------------------------------------- plots


def _png_shape(path):
    assert path.is_file() and path.stat().st_size > 1000
    image = cv2.imread(str(path))
    assert image is not None and image.std() > 0  # something was drawn
    return image.shape


def test_split_distances_hand_made():
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.9, 1.0, 1.1, 1.2]])
    q_pids, q_camids = np.array([1, 2, -1]), np.array([0, 0, 0])
    g_pids, g_camids = np.array([1, 1, 2, -1]), np.array([0, 1, 1, 1])
    matches, non_matches = vis.split_distances(distmat, q_pids, g_pids, q_camids, g_camids)
    # q0: g0 same camera (out), g1 match, g2 non-match, g3 junk (out); q1: g0, g1 non-match, g2 match; q2 unknown
    assert sorted(matches.tolist()) == [0.2, 0.7]
    assert sorted(non_matches.tolist()) == [0.3, 0.5, 0.6]


def test_plots_have_the_requested_size(tmp_path):
    distmat, q_pids, g_pids, q_camids, g_camids = _random_problem(num_q=20, num_g=60)
    cmc = {"distance": np.linspace(0.5, 1.0, 20), "re-ranked": np.linspace(0.6, 1.0, 20)}
    assert _png_shape(vis.plot_cmc(cmc, tmp_path / "cmc.png", max_rank=10)) == (360, 500, 3)
    assert _png_shape(vis.plot_cmc(cmc, tmp_path / "big.png", figsize=(6, 4), dpi=50)) == (200, 300, 3)
    path = vis.plot_distance_histogram(distmat, q_pids, g_pids, q_camids, g_camids, tmp_path / "d" / "hist.png")
    assert _png_shape(path) == (360, 500, 3)


def test_training_curves_from_the_log(tmp_path):
    records = [
        {"epoch": 1, "lr": 1e-3, "loss": {"group": 1.5, "cross_entropy": 4.6, "total": 6.1}, "images_per_s": 10.0,
         "seconds": 5.0},
        {"epoch": 2, "lr": 9e-4, "loss": {"group": 1.3, "cross_entropy": 4.4, "total": 5.7}, "images_per_s": 10.0,
         "seconds": 5.0, "metrics": {"mAP": 0.3, "mINP": 0.1, "rank1": 0.5}},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert vis.read_training_log(log) == records
    assert _png_shape(vis.plot_training_curves(log, tmp_path / "curves.png")) == (360, 1200, 3)
    no_metrics = tmp_path / "plain.jsonl"
    no_metrics.write_text(json.dumps(records[0]) + "\n")
    assert _png_shape(vis.plot_training_curves(no_metrics, tmp_path / "plain.png")) == (360, 1200, 3)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n" + json.dumps({"epoch": 2, "loss": {}}) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: missing key 'lr'"):
        vis.read_training_log(broken)
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not a JSON object"):
        vis.read_training_log(broken)


def test_palette_png_is_smaller_and_keeps_the_size(case, tmp_path):
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=5)
    rng = np.random.default_rng(0)
    image[:, :, :] = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255)  # photo-like noise
    lossless = vis.save_image(image, tmp_path / "full.png")
    palette = vis.save_image(image, tmp_path / "small.png", colors=64)
    read = cv2.imread(str(palette))
    assert read.shape == image.shape
    assert len(np.unique(read.reshape(-1, 3), axis=0)) <= 64
    assert palette.stat().st_size < lossless.stat().st_size
    with pytest.raises(ValueError, match="colors=1"):
        vis.save_image(image, tmp_path / "x.png", colors=1)


def test_drawn_ap_is_evaluate_rank_all_ap_with_junk_and_distractors():
    """The AP of every drawn rank list is the evaluation protocol's (rank.py), junk (-1) left out by both."""
    rng = np.random.default_rng(5)
    num_q, num_g = 15, 90
    q_pids = rng.integers(1, 7, num_q)
    q_pids[0] = vis.JUNK_PID  # a query of unknown identity
    g_pids = rng.choice([vis.JUNK_PID, vis.JUNK_PID, 0, 0, 0, 1, 2, 3, 4, 5, 6], num_g)  # junk and distractors (0)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    distmat = rng.integers(0, 20, (num_q, num_g)).astype(np.float32)  # many exact ties
    distmat -= 5 * (q_pids[:, None] == g_pids[None, :])
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=5, junk_pid=vis.JUNK_PID)
    drawn = np.array([average_precision(vis.ranked_gallery(distmat[i], q_pids[i], q_camids[i], g_pids, g_camids)[1])
                      for i in range(num_q)])
    assert np.isnan(drawn[0]) and 5 < np.count_nonzero(~np.isnan(drawn)) < num_q
    np.testing.assert_allclose(result.all_AP, drawn, rtol=1e-12, equal_nan=True)
    ap = query_average_precision(distmat, q_pids, g_pids, q_camids, g_camids, junk_pid=vis.JUNK_PID)
    np.testing.assert_array_equal(ap, result.all_AP)
    # the drawn lists leave junk out and keep distractors
    i = int(np.flatnonzero(~np.isnan(drawn))[0])
    order, matches = vis.ranked_gallery(distmat[i], q_pids[i], q_camids[i], g_pids, g_camids)
    assert np.flatnonzero(g_pids[order] == vis.JUNK_PID).size == 0 and (g_pids[order] == 0).any()


def test_rank_lists_show_the_first_hit_the_metrics_count() -> None:
    """ranked_gallery and evaluate_rank share the protocol: junk (pid -1) and same-camera items out."""
    from reid.evaluation import evaluate_rank

    rng = np.random.default_rng(4)
    num_q, num_g = 30, 50
    dist = rng.integers(0, 10, size=(num_q, num_g)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 6, num_q), rng.integers(-1, 6, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    got = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5).first_hit_rank
    for i in range(num_q):
        order, matches = vis.ranked_gallery(dist[i], q_pids[i], q_cams[i], g_pids, g_cams)
        assert (g_pids[order] != -1).all()
        assert got[i] == (int(np.argmax(matches)) + 1 if matches.any() else 0)


# --------------------------------------------------------------------------- atomic writes


def _fail_writes_midway(monkeypatch, fail=lambda path: True):
    """Make ``reid.io.atomic_write`` (and visualization's name for it) write half of a file's bytes
    into its temporary file and then fail, for the paths ``fail`` picks. Returns the names of the
    temporary files seen half-written (the failure really happened mid-write)."""
    real = reid_io.atomic_write
    seen = []

    def atomic_write(path, write):
        if not fail(Path(path)):
            return real(path, write)

        def half_then_fail(handle):
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            handle.write(data[:len(data) // 2])
            handle.flush()
            seen.extend(p.name for p in Path(path).parent.glob(f".{Path(path).name}.*.tmp") if p.stat().st_size)
            raise OSError(f"disk full while writing {path} (test)")

        return real(path, half_then_fail)

    monkeypatch.setattr(reid_io, "atomic_write", atomic_write)
    monkeypatch.setattr(vis, "atomic_write", atomic_write)
    return seen


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_write_failing_midway_leaves_no_partial_file(case, tmp_path, monkeypatch):
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=3)
    old = vis.save_image(image[:, ::-1].copy(), tmp_path / "keep" / "old.png")
    old_bytes = old.read_bytes()
    seen = _fail_writes_midway(monkeypatch)
    out = tmp_path / "out"
    for write, name in ((lambda p: vis.save_image(image, p), "row.png"),
                        (lambda p: vis.save_image(image, p, colors=32), "palette.png"),
                        (lambda p: vis.plot_cmc({"d": np.linspace(0.5, 1, 10)}, p), "cmc.png")):
        with pytest.raises(OSError, match="disk full"):
            write(out / name)
        assert not (out / name).exists()
    assert len(seen) == 3 and all(name.endswith(".tmp") for name in seen)
    assert _leftovers(out) == []  # neither the files nor their temporaries
    with pytest.raises(OSError, match="disk full"):  # replacing a file: the old one stays whole
        vis.save_image(image, old)
    assert old.read_bytes() == old_bytes and _leftovers(old.parent) == ["old.png"]


def test_rank_list_page_failing_midway_leaves_the_pngs_and_no_page(tmp_path, monkeypatch):
    distmat, query, gallery = _problem_with_images(tmp_path)
    _fail_writes_midway(monkeypatch, fail=lambda path: path.suffix == ".html")
    out = tmp_path / "lists"
    with pytest.raises(OSError, match="disk full"):
        vis.save_rank_lists(distmat, query, gallery, out, query_indices=[0, 2], top_k=2, html=True)
    assert _leftovers(out) == ["query_00000.png", "query_00002.png"]
    assert cv2.imread(str(out / "query_00002.png")).shape[:2] == expected_size(2)


def test_an_image_the_encoder_refuses_is_not_written(case, tmp_path, monkeypatch):
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=2)
    monkeypatch.setattr(vis.cv2, "imencode", lambda *args: (False, None))
    with pytest.raises(OSError, match=r"cannot write image .*row\.png"):
        vis.save_image(image, tmp_path / "out" / "row.png")
    assert _leftovers(tmp_path / "out") == []
    monkeypatch.undo()
    with pytest.raises(OSError, match=r"cannot encode '\.xyz'"):
        vis.save_image(image, tmp_path / "out" / "row.xyz")
    assert _leftovers(tmp_path / "out") == []


def test_saved_files_get_a_plain_open_mode(case, tmp_path):
    """atomic_write's files are readable like any other (not mkstemp's private 0600)."""
    with open(tmp_path / "plain.txt", "w"):
        pass
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    image = vis.compose_rank_list(case["distances"], case["query"], case["gallery"], top_k=2)
    for path in (vis.save_image(image, tmp_path / "a.png"), vis.save_image(image, tmp_path / "b.png", colors=16),
                 vis.plot_cmc({"d": np.linspace(0.5, 1, 5)}, tmp_path / "c.png")):
        assert os.stat(path).st_mode & 0o777 == expected
