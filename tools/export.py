"""Export a checkpoint to ONNX and check onnxruntime against PyTorch.

    python tools/export.py --weights CKPT --output model.onnx [--feature bn|pre_bn] [--opset 17]
                           [--no-dynamic-batch] [--flip] [--no-normalize] [--tolerance 1e-4]

The ONNX model maps ``images`` (N x 3 x H x W float32: RGB resized to the checkpoint's
data.height x data.width, (pixel / 255 - ImageNet mean) / std) to ``embeddings`` (N x D
float32), L2-normalised inside the graph unless --no-normalize (raw features, e.g. for beta
normalisation downstream). The batch axis is dynamic unless --no-dynamic-batch. Feature and
flip test-time augmentation default to the checkpoint's test settings, so the outputs equal
reid.evaluation.extractor.FeatureExtractor.from_checkpoint's. The input size, mean, std and
options are stored in the model's metadata_props.

After writing, onnx.checker validates the file and onnxruntime runs a random batch (one
larger than the export batch when the batch axis is dynamic, which exercises it); the max
absolute difference to PyTorch is printed, and the exit status is 1 above --tolerance.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tools` importable when run as a script

from reid import builders  # noqa: E402
from reid.evaluation.features import FEATURE_KINDS  # noqa: E402
from reid.export import export_onnx, verify_onnx  # noqa: E402
from tools._common import setup_logging  # noqa: E402

log = logging.getLogger("reid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--feature", choices=FEATURE_KINDS, default=None, help="default: the checkpoint's test.feature")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip test-time augmentation in the graph (default: the checkpoint's test.flip)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the embeddings in the graph (default: yes)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                        help="symbolic batch axis (default: yes)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch the graph is traced with (default 2)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |onnxruntime - PyTorch| accepted (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check batch")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected a positive integer, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Returns {"path", "max_abs_diff", "check_batch", "feature", "flip", "normalize"}; exits 1 above tolerance."""
    args = parse_args(argv)
    setup_logging()
    # Exported on the CPU: the graph is device-independent and the check runs onnxruntime's CPU provider.
    model, cfg = builders.load_model_from_checkpoint(args.weights, "cpu")
    height, width = cfg.data.height, cfg.data.width
    feature = cfg.test.feature if args.feature is None else args.feature
    flip = cfg.test.flip if args.flip is None else args.flip
    module = export_onnx(
        model, args.output, height=height, width=width, feature=feature, normalize=args.normalize,
        flip=flip, opset=args.opset, dynamic_batch=args.dynamic_batch, batch_size=args.batch_size,
    )
    log.info("wrote %s: images N x 3 x %d x %d -> embeddings N x %d (feature=%s, flip=%s, %s, opset %d%s)",
             args.output, height, width, model.feature_dim, feature, flip,
             "L2-normalised" if args.normalize else "not normalised", args.opset,
             ", dynamic batch" if args.dynamic_batch else "")

    check_batch = args.batch_size + 1 if args.dynamic_batch else args.batch_size
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(check_batch, 3, height, width, generator=generator)
    max_abs_diff = verify_onnx(args.output, module, images)
    passed = max_abs_diff <= args.tolerance
    print(f"onnx.checker: ok; onnxruntime vs PyTorch on a random batch of {check_batch}: "
          f"max abs difference {max_abs_diff:.3e} ({'within' if passed else 'ABOVE'} tolerance {args.tolerance:g})")
    if not passed:
        raise SystemExit(1)
    return {"path": args.output, "max_abs_diff": max_abs_diff, "check_batch": check_batch,
            "feature": feature, "flip": flip, "normalize": args.normalize}


if __name__ == "__main__":
    main()
