"""Ranking evaluation (CMC / mAP / mINP): ours against the classic compiled evaluation, same run.

Market-1501-sized synthetic features (3,368 queries, 15,913 gallery incl. 2,793 distractors,
6 cameras), clustered by identity so that the metrics look like a trained model's; their
squared-Euclidean distance matrix is the input of every contender. Each contender runs in a
fresh subprocess (so its peak memory is its own) and is timed from the matrix to the metrics.
The classic functions come from the registry package pyppbox-torchreid, installed by
benchmarks/setup_peer.sh into benchmarks/.venv (never a dependency of reid):

    bash benchmarks/setup_peer.sh
    benchmarks/.venv/bin/python benchmarks/bench_evaluation.py            # + --with-python-classic (~90 s)

Prints a markdown table: seconds (best of --repeats), peak RSS of the subprocess (VmHWM) and
the part above its baseline (after imports and loading the matrix), metrics, largest difference to the
classic compiled evaluation. mINP is checked against the field's mINP formula (ReID-Survey /
fast-reid: hits / rank of the last hit) evaluated by a plain per-query loop here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 750, "num_distractors": 2793, "num_cameras": 6}


# ----------------------------------------------------------------------------- synthetic data

def make_features(num_query: int, num_gallery: int, dim: int, *, num_ids: int, num_distractors: int,
                  num_cameras: int, noise: float = 0.55, intrinsic: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Features clustered by identity, with a camera shift and per-image noise levels.

    Identities live in a ``intrinsic``-dimensional space embedded in ``dim`` dimensions (real
    embeddings are far from isotropic), so difficulty varies smoothly: noise 0.55 gives roughly
    mAP 0.86, Rank-1 0.98, mINP 0.4, like a strong Market-1501 baseline. Distractors (pid 0)
    each get their own centre. Every query identity has gallery images.
    """
    rng = np.random.default_rng(seed)
    embed = np.linalg.qr(rng.standard_normal((dim, intrinsic)))[0].T.astype(np.float32) * np.sqrt(dim / intrinsic)
    centres = rng.standard_normal((num_ids + 2 + num_distractors, intrinsic)).astype(np.float32)  # +1: a gallery-only id
    camera_shift = 0.3 * rng.standard_normal((num_cameras, intrinsic)).astype(np.float32)
    q_pids = 1 + np.arange(num_query) % num_ids
    labelled = num_gallery - num_distractors
    g_pids = np.concatenate([1 + np.arange(labelled) % (num_ids + 1), np.zeros(num_distractors, dtype=np.int64)])
    q_camids = rng.integers(0, num_cameras, num_query)
    g_camids = rng.integers(0, num_cameras, num_gallery)

    def features(pids: np.ndarray, camids: np.ndarray) -> np.ndarray:
        centre = np.where(pids == 0, num_ids + 2 + np.arange(len(pids)) % max(num_distractors, 1), pids)
        scale = noise * rng.lognormal(0.0, 0.25, (len(pids), 1)).astype(np.float32)
        z = centres[centre] + camera_shift[camids] + scale * rng.standard_normal((len(pids), intrinsic)).astype(np.float32)
        return (z @ embed + 0.05 * rng.standard_normal((len(pids), dim)).astype(np.float32)).astype(np.float32)

    return {"query_features": features(q_pids, q_camids), "gallery_features": features(g_pids, g_camids),
            "q_pids": q_pids.astype(np.int64), "g_pids": g_pids.astype(np.int64),
            "q_camids": q_camids.astype(np.int64), "g_camids": g_camids.astype(np.int64)}


# ----------------------------------------------------------------------------- the peer

def load_classic() -> dict[str, Callable[..., Any]]:
    """The classic functions from pyppbox-torchreid, without its package __init__.

    That __init__ imports the whole toolkit (data loaders needing gdown, h5py, ...: dependencies
    skipped by --no-deps); the three modules used here need only numpy, torch and the compiled
    evaluation that ships in the wheel, so empty parent packages are registered instead.
    """
    spec = importlib.util.find_spec("pyppbox_torchreid")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pyppbox-torchreid is not installed here: run bash benchmarks/setup_peer.sh and use "
                         "benchmarks/.venv/bin/python")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, sub in (("pyppbox_torchreid", ""), ("pyppbox_torchreid.metrics", "metrics"),
                      ("pyppbox_torchreid.metrics.rank_cylib", "metrics/rank_cylib"),
                      ("pyppbox_torchreid.utils", "utils")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root / sub)]
            sys.modules[name] = module
    from pyppbox_torchreid.metrics import rank
    from pyppbox_torchreid.metrics.distance import compute_distance_matrix
    from pyppbox_torchreid.utils.rerank import re_ranking

    return {"evaluate_rank": rank.evaluate_rank, "compiled": rank.IS_CYTHON_AVAI,
            "compute_distance_matrix": compute_distance_matrix, "re_ranking": re_ranking,
            "location": str(root)}


def check_peer() -> None:
    peer = load_classic()
    print(f"pyppbox-torchreid at {peer['location']}")
    if not peer["compiled"]:
        # rank.py swallowed the ImportError; import again to show why
        try:
            from pyppbox_torchreid.metrics.rank_cylib import rank_cy  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"the compiled evaluation (rank_cy) cannot be imported: {err}") from err
    print("classic compiled evaluation (rank_cy.evaluate_cy): importable")


# ----------------------------------------------------------------------------- subprocess runs

def max_rss_mib() -> float:
    """Peak resident memory of this process (MiB).

    Linux's VmHWM (high-water mark of this address space). ru_maxrss is not used: on Linux it
    also carries the RSS the parent had when it forked this worker (folded in at exec), which
    would charge the parent's arrays to every contender.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB; no /proc elsewhere


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: less sensitive than wall time to
    other programs sharing the cores (shown beside the wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(call: Callable[[], Any], repeats: int) -> tuple[Any, dict[str, Any]]:
    """(the last result, {seconds (best), all_seconds, cpu_seconds (of the best), peak_mib,
    baseline_mib}) of ``repeats`` calls in this worker process."""
    baseline = max_rss_mib()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu_seconds()
        result = call()
        times.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    return result, {"seconds": min(times), "all_seconds": times, "cpu_seconds": cpu[int(np.argmin(times))],
                    "peak_mib": max_rss_mib(), "baseline_mib": baseline}


def run_worker(script: Path, args: list[str]) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def field_minp(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
               g_camids: np.ndarray) -> float:
    """mINP as the field's code computes it, one query at a time (the reference)."""
    inps = []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        hits = (g_pids[order] == q_pids[i])[keep]
        if not hits.any():
            continue
        last = np.flatnonzero(hits).max()
        inps.append(hits.cumsum()[last] / (last + 1.0))
    return float(np.mean(inps))


def save_arrays(folder: Path, **arrays: np.ndarray) -> Path:
    """One .npy per array: np.load then reads each straight into its array (no zip copy), so the
    RSS after loading is the inputs' real footprint, the baseline the peaks are compared with."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    return folder


def load_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}


def worker(contender: str, data: Path, out: Path, repeats: int, max_rank: int) -> None:

    from reid.evaluation import evaluate_rank

    inputs = load_arrays(data)
    distmat = inputs.pop("distmat")
    labels = (inputs["q_pids"], inputs["g_pids"], inputs["q_camids"], inputs["g_camids"])
    if contender == "ours":
        def call() -> Any:
            return evaluate_rank(distmat, *labels, max_rank=max_rank)
    else:
        peer = load_classic()
        if contender == "classic-compiled" and not peer["compiled"]:
            raise SystemExit("the classic compiled evaluation is not importable")
        use_cython = contender == "classic-compiled"

        def call() -> Any:
            return peer["evaluate_rank"](distmat, *labels, max_rank=max_rank, use_cython=use_cython)
    result, timing = timed(call, repeats)
    if contender == "ours":
        cmc, m_ap, m_inp, all_ap = result.cmc, result.mAP, result.mINP, result.all_AP
    else:
        (cmc, m_ap), m_inp, all_ap = result, float("nan"), np.zeros(0)
    np.savez(out, cmc=np.asarray(cmc, dtype=np.float64), mAP=float(m_ap), mINP=float(m_inp), all_AP=all_ap)
    print(json.dumps(timing))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rank", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-python-classic", action="store_true", help="also the classic pure-Python loop (~90 s)")
    parser.add_argument("--check-peer", action="store_true", help="only check that the classic functions load")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_peer:
        check_peer()
        return
    if args.worker:
        worker(args.worker, args.data, args.out, args.repeats, args.max_rank)
        return

    from reid.evaluation import pairwise_distance

    load_classic()  # fail early, before building data, if the peer is missing
    data = make_features(dim=args.dim, seed=args.seed, **MARKET)
    distmat = pairwise_distance(data["query_features"], data["gallery_features"])
    labels = {k: data[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")}
    contenders = ["classic-compiled", "ours"] + (["classic-python"] if args.with_python_classic else [])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = save_arrays(Path(tmp) / "inputs", distmat=distmat, **labels)
        for name in contenders:
            out = Path(tmp) / f"{name}.npz"
            info = run_worker(Path(__file__), ["--worker", name, "--data", str(data_file), "--out", str(out),
                                               "--repeats", str(args.repeats), "--max-rank", str(args.max_rank)])
            with np.load(out) as r:
                info.update(cmc=r["cmc"], mAP=float(r["mAP"]), mINP=float(r["mINP"]), all_AP=r["all_AP"])
            results[name] = info
            print(f"{name}: {info['seconds']:.3f} s", file=sys.stderr, flush=True)
    minp_reference = field_minp(distmat, **labels)

    classic = results["classic-compiled"]
    rows = []
    for name in contenders:
        r = results[name]
        diff = max(abs(r["mAP"] - classic["mAP"]), float(np.abs(r["cmc"] - classic["cmc"]).max()))
        minp = f"{r['mINP']:.4f} (ref {minp_reference:.4f}, diff {abs(r['mINP'] - minp_reference):.1e})" \
            if np.isfinite(r["mINP"]) else "-"
        rows.append([name, f"{r['seconds']:.3f}", f"{r['cpu_seconds']:.3f}", f"{classic['seconds'] / r['seconds']:.1f}x",
                     f"{r['peak_mib']:.0f} / {r['peak_mib'] - r['baseline_mib']:.0f}",
                     f"{r['mAP']:.4f}", f"{r['cmc'][0]:.4f}", minp, f"{diff:.1e}"])
    print(f"\nEvaluation, Market-1501 size: {distmat.shape[0]} queries x {distmat.shape[1]} gallery, "
          f"{args.dim}-d features, {os.cpu_count()} CPU cores; seconds = best of {args.repeats}\n")
    print(markdown_table(["contender", "seconds", "CPU seconds", "speed-up vs classic compiled", "peak RSS / above baseline (MiB)",
                          "mAP", "Rank-1", "mINP", "max |diff| vs classic (CMC, mAP)"], rows))
    # The classic sums the per-query APs in a float32 accumulator, one query at a time; summing
    # ours the same way shows whether the per-query values themselves agree.
    ours_ap = results["ours"]["all_AP"]
    valid = ~np.isnan(ours_ap)
    float32_sum = np.cumsum(np.where(valid, ours_ap, 0.0).astype(np.float32))[-1] / np.float32(valid.sum())
    print(f"\nmAP difference to the classic once our per-query APs are summed in float32 as it does: "
          f"{abs(float(float32_sum) - classic['mAP']):.1e}")


if __name__ == "__main__":
    main()
