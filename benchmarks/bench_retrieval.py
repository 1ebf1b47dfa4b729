"""Retrieval metrics (Recall@K, precision@1, R-precision, MAP@R): ours against pytorch-metric-learning.

Stanford Online Products (SOP) test size: 60,502 items of 11,316 classes with 2 to 12 items each,
512-d, leave-one-out (every item is a query against all the others), Recall@{1,10,100,1000}.
The features are synthetic and seeded: class centres in a 32-dimensional subspace plus
per-item noise, tuned so that the metrics look like a trained SOP model's (Recall@1 ~ 0.79,
MAP@R ~ 0.49). Each contender runs in a fresh subprocess on the same ``.npy`` inputs, so that
its peak memory is its own; it is timed from the features to the metrics.

Contenders:

* ``ours``: ``reid.evaluation.evaluate_retrieval`` (exact, blocked, ties by gallery index; where
  it pays, each pair's product once: ``reid.evaluation.symmetric``).
* ``ours-dense``: the same with every row block's products computed whole (the path before
  ``symmetric``, and the one evaluate_retrieval takes where halving the products does not pay).
* ``pml``: pytorch-metric-learning's ``AccuracyCalculator(k="max_bin_count")`` (faiss
  ``IndexFlatL2`` kNN) for precision@1, R-precision and MAP@R, plus Recall@K from a second kNN
  with PML's own ``FaissKNN`` (k = max K; Recall@K is not one of AccuracyCalculator's metrics).
  Both kNN calls exclude the query the way AccuracyCalculator does for ``reference=None``
  (``ref_includes_query=True``): search k + 1 neighbours and drop the query's own index (the
  last neighbour when the query is not among them).
* ``pml-one-knn``: one ``AccuracyCalculator(k=max K)`` with Recall@K added as custom
  ``calculate_recall_at_<k>`` methods (one kNN for everything; MAP@R and R-precision are still
  correct since k >= R).

The peer is installed by ``bash benchmarks/setup_peer.sh`` into ``benchmarks/.venv`` (never a
dependency of reid):

    benchmarks/.venv/bin/python benchmarks/bench_retrieval.py            # SOP size, several minutes
    benchmarks/.venv/bin/python benchmarks/bench_retrieval.py --small    # 5,000 items, seconds

Prints a markdown table: seconds, CPU seconds, peak RSS of the subprocess (VmHWM) and the part
above its baseline (after imports and loading the inputs), every metric, and the largest
difference to ours; then each metric's difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# the shared helpers live beside this script (its folder is on sys.path when run as a script)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import (  # noqa: E402
    REPO,
    timed,
    load_arrays,
    markdown_table,
    run_worker,
    save_arrays,
)

sys.path.insert(0, str(REPO))

# Stanford Online Products test split (Song et al., CVPR 2016): 60,502 images, 11,316 classes.
SOP = {"num_items": 60502, "num_classes": 11316}
SMALL_ITEMS = 5000
KS = (1, 10, 100, 1000)
METRICS = [f"recall@{k}" for k in KS] + ["precision_at_1", "r_precision", "map_at_r"]
CONTENDERS = ("ours", "ours-dense", "pml", "pml-one-knn")


# ----------------------------------------------------------------------------- synthetic data

def class_sizes(num_items: int, num_classes: int, rng: np.random.Generator, low: int = 2, high: int = 12) -> np.ndarray:
    """Random class sizes in [low, high] summing to num_items (SOP: 2 to 12 images a class)."""
    if not low * num_classes <= num_items <= high * num_classes:
        raise ValueError(f"{num_items} items cannot make {num_classes} classes of {low}..{high}")
    sizes = np.full(num_classes, low)
    while (extra := num_items - int(sizes.sum())) > 0:
        add = np.bincount(rng.integers(0, num_classes, extra), minlength=num_classes)
        sizes += np.minimum(add, high - sizes)
    return sizes


def make_sop_like(num_items: int, num_classes: int, dim: int = 512, *, noise: float = 0.7, intrinsic: int = 32,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features clustered by class (float32, num_items x dim) and their labels (int64), shuffled."""
    rng = np.random.default_rng(seed)
    intrinsic = min(intrinsic, dim)
    labels = rng.permutation(np.repeat(np.arange(num_classes), class_sizes(num_items, num_classes, rng)))
    embed = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32) * np.sqrt(dim / intrinsic)
    centres = rng.standard_normal((num_classes, intrinsic)).astype(np.float32)
    scale = noise * rng.lognormal(0.0, 0.25, (num_items, 1)).astype(np.float32)
    z = centres[labels] + scale * rng.standard_normal((num_items, intrinsic)).astype(np.float32)
    feats = z @ embed + 0.05 * rng.standard_normal((num_items, dim)).astype(np.float32)
    return feats.astype(np.float32), labels.astype(np.int64)


# ----------------------------------------------------------------------------- the peer

def pml_calculator(k: Any, ks: tuple[int, ...], with_recall: bool) -> Any:
    """AccuracyCalculator on the CPU; with_recall adds calculate_recall_at_<k> methods."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    base = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
    if not with_recall:
        return AccuracyCalculator(include=base, k=k, device=torch.device("cpu"))

    def recall_method(cutoff: int) -> Any:
        def method(self: Any, knn_labels: Any, query_labels: Any, not_lone_query_mask: Any, **kwargs: Any) -> float:
            labels, queries = knn_labels[not_lone_query_mask], query_labels[not_lone_query_mask]
            return (labels[:, :cutoff] == queries[:, None]).any(dim=1).double().mean().item()
        return method

    names = [f"recall_at_{c}" for c in ks]
    attrs = {f"calculate_{n}": recall_method(c) for n, c in zip(names, ks)}
    attrs["requires_knn"] = lambda self: AccuracyCalculator.requires_knn(self) + names
    calculator = type("RecallAccuracyCalculator", (AccuracyCalculator,), attrs)
    return calculator(include=base + tuple(names), k=k, device=torch.device("cpu"))


def check_peer() -> None:
    import pytorch_metric_learning
    import sklearn

    calc = pml_calculator("max_bin_count", KS, with_recall=False)
    feats, labels = make_sop_like(200, 40, 64)
    print(f"pytorch-metric-learning {pytorch_metric_learning.__version__} (scikit-learn {sklearn.__version__}): "
          f"AccuracyCalculator runs, {calc.get_accuracy(feats, labels)}")


# ----------------------------------------------------------------------------- subprocess runs

def worker(contender: str, data: Path, repeats: int) -> None:
    import torch

    inputs = load_arrays(data)
    feats, labels = inputs["features"], inputs["labels"]
    if contender.startswith("ours"):
        from reid.evaluation import evaluate_retrieval

        if contender == "ours-dense":
            from reid.evaluation import retrieval

            retrieval.symmetric_applies = lambda *args, **kwargs: False

        def call() -> dict[str, float]:
            r = evaluate_retrieval(feats, labels, ks=KS)
            return {**{f"recall@{k}": r.recall[k] for k in KS}, "precision_at_1": r.precision_at_1,
                    "r_precision": r.r_precision, "map_at_r": r.map_at_r}
    elif contender == "pml":
        calc = pml_calculator("max_bin_count", KS, with_recall=False)

        def call() -> dict[str, float]:
            acc = calc.get_accuracy(feats, labels)  # reference=None: leave-one-out
            # Recall@K from PML's kNN (its FaissKNN, self excluded as in get_accuracy)
            emb = torch.from_numpy(feats)
            lab = torch.from_numpy(labels)
            counts = torch.bincount(lab)[lab]
            not_lone = counts > 1
            _, knn = calc.knn_func(emb, max(KS), emb, True)
            hits = lab[knn] == lab[:, None]
            first = torch.where(hits.any(dim=1), hits.to(torch.uint8).argmax(dim=1), max(KS))[not_lone]
            out = {f"recall@{k}": (first < k).double().mean().item() for k in KS}
            return {**out, "precision_at_1": acc["precision_at_1"], "r_precision": acc["r_precision"],
                    "map_at_r": acc["mean_average_precision_at_r"]}
    else:
        calc = pml_calculator(max(KS), KS, with_recall=True)

        def call() -> dict[str, float]:
            acc = calc.get_accuracy(feats, labels)
            return {**{f"recall@{k}": acc[f"recall_at_{k}"] for k in KS}, "precision_at_1": acc["precision_at_1"],
                    "r_precision": acc["r_precision"], "map_at_r": acc["mean_average_precision_at_r"]}
    metrics, timing = timed(call, repeats)
    print(json.dumps({**timing, "metrics": metrics}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help=f"{SMALL_ITEMS} items (SOP's class sizes), a quick check")
    parser.add_argument("--items", type=int, help=f"number of items (default: SOP's {SOP['num_items']}), "
                        "with classes in SOP's proportion")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender (the best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of " + ", ".join(CONTENDERS))
    parser.add_argument("--check-peer", action="store_true", help="only check that pytorch-metric-learning runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_peer:
        check_peer()
        return
    if args.worker:
        worker(args.worker, args.data, args.repeats)
        return

    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown or "ours" not in contenders:
        raise SystemExit(f"--contenders: expected 'ours' and any of {', '.join(CONTENDERS)}, got {args.contenders}")
    if any(c.startswith("pml") for c in contenders):
        check_peer()  # fail early, before building data, if the peer is missing
    items = SMALL_ITEMS if args.small else args.items or SOP["num_items"]
    size = {"num_items": items, "num_classes": round(items * SOP["num_classes"] / SOP["num_items"])}
    feats, labels = make_sop_like(dim=args.dim, seed=args.seed, **size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = save_arrays(Path(tmp) / "inputs", features=feats, labels=labels)
        del feats
        for name in contenders:
            results[name] = run_worker(Path(__file__), ["--worker", name, "--data", str(data),
                                                        "--repeats", str(args.repeats)])
            print(f"{name}: {results[name]['seconds']:.2f} s", file=sys.stderr, flush=True)

    ours = results["ours"]
    rows = []
    for name in contenders:
        r = results[name]
        diff = max(abs(r["metrics"][m] - ours["metrics"][m]) for m in METRICS)
        rows.append([name, f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.1f}", f"{r['seconds'] / ours['seconds']:.2f}x",
                     f"{r['peak_mib']:.0f} / {r['peak_mib'] - r['baseline_mib']:.0f}"]
                    + [f"{r['metrics'][m]:.4f}" for m in METRICS] + [f"{diff:.1e}"])
    sizes = np.bincount(labels)
    print(f"\nRetrieval metrics, {'SOP' if items == SOP['num_items'] else 'smaller'} size: {len(labels)} items x {args.dim}-d, "
          f"{len(sizes)} classes of {sizes.min()}..{sizes.max()}, leave-one-out, {os.cpu_count()} CPU cores; "
          f"seconds = best of {args.repeats}\n")
    print(markdown_table(["contender", "seconds", "CPU seconds", "time / ours", "peak RSS / above baseline (MiB)"]
                         + [m.replace("precision_at_1", "P@1").replace("r_precision", "R-prec.").replace("map_at_r", "MAP@R")
                            .replace("recall@", "R@") for m in METRICS] + ["max |diff| vs ours"], rows))
    others = [c for c in contenders if c != "ours"]
    if others:
        print("\n" + markdown_table(["metric", "ours"] + [f"{c} - ours" for c in others],
                                    [[m, f"{ours['metrics'][m]:.10f}"]
                                     + [f"{results[c]['metrics'][m] - ours['metrics'][m]:+.1e}" for c in others]
                                     for m in METRICS]))


if __name__ == "__main__":
    main()
