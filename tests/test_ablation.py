"""The Group Loss++ inference ablation (reid.ablation) and the model's inference options."""

import inspect
import sys

import pytest
import torch
from torch import nn

from reid.ablation import ablate_inference
from reid.engine import evaluate
from reid.models import ReidModel


def test_ablation_rows_equal_single_evaluations_and_restore_the_model(tiny_eval_setup):
    model, (query_loader, gallery_loader) = tiny_eval_setup
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


def test_ablation_switches_change_what_they_say(tiny_eval_setup):
    model, (query_loader, gallery_loader) = tiny_eval_setup
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


def test_ablation_switches_through_the_model_api_and_restores_it_after_an_error(tiny_eval_setup, monkeypatch):
    """Mix pooling and the leaky ReLU go through model.inference_options, never ``model.pool = ...``;
    an error in the middle of a row leaves the model as trained."""
    model, (query_loader, gallery_loader) = tiny_eval_setup
    trained_pool, trained_activation = model.pool, model.backbone.layer4[-1].act2
    images = next(iter(query_loader))[0]
    with torch.no_grad():
        before = model(images).bn_embeddings.clone()

    options_used, pool_setters = [], []
    real_options = ReidModel.inference_options

    def recording_options(self, **options):
        options_used.append(options)
        return real_options(self, **options)

    def spying_setattr(self, name, value):
        if name == "pool":
            pool_setters.append(sys._getframe(1).f_code.co_name)  # the function that assigned it
        nn.Module.__setattr__(self, name, value)

    monkeypatch.setattr(ReidModel, "inference_options", recording_options)
    monkeypatch.setattr(ReidModel, "__setattr__", spying_setattr)
    calls = []
    import reid.inference

    real_extract = reid.inference.extract_features  # what extract_query_gallery calls, per loader

    def extract_then_fail(*args, **kwargs):
        calls.append((type(model.pool).__name__, type(model.backbone.layer4[-1].act2).__name__))
        if len(calls) == 7:  # the query extraction of the last row: mix and leaky both on
            raise RuntimeError("extraction failed")
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(reid.inference, "extract_features", extract_then_fail)
    with pytest.raises(RuntimeError, match="extraction failed"):
        ablate_inference(model, query_loader, gallery_loader, switches=("mix", "leaky"), pool_lambda=0.3,
                         leaky_slope=0.2, max_rank=10)
    # rows: baseline, leaky, mix, mix+leaky (query and gallery each)
    assert calls == [("AvgPool", "ReLU")] * 2 + [("AvgPool", "LeakyReLU")] * 2 + [("MixPool", "ReLU")] * 2 + [
        ("MixPool", "LeakyReLU")]
    assert options_used == [dict(pooling=p, pool_lambda=0.3, leaky_relu=s)
                            for p in (None, "mix") for s in (None, 0.2)]
    assert pool_setters and set(pool_setters) <= {"set_pooling", "inference_options"}  # the model's own methods
    assert ".pool =" not in inspect.getsource(reid.ablation)
    assert model.pool is trained_pool and model.backbone.layer4[-1].act2 is trained_activation
    with torch.no_grad():
        assert torch.equal(model(images).bn_embeddings, before)


def test_unsupported_switches_names_the_leaky_relu_on_a_relu6_trunk_and_leaves_the_model_alone(tiny_eval_setup):
    from reid.ablation import unsupported_switches
    from reid.models import build_model

    model, _ = tiny_eval_setup
    assert unsupported_switches(model) == {}  # a ResNet ends in a ReLU
    torch.manual_seed(0)
    mobile = build_model("mobilenetv2_050", num_classes=3).eval()
    before = [type(m) for m in mobile.modules()]
    reasons = unsupported_switches(mobile)
    assert list(reasons) == ["leaky"] and "ends with bn2.act (ReLU6)" in reasons["leaky"]
    assert [type(m) for m in mobile.modules()] == before
    assert unsupported_switches(mobile, ("flip", "mix")) == {}
