"""Rank lists and plots: pure functions over distance matrices, labels and image paths.

Rank lists follow the evaluation protocol (``reid.evaluation.protocol``, the Market-1501
protocol shared by the field's code): the gallery is ordered by ascending distance, ties by
gallery index (a stable sort), and gallery items with the query's pid AND camera are left out,
so the ranks shown are the ranks the metrics count. Junk (pid -1) is left out too, the
protocol's one junk policy; the AP shown is computed on the same list. A query whose pid is
unknown (-1, e.g. features of a user's own crops) is drawn with neutral borders and no AP.

Images are composed with OpenCV/numpy so that every pixel is where the layout says (the tests
check border colours pixel by pixel); plots use matplotlib's object-oriented API on the Agg
canvas, so nothing here touches pyplot's global state or needs a display. Every file is encoded
in memory first and written with ``reid.io.atomic_write``: a reader (a browser showing the
report, a docs build) sees the old file or the new one, never half an image, and a failure
leaves neither a partial file nor a temporary one.
"""

from __future__ import annotations

import html as html_lib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data.transforms import read_image
from .evaluation.arrays import ArrayLike, as_labels, as_numpy
from .evaluation.histograms import DEFAULT_BINS, PairHistograms, value_histograms
from .evaluation.protocol import JUNK_PID, Labels, block_pair_masks, check_distmat, list_mask
from .evaluation.rank import average_precision, query_average_precision
from .io import atomic_write, atomic_write_text

# (paths, pids, camids), row-aligned: one entry per query or gallery image.
Labelled = tuple[Sequence[str], ArrayLike, ArrayLike]

# Colours are RGB.
MATCH_COLOR = (0, 200, 0)  # green: true match
NON_MATCH_COLOR = (220, 0, 0)  # red: wrong identity
QUERY_COLOR = (40, 90, 200)  # blue: the query
UNKNOWN_COLOR = (150, 150, 150)  # grey: no ground truth (query pid -1)
BACKGROUND_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class RankListLayout:
    """Pixel layout of one rank-list row (defaults are what the tests compute sizes from).

    Each image is resized to ``cell_height x cell_width`` and framed by a ``border``-pixel
    coloured border (a "tile"); ``text_lines`` lines of ``line_height`` pixels sit under each
    tile after ``text_gap`` pixels. The query tile comes first, ``query_gap`` pixels before the
    gallery tiles, which are ``gap`` pixels apart; ``margin`` pixels surround everything::

        height = 2 * margin + (cell_height + 2 * border) + text_gap + text_lines * line_height
        width  = 2 * margin + (top_k + 1) * (cell_width + 2 * border) + query_gap + (top_k - 1) * gap
    """

    cell_height: int = 128
    cell_width: int = 64
    border: int = 4
    gap: int = 4
    query_gap: int = 16
    margin: int = 8
    text_gap: int = 3
    line_height: int = 13
    text_lines: int = 3

    @property
    def tile_height(self) -> int:
        return self.cell_height + 2 * self.border

    @property
    def tile_width(self) -> int:
        return self.cell_width + 2 * self.border

    def size(self, top_k: int) -> tuple[int, int]:
        """(height, width) of a row with ``top_k`` gallery columns."""
        height = 2 * self.margin + self.tile_height + self.text_gap + self.text_lines * self.line_height
        width = 2 * self.margin + (top_k + 1) * self.tile_width + self.query_gap + max(top_k - 1, 0) * self.gap
        return height, width

    def tile_left(self, column: int) -> int:
        """x of the left edge of a tile; column 0 is the query, 1..top_k the gallery ranks."""
        if column == 0:
            return self.margin
        return self.margin + self.tile_width + self.query_gap + (column - 1) * (self.tile_width + self.gap)

    @classmethod
    def for_cell(cls, cell_size: tuple[int, int]) -> "RankListLayout":
        """The default layout around ``(height, width)`` cells, text scaled with the cell width."""
        height, width = (int(v) for v in cell_size)
        if height < 8 or width < 8:
            raise ValueError(f"cell_size={cell_size}: expected (height, width) of at least 8 pixels each")
        scale = width / cls.cell_width
        return cls(cell_height=height, cell_width=width, line_height=max(8, round(cls.line_height * scale)))


DEFAULT_LAYOUT = RankListLayout()


# --------------------------------------------------------------------------- ranking


def _check_labelled(items: Labelled, name: str, length: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    try:
        paths, pids, camids = items
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a (paths, pids, camids) tuple") from None
    paths = [os.fspath(p) for p in paths]
    if len(paths) != length:
        raise ValueError(f"{name}: expected {length} paths (one per distance matrix row/column), got {len(paths)}")
    expected = "one per distance matrix row/column"
    return paths, as_labels(pids, f"{name} pids", length, expected), as_labels(camids, f"{name} camids", length, expected)


def ranked_gallery(distances: ArrayLike, query_pid: int, query_camid: int, gallery_pids: ArrayLike,
                   gallery_camids: ArrayLike, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The gallery in rank order as the protocol counts it, and which items are true matches.

    Args:
        distances: one query's distances to the gallery (length G); smaller = more similar.
        query_pid, query_camid: the query's labels; a pid of -1 means unknown (nothing is
            left out and no item is a match).
        gallery_pids, gallery_camids: length-G labels.
        top_k: keep the first ``top_k`` ranks (all when None).

    Returns:
        (indices into the gallery, boolean matches), rank order. Ties are broken by gallery
        index, as in ``evaluate_rank``; same-pid same-camera items and junk (pid -1) are left out.
    """
    row = as_numpy(distances, "distances", 1).astype(np.float32)
    g_pids = as_labels(gallery_pids, "gallery_pids", row.shape[0], "one per distance")
    g_camids = as_labels(gallery_camids, "gallery_camids", row.shape[0], "one per distance")
    order = np.argsort(row, kind="stable")
    order = order[list_mask(query_pid, query_camid, g_pids, g_camids)[order]]
    if top_k is not None:
        order = order[:top_k]
    matches = (g_pids[order] == query_pid) & (query_pid != JUNK_PID)
    return order, matches


def select_queries(num_queries: int, *, indices: Sequence[int] | None = None, count: int | None = None,
                   worst: bool = False, ap: ArrayLike | None = None, seed: int = 0) -> np.ndarray:
    """Which queries to draw: the given ``indices``, the ``count`` worst by AP, or ``count`` random ones.

    Worst: lowest AP first (ties by index); queries without a true match (NaN AP) are skipped.
    Random: drawn without replacement with ``numpy.random.default_rng(seed)``, returned sorted.
    """
    if indices is not None:
        if worst:
            raise ValueError("select_queries: give either indices or worst=True, not both")
        chosen = np.asarray(list(indices), dtype=np.int64)
        bad = [int(i) for i in chosen if not 0 <= i < num_queries]
        if bad:
            raise IndexError(f"query index {bad[0]} out of range: expected 0..{num_queries - 1}")
        return chosen
    if count is None or count < 1:
        raise ValueError(f"count={count!r}: expected a positive number of queries")
    if worst:
        if ap is None:
            raise ValueError("select_queries: worst=True needs the per-query ap "
                             "(see reid.evaluation.rank.query_average_precision)")
        ap = as_numpy(ap, "ap", 1).astype(np.float64)
        if ap.shape[0] != num_queries:
            raise ValueError(f"ap: expected {num_queries} values (one per query), got {ap.shape[0]}")
        valid = np.flatnonzero(~np.isnan(ap))
        return valid[np.argsort(ap[valid], kind="stable")][:count]
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_queries, size=min(count, num_queries), replace=False))


# --------------------------------------------------------------------------- drawing


def _put_lines(image: np.ndarray, lines: Sequence[str], left: int, top: int, width: int,
               layout: RankListLayout) -> None:
    """Centre each line in its ``line_height`` band, shrinking the font until it fits ``width``."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    base = 0.38 * layout.line_height / RankListLayout.line_height
    for i, text in enumerate(lines):
        scale = base
        (w, h), _ = cv2.getTextSize(text, font, scale, 1)
        if w > width:
            scale *= width / w
            (w, h), _ = cv2.getTextSize(text, font, scale, 1)
        x = left + max((width - w) // 2, 0)
        y = top + i * layout.line_height + (layout.line_height + h) // 2
        cv2.putText(image, text, (x, y), font, scale, TEXT_COLOR, 1, cv2.LINE_AA)


def _draw_tile(canvas: np.ndarray, image: np.ndarray, column: int, color: tuple[int, int, int],
               lines: Sequence[str], layout: RankListLayout) -> None:
    top, left = layout.margin, layout.tile_left(column)
    b = layout.border
    canvas[top:top + layout.tile_height, left:left + layout.tile_width] = color
    resized = cv2.resize(image, (layout.cell_width, layout.cell_height), interpolation=cv2.INTER_AREA)
    canvas[top + b:top + b + layout.cell_height, left + b:left + b + layout.cell_width] = resized
    _put_lines(canvas, lines, left, top + layout.tile_height + layout.text_gap, layout.tile_width, layout)


def _format_distance(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.3g}"


def _format_ap(ap: float | None) -> str:
    return "AP n/a" if ap is None or math.isnan(ap) else f"AP {100 * ap:.1f}%"


def compose_rank_list(distances: ArrayLike, query: tuple[str, int, int], gallery: Labelled, *, top_k: int = 10,
                      ap: float | None = None, cell_size: tuple[int, int] | None = None,
                      cameras: bool = True) -> np.ndarray:
    """One row: the query, then its ``top_k`` gallery images, as an H x W x 3 uint8 RGB array.

    Args:
        distances: the query's distances to the gallery (length G).
        query: (path, pid, camid) of the query.
        gallery: (paths, pids, camids), G each.
        top_k: gallery columns; fewer valid items than that leave blank columns (rows of a
            grid keep one width).
        ap: the AP to print under the query; computed from ``distances`` when None.
        cell_size: (height, width) each image is resized to (default 128 x 64).
        cameras: False for a retrieval protocol, whose camids only encode which items a query
            leaves out (leave-one-out: the item's own index): the labels then read "class N".

    Borders: ``QUERY_COLOR`` for the query, ``MATCH_COLOR`` / ``NON_MATCH_COLOR`` for true and
    wrong matches (``UNKNOWN_COLOR`` when the query's pid is -1). Under the query: pid, camera
    and AP; under each gallery image: rank, distance, pid and camera. Cameras are printed
    1-based as in the file names (camid 0 = c1).
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected a positive number of gallery columns")
    layout = DEFAULT_LAYOUT if cell_size is None else RankListLayout.for_cell(cell_size)
    row = as_numpy(distances, "distances", 1)
    g_paths, g_pids, g_camids = _check_labelled(gallery, "gallery", row.shape[0])
    q_path, q_pid, q_camid = os.fspath(query[0]), int(query[1]), int(query[2])
    order, matches = ranked_gallery(row, q_pid, q_camid, g_pids, g_camids)
    if ap is None:
        ap = average_precision(matches)

    canvas = np.full((*layout.size(top_k), 3), BACKGROUND_COLOR, dtype=np.uint8)
    _draw_tile(canvas, read_image(q_path), 0, QUERY_COLOR, ["query", _label(q_pid, q_camid, cameras), _format_ap(ap)],
               layout)
    for rank, (g, is_match) in enumerate(zip(order[:top_k].tolist(), matches[:top_k].tolist()), start=1):
        color = UNKNOWN_COLOR if q_pid == JUNK_PID else (MATCH_COLOR if is_match else NON_MATCH_COLOR)
        lines = [f"#{rank}", _format_distance(float(row[g])), _label(int(g_pids[g]), int(g_camids[g]), cameras)]
        _draw_tile(canvas, read_image(g_paths[g]), rank, color, lines, layout)
    return canvas


def _label(pid: int, camid: int, cameras: bool) -> str:
    """"pid 12 c3" (cameras 1-based, as in the file names), or "class 12" without cameras."""
    if not cameras:
        return f"class {pid}"
    return f"{'pid ?' if pid == JUNK_PID else f'pid {pid}'} c{camid + 1}"


def save_image(image: np.ndarray, path: str | Path, *, colors: int | None = None) -> Path:
    """Write an RGB uint8 image (format by extension) atomically; OSError naming the file if it
    cannot be encoded.

    ``colors``: write a palette PNG of at most that many colours (2..256, median cut, no
    dithering) instead of a lossless one, about a third of the size: for images in docs.
    """
    path = Path(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{path}: expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    data = _encode_image(image, path) if colors is None else _encode_palette_png(image, path, colors)
    return _write_bytes(path, data)


def _encode_image(image: np.ndarray, path: Path) -> bytes:
    """The file's bytes in the format of ``path``'s extension (OpenCV's encoders)."""
    # Maximum PNG compression: lossless either way, and these files end up in docs and reports.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if path.suffix.lower() == ".png" else []
    try:
        ok, encoded = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    except cv2.error:  # no encoder for the extension
        ok = False
    if not ok:
        raise OSError(f"cannot write image {path} (OpenCV cannot encode {path.suffix or 'a name without extension'!r};"
                      " use .png)")
    return encoded.tobytes()


def _encode_palette_png(image: np.ndarray, path: Path, colors: int) -> bytes:
    from PIL import Image  # Pillow comes with matplotlib

    if not 2 <= colors <= 256:
        raise ValueError(f"colors={colors}: a palette PNG holds 2 to 256 colours")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: a palette image is written as PNG; expected a .png path")
    quantized = Image.fromarray(image).quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    quantized.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> Path:
    """``data`` into ``path`` through ``reid.io.atomic_write`` (the folder is created if missing)."""
    return atomic_write(path, lambda handle: handle.write(data))


def save_rank_lists(distmat: ArrayLike, query: Labelled, gallery: Labelled, out_dir: str | Path, *,
                    query_indices: Sequence[int] | None = None, num_random: int | None = None,
                    worst: int | None = None, top_k: int = 10, grid: bool = False, html: bool = False,
                    cell_size: tuple[int, int] | None = None, seed: int = 0,
                    png_colors: int | None = None, cameras: bool = True) -> list[Path]:
    """Draw rank lists of chosen, random or worst queries and write them as PNGs under ``out_dir``.

    Exactly one of ``query_indices`` (these queries), ``num_random`` (that many random ones,
    seeded) or ``worst`` (that many lowest-AP ones) selects the queries; with none of them, 10
    random queries. One PNG per query (``query_<index>.png``), or with ``grid`` one
    ``rank_lists.png`` stacking the rows in selection order. ``html`` also writes
    ``index.html`` listing the PNGs with each query's pid, camera and AP. ``png_colors``
    writes palette PNGs of that many colours (see ``save_image``). ``cameras``: see
    ``compose_rank_list`` (False: no camera in the labels or the page).

    Returns:
        The PNG paths written.
    """
    dist = as_numpy(distmat, "distmat", 2)
    num_q, num_g = dist.shape
    q_paths, q_pids, q_camids = _check_labelled(query, "query", num_q)
    gallery = _check_labelled(gallery, "gallery", num_g)
    given = [name for name, value in (("query_indices", query_indices), ("num_random", num_random),
                                      ("worst", worst)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"save_rank_lists: give one of query_indices, num_random, worst; got {', '.join(given)}")
    ap = query_average_precision(dist, q_pids, gallery[1], q_camids, gallery[2])
    if worst is not None:
        chosen = select_queries(num_q, count=worst, worst=True, ap=ap)
    elif query_indices is not None:
        chosen = select_queries(num_q, indices=query_indices)
    else:
        chosen = select_queries(num_q, count=10 if num_random is None else num_random, seed=seed)
    if len(chosen) == 0:
        raise ValueError("save_rank_lists: no query to draw (with worst=..., no query has a true match)")

    out_dir = Path(out_dir)
    rows = [compose_rank_list(dist[i], (q_paths[i], q_pids[i], q_camids[i]), gallery, top_k=top_k,
                              ap=float(ap[i]), cell_size=cell_size, cameras=cameras) for i in chosen.tolist()]
    if grid:
        written = [save_image(np.concatenate(rows, axis=0), out_dir / "rank_lists.png", colors=png_colors)]
        entries = [(written[0], i) for i in chosen.tolist()]
    else:
        written = [save_image(image, out_dir / f"query_{i:05d}.png", colors=png_colors)
                   for image, i in zip(rows, chosen.tolist())]
        entries = list(zip(written, chosen.tolist()))
    if html:
        _write_html(out_dir / "index.html", entries, q_paths, q_pids, q_camids if cameras else None, ap, grid=grid)
    return written


def _write_html(path: Path, entries: list[tuple[Path, int]], q_paths: list[str], q_pids: np.ndarray,
                q_camids: np.ndarray | None, ap: np.ndarray, *, grid: bool) -> None:
    """A static page, written atomically: a table of queries (index, pid, camera, AP, file) and the
    images; without ``q_camids`` (a retrieval protocol) a class column and no camera."""
    rows = []
    for png, i in entries:
        camera = "" if q_camids is None else f"<td>c{q_camids[i] + 1}</td>"
        rows.append(f"<tr><td>{i}</td><td>{q_pids[i]}</td>{camera}"
                    f"<td>{html_lib.escape(_format_ap(float(ap[i])))}</td><td>{html_lib.escape(q_paths[i])}</td>"
                    f"<td><a href=\"{html_lib.escape(png.name)}\">{html_lib.escape(png.name)}</a></td></tr>")
    images = dict.fromkeys(png.name for png, _ in entries)  # one <img> per file (a grid is one file)
    left_out = ("same-pid same-camera gallery images are left out" if q_camids is not None
                else "a query leaves out only what its protocol excludes (leave-one-out: itself)")
    header = "<th>pid</th><th>camera</th>" if q_camids is not None else "<th>class</th>"
    body = "\n".join(f'<p><img src="{html_lib.escape(name)}" alt="{html_lib.escape(name)}"></p>' for name in images)
    atomic_write_text(
        path,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rank lists</title>\n"
        "<style>body{font-family:sans-serif} td,th{padding:2px 8px} img{image-rendering:pixelated}</style>"
        "</head><body>\n<h1>Rank lists</h1>\n"
        f"<p>Green border: true match; red: wrong identity; {left_out} "
        f"(evaluation protocol).{' One grid image, rows in table order.' if grid else ''}</p>\n"
        f"<table><tr><th>query</th>{header}<th>AP</th><th>image</th><th>rank list</th></tr>\n"
        + "\n".join(rows) + "\n</table>\n" + body + "\n</body></html>\n"
    )


# --------------------------------------------------------------------------- plots


def _save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` in memory (format by extension, PNG without one) and write it atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)  # attaches itself to the figure: rendering without pyplot or a display
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:].lower() or "png")
    return _write_bytes(path, buffer.getvalue())


def plot_cmc(curves: Mapping[str, ArrayLike], path: str | Path, *, max_rank: int = 20,
             figsize: tuple[float, float] = (5.0, 3.6), dpi: int = 100, title: str = "CMC") -> Path:
    """Several CMC curves (name -> cmc, ``cmc[k]`` = share with a hit within rank k+1) on one plot.

    The image is exactly ``figsize * dpi`` pixels. Each legend entry shows the curve's Rank-1.
    """
    if not curves:
        raise ValueError("plot_cmc: expected at least one named CMC curve")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    rank1 = []
    for name, cmc in curves.items():
        values = as_numpy(cmc, f"CMC curve {name!r}", 1)[:max_rank].astype(np.float64)
        if values.size == 0:
            raise ValueError(f"CMC curve {name!r} is empty; expected at least one rank")
        rank1.append(values[0])
        ranks = np.arange(1, values.size + 1)
        ax.plot(ranks, 100 * values, marker="o", markersize=3, label=f"{name} (Rank-1 {100 * values[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 101)  # the full scale: curves of different runs compare honestly
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    # Curves rise from their Rank-1: with every Rank-1 above 50% the lower right is empty.
    ax.legend(loc="lower right" if min(rank1) >= 0.5 else "best", fontsize="small")
    return _save_figure(fig, path)


def split_distances(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                    g_camids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(match distances, non-match distances) under the protocol's exclusions.

    Match: same pid, other camera. Non-match: another pid. Left out: same pid and camera,
    gallery junk (pid -1) and queries of unknown pid (-1).
    """
    dist = check_distmat(distmat)
    labels = Labels.of(*dist.shape, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = dist.shape
    matches, non_matches = [], []
    rows = max(1, (1 << 22) // max(num_g, 1))  # bounded temporaries on large galleries
    for s in range(0, num_q, rows):
        positive, negative = block_pair_masks(labels, slice(s, s + rows))
        block = dist[s:s + rows]
        matches.append(block[positive])
        non_matches.append(block[negative])
    return np.concatenate(matches), np.concatenate(non_matches)


def plot_distance_histogram(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                            g_camids: ArrayLike, path: str | Path, *, bins: int = DEFAULT_BINS,
                            figsize: tuple[float, float] = (5.0, 3.6), dpi: int = 100,
                            title: str = "query-gallery distances") -> Path:
    """Histograms of match and non-match distances of a matrix (see ``split_distances``), each
    normalised to unit area: non-matches outnumber matches by orders of magnitude."""
    matches, non_matches = split_distances(distmat, q_pids, g_pids, q_camids, g_camids)
    return plot_pair_histograms(value_histograms(matches, non_matches, bins), path, figsize=figsize, dpi=dpi,
                                title=title)


def plot_pair_histograms(histograms: PairHistograms, path: str | Path, *, figsize: tuple[float, float] = (5.0, 3.6),
                         dpi: int = 100, title: str = "query-gallery distances") -> Path:
    """The match and non-match histograms of ``reid.evaluation.histograms`` (binned already, from a
    matrix or streamed from features), each normalised to unit area, with each kind's count and mean."""
    if histograms.matches.size == 0 and histograms.non_matches.size == 0:
        raise ValueError("plot_pair_histograms: no match or non-match pair left after the exclusions")
    edges = histograms.edges
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    for name, counts, color in (("match", histograms.matches, np.array(MATCH_COLOR) / 255),
                                ("non-match", histograms.non_matches, np.array(NON_MATCH_COLOR) / 255)):
        if counts.size:
            ax.stairs(counts.density(edges), edges, fill=True, alpha=0.55, color=color,
                      label=f"{name} (n={counts.size:,}, mean {counts.mean:.3f})")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return _save_figure(fig, path)


def read_training_log(path: str | Path) -> list[dict]:
    """The per-epoch records of a ``log.jsonl`` written by ``reid.engine.fit``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        for key in ("epoch", "lr", "loss"):
            if key not in record:
                raise ValueError(f"{path}:{number}: missing key {key!r}; expected epoch, lr, loss (as fit writes)")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no epoch records")
    return records


def plot_training_curves(log_path: str | Path, path: str | Path, *, figsize: tuple[float, float] = (12.0, 3.6),
                         dpi: int = 100) -> Path:
    """Loss terms, learning rate and (when evaluated) mAP / Rank-1 per epoch from ``log.jsonl``."""
    records = read_training_log(log_path)
    epochs = np.array([r["epoch"] for r in records])
    evaluated = [r for r in records if "metrics" in r]
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 3 if evaluated else 2)

    ax = axes[0]
    terms = list(dict.fromkeys(k for r in records for k in r["loss"]))
    for term in terms:
        values = [r["loss"].get(term, np.nan) for r in records]
        style = {"color": "black", "linestyle": "--"} if term == "total" else {}
        ax.plot(epochs, values, marker="o", markersize=3, label=term, **style)
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)

    ax = axes[1]
    ax.plot(epochs, [r["lr"] for r in records], marker="o", markersize=3)
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(True, alpha=0.3)

    if evaluated:
        ax = axes[2]
        eval_epochs = [r["epoch"] for r in evaluated]
        for key, label in (("mAP", "mAP"), ("rank1", "Rank-1")):
            values = [100 * r["metrics"][key] for r in evaluated if key in r["metrics"]]
            if len(values) == len(evaluated):
                ax.plot(eval_epochs, values, marker="o", markersize=4, label=label)
        ax.set_title("evaluation (%)")
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save_figure(fig, path)


def plot_roc(fpr: ArrayLike, tpr: ArrayLike, path: str | Path, *,
             points: Mapping[str, tuple[float, float]] | None = None, min_fpr: float | None = None,
             figsize: tuple[float, float] = (5.0, 3.6), dpi: int = 100,
             title: str = "ROC (query-gallery pairs)") -> Path:
    """A ROC curve (``reid.evaluation.verification.roc_curve``'s ``fpr, tpr``) on a log FPR axis.

    The curve is drawn as the polyline through its points; points at FPR 0 (and anything left
    of ``min_fpr``) sit on the left edge, ``min_fpr`` (default: half the smallest positive FPR
    among the curve and the ``points``). ``points`` maps a legend label to an ``(fpr, tpr)``
    marker, e.g. the operating points at fixed FPRs and the EER point.
    """
    x = as_numpy(fpr, "fpr", 1).astype(np.float64)
    y = as_numpy(tpr, "tpr", 1).astype(np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"plot_roc: expected fpr and tpr of one non-zero length, got {x.shape} and {y.shape}")
    points = dict(points or {})
    if min_fpr is None:
        positive = [float(v) for v in (*x[x > 0].min(initial=1.0, keepdims=True), *(p[0] for p in points.values()))
                    if v > 0]
        min_fpr = min(positive) / 2 if positive else 1e-6
    if not 0 < min_fpr < 1:
        raise ValueError(f"min_fpr={min_fpr!r}: expected a value in (0, 1)")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.clip(x, min_fpr, 1.0), y, color="black", linewidth=1.2, label="ROC")
    markers = "osD^v<>ph*"
    for number, (label, (px, py)) in enumerate(points.items()):
        ax.plot([max(float(px), min_fpr)], [float(py)], linestyle="none", marker=markers[number % len(markers)],
                markersize=6, label=label)
    ax.set_xscale("log")
    ax.set_xlim(min_fpr, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false positive rate (log scale)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize="x-small")
    return _save_figure(fig, path)
