"""Verification metrics (AUC, EER, TPR@FPR, ROC curve) at Market-1501 size: seconds and peak memory.

Inputs as in bench_evaluation.py: Market-1501-sized synthetic features (3,368 queries, 15,913
gallery incl. 2,793 distractors, 750 identities, 6 cameras), clustered by identity; their
distance matrix (53.6 M query x gallery pairs) is the input of every contender. Each contender
runs in a fresh subprocess (so its peak memory is its own), timed from the matrix to its output:

- ``verification_metrics``: AUC, EER, TPR/threshold at FPR 1e-4, 1e-3, 1e-2;
- ``roc_curve``: the curve's vertices (the default, what a plot needs);
- ``roc_curve(drop_intermediate=False)``: every distinct distance (``--with-full-curve``);
- scikit-learn's ``roc_curve`` + ``roc_auc_score`` on the same pairs, when sklearn is importable
  (it is no dependency of reid; its time includes building the pair arrays with the exclusion).

    .venv/bin/python benchmarks/bench_verification.py            # ~1 min; + --with-full-curve

Prints a markdown table: seconds (best of --repeats), CPU seconds, peak RSS of the subprocess
(VmHWM) and the part above its baseline (after imports and loading the matrix), AUC and EER,
number of ROC points, and the AUC difference to ``verification_metrics``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# the shared helpers live beside this script (its folder is on sys.path when run as a script)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import (
    MARKET,
    REPO,
    load_arrays,
    make_features,
    markdown_table,
    run_worker,
    save_arrays,
    timed,
)

sys.path.insert(0, str(REPO))

FPRS = (1e-4, 1e-3, 1e-2)


def worker(contender: str, data: Path, repeats: int) -> None:
    from reid.evaluation import roc_curve, verification_metrics

    inputs = load_arrays(data)
    distmat = inputs.pop("distmat")
    labels = (inputs["q_pids"], inputs["g_pids"], inputs["q_camids"], inputs["g_camids"])

    def summary_metrics() -> dict[str, Any]:
        r = verification_metrics(distmat, *labels, fprs=FPRS)
        return {"auc": r.auc, "eer": r.eer, "tpr_at_1e-3": r.tpr_at_fpr[1e-3], "points": None,
                "pairs": r.num_positive_pairs + r.num_negative_pairs}

    def curve(drop: bool) -> dict[str, Any]:
        fpr, tpr, _ = roc_curve(distmat, *labels, drop_intermediate=drop)
        return {"auc": float(np.trapezoid(tpr, fpr)), "eer": None, "tpr_at_1e-3": None, "points": len(fpr)}

    def sklearn_metrics() -> dict[str, Any]:
        from sklearn.metrics import roc_auc_score
        from sklearn.metrics import roc_curve as sk_roc_curve

        q_pids, g_pids, q_camids, g_camids = labels
        same_pid = q_pids[:, None] == g_pids[None, :]
        keep = ~(same_pid & (q_camids[:, None] == g_camids[None, :]))
        scores, positive = -distmat.astype(np.float32)[keep], same_pid[keep]
        fpr, _, _ = sk_roc_curve(positive, scores)
        return {"auc": float(roc_auc_score(positive, scores)), "eer": None, "tpr_at_1e-3": None, "points": len(fpr)}

    call = {"verification_metrics": summary_metrics, "roc_curve": lambda: curve(True),
            "roc_curve(drop_intermediate=False)": lambda: curve(False), "sklearn": sklearn_metrics}[contender]
    result, timing = timed(call, repeats)
    print(json.dumps({**result, **timing}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-full-curve", action="store_true",
                        help="also roc_curve at every distinct distance (~54 M points, some GB)")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn even if importable")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.repeats)
        return

    from reid.evaluation import pairwise_distance

    data = make_features(dim=args.dim, seed=args.seed, **MARKET)
    distmat = pairwise_distance(data["query_features"], data["gallery_features"])
    distmat = np.asarray(distmat.cpu().numpy() if hasattr(distmat, "cpu") else distmat, dtype=np.float32)
    labels = {k: data[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")}
    contenders = ["verification_metrics", "roc_curve"]
    if args.with_full_curve:
        contenders.append("roc_curve(drop_intermediate=False)")
    has_sklearn = importlib.util.find_spec("sklearn") is not None
    if has_sklearn and not args.no_sklearn:
        contenders.append("sklearn")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = save_arrays(Path(tmp) / "inputs", distmat=distmat, **labels)
        for name in contenders:
            repeats = 1 if name in ("sklearn", "roc_curve(drop_intermediate=False)") else args.repeats
            results[name] = run_worker(Path(__file__), ["--worker", name, "--data", str(data_dir),
                                                        "--repeats", str(repeats)])
            print(f"{name}: {results[name]['seconds']:.3f} s", file=sys.stderr, flush=True)

    ours = results["verification_metrics"]
    rows = []
    for name in contenders:
        r = results[name]
        runs = len(r["all_seconds"])
        rows.append([name if name != "sklearn" else "scikit-learn roc_curve + roc_auc_score",
                     f"{r['seconds']:.3f}" + ("" if runs > 1 else " (1 run)"), f"{r['cpu_seconds']:.3f}",
                     f"{r['peak_mib']:.0f} / {r['peak_mib'] - r['baseline_mib']:.0f}", f"{r['auc']:.6f}",
                     "-" if r["eer"] is None else f"{r['eer']:.6f}",
                     "-" if r["tpr_at_1e-3"] is None else f"{r['tpr_at_1e-3']:.4f}",
                     "-" if r["points"] is None else f"{r['points']:,}", f"{abs(r['auc'] - ours['auc']):.1e}"])
    print(f"\nVerification metrics, Market-1501 size: {distmat.shape[0]} queries x {distmat.shape[1]} gallery "
          f"({ours['pairs']:,} pairs after same-pid same-camera exclusion), {args.dim}-d features, "
          f"{os.cpu_count()} CPU cores; seconds = best of {args.repeats}"
          + ("" if has_sklearn else "; scikit-learn not importable here, not compared") + "\n")
    print(markdown_table(["contender", "seconds", "CPU seconds", "peak RSS / above baseline (MiB)", "AUC", "EER",
                          "TPR @ FPR 1e-3", "ROC points", "|AUC diff| vs verification_metrics"], rows))


if __name__ == "__main__":
    main()
