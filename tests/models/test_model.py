"""ReidModel over tiny timm trunks: shapes, last stride, pooling, BNNeck, leaky ReLU, weights files."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import timm
import timm.models._builder as timm_builder
import torch
import torch.nn.functional as F
from torch import nn

from reid.evaluation.features import postprocess_features
from reid.models import (
    FEATURE_KINDS,
    BNNeck,
    EmbeddingModule,
    GeM,
    MixPool,
    ModelOutput,
    ReidModel,
    backbone_feature_map,
    build_backbone,
    build_model,
    build_pooling,
    set_final_activation,
    set_last_stride_one,
)
from reid.models import weights as W

# Tiny timm 1.0 test models of two families (ResNet with BasicBlock/Bottleneck, EfficientNet).
TINY_BACKBONES = ["test_resnet", "test_efficientnet"]
IMAGES = (4, 3, 64, 32)  # B x 3 x H x W; both trunks reduce by 32 -> 2 x 1 (4 x 2 with last stride 1)


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(*IMAGES, generator=torch.Generator().manual_seed(seed))


# --- output --------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", TINY_BACKBONES)
@pytest.mark.parametrize("neck", [True, False])
def test_output_shapes_in_train_and_eval(backbone, neck):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=11, neck=neck)
    dim = timm.create_model(backbone, num_classes=0).num_features
    assert (model.feature_dim, model.num_classes) == (dim, 11)
    for train in (True, False):
        model.train(train)
        out = model(images())
        assert type(out) is ModelOutput
        assert out.embeddings.shape == out.bn_embeddings.shape == (IMAGES[0], dim)
        assert out.logits.shape == (IMAGES[0], 11)
        assert (out.bn_embeddings is out.embeddings) == (not neck)
        if neck and not train:  # eval BN: running statistics, weight 1, bias 0
            bn = model.neck
            expected = (out.embeddings - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
            torch.testing.assert_close(out.bn_embeddings, expected)
        if neck and train:  # train BN: batch statistics (biased variance)
            e = out.embeddings
            expected = (e - e.mean(0)) / torch.sqrt(e.var(0, unbiased=False) + model.neck.eps)
            torch.testing.assert_close(out.bn_embeddings, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.logits = out.embeddings
    # registered as a pytree node: torch.export and DDP find the tensors inside
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    assert [id(t) for t in leaves] == [id(out.embeddings), id(out.bn_embeddings), id(out.logits)]


def test_logits_are_the_bias_free_classifier_over_bn_embeddings():
    model = build_model("test_resnet", num_classes=5).eval()
    out = model(images())
    assert model.classifier.bias is None
    torch.testing.assert_close(out.logits, out.bn_embeddings @ model.classifier.weight.t())
    # the embeddings are the pooled trunk map
    torch.testing.assert_close(out.embeddings, backbone_feature_map(model.backbone, images()).mean(dim=(2, 3)))


def test_classifier_init_std_and_bnneck_init():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=200, last_stride=None)
    weight = model.classifier.weight
    assert weight.shape == (200, 512)
    assert weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(weight.mean().item()) < 1e-4
    neck = model.neck
    assert isinstance(neck, BNNeck)
    assert torch.equal(neck.weight, torch.ones(512)) and neck.weight.requires_grad
    assert torch.equal(neck.bias, torch.zeros(512)) and not neck.bias.requires_grad


def test_bnneck_bias_stays_zero_through_training_steps():
    model = build_model("test_resnet", num_classes=3).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    before = model.neck.weight.detach().clone()
    for step in range(2):
        out = model(images(step))
        loss = F.cross_entropy(out.logits * 100, torch.tensor([0, 1, 2, 0])) + out.bn_embeddings.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.neck.bias.grad is None
    assert torch.equal(model.neck.bias, torch.zeros_like(model.neck.bias))
    assert not torch.equal(model.neck.weight, before)  # the scale does learn


def test_model_errors():
    with pytest.raises(ValueError, match="pooling: unknown name 'sum'; expected one of avg, max, gem, mix"):
        build_model("test_resnet", 3, pooling="sum")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("test_resnet", 0)
    with pytest.raises(ValueError, match="last_stride"):
        build_model("test_resnet", 3, last_stride=3)


def test_channels_last_output_family_is_pooled_over_space():
    # MambaOut's forward_features returns B x H x W x C in timm 1.0 (output_fmt "NHWC")
    model = build_model("test_mambaout", 3).eval()
    fmap = backbone_feature_map(model.backbone, images())
    assert fmap.shape == (4, model.feature_dim, 4, 2)
    torch.testing.assert_close(model(images()).embeddings, model.backbone.forward_features(images()).mean(dim=(1, 2)))


def test_token_backbone_warns_and_fails_clearly():
    with pytest.warns(UserWarning, match="last_stride=1 is not supported for backbone test_vit"):
        model = build_model("test_vit", 3)
    with pytest.raises(ValueError, match="expected a feature map B x C x H x W"):
        model(torch.randn(2, 3, *timm.create_model("test_vit").pretrained_cfg["input_size"][1:]))


# --- channels_last -------------------------------------------------------------------------


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    plain = build_model("test_resnet", 7).eval()
    fast = build_model("test_resnet", 7, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    conv = fast.backbone.conv1[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = plain(images()), fast(images())
    for field in ("embeddings", "bn_embeddings", "logits"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-5)


# --- last stride ---------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["test_resnet", "resnet18", "test_efficientnet"])
def test_last_stride_one_doubles_the_feature_map(backbone):
    maps = {}
    for last_stride in (1, 2, None):
        trunk = build_backbone(backbone, last_stride=last_stride).eval()
        maps[last_stride] = backbone_feature_map(trunk, images())
    assert maps[2].shape[2:] == maps[None].shape[2:] == (2, 1)
    assert maps[1].shape[2:] == (4, 2)
    assert maps[1].shape[:2] == maps[2].shape[:2]


def test_last_stride_one_changes_the_expected_resnet_modules():
    plain = build_backbone("resnet18", last_stride=1).layer4[0]  # BasicBlock, strided 1x1 conv shortcut
    assert plain.conv1.stride == (1, 1) and plain.downsample[0].stride == (1, 1)
    avg_down = build_backbone("test_resnet", last_stride=1).layer4[0]  # "-D" style: AvgPool2d shortcut
    assert avg_down.conv1.stride == (1, 1) and isinstance(avg_down.downsample[0], nn.Identity)
    untouched = build_backbone("test_resnet", last_stride=2).layer4[0]
    assert untouched.conv1.stride == (2, 2) and isinstance(untouched.downsample[0], nn.AvgPool2d)
    # no parameter changes: weights of one load into the other
    build_backbone("test_resnet", last_stride=1).load_state_dict(build_backbone("test_resnet", last_stride=2).state_dict())


def test_bottleneck_resnet_last_stride_and_leaky_relu():
    from timm.models.resnet import Bottleneck

    trunk = timm.create_model("test_resnet", block=Bottleneck, num_classes=0, global_pool="").eval()
    assert set_last_stride_one(trunk)
    block = trunk.layer4[0]  # Bottleneck: the stride sits on conv2
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
    assert isinstance(block.downsample[0], nn.Identity)
    assert backbone_feature_map(trunk, images()).shape == (4, 384, 4, 2)
    set_final_activation(trunk, 0.05)
    assert isinstance(block.act3, nn.LeakyReLU) and block.act3.negative_slope == 0.05
    assert [n for n, m in trunk.named_modules() if isinstance(m, nn.LeakyReLU)] == ["layer4.0.act3"]


def test_last_stride_unsupported_family_warns_and_leaves_trunk_unchanged():
    # ConvNeXt downsamples with a 2x2 stride-2 "patchify" conv: stride 1 would not double the map
    with pytest.warns(UserWarning, match="last_stride=1 is not supported for backbone test_convnext"):
        trunk = build_backbone("test_convnext", last_stride=1)
    assert backbone_feature_map(trunk.eval(), images()).shape[2:] == (2, 1)


# --- pooling -------------------------------------------------------------------------------


def known_map() -> torch.Tensor:
    # one image, two channels of 2 x 2: [[1, 2], [3, 4]] and [[0, -1], [2, 5]]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [2.0, 5.0]]]])


def test_poolings_against_hand_computation():
    x = known_map()
    torch.testing.assert_close(build_pooling("avg")(x), torch.tensor([[2.5, 1.5]]))
    torch.testing.assert_close(build_pooling("max")(x), torch.tensor([[4.0, 5.0]]))
    torch.testing.assert_close(build_pooling("mix", pool_lambda=0.25)(x), torch.tensor([[0.25 * 4 + 0.75 * 2.5, 0.25 * 5 + 0.75 * 1.5]]))
    # GeM p=3: (mean of cubes) ** (1/3); values below eps=1e-6 are clamped to eps first
    expected = [((1 + 8 + 27 + 64) / 4) ** (1 / 3), ((2 * 1e-18 + 8 + 125) / 4) ** (1 / 3)]
    for learnable in (True, False):
        torch.testing.assert_close(build_pooling("gem", gem_p=3.0, gem_learnable=learnable)(x), torch.tensor([expected]))


def test_gem_p1_is_avg_and_mix_endpoints_are_avg_and_max():
    x = torch.rand(3, 5, 4, 2, generator=torch.Generator().manual_seed(0)) + 0.1  # positive: no clamping
    avg, mx = build_pooling("avg")(x), build_pooling("max")(x)
    torch.testing.assert_close(GeM(p=1.0)(x), avg)
    torch.testing.assert_close(build_pooling("mix", pool_lambda=0.0)(x), avg)
    torch.testing.assert_close(build_pooling("mix", pool_lambda=1.0)(x), mx)
    assert GeM(p=50.0, learnable=False)(x).sub(mx).abs().max() < 0.05  # large p tends to max


def test_gem_learnable_p_gets_a_gradient_and_fixed_p_is_not_state():
    learnable = GeM(3.0)
    learnable(known_map()).sum().backward()
    assert learnable.p.grad is not None and learnable.p.grad.abs().item() > 0
    assert list(learnable.state_dict()) == ["p"]
    fixed = GeM(3.0, learnable=False)
    assert list(fixed.state_dict()) == [] and list(fixed.parameters()) == []
    with pytest.raises(ValueError, match="pool_lambda"):
        build_pooling("mix", pool_lambda=1.5)


def test_model_pooling_options_and_switch():
    torch.manual_seed(0)
    model = build_model("test_resnet", 3, pooling="gem", gem_p=4.0).eval()
    assert isinstance(model.pool, GeM) and model.pool.p.item() == 4.0
    fmap = backbone_feature_map(model.backbone, images())
    model.set_pooling("mix", pool_lambda=0.3)
    expected = 0.3 * fmap.amax(dim=(2, 3)) + 0.7 * fmap.mean(dim=(2, 3))
    torch.testing.assert_close(model(images()).embeddings, expected)


# --- embed: the one path from images to embeddings ------------------------------------------


@pytest.mark.parametrize("feature", FEATURE_KINDS)
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_embed_is_the_chosen_feature_flip_averaged_and_normalised(feature, flip, normalize):
    """What extract_features, FeatureExtractor and the ONNX module computed each on its own before."""
    torch.manual_seed(0)
    model = build_model("test_resnet", 3).eval()
    x = images()
    with torch.no_grad():
        out, mirror = model(x), model(torch.flip(x, dims=[3]))
        assert not torch.equal(out.embeddings, out.bn_embeddings)  # the choice of feature matters
        field = {"bn": "bn_embeddings", "pre_bn": "embeddings"}[feature]
        raw = 0.5 * (getattr(out, field) + getattr(mirror, field)) if flip else getattr(out, field)
        expected = F.normalize(raw, p=2.0, dim=1, eps=1e-12) if normalize else raw
        got = model.embed(x, feature=feature, flip=flip, normalize=normalize)
        assert got.dtype == torch.float32 and torch.equal(got, expected)  # bit for bit
        module = EmbeddingModule(model, feature=feature, flip=flip, normalize=normalize)
        assert torch.equal(module(x), got)  # the exported graph is the same path
    if normalize:  # evaluation's numpy normalisation agrees to float32 rounding
        np.testing.assert_allclose(got.numpy(), postprocess_features(raw.numpy()), rtol=0, atol=1e-7)


def test_embed_refuses_an_unknown_feature():
    model = build_model("test_resnet", 3).eval()
    with pytest.raises(ValueError, match="feature: expected one of bn, pre_bn, got 'logits'"):
        model.embed(images(), feature="logits")


# --- inference options (Group Loss++ test-time switches) ------------------------------------


def test_inference_options_switch_pooling_and_activation_and_restore_after_an_error():
    torch.manual_seed(0)
    model = build_model("test_resnet", 3, leaky_relu=0.2).eval()
    trained_pool, trained_activation = model.pool, model.backbone.layer4[-1].act2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(images()).embeddings
    fmap_switched = None
    with pytest.raises(RuntimeError, match="inside the options"):
        with model.inference_options(pooling="mix", pool_lambda=0.3, leaky_relu=0.5) as switched:
            assert switched is model
            assert isinstance(model.pool, MixPool) and model.pool.lam == 0.3
            assert model.backbone.layer4[-1].act2.negative_slope == 0.5
            with torch.no_grad():
                fmap_switched = backbone_feature_map(model.backbone, images())
                torch.testing.assert_close(model(images()).embeddings, 0.3 * fmap_switched.amax(dim=(2, 3))
                                           + 0.7 * fmap_switched.mean(dim=(2, 3)))
            raise RuntimeError("an error inside the options")
    # the very modules of before, the weights untouched, the same outputs
    assert model.pool is trained_pool and model.backbone.layer4[-1].act2 is trained_activation
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(images()).embeddings, before)
        assert not torch.equal(backbone_feature_map(model.backbone, images()), fmap_switched)


def test_inference_options_leave_what_is_not_asked_alone():
    torch.manual_seed(0)
    model = build_model("test_resnet", 3, pooling="gem").eval()
    trained_pool, trained_activation = model.pool, model.backbone.layer4[-1].act2
    with model.inference_options(leaky_relu=0.1):
        assert model.pool is trained_pool and model.backbone.layer4[-1].act2.negative_slope == 0.1
    assert model.backbone.layer4[-1].act2 is trained_activation
    with model.inference_options(pooling="max"):
        assert model.backbone.layer4[-1].act2 is trained_activation and model.pool is not trained_pool
    assert model.pool is trained_pool
    with model.inference_options():
        assert model.pool is trained_pool


# --- leaky final ReLU ----------------------------------------------------------------------


def test_leaky_relu_replaces_the_final_activation():
    torch.manual_seed(0)
    plain = build_backbone("test_resnet").eval()
    leaky = copy.deepcopy(plain)
    set_final_activation(leaky, 0.1)
    final = leaky.layer4[-1].act2  # BasicBlock: act2 after the residual sum
    assert isinstance(final, nn.LeakyReLU) and final.negative_slope == 0.1
    assert isinstance(plain.layer4[-1].act2, nn.ReLU)

    captured = {}

    def capture_input(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # returns None: output kept
        captured["pre"] = inputs[0].detach().clone()

    final.register_forward_hook(capture_input)
    leaky_map = backbone_feature_map(leaky, images())
    plain_map = backbone_feature_map(plain, images())
    pre = captured["pre"]
    assert (pre < 0).float().mean() > 0.1  # negative pre-activations exist ...
    torch.testing.assert_close(leaky_map, F.leaky_relu(pre, 0.1))
    torch.testing.assert_close(plain_map, F.relu(pre))
    assert (leaky_map < 0).any() and not torch.allclose(leaky_map, plain_map)  # ... and change the output

    set_final_activation(leaky, 0.0)  # switching back restores the plain trunk
    torch.testing.assert_close(backbone_feature_map(leaky, images()), plain_map)


def test_leaky_relu_model_option_and_unsupported_family():
    torch.manual_seed(0)
    model = build_model("test_resnet", 3, leaky_relu=0.2).eval()
    assert model.backbone.layer4[-1].act2.negative_slope == 0.2
    before = model(images()).embeddings
    model.set_leaky_relu(0.0)
    assert not torch.allclose(model(images()).embeddings, before)
    with pytest.raises(ValueError, match=r"backbone test_efficientnet ends with bn2.act \(SiLU\)"):
        build_backbone("test_efficientnet", leaky_relu=0.1)


# --- pretrained weights --------------------------------------------------------------------


def outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    a.eval(), b.eval()
    return torch.equal(backbone_feature_map(a, images()), backbone_feature_map(b, images()))


def test_pretrained_local_file_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("test_resnet")
    path = tmp_path / "trunk.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    assert not outputs_equal(build_backbone("test_resnet"), source)  # a fresh init differs
    loaded = build_backbone("test_resnet", pretrained=str(path))
    assert outputs_equal(loaded, source)


def test_pretrained_file_wrappers_prefixes_and_classifier_keys(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model("test_resnet", num_classes=7)  # has fc.weight / fc.bias
    state = {f"module.{k}": v for k, v in full.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = build_backbone("test_resnet", pretrained=path, last_stride=None)
    reference = timm.create_model("test_resnet", num_classes=0, global_pool="")
    reference.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")})
    assert outputs_equal(loaded, reference)

    import safetensors.torch

    safe = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(full.state_dict(), str(safe))
    assert outputs_equal(build_backbone("test_resnet", pretrained=safe, last_stride=None), reference)

    model = build_model("test_resnet", 4)  # a reid checkpoint: {"model": ReidModel.state_dict()}
    ckpt = tmp_path / "reid.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, ckpt)
    assert outputs_equal(build_backbone("test_resnet", pretrained=ckpt), model.backbone)


def test_pretrained_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found: .*nowhere/weights.pth"):
        build_backbone("test_resnet", pretrained=str(missing))
    other = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), other)
    with pytest.raises(ValueError, match=r"efficientnet.pth does not fit backbone test_resnet: \d+ missing: .*conv1"):
        build_backbone("test_resnet", pretrained=other)
    junk = tmp_path / "junk.pth"
    torch.save({"epoch": 1}, junk)
    with pytest.raises(ValueError, match="junk.pth: expected a state_dict"):
        build_backbone("test_resnet", pretrained=junk)


def test_weights_module_loads_a_file_into_a_bare_trunk(tmp_path):
    """weights.py alone (no backbone.py): the timm factory, then a DataParallel-prefixed file."""
    torch.manual_seed(0)
    source = W.create_trunk("test_resnet")
    head_in = torch.zeros(1, source.num_features, 2, 2)
    assert isinstance(source.get_classifier(), nn.Identity)  # num_classes=0 ...
    assert source.forward_head(head_in).shape == head_in.shape  # ... and no pooling: the map passes through
    path = tmp_path / "dp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    assert W.read_state_dict(path).keys() == source.state_dict().keys()
    torch.manual_seed(1)
    target = W.create_trunk("test_resnet", pretrained=False)
    assert not outputs_equal(target, source)
    W.load_weights_file(target, path)
    assert outputs_equal(target, source)


def test_create_trunk_names_model_backbone_and_what_timm_knows():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5O' \(model.backbone\): .*did you mean .*resnet50"):
        W.create_trunk("resnet5O")
    with pytest.raises(ValueError, match=r"unknown backbone 'test_resnt' .*did you mean .*test_resnet"):
        build_backbone("test_resnt")
    no_tag = r"timm has no pretrained tag 'no_such_tag' for resnet18; its tags: .*resnet18\.a1_in1k"
    with pytest.raises(ValueError, match=no_tag):
        W.create_trunk("resnet18.no_such_tag")


class _HttpxLikeError(Exception):
    """An error class from a download library that is not an OSError (as httpx's are)."""


_HttpxLikeError.__module__ = "httpx._exceptions"


def test_is_network_error_follows_the_cause_chain():
    assert W.is_network_error(ConnectionError("reset"))
    assert W.is_network_error(_HttpxLikeError("timeout"))
    assert not W.is_network_error(ValueError("bad shape"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as err:
            raise RuntimeError("timm could not fetch the weights") from err
    except RuntimeError as wrapped:
        assert W.is_network_error(wrapped)
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle ends the walk instead of looping
    assert not W.is_network_error(looped)
    assert W.first_line(RuntimeError("first\nsecond")) == "first"
    assert W.first_line(RuntimeError("  ")) == "no message"


@pytest.mark.parametrize("error", ["connection", "hub"])
def test_pretrained_true_offline_gives_a_clear_error(monkeypatch, error):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        if error == "connection":
            raise ConnectionError("[Errno -2] Name or service not known")
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    # timm fetches hub weights through these two names; no network is touched by this test
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"weights for backbone 'test_resnet.r160_in1k'.*local weights file") as info:
        build_model("test_resnet.r160_in1k", 3, pretrained=True)
    assert isinstance(info.value.__cause__, (ConnectionError, LocalEntryNotFoundError))


def test_model_reid_model_from_parts():
    trunk = build_backbone("test_resnet")
    model = ReidModel(trunk, 6, neck=False)
    assert isinstance(model.neck, nn.Identity) and isinstance(model.pool, nn.Module)
    assert model(images()).logits.shape == (4, 6)


def test_embedding_layer_maps_pooled_features_to_embedding_dim():
    torch.manual_seed(0)
    model = build_model("test_resnet", 5, embedding_dim=32, last_stride=2).eval()
    images = torch.randn(3, 3, 64, 32)
    out = model(images)
    assert model.feature_dim == 32 and out.embeddings.shape == (3, 32) and out.logits.shape == (3, 5)
    pooled = model.pool(model.backbone.forward_features(images))
    expected = pooled @ model.embedding.weight.T + model.embedding.bias
    assert torch.allclose(out.embeddings, expected, atol=1e-6)
    assert isinstance(build_model("test_resnet", 5).embedding, torch.nn.Identity)
    with pytest.raises(ValueError, match="embedding_dim: expected 0 \\(none\\) or a positive size, got -1"):
        build_model("test_resnet", 5, embedding_dim=-1)


def test_freeze_bn_keeps_the_trunk_running_statistics_and_trains_the_rest():
    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3, freeze_bn=True)
    trunk_bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in trunk_bns]
    neck_mean = model.neck.running_mean.clone()
    model.train()
    assert model.training and all(not bn.training for bn in trunk_bns)
    out = model(images())
    out.logits.sum().backward()
    for bn, (mean, var) in zip(trunk_bns, before):
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert bn.weight.grad is not None  # the affine weights still learn
    assert model.neck.training  # the BNNeck is not part of the trunk: it trains as usual
    assert not torch.equal(model.neck.running_mean, neck_mean)
    # the same model without freeze_bn updates the trunk's statistics
    plain = build_model("test_resnet", num_classes=3).train()
    first = next(m for m in plain.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    mean = first.running_mean.clone()
    plain(images())
    assert not torch.equal(first.running_mean, mean)
    model.eval()
    assert not any(m.training for m in model.modules())


def test_freeze_layers_keeps_the_named_trunk_layers_exactly_as_built():
    torch.manual_seed(0)
    model = build_model("test_resnet", num_classes=3, freeze_layers=["conv1", "bn1", "layer1"])
    frozen = [model.backbone.conv1, model.backbone.bn1, model.backbone.layer1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.training and model.backbone.layer2.training
    assert not any(m.training for layer in frozen for m in layer.modules())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(images()).logits.square().sum().backward()
    optimizer.step()
    after = model.state_dict()
    frozen_keys = [k for k in before if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))]
    assert frozen_keys and all(torch.equal(before[k], after[k]) for k in frozen_keys)  # running stats too
    assert all(p.grad is None for layer in frozen for p in layer.parameters())
    # the layers above learn, and their statistics move (test_resnet zero-inits each residual
    # branch's last BatchNorm, so the shortcut's weights are the ones with a gradient at the start)
    assert not torch.equal(before["backbone.layer2.0.downsample.1.weight"], after["backbone.layer2.0.downsample.1.weight"])
    assert not torch.equal(before["backbone.layer2.0.bn1.running_mean"], after["backbone.layer2.0.bn1.running_mean"])
    model.eval()
    assert not any(m.training for m in model.modules())


def test_freeze_layers_names_the_valid_layers_on_a_typo():
    with pytest.raises(ValueError, match=r"freeze_layers: backbone test_resnet has no submodule 'layer9'; its "
                                         r"top-level ones are conv1, bn1, act1, maxpool, layer1, .*e\.g\. blocks\.0"):
        build_model("test_resnet", num_classes=3, freeze_layers=["layer1", "layer9"])
