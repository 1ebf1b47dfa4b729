"""k-means on canonical distances: the same clustering on every machine, thread count and block size.

Every comparison that decides an assignment uses the canonical squared distances of
``reid.evaluation.distance`` (float32 products with their error bound, canonical values where the
bound leaves a choice; ties to the lower centre index), and the centres are float64 means rounded
to float32. Used by the clustering metrics (``retrieval.cluster_metrics``) and by the inverted lists
of approximate neighbour search (``ivf``).
"""

from __future__ import annotations

import numpy as np

from .distance import FeatureDistances

# Points per assignment block: ~4M distances.
_CLUSTER_BLOCK = 1 << 22


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, canonical squared distance) of each point's nearest centre, ties to the lower
    index: float32 products, and the canonical values where the bound leaves a choice."""
    space = FeatureDistances(x, centres, "euclidean", names=("features", "centres"))
    assign = np.empty(x.shape[0], dtype=np.int64)
    rows = max(1, _CLUSTER_BLOCK // max(centres.shape[0], 1))
    for start in range(0, x.shape[0], rows):
        block = slice(start, min(start + rows, x.shape[0]))
        values, bound = space.fast(block)
        values = values.numpy()
        best = values.min(axis=1)
        close = values <= (best + 2 * bound * (1 + 2.0 ** -40))[:, None]  # may still be the nearest
        assign[block] = values.argmin(axis=1)
        r, c = np.nonzero(close & (close.sum(axis=1) > 1)[:, None])
        if r.size:
            canon = space.pairs(r + start, c)
            order = np.lexsort((c, canon, r))  # per point: lowest canonical value, then index
            first = np.ones(order.size, dtype=bool)
            first[1:] = r[order][1:] != r[order][:-1]
            assign[start + r[order][first]] = c[order][first]
    points = np.arange(x.shape[0])
    return assign, space.pairs(points, assign).astype(np.float64)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii, SODA 2007): each next centre is drawn with
    probability proportional to the canonical squared distance to the nearest centre so far
    (canonical values, so the draw does not depend on the machine)."""
    space = FeatureDistances(x, x, "euclidean", names=("features", "features"))
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    closest = space.exact([chosen[0]]).numpy()[0].astype(np.float64)
    closest[chosen[0]] = 0.0
    for _ in range(1, k):
        total = closest.sum()
        if total > 0:
            pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
            pick = min(pick, n - 1)
            while closest[pick] == 0.0:  # rounding at the end of the cumulative sum
                pick -= 1
        else:  # every point sits on a centre: any point not chosen yet
            rest = np.setdiff1d(np.arange(n), chosen)
            pick = int(rest[rng.integers(rest.size)])
        chosen.append(pick)
        np.minimum(closest, space.exact([pick]).numpy()[0], out=closest)
        closest[pick] = 0.0
    return x[chosen].copy()


def lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Lloyd's k-means from the given initial ``centres`` (k x dim); stops when the assignments
    stop changing or after ``max_iter`` updates. Returns (assignments, inertia: the sum of
    canonical squared distances to the centres, the final float32 centres)."""
    k = centres.shape[0]
    assign, best = nearest_centre(x, centres)
    x64 = x.astype(np.float64)
    for _ in range(max_iter):
        counts = np.bincount(assign, minlength=k)
        order = np.argsort(assign, kind="stable")
        nonempty = np.flatnonzero(counts)
        starts = (np.cumsum(counts) - counts)[nonempty]
        new = centres.astype(np.float64)
        new[nonempty] = np.add.reduceat(x64[order], starts, axis=0) / counts[nonempty, None]
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # re-seed empty clusters on the points farthest from their centre
            new[empty] = x64[np.argsort(-best, kind="stable")[: empty.size]]
        centres = new.astype(np.float32)
        new_assign, best = nearest_centre(x, centres)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
    return assign, float(best.sum()), centres
