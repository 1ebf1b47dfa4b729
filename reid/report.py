"""One self-contained HTML evaluation report: metrics, curves, a per-query table and rank lists.

:func:`write_report` is a pure function of the evaluation's arrays (the query and gallery
feature sets with their labels and paths, the options the metrics were computed with, the
metrics themselves): no config, no model. It computes everything the report shows once, into one
:class:`ReportData` (:func:`evaluate_for_report`), then writes each part from that object alone,
every file atomically (``reid.io``), into one folder:

* ``index.html`` (:func:`write_page`): plain HTML with inline CSS and a few lines of inline
  JavaScript, no network (no CDN, no external font): it opens from ``file://``. Every text taken
  from the data (file names, titles, run names) is escaped.
* ``metrics.json`` (:func:`write_metrics`): the metrics given plus a ``"verification"`` block
  (AUC, EER, TPR and threshold at fixed FPRs over the query x gallery pairs).
* the PNGs the page shows, beside it (relative ``src``): ``cmc.png``, ``roc.png``,
  ``distances.png``, ``training_curves.png`` (:func:`write_figures`) and
  ``rank_list_<query>.png`` (:func:`write_rank_lists`).

Protocols (``"reid"``, ``"leave_one_out"``, ``"query_gallery"``) and what each leaves out of a
query's list are ``reid.evaluation.protocol``'s: every number and every rank list is computed
with its ``protocol_camids``. Rank lists of the retrieval protocols name the class and no
camera (their camera ids only encode what is left out).

Per query (table and rank lists): AP, INP and the rank of the first true match are
``evaluate_rank``'s ``all_AP`` / ``all_INP`` / ``first_hit_rank`` (the rank lists draw the same
stable (distance, gallery index) order and exclusions). Queries without a true match after the
exclusions are left out of the table, as from every metric, and counted in a note.

At any size: the query x gallery distance matrix is never held. The numbers come straight from
the features, equal to those of the dense matrix to the last bit, each pass over the gallery a
block of query rows at a time within ``memory_mb``: the ranking (``rank.evaluate_features``), the
re-ranking (``rerank.evaluate_reranked``), the verification metrics and ROC and the distance
histograms (``verification.protocol_pairs``, ``histograms.pair_histograms``); only the drawn
queries' rows of canonical distances are computed whole, for their rank lists.
"""

from __future__ import annotations

import html
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import visualization as vis
from .evaluation.arrays import as_labels
from .evaluation.distance import FeatureDistances
from .evaluation.evaluator import metric_columns, postprocess_pair, verification_summary
from .evaluation.histograms import PairHistograms, pair_histograms
from .evaluation.protocol import check_protocol, protocol_camids
from .evaluation.rank import RankResult, evaluate_features
from .evaluation.rerank import evaluate_reranked
from .evaluation.verification import (DEFAULT_FPRS, VerificationResult, check_fprs, protocol_pairs,
                                      verification_of_pairs)
from .io import atomic_write_json, atomic_write_text


_PROTOCOL_TEXT = {
    "reid": "camera-aware re-ID (Market-1501 protocol): gallery images of the query's identity taken by the "
            "query's camera are left out",
    "leave_one_out": "leave-one-out retrieval: every image queries all the others (only the query itself is "
                     "left out)",
    "query_gallery": "query-gallery retrieval: every gallery image is ranked, nothing is left out",
}
_CMC_RANKS = 50  # length of the CMC curves computed (20 are plotted)
_FIGURE_CAPTIONS = {
    "cmc.png": "CMC: share of queries with a true match within the first k ranks.",
    "roc.png": "ROC of the query x gallery pairs (a pair is accepted when its distance is at most the threshold), "
               "with the operating points of the table.",
    "distances.png": "Distances of matching and non-matching pairs, each normalised to unit area.",
    "training_curves.png": "Training: losses, learning rate and evaluations per epoch.",
}


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class ReportData:
    """Everything the report shows, computed once by :func:`evaluate_for_report`; each file of the
    report is written from it alone (the page is ``_page(data)``).

    q_paths, q_pids, q_cams: the queries as given (the table shows the given camera).
    q_camids, g_camids: the protocol's camera ids (``protocol_camids``): every number and rank list
        is computed with them.
    result, reranked: ``evaluate_rank`` of the query x gallery distances and of the re-ranked
        distances (None without), computed from the features without the matrix.
    verification, histograms: of the protocol's pairs (the ROC is ``verification.roc``).
    metrics: the metrics given plus their ``"verification"`` block: ``metrics.json``.
    sections: the rank-list sections, (heading, query indices), in page order; a query is in one.
    rank_rows: each drawn query's float32 distances to the whole gallery (its row of the matrix).
    figures: (file name, caption) of the plots, in page order; ``notes``: why one is missing.
    training_log: the ``log.jsonl`` drawn as ``training_curves.png`` (None: not drawn).
    """

    title: str
    protocol: str
    metric_name: str
    top_k: int
    q_paths: tuple[str, ...] = field(repr=False)
    q_pids: np.ndarray = field(repr=False)
    q_cams: np.ndarray = field(repr=False)
    q_camids: np.ndarray = field(repr=False)
    g_paths: tuple[str, ...] = field(repr=False)
    g_pids: np.ndarray = field(repr=False)
    g_camids: np.ndarray = field(repr=False)
    result: RankResult
    reranked: RankResult | None
    verification: VerificationResult = field(repr=False)
    histograms: PairHistograms = field(repr=False)
    metrics: Mapping[str, Any]
    ablation: Mapping[str, Mapping[str, Any]] | None
    sections: tuple[tuple[str, tuple[int, ...]], ...]
    rank_rows: Mapping[int, np.ndarray] = field(repr=False)
    figures: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    training_log: Path | None

    @property
    def labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(q_pids, g_pids, q_camids, g_camids) under the protocol, as the metrics take them."""
        return self.q_pids, self.g_pids, self.q_camids, self.g_camids

    @property
    def cameras(self) -> bool:
        """Whether camera ids mean cameras (re-ID) rather than only what a query leaves out."""
        return self.protocol == "reid"

    @property
    def fprs(self) -> tuple[float, ...]:
        return tuple(self.verification.tpr_at_fpr)  # checked, as floats

    @property
    def drawn(self) -> dict[int, str]:
        """Query index -> its rank-list PNG, for every query of the sections."""
        return {i: f"rank_list_{i:05d}.png" for _, picks in self.sections for i in picks}

    @property
    def cmc_curves(self) -> dict[str, np.ndarray]:
        curves = {self.metric_name: self.result.cmc}
        if self.reranked is not None:
            curves[f"{self.metric_name} + re-ranking"] = self.reranked.cmc
        return curves


# --------------------------------------------------------------------------- inputs


def _labelled(items: Any, name: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(paths, pids, camids) of a FeatureSet, checked against its rows of features."""
    if not all(hasattr(items, attr) for attr in ("features", "paths", "pids", "camids")):
        raise TypeError(f"{name}: expected a FeatureSet (features, pids, camids, paths), got {type(items).__name__}")
    paths = tuple(os.fspath(p) for p in items.paths)
    if len(paths) != len(items.features):
        raise ValueError(f"{name}: {len(items.features)} rows of features but {len(paths)} paths; expected one "
                         "path per row")
    return (paths, as_labels(items.pids, f"{name} pids", len(paths), "one per path"),
            as_labels(items.camids, f"{name} camids", len(paths), "one per path"))


def _check_counts(**counts: Any) -> None:
    """top_k >= 1; the numbers of rank lists >= 0."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name == "top_k"):
            raise ValueError(f"{name}={value!r}: expected an integer >= {int(name == 'top_k')}")


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists (for JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _outside_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, from the caller of this function, of the first frame
    outside this module: a warning names the user's call, whichever public function it made."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _check_consistent(metrics: Mapping[str, Any], result: RankResult, what: str) -> None:
    """Warn when the metrics given are not those of the features and options given."""
    for key, value in (("mAP", result.mAP), ("rank1", float(result.cmc[0]))):
        given = metrics.get(key)
        if isinstance(given, (int, float)) and not math.isclose(float(given), value, rel_tol=1e-4, abs_tol=1e-5):
            warnings.warn(f"write_report: metrics{what}[{key!r}] = {given:.6f} but {'re-ranked ' if what else ''}"
                          f"distances of the features give {value:.6f}; are these the features and options the "
                          "metrics used?",
                          stacklevel=_outside_stacklevel())


def _reranked_result(features: tuple[np.ndarray, np.ndarray], labels: tuple, rerank: Mapping[str, Any] | None,
                     max_rank: int, metrics: Mapping[str, Any], memory_mb: float | None,
                     progress: bool | None) -> RankResult | None:
    """``evaluate_rank`` of the re-ranked distances (``rerank``: k1, k2, lambda_value, knn_backend; None: not
    evaluated), a block of rows at a time."""
    if rerank is None:
        return None
    result = evaluate_reranked(*features, *labels, **rerank, max_rank=max_rank, memory_mb=memory_mb,
                               progress=progress)
    if isinstance(metrics.get("rerank"), Mapping):
        _check_consistent(metrics["rerank"], result, "['rerank']")
    return result


def _rank_rows(features: tuple[np.ndarray, np.ndarray], metric: str,
               sections: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[int, np.ndarray]:
    """The canonical distances of the drawn queries to the whole gallery: exactly their rows of
    ``pairwise_distance`` (a distance depends on its two features alone), and only those rows."""
    drawn = sorted(i for _, picks in sections for i in picks)
    if not drawn:
        return {}
    rows = FeatureDistances(*features, metric).exact(np.array(drawn, dtype=np.int64)).cpu().numpy()
    return {i: row for i, row in zip(drawn, rows)}


def _sections(all_ap: np.ndarray, num_worst: int, num_best: int, num_random: int,
              seed: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The lowest-AP, highest-AP and random (``seed``) valid queries; a query is drawn once."""
    valid_idx = np.flatnonzero(~np.isnan(all_ap))
    ap_valid = all_ap[valid_idx]
    worst = valid_idx[np.argsort(ap_valid, kind="stable")][:num_worst].tolist()
    taken = set(worst)
    best = [i for i in valid_idx[np.lexsort((valid_idx, -ap_valid))][:num_worst + num_best].tolist()
            if i not in taken][:num_best]
    pool = np.setdiff1d(valid_idx, np.array(worst + best, dtype=np.int64))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(num_random, pool.size), replace=False) if pool.size else pool
    random_picks = np.sort(chosen).tolist()
    return ((f"Lowest AP ({len(worst)})", tuple(worst)), (f"Highest AP ({len(best)})", tuple(best)),
            (f"Random ({len(random_picks)}, seed {seed})", tuple(random_picks)))


def _figures(training_log: str | os.PathLike | None) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...],
                                                             Path | None]:
    """(figures, notes, the training log to draw): the training curves only from a readable log."""
    names, notes, log_path = ["cmc.png", "roc.png", "distances.png"], [], None
    if training_log is not None:
        path = Path(training_log)
        if not path.is_file():
            notes.append(f"training curves not drawn: {path} not found")
        else:
            try:
                vis.read_training_log(path)
                names.append("training_curves.png")
                log_path = path
            except ValueError as err:
                notes.append(f"training curves not drawn: {err}")
    return tuple((name, _FIGURE_CAPTIONS[name]) for name in names), tuple(notes), log_path


def evaluate_for_report(
    *,
    query: Any,
    gallery: Any,
    metrics: Mapping[str, Any],
    normalize: bool = True,
    beta: float = 0.0,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    rerank_knn: str = "torch",
    memory_mb: float | None = None,
    progress: bool | None = None,
    ablation: Mapping[str, Mapping[str, Any]] | None = None,
    training_log: str | os.PathLike | None = None,
    verification_fprs: Sequence[float] = DEFAULT_FPRS,
    title: str = "Re-identification evaluation report",
    top_k: int = 10,
    num_worst: int = 8,
    num_best: int = 4,
    num_random: int = 4,
    seed: int = 0,
    metric_name: str | None = None,
    protocol: str = "reid",
) -> ReportData:
    """Everything the report shows, computed once; writes nothing (:func:`write_report` writes it).

    Args:
        query, gallery: ``FeatureSet`` s (features, pids, camids, paths). For ``leave_one_out``
            pass the same set twice (or ``gallery=None``).
        metrics: the test metrics as reid produces them (``reid.evaluation.evaluator.metrics_from_features``),
            with ``"rerank"`` when re-ranking was evaluated; copied into ``metrics.json``.
        normalize, beta, metric, rerank, k1, k2, lambda_value, rerank_knn: as ``metrics_from_features`` (the
            features are post-processed and compared as the metrics did): the per-query table,
            rank lists, histograms and verification use these distances; ``rerank`` adds the
            re-ranked CMC curve.
        memory_mb: the most a block of query rows may take in each pass over the gallery (None: a
            quarter of the memory available now); the query x gallery matrix is never held, and
            nothing shown depends on the budget.
        progress: bars over the passes (see :mod:`reid.progress`; None: on a terminal only).
        ablation: extra metrics-table rows (name -> metrics), e.g. ``ablate_inference``'s result.
        training_log: a ``log.jsonl``; its curves are drawn when the file exists.
        verification_fprs: the FPRs of ``tpr_at_fpr`` / ``threshold_at_fpr`` (marked on the ROC).
        title: the page's title.
        top_k: gallery columns per rank list.
        num_worst, num_best, num_random: rank lists of that many lowest-AP, highest-AP and random
            (``seed``) valid queries; a query is drawn once.
        metric_name: the distance's name, for legends and the table (default: ``metric``).
        protocol: ``"reid"``, ``"leave_one_out"`` or ``"query_gallery"`` (``reid.evaluation.protocol``).

    Raises:
        ValueError: a bad protocol, mismatched sizes, no valid query, no positive or negative pair.
    """
    check_protocol(protocol)
    _check_counts(top_k=top_k, num_worst=num_worst, num_best=num_best, num_random=num_random)
    fprs = check_fprs(verification_fprs)
    if gallery is None:
        if protocol != "leave_one_out":
            raise ValueError(f"gallery=None is only for protocol leave_one_out (got {protocol!r})")
        gallery = query
    q_paths, q_pids, q_cams = _labelled(query, "query")
    g_paths, g_pids, g_cams = _labelled(gallery, "gallery")
    q_camids, g_camids = protocol_camids(protocol, q_cams, g_cams)
    labels = (q_pids, g_pids, q_camids, g_camids)
    features = postprocess_pair(query, gallery, normalize=normalize, beta=beta)
    max_rank = min(_CMC_RANKS, len(g_paths))
    result = evaluate_features(*features, *labels, metric=metric, max_rank=max_rank, memory_mb=memory_mb,
                               progress=progress)
    if protocol == "reid":
        _check_consistent(metrics, result, "")
    reranking = {"k1": k1, "k2": k2, "lambda_value": lambda_value, "knn_backend": rerank_knn} if rerank else None
    reranked = _reranked_result(features, labels, reranking, max_rank, metrics, memory_mb, progress)
    pairs = protocol_pairs(*features, *labels, metric=metric, memory_mb=memory_mb, progress=progress)
    verification = verification_of_pairs(pairs, fprs, with_roc=True)
    histograms = pair_histograms(pairs)
    del pairs  # the pairs in memory, when they fit: gone before the rank lists
    sections = _sections(result.all_AP, num_worst, num_best, num_random, seed)
    figures, notes, log_path = _figures(training_log)
    return ReportData(
        title=title, protocol=protocol, metric_name=metric if metric_name is None else metric_name, top_k=int(top_k),
        q_paths=q_paths, q_pids=q_pids, q_cams=q_cams, q_camids=q_camids, g_paths=g_paths, g_pids=g_pids,
        g_camids=g_camids, result=result, reranked=reranked, verification=verification, histograms=histograms,
        metrics={**metrics, "verification": verification_summary(verification)}, ablation=ablation,
        sections=sections, rank_rows=_rank_rows(features, metric, sections), figures=figures, notes=notes,
        training_log=log_path)


# --------------------------------------------------------------------------- the report


def write_report(output_dir: str | os.PathLike, **arguments: Any) -> Path:
    """Write the HTML report (and ``metrics.json`` and its PNGs) into ``output_dir`` (created if
    missing; files of the same names are replaced); returns ``index.html``. ``arguments``: the
    keyword arguments of :func:`evaluate_for_report`, which computes what the page shows."""
    data = evaluate_for_report(**arguments)
    out = Path(output_dir)
    write_figures(data, out)
    write_rank_lists(data, out)
    write_metrics(data, out)
    return write_page(data, out)


def _draw_cmc(data: ReportData, path: Path) -> None:
    vis.plot_cmc(data.cmc_curves, path, max_rank=min(20, len(data.result.cmc)),
                 title=f"CMC ({data.result.num_valid_queries} queries)")


def _draw_roc(data: ReportData, path: Path) -> None:
    verification = data.verification
    fpr, tpr, _ = verification.roc
    points = {f"FPR {f:g}: TPR {verification.tpr_at_fpr[f]:.3f}": (f, verification.tpr_at_fpr[f]) for f in data.fprs}
    points[f"EER {verification.eer:.3f}"] = (verification.eer, 1.0 - verification.eer)
    # The axis starts a decade below the smallest FPR asked for; the curve left of it sits on the edge.
    vis.plot_roc(fpr, tpr, path, points=points, min_fpr=min(data.fprs, default=1e-3) / 10)


def _draw_distances(data: ReportData, path: Path) -> None:
    vis.plot_pair_histograms(data.histograms, path, title=f"query-gallery distances ({data.metric_name})")


def _draw_training_curves(data: ReportData, path: Path) -> None:
    vis.plot_training_curves(data.training_log, path)


_FIGURE_WRITERS = {"cmc.png": _draw_cmc, "roc.png": _draw_roc, "distances.png": _draw_distances,
                   "training_curves.png": _draw_training_curves}
# Every file a report may write (rank lists as a pattern): what `reid report` refuses to replace.
REPORT_FILES = ("index.html", "metrics.json", *_FIGURE_WRITERS, "rank_list_*.png")


def write_figures(data: ReportData, output_dir: str | os.PathLike) -> list[Path]:
    """The plots of ``data.figures``, as PNGs in ``output_dir``; returns their paths."""
    out = Path(output_dir)
    for name, _ in data.figures:
        _FIGURE_WRITERS[name](data, out / name)
    return [out / name for name, _ in data.figures]


def write_rank_lists(data: ReportData, output_dir: str | os.PathLike) -> list[Path]:
    """One ``rank_list_<query>.png`` per query of ``data.sections``, drawn with the protocol's
    camera ids (so with its exclusions) and the AP of the table; returns their paths."""
    out = Path(output_dir)
    gallery = (data.g_paths, data.g_pids, data.g_camids)
    written = []
    for i, name in data.drawn.items():
        image = vis.compose_rank_list(data.rank_rows[i], (data.q_paths[i], data.q_pids[i], data.q_camids[i]), gallery,
                                      top_k=data.top_k, ap=float(data.result.all_AP[i]), cameras=data.cameras)
        written.append(vis.save_image(image, out / name))
    return written


def write_metrics(data: ReportData, output_dir: str | os.PathLike) -> Path:
    """``metrics.json``: the metrics given plus the verification block."""
    return atomic_write_json(Path(output_dir) / "metrics.json", _plain(data.metrics))


def write_page(data: ReportData, output_dir: str | os.PathLike) -> Path:
    """``index.html``, built from ``data`` alone (see :func:`_page`)."""
    return atomic_write_text(Path(output_dir) / "index.html", _page(data))


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:sans-serif;margin:1em 2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:right}
th{background:#f4f4f4}.l{text-align:left}.note{color:#555;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;color:#555;max-width:500px}
img{max-width:100%}.scroll{max-height:36em;overflow:auto;display:inline-block;border:1px solid #ddd}
#queries thead th{position:sticky;top:0;cursor:pointer;user-select:none}
#queries th[aria-sort=ascending]::after{content:" \\25B2"}#queries th[aria-sort=descending]::after{content:" \\25BC"}
#queries tr.miss td{background:#fff0f0}#status{color:#888;font-size:.8em}
"""

# Records every script error and every image that fails to load into #status ("ok N images"
# when none), makes the per-query table sortable (click a header; again: reverse) and filterable
# (failures only). The URL fragment applies a view on load: #sort=ap, #sort=-rank, #failures
# (joined with &), through the same click/change handlers a user triggers.
_SCRIPT = """
var reportErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  reportErrors.push(t && t.tagName === "IMG" ? "image failed to load: " + t.getAttribute("src")
                                             : "script error: " + e.message);
}, true);
function sortQueries(th, descending) {
  var body = th.closest("table").tBodies[0], col = th.cellIndex, numeric = th.dataset.type === "num";
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col].textContent, y = b.cells[col].textContent;
    var c = numeric ? parseFloat(x) - parseFloat(y) : (x < y ? -1 : x > y ? 1 : 0);
    return descending ? -c : c;
  });
  var fragment = document.createDocumentFragment();
  rows.forEach(function (r) { fragment.appendChild(r); });
  body.appendChild(fragment);
  Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
}
function showFailuresOnly(only) {
  var rows = document.getElementById("queries").tBodies[0].rows, shown = 0;
  for (var i = 0; i < rows.length; i++) {
    rows[i].hidden = only && !rows[i].classList.contains("miss");
    if (!rows[i].hidden) shown++;
  }
  document.getElementById("shown").textContent = shown + " of " + rows.length + " queries shown";
}
window.addEventListener("load", function () {
  var table = document.getElementById("queries");
  if (table) {
    var heads = table.tHead.rows[0].cells, box = document.getElementById("failures");
    Array.prototype.forEach.call(heads, function (th) {
      th.addEventListener("click", function () { sortQueries(th, th.getAttribute("aria-sort") === "ascending"); });
    });
    box.addEventListener("change", function () { showFailuresOnly(box.checked); });
    location.hash.slice(1).split("&").forEach(function (part) {
      var m = /^sort=(-?)(\\w+)$/.exec(part), th = m && table.querySelector('th[data-key="' + m[2] + '"]');
      if (th) { th.click(); if (m[1]) th.click(); }
      if (part === "failures") { box.checked = true; box.dispatchEvent(new Event("change")); }
    });
  }
  var loaded = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) loaded++;
    else if (reportErrors.indexOf("image failed to load: " + img.getAttribute("src")) < 0)
      reportErrors.push("image not loaded: " + img.getAttribute("src"));
  }
  document.getElementById("status").textContent =
    reportErrors.length ? "errors:\\n" + reportErrors.join("\\n") : "ok " + loaded + " images";
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}" if isinstance(value, (int, float, np.floating)) else "-"


def _metrics_table(rows: Mapping[str, Mapping[str, Any]], table_id: str) -> str:
    columns = metric_columns(dict(rows))
    head = "".join(f"<th>{_e(title)}</th>" for _, title in columns)
    lines = [f'<table id="{table_id}"><thead><tr><th class="l">run</th>{head}<th>valid queries</th></tr></thead>'
             "<tbody>"]
    for name, values in rows.items():
        cells = "".join(f"<td>{_percent(values.get(key))}</td>" for key, _ in columns)
        count = values.get("num_valid_queries", "-")
        lines.append(f'<tr><td class="l">{_e(name)}</td>{cells}<td>{_e(count)}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _verification_table(verification, fprs: Sequence[float]) -> str:
    def threshold(value: float) -> str:
        return "accept none" if math.isinf(value) and value < 0 else f"{value:.4g}"

    rows = [("AUC", _percent(verification.auc), "-"),
            ("EER", _percent(verification.eer), threshold(verification.eer_threshold))]
    rows += [(f"TPR at FPR &le; {f:g}", _percent(verification.tpr_at_fpr[f]),
              threshold(verification.threshold_at_fpr[f])) for f in fprs]
    body = "".join(f'<tr><td class="l">{name}</td><td>{value}</td><td>{t}</td></tr>' for name, value, t in rows)
    return ('<table id="verification"><thead><tr><th class="l">pairs</th><th>%</th><th>threshold (distance &le;)</th>'
            f"</tr></thead><tbody>{body}</tbody></table>\n"
            f'<p class="note">{verification.num_positive_pairs:,} positive pairs (same identity), '
            f"{verification.num_negative_pairs:,} negative pairs, {verification.num_excluded_pairs:,} left out by the "
            "protocol.</p>")



def _query_columns(cameras: bool) -> list[tuple[str, str, str]]:
    """(key, title, kind) of the per-query table; retrieval protocols show the class, no camera."""
    return [("index", "#", "num"), ("file", "file", "text"), ("pid", "identity" if cameras else "class", "num"),
            *([("camera", "camera", "text")] if cameras else []), ("ap", "AP (%)", "num"),
            ("inp", "INP (%)", "num"), ("rank", "first hit", "num")]


def _query_row(data: ReportData, i: int, drawn: Mapping[int, str]) -> str:
    path, first_rank = data.q_paths[i], data.result.first_hit_rank[i]
    index = f'<a href="#q{i}">{i}</a>' if i in drawn else str(i)
    cells = [f"<td>{index}</td>",
             f'<td class="l" title="{_e(path)}">{_e(os.path.basename(path))}</td>', f"<td>{data.q_pids[i]}</td>"]
    if data.cameras:
        camera = data.q_cams[i]
        cells.append(f'<td class="l">{f"c{camera + 1}" if camera >= 0 else "-"}</td>')
    cells += [f"<td>{100 * data.result.all_AP[i]:.2f}</td>", f"<td>{100 * data.result.all_INP[i]:.2f}</td>",
              f"<td>{first_rank}</td>"]
    return f'<tr{" class=miss" if first_rank != 1 else ""}>{"".join(cells)}</tr>'


def _query_table(data: ReportData) -> str:
    head = "".join(f'<th data-key="{key}" data-type="{kind}"{" class=l" if kind == "text" else ""}>{_e(title)}</th>'
                   for key, title, kind in _query_columns(data.cameras))
    drawn = data.drawn
    rows = [_query_row(data, i, drawn) for i in np.flatnonzero(~np.isnan(data.result.all_AP)).tolist()]
    return "\n".join([f'<table id="queries"><thead><tr>{head}</tr></thead><tbody>', *rows, "</tbody></table>"])


def _head(title: str) -> list[str]:
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>", f"<script>{_SCRIPT}</script>", "</head><body>", f"<h1>{_e(title)}</h1>"]


def _summary(data: ReportData) -> list[str]:
    """The introduction, the metrics (and ablation) tables, verification, the figures and notes."""
    metrics, name = data.metrics, data.metric_name
    rows = {name: {k: v for k, v in metrics.items() if k not in ("rerank", "verification")}}
    if isinstance(metrics.get("rerank"), Mapping):
        rows[f"{name} + re-ranking"] = metrics["rerank"]
    parts = [f'<p>{len(data.q_paths):,} queries, {len(data.g_paths):,} gallery images; distance: {_e(name)}; '
             f"protocol: {_e(_PROTOCOL_TEXT[data.protocol])}. Numbers in percent; all of them in "
             '<a href="metrics.json">metrics.json</a>.</p>',
             "<h2>Metrics</h2>", _metrics_table(rows, "metrics")]
    if data.ablation:
        parts += ["<h2>Ablation</h2>", _metrics_table(data.ablation, "ablation")]
    parts += ["<h2>Verification</h2>", _verification_table(data.verification, data.fprs), "<h2>Curves</h2>",
              '<div class="figs">']
    parts += [f'<figure><img src="{_e(file)}" alt="{_e(file)}"><figcaption>{_e(caption)}</figcaption></figure>'
              for file, caption in data.figures]
    parts.append("</div>")
    return parts + [f'<p class="note">{_e(note)}</p>' for note in data.notes]


def _queries(data: ReportData) -> list[str]:
    result = data.result
    valid = ~np.isnan(result.all_AP)
    skipped, shown = result.num_skipped_queries, result.num_valid_queries
    misses = int(np.count_nonzero(result.first_hit_rank[valid] != 1))
    return ["<h2>Queries</h2>",
            f'<p class="note">One row per query with a true match in the gallery ({shown:,}); '
            f"{skipped:,} {'query' if skipped == 1 else 'queries'} without one "
            f"{'is' if skipped == 1 else 'are'} left out, as from every metric. First hit: the rank of the first true "
            f"match; {misses:,} rank-1 misses (shaded). Click a column header to sort (again to reverse).</p>",
            f'<p><label><input type="checkbox" id="failures"> failures only (rank-1 miss)</label> '
            f'<span id="shown" class="note">{shown:,} of {shown:,} queries shown</span></p>',
            '<div class="scroll">', _query_table(data), "</div>"]


# What a rank list leaves out (as the metrics do) and what the text under each image says.
_RANK_LIST_TEXT = {
    "reid": "gallery images of the query's identity taken by the query's camera are left out, as the metrics do. "
            "Under each gallery image: its rank, its distance, its identity and camera (\"pid 12 c3\", cameras "
            "numbered from 1 as in the file names)",
    "leave_one_out": "only the query itself is left out, as the metrics do: every other image is ranked. "
                     "Under each image: its rank, its distance and its class (the protocol has no cameras)",
    "query_gallery": "nothing is left out: every gallery image is ranked. Under each gallery image: its rank, its "
                     "distance and its class (the protocol has no cameras)",
}


def _rank_lists(data: ReportData) -> list[str]:
    drawn = data.drawn
    if not drawn:
        return []
    kind = "identity" if data.cameras else "class"
    parts = ["<h2>Rank lists</h2>",
             f'<p class="note">The query (blue) and its {data.top_k} nearest gallery images: green = same {kind}, '
             f"red = another {kind}; {_e(_RANK_LIST_TEXT[data.protocol])}.</p>"]
    for heading, picks in data.sections:
        if not picks:
            continue
        parts.append(f"<h3>{_e(heading)}</h3>")
        for i in picks:
            caption = (f"query {i}: {os.path.basename(data.q_paths[i])}, {kind} {data.q_pids[i]}, "
                       f"AP {100 * data.result.all_AP[i]:.2f}%, first hit at rank {data.result.first_hit_rank[i]}")
            parts.append(f'<figure id="q{i}"><img src="{_e(drawn[i])}" alt="{_e(caption)}">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
    return parts


def _page(data: ReportData) -> str:
    """The whole ``index.html`` of ``data``: nothing else is read."""
    parts = [*_head(data.title), *_summary(data), *_queries(data), *_rank_lists(data),
             '<pre id="status">page script did not run</pre>', "</body></html>", ""]
    return "\n".join(parts)
