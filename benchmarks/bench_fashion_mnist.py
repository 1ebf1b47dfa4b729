"""Fashion-MNIST retrieval, the one real labelled image set these machines install: how far raw
pixels, a random network, ImageNet features and Group Loss fine-tuning get on unseen classes.

Split (``reid.data.datasets.fashion_mnist``): classes 0-4 of the train file for training, the
unseen classes 5-9 of t10k (5,000 images) for a leave-one-out test: Recall@1/2/4/8, MAP@R,
R-precision, and the k-means NMI / F1 of the test set. Rows:

- raw pixels: the 28 x 28 grey values as a 784-d vector (L2-normalised);
- random init: ``model.backbone`` with random weights (same input pipeline as the trained one);
- ImageNet: the same trunk with ImageNet weights (``model.pretrained=true``), not trained here;
- trained: ``reid train --config configs/fashion_mnist_group.yaml`` (the config's schedule).

    .venv/bin/python benchmarks/bench_fashion_mnist.py [--config configs/fashion_mnist_group.yaml] [key=value ...]

A small, coarse sanity check of the retrieval pipeline (five test classes), not a paper benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid import builders  # noqa: E402
from reid.config import load_config  # noqa: E402
from reid.data.transforms import read_image  # noqa: E402
from reid.engine import evaluate  # noqa: E402
from reid.evaluation.evaluator import metrics_from_features, metrics_table  # noqa: E402
from reid.evaluation.features import FeatureSet  # noqa: E402
from reid.training import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def raw_pixels(items) -> FeatureSet:
    pixels = np.stack([read_image(path)[:, :, 0].reshape(-1) for path, _, _ in items]).astype(np.float32)
    labels = np.array([label for _, label, _ in items])
    return FeatureSet(pixels, labels, np.zeros_like(labels), [path for path, _, _ in items])


def network_metrics(cfg, dataset, *, pretrained: bool) -> dict:
    cfg.model.pretrained = pretrained
    torch.manual_seed(cfg.train.seed)
    model = builders.model_from_config(cfg, dataset.num_train_pids)
    loader, gallery_loader = builders.test_loaders_from_config(cfg, dataset)
    return evaluate(model, loader, gallery_loader, "cpu", **builders.eval_options(cfg, dataset))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fashion_mnist_group.yaml")
    parser.add_argument("--output", type=Path, default=None, help="where the training run goes (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("reid").setLevel(logging.INFO)

    with tempfile.TemporaryDirectory() as tmp:
        output = args.output or Path(tmp) / "run"
        cfg = load_config(args.config, [*args.overrides, f"output_dir={output}", "train.eval_untrained=false"])
        dataset = builders.dataset_from_config(cfg)
        rows, seconds = {}, {}
        start = time.perf_counter()
        test = raw_pixels(dataset.query)
        options = builders.metric_options(cfg, dataset)
        rows["raw pixels (784-d)"] = metrics_from_features(test, test, **options)
        seconds["raw pixels (784-d)"] = time.perf_counter() - start
        for name, pretrained in (("random init", False), ("ImageNet, not trained", True)):
            start = time.perf_counter()
            rows[f"{cfg.model.backbone}, {name}"] = network_metrics(load_config(args.config, [*args.overrides]),
                                                                    dataset, pretrained=pretrained)
            seconds[f"{cfg.model.backbone}, {name}"] = time.perf_counter() - start
        start = time.perf_counter()
        trained = train(cfg)
        name = f"{cfg.model.backbone}, Group Loss + CE, {cfg.train.epochs} epochs x {cfg.train.iters_per_epoch or 'all'} batches"
        rows[name], seconds[name] = trained, time.perf_counter() - start

    print(f"\nFashion-MNIST, unseen classes 5-9 (5,000 t10k images, leave-one-out), "
          f"{cfg.data.height}x{cfg.data.width}, seed {cfg.train.seed}, {torch.get_num_threads()} threads\n")
    print(metrics_table(rows))
    print("\n" + "\n".join(f"{name}: {s:.1f} s" for name, s in seconds.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
