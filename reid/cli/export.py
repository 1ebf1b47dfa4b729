"""``reid export``: a checkpoint to ONNX, checked with onnxruntime against PyTorch."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import FEATURE_KINDS, add_weights_argument, positive_int, setup_logging

log = logging.getLogger("reid")

SUMMARY = "export a checkpoint to ONNX and check onnxruntime against PyTorch"
DESCRIPTION = f"""{SUMMARY}.

The ONNX model maps `images` (N x 3 x H x W float32: RGB resized to the checkpoint's
data.height x data.width, (pixel / 255 - ImageNet mean) / std) to `embeddings` (N x D
float32), L2-normalised inside the graph unless --no-normalize (raw features, e.g. for beta
normalisation downstream). The batch axis is dynamic unless --no-dynamic-batch. Feature and
flip test-time augmentation default to the checkpoint's test settings, so the outputs equal
reid.inference.FeatureExtractor.from_checkpoint's (both run ReidModel.embed). The input size,
mean, std and options are stored in the model's metadata_props.

After writing, onnx.checker validates the file and onnxruntime runs a random batch (one
larger than the export batch when the batch axis is dynamic, which exercises it); the max
absolute difference to PyTorch is printed, and the exit status is 1 above --tolerance.
Needs the `export` extra (onnx, onnxruntime)."""
EPILOG = """examples:
  reid export --weights outputs/demo/best.pt --output model.onnx
  reid export --weights outputs/demo/best.pt --output raw.onnx --feature pre_bn --no-normalize --opset 13"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_weights_argument(parser)
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--feature", choices=FEATURE_KINDS, default=None, help="default: the checkpoint's test.feature")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip test-time augmentation in the graph (default: the checkpoint's test.flip)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the embeddings in the graph (default: yes)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="symbolic batch axis (default: yes)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="batch the graph is traced with (default 2)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |onnxruntime - PyTorch| accepted (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Returns {"path", "max_abs_diff", "check_batch", "feature", "flip", "normalize"}; exits 1 above tolerance."""
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {args.output} already exists; choose another name or pass --overwrite")
    setup_logging()
    import torch

    from reid import builders, export
    from reid.builders import embedding_options

    # Exported on the CPU: the graph is device-independent and the check runs onnxruntime's CPU provider.
    model, cfg = builders.load_model_from_checkpoint(args.weights, "cpu")
    height, width = cfg.data.height, cfg.data.width
    options = embedding_options(cfg, feature=args.feature, flip=args.flip)
    feature, flip = options["feature"], options["flip"]
    module = export.export_onnx(
        model, args.output, height=height, width=width, feature=feature, normalize=args.normalize,
        flip=flip, opset=args.opset, dynamic_batch=args.dynamic_batch, batch_size=args.batch_size,
        pipeline=cfg.data.pipeline, resize=cfg.data.resize,
    )
    log.info("wrote %s: images N x 3 x %d x %d -> embeddings N x %d (feature=%s, flip=%s, %s, opset %d%s)",
             args.output, height, width, model.feature_dim, feature, flip,
             "L2-normalised" if args.normalize else "not normalised", args.opset,
             ", dynamic batch" if args.dynamic_batch else "")

    check_batch = args.batch_size + 1 if args.dynamic_batch else args.batch_size
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(check_batch, 3, height, width, generator=generator)
    max_abs_diff = export.verify_onnx(args.output, module, images)
    passed = max_abs_diff <= args.tolerance
    print(f"onnx.checker: ok; onnxruntime vs PyTorch on a random batch of {check_batch}: "
          f"max abs difference {max_abs_diff:.3e} ({'within' if passed else 'ABOVE'} tolerance {args.tolerance:g})")
    if not passed:
        raise SystemExit(1)
    return {"path": args.output, "max_abs_diff": max_abs_diff, "check_batch": check_batch,
            "feature": feature, "flip": flip, "normalize": args.normalize}
