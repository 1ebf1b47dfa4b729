"""One self-contained HTML evaluation report: metrics, curves, a per-query table and rank lists.

:func:`write_report` is a pure function of the evaluation's arrays (labels, paths, the distance
matrix the metrics used, the metrics themselves): no config, no model. It writes into one folder

* ``index.html``: plain HTML with inline CSS and a few lines of inline JavaScript, no network
  (no CDN, no external font): it opens from ``file://``. Every text taken from the data (file
  names, titles, run names) is escaped.
* ``metrics.json``: the metrics given plus a ``"verification"`` block (AUC, EER, TPR and
  threshold at fixed FPRs over the query x gallery pairs).
* the PNGs the page shows, beside it (relative ``src``): ``cmc.png``, ``roc.png``,
  ``distances.png``, ``training_curves.png`` and ``rank_list_<query>.png``.

Protocols, by the camera trick (the camera-aware protocol of ``reid.evaluation.rank`` leaves out
the gallery items with the query's pid *and* camera, so the camera ids choose what is left out):

* ``"reid"``: the cameras as given (Market-1501 protocol).
* ``"leave_one_out"``: query and gallery are one list; camera ids ``0..N-1`` on both sides, so
  "same pid and same camera" is exactly the query itself.
* ``"query_gallery"``: query camera 0, gallery camera 1: nothing is left out.

Per query (table and rank lists): AP, INP and the rank of the first true match are
``evaluate_rank``'s ``all_AP`` / ``all_INP`` / ``first_hit_rank`` (the rank lists draw the same
stable (distance, gallery index) order and exclusions). Queries without a true match after the exclusions are left out of
the table, as from every metric, and counted in a note.
"""

from __future__ import annotations

import html
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import visualization as vis
from .evaluation.arrays import ArrayLike, as_labels, as_numpy
from .evaluation.evaluator import metric_columns, verification_summary
from .evaluation.protocol import check_protocol, protocol_camids
from .evaluation.rank import evaluate_rank
from .evaluation.verification import DEFAULT_FPRS, verification_metrics
from .io import atomic_write_json, atomic_write_text


_PROTOCOL_TEXT = {
    "reid": "camera-aware re-ID (Market-1501 protocol): gallery images of the query's identity taken by the "
            "query's camera are left out",
    "leave_one_out": "leave-one-out retrieval: every image queries all the others (only the query itself is "
                     "left out)",
    "query_gallery": "query-gallery retrieval: every gallery image is ranked, nothing is left out",
}
_CMC_RANKS = 50  # length of the CMC curves computed (20 are plotted)


# --------------------------------------------------------------------------- inputs


def _labelled(items: Any, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, pids, camids) of a FeatureSet-like object or of a (paths, pids, camids) tuple."""
    if all(hasattr(items, attr) for attr in ("paths", "pids", "camids")):
        paths, pids, camids = items.paths, items.pids, items.camids
    else:
        try:
            paths, pids, camids = items
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected a FeatureSet or a (paths, pids, camids) tuple") from None
    paths = [os.fspath(p) for p in paths]
    return (paths, as_labels(pids, f"{name} pids", len(paths), "one per path"),
            as_labels(camids, f"{name} camids", len(paths), "one per path"))


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


def _check_consistent(metrics: Mapping[str, Any], result, what: str) -> None:
    """Warn when the metrics given are not those of the distances given (a wrong matrix)."""
    for key, value in (("mAP", result.mAP), ("rank1", float(result.cmc[0]))):
        given = metrics.get(key)
        if isinstance(given, (int, float)) and not math.isclose(float(given), value, rel_tol=1e-4, abs_tol=1e-5):
            warnings.warn(f"write_report: metrics{what}[{key!r}] = {given:.6f} but {'re-ranked ' if what else ''}"
                          f"distmat gives {value:.6f}; are these the distances the metrics used?", stacklevel=3)


# --------------------------------------------------------------------------- the report


def write_report(
    output_dir: str | os.PathLike,
    *,
    query: Any,
    gallery: Any,
    distmat: ArrayLike,
    metrics: Mapping[str, Any],
    reranked_distmat: ArrayLike | None = None,
    ablation: Mapping[str, Mapping[str, Any]] | None = None,
    training_log: str | os.PathLike | None = None,
    verification_fprs: Sequence[float] = DEFAULT_FPRS,
    title: str = "Re-identification evaluation report",
    top_k: int = 10,
    num_worst: int = 8,
    num_best: int = 4,
    num_random: int = 4,
    seed: int = 0,
    metric_name: str = "squared Euclidean",
    protocol: str = "reid",
) -> Path:
    """Write the HTML report (and ``metrics.json`` and its PNGs) into ``output_dir``; returns ``index.html``.

    Args:
        output_dir: folder to write into (created if missing; files of the same names are replaced).
        query, gallery: a ``FeatureSet`` (only ``paths``, ``pids``, ``camids`` are read) or a
            ``(paths, pids, camids)`` tuple each. For ``leave_one_out`` pass the same list twice
            (or ``gallery=None``).
        distmat: num_query x num_gallery distances, the ones the metrics were computed from
            (numpy or torch). The per-query table, rank lists, histogram and verification use it.
        metrics: the test metrics as reid produces them (``reid.evaluation.evaluator.metrics_from_features``), with
            ``"rerank"`` when re-ranking was evaluated; copied into ``metrics.json``.
        reranked_distmat: the re-ranked distances, for a second CMC curve.
        ablation: extra metrics-table rows (name -> metrics), e.g. ``ablate_inference``'s result.
        training_log: a ``log.jsonl``; its curves are drawn when the file exists.
        verification_fprs: the FPRs of ``tpr_at_fpr`` / ``threshold_at_fpr`` (marked on the ROC).
        title: the page's title.
        top_k: gallery columns per rank list.
        num_worst, num_best, num_random: rank lists of that many lowest-AP, highest-AP and random
            (``seed``) valid queries; a query is drawn once.
        metric_name: the distance's name, for legends and the table.
        protocol: ``"reid"``, ``"leave_one_out"`` or ``"query_gallery"`` (module docstring).

    Raises:
        ValueError: a bad protocol, mismatched sizes, no valid query, no positive or negative pair.
    """
    check_protocol(protocol)
    for name, value in (("top_k", top_k), ("num_worst", num_worst), ("num_best", num_best),
                        ("num_random", num_random)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name == "top_k"):
            raise ValueError(f"{name}={value!r}: expected an integer >= {int(name == 'top_k')}")
    if gallery is None:
        if protocol != "leave_one_out":
            raise ValueError(f"gallery=None is only for protocol leave_one_out (got {protocol!r})")
        gallery = query
    q_paths, q_pids, q_cams_given = _labelled(query, "query")
    g_paths, g_pids, g_cams_given = _labelled(gallery, "gallery")
    dist = np.ascontiguousarray(as_numpy(distmat, "distmat"), dtype=np.float32)
    if dist.shape != (len(q_paths), len(g_paths)):
        raise ValueError(f"distmat: expected shape ({len(q_paths)}, {len(g_paths)}) (queries x gallery), got "
                         f"{dist.shape}")
    q_camids, g_camids = protocol_camids(protocol, q_cams_given, g_cams_given)
    labels = (q_pids, g_pids, q_camids, g_camids)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics)

    # Numbers.
    max_rank = min(_CMC_RANKS, dist.shape[1])
    result = evaluate_rank(dist, *labels, max_rank=max_rank)
    if protocol == "reid":
        _check_consistent(metrics, result, "")
    first_rank = result.first_hit_rank
    verification = verification_metrics(dist, *labels, fprs=verification_fprs, with_roc=True)
    fprs = tuple(verification.tpr_at_fpr)  # checked, as floats
    curves = {metric_name: result.cmc}
    if reranked_distmat is not None:
        reranked = np.ascontiguousarray(as_numpy(reranked_distmat, "reranked_distmat"), dtype=np.float32)
        if reranked.shape != dist.shape:
            raise ValueError(f"reranked_distmat: expected shape {dist.shape} (as distmat), got {reranked.shape}")
        reranked_result = evaluate_rank(reranked, *labels, max_rank=max_rank)
        if isinstance(metrics.get("rerank"), Mapping):
            _check_consistent(metrics["rerank"], reranked_result, "['rerank']")
        curves[f"{metric_name} + re-ranking"] = reranked_result.cmc
        del reranked

    # Figures.
    figures: list[tuple[str, str]] = []  # (file name, caption)
    vis.plot_cmc(curves, out / "cmc.png", max_rank=min(20, max_rank),
                 title=f"CMC ({result.num_valid_queries} queries)")
    figures.append(("cmc.png", "CMC: share of queries with a true match within the first k ranks."))
    fpr, tpr, _ = verification.roc
    points = {f"FPR {f:g}: TPR {verification.tpr_at_fpr[f]:.3f}": (f, verification.tpr_at_fpr[f]) for f in fprs}
    points[f"EER {verification.eer:.3f}"] = (verification.eer, 1.0 - verification.eer)
    # The axis starts a decade below the smallest FPR asked for; the curve left of it sits on the edge.
    vis.plot_roc(fpr, tpr, out / "roc.png", points=points, min_fpr=min(fprs, default=1e-3) / 10)
    del fpr, tpr
    figures.append(("roc.png", "ROC of the query x gallery pairs (a pair is accepted when its distance is at "
                               "most the threshold), with the operating points of the table."))
    vis.plot_distance_histogram(dist, *labels, out / "distances.png", title=f"query-gallery distances ({metric_name})")
    figures.append(("distances.png", "Distances of matching and non-matching pairs, each normalised to unit area."))
    notes: list[str] = []
    if training_log is not None:
        log_path = Path(training_log)
        if log_path.is_file():
            try:
                vis.plot_training_curves(log_path, out / "training_curves.png")
                figures.append(("training_curves.png", "Training: losses, learning rate and evaluations per epoch."))
            except ValueError as err:
                notes.append(f"training curves not drawn: {err}")
        else:
            notes.append(f"training curves not drawn: {log_path} not found")

    # Rank lists.
    valid = ~np.isnan(result.all_AP)
    valid_idx = np.flatnonzero(valid)
    ap_valid = result.all_AP[valid_idx]
    worst = valid_idx[np.argsort(ap_valid, kind="stable")][:num_worst].tolist()
    taken = set(worst)
    best = [i for i in valid_idx[np.lexsort((valid_idx, -ap_valid))][:num_worst + num_best].tolist()
            if i not in taken][:num_best]
    pool = np.setdiff1d(valid_idx, np.array(worst + best, dtype=np.int64))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(num_random, pool.size), replace=False) if pool.size else pool
    random_picks = np.sort(chosen).tolist()
    sections = [(f"Lowest AP ({len(worst)})", worst), (f"Highest AP ({len(best)})", best),
                (f"Random ({len(random_picks)}, seed {seed})", random_picks)]
    drawn = {}
    for _, picks in sections:
        for i in picks:
            name = f"rank_list_{i:05d}.png"
            image = vis.compose_rank_list(dist[i], (q_paths[i], q_pids[i], q_camids[i]),
                                          (g_paths, g_pids, g_camids), top_k=top_k, cameras=protocol == "reid")
            vis.save_image(image, out / name)
            drawn[i] = name

    metrics["verification"] = verification_summary(verification)
    atomic_write_json(out / "metrics.json", _plain(metrics))
    page = _page(title=title, protocol=protocol, metric_name=metric_name, metrics=metrics,
                 ablation=ablation, verification=verification, fprs=fprs, figures=figures, notes=notes,
                 q_paths=q_paths, q_pids=q_pids, q_cams=q_cams_given, num_gallery=len(g_paths), result=result,
                 first_rank=first_rank, sections=sections, drawn=drawn, top_k=top_k)
    index = atomic_write_text(out / "index.html", page)
    # atomic_write's temporary file is private (0600); the page is for sharing: the images' mode.
    mode = (out / "cmc.png").stat().st_mode & 0o777
    for path in (index, out / "metrics.json"):
        os.chmod(path, mode)
    return index


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


_QUERY_COLUMNS = [("index", "#", "num"), ("file", "file", "text"), ("pid", "identity", "num"),
                  ("camera", "camera", "text"), ("ap", "AP (%)", "num"), ("inp", "INP (%)", "num"),
                  ("rank", "first hit", "num")]


def _query_table(q_paths: list[str], q_pids: np.ndarray, q_cams: np.ndarray, result, first_rank: np.ndarray,
                 drawn: Mapping[int, str]) -> str:
    head = "".join(f'<th data-key="{key}" data-type="{kind}"{" class=l" if kind == "text" else ""}>{_e(title)}</th>'
                   for key, title, kind in _QUERY_COLUMNS)
    lines = [f'<table id="queries"><thead><tr>{head}</tr></thead><tbody>']
    for i in np.flatnonzero(~np.isnan(result.all_AP)).tolist():
        path = q_paths[i]
        index = f'<a href="#q{i}">{i}</a>' if i in drawn else str(i)
        camera = f"c{q_cams[i] + 1}" if q_cams[i] >= 0 else "-"
        lines.append(f'<tr{" class=miss" if first_rank[i] != 1 else ""}><td>{index}</td>'
                     f'<td class="l" title="{_e(path)}">{_e(os.path.basename(path))}</td><td>{q_pids[i]}</td>'
                     f'<td class="l">{camera}</td><td>{100 * result.all_AP[i]:.2f}</td>'
                     f"<td>{100 * result.all_INP[i]:.2f}</td><td>{first_rank[i]}</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _page(*, title: str, protocol: str, metric_name: str, metrics: Mapping[str, Any],
          ablation: Mapping[str, Mapping[str, Any]] | None, verification, fprs: Sequence[float],
          figures: list[tuple[str, str]], notes: list[str], q_paths: list[str], q_pids: np.ndarray,
          q_cams: np.ndarray, num_gallery: int, result, first_rank: np.ndarray,
          sections: list[tuple[str, list[int]]], drawn: Mapping[int, str], top_k: int) -> str:
    rows = {metric_name: {k: v for k, v in metrics.items() if k not in ("rerank", "verification")}}
    if isinstance(metrics.get("rerank"), Mapping):
        rows[f"{metric_name} + re-ranking"] = metrics["rerank"]
    skipped = result.num_skipped_queries
    misses = int(np.count_nonzero(first_rank[~np.isnan(result.all_AP)] != 1))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p>{len(q_paths):,} queries, {num_gallery:,} gallery images; distance: {_e(metric_name)}; protocol: '
        f"{_e(_PROTOCOL_TEXT[protocol])}. Numbers in percent; all of them in "
        '<a href="metrics.json">metrics.json</a>.</p>',
        "<h2>Metrics</h2>",
        _metrics_table(rows, "metrics"),
    ]
    if ablation:
        parts += ["<h2>Ablation</h2>", _metrics_table(ablation, "ablation")]
    parts += ["<h2>Verification</h2>", _verification_table(verification, fprs), "<h2>Curves</h2>", '<div class="figs">']
    for name, caption in figures:
        parts.append(f'<figure><img src="{_e(name)}" alt="{_e(name)}"><figcaption>{_e(caption)}</figcaption></figure>')
    parts.append("</div>")
    parts += [f'<p class="note">{_e(note)}</p>' for note in notes]
    parts += [
        "<h2>Queries</h2>",
        f'<p class="note">One row per query with a true match in the gallery ({result.num_valid_queries:,}); '
        f"{skipped:,} {'query' if skipped == 1 else 'queries'} without one "
        f"{'is' if skipped == 1 else 'are'} left out, as from every metric. First hit: the rank of the first true "
        f"match; {misses:,} rank-1 misses (shaded). Click a column header to sort (again to reverse).</p>",
        f'<p><label><input type="checkbox" id="failures"> failures only (rank-1 miss)</label> '
        f'<span id="shown" class="note">{result.num_valid_queries:,} of {result.num_valid_queries:,} queries '
        "shown</span></p>",
        '<div class="scroll">',
        _query_table(q_paths, q_pids, q_cams, result, first_rank, drawn),
        "</div>",
    ]
    if drawn:
        exclusion = {"reid": "gallery images of the query's identity and camera are left out, as the metrics do",
                     "leave_one_out": "only the query itself is left out; c1 marks the query, c2 the others",
                     "query_gallery": "nothing is left out; c1 marks the query, c2 the gallery"}[protocol]
        parts += ["<h2>Rank lists</h2>",
                  f'<p class="note">The query (blue) and its {top_k} nearest gallery images: green = same identity, '
                  f"red = another identity; {_e(exclusion)}.</p>"]
        for heading, picks in sections:
            if not picks:
                continue
            parts.append(f"<h3>{_e(heading)}</h3>")
            for i in picks:
                caption = (f"query {i}: {os.path.basename(q_paths[i])}, identity {q_pids[i]}, "
                           f"AP {100 * result.all_AP[i]:.2f}%, first hit at rank {first_rank[i]}")
                parts.append(f'<figure id="q{i}"><img src="{_e(drawn[i])}" alt="{_e(caption)}">'
                             f"<figcaption>{_e(caption)}</figcaption></figure>")
    parts += ['<pre id="status">page script did not run</pre>', "</body></html>", ""]
    return "\n".join(parts)
