"""Tests for msutils.studies.xai_refinement (seed 004): inputs, split, lesions, maps, refinement, bootstrap."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msutils.data import cohort as C
from msutils.data.cohort import load_cohort
from msutils.data.leakage import FitLog, assert_no_leak
from msutils.studies import xai_refinement as X

SHAPE = (32, 32, 24)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _blob(shape, centre, radius) -> np.ndarray:
    g = np.indices(shape) - np.array(centre).reshape(3, 1, 1, 1)
    return (g ** 2).sum(0) <= radius ** 2


def _write_scan(root: Path, sid: str, ses: str, rng: np.random.Generator, n_lesions: int) -> dict[str, str]:
    brain = _blob(SHAPE, (16, 16, 12), 11)
    flair = np.where(brain, 0.6 + 0.05 * rng.standard_normal(SHAPE), 0.0)
    t1 = np.where(brain, 1.0 + 0.05 * rng.standard_normal(SHAPE), 0.0)
    lesion = np.zeros(SHAPE, bool)
    for _ in range(n_lesions):
        c = rng.integers(8, 24, 3)
        c[2] = rng.integers(6, 18)
        lesion |= _blob(SHAPE, c, rng.uniform(1.0, 2.2)) & brain
    flair[lesion] *= 1.9
    t1[lesion] *= 0.65
    mimic = _blob(SHAPE, rng.integers(9, 23, 3) * [1, 1, 0] + [0, 0, 12], 1.2) & brain & ~lesion
    flair[mimic] *= 1.6  # a lesion look-alike, not in the mask
    out = {}
    for col, data, dtype in (("t1", t1, np.float32), ("flair", flair, np.float32),
                             ("brain_mask", brain, np.uint8), ("lesion_mask", lesion, np.uint8)):
        rel = f"{sid}/{ses}/{col}.nii.gz"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data.astype(dtype), AFFINE), str(root / rel))
        out[col] = rel
    return out


def _manifest(root: Path, n_patients: int = 5, *, groups: list[str] | None = None, masks: tuple = ("brain_mask",
              "lesion_mask"), drop_lesion_cell: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_patients):
        sid = f"sub-{i + 1:03d}"
        group = (groups or ["MS"] * n_patients)[i]
        for ses in (["ses-01", "ses-02"] if i == 0 else ["ses-01"]):
            row = dict(subject_id=sid, session=ses, center="A", scanner="S", group=group,
                       course="RR" if group == "MS" else "NA", age="40", sex="F", disease_duration="",
                       edss="", roi_labels="")
            row.update(_write_scan(root, sid, ses, rng, 4 if group == "MS" else 0))
            if sid == drop_lesion_cell:
                row["lesion_mask"] = ""
            for col in ("brain_mask", "lesion_mask"):
                if col not in masks:
                    row[col] = ""
            rows.append(row)
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(C.REQUIRED_COLUMNS), lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    meta = {"name": "tiny-xai", "description": "test", "images": ["t1", "flair"], "masks": list(masks),
            "roi_labels": {}, "roi_sets": {}}
    (root / "manifest.yaml").write_text(yaml.safe_dump(meta))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("xai")
    return load_cohort(_manifest(root))


def _cfg(**kw) -> X.XaiConfig:
    base = dict(channels=(4, 8), strides=(2,), patch_size=16, batch_size=2, iterations=30, val_every=10,
                n_samples=2, max_fn_maps=2, n_tn=2, n_sum_compare=1, n_boot=50, val_size=0.2, test_size=0.2,
                device="cpu")
    base.update(kw)
    return X.XaiConfig(**base)


# --------------------------------------------------------------------------- inputs and split
def test_study_scans_keeps_every_visit(tiny):
    scans = X.study_scans(tiny)
    assert len(scans) == 6 and scans["subject_id"].nunique() == 5
    assert list(scans.loc[scans["subject_id"] == "sub-001", "session"]) == ["ses-01", "ses-02"]


def test_bad_manifests_fail_at_the_start(tmp_path):
    no_mask = load_cohort(_manifest(tmp_path / "a", 3, masks=("brain_mask",)))
    with pytest.raises(ValueError, match=r"cannot be used for seed 004 \(needs FLAIR, T1 and lesion masks of MS "
                                         r"patients\): the sidecar does not list 'lesion_mask' under 'masks'; "
                                         r"column 'lesion_mask' is empty for MS scan\(s\)"):
        X.study_scans(no_mask)
    with pytest.raises(C.ManifestError, match=r"row 3 \(sub-002/ses-01\): column 'lesion_mask': empty"):
        load_cohort(_manifest(tmp_path / "b", 3, drop_lesion_cell="sub-002"))  # the manifest check names the row
    hc = load_cohort(_manifest(tmp_path / "c", 2, groups=["HC", "HC"]))
    with pytest.raises(ValueError, match=r"no MS patient \(column 'group'\)"):
        X.study_scans(hc)
    one = load_cohort(_manifest(tmp_path / "d", 2, groups=["MS", "HC"]))
    with pytest.raises(ValueError, match="seed 004 needs at least 2 MS patients \\(1 training \\+ 1 test\\); the "
                                         "cohort has 1"):
        X.split_patients(X.study_scans(one))


def test_manifest_without_flair_is_rejected(tmp_path):
    path = _manifest(tmp_path, 2)
    rows = list(csv.DictReader(open(path)))
    cols = [c for c in rows[0] if c != "flair"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(C.ManifestError, match="flair"):
        load_cohort(path)


def test_split_by_patient_and_sets(tiny, tmp_path):
    scans = X.study_scans(tiny)
    split = X.split_patients(scans, val_size=0.2, test_size=0.2, seed=3)
    sets = X.split_sets(split)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    assert sorted(sets["train"] + sets["val"] + sets["test"]) == [f"sub-{i:03d}" for i in range(1, 6)]
    assert split["train"] == sorted(sets["train"] + sets["val"])
    assert X.split_patients(scans, seed=3) == X.split_patients(scans, seed=3)
    from msutils.data.splits import validate_splits

    assert validate_splits([split]) == []
    saved = X.load_or_create_split(tmp_path, scans, "ab" * 32, val_size=0.2, test_size=0.2, seed=3)
    assert {k: saved[k] for k in ("train", "test", "inner")} == {k: split[k] for k in ("train", "test", "inner")}
    assert len(list(tmp_path.glob("splits_abababababab_seed004_val0.2_test0.2_seed3.json"))) == 1
    assert X.load_or_create_split(tmp_path, scans, "ab" * 32, val_size=0.2, test_size=0.2, seed=3) == saved
    two = X.split_patients(scans[scans["subject_id"].isin(["sub-001", "sub-002"])], val_size=0.2, test_size=0.2)
    assert X.split_sets(two)["val"] == [] and len(two["test"]) == 1 and "inner" not in two


def test_config_validation():
    with pytest.raises(ValueError, match=r"'threshold' must be in \(0.0, 1.0\); got 1.5"):
        X.XaiConfig(threshold=1.5)
    with pytest.raises(ValueError, match="'patch_size' must be a multiple of the total stride 4; got 30"):
        X.XaiConfig(patch_size=30)
    with pytest.raises(ValueError, match=r"'strides' must hold len\(channels\) - 1 = 2 positive integers"):
        X.XaiConfig(strides=(2,))
    with pytest.raises(ValueError, match=r"'noise' must be one of \['range', 'absolute'\]; got 'x'"):
        X.XaiConfig(noise="x")
    with pytest.raises(ValueError, match=r"'connectivity' must be one of \[6, 18, 26\]; got 8"):
        X.XaiConfig(connectivity=8)
    cfg = X.XaiConfig.from_params({"channels": [4, 8, 16], "profile": "smoke", "threshold": 0.4})
    assert cfg.channels == (4, 8, 16) and cfg.threshold == 0.4 and cfg.multiple == 4


# --------------------------------------------------------------------------- images and lesions
def test_load_scan_zscores_inside_the_brain(tiny):
    scan = X.load_scan(tiny, "sub-002_ses-01")
    assert scan.image.shape == (2,) + SHAPE and scan.spacing == (2.0, 2.0, 2.0) and scan.brain_source == "manifest"
    for c in range(2):
        v = scan.image[c][scan.brain]
        assert abs(v.mean()) < 1e-5 and v.std() == pytest.approx(1.0, abs=1e-4)
        assert not scan.image[c][~scan.brain].any()
    half = X.load_scan(tiny, "sub-002_ses-01", voxel_mm=4.0)
    assert half.image.shape == (2, 16, 16, 12) and half.spacing == (4.0, 4.0, 4.0)
    assert 0.5 < half.truth.sum() * 8 / max(scan.truth.sum(), 1) < 2.0


def test_find_lesions_rules_and_empty_prediction(tiny):
    scan = X.load_scan(tiny, "sub-003_ses-01")
    cfg = X.XaiConfig()
    prob = np.zeros(SHAPE, np.float32)
    empty = X.find_lesions(prob, scan, cfg)
    assert empty.pred.empty and empty.metrics["tp"] == 0 and empty.metrics["fp"] == 0
    assert empty.metrics["fn"] == empty.metrics["n_truth"] > 0
    assert empty.metrics["reason"] == "no predicted lesion (probability > 0.3 in a component of >= 1 voxels)"
    # a prediction = the truth plus one isolated false-positive voxel
    prob[scan.truth] = 0.9
    fp_at = tuple(np.argwhere(scan.brain & ~scan.truth)[0])
    prob[fp_at] = 0.31
    res = X.find_lesions(prob, scan, cfg)
    assert res.metrics["fp"] == 1 and res.metrics["fn"] == 0 and res.metrics["tp"] == res.metrics["n_truth"]
    assert res.metrics["reason"] is None
    fp = res.pred[res.pred["outcome"] == "FP"].iloc[0]
    assert fp["voxels"] == 1 and fp["volume_mm3"] == 8.0 and fp["prob_max"] == pytest.approx(0.31)
    assert res.metrics["dice"] == pytest.approx(2 * scan.truth.sum() / (2 * scan.truth.sum() + 1))
    # > 5 mm3: at 2 mm a single voxel counts; at 1 mm the seed drops <= 5 voxels
    assert X._min_voxels(5.0, 8.0) == 1 and X._min_voxels(5.0, 1.0) == 6
    # raising the threshold above 0.31 removes the FP only
    curve = X.threshold_counts(prob, scan, cfg, [0.3, 0.5])
    assert list(curve["fp"]) == [1, 0] and list(curve["fn"]) == [0, 0]


def test_tn_spheres_stay_clear(tiny):
    scan = X.load_scan(tiny, "sub-002_ses-01")
    spheres = X.tn_spheres(scan, scan.truth, 3, 7.0, np.random.default_rng(0))
    ids = [i for i in np.unique(spheres) if i > 0]
    assert ids == [1, 2, 3]
    assert not (spheres > 0)[scan.truth].any() and scan.brain[spheres > 0].all()
    sizes = np.bincount(spheres.ravel())[1:]
    assert (sizes == sizes[0]).all() and 5 <= sizes[0] <= 19
    again = X.tn_spheres(scan, scan.truth, 3, 7.0, np.random.default_rng(0))
    np.testing.assert_array_equal(spheres, again)


def test_fp_zone():
    zones = np.zeros((9, 9, 9), np.int32)
    brain = np.ones((9, 9, 9), bool)
    zones[:, :, :] = 9  # white matter
    les = np.zeros_like(brain)
    les[4, 4, 4] = True
    assert X.fp_zone(les, zones, brain) == "deep WM"
    zones[4, 4, 5] = 0
    assert X.fp_zone(les, zones, brain) == "periventricular"
    zones[3, 3, 3] = 2
    assert X.fp_zone(les, zones, brain) == "deep GM"
    zones[5, 5, 5] = 105
    assert X.fp_zone(les, zones, brain) == "juxtacortical"
    assert X.fp_zone(les, None, brain) == "unknown"


def test_select_subset_caps_fp_first():
    rows = [("a", i, "TP") for i in range(1, 41)] + [("b", i, "FP") for i in range(1, 6)]
    assert X.select_subset(rows, None, np.random.default_rng(0)) == rows
    assert X.select_subset(rows, 100, np.random.default_rng(0)) == rows
    picked = X.select_subset(rows, 20, np.random.default_rng(0))
    assert len(picked) == 20 and sum(r[2] == "FP" for r in picked) == 5  # all 5 FP, 15 TP
    assert picked == sorted(picked, key=rows.index)
    many_fp = [("a", i, "TP") for i in range(1, 6)] + [("b", i, "FP") for i in range(1, 41)]
    picked = X.select_subset(many_fp, 20, np.random.default_rng(1))
    assert sum(r[2] == "FP" for r in picked) == 15 and len(picked) == 20  # the TP side is short: FP fill up
    assert picked == X.select_subset(many_fp, 20, np.random.default_rng(1))


def test_truth_columns_and_fp_kinds(tmp_path):
    """A cohort with rater-like masks: the true lesion mask and the look-alike kind map are read when present."""
    path = _manifest(tmp_path, 2)
    rows = list(csv.DictReader(open(path)))
    for row in rows:
        d = tmp_path / row["subject_id"] / row["session"]
        lesion = nib.load(str(d / "lesion_mask.nii.gz")).get_fdata() > 0
        flair = nib.load(str(d / "flair.nii.gz")).get_fdata()
        gt = lesion.copy()
        gt[15:18, 15:18, 11:14] = True  # a true lesion the rater missed
        la = np.zeros(SHAPE, np.int16)
        la[(flair > 0.6 * 1.45) & ~lesion] = 2  # the bright look-alike blob: punctate WMH
        for col, data in (("gt_lesion_mask", gt.astype(np.uint8)), ("gt_lookalike_labels", la)):
            nib.save(nib.Nifti1Image(data, AFFINE), str(d / f"{col}.nii.gz"))
            row[col] = f"{row['subject_id']}/{row['session']}/{col}.nii.gz"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    meta = yaml.safe_load((tmp_path / "manifest.yaml").read_text())
    meta["images"] = ["t1", "flair", "gt_lesion_mask", "gt_lookalike_labels"]
    meta["synthetic"] = {"ground_truth": {"lookalike_kinds": {1: "periventricular_cap", 2: "punctate_wmh"}}}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(meta))
    cohort = load_cohort(path)
    assert X.lookalike_kinds(cohort) == {1: "periventricular_cap", 2: "punctate_wmh"}
    scan = X.load_scan(cohort, "sub-002_ses-01")
    assert scan.truth_gt is not None and scan.truth_gt.sum() > scan.truth.sum()
    assert scan.lookalikes is not None and (scan.lookalikes == 2).any()
    # the rater's mask against the truth: the missed lesion is an FN only against the truth
    prob = np.where(scan.truth, 0.9, 0.0).astype(np.float32)
    rater = X.find_lesions(prob, scan, X.XaiConfig()).metrics
    true = X.find_lesions(prob, scan, X.XaiConfig(), truth=scan.truth_gt).metrics
    assert rater["fn"] == 0 and true["fn"] == 1 and true["dice"] < rater["dice"] == 1.0
    n_rater, n_true = int(scan.truth.sum()), int(scan.truth_gt.sum())
    assert (rater["pred_voxels"], rater["truth_voxels"], rater["overlap_voxels"]) == (n_rater, n_rater, n_rater)
    assert (true["pred_voxels"], true["truth_voxels"], true["overlap_voxels"]) == (n_rater, n_true, n_rater)
    assert true["dice"] == pytest.approx(2 * n_rater / (n_rater + n_true))
    on = np.zeros(SHAPE, bool)
    on[tuple(np.argwhere(scan.lookalikes == 2)[0])] = True
    off = np.zeros(SHAPE, bool)
    off[2, 2, 2] = True
    missed = np.zeros(SHAPE, bool)
    missed[16, 16, 12] = True  # inside the true lesion the rater missed
    kinds = X.lookalike_kinds(cohort)
    assert X.fp_kind(on, scan.lookalikes, kinds) == "punctate_wmh"
    assert X.fp_kind(off, scan.lookalikes, kinds) == X.FP_NOTHING
    assert X.fp_kind(on, None, kinds) is None
    # a true lesion wins over a look-alike; truth alone (no look-alike map) still classifies
    assert X.fp_kind(missed | on, scan.lookalikes, kinds, truth=scan.truth_gt) == X.FP_TRUE_LESION
    assert X.fp_kind(on, scan.lookalikes, kinds, truth=scan.truth_gt) == "punctate_wmh"
    assert X.fp_kind(missed, None, kinds, truth=scan.truth_gt) == X.FP_TRUE_LESION
    assert X.fp_kind(off, None, kinds, truth=scan.truth_gt) == X.FP_NOTHING
    half = X.load_scan(cohort, "sub-002_ses-01", voxel_mm=4.0)
    assert half.lookalikes.shape == half.truth.shape and set(np.unique(half.lookalikes)) <= {0, 2}


# --------------------------------------------------------------------------- maps and radiomics
def test_map_record_statistics_and_zscore():
    from msutils.segmentation.saliency import SaliencyMap

    shape = (20, 20, 20)
    labels = np.zeros(shape, np.int32)
    labels[9:11, 9:11, 9:11] = 1
    rng = np.random.default_rng(0)
    win = (slice(4, 16), slice(4, 16), slice(4, 16))
    vals = rng.standard_normal((12, 12, 12)).astype(np.float32)
    smap = SaliencyMap(label=1, values=vals, window=win, n_voxels=8, n_samples=1, method="max")
    cfg = X.XaiConfig(bin_width=0.5)
    stats, feats = X.map_record(smap, labels, shape, (1.0, 1.0, 1.0), cfg)
    full = smap.full(shape)
    roi = np.zeros(shape, bool)
    roi[7:13, 7:13, 7:13] = True  # 2 voxels around the 2x2x2 lesion: the 5x5x5 cube
    assert stats["roi_voxels"] == 216
    assert stats["max"] == pytest.approx(full[roi].max()) and stats["min"] == pytest.approx(full[roi].min())
    assert stats["mean"] == pytest.approx(full[roi].mean(), rel=1e-5)
    assert stats["z_mean"] == pytest.approx(full.mean(), rel=1e-6) and stats["z_sd"] == pytest.approx(full.std(), rel=1e-6)
    z = (full - full.mean()) / full.std()
    assert stats["n_bins"] == int(np.floor(z[roi].max() / 0.5) - np.floor(z[roi].min() / 0.5) + 1)
    assert len(feats) == 93 and stats["feats_reason"] is None
    assert feats["firstorder__Mean"] == pytest.approx(z[roi].mean(), rel=1e-5)
    assert feats["firstorder__Maximum"] == pytest.approx(z[roi].max(), rel=1e-5)


# --------------------------------------------------------------------------- refinement and bootstrap
def _lesion_table(rng: np.random.Generator, n_s: int = 80, n_test: int = 40) -> pd.DataFrame:
    rows = []
    for set_name, n in (("S", n_s), ("test", n_test)):
        for i in range(n):
            tp = rng.random() < 0.6
            rows.append({"set": set_name, "scan_id": f"{set_name}{i % 5}", "subject_id": f"{set_name}-p{i % 5}",
                         "lesion_id": i, "outcome": "TP" if tp else "FP",
                         "firstorder__Mean": rng.normal(1.0 if tp else -1.0, 1.0),
                         "glcm__Idn": rng.normal(0, 1), "firstorder__Constant": 3.0,
                         "min": rng.normal(-1, 1), "max": rng.normal(2 if tp else 1, 1), "mean": rng.normal(0, 1)})
    return pd.DataFrame(rows)


def test_refiner_fits_on_s_only_with_proportion_weights():
    t = _lesion_table(np.random.default_rng(0))
    log = FitLog()
    ref = X.fit_refiner(t, X.feature_columns(t), X.XaiConfig(), fit_log=log)
    s = t[t["set"] == "S"]
    n_tp = int((s["outcome"] == "TP").sum())
    assert ref.class_weight == {0: pytest.approx(1 - n_tp / len(s)), 1: pytest.approx(n_tp / len(s))}
    assert ref.dropped == ["firstorder__Constant"] and ref.features == ["firstorder__Mean", "glcm__Idn"]
    scaler = ref.model[1]
    np.testing.assert_allclose(scaler.mean_, s[ref.features].mean().to_numpy())  # fitted on S, not on test
    assert_no_leak(log, sorted(t.loc[t["set"] == "test", "subject_id"].unique()))
    p = ref.predict_proba(t[t["set"] == "test"])
    truth = (t.loc[t["set"] == "test", "outcome"] == "TP").to_numpy()
    assert p[truth].mean() > p[~truth].mean() + 0.2
    imp = X.feature_importance(ref)
    assert imp["normalized"].abs().max() == pytest.approx(1.0)
    assert imp.iloc[0]["feature"] == "firstorder__Mean" and imp.iloc[0]["sign"] == "positive"
    with pytest.raises(ValueError, match="the training subset S needs TP and FP lesions to fit the refiner; got 0 TP"):
        X.fit_refiner(t.assign(outcome="FP"), ["firstorder__Mean"], X.XaiConfig())


def test_refine_counts_and_bootstrap():
    lesions = pd.DataFrame({"scan_id": ["a", "a", "a", "b", "b"], "subject_id": ["p1", "p1", "p1", "p2", "p2"],
                            "outcome": ["TP", "TP", "FP", "TP", "FP"]})
    scans = pd.DataFrame({"scan_id": ["a", "b", "c", "v"], "subject_id": ["p1", "p2", "p3", "p9"],
                          "set": ["test", "test", "test", "val"], "tp": [2, 1, 0, 5], "fp": [1, 1, 0, 0],
                          "fn": [1, 0, 2, 0], "reason": [None, None, "no predicted lesion", None]})
    keep = np.array([True, False, False, True, True])
    per = X.refine(lesions, keep, scans)
    assert list(per["scan_id"]) == ["a", "b", "c"]
    assert list(per["tp_after"]) == [1, 1, 0] and list(per["fp_after"]) == [0, 1, 0]
    assert list(per["fn_after"]) == [2, 0, 2] and per.loc[2, "reason"] == "no predicted lesion"
    before = X.detection_metrics(per["tp"].sum(), per["fp"].sum(), per["fn"].sum())
    after = X.detection_metrics(per["tp_after"].sum(), per["fp_after"].sum(), per["fn_after"].sum())
    assert before == {"tp": 3, "fp": 2, "fn": 3, "f1": pytest.approx(6 / 11), "ppv": pytest.approx(0.6)}
    assert after["f1"] == pytest.approx(4 / 9) and after["ppv"] == pytest.approx(2 / 3)
    # the paper's Table 1 follows the same formula
    assert X.detection_metrics(3050, 1818, 789)["f1"] == pytest.approx(0.7006, abs=5e-5)
    assert X.detection_metrics(2732, 763, 1107)["ppv"] == pytest.approx(0.7817, abs=5e-5)
    bp = X.bootstrap_detection(per, by="patient", n_boot=200, seed=1)
    assert bp["f1"]["estimate"] == pytest.approx(after["f1"]) and bp["f1"]["n_units"] == 3
    assert bp["f1"]["low"] <= bp["f1"]["estimate"] <= bp["f1"]["high"]
    truth = pd.DataFrame({"outcome": ["TP", "FN", "FN", "FN"]})
    bl = X.bootstrap_detection(per, by="lesion", test_lesions=lesions, keep=keep, test_truth=truth, n_boot=200)
    assert bl["ppv"]["estimate"] == pytest.approx(2 / 3) and bl["ppv"]["n_units"] == 8
    assert bl["f1"]["estimate"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 4))  # 1 rejected TP + 3 missed = 4 FN
    with pytest.raises(ValueError, match=r"'by' must be one of \['patient', 'lesion'\]; got 'scan'"):
        X.bootstrap_detection(per, by="scan")


def test_fp_kind_table_counts():
    fps = pd.DataFrame({"fp_kind": ["punctate_wmh", "punctate_wmh", X.FP_NOTHING, X.FP_TRUE_LESION,
                                    "punctate_wmh", "flow_artefact"],
                        "voxels": [2, 4, 10, 6, 8, 3]})
    keep = np.array([False, True, False, True, False, False])
    t = X.fp_kind_table(fps, keep)
    assert list(t.index) == ["punctate_wmh", "flow_artefact", X.FP_NOTHING, X.FP_TRUE_LESION, "total"]
    assert list(t["FPs (U-Net)"]) == [3, 1, 1, 1, 6]
    assert list(t["removed"]) == [2, 1, 1, 0, 4]
    assert list(t["FPs after refinement"]) == [1, 0, 0, 1, 2]
    assert t["removed (%)"].tolist() == pytest.approx([200 / 3, 100.0, 100.0, 0.0, 200 / 3])
    assert t.loc["punctate_wmh", "median voxels"] == 4 and t.loc["total", "median voxels"] == 5
    two = X.fp_kind_table(fps.assign(fp_zone=["deep WM"] * 3 + ["juxtacortical"] * 3), keep,
                          by=["fp_kind", "fp_zone"])
    assert two.loc[("punctate_wmh", "deep WM"), "FPs (U-Net)"] == 2 and len(two) == 6
    empty = X.fp_kind_table(fps.iloc[:0], np.zeros(0, bool))
    assert list(empty.index) == ["total"] and empty.loc["total", "FPs (U-Net)"] == 0
    with pytest.raises(ValueError, match="'keep' has 2 entries for 6 false positives"):
        X.fp_kind_table(fps, keep[:2])
    with pytest.raises(ValueError, match=r"'fp_lesions' has no column\(s\) \['fp_zone'\]"):
        X.fp_kind_table(fps, keep, by=["fp_zone"])


def test_refine_against_truth_and_manifest():
    # scan a: 3 predicted lesions (rater: TP, TP, FP); against the truth: TP, FP (a rater false-positive
    # blob), TP (a true lesion the rater missed); scan b: 1 prediction, a TP both ways; c: nothing predicted
    lesions = pd.DataFrame({"scan_id": ["a", "a", "a", "b"], "subject_id": ["p1"] * 3 + ["p2"],
                            "outcome": ["TP", "TP", "FP", "TP"], "gt_outcome": ["TP", "FP", "TP", "TP"],
                            "voxels": [10, 4, 6, 5], "overlap_voxels": [9, 4, 0, 4],
                            "gt_overlap_voxels": [8, 0, 3, 5]})
    scans = pd.DataFrame({"scan_id": ["a", "b", "c", "v"], "subject_id": ["p1", "p2", "p3", "p9"],
                          "set": ["test", "test", "test", "val"], "reason": [None, None, "none", None],
                          "tp": [2, 1, 0, 9], "fp": [1, 0, 0, 0], "fn": [0, 1, 1, 0],
                          "pred_voxels": [21, 5, 0, 1], "truth_voxels": [14, 9, 3, 1], "overlap_voxels": [13, 4, 0, 1],
                          "gt_tp": [2, 1, 0, 9], "gt_fp": [1, 0, 0, 0], "gt_fn": [1, 0, 2, 0],
                          "gt_pred_voxels": [21, 5, 0, 1], "gt_truth_voxels": [15, 6, 7, 1],
                          "gt_overlap_voxels": [11, 5, 0, 1]})
    keep = np.array([True, False, False, True])  # reject the rater-TP that is a truth-FP and the missed lesion
    per = X.refine_against(lesions, keep, scans)
    assert list(per["scan_id"]) == ["a", "b", "c"]
    assert list(per["tp"]) == [2, 1, 0] and list(per["tp_after"]) == [1, 1, 0]
    assert list(per["fp_after"]) == [0, 0, 0] and list(per["fn_after"]) == [2, 0, 2]
    assert per["dice"].tolist() == pytest.approx([22 / 36, 10 / 11, 0.0])
    # a: 2 (11 - 3) / (21 - 10 + 15) = 16 / 26; one voxel of the mask is in no lesion (below the size rule)
    assert per["dice_after"].tolist() == pytest.approx([16 / 26, 10 / 11, 0.0])
    # against the manifest mask: the counts of refine(), Dice a: 2 (13 - 4) / (21 - 10 + 14) = 18 / 25
    man = X.refine_against(lesions, keep, scans, reference="manifest")
    ref = X.refine(lesions, keep, scans)
    for c in ("tp", "fp", "fn", "tp_after", "fp_after", "fn_after"):
        assert man[c].tolist() == ref[c].tolist(), c
    assert list(man["fp_after"]) == [0, 0, 0] and list(man["fn_after"]) == [1, 1, 1]
    assert man["dice_after"].tolist() == pytest.approx([18 / 25, 8 / 14, 0.0])
    both_empty = X.refine_against(lesions.iloc[:0], np.zeros(0, bool), scans.assign(
        gt_truth_voxels=0, gt_pred_voxels=0, gt_overlap_voxels=0))
    assert both_empty["dice"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"no evaluation against the truth: column\(s\) \['gt_tp'\] missing "
                                         r"\(the cohort has no 'gt_lesion_mask'\)"):
        X.refine_against(lesions, keep, scans.drop(columns="gt_tp"))
    with pytest.raises(ValueError, match="'keep' has 1 entries for 4 lesions"):
        X.refine_against(lesions, keep[:1], scans)
    with pytest.raises(ValueError, match=r"'reference' must be one of \['truth', 'manifest'\]; got 'rater'"):
        X.refine_against(lesions, keep, scans, reference="rater")


def test_choose_threshold_on_validation_only():
    curves = pd.DataFrame({
        "scan_id": ["v1", "v1", "v2", "v2", "t1", "t1"], "subject_id": ["a", "a", "b", "b", "c", "c"],
        "threshold": [0.3, 0.5, 0.3, 0.5, 0.3, 0.5], "tp": [5, 4, 3, 3, 1, 9], "fp": [4, 1, 2, 0, 0, 0],
        "fn": [0, 1, 0, 0, 9, 1], "set": ["val", "val", "val", "val", "test", "test"]})
    thr, table = X.choose_threshold(curves)
    # validation: 0.3 -> F1 16 / (16 + 6 + 0) = 0.727; 0.5 -> 14 / (14 + 1 + 1) = 0.875 (the test set prefers 0.5 too,
    # but it is never looked at)
    assert thr == 0.5
    assert table.set_index("threshold").loc[0.3, "f1"] == pytest.approx(16 / 22)
    with pytest.raises(ValueError, match="no threshold counts for set 'val': the threshold baseline needs validation"):
        X.choose_threshold(curves[curves["set"] == "test"])


def test_domain_shift_mann_whitney():
    from scipy.stats import mannwhitneyu

    t = _lesion_table(np.random.default_rng(2))
    t.loc[(t["set"] == "test") & (t["outcome"] == "FP"), "max"] += 3.0  # a shift in FP maxima only
    ds = X.domain_shift(t).set_index(["outcome", "statistic"])
    a = t.loc[(t["set"] == "S") & (t["outcome"] == "FP"), "max"]
    b = t.loc[(t["set"] == "test") & (t["outcome"] == "FP"), "max"]
    assert ds.loc[("FP", "max"), "p"] == pytest.approx(mannwhitneyu(a, b).pvalue)
    assert ds.loc[("FP", "max"), "p"] < 1e-4 < ds.loc[("TP", "max"), "p"]
    assert ds.loc[("TP", "mean"), "n_S"] == int(((t["set"] == "S") & (t["outcome"] == "TP")).sum())


def test_paper_numbers_and_table1():
    from msutils.studies import paper_numbers

    p = paper_numbers.load("004")
    assert p["table1"]["unet"] == {"tp": 3050, "fp": 1818, "fn": 789, "f1": 0.7006, "ppv": 0.6265}
    assert p["table1"]["refined"]["f1_ci"] == [0.7358, 0.7547]
    # the published F1 / PPV follow from the published counts
    for row in ("unet", "refined"):
        c = p["table1"][row]
        m = X.detection_metrics(c["tp"], c["fp"], c["fn"])
        assert m["f1"] == pytest.approx(c["f1"], abs=5e-5) and m["ppv"] == pytest.approx(c["ppv"], abs=5e-5)
    before, after = X.detection_metrics(9, 3, 1), X.detection_metrics(8, 1, 2)
    ci = {"patient_after": {"f1": {"low": 0.8, "high": 0.95}, "ppv": {"low": 0.7, "high": 1.0}},
          "lesion_after": {"f1": {"low": float("nan"), "high": float("nan")}, "ppv": {"low": 0.5, "high": 1.0}}}
    t = X.table1(before, after, ci, p["table1"])
    assert t[("paper", "U-Net + saliency")]["FPs"] == 763
    assert t[("paper", "U-Net + saliency")]["F1 95% CI, lesions resampled (seed)"] == "[0.7358, 0.7547]"
    assert t[("this run", "U-Net only")]["F1 score"] == f"{18 / 22:.4f}"
    assert t[("this run", "U-Net + saliency")]["FNs"] == 2
    assert t[("this run", "U-Net + saliency")]["F1 95% CI, patients resampled"] == "[0.8000, 0.9500]"
    assert t[("this run", "U-Net + saliency")]["F1 95% CI, lesions resampled (seed)"] == "n/a"
    assert t[("this run", "U-Net only")]["PPV 95% CI, patients resampled"] == ""


# --------------------------------------------------------------------------- end to end on the tiny cohort
@pytest.mark.slow
def test_compute_study_end_to_end(tiny):
    cfg = _cfg()
    split = X.split_patients(X.study_scans(tiny), val_size=cfg.val_size, test_size=cfg.test_size, seed=0)
    res = X.compute_study(tiny, split, cfg, thresholds=(0.3, 0.5))
    sets = X.split_sets(split)
    scans = res["scans"]
    assert set(scans["subject_id"]) == set(sets["train"] + sets["val"] + sets["test"])
    assert len(res["history"]) == 3 and np.isfinite(res["history"]["train_loss"]).all()
    L = res["lesions"]
    assert set(L["set"]) <= {"S", "test"}
    test_pred = L[(L["set"] == "test") & L["outcome"].isin(["TP", "FP"])]
    n_test_pred = int(scans.loc[scans["set"] == "test", "n_pred"].sum())
    assert len(test_pred) == n_test_pred  # every test lesion mapped, none capped
    if len(test_pred):
        assert len(X.feature_columns(L)) == 93
        assert (test_pred["max"] >= test_pred["min"]).all()
    assert res["fit_log"]["steps"]["unet"] == sorted(sets["train"])
    assert set(res["threshold_curves"]["set"]) <= {"val", "test"}
    # scans without predicted lesion keep a reason instead of failing
    none = scans[scans["n_pred"] == 0]
    assert none["reason"].str.startswith("no predicted lesion").all()


@pytest.mark.slow
def test_compute_study_with_no_prediction_records_reasons(tiny):
    cfg = _cfg(threshold=0.999999, iterations=2)
    split = X.split_patients(X.study_scans(tiny), val_size=0.2, test_size=0.2, seed=0)
    res = X.compute_study(tiny, split, cfg, thresholds=(0.5,))
    assert (res["scans"]["n_pred"] == 0).all()
    assert res["scans"]["reason"].notna().all()
    assert res["lesions"].empty or set(res["lesions"]["outcome"]) <= {"FN", "TN"}
    with pytest.raises(ValueError, match="the training subset S needs TP and FP lesions"):
        X.fit_refiner(res["lesions"].assign(set="S") if len(res["lesions"]) else
                      pd.DataFrame({"set": [], "outcome": [], "subject_id": []}), [], cfg)
