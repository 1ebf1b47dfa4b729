"""CPU inference: PyTorch eager against onnxruntime on the exported embedding network.

    .venv/bin/python benchmarks/bench_export.py [--backbones resnet18 resnet50] [--height 256 --width 128]
                                                [--batch 32] [--warmup 2] [--runs 5]

For each backbone: a re-ID model (last stride 1, BNNeck, 751 classes as for Market-1501,
random weights: speed does not depend on them) is exported with reid.export.export_onnx
(bn feature, L2-normalised, dynamic batch), and the same random batch is embedded by
- torch eager: the exported module itself under torch.inference_mode, NCHW;
- torch channels_last: the same model with NHWC weights and input (docs/ARCHITECTURE.md: faster here);
- onnxruntime: CPU provider, as many intra-op threads as torch uses.
images/s is the median over --runs timed batches after --warmup untimed ones. "max |diff|" is
the largest absolute difference of each row's output to torch eager's (unit-norm embeddings).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.export import export_onnx, onnx_session  # noqa: E402
from reid.models import build_model  # noqa: E402


def images_per_second(run: Callable[[], np.ndarray], batch: int, warmup: int, runs: int) -> tuple[float, np.ndarray]:
    for _ in range(warmup):
        output = run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times), output


def bench_backbone(backbone: str, args: argparse.Namespace, folder: Path) -> list[tuple[str, str, float, float]]:
    torch.manual_seed(0)
    model = build_model(backbone, 751, last_stride=1).eval()
    images = torch.randn(args.batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    path = folder / f"{backbone}.onnx"
    start = time.perf_counter()
    module = export_onnx(model, path, height=args.height, width=args.width, batch_size=2)
    print(f"{backbone}: exported in {time.perf_counter() - start:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)",
          flush=True)

    def eager() -> np.ndarray:
        with torch.inference_mode():
            return module(images).numpy()

    fast = copy.deepcopy(module).to(memory_format=torch.channels_last)
    images_nhwc = images.contiguous(memory_format=torch.channels_last)

    def channels_last() -> np.ndarray:
        with torch.inference_mode():
            return fast(images_nhwc).numpy()

    session = onnx_session(path, num_threads=torch.get_num_threads())
    feed = {"images": images.numpy()}

    def onnxruntime() -> np.ndarray:
        return session.run(["embeddings"], feed)[0]

    rows = []
    reference = None
    for name, run in (("torch eager", eager), ("torch channels_last", channels_last), ("onnxruntime", onnxruntime)):
        rate, output = images_per_second(run, args.batch, args.warmup, args.runs)
        reference = output if reference is None else reference
        rows.append((backbone, name, rate, float(np.abs(output - reference).max())))
        print(f"  {name}: {rate:.1f} images/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            rows += bench_backbone(backbone, args, Path(folder))
    print(f"\nCPU inference, batch {args.batch} at {args.height}x{args.width}, {torch.get_num_threads()} threads, "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    print("| backbone | runtime             | images/s | vs eager | max abs diff |")
    print("|----------|---------------------|---------:|---------:|-------------:|")
    eager_rate = {}
    for backbone, name, rate, diff in rows:
        eager_rate.setdefault(backbone, rate)
        print(f"| {backbone:<8} | {name:<19} | {rate:8.1f} | {rate / eager_rate[backbone]:7.2f}x | {diff:12.2e} |")


if __name__ == "__main__":
    main()
