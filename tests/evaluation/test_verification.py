"""verification_metrics / roc_curve against a brute-force threshold sweep and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid.evaluation import VerificationResult, roc_curve, verification_metrics


def _pairs_loop(distmat, q_pids, g_pids, q_camids, g_camids):
    """(distance, is_positive) of every pair, same pid + same camera left out, one pair at a time."""
    values, labels = [], []
    for i in range(distmat.shape[0]):
        for j in range(distmat.shape[1]):
            if q_pids[i] == g_pids[j] and q_camids[i] == g_camids[j]:
                continue
            values.append(float(np.float32(distmat[i, j])))
            labels.append(bool(q_pids[i] == g_pids[j]))
    return np.array(values), np.array(labels)


def _sweep_loop(values, labels):
    """Thresholds -inf + every distinct distance, with the counts of accepted pairs (d <= t)."""
    thresholds = [-math.inf] + sorted(set(values.tolist()))
    fp = [int(np.sum(~labels & (values <= t))) for t in thresholds]
    tp = [int(np.sum(labels & (values <= t))) for t in thresholds]
    return np.array(fp), np.array(tp), np.array(thresholds)


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, fprs):
    values, labels = _pairs_loop(distmat, q_pids, g_pids, q_camids, g_camids)
    fp, tp, thresholds = _sweep_loop(values, labels)
    n, p = int((~labels).sum()), int(labels.sum())
    fpr, tpr = fp / n, tp / p
    auc = sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))
    # EER: first point with FPR >= 1 - TPR, interpolated on the segment from the point before it
    i = next(i for i in range(len(fpr)) if fpr[i] >= 1 - tpr[i])
    x0, y0, x1, y1 = fpr[i - 1], tpr[i - 1], fpr[i], tpr[i]
    s = (1 - x0 - y0) / ((x1 - x0) + (y1 - y0))
    eer = x0 + s * (x1 - x0)
    ok = {f: [k for k in range(len(fpr)) if fpr[k] <= f] for f in fprs}
    return {"auc": auc, "eer": eer, "eer_threshold": thresholds[i], "num_positive_pairs": p,
            "num_negative_pairs": n, "tpr_at_fpr": {f: max(tpr[k] for k in ok[f]) for f in fprs},
            "threshold_at_fpr": {f: max(thresholds[k] for k in ok[f]) for f in fprs},
            "curve": (fp, tp, thresholds)}


def _random_case(seed: int, num_q: int = 12, num_g: int = 40, integer: bool = False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 8, num_q)
    g_pids = rng.integers(0, 9, num_g)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    if integer:  # many exact ties, also between positives and negatives
        distmat = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g)).astype(np.float32)
    distmat = distmat - 0.3 * (q_pids[:, None] == g_pids[None, :])
    return distmat, q_pids, g_pids, q_camids, g_camids


def _one_query(positives, negatives):
    """A 1 x n case: gallery items of the query's pid (other camera) at ``positives``, others at ``negatives``."""
    distmat = np.array([list(positives) + list(negatives)], dtype=np.float32)
    g_pids = np.array([1] * len(positives) + [2] * len(negatives))
    return distmat, np.array([1]), g_pids, np.array([0]), np.ones(len(g_pids), dtype=np.int64)


FPRS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer", [False, True])
def test_matches_brute_force_sweep(seed: int, integer: bool) -> None:
    case = _random_case(seed, integer=integer)
    ref = _reference(*case, FPRS)
    result = verification_metrics(*case, fprs=FPRS)
    assert isinstance(result, VerificationResult)
    assert result.num_positive_pairs == ref["num_positive_pairs"]
    assert result.num_negative_pairs == ref["num_negative_pairs"]
    assert result.num_positive_pairs + result.num_negative_pairs + result.num_excluded_pairs == case[0].size
    assert result.auc == pytest.approx(ref["auc"], abs=1e-12)
    assert result.eer == pytest.approx(ref["eer"], abs=1e-12)
    assert result.eer_threshold == ref["eer_threshold"]
    assert result.tpr_at_fpr == pytest.approx(ref["tpr_at_fpr"], abs=1e-15)
    assert result.threshold_at_fpr == ref["threshold_at_fpr"]
    assert list(result.tpr_at_fpr) == list(FPRS)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("integer", [False, True])
def test_roc_curve_full_and_vertices(seed: int, integer: bool) -> None:
    case = _random_case(seed, integer=integer)
    fp, tp, thresholds = _reference(*case, FPRS)["curve"]
    n, p = fp[-1], tp[-1]
    fpr, tpr, thr = roc_curve(*case, drop_intermediate=False)
    np.testing.assert_array_equal(thr, thresholds)
    np.testing.assert_array_equal(fpr, fp / n)
    np.testing.assert_array_equal(tpr, tp / p)

    vfpr, vtpr, vthr = roc_curve(*case)
    assert vthr[0] == -np.inf and (vfpr[0], vtpr[0]) == (0.0, 0.0) and (vfpr[-1], vtpr[-1]) == (1.0, 1.0)
    assert len(vthr) <= len(thr) and (integer or len(vthr) < len(thr) / 2)  # few distinct integers: all turn
    position = np.searchsorted(thresholds, vthr)  # the vertices are sweep points ...
    np.testing.assert_array_equal(thresholds[position], vthr)
    np.testing.assert_array_equal(vfpr, fp[position] / n)
    np.testing.assert_array_equal(vtpr, tp[position] / p)
    # ... every dropped point lies on the segment between the vertices around it (exact, in counts) ...
    vfp, vtp = fp[position], tp[position]
    for k in range(len(thresholds)):
        s = min(int(np.searchsorted(vthr, thresholds[k], "right")) - 1, len(vthr) - 2)
        assert (fp[k] - vfp[s]) * (vtp[s + 1] - vtp[s]) == (tp[k] - vtp[s]) * (vfp[s + 1] - vfp[s])
    # ... and no vertex lies on a straight line through its neighbours.
    d_fp, d_tp = np.diff(vfp), np.diff(vtp)
    assert np.all(d_fp[:-1] * d_tp[1:] != d_fp[1:] * d_tp[:-1])
    auc = verification_metrics(*case).auc
    assert np.trapezoid(vtpr, vfpr) == pytest.approx(auc, abs=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-12)


@pytest.mark.parametrize("integer", [False, True])
def test_auc_is_mann_whitney(integer: bool) -> None:
    case = _random_case(5, integer=integer)
    values, labels = _pairs_loop(*case)
    wins = 0.0
    for d_pos in values[labels]:
        for d_neg in values[~labels]:
            wins += 1.0 if d_neg > d_pos else 0.5 if d_neg == d_pos else 0.0
    assert verification_metrics(*case).auc == pytest.approx(wins / (labels.sum() * (~labels).sum()), abs=1e-12)


def test_same_identity_same_camera_pairs_are_excluded() -> None:
    # query pid 1 camera 0; gallery: pid 1 camera 0 at 0.1 (excluded), pid 1 camera 1 at 0.5
    # (positive), pid 2 camera 0 at 0.3 (negative). Counted, the 0.1 pair would give AUC 0.5.
    distmat = np.array([[0.1, 0.5, 0.3]], dtype=np.float32)
    result = verification_metrics(distmat, np.array([1]), np.array([1, 1, 2]), np.array([0]), np.array([0, 1, 0]),
                                  fprs=(0.5, 1.0))
    assert (result.num_positive_pairs, result.num_negative_pairs, result.num_excluded_pairs) == (1, 1, 1)
    assert result.auc == 0.0  # the only positive is farther than the only negative
    # sweep: -inf (0, 0), 0.3 (1, 0), 0.5 (1, 1): FPR >= FNR first at 0.3, on the segment from (0, 0)
    assert result.eer == 1.0 and result.eer_threshold == pytest.approx(0.3)
    assert result.tpr_at_fpr == {0.5: 0.0, 1.0: 1.0}
    assert result.threshold_at_fpr[0.5] == -math.inf and result.threshold_at_fpr[1.0] == pytest.approx(0.5)
    fpr, tpr, thresholds = roc_curve(distmat, np.array([1]), np.array([1, 1, 2]), np.array([0]),
                                     np.array([0, 1, 0]), drop_intermediate=False)
    np.testing.assert_array_equal(fpr, [0, 1, 1])
    np.testing.assert_array_equal(tpr, [0, 0, 1])
    np.testing.assert_array_equal(thresholds, [-np.inf, np.float32(0.3), np.float32(0.5)])


def test_eer_hand_cases() -> None:
    # positives 1, 4, 5; negatives 2.5, 3, 6. Sweep (FPR, TPR): -inf (0, 0), 1 (0, 1/3),
    # 2.5 (1/3, 1/3), 3 (2/3, 1/3), 4 (2/3, 2/3), 5 (2/3, 1), 6 (1, 1).
    # FPR + TPR - 1 first reaches >= 0 at 3 (exactly 0): EER = FPR = FNR = 2/3 there.
    result = verification_metrics(*_one_query([1, 4, 5], [2.5, 3, 6]))
    assert result.eer == pytest.approx(2 / 3, abs=1e-15) and result.eer_threshold == 3.0
    assert result.auc == pytest.approx(5 / 9, abs=1e-15)  # (1 < all three) + (4 < 6) + (5 < 6)
    # A tie: positives 1, 2; negatives 2, 3. Sweep: -inf (0, 0), 1 (0, 1/2), 2 (1/2, 1), 3 (1, 1).
    # At 1: 0 + 1/2 - 1 < 0; at 2: 1/2 + 1 - 1 >= 0. On the diagonal from (0, 1/2) to (1/2, 1),
    # (s/2, 1/2 + s/2) meets x + y = 1 at s = 1/2: EER = 1/4, threshold 2 (FNR 0 <= 1/4 <= FPR 1/2).
    result = verification_metrics(*_one_query([1, 2], [2, 3]))
    assert result.eer == 0.25 and result.eer_threshold == 2.0
    assert result.auc == (1 + 1 + 1 + 0.5) / 4  # 1 < 2, 1 < 3, 2 < 3; the tie 2 = 2 counts one half


def test_tpr_and_threshold_at_fpr_hand_case() -> None:
    # positives 0.5, 2, 3, 4; negatives 1, 3, 3, 5. Sweep (accepted negatives, positives):
    # -inf (0, 0), 0.5 (0, 1), 1 (1, 1), 2 (1, 2), 3 (3, 3), 4 (3, 4), 5 (4, 4).
    fprs = (0.1, 0.25, 0.5, 0.75, 1.0)
    result = verification_metrics(*_one_query([0.5, 2, 3, 4], [1, 3, 3, 5]), fprs=fprs)
    assert result.tpr_at_fpr == {0.1: 0.25, 0.25: 0.5, 0.5: 0.5, 0.75: 1.0, 1.0: 1.0}
    # at FPR <= 0.5 the tie at 3 (two negatives at once) is out: the threshold stays at 2
    assert result.threshold_at_fpr == {0.1: 0.5, 0.25: 2.0, 0.5: 2.0, 0.75: 4.0, 1.0: 5.0}


def test_only_accept_nothing_meets_the_fpr() -> None:
    # the nearest pair is a negative: any threshold accepting a pair has FPR >= 1/2
    result = verification_metrics(*_one_query([2.0], [1.0, 3.0]), fprs=(0.1, 0.5))
    assert result.tpr_at_fpr == {0.1: 0.0, 0.5: 1.0}
    assert result.threshold_at_fpr == {0.1: -math.inf, 0.5: 2.0}
    distances = np.array([2.0, 1.0, 3.0], dtype=np.float32)
    assert not np.any(distances <= result.threshold_at_fpr[0.1])  # -inf accepts nothing


def test_threshold_reproduces_rates_on_float32_distances() -> None:
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(3, num_q=30, num_g=80)
    result = verification_metrics(distmat.astype(np.float64), q_pids, g_pids, q_camids, g_camids, fprs=FPRS)
    values, labels = _pairs_loop(distmat, q_pids, g_pids, q_camids, g_camids)
    values = values.astype(np.float32)
    for f in FPRS:
        accepted = values <= result.threshold_at_fpr[f]
        assert (accepted & ~labels).sum() / (~labels).sum() <= f
        assert (accepted & labels).sum() / labels.sum() == result.tpr_at_fpr[f]


def test_torch_input_matches_numpy() -> None:
    case = _random_case(4, integer=True)
    expected = verification_metrics(*case)
    tensors = [torch.from_numpy(np.asarray(a)) for a in case]
    tensors[0] = tensors[0].double().requires_grad_()
    assert verification_metrics(*tensors) == expected
    for got, want in zip(roc_curve(*tensors), roc_curve(*case)):
        np.testing.assert_array_equal(got, want)


def test_input_is_not_modified() -> None:
    distmat, *labels = _random_case(2)
    keep = distmat.copy()
    tensor = torch.from_numpy(distmat.copy())
    verification_metrics(distmat, *labels)
    roc_curve(distmat, *labels, drop_intermediate=False)
    verification_metrics(tensor, *labels)
    np.testing.assert_array_equal(distmat, keep)  # the negatives are sorted in a copy
    np.testing.assert_array_equal(tensor.numpy(), keep)


def test_no_positive_or_no_negative_pair() -> None:
    distmat = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="no positive pair"):
        verification_metrics(distmat, np.array([1, 2]), np.array([3, 4, 5]), np.array([0, 0]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="no positive pair"):  # the only same-pid pairs share the camera
        verification_metrics(distmat, np.array([1, 2]), np.array([1, 1, 5]), np.array([0, 0]), np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="no negative pair"):
        roc_curve(distmat, np.array([1, 1]), np.array([1, 1, 1]), np.array([0, 0]), np.array([1, 1, 1]))


def test_bad_inputs() -> None:
    distmat, q_pids, g_pids, q_camids, g_camids = _random_case(0)
    with pytest.raises(ValueError, match=r"g_pids: expected a 1-D array of length 40 .* got shape \(39,\)"):
        verification_metrics(distmat, q_pids, g_pids[:-1], q_camids, g_camids)
    with pytest.raises(ValueError, match=r"q_camids: expected a 1-D array of length 12"):
        verification_metrics(distmat, q_pids, g_pids, q_camids[:, None], g_camids)
    with pytest.raises(ValueError, match="distmat: expected a 2-D"):
        verification_metrics(distmat[0], q_pids, g_pids, q_camids, g_camids)
    same_pid = np.argwhere(q_pids[:, None] == g_pids[None, :])
    excluded = same_pid[q_camids[same_pid[:, 0]] == g_camids[same_pid[:, 1]]][0]
    negative = np.argwhere(q_pids[:, None] != g_pids[None, :])[0]
    for bad, value in (("NaN", np.nan), ("-inf", -np.inf)):
        for at in (tuple(negative), tuple(excluded)):  # also in a pair that the metrics leave out
            broken = distmat.copy()
            broken[at] = value
            with pytest.raises(ValueError, match=f"distmat contains {bad}"):
                verification_metrics(broken, q_pids, g_pids, q_camids, g_camids)
    broken = distmat.copy()
    broken[0, 0] = np.inf  # +inf is a distance like any other
    assert verification_metrics(broken, q_pids, g_pids, q_camids, g_camids).num_negative_pairs > 0
    for fprs in ((0.0,), (-0.1,), (1.5,), (float("nan"),), (True,), ("0.1",)):
        with pytest.raises(ValueError, match=r"fprs: expected false positive rates in \(0, 1\]"):
            verification_metrics(distmat, q_pids, g_pids, q_camids, g_camids, fprs=fprs)
    with pytest.raises(TypeError, match="fprs=0.001: expected a sequence"):
        verification_metrics(distmat, q_pids, g_pids, q_camids, g_camids, fprs=1e-3)


def test_fpr_keys_are_the_given_floats() -> None:
    case = _random_case(1)
    result = verification_metrics(*case, fprs=[np.float64(1e-3), 0.5])
    assert set(result.tpr_at_fpr) == {1e-3, 0.5} and result.tpr_at_fpr[1e-3] == result.tpr_at_fpr[np.float64(1e-3)]
    assert verification_metrics(*case, fprs=()).tpr_at_fpr == {}


@pytest.mark.parametrize("integer", [False, True])
def test_auc_matches_sklearn(integer: bool) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    case = _random_case(7, num_q=20, num_g=60, integer=integer)
    values, labels = _pairs_loop(*case)
    assert verification_metrics(*case).auc == pytest.approx(metrics.roc_auc_score(labels, -values), abs=1e-12)


@pytest.mark.parametrize("integer", [False, True])
def test_with_roc_gives_roc_curve_from_the_same_pairs(integer: bool) -> None:
    case = _random_case(7, integer=integer)
    plain = verification_metrics(*case)
    both = verification_metrics(*case, with_roc=True)
    assert plain.roc is None and both == plain  # the metrics do not change (roc is not compared)
    for got, expected in zip(both.roc, roc_curve(*case)):
        np.testing.assert_array_equal(got, expected)
