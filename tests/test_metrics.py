"""Tests for msutils.segmentation.metrics: voxel overlap, HD95 (against MONAI), CIs, threshold curves."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from msutils.segmentation import metrics as M
from msutils.segmentation import slice_classification as SC


def _blobs(shape: tuple[int, ...], seed: int, sigma: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > 0.6 * field.std()


@pytest.fixture(scope="module")
def monai_metrics():
    import monai.metrics as mm

    assert "torchvision" not in sys.modules and "timm" not in sys.modules
    return mm


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(a[None, None].astype(np.float32))


# --------------------------------------------------------------------------- overlap
def test_overlap_hand_made():
    truth = np.zeros((5, 5), bool)
    truth[0:2, 0:3] = True  # 6 voxels
    pred = np.zeros((5, 5), np.uint8)
    pred[1, 0:3] = 1  # 3 inside
    pred[4, 4] = 1  # 1 outside
    assert M.dice(pred, truth) == pytest.approx(6 / 10)
    assert M.iou(pred, truth) == pytest.approx(3 / 7)
    assert M.ppv(pred, truth) == pytest.approx(3 / 4)
    assert M.sensitivity(pred, truth) == pytest.approx(3 / 6)
    vm = M.voxel_metrics(pred, truth)
    assert (vm["tp"], vm["fp"], vm["fn"], vm["n_pred"], vm["n_truth"]) == (3, 1, 3, 4, 6)
    assert vm["dice"] == pytest.approx(0.6) and vm["iou"] == pytest.approx(3 / 7)


@pytest.mark.parametrize("shape", [(48, 40), (24, 28, 20)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_iou_against_monai(monai_metrics, shape, seed):
    pred = _blobs(shape, seed)
    truth = _blobs(shape, seed + 100)
    assert pred.any() and truth.any() and (pred & truth).any()
    ref_dice = float(monai_metrics.compute_dice(_t(pred), _t(truth), include_background=True))
    ref_iou = float(monai_metrics.compute_iou(_t(pred), _t(truth), include_background=True))
    assert M.dice(pred, truth) == pytest.approx(ref_dice, rel=1e-6)
    assert M.iou(pred, truth) == pytest.approx(ref_iou, rel=1e-6)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
@pytest.mark.parametrize(
    "shape, spacing", [((48, 40), (0.5, 1.3)), ((24, 28, 20), (0.9, 1.0, 3.0)), ((20, 22, 18), 1.0)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_against_monai(monai_metrics, shape, spacing, seed):
    pred = _blobs(shape, seed)
    truth = _blobs(shape, seed + 50)
    sp = list(np.broadcast_to(np.asarray(spacing, float), (len(shape),)))
    for pct in (95, 100):
        ref = float(
            monai_metrics.compute_hausdorff_distance(
                _t(pred), _t(truth), include_background=True, percentile=pct, spacing=sp
            )
        )
        ours = M.hausdorff_percentile(pred, truth, spacing, percentile=pct)
        assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)
        assert ours > 0
    assert M.hd95(pred, truth, spacing) == M.hausdorff_percentile(pred, truth, spacing, percentile=95)


def test_hd95_hand_made_anisotropic():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2, 5, 5] = True
    b[5, 5, 5] = True
    assert M.hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.hd95(a, b, spacing=(1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert M.hd95(a, a, spacing=(2.0, 1.0, 1.0)) == 0.0


def test_empty_conventions():
    empty = np.zeros((6, 6), bool)
    blob = np.zeros((6, 6), bool)
    blob[1:3, 1:3] = True
    both = M.voxel_metrics(empty, empty, spacing=1.0)
    assert (both["dice"], both["iou"], both["ppv"], both["sensitivity"]) == (1.0, 1.0, 1.0, 1.0)
    assert math.isnan(both["hd95"])
    for pred, truth in ((empty, blob), (blob, empty)):
        one = M.voxel_metrics(pred, truth)
        assert (one["dice"], one["iou"], one["ppv"], one["sensitivity"]) == (0.0, 0.0, 0.0, 0.0)
        assert math.isnan(one["hd95"])
        assert M.ppv(pred, truth) == 0.0 and M.sensitivity(pred, truth) == 0.0
    assert M.hd95(empty, blob, hd_empty=99.0) == 99.0
    nan_both = M.voxel_metrics(empty, empty, empty_score=float("nan"))
    assert all(math.isnan(nan_both[k]) for k in ("dice", "iou", "ppv", "sensitivity"))
    assert M.dice(empty, empty) == 1.0 and M.iou(empty, empty) == 1.0
    assert M.ppv(empty, empty) == 1.0 and M.sensitivity(empty, empty) == 1.0


def test_voxel_metrics_matches_single_functions():
    pred = _blobs((20, 24, 16), 7)
    truth = _blobs((20, 24, 16), 8)
    sp = (1.0, 0.8, 2.5)
    vm = M.voxel_metrics(pred, truth, sp)
    assert vm["dice"] == M.dice(pred, truth)
    assert vm["iou"] == M.iou(pred, truth)
    assert vm["ppv"] == M.ppv(pred, truth)
    assert vm["sensitivity"] == M.sensitivity(pred, truth)
    assert vm["hd95"] == M.hd95(pred, truth, sp)


def test_voxel_metrics_table():
    a = np.zeros((8, 8), bool)
    a[2:5, 2:5] = True
    b = np.roll(a, 1, axis=0)
    table = M.voxel_metrics_table({"s1": (a, a), "s2": (a, b, (2.0, 1.0)), "s3": (a, np.zeros_like(a))})
    assert list(table.index) == ["s1", "s2", "s3"] and table.index.name == "case"
    assert list(table.columns) == ["dice", "iou", "ppv", "sensitivity", "hd95", "tp", "fp", "fn", "n_pred", "n_truth"]
    assert table.loc["s1", "dice"] == 1.0 and table.loc["s1", "hd95"] == 0.0
    assert table.loc["s2", "dice"] == pytest.approx(12 / 18)
    assert table.loc["s2", "hd95"] == pytest.approx(2.0)
    assert table.loc["s3", "dice"] == 0.0 and math.isnan(table.loc["s3", "hd95"])
    seq = M.voxel_metrics_table([(a, b)], spacing=(2.0, 1.0), ids=["x"])
    assert seq.loc["x", "hd95"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"pair 's2': 'pred' and 'truth' must have the same shape"):
        M.voxel_metrics_table({"s1": (a, a), "s2": (a, a[:4])})
    with pytest.raises(ValueError, match=r"'ids' must have one entry per pair \(1\); got 2"):
        M.voxel_metrics_table([(a, b)], ids=["x", "y"])


def test_voxel_validation_messages():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=r"'spacing' must be one positive number or 2 positive numbers"):
        M.hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"'spacing' must be one positive number or 2 positive numbers"):
        M.hd95(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"'pred' must be a binary mask \(values 0/1\); got values such as 0.7"):
        M.dice(np.full((4, 4), 0.7), a)
    with pytest.raises(ValueError, match=r"'percentile' must be in \[0, 100\]; got 101"):
        M.hausdorff_percentile(a, a, percentile=101)


# --------------------------------------------------------------------------- classification
@pytest.mark.parametrize(
    "k, n, low, high",
    [(0, 10, 0.0, 0.3085), (10, 10, 0.6915, 1.0), (5, 10, 0.1871, 0.8129), (1, 20, 0.0013, 0.2487)],
)
def test_clopper_pearson_known_values(k, n, low, high):
    m = M.classification_metrics(tp=k, fp=0, tn=0, fn=n - k)
    assert m["sensitivity"] == pytest.approx(k / n)
    assert m["sensitivity_ci_low"] == pytest.approx(low, abs=1e-4)
    assert m["sensitivity_ci_high"] == pytest.approx(high, abs=1e-4)


def test_classification_metrics_seed_003_counts():
    # seed 003, centre 1: 218 positive slices (146 TP), 218 negatives (217 TN)
    m = M.classification_metrics(tp=146, fp=1, tn=217, fn=72)
    assert round(m["accuracy"], 3) == 0.833
    assert round(m["specificity"], 3) == 0.995
    assert round(m["npv"], 3) == 0.751
    assert round(m["ppv"], 3) == 0.993
    assert round(m["sensitivity"], 3) == 0.670
    assert m["n"] == 436 and (m["tp"], m["fp"], m["tn"], m["fn"]) == (146, 1, 217, 72)
    for name in M.CLASSIFICATION_METRICS:
        assert m[f"{name}_ci_low"] < m[name] < m[f"{name}_ci_high"]


def test_classification_metrics_zero_denominators_and_validation():
    m = M.classification_metrics(tp=0, fp=0, tn=5, fn=0)
    assert math.isnan(m["sensitivity"]) and math.isnan(m["sensitivity_ci_low"]) and math.isnan(m["ppv"])
    assert m["specificity"] == 1.0 and m["npv"] == 1.0 and m["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"'fp' must be a non-negative integer; got -1"):
        M.classification_metrics(1, -1, 0, 0)
    with pytest.raises(ValueError, match=r"'alpha' must be in \(0, 1\); got 0"):
        M.classification_metrics(1, 1, 1, 1, alpha=0)
    narrow = M.classification_metrics(5, 0, 5, 5, alpha=0.5)
    wide = M.classification_metrics(5, 0, 5, 5, alpha=0.05)
    assert wide["sensitivity_ci_low"] < narrow["sensitivity_ci_low"]


# --------------------------------------------------------------------------- summaries
def test_summarize_metrics_drops_nan_and_matches_manual_bootstrap():
    table = pd.DataFrame({"dice": [0.5, 0.7, 0.9, 0.6], "hd95": [1.0, np.nan, 3.0, 2.0], "other": [1, 2, 3, 4]})
    s = M.summarize_metrics(table, n_boot=300, seed=1)
    assert list(s.index) == ["dice", "hd95"]
    assert list(s.columns) == ["mean", "ci_low", "ci_high", "n", "n_units"]
    assert s.loc["dice", "mean"] == pytest.approx(0.675) and s.loc["dice", "n"] == 4
    assert s.loc["hd95", "mean"] == pytest.approx(2.0) and s.loc["hd95", "n"] == 3
    # reference: percentile bootstrap of the mean of the non-NaN values
    from msutils.stats import bootstrap_ci

    ref = bootstrap_ci(np.array([1.0, 3.0, 2.0]), n_boot=300, seed=1)
    assert (s.loc["hd95", "ci_low"], s.loc["hd95", "ci_high"]) == (ref.low, ref.high)
    assert 1.0 <= s.loc["hd95", "ci_low"] < 2.0 < s.loc["hd95", "ci_high"] <= 3.0
    again = M.summarize_metrics(table, n_boot=300, seed=1)
    pd.testing.assert_frame_equal(s, again)


def test_summarize_metrics_units_and_validation():
    table = pd.DataFrame({"dice": [0.2, 0.2, 0.9, 0.9, np.nan], "patient": ["a", "a", "b", "b", "c"]})
    s = M.summarize_metrics(table, units="patient", n_boot=200)
    assert s.loc["dice", "n_units"] == 2 and s.loc["dice", "n"] == 4
    # two patients: every resample mean is 0.2, 0.55 or 0.9
    assert s.loc["dice", "ci_low"] >= 0.2 and s.loc["dice", "ci_high"] <= 0.9
    empty = M.summarize_metrics(pd.DataFrame({"hd95": [np.nan, np.nan]}))
    assert empty.loc["hd95", "n"] == 0 and math.isnan(empty.loc["hd95", "mean"])
    with pytest.raises(ValueError, match=r"'columns' not in table: \['iou'\]"):
        M.summarize_metrics(table, ["iou"])
    with pytest.raises(ValueError, match=r"'units' column 'scan' not in table"):
        M.summarize_metrics(table, units="scan")


# --------------------------------------------------------------------------- threshold curve
def _coverage_stack() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Positive slices covered 20 %, 50 %, 80 %; negatives: one false alarm, three empty."""
    preds, truths = [], []
    for frac in (0.2, 0.5, 0.8):
        t = np.zeros((12, 12), bool)
        t[1:11, 1:11] = True
        p = np.zeros_like(t)
        p[1 : 1 + int(frac * 10), 1:11] = True
        preds.append(p)
        truths.append(t)
    for fa in (True, False, False, False):
        t = np.zeros((12, 12), bool)
        p = np.zeros_like(t)
        p[0, 0] = fa
        preds.append(p)
        truths.append(t)
    return preds, truths


def test_threshold_curve_counts():
    preds, truths = _coverage_stack()
    curve = SC.threshold_curve(preds, truths, thresholds=[0.1, 0.3, 0.6, 0.9], negative_ratio=None)
    assert list(curve["threshold"]) == [0.1, 0.3, 0.6, 0.9]
    assert list(curve["tp"]) == [3, 2, 1, 0]
    assert list(curve["fn"]) == [0, 1, 2, 3]
    assert list(curve["fp"]) == [1, 1, 1, 1] and list(curve["tn"]) == [3, 3, 3, 3]
    assert curve["sensitivity"].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert curve["npv"].tolist() == pytest.approx([1.0, 0.75, 0.6, 0.5])
    assert curve.loc[0, "accuracy"] == pytest.approx(6 / 7)
    first = M.classification_metrics(3, 1, 3, 0)
    for k, v in first.items():
        assert curve.loc[0, k] == pytest.approx(v)


def test_threshold_curve_default_thresholds_and_sampling():
    preds, truths = _coverage_stack()
    curve = SC.threshold_curve(preds, truths, seed=0)
    assert len(curve) == 19
    assert curve["threshold"].tolist() == pytest.approx(np.linspace(0.05, 0.95, 19).tolist())
    assert (curve["tp"] + curve["fn"] == 3).all() and (curve["tn"] + curve["fp"] == 3).all()
    assert curve["sensitivity"].is_monotonic_decreasing
    stack = SC.threshold_curve(np.stack(preds), np.stack(truths), seed=0)
    pd.testing.assert_frame_equal(curve, stack)
    with pytest.raises(ValueError, match=r"'thresholds' must be a non-empty sequence of numbers in \[0, 1\]"):
        SC.threshold_curve(preds, truths, thresholds=[0.5, 1.5])


def test_threshold_curve_from_volume_classification():
    from msutils.segmentation.slice_classification import slice_level_classification

    vol_t = np.stack(_coverage_stack()[1], axis=-1)
    vol_p = np.stack(_coverage_stack()[0], axis=-1)
    res = slice_level_classification(vol_p, vol_t, axis=2, negative_ratio=None)
    curve = SC.threshold_curve_from_slices(res, [0.25, 0.55])
    assert list(curve["tp"]) == [2, 1]
