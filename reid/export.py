"""ONNX export of a re-ID model as an embedding network, and its parity check against PyTorch.

The exported graph is :class:`reid.models.EmbeddingModule`: input ``images`` (N x 3 x H x W
float32, resized and normalised exactly as the test pipeline does: RGB, ImageNet mean / std),
output ``embeddings`` (N x D float32). It is ``ReidModel.embed``, the one path that evaluation
and :class:`reid.inference.FeatureExtractor` take after the image decoding: the chosen
feature, optionally flip-averaged, and by default L2-normalised inside the graph, so a
deployed model's outputs compare directly with squared Euclidean or cosine distance. The
classifier logits are left out (training identities mean nothing at deployment), which
also drops the one layer whose size depends on the training set.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it
needs no extra package, whereas the torch.export-based one needs ``onnxscript``.
onnx and onnxruntime are the ``export`` extras (``pip install 'groupreid[export]'``).
"""

from __future__ import annotations

import importlib
import inspect
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, PIPELINES
from .io import atomic_write
from .models.model import EmbeddingModule

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"ONNX export needs the {module!r} package: pip install 'groupreid[export]' (onnx and onnxruntime)"
        ) from None


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    feature: str = "bn",
    normalize: bool = True,
    flip: bool = False,
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pipeline: str = "reid",
    resize: int = 256,
) -> EmbeddingModule:
    """Write ``model`` as an ONNX embedding network to ``path``; return the module that was exported.

    The graph is traced on a batch of ``batch_size`` zeros of size ``height`` x ``width``;
    ``dynamic_batch`` makes the batch axis of input and output symbolic ("batch"), so any
    batch size runs. The preprocessing a caller must apply (the resize of the test ``pipeline``:
    "reid" resizes to height x width, "retrieval" resizes the shorter side to ``resize`` and
    centre-crops; mean, std) and the export options are stored in the model's metadata_props.
    The model stays where it is (the trace runs on its device); the exported module is in eval
    mode.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {', '.join(PIPELINES)}, got {pipeline!r}")
    onnx = _require("onnx")
    module = EmbeddingModule(model, feature=feature, normalize=normalize, flip=flip).eval()
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(batch_size, 3, height, width, device=device)
    path = Path(path)
    options: dict[str, Any] = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        do_constant_folding=True,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
    )
    # torch >= 2.5 defaults to the torch.export-based exporter (which needs onnxscript); ask for
    # the TorchScript one where the argument exists. Its DeprecationWarning is not the user's concern.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    # Built in memory and written atomically: an interrupted export never leaves a half-written
    # model under the user's file name.
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, **options)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, _metadata(height, width, mean, std, feature, flip, normalize, pipeline, resize))
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return module


def _metadata(height: int, width: int, mean: Sequence[float], std: Sequence[float], feature: str, flip: bool,
              normalize: bool, pipeline: str = "reid", resize: int = 256) -> dict[str, str]:
    """The preprocessing a caller must apply and the export options, as ONNX metadata_props."""
    sizing = (f"the image resized to {height} x {width}" if pipeline == "reid" else
              f"the image's shorter side resized to {resize}, then a centre crop of {height} x {width}")
    return {
        "input": f"{INPUT_NAME}: N x 3 x {height} x {width} float32, RGB, {sizing}, (pixel / 255 - mean) / std",
        "pipeline": pipeline,
        **({"resize": str(resize)} if pipeline == "retrieval" else {}),
        "output": f"{OUTPUT_NAME}: N x D float32" + (", L2-normalised" if normalize else ""),
        "height": str(height),
        "width": str(width),
        "mean": ",".join(f"{v:g}" for v in mean),
        "std": ",".join(f"{v:g}" for v in std),
        "feature": feature,
        "flip": str(flip).lower(),
        "normalize": str(normalize).lower(),
    }


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props written by :func:`export_onnx` (input size, mean, std, options)."""
    onnx = _require("onnx")
    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


def run_onnx(path: str | os.PathLike, images: np.ndarray | torch.Tensor, *, num_threads: int = 0) -> np.ndarray:
    """Embeddings of a normalised N x 3 x H x W batch with onnxruntime on the CPU.

    ``num_threads`` 0 lets onnxruntime choose (one thread per physical core).
    """
    session = onnx_session(path, num_threads=num_threads)
    batch = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32, copy=False)})[0]


def onnx_session(path: str | os.PathLike, *, num_threads: int = 0) -> Any:
    """A CPU onnxruntime session for ``path`` (a clear error when the file is missing)."""
    ort = _require("onnxruntime")
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(path: str | os.PathLike, module: nn.Module, images: torch.Tensor) -> float:
    """Check the ONNX file (onnx.checker) and return max |onnxruntime - PyTorch| on ``images``.

    ``module`` is what :func:`export_onnx` returned; ``images`` a normalised N x 3 x H x W batch
    (on the module's device).
    """
    onnx = _require("onnx")
    onnx.checker.check_model(str(path))  # by path: also works for models over 2 GB
    with torch.no_grad():
        expected = module.eval()(images).float().cpu().numpy()
    actual = run_onnx(path, images)
    if actual.shape != expected.shape:
        raise ValueError(f"{path}: onnxruntime returned shape {actual.shape}, PyTorch {expected.shape}")
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0
