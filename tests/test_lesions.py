"""Tests for msutils.segmentation.lesions: instances, matching, lesion-wise and slice-level detection."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from msutils.segmentation import lesions as L
from msutils.segmentation import slice_classification as SC
from msutils.segmentation.metrics import classification_metrics


def _blobs(shape: tuple[int, ...], seed: int, sigma: float = 1.5, level: float = 0.25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > level * field.std() * 3


# --------------------------------------------------------------------------- instances
@pytest.mark.parametrize(
    "shape, connectivity, rank",
    [((40, 40), 4, 1), ((40, 40), 8, 2), ((20, 20, 16), 6, 1), ((20, 20, 16), 18, 2), ((20, 20, 16), 26, 3)],
)
def test_instances_match_scipy_label(shape, connectivity, rank):
    mask = _blobs(shape, seed=len(shape) * 10 + rank, sigma=1.0)
    ref, n_ref = ndimage.label(mask, structure=ndimage.generate_binary_structure(len(shape), rank))
    labels, n = L.instances(mask, connectivity=connectivity)
    assert n == n_ref and n > 3
    np.testing.assert_array_equal(labels, ref)


def test_instances_default_is_full_connectivity():
    mask = _blobs((20, 20, 16), seed=3, sigma=1.0)
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    labels, n = L.instances(mask)
    assert n == n_ref
    np.testing.assert_array_equal(labels, ref)
    assert L.default_connectivity(2) == 8 and L.default_connectivity(3) == 26


def test_diagonally_touching_lesions_3d():
    corner = np.zeros((8, 8, 8), bool)
    corner[1:4, 1:4, 1:4] = True
    corner[4:7, 4:7, 4:7] = True  # touches the first cube at one corner only
    assert [L.instances(corner, connectivity=c)[1] for c in (6, 18, 26)] == [2, 2, 1]
    edge = np.zeros((8, 8, 8), bool)
    edge[1:4, 1:4, 1:4] = True
    edge[4:7, 4:7, 1:4] = True  # shares an edge
    assert [L.instances(edge, connectivity=c)[1] for c in (6, 18, 26)] == [2, 1, 1]


def test_diagonally_touching_lesions_2d():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True
    m[2:4, 2:4] = True
    assert L.instances(m, connectivity=4)[1] == 2
    assert L.instances(m, connectivity=8)[1] == 1


def test_instances_min_size_relabels_in_order():
    m = np.zeros((10, 20), bool)
    m[0, 0] = True  # size 1
    m[2:4, 2:5] = True  # size 6
    m[6:8, 10:15] = True  # size 10
    m[0, 18] = True  # size 1
    labels, n = L.instances(m, min_size=5)
    assert n == 2
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 6 and (labels == 2).sum() == 10
    assert labels[0, 0] == 0 and labels[0, 18] == 0
    assert labels.dtype == np.int32


def test_instances_does_not_modify_input_and_validates():
    m = np.zeros((5, 5), np.uint8)
    m[1:3, 1:3] = 1
    before = m.copy()
    L.instances(m)
    np.testing.assert_array_equal(m, before)
    with pytest.raises(ValueError, match=r"'connectivity' must be one of \[4, 8\] for 2D masks; got 6"):
        L.instances(m, connectivity=6)
    with pytest.raises(ValueError, match=r"'connectivity' must be one of \[6, 18, 26\] for 3D masks; got 8"):
        L.instances(np.zeros((3, 3, 3)), connectivity=8)
    with pytest.raises(ValueError, match=r"'mask' must be a binary mask \(values 0/1\); got values such as 0.5"):
        L.instances(np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match=r"'mask' must be a 2D or 3D array; got shape \(4,\)"):
        L.instances(np.zeros(4))
    with pytest.raises(ValueError, match=r"'min_size' must be a non-negative integer; got -1"):
        L.instances(m, min_size=-1)


# --------------------------------------------------------------------------- matching
def _square_case(n_covered: int, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A 100-voxel GT lesion and a prediction covering exactly ``n_covered`` of its voxels."""
    if ndim == 2:
        truth = np.zeros((20, 20), bool)
        truth[2:12, 2:12] = True
    else:
        truth = np.zeros((12, 12, 8), bool)
        truth[2:7, 2:7, 2:6] = True
    assert truth.sum() == 100
    flat_truth = np.flatnonzero(truth.ravel())
    pred = np.zeros(truth.size, bool)
    # the last n_covered lesion voxels in raster order
    pred[flat_truth[-n_covered:]] = True
    pred = pred.reshape(truth.shape)
    return pred, truth


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("covered, detected", [(9, False), (10, True), (11, True)])
def test_overlap_threshold_9_vs_11_percent(ndim, covered, detected):
    pred, truth = _square_case(covered, ndim)
    m = L.match_instances(pred, truth, overlap_threshold=0.1)
    assert len(m.truth) == 1
    row = m.truth.iloc[0]
    assert row["size"] == 100 and row["overlap_voxels"] == covered
    assert row["overlap_fraction"] == pytest.approx(covered / 100)
    assert bool(row["detected"]) is detected
    assert row["outcome"] == ("TP" if detected else "FN")
    c = m.counts
    assert (c["tp_truth"], c["fn"]) == ((1, 0) if detected else (0, 1))
    # every predicted instance overlapping the lesion is TP under the "any" rule
    assert c["fp"] == 0 and c["tp_pred"] == c["n_pred"] >= 1


def test_one_prediction_spanning_two_lesions():
    truth = np.zeros((10, 20), bool)
    truth[2:6, 2:6] = True
    truth[2:6, 10:14] = True
    pred = np.zeros_like(truth)
    pred[3:5, 3:13] = True  # one bar across both lesions
    m = L.match_instances(pred, truth)
    assert m.counts == {"n_truth": 2, "n_pred": 1, "tp_truth": 2, "fn": 0, "tp_pred": 1, "fp": 0}
    assert m.pred.loc[0, "matched_truth_ids"] == (1, 2)
    assert list(m.truth["matched_pred_ids"]) == [(1,), (1,)]
    assert list(m.truth["overlap_voxels"]) == [6, 6]
    assert list(m.truth["overlap_fraction"]) == [6 / 16, 6 / 16]
    assert m.pred.loc[0, "overlap_voxels"] == 12 and m.pred.loc[0, "size"] == 20
    assert m.pred.loc[0, "overlap_fraction"] == pytest.approx(0.6)
    pd.testing.assert_frame_equal(
        m.pairs,
        pd.DataFrame({"truth_id": [1, 2], "pred_id": [1, 1], "overlap_voxels": [6, 6]}),
    )
    met = L.lesion_wise_metrics(pred, truth)
    assert (met["precision"], met["recall"], met["f1"]) == (1.0, 1.0, 1.0)


def test_union_vs_instance_coverage():
    truth = np.zeros((20, 20), bool)
    truth[0:10, 0:10] = True  # 100 voxels
    pred = np.zeros_like(truth)
    pred[0, 0:6] = True  # 6 voxels
    pred[5, 0:6] = True  # 6 voxels, not connected to the first fragment
    union = L.match_instances(pred, truth, truth_overlap="union")
    inst = L.match_instances(pred, truth, truth_overlap="instance")
    assert union.truth.loc[0, "overlap_fraction"] == pytest.approx(0.12)
    assert inst.truth.loc[0, "max_instance_fraction"] == pytest.approx(0.06)
    assert bool(union.truth.loc[0, "detected"]) and not bool(inst.truth.loc[0, "detected"])
    assert union.counts["n_pred"] == inst.counts["n_pred"] == 2


def test_pred_rule_fraction():
    truth = np.zeros((10, 30), bool)
    truth[0:5, 0:5] = True
    pred = np.zeros_like(truth)
    pred[4, 4:24] = True  # 20 voxels, 1 inside the lesion
    assert L.match_instances(pred, truth, pred_rule="any").counts["tp_pred"] == 1
    frac = L.match_instances(pred, truth, pred_rule="fraction", overlap_threshold=0.1)
    assert frac.counts["tp_pred"] == 0 and frac.counts["fp"] == 1
    assert frac.pred.loc[0, "overlap_fraction"] == pytest.approx(0.05)
    # the ground-truth side still uses its own coverage: 1/25 < 0.1
    assert frac.counts["fn"] == 1
    assert L.match_instances(pred, truth, pred_rule="fraction", overlap_threshold=0.05).counts["tp_pred"] == 1


def test_overlap_threshold_zero_means_any_overlap():
    truth = np.zeros((10, 10, 10), bool)
    truth[2:8, 2:8, 2:8] = True
    pred = np.zeros_like(truth)
    pred[7:9, 7:9, 7:9] = True  # one voxel inside the lesion
    m = L.match_instances(pred, truth, overlap_threshold=0.0)
    assert m.counts["tp_truth"] == 1
    far = np.zeros_like(truth)
    far[0, 0, 0] = True
    assert L.match_instances(far, truth, overlap_threshold=0.0).counts["fn"] == 1


def test_touching_lesions_change_lesion_counts():
    truth = np.zeros((8, 8, 8), bool)
    truth[1:4, 1:4, 1:4] = True
    truth[4:7, 4:7, 4:7] = True
    pred = np.zeros_like(truth)
    pred[1:4, 1:4, 1:4] = True
    m6 = L.match_instances(pred, truth, connectivity=6)
    m26 = L.match_instances(pred, truth, connectivity=26)
    assert (m6.counts["n_truth"], m6.counts["fn"]) == (2, 1)
    assert (m26.counts["n_truth"], m26.counts["fn"]) == (1, 0)
    assert m26.truth.loc[0, "overlap_fraction"] == pytest.approx(0.5)


def test_empty_cases():
    truth = np.zeros((10, 10), bool)
    truth[1:3, 1:3] = True
    truth[6:8, 6:8] = True
    empty = np.zeros_like(truth)
    miss = L.lesion_wise_metrics(empty, truth)
    assert (miss["n_truth"], miss["n_pred"], miss["fn"]) == (2, 0, 2)
    assert np.isnan(miss["precision"]) and miss["recall"] == 0.0 and miss["f1"] == 0.0 and miss["f1_counts"] == 0.0
    alarm = L.lesion_wise_metrics(truth, empty)
    assert (alarm["fp"], alarm["precision"], alarm["f1"]) == (2, 0.0, 0.0)
    assert np.isnan(alarm["recall"])
    both = L.lesion_wise_metrics(empty, empty)
    assert all(np.isnan(both[k]) for k in ("precision", "recall", "f1", "f1_counts"))
    both1 = L.lesion_wise_metrics(empty, empty, empty_score=1.0)
    assert (both1["precision"], both1["recall"], both1["f1"]) == (1.0, 1.0, 1.0)
    m = L.match_instances(empty, empty)
    assert list(m.truth.columns) == [
        "truth_id", "size", "overlap_voxels", "overlap_fraction", "max_instance_fraction",
        "matched_pred_ids", "detected", "outcome",
    ]
    assert len(m.truth) == 0 and len(m.pred) == 0 and len(m.pairs) == 0


def test_labelled_inputs_are_relabelled():
    truth = np.zeros((10, 10), np.int16)
    truth[0:3, 0:3] = 7
    truth[0:3, 4:7] = 3  # touching nothing, but a different id; order by id value
    pred = np.zeros((10, 10), np.int32)
    pred[0:3, 0:7] = 5  # one instance over both
    m = L.match_instances(pred, truth, labelled=True)
    assert m.counts == {"n_truth": 2, "n_pred": 1, "tp_truth": 2, "fn": 0, "tp_pred": 1, "fp": 0}
    assert set(np.unique(m.truth_labels)) == {0, 1, 2}
    assert (m.truth_labels == 1).sum() == 9  # id 3 -> 1
    assert (m.pred_labels == 1).sum() == 21
    with pytest.raises(TypeError, match="'pred' must be an integer label map when labelled=True"):
        L.match_instances(pred.astype(float), truth, labelled=True)


def test_match_validation_messages():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=r"'pred' and 'truth' must have the same shape; got \(4, 4\) and \(4, 5\)"):
        L.match_instances(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"'overlap_threshold' must be in \[0, 1\]; got 1.5"):
        L.match_instances(a, a, overlap_threshold=1.5)
    with pytest.raises(ValueError, match=r"'truth_overlap' must be one of \['union', 'instance'\]; got 'max'"):
        L.match_instances(a, a, truth_overlap="max")
    with pytest.raises(ValueError, match=r"'pred_rule' must be one of \['any', 'fraction'\]; got 'x'"):
        L.match_instances(a, a, pred_rule="x")


def test_seed_004_counts_reproduce_f1_and_ppv():
    m = L.lesion_metrics_from_counts(tp_pred=3050, fp=1818, tp_truth=3050, fn=789)
    assert round(m["f1_counts"], 4) == 0.7006
    assert round(m["precision"], 4) == 0.6265
    refined = L.lesion_metrics_from_counts(tp_pred=2732, fp=763, tp_truth=2732, fn=1107)
    assert round(refined["precision"], 4) == 0.7817
    assert round(refined["f1_counts"], 3) == 0.745


def test_lesion_metrics_random_against_bruteforce():
    rng = np.random.default_rng(5)
    truth = _blobs((24, 24, 12), seed=11, sigma=1.2)
    pred = np.roll(truth, 1, axis=0) & (rng.random(truth.shape) > 0.2) | _blobs((24, 24, 12), seed=12, sigma=1.2)
    struct = np.ones((3, 3, 3))
    tl, nt = ndimage.label(truth, struct)
    pl, npred = ndimage.label(pred, struct)
    assert nt > 3 and npred > 3
    det = sum(((pred & (tl == i)).sum() / (tl == i).sum() >= 0.1) for i in range(1, nt + 1))
    tp_pred = sum(bool((truth & (pl == j)).any()) for j in range(1, npred + 1))
    m = L.lesion_wise_metrics(pred, truth)
    assert (m["n_truth"], m["n_pred"]) == (nt, npred)
    assert m["tp_truth"] == det and m["fn"] == nt - det
    assert m["tp_pred"] == tp_pred and m["fp"] == npred - tp_pred
    p, r = tp_pred / npred, det / nt
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))


# --------------------------------------------------------------------------- slice level
def _hand_volume() -> tuple[np.ndarray, np.ndarray]:
    """(16, 16, 10) volume, slices along axis 2.

    z=1: GT 100 vox, pred covers 50   -> TP
    z=2: GT 100 vox, pred covers 5    -> FN (5 % < 10 %)
    z=3: GT lesion, pred elsewhere    -> FN
    z=4: GT lesion, no pred           -> FN
    z=5: no GT, one predicted voxel   -> FP
    z=0, 6..9: empty                  -> TN
    """
    truth = np.zeros((16, 16, 10), bool)
    pred = np.zeros_like(truth)
    for z in (1, 2, 3, 4):
        truth[2:12, 2:12, z] = True
    pred[2:7, 2:12, 1] = True
    pred[2, 2:7, 2] = True
    pred[13:15, 13:15, 3] = True
    pred[0, 0, 5] = True
    return pred, truth


def test_slice_level_hand_volume_all_negatives():
    pred, truth = _hand_volume()
    res = SC.slice_level_classification(pred, truth, axis=2, negative_ratio=None)
    t = res.table
    assert list(t["slice"]) == list(range(10))
    assert list(t["outcome"]) == ["TN", "TP", "FN", "FN", "FN", "FP", "TN", "TN", "TN", "TN"]
    assert list(t["truth_positive"]) == [False, True, True, True, True, False, False, False, False, False]
    assert t.loc[1, "best_overlap"] == pytest.approx(0.5) and t.loc[2, "best_overlap"] == pytest.approx(0.05)
    assert list(t["n_pred_voxels"][:6]) == [0, 50, 5, 4, 0, 1]
    assert res.counts == {"tp": 1, "fp": 1, "tn": 5, "fn": 3}
    assert res.metrics() == classification_metrics(1, 1, 5, 3)
    # a lower threshold turns z=2 into a TP
    assert res.counts_at(0.05) == {"tp": 2, "fp": 1, "tn": 5, "fn": 2}
    assert res.outcomes_at(0.6).tolist()[1] == "FN"


def test_slice_level_axis_and_connectivity_inside_slice():
    pred, truth = _hand_volume()
    moved = SC.slice_level_classification(np.moveaxis(pred, 2, 0), np.moveaxis(truth, 2, 0), axis=0,
                                         negative_ratio=None)
    ref = SC.slice_level_classification(pred, truth, axis=-1, negative_ratio=None)
    pd.testing.assert_frame_equal(moved.table, ref.table)
    # GT lesions on consecutive slices are separate 2D lesions, one per slice
    assert list(ref.table["n_truth_lesions"]) == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_negative_subsampling_balanced_and_reproducible():
    pred, truth = _hand_volume()
    res = SC.slice_level_classification(pred, truth, negative_ratio=1.0, seed=3)
    t = res.table
    assert t["sampled"].sum() == 8
    assert t.loc[t["truth_positive"], "sampled"].all()
    neg_idx = np.flatnonzero(~t["truth_positive"].to_numpy())
    expected = np.sort(np.random.default_rng(3).choice(neg_idx, size=4, replace=False))
    np.testing.assert_array_equal(np.flatnonzero((~t["truth_positive"] & t["sampled"]).to_numpy()), expected)
    again = SC.slice_level_classification(pred, truth, negative_ratio=1.0, seed=3)
    pd.testing.assert_frame_equal(t, again.table)
    draws = {
        tuple(SC.slice_level_classification(pred, truth, seed=s).table["sampled"]) for s in range(6)
    }
    assert len(draws) > 1  # the seed matters
    c = res.counts
    assert c["tp"] + c["fn"] == 4 and c["tn"] + c["fp"] == 4
    half = SC.slice_level_classification(pred, truth, negative_ratio=0.5, seed=0)
    assert (half.table["sampled"] & ~half.table["truth_positive"]).sum() == 2


def test_draw_negatives_rule():
    eligible = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
    idx = np.flatnonzero(eligible)
    expected = np.sort(np.random.default_rng(3).choice(idx, size=4, replace=False))
    np.testing.assert_array_equal(SC.draw_negatives(eligible, 4, 1.0, seed=3), expected)
    assert len(SC.draw_negatives(eligible, 2, 1.5, seed=0)) == 3
    np.testing.assert_array_equal(SC.draw_negatives(eligible, 10, 1.0), idx)  # fewer than wanted: all
    assert SC.draw_negatives(eligible, 0).size == 0
    with pytest.raises(ValueError, match=r"'ratio' must be a non-negative number; got -1"):
        SC.draw_negatives(eligible, 3, -1)


def test_classification_samples_the_draw_negatives_slices():
    """The one negative-sampling rule: slice classification draws exactly draw_negatives' slices."""
    rng = np.random.default_rng(5)
    truth = np.zeros((8, 8, 30), bool)
    truth[2:4, 2:4, rng.choice(30, 7, replace=False)] = True
    pred = rng.random(truth.shape) > 0.97
    res = SC.slice_level_classification(pred, truth, negative_ratio=1.0, seed=11)
    pos = truth.reshape(-1, 30).any(axis=0)
    expected = SC.draw_negatives(~pos, int(pos.sum()), 1.0, seed=11)
    sampled_neg = np.flatnonzero(res.table["sampled"].to_numpy() & ~pos)
    np.testing.assert_array_equal(sampled_neg, expected)


def test_negative_subsampling_independent_of_prediction():
    pred, truth = _hand_volume()
    a = SC.slice_level_classification(pred, truth, seed=1)
    b = SC.slice_level_classification(np.zeros_like(pred), truth, seed=1)
    assert a.table["sampled"].tolist() == b.table["sampled"].tolist()


def test_too_few_negatives_warns_and_uses_all(caplog):
    pred, truth = _hand_volume()
    with caplog.at_level(logging.WARNING, logger="msutils.segmentation.lesions"):
        res = SC.slice_level_classification(pred, truth, negative_ratio=3.0)
    assert "only 6 negative slices available for 12 requested" in caplog.text
    assert res.table["sampled"].all()


def test_brain_mask_restricts_negative_pool():
    pred, truth = _hand_volume()
    brain = np.zeros(truth.shape, bool)
    brain[:, :, 1:8] = True  # slices 0, 8, 9 outside the brain
    res = SC.slice_level_classification(pred, truth, brain_mask=brain, negative_ratio=None)
    assert list(res.table["eligible"]) == [False] + [True] * 7 + [False, False]
    assert list(np.flatnonzero(res.table["sampled"])) == [1, 2, 3, 4, 5, 6, 7]
    assert res.counts == {"tp": 1, "fp": 1, "tn": 2, "fn": 3}
    with pytest.raises(ValueError, match=r"'brain_mask' must have the shape of 'truth_vol' \(16, 16, 10\)"):
        SC.slice_level_classification(pred, truth, brain_mask=brain[..., :5])


def test_slice_level_validation():
    pred, truth = _hand_volume()
    with pytest.raises(ValueError, match=r"'pred_vol' must be a 3D array; got shape \(16, 16\)"):
        SC.slice_level_classification(pred[..., 0], truth)
    with pytest.raises(ValueError, match=r"'axis' must be one of \[0, 1, 2, -1, -2, -3\]; got 3"):
        SC.slice_level_classification(pred, truth, axis=3)
    with pytest.raises(ValueError, match=r"'negative_ratio' must be a non-negative number or None; got -1"):
        SC.slice_level_classification(pred, truth, negative_ratio=-1)
    with pytest.raises(ValueError, match=r"'connectivity' must be one of \[4, 8\] for 2D masks; got 26"):
        SC.slice_level_classification(pred, truth, connectivity=26)


def test_slice_stack_with_ids_and_shapes():
    a_t = np.zeros((8, 8), bool)
    a_t[1:5, 1:5] = True
    a_p = a_t.copy()
    b_t = np.zeros((6, 10), bool)
    b_p = np.zeros((6, 10), bool)
    b_p[0, 0] = True
    c_t = np.zeros((6, 10), bool)
    res = SC.slice_stack_classification(
        [a_p, b_p, c_t], [a_t, b_t, c_t], ids=[("s1", 3), ("s1", 4), ("s2", 0)], negative_ratio=None
    )
    assert list(res.table["slice"]) == [("s1", 3), ("s1", 4), ("s2", 0)]
    assert list(res.table["outcome"]) == ["TP", "FP", "TN"]
    with pytest.raises(ValueError, match=r"'preds\[1\]' and 'truths\[1\]' must have the same shape"):
        SC.slice_stack_classification([a_p, b_p[:, :5]], [a_t, b_t])
    with pytest.raises(ValueError, match=r"'ids' must have one entry per slice \(3\); got 2"):
        SC.slice_stack_classification([a_p, b_p, c_t], [a_t, b_t, c_t], ids=[1, 2])


def test_slice_min_size_filters_tiny_predictions():
    t = np.zeros((3, 8, 8), bool)
    p = np.zeros_like(t)
    p[0, 0, 0] = True  # one-voxel false alarm on an empty slice
    res = SC.slice_stack_classification(p, t, negative_ratio=None, min_size=2)
    assert res.table["outcome"].tolist() == ["TN", "TN", "TN"]
    res1 = SC.slice_stack_classification(p, t, negative_ratio=None)
    assert res1.table["outcome"].tolist() == ["FP", "TN", "TN"]


# --------------------------------------------------------------------------- seed 003 TP rule on hand-made slices
def _tp_rule_slices() -> tuple[np.ndarray, np.ndarray]:
    """Five 20 x 20 slices, each with a hand-made prediction; coverage in the comments (of a 100-pixel lesion).

    0: three disconnected 2 x 2 fragments inside the lesion: 12 % together, 4 % each
    1: one 3 x 4 blob inside the lesion: 12 %
    2: one blob with exactly 10 pixels inside the lesion and 30 outside: 10 % (the rule is >=)
    3: the fragments of slice 0 plus, on a second 20-pixel lesion, one 2-pixel blob: 10 % of that lesion
    4: one 3 x 3 blob inside the lesion: 9 %
    """
    truth = np.zeros((5, 20, 20), bool)
    truth[:, 0:10, 0:10] = True
    pred = np.zeros_like(truth)
    for r, c in ((0, 0), (4, 4), (7, 0)):  # 2 x 2 fragments two pixels apart: not 8-connected
        pred[0, r:r + 2, c:c + 2] = True
        pred[3, r:r + 2, c:c + 2] = True
    pred[1, 2:5, 2:6] = True
    pred[2, 9, 0:10] = True  # 10 pixels in the lesion's last row
    pred[2, 10:13, 0:10] = True  # 30 pixels outside, connected to them: one predicted lesion of 40 pixels
    truth[3, 15:19, 12:17] = True  # second lesion of 20 pixels
    pred[3, 15, 12:14] = True
    pred[4, 2:5, 2:5] = True
    return pred, truth


def test_seed_tp_rule_is_the_default_and_differs_from_the_lenient_rule():
    pred, truth = _tp_rule_slices()
    seed = SC.slice_stack_classification(pred, truth, negative_ratio=None)
    lenient = SC.slice_stack_classification(pred, truth, negative_ratio=None, truth_overlap="union")
    assert seed.params["truth_overlap"] == "instance" and lenient.params["truth_overlap"] == "union"
    # best coverage of a ground-truth lesion by ONE predicted lesion vs by the whole predicted mask
    np.testing.assert_allclose(seed.table["best_overlap"], [0.04, 0.12, 0.10, 0.10, 0.09])
    np.testing.assert_allclose(lenient.table["best_overlap"], [0.12, 0.12, 0.10, 0.12, 0.09])
    assert seed.table["outcome"].tolist() == ["FN", "TP", "TP", "TP", "FN"]
    assert lenient.table["outcome"].tolist() == ["TP", "TP", "TP", "TP", "FN"]
    assert seed.counts == {"tp": 3, "fp": 0, "tn": 0, "fn": 2}
    assert lenient.counts == {"tp": 4, "fp": 0, "tn": 0, "fn": 1}
    # the same slices through the volume entry point (slices along axis 0)
    vol = SC.slice_level_classification(pred, truth, axis=0, negative_ratio=None)
    assert vol.table["outcome"].tolist() == seed.table["outcome"].tolist()
    # re-scored at other thresholds: at 5 % both rules agree on slices 1-4, slice 0 stays FN for the seed rule
    assert seed.counts_at(0.05) == {"tp": 4, "fp": 0, "tn": 0, "fn": 1}
    assert lenient.counts_at(0.13) == {"tp": 0, "fp": 0, "tn": 0, "fn": 5}


def test_seed_tp_rule_matches_a_loop_over_predicted_lesions():
    """The instance rule against a straightforward loop: label both masks, test every (truth, pred) pair."""
    rng = np.random.default_rng(7)
    truth = np.stack([_blobs((24, 24), seed=s, sigma=2.0) for s in range(12)])
    pred = truth & (rng.random(truth.shape) > 0.85)  # speckled hits: many small fragments
    pred |= rng.random(truth.shape) > 0.995
    res = SC.slice_stack_classification(pred, truth, negative_ratio=None)
    for k in range(len(truth)):
        t_lab, n_t = ndimage.label(truth[k], structure=np.ones((3, 3)))
        p_lab, n_p = ndimage.label(pred[k], structure=np.ones((3, 3)))
        best = 0.0
        for i in range(1, n_t + 1):
            for j in range(1, n_p + 1):
                best = max(best, float(((t_lab == i) & (p_lab == j)).sum() / (t_lab == i).sum()))
        assert res.table.loc[k, "best_overlap"] == pytest.approx(best), k
        expected = ("TP" if best >= 0.1 else "FN") if n_t else ("FP" if n_p else "TN")
        assert res.table.loc[k, "outcome"] == expected, k


@pytest.mark.parametrize("connectivity", [6, 26])
def test_largest_component_matches_a_size_loop(connectivity):
    rng = np.random.default_rng(4)
    mask = rng.random((14, 12, 10)) > 0.88
    labels, n = L.instances(mask, connectivity=connectivity)
    sizes = [(labels == k).sum() for k in range(1, n + 1)]
    expected = labels == 1 + sizes.index(max(sizes))  # first of the largest, in raster order
    np.testing.assert_array_equal(L.largest_component(mask, connectivity=connectivity), expected)
    assert n > 2 and expected.sum() < mask.sum()
    assert not L.largest_component(np.zeros((3, 3, 3), bool)).any()
