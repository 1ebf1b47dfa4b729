"""Feature extraction, post-processing (beta normalisation) and the metrics built on them."""

import numpy as np
import pytest
import torch

from reid.builders import model_from_config
from reid.config import load_config
from reid.data import build_dataset
from reid.data.loaders import build_test_loader
from reid.evaluation import evaluate_rank, pairwise_distance, rerank
from reid.evaluation.evaluator import metrics_from_features
from reid.evaluation.features import FeatureSet, postprocess_features
from reid.inference import extract_features


def test_postprocess_is_normalize_plus_beta_times_raw():
    f = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    assert postprocess_features(f) == pytest.approx(np.array([[0.6, 0.8], [0.0, 1.0]]))
    assert postprocess_features(f, beta=0.5) == pytest.approx(np.array([[0.6 + 1.5, 0.8 + 2.0], [0.0, 1.0 + 1.0]]))
    assert postprocess_features(f, normalize=False, beta=0.5) == pytest.approx(1.5 * f)
    assert postprocess_features(np.zeros((1, 2))).tolist() == [[0.0, 0.0]]  # no NaN for a zero row


def test_feature_set_round_trip_and_errors(tmp_path):
    fs = FeatureSet(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1, 2, 3]), np.array([0, 1, 0]),
                    ["a.jpg", "b.jpg", "c.jpg"])
    fs.save(tmp_path / "f.npz")
    back = FeatureSet.load(tmp_path / "f.npz")
    assert np.array_equal(back.features, fs.features) and back.paths == fs.paths
    assert back.pids.tolist() == [1, 2, 3] and back.camids.tolist() == [0, 1, 0]
    np.savez(tmp_path / "bad.npz", features=fs.features, pids=fs.pids)
    with pytest.raises(KeyError, match=r"bad.npz: missing key\(s\) camids, paths"):
        FeatureSet.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", features=fs.features, pids=fs.pids[:2], camids=fs.camids, paths=fs.paths)
    with pytest.raises(ValueError, match="short.npz: features must be N x D with N pids"):
        FeatureSet.load(tmp_path / "short.npz")
    with pytest.raises(FileNotFoundError, match="none.npz"):
        FeatureSet.load(tmp_path / "none.npz")


@pytest.fixture(scope="module")
def tiny_model_and_loader(tiny_market):
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone=test_resnet"])
    model = model_from_config(cfg, 8).eval()
    dataset = build_dataset("market1501", tiny_market)
    return model, dataset, build_test_loader(dataset.query, height=64, width=32, batch_size=8, num_workers=0)


def test_extract_features_flip_averages_the_mirror_image(tiny_model_and_loader):
    model, dataset, loader = tiny_model_and_loader
    plain = extract_features(model, loader, feature="bn")
    flipped = extract_features(model, loader, feature="bn", flip=True)
    pre_bn = extract_features(model, loader, feature="pre_bn")
    images = torch.cat([batch[0] for batch in loader])
    with torch.no_grad():
        out, mirror = model(images), model(torch.flip(images, dims=[3]))
    assert np.allclose(plain.features, out.bn_embeddings.numpy(), atol=1e-5)
    assert np.allclose(pre_bn.features, out.embeddings.numpy(), atol=1e-5)
    assert np.allclose(flipped.features, 0.5 * (out.bn_embeddings + mirror.bn_embeddings).numpy(), atol=1e-5)
    assert plain.paths == [p for p, _, _ in dataset.query]
    assert plain.pids.tolist() == [pid for _, pid, _ in dataset.query]
    assert plain.camids.tolist() == [cam for _, _, cam in dataset.query]


def test_metrics_from_features_match_the_building_blocks():
    rng = np.random.default_rng(0)
    q = FeatureSet(rng.normal(size=(12, 8)).astype(np.float32), rng.integers(0, 4, 12), rng.integers(0, 3, 12), [""] * 12)
    g = FeatureSet(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 4, 40), rng.integers(0, 3, 40), [""] * 40)
    m = metrics_from_features(q, g, beta=0.2, rerank=True, k1=5, k2=2, max_rank=10)
    qf, gf = postprocess_features(q.features, beta=0.2), postprocess_features(g.features, beta=0.2)
    labels = (q.pids, g.pids, q.camids, g.camids)
    direct = evaluate_rank(pairwise_distance(qf, gf), *labels, max_rank=10)
    reranked = evaluate_rank(rerank(qf, gf, k1=5, k2=2), *labels, max_rank=10)
    assert m["mAP"] == pytest.approx(direct.mAP) and m["rank5"] == pytest.approx(direct.cmc[4])
    assert m["rerank"]["mAP"] == pytest.approx(reranked.mAP) and m["rerank"]["mINP"] == pytest.approx(reranked.mINP)


def test_metrics_do_not_depend_on_the_memory_budget():
    rng = np.random.default_rng(1)
    q = FeatureSet(rng.normal(size=(12, 8)).astype(np.float32), rng.integers(0, 4, 12), rng.integers(0, 3, 12), [""] * 12)
    g = FeatureSet(rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 4, 40), rng.integers(0, 3, 40), [""] * 40)
    options = dict(rerank=True, k1=5, k2=2, max_rank=10, verification=True)
    # one query row per block in every pass (the verification pairs streamed) against the default budget
    assert metrics_from_features(q, g, memory_mb=1e-9, **options) == metrics_from_features(q, g, **options)
    with pytest.raises(ValueError, match=r"memory_mb=-1: expected a positive number of MiB or None"):
        metrics_from_features(q, g, memory_mb=-1)


def test_load_refuses_non_finite_features_naming_the_file_and_row(tmp_path) -> None:
    feats = np.ones((4, 3), dtype=np.float32)
    feats[2, 1] = np.nan
    FeatureSet(feats, np.zeros(4, np.int64), np.zeros(4, np.int64), ["a", "b", "c.jpg", "d"]).save(tmp_path / "f.npz")
    with pytest.raises(ValueError, match=r"f\.npz: features contain NaN or inf \(first in row 2: c\.jpg\)"):
        FeatureSet.load(tmp_path / "f.npz")
