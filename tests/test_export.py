"""ONNX export: onnxruntime matches PyTorch (max |diff| < 1e-4) at a batch size other than the traced one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from reid.checkpoint import save_checkpoint  # noqa: E402
from reid.config import load_config, to_dict  # noqa: E402
from reid.data.transforms import build_transforms  # noqa: E402
from reid.export import export_onnx, onnx_metadata, run_onnx, verify_onnx  # noqa: E402
from reid.inference import FeatureExtractor  # noqa: E402
from reid.models import EmbeddingModule  # noqa: E402
from tools import export as export_tool  # noqa: E402

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def batch(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(size, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def input_batch_dim(path: Path):
    """The batch dimension of the graph's input: a symbolic name or a fixed size."""
    (graph_input,) = onnx.load(str(path)).graph.input
    dim = graph_input.type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value


def test_tool_exports_a_dynamic_batch_model_that_matches_pytorch(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    output = tmp_path / "onnx" / "model.onnx"
    result = export_tool.main(["--weights", str(path), "--output", str(output), "--batch-size", "2"])
    assert result["check_batch"] == 3 and result["max_abs_diff"] < 1e-4
    assert "max abs difference" in capsys.readouterr().out
    assert input_batch_dim(output) == "batch"
    metadata = onnx_metadata(output)
    assert metadata["height"] == str(HEIGHT) and metadata["normalize"] == "true" and metadata["pipeline"] == "reid"
    assert f"the image resized to {HEIGHT} x " in metadata["input"] and "resize" not in metadata

    # exported at batch 2, run at batches 3 and 1: L2-normalised bn embeddings of the model
    with torch.no_grad():
        for size in (3, 1):
            images = batch(size, seed=size)
            expected = F.normalize(model(images).bn_embeddings, dim=1).numpy()
            actual = run_onnx(output, images)
            assert actual.shape == (size, model.feature_dim)
            assert np.abs(actual - expected).max() < 1e-4


def test_onnx_matches_the_feature_extractor_on_image_files(checkpoint, tmp_path):
    path, model = checkpoint
    rng = np.random.default_rng(0)
    images = [cv2.resize(rng.integers(0, 256, (4, 2, 3), dtype=np.uint8), (40 + 9 * i, 90)) for i in range(3)]
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, height=HEIGHT, width=WIDTH)
    transform = build_transforms(HEIGHT, WIDTH, False)  # the preprocessing a deployment must reproduce
    tensors = torch.stack([transform(image=image)["image"] for image in images])
    expected = FeatureExtractor(model, height=HEIGHT, width=WIDTH)(images)
    assert np.abs(run_onnx(onnx_path, tensors) - expected).max() < 1e-4


def test_options_pre_bn_without_normalisation_with_flip(checkpoint, tmp_path):
    _, model = checkpoint
    onnx_path = tmp_path / "raw.onnx"
    module = export_onnx(model, onnx_path, height=HEIGHT, width=WIDTH, feature="pre_bn", normalize=False, flip=True,
                         dynamic_batch=False, batch_size=2, opset=13)
    assert input_batch_dim(onnx_path) == 2
    assert onnx.load(str(onnx_path)).opset_import[0].version == 13
    images = batch(2)
    with torch.no_grad():
        expected = 0.5 * (model(images).embeddings + model(images.flip(3)).embeddings)  # raw, flip-averaged
    actual = run_onnx(onnx_path, images)
    assert np.abs(actual - expected.numpy()).max() < 1e-4
    assert np.abs(np.linalg.norm(actual, axis=1) - 1).max() > 0.1  # really not normalised
    assert verify_onnx(onnx_path, module, images) < 1e-4
    with pytest.raises(Exception, match="(?s)invalid dimensions for input: images.*Got: 3 Expected: 2"):
        run_onnx(onnx_path, batch(3))


def test_metadata_describes_the_retrieval_resize_and_crop(checkpoint, tmp_path):
    _, model = checkpoint
    path = tmp_path / "retrieval.onnx"
    export_onnx(model, path, height=HEIGHT, width=WIDTH, pipeline="retrieval", resize=80, batch_size=1)
    metadata = onnx_metadata(path)
    assert (metadata["pipeline"], metadata["resize"]) == ("retrieval", "80")
    assert (f"the image's shorter side resized to 80, then a centre crop of {HEIGHT} x {WIDTH}, "
            "(pixel / 255 - mean) / std") in metadata["input"]
    with pytest.raises(ValueError, match="pipeline: expected one of reid, retrieval, got 'crop'"):
        export_onnx(model, tmp_path / "never.onnx", height=HEIGHT, width=WIDTH, pipeline="crop")
    assert not (tmp_path / "never.onnx").exists()


def test_checkpoint_test_settings_are_the_defaults(checkpoint, tmp_path):
    _, model = checkpoint
    path = tmp_path / "flip.pt"  # the same weights, stored with other test settings
    cfg = load_config(None, ["model.backbone=test_resnet", f"data.height={HEIGHT}", f"data.width={WIDTH}",
                             "test.flip=true", "test.feature=pre_bn"])
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "num_classes": 6}, path)
    output = tmp_path / "flip.onnx"
    result = export_tool.main(["--weights", str(path), "--output", str(output), "--no-normalize"])
    assert (result["feature"], result["flip"], result["normalize"]) == ("pre_bn", True, False)
    assert onnx_metadata(output)["flip"] == "true"
    images = batch(3)
    with torch.no_grad():
        expected = EmbeddingModule(model, feature="pre_bn", normalize=False, flip=True)(images)
    assert np.abs(run_onnx(output, images) - expected.numpy()).max() < 1e-4


def test_tool_fails_above_the_tolerance(checkpoint, tmp_path, monkeypatch, capsys):
    path, _ = checkpoint
    monkeypatch.setattr("reid.export.verify_onnx", lambda *args: 3e-4)
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["--weights", str(path), "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 1
    assert "3.000e-04 (ABOVE tolerance 0.0001)" in capsys.readouterr().out


def test_wrong_feature_name_is_an_error(checkpoint):
    _, model = checkpoint
    with pytest.raises(ValueError, match="feature: expected one of bn, pre_bn, got 'logits'"):
        EmbeddingModule(model, feature="logits")


def test_export_never_replaces_a_file_unasked(tiny_checkpoint, tmp_path, capsys):
    import reid.cli

    weights, _ = tiny_checkpoint
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's own model")
    with pytest.raises(SystemExit) as exited:
        reid.cli.main(["export", "--weights", str(weights), "--output", str(target)])
    assert exited.value.code == 2 and "model.onnx already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"the user's own model"
    reid.cli.main(["export", "--weights", str(weights), "--output", str(target), "--overwrite"])
    assert target.read_bytes() != b"the user's own model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
