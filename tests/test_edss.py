"""Tests of msutils.studies.edss_regression: disconnection proxy, re-segmentation, selection / fit (leakage
canary on in-memory data), ground-truth mapping, tables, splits and the shared-stage lock."""

from __future__ import annotations

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
    assert t.loc["Internal test", ("Random forest", "R² (= r²)")] == pytest.approx(0.64)  # not r2_score
    assert t.loc["Internal test", ("", "P value")] == "<0.001"
    paper = edss.table3(paper_numbers.load("001")["table3"], {"internal": 0.001})
    assert paper.loc["External test", ("", "P value")] == "-"
    assert paper.loc["Training (cross-validation)", ("Support-vector machine", "MAE")] == 0.710
    rows = edss.paper_table3_long()
    assert len(rows) == 12
    assert rows["External test / Gaussian process"] == {"r": 0.799, "R² (= r²)": 0.638, "MAE": 1.247}


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
