"""Tests of msutils.studies.edss_regression: disconnection proxy, re-segmentation, selection / fit (leakage
canary on in-memory data), ground-truth mapping, tables, splits and the shared-stage lock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from msutils.studies import edss_regression as edss
from msutils.data.leakage import FitLog, assert_no_leak
from msutils.data.splits import internal_external_cv
from msutils.studies import paper_numbers
from msutils.features.reliability import perturbed_mask

ROIS = {"thalamus_L": [1], "caudate_L": [3], "gm_001": [101], "gm_030": [130]}


# ----------------------------------------------------------------------------- disconnection
def _line(values, lesion_at=()):
    lab = np.asarray(values, dtype=np.int16).reshape(1, 1, -1)
    les = np.zeros(lab.shape, dtype=np.uint8)
    for i in lesion_at:
        les[0, 0, i] = 1
    return lab, les


def test_disconnection_proxy_counts_lesioned_territory():
    # GM A | 10 WM voxels | GM B; voxels 1-5 are nearest to A, 6-10 to B
    lab, les = _line([101] + [9] * 10 + [102], lesion_at=(2, 3))
    rois = {"A": [101], "B": [102]}
    assert edss.disconnection_proxy(lab, les, (1, 1, 1), rois, radius_mm=10) == {"A": 0.4, "B": 0.0}
    # radius 2.5 mm: A's territory = voxels 1, 2 (one lesioned); B's = voxels 9, 10
    assert edss.disconnection_proxy(lab, les, (1, 1, 1), rois, radius_mm=2.5) == {"A": 0.5, "B": 0.0}
    # 2 mm voxels along the line: only voxel 1 (2 mm) is within 2.5 mm of A
    assert edss.disconnection_proxy(lab, les, (1, 1, 2), rois, radius_mm=2.5) == {"A": 0.0, "B": 0.0}
    # lesion voxels count as WM even when the label map calls them something else
    lab2 = lab.copy()
    lab2[0, 0, 2] = 0
    assert edss.disconnection_proxy(lab2, les, (1, 1, 1), rois, radius_mm=10)["A"] == 0.4


def test_disconnection_proxy_edge_cases():
    lab, les = _line([9, 9, 9], lesion_at=(1,))
    assert edss.disconnection_proxy(lab, les, (1, 1, 1), {"A": [101]}) == {"A": 0.0}
    with pytest.raises(ValueError, match="'lesion' shape"):
        edss.disconnection_proxy(lab, les[..., :2], (1, 1, 1), {"A": [101]})
    with pytest.raises(ValueError, match="'radius_mm' must be > 0"):
        edss.disconnection_proxy(lab, les, (1, 1, 1), {"A": [101]}, radius_mm=0)
    with pytest.raises(ValueError, match="'spacing' has 2 values"):
        edss.disconnection_proxy(lab, les, (1, 1), {"A": [101]})


# ----------------------------------------------------------------------------- re-segmentation
def _ball(shape=(30, 30, 30), r=9.0):
    g = np.indices(shape) - (np.asarray(shape) // 2).reshape(3, 1, 1, 1)
    return (g**2).sum(0) <= r * r


def test_resegmented_mask_full_step_at_1mm():
    m = _ball()
    for mode in ("erode", "dilate"):
        np.testing.assert_array_equal(edss.resegmented_mask(m, 0, (1, 1, 1), mode=mode),
                                      perturbed_mask(m, mode=mode))


def test_resegmented_mask_partial_step_at_2mm():
    m = _ball()
    full = perturbed_mask(m, mode="dilate")
    out = edss.resegmented_mask(m, np.random.default_rng(3), (2, 2, 2), shift_mm=1.0, mode="dilate")
    assert (out >= m).all() and (out <= full).all()
    frac = (out & ~m).sum() / (full & ~m).sum()
    assert 0.45 < frac < 0.55  # p = 1 mm / 2 mm of the ~1,500 boundary voxels
    again = edss.resegmented_mask(m, np.random.default_rng(3), (2, 2, 2), mode="dilate")
    np.testing.assert_array_equal(out, again)
    with pytest.raises(ValueError, match="'shift_mm' must be > 0"):
        edss.resegmented_mask(m, 0, (1, 1, 1), shift_mm=0)


def test_resegmented_mask_patches_move_both_ways_by_one_voxel():
    m = _ball((40, 40, 40), 11.87)  # about 7 ml at 1 mm
    before = m.copy()
    outer = perturbed_mask(m, mode="dilate") & ~m
    inner = m & ~perturbed_mask(m, mode="erode")
    dice, vol = [], []
    for seed in range(20):
        out = edss.resegmented_mask(m, np.random.default_rng(seed), (1, 1, 1))
        gained, lost = out & ~m, m & ~out
        assert not (gained & ~outer).any() and not (lost & ~inner).any()  # one-voxel shells only
        # at 1 mm every shell voxel moves, in the direction of its patch
        assert 0.3 < gained.sum() / outer.sum() < 0.7 and 0.3 < lost.sum() / inner.sum() < 0.7
        dice.append(2 * (out & m).sum() / (out.sum() + m.sum()))
        vol.append(abs(out.sum() / m.sum() - 1.0))
    np.testing.assert_array_equal(m, before)
    # as close to the original as a whole-ROI step, with a tenth of its volume change
    step = perturbed_mask(m, mode="dilate")
    assert abs(np.mean(dice) - 2 * m.sum() / (step.sum() + m.sum())) < 0.03
    assert np.mean(vol) < 0.04 < 0.15 < step.sum() / m.sum() - 1.0
    np.testing.assert_array_equal(edss.resegmented_mask(m, np.random.default_rng(5), (1, 1, 1)),
                                  edss.resegmented_mask(m, np.random.default_rng(5), (1, 1, 1)))


def test_resegmented_mask_patch_direction_follows_the_smoothed_field():
    """Reference: the same draws, the field smoothed and the shells chosen by a plain loop."""
    from scipy import ndimage

    m = _ball((16, 16, 16), 5.0)
    got = edss.resegmented_mask(m, np.random.default_rng(2), (2.0, 2.0, 2.0), patch_mm=3.0)
    rng = np.random.default_rng(2)
    field = ndimage.gaussian_filter(rng.standard_normal(m.shape), 1.5, mode="wrap")
    keep = rng.random(m.shape) < 0.5
    want = m.copy()
    for idx in np.ndindex(m.shape):
        nb = [tuple(np.add(idx, d)) for d in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]]
        inside = [all(0 <= k < 16 for k in j) and m[j] for j in nb]
        if not keep[idx]:
            continue
        if m[idx] and not all(inside) and field[idx] < 0:
            want[idx] = False
        elif not m[idx] and any(inside) and field[idx] >= 0:
            want[idx] = True
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="'patch_mm' must be > 0"):
        edss.resegmented_mask(m, 0, (1, 1, 1), patch_mm=0)
    with pytest.raises(ValueError, match="'mode' must be one of"):
        edss.resegmented_mask(m, 0, (1, 1, 1), mode="shrink")


# ----------------------------------------------------------------------------- groups, drivers
@pytest.mark.parametrize("name, group, driver", [
    ("age", "clinical", "age"),
    ("course_SP", "clinical", "sp_course"),
    ("sex_M", "clinical", None),
    ("disease_duration", "clinical", None),
    ("lesion_volume_log", "lesion", "lesion_load"),
    ("disconnection__gm_004", "disconnection", "lesion_load"),
    ("volume__thalamus_R", "volume", "thalamus_volume"),
    ("volume__caudate_L", "volume", None),
    ("volume__wbv", "volume", None),
    ("thalamus_L__glcm__Contrast", "radiomics", "texture_amplitude"),
    ("pallidum_R__firstorder__Median", "radiomics", "texture_amplitude"),
    ("gm_012__firstorder__Median", "radiomics", None),
    ("nawm__glszm__ZoneEntropy", "radiomics", None),
])
def test_feature_group_and_driver(name, group, driver):
    assert edss.feature_group(name) == group
    assert edss.driver_of_feature(name) == driver


def test_feature_group_rejects_unknown():
    with pytest.raises(ValueError, match="cannot tell the group of feature 'weird'"):
        edss.feature_group("weird")


def test_drivers_recovered_and_deep_gm_list():
    sel = ["age", "gm_001__glcm__Idm", "volume__thalamus_L", "disconnection__gm_001", "lesion_volume_log"]
    got = edss.drivers_recovered(sel, ["lesion_load", "thalamus_volume", "texture_amplitude", "age", "sp_course"])
    assert got == {"lesion_load": ["disconnection__gm_001", "lesion_volume_log"],
                   "thalamus_volume": ["volume__thalamus_L"], "texture_amplitude": [], "age": ["age"],
                   "sp_course": []}
    # an explicit deep-GM list overrides the name prefixes
    assert edss.driver_of_feature("gm_001__glcm__Idm", deep_gm_rois=["gm_001"]) == "texture_amplitude"


def test_driver_values_and_correlations():
    subjects = pd.DataFrame({"gt_lesion_volume_design_ml": [4.9, 0.9, 19.9],
                             "gt_thalamus_volume_factor": [0.8, 0.9, 1.0],
                             "gt_texture_amplitude": [0.05, 0.07, 0.09], "age": [30.0, 40.0, 55.0],
                             "course": ["RR", "SP", "RR"]}, index=["s1", "s2", "s3"])
    d = edss.driver_values(subjects)
    np.testing.assert_allclose(d["lesion_load"], np.log([5.0, 1.0, 20.0]))
    assert d["sp_course"].tolist() == [0.0, 1.0, 0.0]
    assert list(edss.driver_values(subjects, {"drivers": ["age", "sp_course"]}).columns) == ["age", "sp_course"]
    X = pd.DataFrame({"f": 2 * d["age"] + 1, "g": -d["texture_amplitude"]})
    r = edss.driver_correlations(X, d)
    assert r.loc["f", "age"] == pytest.approx(1.0)
    assert r.loc["g", "texture_amplitude"] == pytest.approx(-1.0)
    assert r.loc["f", "lesion_load"] == pytest.approx(sps.pearsonr(X["f"], d["lesion_load"])[0])
    with pytest.raises(ValueError, match="no ground truth"):
        edss.driver_values(subjects.drop(columns="gt_texture_amplitude"))


# ----------------------------------------------------------------------------- tables
def test_table2_rows():
    t = edss.table2(["thalamus_L__glcm__Correlation", "gm_030__gldm__SmallDependenceLowGrayLevelEmphasis",
                     "age", "volume__thalamus_R", "nawm__ngtdm__Contrast"],
                    centroids={"gm_030": (31.6, 20.2, 40.0)}, n_parcels=48)
    assert t["anatomic label"].tolist() == [
        "Left thalamus", "Cortical GM parcel 30 (right hemisphere), centroid (32, 20, 40) mm", "-",
        "Right thalamus", "Normal-appearing white matter"]
    assert t["feature class"].tolist() == ["Gray level co-occurrence matrix", "Gray level dependence matrix",
                                           "Clinical", "Volume", "Neighbouring gray tone difference matrix"]
    assert t.loc[0, "feature characteristics"].startswith("Linear dependency of gray level values")
    assert t.loc[4, "feature characteristics"].startswith("Spatial intensity change")  # NGTDM, not GLCM contrast
    assert edss.roi_description("gm_010", n_parcels=48) == "Cortical GM parcel 10 (left hemisphere)"


def test_table3_layout_and_paper_rows():
    scores = {"internal": {m: {"r": 0.5 + i / 10, "pearson_r2": (0.5 + i / 10) ** 2, "r2_score": -1.0,
                               "mae": 1.0 - i / 10}
                           for i, m in enumerate(edss.MODEL_ORDER)}}
    t = edss.table3(scores, {"internal": 0.0004})
    assert t.index.tolist() == ["Internal test"]
    assert t.loc["Internal test", ("Gaussian process", "r")] == 0.6
    assert t.loc["Internal test", ("Random forest", "R² (= r², paper)")] == pytest.approx(0.64)  # not r2_score
    assert t.loc["Internal test", ("Random forest", "R² (coefficient of determination)")] == -1.0
    assert t.loc["Internal test", ("", "P value")] == "<0.001"
    paper = edss.table3(paper_numbers.load("001")["table3"], {"internal": 0.001})
    assert paper.loc["External test", ("", "P value")] == "-"
    assert paper.loc["Training (cross-validation)", ("Support-vector machine", "MAE")] == 0.710
    assert np.isnan(paper.loc["Internal test", ("Ridge regression", "R² (coefficient of determination)")])
    rows = edss.paper_table3_long()
    assert len(rows) == 12
    assert rows["External test / Gaussian process"] == {"r": 0.799, "R² (= r², paper)": 0.638, "MAE": 1.247}
    assert edss.paper_table3_long(scores)["Internal test / Ridge regression"] == {
        "r": 0.5, "R² (= r², paper)": 0.25, "R² (coefficient of determination)": -1.0, "MAE": 1.0}


def test_abs_errors_long_format():
    preds = pd.DataFrame({"ridge": [1.0, 3.0], "svr": [2.5, 2.0]}, index=["a", "b"])
    out = edss.abs_errors(pd.Series({"b": 2.5, "a": 2.0}), preds)
    assert out.to_dict("list") == {"subject": ["a", "b", "a", "b"], "model": ["ridge", "ridge", "svr", "svr"],
                                   "abs_error": [1.0, 0.5, 0.5, 0.5]}
    with pytest.raises(ValueError, match="lacks subjects"):
        edss.abs_errors(pd.Series({"a": 1.0}), preds)


def test_adjusted_site_pvalue_matches_ols_by_hand():
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"center": np.repeat(["site1", "site2"], n // 2), "age": rng.normal(40, 10, n),
                       "sex": rng.choice(["F", "M"], n), "tiv_ml": rng.normal(1500, 100, n)})
    df["v"] = 0.5 * (df["center"] == "site2") + 0.02 * df["age"] + 0.001 * df["tiv_ml"] + rng.normal(0, 1, n)
    X = np.column_stack([np.ones(n), (df["center"] == "site2"), df["age"], df["sex"] == "M", df["tiv_ml"]]).astype(float)
    beta, *_ = np.linalg.lstsq(X, df["v"].to_numpy(), rcond=None)
    resid = df["v"].to_numpy() - X @ beta
    sigma2 = resid @ resid / (n - X.shape[1])
    se = np.sqrt(sigma2 * np.linalg.inv(X.T @ X)[1, 1])
    p = 2 * sps.t.sf(abs(beta[1] / se), n - X.shape[1])
    assert edss.adjusted_site_pvalue(df, "v") == pytest.approx(p, rel=1e-9)
    with pytest.raises(ValueError, match="exactly 2 levels"):
        edss.adjusted_site_pvalue(df.assign(center=np.repeat(["a", "b", "c", "d"], n // 4)), "v")


def test_label_centroids():
    arr = np.zeros((5, 5, 5), dtype=np.int16)
    arr[1, 2, 3] = 7
    arr[3:5, 0, 0] = 8
    img = nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]) + np.c_[np.zeros((4, 3)), [-4, -4, -4, 0]])
    got = edss.label_centroids(img, {7: "a", 8: "b", 9: "absent"})
    assert got == {"a": (-2.0, 0.0, 2.0), "b": (3.0, -4.0, -4.0)}


# ----------------------------------------------------------------------------- cohort helpers
def _fake_cohort(table: pd.DataFrame, labels=None):
    return SimpleNamespace(table=table, manifest_path=Path("/fake/manifest.csv"),
                           labels=labels or {1: "thalamus_L", 2: "thalamus_R", 9: "whole_wm", 101: "gm_001",
                                             102: "gm_002", 103: "gm_003"})


def test_subject_table_first_session_ms_complete():
    rows = [("s2", "ses-01", "MS", "RR", 30.0, 2.0, 5.0), ("s1", "ses-02", "MS", "SP", 50.0, 6.0, 20.0),
            ("s1", "ses-01", "MS", "SP", 50.0, 6.0, 20.0), ("h1", "ses-01", "HC", "NA", 30.0, np.nan, np.nan),
            ("s3", "ses-01", "MS", "RR", 40.0, np.nan, 3.0)]
    t = pd.DataFrame(rows, columns=["subject_id", "session", "group", "course", "age", "edss", "disease_duration"])
    t["center"], t["sex"] = "site1", "F"
    t.index = t["subject_id"] + "_" + t["session"]
    out = edss.subject_table(_fake_cohort(t))
    assert out.index.tolist() == ["s1", "s2"]
    assert out["scan_id"].tolist() == ["s1_ses-01", "s2_ses-01"]


def test_study_rois():
    c = _fake_cohort(pd.DataFrame())
    assert edss.study_rois(c) == {"thalamus_L": [1], "thalamus_R": [2], "gm_001": [101], "gm_002": [102],
                                  "gm_003": [103]}
    assert list(edss.study_rois(c, 1)) == ["thalamus_L", "thalamus_R", "gm_001"]


def test_study_split_and_cv_folds():
    subjects = pd.DataFrame({"center": ["site1"] * 50 + ["site2"] * 12},
                            index=pd.Index([f"s{i:02d}" for i in range(62)], name="subject_id"))
    split = internal_external_cv(subjects.reset_index(), test_size=0.2, n_folds=5, seed=1)
    assert split["internal_center"] == "site1"
    assert split["external"] == [f"s{i:02d}" for i in range(50, 62)]
    assert len(split["test"]) == 10 and len(split["train"]) == 40
    assert not set(split["train"]) & set(split["test"])
    folds = edss.cv_folds(split, split["train"])
    assert len(folds) == 5
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(40))
    for (tr, te), inner in zip(folds, split["inner"]):
        assert [split["train"][i] for i in te] == inner["test"]
        assert not set(tr) & set(te)
    with pytest.raises(ValueError, match="absent from the training rows"):
        edss.cv_folds(split, split["train"][:-1])
    few = internal_external_cv(subjects.reset_index().iloc[:6], test_size=0.2, n_folds=5, seed=1)
    assert few["fold_unit"] == "slab"
    with pytest.raises(ValueError, match=r"has no subject-level folds \('inner'; fold_unit 'slab'\)"):
        edss.cv_folds(few, few["train"])


def test_study_config_validation():
    with pytest.raises(ValueError, match=r"'icc_mode' must be one of \['perturbed', 'rescan'\]; got 'x'"):
        edss.StudyConfig(icc_mode="x")
    with pytest.raises(ValueError, match="'icc_subjects' must be an integer >= 3; got 2"):
        edss.StudyConfig(icc_subjects=2)
    with pytest.raises(ValueError, match="'icc_threshold' must be in"):
        edss.StudyConfig(icc_threshold=1.5)
    with pytest.raises(ValueError, match=r"'icc_boundary' must be one of \['patch', 'random'\]; got 'whole'"):
        edss.StudyConfig(icc_boundary="whole")


# ----------------------------------------------------------------------------- in-memory study
def _study(n=80, seed=0):
    """A StudyData without images: EDSS driven by age, lesion volume and thalamic texture."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"sub-{i:03d}" for i in range(n)], name="subject_id")
    center = np.where(np.arange(n) < 60, "site1", "site2")
    age = rng.normal(40, 10, n)
    lesion = np.exp(rng.normal(1.5, 0.8, n))
    texture = rng.normal(0, 1, n)
    course = np.where(rng.random(n) < 0.2, "SP", "RR")
    latent = 0.09 * age + 0.8 * np.log1p(lesion) + 0.9 * texture + 1.0 * (course == "SP")
    edss_ = np.clip(np.round(2 * (latent - latent.mean() + 3 + rng.normal(0, 0.4, n))) / 2, 0, 9.5)
    subjects = pd.DataFrame({"scan_id": [f"{s}_ses-01" for s in ids], "center": center, "age": age,
                             "sex": rng.choice(["F", "M"], n), "course": course,
                             "disease_duration": rng.gamma(2, 4, n), "edss": edss_}, index=ids)
    rad = pd.DataFrame({"thalamus_L__firstorder__Variance": 50 + 10 * texture + rng.normal(0, 1, n),
                        "thalamus_L__glcm__Contrast": rng.normal(0, 1, n),
                        "gm_001__firstorder__Median": rng.normal(100, 5, n),
                        "gm_001__glcm__Idm": rng.normal(0.3, 0.02, n)}, index=ids)
    tiv = rng.normal(1500, 100, n)
    vols = pd.DataFrame({"thalamus_L": 7 + 0.002 * tiv + rng.normal(0, 0.3, n),
                         "gm_001": 10 + 0.003 * tiv + rng.normal(0, 0.5, n), "wbv_ml": 0.7 * tiv + rng.normal(0, 20, n),
                         "tiv_ml": tiv, "lesion_volume_ml": lesion}, index=ids)
    data = edss.StudyData(subjects=subjects, radiomics=rad, volumes=vols, disconnection=None,
                          rois={"thalamus_L": [1], "gm_001": [101]})
    train = [s for s, c in zip(ids, center) if c == "site1"][:48]
    test = [s for s in ids if s not in train]
    retest = rad.loc[train[:20]] + rng.normal(0, 0.05, (20, 4)) * rad.std().to_numpy()
    retest["thalamus_L__glcm__Contrast"] = rng.normal(0, 1, 20)  # unstable: ICC ~ 0
    return data, train, test, retest


CONFIG = edss.StudyConfig(lasso_cv=5, icc_subjects=20)


def test_select_features_fits_on_training_only():
    data, train, test, retest = _study()
    log = FitLog()
    sel = edss.select_features(data, train, CONFIG, retest=retest, fit_log=log)
    assert "thalamus_L__glcm__Contrast" in sel.icc.drop
    assert set(sel.icc.keep) == {"thalamus_L__firstorder__Variance", "gm_001__firstorder__Median",
                                 "gm_001__glcm__Idm"}
    assert {"age", "lesion_volume_log", "thalamus_L__firstorder__Variance", "course_SP"} <= set(sel.selected)
    assert "thalamus_L__glcm__Contrast" not in sel.selected
    assert sel.clinical == ["age", "sex_M", "disease_duration", "course_SP"]
    assert set(log.steps) == {"volumes.normative", "selection.icc_stability", "selection.variance",
                              "selection.collinearity", "selection.lasso", "selection.cfs"}
    assert log.seen("volumes.normative") == frozenset(train)
    assert log.seen("selection.icc_stability") == frozenset(train[:20])
    assert_no_leak(log, test)
    st = sel.stages()
    assert st["n_features"].iloc[0] == 4 + 6 + 1 + 3  # radiomics, clinical, lesion, volumes
    assert st.loc["ICC >= 0.90", "radiomics"] == 3
    # volume z-scores of the training subjects have mean 0 (OLS with intercept)
    X = edss.candidate_features(data, sel.scorer, train)
    assert abs(X["volume__gm_001"].mean()) < 1e-9


def test_select_features_rejects_test_subjects_in_retest():
    data, train, test, retest = _study()
    bad = retest.rename(index={retest.index[0]: test[0]})
    with pytest.raises(ValueError, match=f"'retest' subjects must be training subjects; not in training: \\['{test[0]}'\\]"):
        edss.select_features(data, train, CONFIG, retest=bad)


def test_design_matrix_fills_missing_test_values_with_training_medians():
    data, train, test, retest = _study()
    rad = data.radiomics.copy()
    rad.loc[test[0], "thalamus_L__firstorder__Variance"] = np.nan
    data2 = edss.StudyData(subjects=data.subjects, radiomics=rad, volumes=data.volumes, disconnection=None,
                           rois=data.rois)
    sel = edss.select_features(data2, train, CONFIG, retest=retest)
    X = edss.design_matrix(sel, data2, test[:2])
    assert X.loc[test[0], "thalamus_L__firstorder__Variance"] == pytest.approx(
        rad.loc[train, "thalamus_L__firstorder__Variance"].median())


def _folds(train, k=4):
    return [{"name": f"fold{i}", "train": [s for j, s in enumerate(train) if j % k != i],
             "test": [s for j, s in enumerate(train) if j % k == i]} for i in range(k)]


def test_leakage_canary_in_memory():
    """Permuting the test subjects' EDSS changes nothing fitted or predicted; permuting training EDSS does."""
    data, train, test, retest = _study()
    rng = np.random.default_rng(5)
    kw = {"folds": _folds(train), "test_sets": {"internal": test[:12], "external": test[12:]}}
    log = FitLog()
    fit_a = edss.fit_study(data, train, CONFIG, retest=retest, fit_log=log, **kw)
    assert_no_leak(log, test)
    assert set(fit_a.predictions["selected"]) == {"training", "internal", "external"}
    y = data.edss.copy()
    y.loc[test] = rng.permutation(y.loc[test].to_numpy())[::-1] + 0.5
    fit_b = edss.fit_study(data.with_edss(y), train, CONFIG, retest=retest, **kw)
    assert fit_a.selection.selected == fit_b.selection.selected
    for fs in edss.FEATURE_SETS:
        pd.testing.assert_frame_equal(fit_a.predict(data, train, fs), fit_b.predict(data, train, fs))
        pd.testing.assert_frame_equal(fit_a.predict(data, test, fs), fit_b.predict(data, test, fs))
        for cohort in ("training", "internal", "external"):
            pd.testing.assert_frame_equal(fit_a.predictions[fs][cohort], fit_b.predictions[fs][cohort])
    # the training row's scores do not move either; the test rows' do (their EDSS changed)
    sa, sb = fit_a.scores(data.edss), fit_b.scores(y)
    assert sa["selected"]["training"] == sb["selected"]["training"]
    assert sa["selected"]["internal"]["ridge"]["mae"] != sb["selected"]["internal"]["ridge"]["mae"]
    # positive control: the canary can fail
    y2 = data.edss.copy()
    y2.loc[train[:5]] += 1.0
    fit_c = edss.fit_study(data.with_edss(y2), train, CONFIG, retest=retest, **kw)
    assert not fit_c.predict(data, train).equals(fit_a.predict(data, train))
    assert not fit_c.predictions["selected"]["internal"].equals(fit_a.predictions["selected"]["internal"])


def test_fit_study_with_a_given_selection_is_the_same_fit():
    data, train, test, retest = _study()
    kw = {"folds": _folds(train), "test_sets": {"internal": test}}
    hyper = {"selected": {"ridge": {"model__alpha": 10.0}}, "clinical": {"svr": {"model__C": 3.0}}}
    full = edss.fit_study(data, train, CONFIG, retest=retest, hyperparameters=hyper, **kw)
    sel = edss.select_features(data, train, CONFIG, retest=retest)
    given = edss.fit_study(data, train, CONFIG, selection=sel, hyperparameters=hyper, **kw)
    assert given.selection is sel and given.selection.selected == full.selection.selected
    assert given.models["selected"]["ridge"].named_steps["model"].alpha == 10.0
    assert given.models["clinical"]["svr"].named_steps["model"].C == 3.0
    for fs in edss.FEATURE_SETS:
        for cohort in ("training", "internal"):
            pd.testing.assert_frame_equal(given.predictions[fs][cohort], full.predictions[fs][cohort])
    # the training row is the out-of-fold prediction: each fold's model never saw its own subjects
    from msutils.models.regression import make_model

    fold = kw["folds"][1]
    X = edss.feature_matrix(sel, data, train, "selected")
    model = make_model("ridge", {"model__alpha": 10.0}).fit(X.loc[fold["train"]], data.edss.loc[fold["train"]])
    np.testing.assert_allclose(given.predictions["selected"]["training"].loc[fold["test"], "ridge"],
                               model.predict(X.loc[fold["test"]]), rtol=1e-10)
    with pytest.raises(ValueError, match="'selection' was fitted on other subjects than 'train_subjects'"):
        edss.fit_study(data, train[:-1], CONFIG, selection=sel)


def test_fit_models_uses_given_hyperparameters():
    data, train, test, retest = _study()
    log = FitLog()
    sel = edss.select_features(data, train, CONFIG, retest=retest)
    models = edss.fit_models(sel, data, {"ridge": {"model__alpha": 123.0}}, models=("ridge", "svr"), fit_log=log)
    assert models["ridge"].named_steps["model"].alpha == 123.0
    assert models["svr"].named_steps["model"].C == 1.0
    assert set(log.steps) == {"regression.ridge.final", "regression.svr.final"}
    p = edss.predictions(models, edss.design_matrix(sel, data, test))
    assert list(p.columns) == ["ridge", "svr"] and p.index.tolist() == test


def test_site_table1_tests():
    data, *_ = _study()
    t = edss.site_table1(data)
    s = data.subjects
    p_age = sps.ttest_ind(s.loc[s.center == "site1", "age"], s.loc[s.center == "site2", "age"]).pvalue
    assert t.loc["age, mean (SD)", "P value"] == f"{p_age:.3f}"
    assert t.loc["edss, median [IQR]", "test"] == "Mood's median test"
    assert t.loc["wbv_ml, mean (SD)", "test"] == "OLS site term, adjusted for age, sex, TIV"


def test_icc_subset_modes():
    data, train, test, _ = _study()
    table = pd.DataFrame({"subject_id": [train[0], train[0], train[1], train[1], train[2], train[2], test[0], test[0]],
                          "center": ["site1"] * 8},
                         index=[f"{s}_ses-0{k}" for s in (train[0], train[1], train[2], test[0]) for k in (1, 2)])
    cohort = SimpleNamespace(table=table)
    got = edss.icc_subset(cohort, data, train, edss.StudyConfig(icc_mode="rescan", icc_subjects=30))
    assert got == {s: f"{s}_ses-02" for s in sorted(train[:3])}  # test[0]'s rescan is never used
    picked = edss.icc_subset(cohort, data, train, edss.StudyConfig(icc_subjects=10, seed=3))
    assert len(picked) == 10 and set(picked) <= set(train)
    assert all(picked[s] == data.subjects.at[s, "scan_id"] for s in picked)
    assert picked == edss.icc_subset(cohort, data, train, edss.StudyConfig(icc_subjects=10, seed=3))
    assert picked != edss.icc_subset(cohort, data, train, edss.StudyConfig(icc_subjects=10, seed=4))
    with pytest.raises(ValueError, match="only 2 training subject"):
        edss.icc_subset(SimpleNamespace(table=table.iloc[:4]), data, train,
                        edss.StudyConfig(icc_mode="rescan"))


def test_table2_names_the_filtered_image_type():
    t = edss.table2(["thalamus_L__wavelet-LLH_glcm__Idm", "thalamus_L__log-sigma-2-0-mm-3D_firstorder__Median"])
    assert t["feature class"].tolist() == ["Gray level co-occurrence matrix, wavelet-LLH image",
                                           "First order, log-sigma-2-0-mm-3D image"]
    assert t["feature"].tolist() == ["Idm", "Median"]


# ----------------------------------------------------------------------------- model choice by CV only
def _choice(mae, params=None):
    return SimpleNamespace(mean_mae=mae, params=params or {"model__alpha": mae})


def test_model_chosen_by_cv_uses_the_cv_mae_only():
    choices = {"ridge": _choice(0.80), "gaussian_process": _choice(0.70), "svr": _choice(0.75),
               "random_forest": _choice(0.90)}
    # the test sets favour the random forest by far: the choice must not follow them
    scores = {c: {m: {"r": 0.9 if m == "random_forest" else 0.3, "mae": 0.2 if m == "random_forest" else 2.0}
                  for m in edss.MODEL_ORDER} for c in ("training", "internal", "external")}
    h = edss.headline(choices, scores, ceilings={"internal": 0.6, "external": float("nan")})
    assert edss.model_chosen_by_cv(choices) == h["model_chosen_by_cv"] == "gaussian_process"
    assert h["scores"]["internal"] == scores["internal"]["gaussian_process"]
    assert h["fraction_of_ceiling"] == {"internal": pytest.approx(0.3 / 0.6)}  # NaN ceiling left out
    assert h["cv_mae"] == {"ridge": 0.80, "gaussian_process": 0.70, "svr": 0.75, "random_forest": 0.90}
    assert h["params"] == repr({"model__alpha": 0.70})
    # any change of the test scores leaves the choice alone; a change of the CV MAE moves it
    for c in ("internal", "external"):
        scores[c]["gaussian_process"] = {"r": -1.0, "mae": 9.0}
    assert edss.headline(choices, scores)["model_chosen_by_cv"] == "gaussian_process"
    choices["svr"] = _choice(0.60)
    assert edss.headline(choices, scores)["model_chosen_by_cv"] == "svr"
    # ties: the first model of MODEL_ORDER
    tie = {m: _choice(0.5) for m in edss.MODEL_ORDER}
    assert edss.model_chosen_by_cv(tie) == "ridge"
    assert edss.model_chosen_by_cv(tie, models=("svr", "ridge")) == "svr"
    with pytest.raises(ValueError, match=r"'choices' lacks models \['svr', 'random_forest'\]"):
        edss.model_chosen_by_cv({"ridge": _choice(1.0), "gaussian_process": _choice(1.0)})
    with pytest.raises(ValueError, match=r"cross-validated MAE of \['svr'\] is not finite"):
        edss.model_chosen_by_cv({**tie, "svr": _choice(float("nan"))})


def test_cv_choice_does_not_move_when_the_test_labels_change():
    """The notebook's chain (fold scores -> choose_hyperparameters -> headline) on permuted test EDSS."""
    from msutils.models.regression import cv_fold_scores

    data, train, test, retest = _study()
    folds = _folds(train)
    test_sets = {"internal": test[:12], "external": test[12:]}
    models = ("ridge", "svr")  # two fast models keep the test short; the chain is the notebook's

    def chain(d):
        sel = edss.select_features(d, train, CONFIG, retest=retest)
        cv = edss.cv_folds({"inner": folds}, sel.train_subjects)
        X = edss.feature_matrix(sel, d, sel.train_subjects)
        y = d.edss.loc[sel.train_subjects]
        cv_scores = pd.concat([cv_fold_scores(m, X, y, cv, k).assign(feature_set="selected")
                               for k in range(len(cv)) for m in models], ignore_index=True)
        choices = edss.choose_hyperparameters(cv_scores, len(cv), feature_sets=("selected",), models=models)
        fit = edss.fit_study(d, train, CONFIG, selection=sel, folds=folds, test_sets=test_sets,
                             feature_sets=("selected",), models=models,
                             hyperparameters={"selected": {m: c.params for m, c in choices["selected"].items()}})
        return edss.headline(choices["selected"], fit.scores(d.edss)["selected"], models=models)

    a = chain(data)
    y = data.edss.copy()
    y.loc[test] = np.random.default_rng(2).permutation(y.loc[test].to_numpy())[::-1]
    b = chain(data.with_edss(y))
    assert (a["model_chosen_by_cv"], a["params"], a["cv_mae"]) == (b["model_chosen_by_cv"], b["params"], b["cv_mae"])
    assert a["scores"]["internal"]["mae"] != b["scores"]["internal"]["mae"]  # the test rows did change
    y2 = data.edss.copy()
    y2.loc[train] = np.random.default_rng(3).permutation(y2.loc[train].to_numpy())
    assert chain(data.with_edss(y2))["cv_mae"] != a["cv_mae"]  # positive control: the training labels count


def test_ceiling_reference_per_test_set():
    data, train, test, _ = _study()
    subjects = data.subjects.assign(gt_edss_noisefree=data.edss + np.random.default_rng(0).normal(0, 1, len(data.edss)))
    got = edss.ceiling_reference(subjects, test)
    assert got == pytest.approx(np.corrcoef(subjects.loc[test, "edss"], subjects.loc[test, "gt_edss_noisefree"])[0, 1])
    assert edss.ceiling_reference(subjects) == pytest.approx(
        np.corrcoef(subjects["edss"], subjects["gt_edss_noisefree"])[0, 1])
    assert np.isnan(edss.ceiling_reference(data.subjects, test))  # a real cohort: no noise-free EDSS
    assert np.isnan(edss.ceiling_reference(subjects.assign(gt_edss_noisefree=1.0), test))


def test_table3_intervals_are_the_paired_bootstrap_of_each_test_set():
    from msutils.stats import bootstrap_regression_metrics

    rng = np.random.default_rng(1)
    y = pd.Series(rng.normal(3, 1.5, 30), index=[f"s{i}" for i in range(30)])
    preds = {"internal": pd.DataFrame({m: y.iloc[:14] + rng.normal(0, 0.5 + i / 4, 14)
                                       for i, m in enumerate(edss.MODEL_ORDER)}),
             "external": pd.DataFrame({m: y.iloc[14:] * 0.5 + rng.normal(0, 0.7, 16) for m in edss.MODEL_ORDER})}
    out = edss.table3_intervals(preds, y, n_boot=300, seed=4)
    assert out.columns.tolist() == ["cohort", "model", "metric", "estimate", "low", "high", "n_valid"]
    assert len(out) == 2 * 4 * 4
    ref = bootstrap_regression_metrics(y.iloc[14:].to_numpy(), preds["external"], n_boot=300, seed=4)
    got = out[out.cohort == "external"].reset_index(drop=True)
    np.testing.assert_allclose(got[["estimate", "low", "high"]].to_numpy(), ref[["estimate", "low", "high"]].to_numpy())
    wide = edss.format_intervals(out, decimals=2)
    row = out[(out.cohort == "internal") & (out.model == "svr") & (out.metric == "mae")].iloc[0]
    assert wide.loc[("Internal test", "Support-vector machine"), "MAE"] == \
        f"{row.estimate:.2f} ({row.low:.2f}-{row.high:.2f})"
    assert list(wide.columns) == ["r", "R² (= r², paper)", "R² (coefficient of determination)", "MAE"]
    with pytest.raises(ValueError, match=r"'preds' lacks cohorts \['training'\]"):
        edss.table3_intervals(preds, y, cohorts=("training",))


def _shared(data, retest, seed=0, n_folds=4):
    split = internal_external_cv(data.subjects.reset_index(), test_size=0.2, n_folds=n_folds, seed=seed)
    rt = retest.loc[[s for s in retest.index if s in set(split["train"])]]
    sel = edss.select_features(data, split["train"], CONFIG, retest=rt)
    return edss.SharedStage(data=data, split=split, retest_scans={}, retest=rt, selection=sel, fit_log={},
                            seconds={})


def test_repeat_study_is_the_whole_study_on_another_split():
    data, _, _, retest = _study()
    retest = pd.concat([retest, data.radiomics.loc[[s for s in data.subjects.index[:60] if s not in retest.index]]
                        + 0.01])  # every site-1 subject re-processed
    shared = _shared(data, retest)
    run = edss.repeat_study(shared, CONFIG, 3, models=("ridge", "svr"))
    split = internal_external_cv(data.subjects.reset_index(), test_size=0.2, n_folds=4, seed=3)
    assert run["split"] == {k: list(split[k]) for k in ("train", "test", "external")}
    assert run["split"]["test"] != list(shared.split["test"])
    assert run["n_icc_subjects"] == len(set(split["train"]) & set(shared.retest.index))
    log = FitLog.from_dict(run["fit_log"])
    held = set(split["test"]) | set(split["external"])
    assert_no_leak(log, held)
    assert log.seen("selection.lasso") == frozenset(split["train"])
    assert log.seen("selection.icc_stability") <= frozenset(split["train"])
    assert log.seen("regression.ridge.final") == frozenset(split["train"])
    # the selection and the numbers are exactly the study's functions on that split
    sel = edss.select_features(data, split["train"], replace(CONFIG, seed=3),
                               retest=shared.retest.loc[[s for s in shared.retest.index if s in set(split["train"])]])
    assert run["selected"] == sel.selected
    hyper = {fs: {m: eval(p) for m, p in per.items()} for fs, per in run["hyperparameters"].items()}
    fit = edss.fit_study(data, split["train"], replace(CONFIG, seed=3), selection=sel, hyperparameters=hyper,
                         folds=split["inner"], test_sets={"internal": split["test"], "external": split["external"]},
                         models=("ridge", "svr"))
    sc = fit.scores(data.edss)
    assert run["metrics"]["selected"]["external"]["svr"]["r"] == pytest.approx(sc["selected"]["external"]["svr"]["r"])
    assert run["headline"]["selected"]["model_chosen_by_cv"] in ("ridge", "svr")
    assert set(run["ceiling"]) == {"internal", "external"} and np.isnan(run["ceiling"]["internal"])


def test_repeat_summary_mean_and_sd_by_hand():
    def run(seed, r_ridge, r_svr, chosen):
        per = {c: {"ridge": {"r": r_ridge, "pearson_r2": r_ridge ** 2, "r2_score": 0.1, "mae": 1.0},
                   "svr": {"r": r_svr, "pearson_r2": r_svr ** 2, "r2_score": 0.2, "mae": 2.0}}
               for c in ("internal", "external")}
        return {"split_seed": seed, "metrics": {"selected": per},
                "headline": {"selected": {"model_chosen_by_cv": chosen}}}

    runs = [run(0, 0.5, 0.7, "ridge"), run(1, 0.6, 0.4, "svr"), run(2, 0.7, 0.1, "ridge")]
    out = edss.repeat_summary(runs)
    assert out.loc[("internal", "ridge"), "r mean"] == pytest.approx(0.6)
    assert out.loc[("internal", "ridge"), "r SD"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    chosen_r = [0.5, 0.4, 0.7]
    assert out.loc[("external", edss.CHOSEN_BY_CV), "r mean"] == pytest.approx(np.mean(chosen_r))
    assert out.loc[("external", edss.CHOSEN_BY_CV), "r SD"] == pytest.approx(np.std(chosen_r, ddof=1))
    assert out.loc[("external", edss.CHOSEN_BY_CV), "mae mean"] == pytest.approx(4 / 3)
    assert (out["seeds"] == 3).all()
    f = edss.format_mean_sd(out, decimals=2)
    assert f.loc[("Internal test", "Ridge regression"), "r"] == "0.60 ± 0.10"
    with pytest.raises(ValueError, match="'runs' must hold at least 2 split seeds; got 1"):
        edss.repeat_summary(runs[:1])


def test_course_comparison_is_the_adjusted_ols_term():
    from msutils.stats import adjusted_difference

    data, *_ = _study()
    table, adj = edss.course_comparison(data.subjects)
    ref = adjusted_difference(data.subjects, "edss", "course", ["age", "sex", "disease_duration"],
                              levels=["RR", "SP"])
    assert adj == ref and adj["difference"] > 0  # SP drives the synthetic EDSS up
    sp = data.subjects.loc[data.subjects.course == "SP", "edss"]
    assert table.loc["SP", "n"] == len(sp) and table.loc["SP", "EDSS median"] == sp.median()
    assert table.loc["SP", "EDSS IQR"] == "{:.1f}-{:.1f}".format(*sp.quantile([0.25, 0.75]))


def test_ridge_weights_are_the_coefficients_on_standardized_features():
    from sklearn.linear_model import Ridge

    from msutils.models.regression import make_model

    data, train, *_ = _study()
    X = data.radiomics.loc[train]
    y = data.edss.loc[train]
    model = make_model("ridge", {"model__alpha": 3.0}).fit(X, y)
    w = edss.ridge_weights(model)
    Z = (X - X.mean()) / X.std(ddof=0)
    ref = Ridge(alpha=3.0).fit(Z, y)
    np.testing.assert_allclose(w.drop("(intercept)").to_numpy(), ref.coef_, rtol=1e-8)
    assert w.index[:-1].tolist() == X.columns.tolist()
    assert w["(intercept)"] == pytest.approx(y.mean())
    with pytest.raises(ValueError, match="'model' must be a fitted ridge pipeline"):
        edss.ridge_weights(make_model("svr").fit(X, y))


def test_lesion_volume_truth_with_a_declared_truth_column():
    data, *_ = _study()
    truth_vox = {sid: int(k) for k, sid in enumerate(data.subjects["scan_id"])}  # k true lesion voxels

    def image(sid, column):
        assert column == "gt_lesion_mask"
        arr = np.zeros((5, 5, 5), np.uint8)
        arr.reshape(-1)[: truth_vox[sid]] = 1
        return nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0]))

    cohort = SimpleNamespace(truth_columns={"gt_brain_mask": "brain_mask", "gt_lesion_mask": "lesion_mask"},
                             image=image)
    out = edss.lesion_volume_truth(cohort, data)
    assert out.columns.tolist() == ["measured_ml", "truth_ml"] and out.attrs["truth_column"] == "gt_lesion_mask"
    np.testing.assert_allclose(out["truth_ml"].to_numpy(), np.arange(80) * 8 / 1000)
    assert out["measured_ml"].equals(data.volumes["lesion_volume_ml"].rename("measured_ml"))
    # no truth declared (today's cohort, a real one): only the measured volume, plus the design value if known
    plain = edss.lesion_volume_truth(SimpleNamespace(), data)
    assert plain.columns.tolist() == ["measured_ml"] and "truth_column" not in plain.attrs
    data.subjects["gt_lesion_volume_design_ml"] = data.volumes["lesion_volume_ml"] * 1.1
    assert edss.lesion_volume_truth(SimpleNamespace(truth_columns={}), data).columns.tolist() == [
        "measured_ml", "design_ml"]
    agree = edss.lesion_truth_agreement(out, data.edss)
    m, t = out["measured_ml"], out["truth_ml"]
    assert agree.loc["truth_ml", "Pearson r with measured (log)"] == pytest.approx(
        np.corrcoef(np.log1p(m), np.log1p(t))[0, 1])
    assert agree.loc["truth_ml", "Spearman rho with EDSS"] == pytest.approx(sps.spearmanr(t, data.edss).statistic)
    assert agree.loc["measured_ml", "median (measured - this), mL"] == 0.0
    assert agree.index.tolist() == ["measured_ml", "truth_ml"]
    with pytest.raises(ValueError, match="'volumes' lacks 'measured_ml'"):
        edss.lesion_truth_agreement(out[["truth_ml"]], data.edss)
