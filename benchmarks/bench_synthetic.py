"""Speed and difficulty of the synthetic Market-1501 generator.

Prints one table: images generated, seconds, images/s, and how well simple matchers do
on the generated test split (Market protocol, non-interpolated mAP):

* raw pixels: flattened 32x16 pixels, Euclidean distance (no learning);
* colour histograms: per horizontal stripe, Euclidean (no learning);
* colour histograms + LDA learnt on bounding_box_train: a linear metric, as a cheap
  stand-in for "a trained model". It must beat raw pixels by far (learnable), and raw
  pixels must stay well below ~0.3 (not trivial).

    .venv/bin/python benchmarks/bench_synthetic.py --train-ids 200 --test-ids 200 --workers 1
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.data.synthetic import make_synthetic_market  # noqa: E402

_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def read_split(folder: Path, drop_junk: bool = True) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, pids, camids) of a Market split folder, junk (-1) dropped as every loader does."""
    paths, pids, cams = [], [], []
    for path in sorted(folder.glob("*.jpg")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path}: not a Market-1501 file name")
        pid = int(match.group(1))
        if drop_junk and pid == -1:
            continue
        paths.append(path)
        pids.append(pid)
        cams.append(int(match.group(2)) - 1)
    return paths, np.asarray(pids), np.asarray(cams)


def raw_pixel_features(paths: list[Path], size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """Flattened, down-scaled pixels in [0, 1]: the no-learning baseline."""
    feats = [cv2.resize(cv2.imread(str(p)), (size[1], size[0]), interpolation=cv2.INTER_AREA) for p in paths]
    return np.stack(feats).reshape(len(paths), -1).astype(np.float32) / 255.0


def colour_histogram_features(paths: list[Path], stripes: int = 6, bins: int = 4) -> np.ndarray:
    """Joint BGR histograms of horizontal stripes (the classic ELF/LOMO idea), L1 then sqrt."""
    feats = []
    for path in paths:
        img = cv2.imread(str(path))
        q = (img.astype(np.int32) * bins // 256)
        code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
        rows = np.array_split(code, stripes, axis=0)
        hist = np.concatenate([np.bincount(r.ravel(), minlength=bins ** 3) / r.size for r in rows])
        feats.append(np.sqrt(hist))
    return np.stack(feats).astype(np.float32)


def fit_lda(features: np.ndarray, labels: np.ndarray, dim: int = 64, reg: float = 1e-3) -> np.ndarray:
    """Fisher LDA projection (d x dim) from within/between-class scatter, ridge-regularised."""
    mean = features.mean(0)
    sw = np.zeros((features.shape[1],) * 2)
    sb = np.zeros_like(sw)
    for label in np.unique(labels):
        x = features[labels == label]
        mu = x.mean(0)
        sw += (x - mu).T @ (x - mu)
        sb += len(x) * np.outer(mu - mean, mu - mean)
    sw /= len(features)
    sb /= len(features)
    sw += reg * np.trace(sw) / len(sw) * np.eye(len(sw))
    # Generalised eigenproblem sb v = l sw v via whitening with sw^-1/2.
    evals, evecs = np.linalg.eigh(sw)
    whiten = evecs / np.sqrt(np.maximum(evals, 1e-12))
    evals_b, evecs_b = np.linalg.eigh(whiten.T @ sb @ whiten)
    order = np.argsort(evals_b)[::-1][:dim]
    return whiten @ evecs_b[:, order]


def market_map(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray,
               g_cams: np.ndarray) -> tuple[float, float]:
    """(mAP, rank-1) with the Market protocol: drop same pid + same camera, non-interpolated AP."""
    aps, top1 = [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        hits = (g_pids[order] == q_pids[i])[keep]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        top1.append(hits[0])
    return float(np.mean(aps)), float(np.mean(top1))


def squared_euclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T


def evaluate_baselines(root: Path) -> dict[str, tuple[float, float]]:
    """mAP and rank-1 of raw pixels, colour histograms, and LDA-on-histograms (trained)."""
    q_paths, q_pids, q_cams = read_split(root / "query")
    g_paths, g_pids, g_cams = read_split(root / "bounding_box_test")
    t_paths, t_pids, _ = read_split(root / "bounding_box_train")
    results = {}
    q, g = raw_pixel_features(q_paths), raw_pixel_features(g_paths)
    results["raw pixels 32x16"] = market_map(squared_euclidean(q, g), q_pids, g_pids, q_cams, g_cams)
    q, g = colour_histogram_features(q_paths), colour_histogram_features(g_paths)
    results["colour histograms"] = market_map(squared_euclidean(q, g), q_pids, g_pids, q_cams, g_cams)
    train = colour_histogram_features(t_paths)
    projection = fit_lda(train, t_pids)
    mean = train.mean(0)
    qp, gp = (q - mean) @ projection, (g - mean) @ projection
    results["histograms + LDA (trained)"] = market_map(squared_euclidean(qp, gp), q_pids, g_pids, q_cams, g_cams)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-ids", type=int, default=200)
    parser.add_argument("--test-ids", type=int, default=200)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="keep the set here (default: a temp dir)")
    args = parser.parse_args(argv)

    base = args.root or Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    rows = []
    try:
        for workers in args.workers:
            root = base / f"workers{workers}"
            start = time.perf_counter()
            make_synthetic_market(root, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
                                  image_size=(args.height, args.width), seed=args.seed,
                                  overwrite=True, workers=workers)
            seconds = time.perf_counter() - start
            count = sum(1 for _ in root.glob("*/*.jpg"))
            rows.append((workers, count, seconds))
        print(f"synthetic Market-1501: {args.train_ids} train ids, {args.test_ids} test ids, "
              f"{args.height}x{args.width}")
        print(f"{'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>9}")
        for workers, count, seconds in rows:
            print(f"{workers:>7} {count:>7} {seconds:>8.2f} {count / seconds:>9.0f}")
        print()
        print(f"{'matcher (test split)':<28} {'mAP':>6} {'rank-1':>7}")
        for name, (m_ap, rank1) in evaluate_baselines(base / f"workers{args.workers[0]}").items():
            print(f"{name:<28} {m_ap:>6.3f} {rank1:>7.3f}")
    finally:
        if args.root is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
