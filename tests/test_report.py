"""The HTML evaluation report: its numbers against the evaluation code, its page in a real browser.

The browser tests render ``index.html`` with headless Chromium (``chromium``, ``chromium-browser``
or ``google-chrome`` on PATH; skipped without one): the DOM after the page's script ran
(``--dump-dom``) and a screenshot. The page's script writes "ok N images" into ``#status`` once
every image has loaded and no script error happened, and applies a table view named in the URL
fragment (``#sort=ap``, ``#sort=-rank``, ``#failures``) through the same handlers a click uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import warnings
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid import io as reid_io
from reid import report as rp
from reid import visualization as vis
from reid.data import build_dataset
from reid.evaluation import evaluate_rank, pairwise_distance, rerank, verification_metrics
from reid.evaluation.evaluator import metrics_from_features
from reid.evaluation.protocol import protocol_camids
from reid.evaluation.features import FeatureSet, postprocess_features
from reid.evaluation.rank import RankResult

ODD_NAME = 'q<script>window.injected=1<&"x".jpg'  # escaped everywhere, never a tag
SKIPPED_PID = 999  # a query identity absent from the gallery: no true match


# --------------------------------------------------------------------------- helpers


class _Page(HTMLParser):
    """What the tests read from a page (the file or Chromium's dumped DOM)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[tuple[dict, list[str]]] = []  # #queries body rows: (attributes, cell texts)
        self.heads: list[dict] = []  # #queries header cells' attributes
        self.sources: list[str] = []  # every src and href
        self.script_tags = 0
        self._table = self._body = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.sources += [attrs[k] for k in ("src", "href") if k in attrs]
        self.script_tags += tag == "script"
        if tag == "table":
            self._table = attrs.get("id") == "queries"
        elif self._table and tag == "th":
            self.heads.append(attrs)
        elif self._table and tag == "tbody":
            self._body = True
        elif self._body and tag == "tr":
            self.rows.append((attrs, []))
        elif self._body and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._body = False
        elif tag == "table":
            self._table = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def column(self, key: str) -> list[str]:
        index = [h.get("data-key") for h in self.heads].index(key)
        return [cells[index] for _, cells in self.rows]


def _random_features(items, rng, signal=0.25):
    """A FeatureSet of (path, pid, camid) items: noise plus a little of an identity direction."""
    paths, pids, camids = zip(*items)
    pids = np.array(pids, dtype=np.int64)
    directions = np.random.default_rng(123).normal(size=(1000, 32)).astype(np.float32)
    features = rng.normal(size=(len(items), 32)).astype(np.float32) + signal * directions[pids % 1000]
    return FeatureSet(features, pids, np.array(camids, dtype=np.int64), [str(p) for p in paths])


def _training_log(path: Path) -> Path:
    records = [{"epoch": e, "lr": 1e-3 / e, "loss": {"group": 2.0 / e, "cross_entropy": 4.0 / e, "total": 6.0 / e},
                **({"metrics": {"mAP": 0.1 * e, "rank1": 0.15 * e}} if e % 2 == 0 else {})} for e in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def reid_case(tiny_market, tmp_path_factory):
    """The tiny synthetic Market split with random features; query 0 renamed to ODD_NAME and one
    query added whose identity the gallery lacks; the report written once."""
    dataset = build_dataset("market1501", str(tiny_market))
    odd_dir = tmp_path_factory.mktemp("odd")
    first_path, first_pid, first_cam = dataset.query[0]
    odd = odd_dir / ODD_NAME
    shutil.copyfile(first_path, odd)
    query_items = [(odd, first_pid, first_cam), *dataset.query[1:], (first_path, SKIPPED_PID, first_cam)]
    rng = np.random.default_rng(0)
    query, gallery = _random_features(query_items, rng), _random_features(dataset.gallery, rng)
    metrics = metrics_from_features(query, gallery, rerank=True, k1=5, k2=2, max_rank=10)
    qf, gf = postprocess_features(query.features), postprocess_features(gallery.features)
    distmat = np.asarray(pairwise_distance(qf, gf))
    reranked = rerank(qf, gf, k1=5, k2=2)
    out = tmp_path_factory.mktemp("report") / "nested" / "report"  # parents missing too
    ablation = {"baseline": metrics_from_features(query, gallery, max_rank=10),
                "flip <i>": metrics_from_features(query, gallery, max_rank=10, beta=0.1)}
    args = dict(query=query, gallery=gallery, metrics=metrics, rerank=True, k1=5, k2=2, ablation=ablation,
                training_log=_training_log(odd_dir / "log.jsonl"), title="tiny <b>report</b>", top_k=5, num_worst=3,
                num_best=2, num_random=2, seed=1, metric_name="squared Euclidean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent inputs: no warning at all
        index = rp.write_report(out, **args)
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    return {"index": index, "out": out, "query": query, "gallery": gallery, "distmat": distmat, "labels": labels,
            "reranked": reranked, "metrics": metrics, "args": args, "html": index.read_text(encoding="utf-8")}


# --------------------------------------------------------------------------- files and numbers


def test_writes_the_page_metrics_and_images_into_a_new_folder(reid_case):
    out = reid_case["out"]
    assert reid_case["index"] == out / "index.html" and out.is_dir()
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "metrics.json", "cmc.png", "roc.png", "distances.png", "training_curves.png"} <= names
    assert len([n for n in names if n.startswith("rank_list_")]) == 3 + 2 + 2
    assert not [n for n in names if n.endswith(".tmp")]
    # Every file has the mode a plain open() gives (atomic_write's, no chmod afterwards): shareable.
    plain = out.parent / "plain.txt"
    with open(plain, "w"):
        pass
    mode = plain.stat().st_mode & 0o777
    assert {(out / name).stat().st_mode & 0o777 for name in names} == {mode}


def test_metrics_json_is_the_metrics_plus_verification(reid_case):
    written = json.loads((reid_case["out"] / "metrics.json").read_text())
    given = reid_case["metrics"]
    assert {k: v for k, v in written.items() if k != "verification"} == given
    assert "rerank" in written
    direct = verification_metrics(reid_case["distmat"], *reid_case["labels"], fprs=(1e-4, 1e-3, 1e-2))
    block = written["verification"]
    assert block["auc"] == direct.auc and block["eer"] == direct.eer
    assert block["eer_threshold"] == direct.eer_threshold
    assert set(block["tpr_at_fpr"]) == set(block["threshold_at_fpr"]) == {"0.0001", "0.001", "0.01"}
    for f in (1e-4, 1e-3, 1e-2):
        assert block["tpr_at_fpr"][repr(f)] == direct.tpr_at_fpr[f]
        threshold = direct.threshold_at_fpr[f]
        assert block["threshold_at_fpr"][repr(f)] == (None if threshold == -math.inf else threshold)
    assert (block["num_positive_pairs"], block["num_negative_pairs"], block["num_excluded_pairs"]) == (
        direct.num_positive_pairs, direct.num_negative_pairs, direct.num_excluded_pairs)


def test_per_query_table_holds_the_valid_queries_with_evaluate_rank_values(reid_case):
    page = _Page(reid_case["html"])
    result = evaluate_rank(reid_case["distmat"], *reid_case["labels"], max_rank=10)
    valid = np.flatnonzero(~np.isnan(result.all_AP))
    num_queries = len(reid_case["query"])
    assert result.num_skipped_queries == 1 and len(valid) == num_queries - 1  # the SKIPPED_PID query
    assert [int(i) for i in page.column("index")] == valid.tolist()
    assert page.column("ap") == [f"{100 * result.all_AP[i]:.2f}" for i in valid]
    assert page.column("inp") == [f"{100 * result.all_INP[i]:.2f}" for i in valid]
    ranks = result.first_hit_rank
    assert page.column("rank") == [str(ranks[i]) for i in valid]
    assert page.column("pid") == [str(reid_case["query"].pids[i]) for i in valid]
    assert page.column("file") == [Path(reid_case["query"].paths[i]).name for i in valid]
    # rank-1 misses are marked for the filter; the case holds both kinds
    misses = [attrs.get("class") == "miss" for attrs, _ in page.rows]
    assert misses == [ranks[i] != 1 for i in valid] and any(misses) and not all(misses)
    assert f"{len(valid)} of {len(valid)} queries shown" in reid_case["html"]
    assert "1 query without one is left out" in reid_case["html"]


def test_page_tables(reid_case):
    text = reid_case["html"]
    metrics = reid_case["metrics"]
    for key in ("mAP", "mINP", "rank1"):
        assert f"<td>{100 * metrics[key]:.2f}</td>" in text
        assert f"<td>{100 * metrics['rerank'][key]:.2f}</td>" in text
    assert "squared Euclidean + re-ranking" in text
    assert 'id="ablation"' in text and "flip &lt;i&gt;" in text and "flip <i>" not in text
    assert "<title>tiny &lt;b&gt;report&lt;/b&gt;</title>" in text
    block = json.loads((reid_case["out"] / "metrics.json").read_text())["verification"]
    assert f"<td>{100 * block['auc']:.2f}</td>" in text
    assert "TPR at FPR &le; 0.0001" in text


def test_file_names_are_escaped(reid_case):
    text = reid_case["html"]
    assert "<script>window.injected" not in text
    assert "&lt;script&gt;window.injected=1&lt;&amp;&quot;x&quot;.jpg" in text
    page = _Page(text)
    assert page.script_tags == 1  # the page's own
    assert ODD_NAME in page.column("file")


def test_page_is_self_contained(reid_case):
    text = reid_case["html"]
    assert not re.search(r"https?:|//[a-z]|@import|url\(", text, re.IGNORECASE)
    page = _Page(text)
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) == 4 + 7 and len(set(images)) == len(images)
    for source in page.sources:
        assert not source.startswith(("/", "file:")), source
        if not source.startswith("#"):
            assert (reid_case["out"] / source).is_file(), source
        else:
            assert f'id="{source[1:]}"' in text  # links from the table to drawn rank lists
    for png in reid_case["out"].glob("*.png"):
        assert png.name in images


def test_rank_lists_are_the_worst_best_and_random_queries(reid_case):
    result = evaluate_rank(reid_case["distmat"], *reid_case["labels"], max_rank=10)
    ap = result.all_AP
    valid = np.flatnonzero(~np.isnan(ap))
    worst = valid[np.argsort(ap[valid], kind="stable")][:3].tolist()
    best = [i for i in valid[np.lexsort((valid, -ap[valid]))].tolist() if i not in worst][:2]
    pool = np.setdiff1d(valid, worst + best)
    random = np.sort(np.random.default_rng(1).choice(pool, 2, replace=False)).tolist()
    drawn = [int(i) for i in re.findall(r'<figure id="q(\d+)">', reid_case["html"])]
    assert drawn == worst + best + random
    assert max(ap[worst]) <= min(ap[best])
    for i in drawn:
        assert (reid_case["out"] / f"rank_list_{i:05d}.png").is_file()


def test_leave_one_out_and_query_gallery_protocols(tiny_market, tmp_path):
    dataset = build_dataset("market1501", str(tiny_market))
    items = [*dataset.query, *dataset.gallery]
    data = _random_features(items, np.random.default_rng(5))
    metrics = metrics_from_features(data, data, protocol="leave_one_out", nmi=False)
    features = postprocess_features(data.features)
    distmat = np.asarray(pairwise_distance(features, features))
    index = rp.write_report(tmp_path / "loo", query=data, gallery=None, metrics=metrics, protocol="leave_one_out",
                            num_worst=2, num_best=1, num_random=1, top_k=4)
    text = index.read_text()
    n = len(items)
    counts = np.bincount(data.pids)
    num_valid = int((counts[data.pids] >= 2).sum())
    assert len(_Page(text).rows) == num_valid
    assert f"{n - num_valid:,} quer" in text
    assert "<th>R@1</th>" in text and "<th>MAP@R</th>" in text and "only the query itself" in text
    # retrieval: the rank lists and the table name the class; the protocol's camera ids are no cameras
    assert [h.get("data-key") for h in _Page(text).heads] == ["index", "file", "pid", "ap", "inp", "rank"]
    assert ">class</th>" in text and "green = same class" in text and "its class" in text
    assert not re.search(r"\bc[12]\b", text)
    # the camera trick: CMC = Recall@K of the retrieval protocol; only the diagonal is left out
    q_cams, g_cams = protocol_camids("leave_one_out", data.camids, data.camids)
    result = evaluate_rank(distmat, data.pids, data.pids, q_cams, g_cams, max_rank=8)
    assert result.num_valid_queries == metrics["num_valid_queries"] == num_valid
    for k in (1, 2, 4, 8):
        assert result.cmc[k - 1] == pytest.approx(metrics[f"recall@{k}"])
    # the rank lists exclude the same item (only the query itself) and find the same first hit
    ranks = result.first_hit_rank
    for i in range(n):
        order, matches = vis.ranked_gallery(distmat[i], data.pids[i], q_cams[i], data.pids, g_cams)
        assert len(order) == n - 1 and i not in order
        assert ranks[i] == (int(np.argmax(matches)) + 1 if matches.any() else 0)
    block = json.loads((tmp_path / "loo" / "metrics.json").read_text())["verification"]
    assert block["num_excluded_pairs"] == n
    assert block["num_positive_pairs"] == int((counts * (counts - 1)).sum())
    assert block["num_negative_pairs"] == n * n - int((counts * counts).sum())

    query, gallery = data, _random_features(dataset.gallery, np.random.default_rng(6))
    gf = postprocess_features(gallery.features)
    distmat = np.asarray(pairwise_distance(features, gf))
    metrics = metrics_from_features(query, gallery, protocol="query_gallery")
    rp.write_report(tmp_path / "qg", query=query, gallery=gallery, metrics=metrics, protocol="query_gallery",
                    num_worst=1, num_best=0, num_random=0)
    block = json.loads((tmp_path / "qg" / "metrics.json").read_text())["verification"]
    assert block["num_excluded_pairs"] == 0
    assert block["auc"] == verification_metrics(distmat, query.pids, gallery.pids, np.zeros(n, dtype=np.int64),
                                                np.ones(len(gallery), dtype=np.int64)).auc


def test_reid_page_names_identities_and_cameras(reid_case):
    text = reid_case["html"]
    page = _Page(text)
    assert [h.get("data-key") for h in page.heads] == ["index", "file", "pid", "camera", "ap", "inp", "rank"]
    cams = reid_case["query"].camids
    valid = [int(i) for i in page.column("index")]
    assert page.column("camera") == [f"c{cams[i] + 1}" for i in valid]
    assert "green = same identity" in text and "identity and camera (&quot;pid 12 c3&quot;" in text


def _case_data(case, **overrides) -> rp.ReportData:
    args = {"query": case["query"], "gallery": case["gallery"], "metrics": case["metrics"], "top_k": 3,
            "num_worst": 2, "num_best": 1, "num_random": 1, "seed": 3}
    return rp.evaluate_for_report(**{**args, **overrides})


def test_the_page_is_built_from_one_report_data(reid_case, tmp_path):
    case = reid_case
    data = _case_data(case, title="one <object>")
    # the object holds the evaluation's numbers, computed once
    result = evaluate_rank(case["distmat"], *case["labels"], max_rank=10)
    np.testing.assert_array_equal(data.result.first_hit_rank, result.first_hit_rank)
    np.testing.assert_array_equal(data.result.all_AP, result.all_AP)
    assert data.metrics["verification"] == json.loads((case["out"] / "metrics.json").read_text())["verification"]
    assert [name for name, _ in data.figures] == ["cmc.png", "roc.png", "distances.png"] and data.notes == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.title = "changed"  # type: ignore[misc]
    # write_report writes exactly what its object says: the same page, the same files
    index = rp.write_report(tmp_path / "full", query=case["query"], gallery=case["gallery"], metrics=case["metrics"],
                            top_k=3, num_worst=2, num_best=1, num_random=1, seed=3, title="one <object>")
    assert index.read_text(encoding="utf-8") == rp._page(data)
    assert sorted(p.name for p in index.parent.glob("rank_list_*.png")) == sorted(data.drawn.values())
    # the page reads the object and nothing else: a value changed in it is the value shown
    valid = np.flatnonzero(~np.isnan(data.result.all_AP))
    all_ap = data.result.all_AP.copy()
    all_ap[valid[0]] = 0.123456
    changed = dataclasses.replace(data, title="another <title>", result=dataclasses.replace(data.result, all_AP=all_ap))
    page = rp.write_page(changed, tmp_path / "page")
    text = page.read_text(encoding="utf-8")
    assert "<title>another &lt;title&gt;</title>" in text
    assert _Page(text).column("ap")[0] == "12.35"
    assert os.listdir(tmp_path / "page") == ["index.html"]


def _fail_writes_midway(monkeypatch, fail):
    """``reid.io.atomic_write`` (and visualization's name for it) writes half of the bytes of the
    files ``fail`` picks into their temporary file, then fails."""
    real = reid_io.atomic_write

    def atomic_write(path, write):
        if not fail(Path(path)):
            return real(path, write)

        def half_then_fail(handle):
            write(handle)
            handle.truncate(max(handle.tell() // 2, 1))
            raise OSError(f"disk full while writing {path} (test)")

        return real(path, half_then_fail)

    monkeypatch.setattr(reid_io, "atomic_write", atomic_write)
    monkeypatch.setattr(vis, "atomic_write", atomic_write)


@pytest.mark.parametrize("failing", ["roc.png", "rank_list_", "index.html"])
def test_a_write_failing_midway_leaves_no_partial_file(reid_case, tmp_path, monkeypatch, failing):
    _fail_writes_midway(monkeypatch, lambda path: path.name.startswith(failing))
    out = tmp_path / "report"
    with pytest.raises(OSError, match="disk full"):
        rp.write_report(out, query=reid_case["query"], gallery=reid_case["gallery"], metrics=reid_case["metrics"],
                        top_k=3, num_worst=2, num_best=1, num_random=1)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(failing) or n.endswith(".tmp") or n.startswith(".")]
    assert "index.html" not in names  # the page comes last: no page pointing at a missing file
    for name in names:  # whatever was written is whole
        if name.endswith(".png"):
            assert cv2.imread(str(out / name)) is not None, name
    if failing == "index.html":
        assert json.loads((out / "metrics.json").read_text())["verification"]


def test_bad_inputs_and_inconsistent_metrics(reid_case, tmp_path):
    case = reid_case
    args = {"query": case["query"], "gallery": case["gallery"], "metrics": case["metrics"],
            "num_worst": 0, "num_best": 0, "num_random": 0}
    q, g = case["query"], case["gallery"]
    with pytest.raises(ValueError, match="protocol='market'"):
        rp.write_report(tmp_path / "a", protocol="market", **args)
    narrow = dataclasses.replace(g, features=g.features[:, 1:])
    with pytest.raises(ValueError, match=r"feature widths differ: query_features is \(\d+, 32\), gallery_features is "
                                         r"\(\d+, 31\)"):
        rp.write_report(tmp_path / "b", **{**args, "gallery": narrow})
    with pytest.raises(ValueError, match="gallery=None"):
        rp.write_report(tmp_path / "c", **{**args, "gallery": None})
    with pytest.raises(ValueError, match="top_k=0"):
        rp.write_report(tmp_path / "d", top_k=0, **args)
    with pytest.raises(ValueError, match=r"fprs: expected false positive rates in \(0, 1\], got 2"):
        rp.write_report(tmp_path / "d", verification_fprs=(2,), **args)
    with pytest.raises(ValueError, match=r"gallery: 3 rows of features but \d+ paths; expected one path per row"):
        rp.write_report(tmp_path / "d", **{**args, "gallery": dataclasses.replace(g, features=g.features[:3])})
    with pytest.raises(TypeError, match="query: expected a FeatureSet \\(features, pids, camids, paths\\), got tuple"):
        rp.write_report(tmp_path / "d", **{**args, "query": (q.paths, q.pids, q.camids)})
    assert not [p for p in tmp_path.iterdir()]  # every refusal before any file
    # metrics of other features (here: another mAP) are written as given, with a warning
    other = {**case["metrics"], "mAP": case["metrics"]["mAP"] + 0.1}
    with pytest.warns(UserWarning, match="are these the features and options the metrics used") as caught:
        index = rp.write_report(tmp_path / "e", training_log=tmp_path / "missing.jsonl", **{**args, "metrics": other})
    assert {w.filename for w in caught} == {__file__}  # the warning names the caller's line
    assert "training curves not drawn" in index.read_text() and not (tmp_path / "e" / "training_curves.png").exists()


# --------------------------------------------------------------------------- at any size: equal to the dense matrix


def _hard_case(seed: int = 7) -> tuple[FeatureSet, FeatureSet]:
    """Junk queries and gallery items (pid -1), distractors (pid 0), a query whose identity the
    gallery lacks, and exact ties (repeated gallery features); no images (nothing is drawn)."""
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 9, 24), rng.integers(0, 9, 90)
    q_pids[:2], q_pids[2], g_pids[:5] = -1, 50, -1
    directions = rng.normal(size=(51, 16)).astype(np.float32)
    qf = rng.normal(size=(24, 16)).astype(np.float32) + 0.8 * directions[np.maximum(q_pids, 0)]
    gf = rng.normal(size=(90, 16)).astype(np.float32) + 0.8 * directions[np.maximum(g_pids, 0)]
    gf[11], gf[12], gf[40] = gf[10], gf[10], gf[39]
    query = FeatureSet(qf, q_pids, rng.integers(0, 3, 24), [f"q/{i}.jpg" for i in range(24)])
    gallery = FeatureSet(gf, g_pids, rng.integers(0, 3, 90), [f"g/{i}.jpg" for i in range(90)])
    return query, gallery


def _dense_reference(query: FeatureSet, gallery: FeatureSet, metric: str, reranking: dict | None):
    """Today's dense computation: the whole matrix, evaluate_rank of it, verification of it, and the
    histograms of its masked entries, brute force."""
    qf, gf = postprocess_features(query.features), postprocess_features(gallery.features)
    distmat = np.asarray(pairwise_distance(qf, gf, metric))
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    max_rank = min(50, len(gallery))
    result = evaluate_rank(distmat, *labels, max_rank=max_rank)
    reranked = None if reranking is None else evaluate_rank(rerank(qf, gf, **reranking), *labels, max_rank=max_rank)
    verification = verification_metrics(distmat, *labels, with_roc=True)
    usable = (query.pids != -1)[:, None] & (gallery.pids != -1)[None, :]
    same_pid = query.pids[:, None] == gallery.pids[None, :]
    other_camera = query.camids[:, None] != gallery.camids[None, :]
    matches, non_matches = distmat[usable & same_pid & other_camera], distmat[usable & ~same_pid]
    both = np.concatenate([matches, non_matches])
    edges = np.linspace(float(both.min()), float(both.max()), 61)
    return distmat, result, reranked, verification, (edges, matches, non_matches)


def _assert_same_ranking(found: RankResult, want: RankResult) -> None:
    for name in ("cmc", "all_AP", "all_INP", "first_hit_rank"):
        np.testing.assert_array_equal(getattr(found, name), getattr(want, name), err_msg=name)
    assert (found.mAP, found.mINP, found.num_valid_queries) == (want.mAP, want.mINP, want.num_valid_queries)


@pytest.mark.parametrize("metric, memory_mb, rerank_on", [
    ("euclidean", 1e-9, True),  # one query row per block in every pass; the pairs streamed
    ("euclidean", None, True),  # the default budget: the pairs fit, in memory and sorted
    ("cosine", 1e-9, False),
    ("cosine", None, True),
])
def test_report_data_equals_the_dense_computation(metric, memory_mb, rerank_on):
    query, gallery = _hard_case()
    reranking = {"k1": 6, "k2": 3, "lambda_value": 0.2} if rerank_on else None
    metrics = metrics_from_features(query, gallery, metric=metric, rerank=rerank_on, verification=True,
                                    **(reranking or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the metrics are those of the features: no warning
        data = rp.evaluate_for_report(query=query, gallery=gallery, metrics=metrics, metric=metric, rerank=rerank_on,
                                      memory_mb=memory_mb, num_worst=3, num_best=2, num_random=3,
                                      **(reranking or {}))
    distmat, result, reranked, verification, (edges, matches, non_matches) = _dense_reference(
        query, gallery, metric, reranking)
    assert result.num_skipped_queries == 3  # the two junk queries and the one without a match
    _assert_same_ranking(data.result, result)
    if rerank_on:
        _assert_same_ranking(data.reranked, reranked)
    else:
        assert data.reranked is None
    assert dataclasses.replace(data.verification, roc=None) == dataclasses.replace(verification, roc=None)
    for found, want in zip(data.verification.roc, verification.roc):
        np.testing.assert_array_equal(found, want)
    assert data.metrics["verification"] == metrics["verification"]  # metrics.json: as reid test writes it
    # the histograms: numpy's counts and densities over the same edges, exact means
    np.testing.assert_array_equal(data.histograms.edges, edges)
    for side, values in ((data.histograms.matches, matches), (data.histograms.non_matches, non_matches)):
        np.testing.assert_array_equal(side.counts, np.histogram(values, bins=edges)[0])
        np.testing.assert_array_equal(side.density(edges), np.histogram(values, bins=edges, density=True)[0])
        assert side.size == values.size > 0
        assert side.mean == float(sum((Fraction(float(v)) for v in values), Fraction(0)) / values.size)
        assert f"{side.mean:.3f}" == f"{np.mean(values, dtype=np.float64):.3f}"  # the legend
    # the rank lists: exactly the drawn queries' rows of the matrix, and only those
    drawn = sorted(data.drawn)
    assert len(drawn) == 8 and sorted(data.rank_rows) == drawn
    for i in drawn:
        assert data.rank_rows[i].dtype == np.float32
        np.testing.assert_array_equal(data.rank_rows[i], distmat[i])


def test_a_tiny_memory_budget_writes_the_same_report(reid_case, tmp_path):
    """Every file (page, metrics.json, every PNG) byte for byte, with one query row per block."""
    index = rp.write_report(tmp_path / "tiny", **reid_case["args"], memory_mb=1e-9)
    names = sorted(p.name for p in reid_case["out"].iterdir())
    assert sorted(p.name for p in index.parent.iterdir()) == names
    for name in names:
        assert (index.parent / name).read_bytes() == (reid_case["out"] / name).read_bytes(), name


def test_leave_one_out_report_equals_the_dense_computation(tmp_path):
    data = _hard_case(seed=8)[1]
    data = dataclasses.replace(data, pids=np.maximum(data.pids, 0) % 6)  # no junk: every item is a query
    metrics = metrics_from_features(data, data, protocol="leave_one_out", nmi=False)
    found = rp.evaluate_for_report(query=data, gallery=None, metrics=metrics, protocol="leave_one_out",
                                   memory_mb=1e-9, num_worst=2, num_best=1, num_random=1)
    features = postprocess_features(data.features)
    distmat = np.asarray(pairwise_distance(features, features))
    q_cams, g_cams = protocol_camids("leave_one_out", data.camids, data.camids)
    _assert_same_ranking(found.result, evaluate_rank(distmat, data.pids, data.pids, q_cams, g_cams, max_rank=50))
    want = verification_metrics(distmat, data.pids, data.pids, q_cams, g_cams)
    assert dataclasses.replace(found.verification, roc=None) == want
    for i in found.drawn:
        np.testing.assert_array_equal(found.rank_rows[i], distmat[i])


def test_plot_roc(tmp_path):
    fpr, tpr = np.array([0.0, 0.0, 0.001, 0.2, 1.0]), np.array([0.0, 0.3, 0.5, 0.9, 1.0])
    path = vis.plot_roc(fpr, tpr, tmp_path / "roc.png", points={"FPR 0.001": (1e-3, 0.5), "EER": (0.15, 0.85)})
    assert cv2.imread(str(path)).shape == (360, 500, 3)
    with pytest.raises(ValueError, match="fpr and tpr"):
        vis.plot_roc(fpr, tpr[:-1], tmp_path / "bad.png")


# --------------------------------------------------------------------------- in a browser

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH "
                                                           "(CI installs Debian's chromium)")


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _dom(tmp_path: Path, index: Path, fragment: str = "") -> tuple[str, str]:
    """(the DOM after the page's script ran, the browser's log)."""
    done = _chromium(tmp_path, index.as_uri() + fragment, "--dump-dom")
    return done.stdout, done.stderr


def _status(dom: str) -> str:
    match = re.search(r'<pre id="status">(.*?)</pre>', dom, re.DOTALL)
    assert match, dom[-2000:]
    return match.group(1)


@needs_browser
def test_browser_loads_every_image_without_errors(reid_case, tmp_path):
    dom, log = _dom(tmp_path, reid_case["index"])
    num_images = len(re.findall(r"<img ", reid_case["html"]))
    assert _status(dom) == f"ok {num_images} images"
    assert "Uncaught" not in log and "Failed to load resource" not in log
    page = _Page(dom)
    result = evaluate_rank(reid_case["distmat"], *reid_case["labels"], max_rank=10)
    assert len(page.rows) == result.num_valid_queries  # exactly the valid queries
    assert not any("hidden" in attrs for attrs, _ in page.rows)
    assert page.script_tags == 1  # the file name with <script> stayed text
    assert ODD_NAME in page.column("file")


@needs_browser
def test_browser_sorts_the_query_table(reid_case, tmp_path):
    original = _Page(reid_case["html"])
    rows = sorted(tuple(cells) for _, cells in original.rows)

    dom, _ = _dom(tmp_path, reid_case["index"], "#sort=ap")
    page = _Page(dom)
    ap = [float(v) for v in page.column("ap")]
    assert ap == sorted(ap) and ap != [float(v) for v in original.column("ap")]
    assert sorted(tuple(cells) for _, cells in page.rows) == rows  # the same rows, reordered
    assert [h.get("aria-sort") for h in page.heads if h.get("data-key") == "ap"] == ["ascending"]

    dom, _ = _dom(tmp_path, reid_case["index"], "#sort=-rank")
    ranks = [int(v) for v in _Page(dom).column("rank")]
    assert ranks == sorted(ranks, reverse=True)
    assert max(ranks) >= 10  # numeric, not text order ("9" > "10")

    dom, _ = _dom(tmp_path, reid_case["index"], "#sort=file")
    files = _Page(dom).column("file")
    assert files == sorted(files)


@needs_browser
def test_browser_filters_failures(reid_case, tmp_path):
    dom, _ = _dom(tmp_path, reid_case["index"], "#sort=-ap&failures")
    page = _Page(dom)
    shown = [cells for attrs, cells in page.rows if "hidden" not in attrs]
    assert all(attrs.get("class") == "miss" for attrs, _ in page.rows if "hidden" not in attrs)
    assert all(attrs.get("class") != "miss" for attrs, _ in page.rows if "hidden" in attrs)
    assert 0 < len(shown) < len(page.rows) and all(int(cells[-1]) > 1 for cells in shown)
    assert f"{len(shown)} of {len(page.rows)} queries shown" in dom
    assert re.search(r'<input type="checkbox" id="failures"[^>]*>', dom)
    assert _status(dom).startswith("ok ")


@needs_browser
def test_browser_reports_a_missing_image(reid_case, tmp_path):
    """The status check is not vacuous: a missing PNG is reported."""
    copy = tmp_path / "copy"
    shutil.copytree(reid_case["out"], copy)
    (copy / "roc.png").unlink()
    dom, _ = _dom(tmp_path, copy / "index.html")
    assert _status(dom).startswith("errors:") and "image failed to load: roc.png" in _status(dom)


@needs_browser
def test_browser_reports_a_script_error(reid_case, tmp_path):
    """A script error leaves #status unset and shows in the browser's log as "Uncaught"."""
    copy = tmp_path / "copy"
    shutil.copytree(reid_case["out"], copy)
    page = copy / "index.html"
    page.write_text(page.read_text().replace("var loaded = 0;", "var loaded = 0; notAFunction();", 1))
    dom, log = _dom(tmp_path, page)
    assert _status(dom) == "page script did not run"
    assert "Uncaught ReferenceError: notAFunction" in log


@needs_browser
def test_browser_screenshot_is_not_blank(reid_case, tmp_path):
    shot = tmp_path / "page.png"
    _chromium(tmp_path, reid_case["index"].as_uri(), f"--screenshot={shot}", "--window-size=1280,2000",
              "--hide-scrollbars")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2000, 1280)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # not a single colour
    table = image[80:420]  # title, then the metrics tables
    assert (table.min(axis=2) < 100).mean() > 0.005  # dark text
    colourful = (image.max(axis=2).astype(int) - image.min(axis=2)) > 80
    assert colourful.sum() > 1000  # the plots' curves and bars: the PNGs are painted
