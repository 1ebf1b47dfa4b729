"""Streaming re-ID evaluation at any gallery size: ``evaluate_features`` against the dense path
(``evaluate_rank(pairwise_distance(...))``) and against the floor, the float32 distance
products alone, in the same run.

Market-1501+500k-sized synthetic features by default (3,368 queries x 519,732 gallery, 512-d,
the 500k extra images as distractors, pid 0), clustered by identity as in bench_evaluation.py.
Each contender runs in a fresh subprocess that loads the features from .npy files, so its peak
memory is its own; "above features" is the peak minus the RSS after loading them.

    .venv/bin/python benchmarks/bench_streaming.py                      # Market+500k, ~2 GiB budget
    .venv/bin/python benchmarks/bench_streaming.py --gallery 15913      # Market-1501 size, + the peer

The dense path holds the q x g float32 matrix (7 GB at Market+500k) and runs only when it fits
in half the available memory; the classic compiled evaluation (pyppbox-torchreid, from
benchmarks/setup_peer.sh) also holds q x g int64 argsort indices and runs with --with-peer
(Python of benchmarks/.venv) where that fits.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import (MARKET, load_arrays, load_classic, make_features, markdown_table,  # noqa: E402
                              run_worker, save_arrays, timed)


STREAMED_VERIFICATION = "streamed verification (verification_from_features)"
DENSE_VERIFICATION = "dense verification (pairwise_distance + verification_metrics)"


def worker(contender: str, data: Path, out: Path, memory_mb: float, max_rank: int) -> None:
    from reid.evaluation import evaluate_features, evaluate_rank, pairwise_distance
    from reid.evaluation.distance import FeatureDistances
    from reid.evaluation.ordering import block_rows_for

    inputs = load_arrays(data)
    qf, gf = inputs.pop("query_features"), inputs.pop("gallery_features")
    labels = (inputs["q_pids"], inputs["g_pids"], inputs["q_camids"], inputs["g_camids"])

    def products() -> Any:
        """The same float32 products as evaluate_features, scheduled as it does (ordering.match_ranks:
        a worker per thread, each product on one thread, the blocks in flight sharing the budget)."""
        import torch
        from concurrent.futures import ThreadPoolExecutor

        space = FeatureDistances(qf, gf)
        workers = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
        rows = max(1, min(256, block_rows_for(gf.shape[0], memory_mb)) // workers)

        def block(start: int) -> None:
            torch.set_num_threads(1)
            space.fast(slice(start, start + rows))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(block, range(0, qf.shape[0], rows)))

    calls = {
        "float32 products only": products,
        "streamed (evaluate_features)": lambda: evaluate_features(qf, gf, *labels, max_rank=max_rank,
                                                                 memory_mb=memory_mb, progress=False),
        "dense (pairwise_distance + evaluate_rank)": lambda: evaluate_rank(
            pairwise_distance(qf, gf), *labels, max_rank=max_rank, progress=False),
    }
    from reid.evaluation import verification_metrics
    from reid.evaluation.verification import verification_from_features

    calls[STREAMED_VERIFICATION] = lambda: verification_from_features(qf, gf, *labels, memory_mb=memory_mb,
                                                                      progress=False)
    calls[DENSE_VERIFICATION] = lambda: verification_metrics(pairwise_distance(qf, gf), *labels)
    if contender == "classic compiled (dense matrix)":
        peer = load_classic()
        calls[contender] = lambda: peer["evaluate_rank"](
            peer["compute_distance_matrix"](*map(__import__("torch").from_numpy, (qf, gf))).numpy(),
            *labels, max_rank=max_rank, use_cython=True)
    result, timing = timed(calls[contender], 1)
    if contender in (STREAMED_VERIFICATION, DENSE_VERIFICATION):
        np.savez(out, verification=np.array([result.auc, result.eer, *result.tpr_at_fpr.values(),
                                             *result.threshold_at_fpr.values()], dtype=np.float64))
    elif contender.startswith(("streamed", "dense")):
        np.savez(out, cmc=result.cmc, mAP=result.mAP, mINP=result.mINP, all_AP=result.all_AP)
    elif contender.startswith("classic"):
        np.savez(out, cmc=np.asarray(result[0], dtype=np.float64), mAP=float(result[1]))
    print(json.dumps(timing))


def available_mib() -> float:
    from reid.evaluation.ordering import available_memory_mb

    return available_memory_mb()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=519_732, help="gallery size (Market-1501+500k: 519,732)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--memory-mb", type=float, default=1536.0, help="evaluate_features' budget")
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-peer", action="store_true", help="also the classic compiled evaluation")
    parser.add_argument("--with-verification", action="store_true",
                        help="also verification_from_features (and the dense verification_metrics when it fits)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.out, args.memory_mb, args.max_rank)
        return
    sizes = dict(MARKET, num_gallery=args.gallery, num_distractors=MARKET["num_distractors"] + args.gallery - MARKET["num_gallery"])
    data = make_features(dim=args.dim, seed=args.seed, **sizes)
    q, g = sizes["num_query"], sizes["num_gallery"]
    dense_bytes = q * g * 4
    contenders = ["float32 products only", "streamed (evaluate_features)"]
    if 2 * dense_bytes < available_mib() * 2 ** 20 / 2:
        contenders.append("dense (pairwise_distance + evaluate_rank)")
    if args.with_peer and 3 * dense_bytes < available_mib() * 2 ** 20 / 2:
        contenders.append("classic compiled (dense matrix)")
    if args.with_verification:  # the dense one sorts every pair: about 4x the matrix
        contenders.append(STREAMED_VERIFICATION)
        if 5 * dense_bytes < available_mib() * 2 ** 20 / 2:
            contenders.append(DENSE_VERIFICATION)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_arrays(Path(tmp) / "inputs", **data)
        del data
        for name in contenders:
            out = Path(tmp) / "result.npz"
            info = run_worker(Path(__file__), ["--worker", name, "--data", str(folder), "--out", str(out),
                                               "--memory-mb", str(args.memory_mb), "--max-rank", str(args.max_rank)])
            if out.exists():
                with np.load(out) as r:
                    info.update({k: r[k] for k in r.files})
                out.unlink()
            results[name] = info
            print(f"{name}: {info['seconds']:.1f} s", file=sys.stderr, flush=True)
    floor = results["float32 products only"]["seconds"]
    streamed = results["streamed (evaluate_features)"]
    rows = []
    for name in contenders:
        r = results[name]
        same = "-"
        if "all_AP" in r and name != "streamed (evaluate_features)":
            same = "bit-identical" if (np.array_equal(r["all_AP"], streamed["all_AP"], equal_nan=True)
                                       and np.array_equal(r["cmc"], streamed["cmc"])) else "DIFFERENT"
        elif name == DENSE_VERIFICATION:
            same = "bit-identical" if np.array_equal(r["verification"], results[STREAMED_VERIFICATION]["verification"]) \
                else "DIFFERENT"
        elif "cmc" in r and name.startswith("classic"):
            same = f"max diff {max(abs(float(r['mAP']) - float(streamed['mAP'])), float(np.abs(r['cmc'] - streamed['cmc']).max())):.1e}"
        rows.append([name, f"{r['seconds']:.1f}", f"{r['seconds'] / floor:.2f}x",
                     f"{r['peak_mib'] - r['baseline_mib']:.0f}",
                     f"{float(r['mAP']):.4f}" if "mAP" in r else (f"AUC {r['verification'][0]:.6f}"
                                                                  if "verification" in r else "-"), same])
    feats = (q + g) * args.dim * 4 / 2 ** 20
    print(f"\nRe-ID evaluation from features: {q} queries x {g} gallery, {args.dim}-d float32 "
          f"({feats:.0f} MiB of features), memory_mb={args.memory_mb:g}, {os.cpu_count()} CPU cores\n")
    print(markdown_table(["contender", "seconds", "vs products only", "peak above features (MiB)", "mAP / AUC",
                          "vs streamed"], rows))


if __name__ == "__main__":
    main()
