"""The Group Loss++ inference ablation of the engine."""

import pytest
import torch

from reid.builders import model_from_config
from reid.config import load_config
from reid.data import build_dataset
from reid.data.loaders import build_test_loader
from reid.engine import ablate_inference, evaluate


@pytest.fixture(scope="module")
def tiny_setup(tiny_market):
    torch.manual_seed(0)
    model = model_from_config(load_config(None, ["model.backbone=test_resnet"]), 8).eval()
    dataset = build_dataset("market1501", tiny_market)
    loaders = [build_test_loader(items, height=64, width=32, batch_size=16, num_workers=0)
               for items in (dataset.query, dataset.gallery)]
    return model, loaders


def test_ablation_rows_equal_single_evaluations_and_restore_the_model(tiny_setup):
    model, (query_loader, gallery_loader) = tiny_setup
    options = dict(k1=5, k2=2, max_rank=10)
    images = next(iter(query_loader))[0]
    with torch.no_grad():
        before = model(images).bn_embeddings.clone()
    rows = ablate_inference(model, query_loader, gallery_loader, pool_lambda=0.3, leaky_slope=0.2, beta=0.5, **options)
    assert len(rows) == 32 and "baseline" in rows and "flip+mix+leaky+beta+rerank" in rows
    baseline = evaluate(model, query_loader, gallery_loader, rerank=True, **options)
    assert rows["baseline"]["mAP"] == pytest.approx(baseline["mAP"])
    assert rows["rerank"]["mAP"] == pytest.approx(baseline["rerank"]["mAP"])
    flipped = evaluate(model, query_loader, gallery_loader, flip=True, beta=0.5, **options)
    assert rows["flip+beta"]["mAP"] == pytest.approx(flipped["mAP"])
    with torch.no_grad():
        after = model(images).bn_embeddings
    assert torch.equal(before, after)  # pooling and activation restored


def test_ablation_switches_change_what_they_say(tiny_setup):
    model, (query_loader, gallery_loader) = tiny_setup
    rows = ablate_inference(model, query_loader, gallery_loader, switches=("mix", "leaky"), pool_lambda=1.0,
                            leaky_slope=0.5, max_rank=10)
    assert set(rows) == {"baseline", "mix", "leaky", "mix+leaky"}
    model.set_pooling("max")
    try:
        as_max = evaluate(model, query_loader, gallery_loader, max_rank=10)
    finally:
        model.set_pooling("avg")
    assert rows["mix"]["mAP"] == pytest.approx(as_max["mAP"])  # lambda = 1: pure max pooling
    with pytest.raises(ValueError, match="unknown inference switch\\(es\\) blur; valid: flip, mix"):
        ablate_inference(model, query_loader, gallery_loader, switches=("blur",))
