"""Tests of msutils.features.volumes: normative z-scores and mask volumes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.base import clone

from msutils.features import volumes as vol


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, list]] = []

    def record(self, step, subject_ids) -> None:
        self.records.append((step, list(subject_ids)))


def _cohort_table(n=80, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 70, n)
    sex = rng.choice(["M", "F"], n)
    tiv = rng.normal(1450, 120, n) + (sex == "M") * 120
    wbv = 0.75 * tiv - 2.0 * age + rng.normal(0, 25, n)
    thal = 0.006 * tiv - 0.02 * age + rng.normal(0, 0.6, n)
    return pd.DataFrame({"age": age, "sex": sex, "tiv": tiv, "wbv": wbv, "thalamus_L": thal},
                        index=[f"sub-{i:03d}" for i in range(n)])


def test_normative_z_matches_statsmodels_residuals():
    table = _cohort_table()
    train, test = table.iloc[:60], table.iloc[60:]
    nz = vol.NormativeZScorer().fit(train)
    assert nz.columns_ == ["wbv", "thalamus_L"]
    design = sm.add_constant(pd.DataFrame({"age": train["age"],
                                           "sex": (train["sex"] == "M").astype(float),
                                           "tiv": train["tiv"]}))
    design_test = sm.add_constant(pd.DataFrame({"age": test["age"],
                                                "sex": (test["sex"] == "M").astype(float),
                                                "tiv": test["tiv"]}), has_constant="add")
    z_train, z_test = nz.transform(train), nz.transform(test)
    for col in ("wbv", "thalamus_L"):
        res = sm.OLS(train[col], design).fit()
        sd = np.sqrt(res.scale)
        np.testing.assert_allclose(nz.coef_[col].to_numpy(), res.params.to_numpy(), rtol=1e-8)
        assert nz.resid_sd_[col] == pytest.approx(sd, rel=1e-10)
        np.testing.assert_allclose(z_train[col].to_numpy(), res.resid.to_numpy() / sd,
                                   rtol=1e-8, atol=1e-10)
        expected = (test[col] - res.predict(design_test)) / sd
        np.testing.assert_allclose(z_test[col].to_numpy(), expected.to_numpy(), rtol=1e-8)
    # training z-scores: mean 0, SD sqrt((n - 4) / (n - 1)) by construction
    assert z_train["wbv"].mean() == pytest.approx(0.0, abs=1e-10)
    assert z_train["wbv"].std(ddof=1) == pytest.approx(np.sqrt(56 / 59), rel=1e-10)


def test_normative_transform_does_not_refit_and_logs_train_ids():
    table = _cohort_table()
    train, test = table.iloc[:60], table.iloc[60:]
    log = RecordingLog()
    nz = vol.NormativeZScorer(fit_log=log).fit(train)
    coef = nz.coef_.copy()
    sd = nz.resid_sd_.copy()
    shifted = test.assign(wbv=test["wbv"] + 500)
    z1 = nz.transform(shifted)
    pd.testing.assert_frame_equal(nz.coef_, coef)
    pd.testing.assert_series_equal(nz.resid_sd_, sd)
    np.testing.assert_allclose(z1["wbv"] - nz.transform(test)["wbv"], 500 / sd["wbv"])
    assert log.records == [("volumes.normative", list(train.index))]
    assert clone(nz).fit_log is log
    assert list(nz.get_feature_names_out()) == ["wbv", "thalamus_L"]


def test_normative_numeric_sex_constant_covariate_and_errors(caplog):
    table = _cohort_table()
    numeric = table.assign(sex=(table["sex"] == "M").astype(int))
    a = vol.NormativeZScorer().fit(table).transform(table)
    b = vol.NormativeZScorer().fit(numeric).transform(numeric)
    pd.testing.assert_frame_equal(a, b)
    females = table[table["sex"] == "F"]
    nz = vol.NormativeZScorer().fit(females)
    assert nz.covariates_ == ["age", "tiv"]
    assert "constant on the training rows" in caplog.text
    ref = sm.OLS(females["wbv"], sm.add_constant(females[["age", "tiv"]])).fit()
    np.testing.assert_allclose(nz.transform(females)["wbv"], ref.resid / np.sqrt(ref.scale),
                               rtol=1e-8)
    bad = table.copy()
    bad.loc["sub-004", "sex"] = "X"
    with pytest.raises(ValueError, match=r"column 'sex' must hold 'M' or 'F'; got \['X'\] at "
                                         r"rows \['sub-004'\]"):
        vol.NormativeZScorer().fit(bad)
    with pytest.raises(ValueError, match=r"'X' lacks covariate columns \['tiv'\]"):
        vol.NormativeZScorer().fit(table.drop(columns="tiv"))
    with pytest.raises(ValueError, match="needs more training rows than model terms"):
        vol.NormativeZScorer().fit(table.iloc[:4])
    missing = table.copy()
    missing.loc["sub-002", "wbv"] = np.nan
    with pytest.raises(ValueError, match=r"'volumes' has missing or infinite values .*\['wbv'\]"):
        vol.NormativeZScorer().fit(missing)
    before = copy.deepcopy(table)
    vol.NormativeZScorer(columns=["wbv"]).fit(table).transform(table)
    pd.testing.assert_frame_equal(table, before)


def test_roi_and_mask_volumes():
    lab = np.zeros((10, 10, 10), dtype=np.int16)
    lab[:2, :, :] = 1          # 200 voxels
    lab[2:5, :5, :] = 9        # 150 voxels
    lab[5:, 0, 0] = 101        # 5 voxels
    spacing = (1.0, 1.5, 2.0)  # 3 mm^3 per voxel
    vols = vol.roi_volumes(lab, {1: "thalamus_L", 9: "whole_wm", 101: "gm_001", 7: "pallidum_L"},
                           spacing, roi_sets={"whole_gm": [101, 102], "deep": [1, 1, 9]})
    assert vols == pytest.approx({"thalamus_L": 0.6, "whole_wm": 0.45, "gm_001": 0.015,
                                  "pallidum_L": 0.0, "whole_gm": 0.015, "deep": 1.05})
    assert list(vols)[:4] == ["thalamus_L", "whole_wm", "gm_001", "pallidum_L"]
    assert vol.whole_brain_volume(lab, spacing) == pytest.approx(355 * 3 / 1000)
    assert vol.lesion_volume(lab == 9, spacing) == pytest.approx(0.45)
    assert vol.total_intracranial_volume(np.ones((10, 10, 10), bool), spacing) == pytest.approx(3.0)
    assert vol.voxel_volume_ml((1, 1, 1)) == 0.001
    with pytest.raises(ValueError, match=r"'spacing' has 2 values but the array has 3 dimensions"):
        vol.mask_volume(lab, (1.0, 1.0))
    with pytest.raises(ValueError, match="'spacing' must be positive voxel sizes in mm"):
        vol.mask_volume(lab, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="integer labels"):
        vol.roi_volumes(lab + 0.5, {1: "a"}, spacing)


def test_cohort_volumes_reads_images():
    lab = np.zeros((6, 6, 6), dtype=np.int16)
    lab[1:3, 1:3, 1:3] = 1
    lab[3:5, :, :] = 9
    brain = np.zeros((6, 6, 6), dtype=np.uint8)
    brain[1:5, :, :] = 1
    lesion = np.zeros((6, 6, 6), dtype=np.uint8)
    lesion[3, 0, :2] = 1
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    images = {"roi_labels": nib.Nifti1Image(lab, affine),
              "brain_mask": nib.Nifti1Image(brain, affine),
              "lesion_mask": nib.Nifti1Image(lesion, affine)}
    table = pd.DataFrame({"roi_labels": ["l.nii.gz", None], "brain_mask": ["b.nii.gz", "b.nii.gz"],
                          "lesion_mask": ["x.nii.gz", None]}, index=["s1_ses-01", "s2_ses-01"])
    cohort = SimpleNamespace(table=table, labels={1: "thalamus_L", 9: "whole_wm"},
                             image=lambda sid, col: images[col])
    out = vol.cohort_volumes(cohort, roi_sets={"deep": [1, 9]})
    assert out.index.name == "scan_id"
    assert out.loc["s1_ses-01"].to_dict() == pytest.approx({
        "thalamus_L": 0.016, "whole_wm": 0.144, "deep": 0.16, "wbv_ml": 0.16,
        "lesion_volume_ml": 0.004, "tiv_ml": 0.288})
    row2 = out.loc["s2_ses-01"]
    assert row2[["thalamus_L", "whole_wm", "deep", "wbv_ml", "lesion_volume_ml"]].isna().all()
    assert row2["tiv_ml"] == pytest.approx(0.288)
