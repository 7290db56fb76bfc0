"""Tests of the synthetic cohort generator: the ground truth must be in the images."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msutils import synth
from msutils.synth import anatomy, clinical

pytestmark = pytest.mark.xdist_group("synth")

TEN_ROIS = [
    "thalamus_L", "thalamus_R", "caudate_L", "caudate_R", "putamen_L", "putamen_R",
    "pallidum_L", "pallidum_R", "whole_wm", "whole_gm",
]


def _read(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke cohort, generated once through default_cohort into a temporary MSUTILS_HOME."""
    home = tmp_path_factory.mktemp("msutils_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSUTILS_HOME", str(home))
        manifest = synth.default_cohort("smoke", seed=0)
    df = _read(manifest)
    meta = yaml.safe_load(manifest.with_suffix(".yaml").read_text())
    return SimpleNamespace(manifest=manifest, root=manifest.parent, df=df, meta=meta, home=home)


def _load(smoke, row, col, dtype=None):
    img = nib.load(str(smoke.root / row[col]))
    arr = np.asarray(img.dataobj)
    return arr if dtype is None else arr.astype(dtype)


# ----------------------------------------------------------------------------- presets / API


def test_unknown_preset_message(tmp_path):
    msg = "'preset' must be one of ['smoke', 'quick', 'paper', 'edss-smoke', 'edss-quick', 'edss-paper']; got 'x'"
    with pytest.raises(ValueError) as exc:
        synth.generate("x", tmp_path / "out")
    assert str(exc.value) == msg
    with pytest.raises(ValueError) as exc:
        synth.default_cohort("x")
    assert str(exc.value) == msg
    assert not (tmp_path / "out").exists()


def test_params_validation():
    with pytest.raises(ValueError, match=re.escape("'design' must be one of ['loco', 'edss']; got 'x'")):
        synth.SynthParams(design="x")
    with pytest.raises(ValueError, match="'counts' center 'Z' has no entry in 'centers'"):
        synth.SynthParams(counts={"Z": {"MS": 3}})
    with pytest.raises(ValueError, match="'course_probs' must sum to 1"):
        synth.SynthParams(course_probs={"RR": 0.5})


def test_preset_sizes():
    assert synth.cell_counts(synth.PRESETS["smoke"]) == [
        ("A", "MS", 14), ("A", "HC", 12), ("B", "MS", 4), ("B", "HC", 4), ("C", "MS", 7), ("C", "HC", 5)]
    assert synth.cell_counts(synth.PRESETS["quick"]) == [
        ("A", "MS", 29), ("A", "HC", 26), ("B", "MS", 8), ("B", "HC", 9), ("C", "MS", 14), ("C", "HC", 10)]
    assert synth.cell_counts(synth.PRESETS["paper"]) == [
        ("A", "MS", 116), ("A", "HC", 102), ("B", "MS", 21), ("B", "HC", 34), ("C", "MS", 56), ("C", "HC", 39)]
    assert synth.cell_counts(synth.PRESETS["edss-smoke"]) == [("site1", "MS", 40), ("site2", "MS", 12)]
    assert synth.cell_counts(synth.PRESETS["edss-quick"]) == [("site1", "MS", 150), ("site2", "MS", 40)]
    assert synth.cell_counts(synth.PRESETS["edss-paper"]) == [("site1", "MS", 500), ("site2", "MS", 104)]
    assert [synth.PRESETS[p].resolution for p in synth.PRESETS] == [3, 2, 1, 3, 2, 1]


# ----------------------------------------------------------------------------- manifest


def test_default_cohort_location_and_cache(smoke, monkeypatch):
    h = synth.params_hash(synth.PRESETS["smoke"])[:8]
    assert smoke.manifest == smoke.home / "synth" / f"smoke-seed0-{h}" / "manifest.csv"
    before = smoke.manifest.stat().st_mtime_ns
    monkeypatch.setenv("MSUTILS_HOME", str(smoke.home))
    assert synth.default_cohort("smoke", seed=0) == smoke.manifest
    assert smoke.manifest.stat().st_mtime_ns == before  # cached, not regenerated
    leftovers = [p.name for p in (smoke.home / "synth").iterdir() if "partial" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_manifest_contract(smoke):
    df, meta = smoke.df, smoke.meta
    assert list(df.columns[: len(synth.REQUIRED_COLUMNS)]) == list(synth.REQUIRED_COLUMNS)
    assert list(df.columns) == [*synth.REQUIRED_COLUMNS, "tiv_ml", "lesion_volume_ml", *synth.TRUTH_MASKS,
                                *synth.GT_COLUMNS]
    assert all(c.startswith("gt_") for c in [*synth.GT_COLUMNS, *synth.TRUTH_MASKS])
    # design: counts per (center, group), second visits, sessions
    first = df[df.session == "ses-01"]
    counts = first.groupby(["center", "group"]).size().to_dict()
    assert counts == {(c, g): n for c, g, n in synth.cell_counts(synth.PRESETS["smoke"])}
    assert counts[("A", "MS")] >= 12 and counts[("A", "HC")] >= 12
    assert first.subject_id.is_unique and len(first) == 46
    assert set(df.session) == {"ses-01", "ses-02"} and (df.session == "ses-02").sum() == 7  # round(0.15 * 46)
    assert df.subject_id.str.fullmatch(r"sub-\d{3}").all()
    # value domains
    assert set(df.group) == {"MS", "HC"} and set(df.sex) <= {"M", "F"}
    hc, ms = df[df.group == "HC"], df[df.group == "MS"]
    assert (hc.course == "NA").all() and set(ms.course) <= {"RR", "SP", "PP", "CIS"}
    assert hc.edss.isna().all() and hc.disease_duration.isna().all()
    assert ms.edss.notna().all() and (ms.disease_duration >= 0).all() and (df.age >= 18).all()
    assert np.all((ms.edss * 2) == np.round(ms.edss * 2)) and ms.edss.between(0, 9.5).all()
    assert set(df.center) == {"A", "B", "C"}
    assert dict(zip(df.center, df.scanner)) == {"A": "Siemens", "B": "Philips", "C": "GE"}
    # paths are relative to the manifest folder and exist
    for col in ("t1", "flair", "brain_mask", "lesion_mask", "roi_labels", *synth.TRUTH_MASKS):
        assert not df[col].str.startswith("/").any()
        assert all((smoke.root / p).is_file() for p in df[col])
    assert df.t1.iloc[0] == f"{df.subject_id.iloc[0]}/{df.session.iloc[0]}/t1.nii.gz"
    assert df.gt_lesion_mask.iloc[0] == f"{df.subject_id.iloc[0]}/gt_lesion_mask.nii.gz"  # one truth per subject
    # sidecar
    assert meta["name"] == "synthetic-smoke" and meta["data_root"] == "."
    assert meta["images"] == ["t1", "flair"] and meta["masks"] == ["brain_mask", "lesion_mask", "roi_labels"]
    assert meta["truth_masks"] == {"gt_brain_mask": "brain_mask", "gt_lesion_mask": "lesion_mask",
                                   "gt_roi_labels": "roi_labels", "gt_lookalike_labels": "label_map"}
    labels = meta["roi_labels"]
    assert labels[1] == "thalamus_L" and labels[8] == "pallidum_R" and labels[9] == "whole_wm"
    assert labels[101] == "gm_001" and labels[148] == "gm_048" and len(labels) == 9 + 48
    sets = meta["roi_sets"]
    assert list(sets)[:10] == TEN_ROIS and len(sets) == 10 + 48
    assert sets["whole_wm"] == [9] and sets["whole_gm"] == list(range(101, 149)) and sets["gm_007"] == [107]
    syn = meta["synthetic"]
    assert syn["preset"] == "smoke" and syn["seed"] == 0
    assert syn["params"] == synth.PRESETS["smoke"].to_dict()
    assert syn["params_hash"] == synth.params_hash(synth.PRESETS["smoke"])
    assert set(syn["ground_truth"]["columns"]) == set(synth.GT_COLUMNS)
    assert syn["ground_truth"]["lookalike_kinds"] == synth.LOOKALIKE_KINDS
    assert syn["generator_version"] == synth.GENERATOR_VERSION == "4"
    assert {"edss", "rater_dice", "lesion_volume_ml", "lookalikes", "centers_ms"} <= set(syn["calibration"])


# ----------------------------------------------------------------------------- images


def test_image_types_geometry_and_contrast(smoke):
    row = smoke.df[(smoke.df.group == "HC") & (smoke.df.center == "A")].iloc[0]
    cols = ("t1", "flair", "brain_mask", "lesion_mask", "roi_labels", *synth.TRUTH_MASKS)
    imgs = {c: nib.load(str(smoke.root / row[c])) for c in cols}
    assert imgs["t1"].get_data_dtype() == np.float32 and imgs["flair"].get_data_dtype() == np.float32
    assert imgs["brain_mask"].get_data_dtype() == np.uint8 and imgs["lesion_mask"].get_data_dtype() == np.uint8
    assert imgs["roi_labels"].get_data_dtype() == np.int16 and imgs["gt_roi_labels"].get_data_dtype() == np.int16
    assert imgs["gt_lesion_mask"].get_data_dtype() == np.uint8 and imgs["gt_lookalike_labels"].get_data_dtype() == np.uint8
    for img in imgs.values():
        assert img.shape == imgs["t1"].shape and np.allclose(img.affine, imgs["t1"].affine)
    assert np.allclose(np.diag(imgs["t1"].affine)[:3], 3.0)
    t1, fl = (np.asarray(imgs[c].dataobj) for c in ("t1", "flair"))
    brain = np.asarray(imgs["gt_brain_mask"].dataobj) > 0
    lab = np.asarray(imgs["gt_roi_labels"].dataobj)
    assert (t1[~brain] == 0).all() and (fl[~brain] == 0).all() and (t1[brain] > 0).mean() > 0.99
    assert set(np.unique(lab)) == {0, *range(1, 10), *range(101, 149)}
    rater_brain = np.asarray(imgs["brain_mask"].dataobj) > 0
    assert row.tiv_ml == pytest.approx(rater_brain.sum() * 27 / 1000, abs=0.1)
    assert row.gt_brain_volume_ml == pytest.approx(brain.sum() * 27 / 1000, abs=0.1)
    assert set(np.unique(np.asarray(imgs["roi_labels"].dataobj))) <= {0, *range(1, 10), *range(101, 149)}
    wm, gm, csf = lab == 9, lab > 100, brain & (lab == 0)
    t1m = {k: float(np.median(t1[m])) for k, m in (("wm", wm), ("gm", gm), ("csf", csf))}
    flm = {k: float(np.median(fl[m])) for k, m in (("wm", wm), ("gm", gm), ("csf", csf))}
    assert t1m["wm"] > 1.2 * t1m["gm"] > 1.2 * t1m["csf"]
    assert flm["gm"] > 1.1 * flm["wm"] > 1.5 * flm["csf"]
    assert np.asarray(imgs["gt_lesion_mask"].dataobj).sum() == 0  # HC: no true lesions


def test_lesions_bright_on_flair_dark_on_t1(smoke):
    ms = smoke.df[(smoke.df.group == "MS") & (smoke.df.session == "ses-01")]
    ratios_fl, ratios_t1 = [], []
    for _, row in ms.iterrows():
        les = _load(smoke, row, "gt_lesion_mask") > 0
        lab = _load(smoke, row, "gt_roi_labels")
        assert les.sum() * 27 / 1000 == pytest.approx(row.gt_lesion_volume_ml, abs=1e-3)
        assert (_load(smoke, row, "lesion_mask") > 0).sum() * 27 / 1000 == pytest.approx(row.lesion_volume_ml, abs=1e-3)
        assert (lab[les] == 9).all()  # lesion voxels keep the WM label
        if les.sum() < 3:
            continue
        nawm = (lab == 9) & ~les
        t1, fl = _load(smoke, row, "t1", np.float64), _load(smoke, row, "flair", np.float64)
        ratios_fl.append(fl[les].mean() / np.median(fl[nawm]))
        ratios_t1.append(t1[les].mean() / np.median(t1[nawm]))
    assert len(ratios_fl) >= 20
    assert min(ratios_fl) > 1.3 and np.median(ratios_fl) > 1.5
    assert max(ratios_t1) < 0.95 and np.median(ratios_t1) < 0.85
    # rendered lesion load tracks the designed one (the EDSS driver)
    r = np.corrcoef(np.log(ms.gt_lesion_volume_ml + 0.1), np.log(ms.gt_lesion_volume_design_ml + 0.1))[0, 1]
    assert r > 0.95
    hc = smoke.df[smoke.df.group == "HC"]
    assert (hc.gt_lesion_volume_ml == 0).all() and (hc.gt_lesion_count == 0).all()


def test_deep_gm_atrophy(smoke):
    df = smoke.df[smoke.df.session == "ses-01"].copy()
    vols, rater = [], []
    for _, row in df.iterrows():
        lab = _load(smoke, row, "gt_roi_labels")
        vols.append(((lab >= 1) & (lab <= 8)).sum() * 27 / 1000)
        lab = _load(smoke, row, "roi_labels")
        rater.append(((lab >= 1) & (lab <= 8)).sum() * 27 / 1000)
    df["dgm"] = vols
    df["dgm_rater"] = rater
    assert np.allclose(df.dgm, df.gt_deep_gm_volume_ml, atol=1e-3)
    from scipy import stats

    for col, tiv in (("dgm", "gt_brain_volume_ml"), ("dgm_rater", "tiv_ml")):  # the truth, and what a rater measures
        frac = df[col] / df[tiv]
        ms, hc = frac[df.group == "MS"], frac[df.group == "HC"]
        assert ms.mean() < 0.95 * hc.mean()
        assert stats.mannwhitneyu(ms, hc, alternative="less").pvalue < 1e-3
    assert not np.allclose(df.dgm, df.dgm_rater, atol=0.05)  # the rater's labels are not the truth
    # rendered thalamus volume follows the ground-truth factor and head size
    expected = df.gt_thalamus_volume_factor * df.gt_head_scale**3
    assert np.corrcoef(expected, df.gt_thalamus_volume_ml)[0, 1] > 0.9


def _thalamus_radiomics(smoke, rows) -> pd.DataFrame:
    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(binCount=32)
    ext.disableAllFeatures()
    ext.enableFeatureClassByName("firstorder")
    ext.enableFeatureClassByName("glcm")
    feats = []
    for _, row in rows.iterrows():
        t1 = _load(smoke, row, "t1", np.float32)
        roi = np.isin(_load(smoke, row, "roi_labels"), (1, 2))
        idx = np.nonzero(roi)
        box = tuple(slice(max(int(a.min()) - 2, 0), int(a.max()) + 3) for a in idx)
        img = sitk.GetImageFromArray(t1[box].T.copy())
        msk = sitk.GetImageFromArray(roi[box].T.astype(np.uint8).copy())
        for im in (img, msk):
            im.SetSpacing((3.0, 3.0, 3.0))
        out = ext.execute(img, msk, label=1)
        feats.append({k: float(v) for k, v in out.items() if k.startswith("original_")})
    return pd.DataFrame(feats, index=rows.index)


def test_deep_gm_radiomics_separate_ms_from_hc_within_center(smoke):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = smoke.df[(smoke.df.center == "A") & (smoke.df.session == "ses-01")]
    X = _thalamus_radiomics(smoke, rows)
    assert X.shape[1] >= 30 and not X.isna().any().any()
    y = (rows.group == "MS").to_numpy().astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    proba = cross_val_predict(model, X.to_numpy(), y, cv=StratifiedKFold(4, shuffle=True, random_state=0),
                              method="predict_proba")[:, 1]
    auc = roc_auc_score(y, proba)
    assert auc > 0.75, auc
    # the texture feature itself tracks the ground-truth amplitude
    rho = np.corrcoef(X["original_firstorder_RobustMeanAbsoluteDeviation"]
                      / X["original_firstorder_Median"], rows.gt_texture_amplitude)[0, 1]
    assert rho > 0.5, rho


def test_center_is_predictable_from_intensities(smoke):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = smoke.df[smoke.df.session == "ses-01"]
    feats = []
    for _, row in rows.iterrows():
        brain = _load(smoke, row, "brain_mask") > 0
        f = []
        for col in ("t1", "flair"):
            v = _load(smoke, row, col, np.float64)[brain]
            f += list(np.percentile(v, [5, 25, 50, 75, 95])) + [v.std()]
        feats.append(f)
    X, y = np.asarray(feats), rows.center.to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    acc = cross_val_score(model, X, y, cv=StratifiedKFold(4, shuffle=True, random_state=0)).mean()
    chance = pd.Series(y).value_counts(normalize=True).max()
    assert chance < 0.6 and acc > 0.9, acc


def test_rescans_share_anatomy_not_noise(smoke):
    df = smoke.df
    two = df[df.session == "ses-02"].subject_id
    for sid in two[:3]:
        r1, r2 = (df[(df.subject_id == sid) & (df.session == s)].iloc[0] for s in ("ses-01", "ses-02"))
        for col in synth.TRUTH_MASKS:  # one truth per subject
            assert r1[col] == r2[col]
        for col in ("brain_mask", "roi_labels"):  # a fresh re-segmentation of the rescan, close to the first
            m1, m2 = _load(smoke, r1, col), _load(smoke, r2, col)
            assert not np.array_equal(m1, m2)
            assert 2 * ((m1 == m2) & (m1 > 0)).sum() / ((m1 > 0).sum() + (m2 > 0).sum()) > 0.8
        a, b = _load(smoke, r1, "t1", np.float64), _load(smoke, r2, "t1", np.float64)
        assert not np.array_equal(a, b)
        brain = _load(smoke, r1, "gt_brain_mask") > 0
        assert np.corrcoef(a[brain], b[brain])[0, 1] > 0.85
        per_scan = ("session", "t1", "flair", "brain_mask", "lesion_mask", "roi_labels", "tiv_ml", "lesion_volume_ml")
        keep = [c for c in df.columns if c not in per_scan and not c.startswith("gt_rater_dice")]
        assert r1[keep].equals(r2[keep])


# ----------------------------------------------------------------------------- EDSS model


def test_edss_ground_truth_recorded_and_reproducible(smoke):
    gt = smoke.meta["synthetic"]["ground_truth"]["edss"]
    params = synth.PRESETS["smoke"]
    assert gt["drivers"] == list(synth.EDSS_DRIVERS)
    assert gt["weights"] == params.edss_weights and gt["noise_sd"] == params.edss_noise_sd
    assert 0.75 < gt["ceiling_r"] < 0.85
    assert gt["edss_median_by_course"]["SP"] > gt["edss_median_by_course"]["RR"] + 2
    # the sidecar is enough to recompute the latent from the gt_ columns
    ms = smoke.df[smoke.df.group == "MS"]
    drivers = {
        "lesion_load": np.log(ms.gt_lesion_volume_design_ml + 0.1),
        "thalamus_volume": ms.gt_thalamus_volume_factor,
        "texture_amplitude": ms.gt_texture_amplitude,
        "age": ms.age,
        "sp_course": (ms.course == "SP").astype(float),
    }
    std = gt["standardization"]
    latent = sum(gt["weights"][k] * (drivers[k] - std[k]["mean"]) / std[k]["sd"] for k in gt["drivers"])
    assert np.allclose(latent, ms.gt_edss_latent, atol=0.02)
    assert np.array_equal(synth.edss_from_latent(ms.gt_edss_latent, gt), ms.gt_edss_noisefree)
    # the observed EDSS follows its drivers with the recorded signs and rough magnitudes
    first = ms.drop_duplicates("subject_id")
    assert np.corrcoef(first.edss, first.gt_edss_noisefree)[0, 1] > 0.55
    for k in ("thalamus_volume", "texture_amplitude"):
        r = np.corrcoef(drivers[k][first.index], first.edss)[0, 1]
        assert np.sign(r) == np.sign(gt["weights"][k]) == np.sign(gt["driver_edss_r"][k])
        assert abs(r - gt["driver_edss_r"][k]) < 0.4, (k, r)


def test_edss_model_on_large_sample():
    params = synth.PRESETS["quick"]
    ref = synth.edss_reference(params)
    assert ref == synth.edss_reference(params)  # deterministic
    rng = np.random.default_rng(7)
    clin = synth.simulate_clinical(params, 5000, "MS", rng)
    drv = clinical.drivers(clin)
    latent = clinical.latent(drv, ref, params.edss_weights)
    edss = synth.edss_from_latent(latent + params.edss_noise_sd * rng.standard_normal(5000), ref)
    assert set(np.unique(edss)) <= set(np.arange(0, 9.75, 0.5))
    for k in synth.EDSS_DRIVERS:
        assert np.corrcoef(drv[k], edss)[0, 1] == pytest.approx(ref["driver_edss_r"][k], abs=0.05)
    assert np.corrcoef(edss, synth.edss_from_latent(latent, ref))[0, 1] == pytest.approx(ref["ceiling_r"], abs=0.02)
    med, q1, q3 = ref["edss_median_iqr"]
    assert 1.5 <= med <= 3.5 and q1 < med < q3
    hc = synth.simulate_clinical(params, 50, "HC", rng)
    assert (hc["course"] == "NA").all() and np.isnan(hc["disease_duration"]).all()
    assert (hc["lesion_volume_design_ml"] == 0).all() and (hc["thalamus_atrophy"] == 0).all()


# ----------------------------------------------------------------------------- determinism / atomicity


def _tiny(**kw) -> synth.SynthParams:
    base = dict(name="tiny", counts={"A": {"MS": 2, "HC": 1}, "C": {"MS": 1}}, size_factor=1.0,
                min_per_cell=0, second_visit_fraction=0.5)
    base.update(kw)
    return synth.PRESETS["smoke"].replace(**base)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_determinism_across_runs_and_workers(tmp_path):
    params = _tiny()
    a = synth.generate(params, tmp_path / "a", seed=0, n_jobs=1, progress=False).parent
    b = synth.generate(params, tmp_path / "b", seed=0, n_jobs=2, progress=False).parent
    c = synth.generate(params, tmp_path / "c", seed=1, n_jobs=1, progress=False).parent
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 2 + 5 * 6 + 4 * 4  # 4 subjects, 2 of them with a rescan; 4 truth images per subject
    assert da == db  # same seed: same bytes, whatever the number of workers
    t1 = "sub-001/ses-01/t1.nii.gz"
    assert t1 in dc and da[t1] != dc[t1]
    assert not np.array_equal(np.asarray(nib.load(a / t1).dataobj), np.asarray(nib.load(c / t1).dataobj))
    assert _read(a / "manifest.csv").edss.tolist() != _read(c / "manifest.csv").edss.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers


def test_regenerate_replaces_cohort_but_refuses_foreign_folder(tmp_path):
    params = _tiny(counts={"A": {"MS": 1}}, second_visit_fraction=0.0)
    out = tmp_path / "cohort"
    synth.generate(params, out, seed=0, n_jobs=1, progress=False)
    first = _digest(out)
    synth.generate(params, out, seed=2, n_jobs=1, progress=False)
    assert _digest(out) != first and (out / "manifest.yaml").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic cohort folder"):
        synth.generate(params, foreign, n_jobs=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "mine"]


# ----------------------------------------------------------------------------- anatomy


def test_atlas_structure():
    atlas = anatomy.load_atlas(3)
    assert anatomy.load_atlas(3) is atlas  # cached
    assert not atlas.gm.flags.writeable
    assert set(np.unique(atlas.labels)) == {0, *range(1, 10), *range(101, 149)}
    vv = atlas.voxel_volume_ml
    # adult volumes per hemisphere (1 mm template: thalamus 7.5, caudate 3.4, putamen 4.9, pallidum 1.4 ml)
    vol = {s.name: (atlas.labels == s.label).sum() * vv for s in anatomy.DEEP_GM}
    for side in "LR":
        assert 6.5 < vol[f"thalamus_{side}"] < 8.5 and 2.8 < vol[f"caudate_{side}"] < 4.0, vol
        assert 4.2 < vol[f"putamen_{side}"] < 5.6 and 1.0 < vol[f"pallidum_{side}"] < 2.0, vol
    assert 10 < atlas.ventricles.sum() * vv < 40
    assert sorted(atlas.lesion_zones) == ["deep", "infratentorial", "juxtacortical", "periventricular"]
    assert all(z.size > 100 for z in atlas.lesion_zones.values())
    assert sorted(atlas.lookalike_zones) == ["band", "flow", "punctate", "sulcal"]
    world = atlas.world_coords().reshape(3, -1)
    infra = world[:, atlas.lesion_zones["infratentorial"]]
    assert (infra[2] < -12).all() and (infra[1] < -15).all()  # posterior fossa
    tips = atlas.horn_tips_mm  # frontal horns in front of occipital ones, left at x < 0
    assert (tips[:2, 1] > tips[2:, 1] + 40).all() and tips[0, 0] < 0 < tips[1, 0]
    # parcels are hemispheric: left labels 101..124 at x < 0, right 125..148 at x > 0
    x = atlas.world_coords()[0]
    assert (x[(atlas.labels > 100) & (atlas.labels <= 124)] < 0).all()
    assert (x[atlas.labels > 124] >= 0).all()
    assert atlas.label_names == anatomy.label_table(48) and atlas.roi_sets == anatomy.roi_sets(48)


def test_identity_deformation_and_smooth_field():
    atlas = anatomy.load_atlas(3)
    coords = anatomy.random_deformation(atlas, np.random.default_rng(0), amplitude_mm=0.0, scale=1.0)
    assert np.array_equal(anatomy.warp(atlas.labels, coords, 0), atlas.labels)
    assert np.allclose(anatomy.warp(atlas.gm, coords, 1), atlas.gm, atol=1e-5)
    big = anatomy.random_deformation(atlas, np.random.default_rng(0), amplitude_mm=0.0, scale=1.1)
    assert anatomy.warp(atlas.brain.astype(np.float32), big, 1).sum() == pytest.approx(
        atlas.brain.sum() * 1.1**3, rel=0.03)
    f = anatomy.smooth_field((40, 40, 40), 3.0, 30.0, np.random.default_rng(1))
    assert 0.6 < f.std() < 1.4 and abs(f.mean()) < 0.5
    with pytest.raises(ValueError, match=re.escape("'order' must be one of [0, 1]; got 3")):
        anatomy.warp(atlas.gm, coords, 3)
