"""Progress bars of the long steps: shown when asked, quiet otherwise (and on a non-terminal stderr)."""

from __future__ import annotations

import numpy as np

from reid.ablation import ablate_inference
from reid.evaluation import evaluate_rank, pairwise_distance, rerank
from reid.inference import extract_features


def test_extraction_shows_images_per_second_when_asked(tiny_eval_setup, capsys):
    model, (query_loader, _) = tiny_eval_setup
    extract_features(model, query_loader, progress=True, description="extracting query")
    err = capsys.readouterr().err
    assert "extracting query" in err and "img/s" in err
    # the library default shows a bar only on a terminal: pytest's captured stderr is not one
    for progress in (None, False):
        extract_features(model, query_loader, progress=progress)
        assert capsys.readouterr().err == ""


def test_distances_ranking_and_reranking_show_their_bars(capsys):
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(70, 8)).astype(np.float32)
    labels = (rng.integers(0, 5, 20), rng.integers(0, 5, 70), rng.integers(0, 3, 20), rng.integers(0, 3, 70))
    quiet = [pairwise_distance(qf, gf), evaluate_rank(pairwise_distance(qf, gf), *labels, max_rank=5).all_AP,
             rerank(qf, gf, k1=5, k2=2)]
    assert capsys.readouterr().err == ""
    shown = [pairwise_distance(qf, gf, progress=True),
             evaluate_rank(pairwise_distance(qf, gf), *labels, max_rank=5, progress=True).all_AP,
             rerank(qf, gf, k1=5, k2=2, progress=True)]
    err = capsys.readouterr().err
    assert "distances" in err and "ranking" in err and "re-ranking (Jaccard)" in err
    for a, b in zip(quiet, shown):  # a bar changes nothing
        np.testing.assert_array_equal(a, b)


def test_ablation_names_each_row_on_its_bar(tiny_eval_setup, capsys):
    model, (query_loader, gallery_loader) = tiny_eval_setup
    rows = ablate_inference(model, query_loader, gallery_loader, switches=("flip", "beta"), max_rank=10,
                            progress=True)
    err = capsys.readouterr().err
    assert set(rows) == {"baseline", "beta", "flip", "flip+beta"}
    for name in rows:
        assert f"ablation {name}" in err
    assert "extracting gallery" in err
    ablate_inference(model, query_loader, gallery_loader, switches=("beta",), max_rank=10)
    assert capsys.readouterr().err == ""
