"""k-reciprocal re-ranking from features: ours against the classic function, same run.

Both paths start from the same query/gallery features (Market-1501 size: 3,368 x 15,913,
6 cameras, clustered by identity; see bench_evaluation.make_features) and end at the q x g
re-ranked distances (k1=20, k2=6, lambda=0.3):

* classic: torchreid's ``compute_distance_matrix`` for q_g, q_q and g_g (squared Euclidean,
  a float32 product: its last bits depend on the CPU's kernels), then ``re_ranking(q_g, q_q,
  g_g)`` (registry package pyppbox-torchreid, benchmarks/.venv);
* classic-canonical: the same ``re_ranking`` fed ``reid.evaluation.pairwise_distance``'s
  canonical matrices (the same bits on every machine): ours must equal it exactly;
* ours: ``reid.evaluation.rerank(query_features, gallery_features)``, distances included.

Each contender runs in a fresh subprocess; peak memory is that process's high-water RSS (VmHWM;
see bench_evaluation.max_rss_mib), shown whole and above its baseline (after imports and
loading the features). Outputs are compared
element-wise (largest absolute difference), and both are scored with the Market protocol.

    bash benchmarks/setup_peer.sh
    benchmarks/.venv/bin/python benchmarks/bench_rerank.py --dim 512     # classic ~100 s, ~9 GiB
    benchmarks/.venv/bin/python benchmarks/bench_rerank.py --dim 2048
    .venv/bin/python benchmarks/bench_rerank.py --msmt --dim 512         # ours alone, MSMT17 size: dense, streamed
    .venv/bin/python benchmarks/bench_rerank.py --approximate --with-exact                 # HNSW vs exact, Market
    .venv/bin/python benchmarks/bench_rerank.py --approximate --distractors 500000         # Market+500k, HNSW
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# the shared helpers live beside this script (its folder is on sys.path when run as a script)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import (
    MARKET,
    REPO,
    cpu_seconds,
    load_arrays,
    load_classic,
    make_features,
    markdown_table,
    max_rss_mib,
    run_worker,
    save_arrays,
)

sys.path.insert(0, str(REPO))

# MSMT17 test split: 11,659 queries, 82,161 gallery images of 3,060 identities, 15 cameras.
MSMT17 = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060, "num_distractors": 0, "num_cameras": 15}
# evaluate_reranked contenders: their neighbour search
STREAMED = {"ours-streamed": "torch", "ours-hnsw": "faiss-hnsw"}


def worker(contender: str, data: Path, out: Path | None, k1: int, k2: int, lambda_value: float) -> None:
    import json

    import torch

    from reid.evaluation import evaluate_rank, rerank

    inputs = load_arrays(data)
    qf, gf = inputs["query_features"], inputs["gallery_features"]
    if contender.startswith("classic"):
        peer = load_classic()
        distance, re_ranking = peer["compute_distance_matrix"], peer["re_ranking"]
        if contender == "classic-canonical":
            from reid.evaluation import pairwise_distance

            def distance(a, b):  # noqa: F811 (the canonical matrices instead of torchreid's)
                return torch.from_numpy(pairwise_distance(a.numpy(), b.numpy()))

        def call() -> np.ndarray:
            q, g = torch.from_numpy(qf), torch.from_numpy(gf)
            q_g = distance(q, g).numpy()
            q_q = distance(q, q).numpy()
            g_g = distance(g, g).numpy()
            return re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    elif contender in STREAMED:
        return streamed_worker(contender, inputs, k1, k2, lambda_value)
    else:
        backend = "faiss" if contender == "ours-faiss" else "torch"

        def call() -> np.ndarray:
            return rerank(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, knn_backend=backend)

    baseline = max_rss_mib()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    result = call()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    peak = max_rss_mib()
    info: dict[str, Any] = {"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "baseline_mib": baseline,
                            "shape": list(result.shape), "dtype": str(result.dtype)}
    if out is not None:
        np.save(out, result)
    else:  # MSMT run: score here, after the peak was read, instead of saving 3.8 GB
        labels = [inputs[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
        r = evaluate_rank(result, *labels)
        info.update(mAP=r.mAP, rank1=float(r.cmc[0]), mINP=r.mINP)
    print(json.dumps(info))


def streamed_worker(contender: str, inputs: dict[str, np.ndarray], k1: int, k2: int, lambda_value: float) -> None:
    """evaluate_reranked (the re-ranked rows made a block at a time and ranked at once, never the
    q x g matrix): exact neighbours (torch) or approximate ones (faiss-hnsw, whose logged
    neighbour quality is kept)."""
    import json
    import logging

    from reid.evaluation.rerank import evaluate_reranked

    qualities: list[Any] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "neighbour_quality"):
                qualities.append(record.neighbour_quality)

    logger = logging.getLogger("reid")
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    labels = [inputs[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    baseline = max_rss_mib()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    r = evaluate_reranked(inputs["query_features"], inputs["gallery_features"], *labels, k1=k1, k2=k2,
                          lambda_value=lambda_value, knn_backend=STREAMED[contender], progress=False)
    info: dict[str, Any] = {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - start_cpu,
                            "peak_mib": max_rss_mib(), "baseline_mib": baseline, "mAP": r.mAP,
                            "rank1": float(r.cmc[0]), "mINP": r.mINP}
    if qualities:
        q = qualities[0]
        info.update(recall=q.recall, recall_k=q.k, sampled=q.rows, maxima_exact=q.maxima_exact,
                    maxima_shortfall=q.maxima_shortfall)
    print(json.dumps(info))


def score(distmat: np.ndarray, data: dict[str, np.ndarray]) -> str:
    from reid.evaluation import evaluate_rank

    r = evaluate_rank(distmat, data["q_pids"], data["g_pids"], data["q_camids"], data["g_camids"])
    return f"{r.mAP:.4f} / {r.cmc[0]:.4f}"


def compare(args: argparse.Namespace) -> None:
    from reid.evaluation import pairwise_distance

    load_classic()  # fail early if the peer is missing
    data = make_features(dim=args.dim, seed=args.seed, **MARKET)
    contenders = ["classic", "classic-canonical", "ours"] + (["ours-faiss"] if args.with_faiss else [])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_arrays(Path(tmp) / "inputs", **data)
        for name in contenders:
            out = Path(tmp) / f"{name}.npy"
            info = run_worker(Path(__file__), ["--worker", name, "--data", str(folder), "--out", str(out),
                                               "--k1", str(args.k1), "--k2", str(args.k2), "--lambda-value",
                                               str(args.lambda_value)])
            info["output"] = np.load(out)
            results[name] = info
            print(f"{name}: {info['seconds']:.1f} s, peak {info['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    classic, canonical = results["classic"], results["classic-canonical"]["output"]
    before = score(pairwise_distance(data["query_features"], data["gallery_features"]), data)
    rows = []
    for name in contenders:
        r = results[name]
        extra, classic_extra = r["peak_mib"] - r["baseline_mib"], classic["peak_mib"] - classic["baseline_mib"]
        rows.append([name, f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.1f}", f"{classic['seconds'] / r['seconds']:.1f}x",
                     f"{r['peak_mib']:.0f} / {extra:.0f}",
                     f"{classic['peak_mib'] / r['peak_mib']:.1f}x / {classic_extra / max(extra, 1):.1f}x",
                     f"{np.abs(r['output'] - classic['output']).max():.1e}",
                     f"{np.abs(r['output'] - canonical).max():.1e} ({int((r['output'] != canonical).sum()):,})",
                     score(r["output"], data)])
    print(f"\nRe-ranking from features, Market-1501 size: {MARKET['num_query']} x {MARKET['num_gallery']}, "
          f"{args.dim}-d, k1={args.k1} k2={args.k2} lambda={args.lambda_value}, {os.cpu_count()} CPU cores. "
          f"Without re-ranking: mAP / Rank-1 = {before}\n")
    print(markdown_table(["contender", "seconds", "CPU seconds", "speed-up vs classic", "peak RSS / above baseline (MiB)",
                          "classic's peak / this (whole / above baseline)", "max |diff| vs classic",
                          "max |diff| vs classic-canonical (entries that differ)", "mAP / Rank-1 after re-ranking"], rows))


def msmt(args: argparse.Namespace) -> None:
    sizes = dict(MSMT17)
    if args.scale != 1.0:
        sizes.update(num_query=int(sizes["num_query"] * args.scale), num_gallery=int(sizes["num_gallery"] * args.scale))
    data = make_features(dim=args.dim, seed=args.seed, **sizes)
    n, q, g = sizes["num_query"] + sizes["num_gallery"], sizes["num_query"], sizes["num_gallery"]
    # What the classic would hold: the N x N float32 joint matrix, V, and the float32 argsort
    # ranks (int32) -- each N^2 * 4 bytes -- plus q x N Jaccard and result arrays.
    dense_gib = n * n * 4 / 2**30
    results = run_streamed(data, ["ours", "ours-streamed"], args)
    print(f"\nRe-ranking from features, MSMT17 size: {q} x {g} (N = {n}), {args.dim}-d: rerank (the q x g output, "
          f"{q * g * 4 / 2**30:.2f} GiB, then scored) and evaluate_reranked (streamed into the ranking); one dense "
          f"N x N float32 array would be {dense_gib:.1f} GiB\n")
    print(streamed_table(results))


def run_streamed(data: dict[str, np.ndarray], contenders: list[str], args: argparse.Namespace) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_arrays(Path(tmp) / "inputs", **data)
        for name in contenders:
            results[name] = run_worker(Path(__file__), ["--worker", name, "--data", str(folder), "--k1", str(args.k1),
                                                        "--k2", str(args.k2), "--lambda-value", str(args.lambda_value)])
            print(f"{name}: {results[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


def streamed_table(results: dict[str, dict]) -> str:
    rows = []
    for name, info in results.items():
        quality = "exact search" if "recall" not in info else (
            f"recall@{info['recall_k']} {info['recall']:.4f}, maxima exact {100 * info['maxima_exact']:.1f}% "
            f"(at most {100 * info['maxima_shortfall']:.2f}% short), {info['sampled']} sampled rows")
        rows.append([name, f"{info['seconds']:.1f}", f"{info['cpu_seconds']:.1f}",
                     f"{info['peak_mib']:.0f} / {info['peak_mib'] - info['baseline_mib']:.0f}",
                     f"{info['mAP']:.6f} / {info['rank1']:.6f} / {info['mINP']:.6f}", quality])
    return markdown_table(["contender", "seconds", "CPU seconds", "peak RSS / above baseline (MiB)",
                           "mAP / Rank-1 / mINP after re-ranking", "neighbours"], rows)


def approximate(args: argparse.Namespace) -> None:
    """Market-1501 with extra distractors: approximate neighbours (HNSW) against exact ones."""
    sizes = dict(MARKET, num_gallery=MARKET["num_gallery"] + args.distractors,
                 num_distractors=MARKET["num_distractors"] + args.distractors)
    data = make_features(dim=args.dim, seed=args.seed, **sizes)
    for key in ("query_features", "gallery_features"):  # unit rows, as reid test ranks them (test.normalize)
        data[key] /= np.linalg.norm(data[key], axis=1, keepdims=True)
    contenders = (["ours-streamed"] if args.with_exact else []) + ["ours-hnsw"]
    results = run_streamed(data, contenders, args)
    q, g = sizes["num_query"], sizes["num_gallery"]
    print(f"\nRe-ranking evaluated in blocks (evaluate_reranked), Market-1501 + {args.distractors:,} distractors: "
          f"{q} x {g} (N = {q + g:,}), {args.dim}-d unit rows, {os.cpu_count()} CPU cores\n")
    print(streamed_table(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-faiss", action="store_true", help="also ours with knn_backend='faiss'")
    parser.add_argument("--msmt", action="store_true", help="ours alone at MSMT17 size (11,659 x 82,161)")
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)  # smaller MSMT-shaped trial runs
    parser.add_argument("--approximate", action="store_true",
                        help="evaluate_reranked with knn_backend='faiss-hnsw' on Market-1501 + --distractors")
    parser.add_argument("--distractors", type=int, default=0, help="extra distractors of --approximate (500k: 500000)")
    parser.add_argument("--with-exact", action="store_true", help="--approximate: also exact neighbours (N x N sweep)")
    parser.add_argument("--check-peer", action="store_true", help="only check that the classic functions load")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_peer:
        peer = load_classic()
        print(f"classic re_ranking and compute_distance_matrix: importable from {peer['location']}")
    elif args.worker:
        worker(args.worker, args.data, args.out, args.k1, args.k2, args.lambda_value)
    elif args.msmt:
        msmt(args)
    elif args.approximate:
        approximate(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
