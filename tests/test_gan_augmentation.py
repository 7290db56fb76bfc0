"""Seed 000 study module (msutils.studies.gan_augmentation): design checks, TDA scenario, leakage canary."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msutils.data.cohort import load_cohort
from msutils.data.leakage import FitLog, assert_no_leak
from msutils.segmentation.roi_unet import ROI_NAMES, RoiUNetConfig
from msutils.studies import gan_augmentation as S

pytestmark = pytest.mark.xdist_group("gan_augmentation")

ROI_SETS = {**{r: [i + 1] for i, r in enumerate(ROI_NAMES[:9])}, "whole_gm": [101, 102]}


def _fake(centers=("A", "B", "C"), groups=("MS", "HC"), roi_sets=ROI_SETS, with_labels=True):
    rows = []
    for c in centers:
        for g in groups:
            for i in range(2):
                rows.append({"subject_id": f"{c}{g}{i}", "center": c, "group": g, "roi_labels": "x.nii.gz"})
    table = pd.DataFrame(rows, index=[f"s{i}" for i in range(len(rows))])
    if not with_labels:
        table = table.drop(columns="roi_labels")
    return SimpleNamespace(table=table, roi_sets=dict(roi_sets))


def test_design_ok():
    S.check_design(_fake(), ["B", "C"])


@pytest.mark.parametrize("cohort, heldout, message", [
    (_fake(centers=("A", "B")), ["B"], r"it needs at least 3 centers \(two to train on, one held out\); the manifest "
                                       r"has 2: \['A', 'B'\]"),
    (_fake(groups=("MS",)), ["B"], r"center 'A' has no HC subjects \(groups: \['MS'\]\); every center needs both"),
    (_fake(with_labels=False), ["B"], r"the manifest has no 'roi_labels' column"),
    (_fake(roi_sets={k: v for k, v in ROI_SETS.items() if k != "whole_gm"}), ["B"],
     r"the sidecar's roi_sets lack the ROIs \['whole_gm'\]"),
    (_fake(), ["Z"], r"held-out center 'Z' does not exist; centers: \['A', 'B', 'C'\]"),
])
def test_design_errors(cohort, heldout, message):
    with pytest.raises(S.StudyDesignError, match=message):
        S.check_design(cohort, heldout)


def test_design_lists_every_problem():
    bad = _fake(centers=("A", "B"), groups=("MS",), with_labels=False)
    with pytest.raises(S.StudyDesignError) as err:
        S.check_design(bad, ["Q"])
    assert len(err.value.problems) == 5  # 2 centers, A and B lack HC, no roi_labels, unknown center


def test_config_validation():
    with pytest.raises(ValueError, match=r"'scenarios' must start with 'real'; got \['real\+tda'\]"):
        S.StudyConfig(scenarios=("real+tda",))
    with pytest.raises(ValueError, match=r"'min_folds' must be in \[1, 5\]; got 6"):
        S.StudyConfig(min_folds=6)


def test_register_scenario():
    with pytest.raises(ValueError, match="'name' must be a string starting with 'real'"):
        S.register_scenario("gba", None)
    assert S.SCENARIOS["real"] is None and S.SCENARIOS["real+tda"] is S.tda_images


# ------------------------------------------------------------------ smoke cohort
@pytest.fixture(scope="module")
def smoke_cohort(tmp_path_factory):
    from msutils import synth

    home = tmp_path_factory.mktemp("nb01_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSUTILS_HOME", str(home))
        manifest = synth.default_cohort("smoke", seed=0)
    return load_cohort(manifest, check_images=False)


# labels_from="truth": the 4-step U-Net's segmentation is noise, and radiomics of noise-sized ROIs is slow; the
# U-Net still segments the generated images (Dice) and every fitted step runs
TINY_GBA = S.GbaOptions.from_mapping(dict(g_channels=(4, 8, 16), g_strides=(2, 2), g_res_units=1, d_channels=4,
                                          d_layers=2, batch_size=4, max_epochs=1, patience=1, grid_factor=2,
                                          kid_subsets=10, labels_from="truth"))
TINY = S.StudyConfig(grid="smoke", n_repeats=1, n_per_class=2, classifiers=("svm", "resnet"), gba=TINY_GBA,
                     unet=RoiUNetConfig(channels=(4, 8), patch_size=16, max_steps=4, val_every=2, patience=1))


def test_tda_images_follow_their_source(smoke_cohort, tmp_path):
    table = S.study_table(smoke_cohort)
    train = table[table["center"] != "B"]
    req = S.AugmentationRequest(smoke_cohort, train, [], None, 3, 0, 0, tmp_path, TINY)
    meta = S.tda_images(req)
    assert len(meta) == 6 and (meta["group"] == "MS").sum() == 3
    assert set(meta["source_subject"]) <= set(train["subject_id"])
    for sid, row in meta.iterrows():
        lab = np.asarray(nib.load(row["roi_labels"]).dataobj)
        assert set(np.unique(lab)) <= set(range(11)) and (lab > 0).sum() > 100
        src = train.loc[row["source_scan"]]
        assert row["center"] == src["center"] and row["group"] == src["group"]
    again = S.tda_images(S.AugmentationRequest(smoke_cohort, train, [], None, 3, 0, 0, tmp_path / "b", TINY))
    first = meta.index[0]
    np.testing.assert_array_equal(np.asarray(nib.load(meta.at[first, "t1"]).dataobj),
                                  np.asarray(nib.load(again.at[first, "t1"]).dataobj))


@pytest.fixture(scope="module")
def smoke_features(smoke_cohort, tmp_path_factory):
    return S.real_features(smoke_cohort, TINY, tmp_path_factory.mktemp("rad"), progress=False)


def test_leakage_canary_permuted_heldout_diagnoses(smoke_cohort, smoke_features, tmp_path):
    """Permuting the held-out center's diagnoses changes no fitted object (the cGAN included) and no threshold."""
    work = tmp_path / "a"
    r1 = S.run_loco(smoke_cohort, "B", TINY, work, features=smoke_features, progress=False)
    table = smoke_cohort.table.copy()
    rows = table["center"] == "B"
    table.loc[rows, "group"] = np.where(table.loc[rows, "group"] == "MS", "HC", "MS")  # every held-out label flipped
    permuted = dataclasses.replace(smoke_cohort, table=table)
    r2 = S.run_loco(permuted, "B", TINY, tmp_path / "b", features=smoke_features, progress=False)
    assert (r1["predictions"]["y"] != r2["predictions"]["y"]).all()
    assert S.fitted_fingerprint(r1) == S.fitted_fingerprint(r2)
    # the audit: no fitted step but the unlabelled new-site estimate saw a held-out subject
    log = FitLog.from_dict(r1["fit_log"])
    held = sorted(set(r1["split"]["test"]) | set(r1["split"]["excluded"]))
    assert_no_leak(log, held, steps=S.leakage_steps(r1["fit_log"]))
    assert log.seen("combat.new_site") == frozenset(smoke_cohort.table.loc[rows, "subject_id"])
    for step in ("roi_unet", "combat", "scaler", "lasso", "tuning.svm", "classifier", "threshold", "cgan-inner0"):
        assert step in log.steps
    # result contents
    preds = r1["predictions"]
    assert set(preds["scenario"]) == {"real", "real+tda", "real+gba"}
    assert len(preds) == 3 * 2 * rows.sum()  # scenarios x classifiers x held-out scans
    # the cGAN of inner fold 0 saw that fold's training subjects only
    assert log.seen("cgan-inner0") == frozenset(r1["split"]["inner"][0]["train"])
    q = r1["quality"][("real+gba", 0)]
    assert q["inner_fold"] == 0 and np.isfinite(q["fid"]) and np.isfinite(q["ssim_mean"])
    assert S.fitted_fingerprint(r1)["cgan"] != S.fitted_fingerprint({**r1, "quality": {}})["cgan"]
    assert set(r1["segmentation"]["dice"].columns) == set(ROI_NAMES)
    assert set(r1["thresholds"]) == {(s, c, 0) for s in ("real", "real+tda", "real+gba") for c in ("svm", "resnet")}
    long = S.metrics_long({"B": r1})
    t3 = S.table3(long)
    assert t3.shape == (6, 10) and t3[("auc", "mean")].between(0, 1).all()
