"""Training-step throughput: reid's training loop against a bare timm forward/backward loop.

    .venv/bin/python benchmarks/bench_train.py [--backbone resnet18] [--height 128 --width 64] [--steps 20]

Rows, measured in one run on the same machine:
- loader alone: images/s the train loader (decode + augment, P x K sampler) delivers;
- bare timm: ``timm.create_model(backbone, num_classes=C)`` on a fixed random batch, plain
  cross-entropy, the same optimizer: the ceiling for the compute;
- reid: ``reid.engine.train_one_epoch`` with the real loader, model (same trunk, last stride 2
  like the bare model, BNNeck, classifier) and Group Loss + cross-entropy;
- reid, last stride 1: the re-ID default (4x the layer-4 feature map), for reference.
The ratio column is reid's images/s over bare timm's (goal: at least 0.9). The contenders run
alternately ``--repeats`` times and each keeps its best run, so that a burst of other work on
the machine does not land on one of them only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.data import build_dataset  # noqa: E402
from reid.data.loaders import build_train_loader  # noqa: E402
from reid.data.synthetic import make_synthetic_market  # noqa: E402
from reid.engine import train_one_epoch  # noqa: E402
from reid.losses import build_loss  # noqa: E402
from reid.losses.weighted import WeightedLosses  # noqa: E402
from reid.models import build_model  # noqa: E402
from reid.optim import Optimization, build_optimizer  # noqa: E402


def bare_timm(backbone: str, num_classes: int, batch: int, height: int, width: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes).train()
    optimizer = build_optimizer(model.parameters(), "radam", 3.5e-4)
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, num_classes, (batch,))
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def reid_loop(loader, backbone: str, num_classes: int, last_stride: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(backbone, num_classes, last_stride=last_stride)
    criterion = WeightedLosses({"group": (1.0, build_loss("group")), "cross_entropy": (1.0, build_loss("cross_entropy"))})
    optimization = Optimization(build_optimizer(model.parameters(), "radam", 3.5e-4))
    loader.batch_sampler.set_epoch(0)
    train_one_epoch(model, loader, criterion, optimization, max_steps=warmup, progress=False)
    loader.batch_sampler.set_epoch(1)
    result = train_one_epoch(model, loader, criterion, optimization, max_steps=steps, progress=False)
    return result.images_per_second


def loader_rate(loader, batches: int) -> float:
    loader.batch_sampler.set_epoch(2)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(iterator)[0])
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-identities", type=int, default=8)
    parser.add_argument("--num-instances", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=None, help="synthetic data folder (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_synthetic_market(args.data or Path(tmp) / "synthetic", num_train_ids=100, num_test_ids=10)
        dataset = build_dataset("market1501", folder)
        loader = build_train_loader(dataset.train, height=args.height, width=args.width,
                                    num_identities=args.num_identities, num_instances=args.num_instances,
                                    num_workers=args.workers, seed=0)
        batch = args.num_identities * args.num_instances
        classes = dataset.num_train_pids
        contenders = {
            "loader alone (decode + augment)": lambda: loader_rate(loader, 2 * args.steps),
            "bare timm forward/backward": lambda: bare_timm(args.backbone, classes, batch, args.height, args.width,
                                                            args.steps, args.warmup),
            "reid train_one_epoch, last stride 2": lambda: reid_loop(loader, args.backbone, classes, 2,
                                                                     args.steps, args.warmup),
            "reid train_one_epoch, last stride 1": lambda: reid_loop(loader, args.backbone, classes, 1,
                                                                     args.steps, args.warmup),
        }
        best = {name: 0.0 for name in contenders}
        for _ in range(args.repeats):
            for name, measure in contenders.items():
                best[name] = max(best[name], measure())
        rows = list(best.items())
    bare = rows[1][1]
    print(f"\n{args.backbone}, batch {batch} ({args.num_identities} x {args.num_instances}), "
          f"{args.height}x{args.width}, {args.steps} steps, best of {args.repeats}, {torch.get_num_threads()} threads, "
          f"{args.workers} workers\n")
    print("| what | images/s | ratio vs bare timm |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / bare:.2f} |")


if __name__ == "__main__":
    main()
