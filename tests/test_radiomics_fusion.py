"""Tests for msutils.studies.radiomics_fusion (seed 002 study logic) on tiny hand-made cohorts."""

from __future__ import annotations

import types

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from msutils.data.cohort import ManifestError, load_cohort, write_manifest
from msutils.features.fusion_maps import FusionMapParams, fusion_maps
from msutils.data.leakage import FitLog
from msutils.data.splits import validate_splits
from msutils.studies import radiomics_fusion as RF

TINY_NETS = dict(
    resnext_image_size=32, attention_image_size=32, resnext_epochs=2, attention_epochs=2, resnext_batch_size=4,
    attention_batch_size=4, warmup_iters=1, resnext_size={"stem_channels": 4, "layers": [1, 1, 1, 1], "cardinality": 2},
    attention_size={"down_blocks": [1] * 5, "up_blocks": [1] * 5, "bottleneck_layers": 1, "growth_rate": 2,
                    "first_channels": 4},
    min_lesion_pixels=3, max_slices_per_patient=4, num_threads=1, device="cpu")


# --------------------------------------------------------------------------------------
# tiny cohorts on disk
# --------------------------------------------------------------------------------------
def _scan(rng: np.random.Generator, shape=(20, 24, 9)) -> dict[str, np.ndarray]:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    brain = (x**2 / 0.8**2 + y**2 / 0.85**2 + z**2 / 1.3**2) <= 1
    lesion = ((x - 0.2) ** 2 + (y + 0.1) ** 2 <= 0.3**2) & (np.abs(z) < 0.8) & brain
    flair = np.where(brain, 100 + rng.normal(0, 3, shape), 0.0)
    flair[lesion] += 60
    return {"flair": flair.astype(np.float32), "t1": (brain * 80.0).astype(np.float32),
            "brain_mask": brain.astype(np.uint8), "lesion_mask": lesion.astype(np.uint8)}


def _manifest(root, n: int, *, masks=("brain_mask", "lesion_mask"), seed: int = 0, truth: bool = False):
    """``truth``: add a true lesion mask (``gt_lesion_mask``) = the manifest's lesion plus a lesion it missed."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sub = f"p{i:02d}"
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        row = {"subject_id": sub, "session": "ses-01", "center": "X", "scanner": "unknown", "group": "MS",
               "course": "RR", "age": 40, "sex": "F", "disease_duration": 5, "edss": 2.0, "roi_labels": None}
        arrays = _scan(rng)
        if truth:
            gt = arrays["lesion_mask"].copy()
            gt[4:7, 4:7, 3:6] = 1  # a lesion the rater missed
            arrays["gt_lesion_mask"] = gt
        for col, arr in arrays.items():
            path = folder / f"{col}.nii.gz"
            nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
            row[col] = str(path) if (col in ("t1", "flair", "gt_lesion_mask") or col in masks) else None
        rows.append(row)
    meta = {"name": "tiny", "images": ["t1", "flair"], "masks": list(masks)}
    if truth:
        meta["truth_masks"] = {"gt_lesion_mask": "lesion_mask"}
    return write_manifest(pd.DataFrame(rows), meta, root / "manifest.csv")


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    return load_cohort(_manifest(tmp_path_factory.mktemp("tiny4"), 4))


@pytest.fixture(scope="module")
def truth_cohort(tmp_path_factory):
    return load_cohort(_manifest(tmp_path_factory.mktemp("tiny4gt"), 4, truth=True))


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
def test_fewer_patients_than_folds(tmp_path):
    cohort = load_cohort(_manifest(tmp_path, 2))
    with pytest.raises(ValueError, match=r": 2 patient\(s\) with FLAIR and a lesion mask; 6-fold cross-validation by "
                                         r"patient needs at least 6$"):
        RF.study_patients(cohort, 6)
    assert len(RF.study_patients(cohort, 2)) == 2


def test_no_lesion_masks(tmp_path):
    cohort = load_cohort(_manifest(tmp_path, 3, masks=("brain_mask",)))
    with pytest.raises(ValueError, match=r"the manifest has no lesion masks \(column 'lesion_mask' is missing or "
                                         r"empty\); this study segments lesions on FLAIR against lesion masks"):
        RF.study_patients(cohort, 2)


def test_no_flair(tmp_path):
    # a manifest whose FLAIR column is empty is rejected by the cohort loader, naming the column
    path = _manifest(tmp_path, 3)
    table = pd.read_csv(path)
    table["flair"] = ""
    table.to_csv(path, index=False)
    with pytest.raises(ManifestError, match=r"flair"):
        load_cohort(path)
    # and a cohort table without FLAIR (e.g. built in code) by the study itself, with every problem at once
    fake = types.SimpleNamespace(manifest_path="m.csv", table=pd.DataFrame(
        {"subject_id": ["a"], "session": ["s"], "group": ["MS"], "lesion_mask": [None]}))
    with pytest.raises(ValueError, match=r"^cohort m.csv: the manifest has no FLAIR images \(column 'flair' is missing "
                                         r"or empty\); this study segments lesions on FLAIR against lesion masks; "
                                         r"the manifest has no lesion masks"):
        RF.study_patients(fake, 2)


def test_patient_without_mask_is_named():
    fake = types.SimpleNamespace(manifest_path="m.csv", table=pd.DataFrame(
        {"subject_id": ["a", "b", "c"], "session": ["s"] * 3, "group": ["MS"] * 3, "flair": ["f"] * 3,
         "lesion_mask": ["l", None, "l"]}, index=["a_s", "b_s", "c_s"]))
    with pytest.raises(ValueError, match=r"column 'lesion_mask' is empty for patient scan\(s\) \['b_s'\]$"):
        RF.study_patients(fake, 2)


def test_config_errors():
    with pytest.raises(ValueError, match=r"^'arms' must be distinct names among \['mri', 'mri\+features', 'mri\+cr', "
                                         r"'mri\+re'\]; got \['mri', 'flair'\]$"):
        RF.FusionConfig(arms=("mri", "flair"))
    with pytest.raises(ValueError, match=r"^'val_fraction' must be in \(0, 1\); got 1.0$"):
        RF.FusionConfig(val_fraction=1.0)


# --------------------------------------------------------------------------------------
# folds and slices
# --------------------------------------------------------------------------------------
def test_cv_splits_paper_sizes_and_validation():
    patients = pd.DataFrame({"subject_id": [f"s{i:02d}" for i in range(46)]})
    splits = RF.cv_splits(patients, 6, val_fraction=0.15, seed=3)
    assert sorted(len(s["test"]) for s in splits) == [7, 7, 8, 8, 8, 8]
    assert sorted(sum((s["test"] for s in splits), [])) == sorted(patients["subject_id"])
    for s in splits:
        fit, val = s["inner"][0]["train"], s["inner"][0]["test"]
        assert s["val_unit"] == "patient" and len(val) == round(0.15 * len(s["train"])) == 6
        assert sorted(fit + val) == sorted(s["train"]) and not set(s["test"]) & set(s["train"])
    assert validate_splits(splits) == []
    assert RF.cv_splits(patients, 6, seed=3) == RF.cv_splits(patients, 6, seed=3)
    two = RF.cv_splits(pd.DataFrame({"subject_id": ["a", "b"]}), 2)
    assert [s["val_unit"] for s in two] == ["slices", "slices"] and all("inner" not in s for s in two)
    assert validate_splits(two) == []


def test_select_slices():
    les = np.zeros((4, 4, 12), np.uint8)
    for k, n in {1: 5, 2: 5, 3: 1, 4: 6, 5: 9, 8: 4, 9: 4, 11: 16}.items():
        les[:, :, k].flat[:n] = 1
    # candidates (>= 4 pixels): 1, 2, 4, 5, 8, 9, 11; non-adjacent walk: 1, 4, 8, 11
    assert RF.select_slices(les, min_lesion_pixels=4, gap=2).tolist() == [1, 4, 8, 11]
    assert RF.select_slices(les, min_lesion_pixels=4, gap=1).tolist() == [1, 2, 4, 5, 8, 9, 11]
    assert RF.select_slices(les, min_lesion_pixels=4, gap=3).tolist() == [1, 4, 8, 11]
    assert RF.select_slices(les, min_lesion_pixels=4, gap=1, max_slices=3).tolist() == [1, 5, 11]
    assert RF.select_slices(les, min_lesion_pixels=20).tolist() == []
    assert RF.select_slices(np.moveaxis(les, 2, 0), axis=0, min_lesion_pixels=4).tolist() == [1, 4, 8, 11]


def test_prepare_scan_maps_and_geometry(tiny_cohort, tmp_path):
    cfg = RF.FusionConfig(**TINY_NETS)
    sid = tiny_cohort.scan_ids[0]
    scan = RF.prepare_scan(tiny_cohort, sid, cfg, cache_dir=tmp_path)
    assert scan.brain_source == "manifest" and scan.spacing == (1.0, 1.0)
    assert 0 < len(scan) <= 4 and scan.flair.shape == (len(scan), 20, 24)
    # the maps are those of the normalised native slice
    flair = tiny_cohort.array(sid, "flair")
    brain = tiny_cohort.array(sid, "brain_mask") > 0
    norm = np.where(brain, (flair - flair[brain].min()) / (flair[brain].max() - flair[brain].min()), 0)
    for i, k in enumerate(scan.slices):
        np.testing.assert_allclose(scan.flair[i], norm[:, :, k], atol=1e-6)
        cr, re = fusion_maps(scan.flair[i].astype(np.float64), FusionMapParams())
        np.testing.assert_allclose(scan.cr[i], cr, atol=1e-4)
        np.testing.assert_allclose(scan.re[i], re, atol=1e-4)
        assert scan.lesion[i].sum() >= 3
    assert len(list(tmp_path.glob("*.npz"))) == 1  # one cache entry per scan
    assert scan.lesion_gt is None  # a cohort without truth columns
    assert RF.rater_vs_truth([scan]).empty


def test_prepare_scan_reads_the_true_lesions(truth_cohort, tmp_path):
    cfg = RF.FusionConfig(**TINY_NETS)
    sid = truth_cohort.scan_ids[0]
    scan = RF.prepare_scan(truth_cohort, sid, cfg, cache_dir=tmp_path)
    gt = truth_cohort.array(sid, "gt_lesion_mask") > 0
    les = truth_cohort.array(sid, "lesion_mask") > 0
    assert scan.lesion_gt is not None and scan.lesion_gt.shape == scan.lesion.shape
    for i, k in enumerate(scan.slices):
        np.testing.assert_array_equal(scan.lesion_gt[i], gt[:, :, k])
        np.testing.assert_array_equal(scan.lesion[i], les[:, :, k])
    agree = RF.rater_vs_truth([scan])
    assert agree["slice"].tolist() == scan.slices.tolist()
    for i, r in agree.iterrows():  # the rater's mask misses the 3 x 3 blob on slices 3-5: Dice 2 L / (2 L + 9)
        k = int(r["slice"])
        n_les = int(les[:, :, k].sum())
        extra = int((gt[:, :, k] & ~les[:, :, k]).sum())
        assert extra == (9 if 3 <= k <= 5 else 0)
        assert r["dice"] == pytest.approx(2 * n_les / (2 * n_les + extra))
        assert r["precision"] == 1.0 and r["sensitivity"] == pytest.approx(n_les / (n_les + extra))


def test_network_inputs_and_back_to_native():
    rng = np.random.default_rng(0)
    les = np.zeros((2, 10, 6), np.uint8)
    les[0, 2:5, 1:4] = 1
    les[1, 6:9, 3:6] = 1
    chans = rng.random((3, 2, 10, 6)).astype(np.float32)
    scan = RF.FusionScan("a_s", "a", np.array([3, 7]), chans[0], chans[1] * 5, chans[2] + 2, les,
                         np.ones_like(les, bool), "manifest", (1.0, 1.0))
    inp = RF.network_inputs([scan], 20)
    assert inp.x.shape == (2, 3, 20, 20) and inp.y.shape == (2, 20, 20)
    assert np.allclose(inp.x.min(axis=(2, 3)), 0) and np.allclose(inp.x.max(axis=(2, 3)), 1)
    assert inp.table[["slice", "row", "lesion_pixels"]].values.tolist() == [[3, 0, 9], [7, 1, 9]]
    assert inp.channels("mri") == [0] and inp.channels("mri+re") == [0, 2]
    for i in range(2):  # 10 x 6 padded to 10 x 10, up-sampled x2 and back: exact
        np.testing.assert_array_equal(RF.to_native(inp.y[i], (10, 6)), les[i])


def test_minmax_per_slice():
    x = np.array([[[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]]])
    out = RF.minmax_per_slice(x)
    np.testing.assert_allclose(out[0, 0], [[0, 0.5], [0.25, 1]])
    assert np.all(out[0, 1] == 0)  # constant image


def test_sdd_equations():
    curve = [0.0, 0.5, 0.5, 1.0]
    # d = 0.5, 0, 0.5; mean 1/3; deviations 1/6, -1/3, 1/6 -> variance 1/18
    assert RF.sdd(curve) == pytest.approx(np.sqrt(1 / 18), abs=1e-15)
    assert RF.sdd([0.3, 0.3, 0.3]) == 0.0
    assert np.isnan(RF.sdd([0.4]))


# --------------------------------------------------------------------------------------
# one fold end to end (tiny networks) and the statistics
# --------------------------------------------------------------------------------------
def test_run_fold_tiny(truth_cohort, tmp_path):
    cfg = RF.FusionConfig(**TINY_NETS)
    patients = RF.study_patients(truth_cohort, 2)
    splits = RF.cv_splits(patients, 2, seed=0)
    scans = {sid: RF.prepare_scan(truth_cohort, sid, cfg, cache_dir=tmp_path) for sid in patients.index}
    res = RF.run_fold(scans, splits[0], cfg)
    assert res["val_unit"] == "patient" and res["test_subjects"] == splits[0]["test"]
    log = FitLog.from_dict(res["fit_log"])
    assert set(log.steps) == {f"{n}/{a}/{w}" for n in cfg.nets for a in cfg.arms for w in ("weights", "checkpoint")}
    assert not log.all_seen() & set(res["test_subjects"])
    n_test = sum(len(s) for s in scans.values() if s.subject_id in res["test_subjects"])
    for net in cfg.nets:
        for arm in cfg.arms:
            run = res["runs"][net][arm]
            assert len(run["per_slice"]) == n_test == res["n_slices"]["test"]
            assert run["per_slice"][list(RF.METRICS)].apply(lambda c: c.between(0, 1)).all().all()
            assert len(run["history"]["val_dice"]) == 2 and run["best_epoch"] in (1, 2)
            assert run["sdd"] == pytest.approx(0.0)  # two validations: one derivative, SD 0
            assert len(run["examples"]) == min(cfg.n_examples, n_test)
            # beyond the seed: the same prediction against the true lesions
            ps = run["per_slice"].set_index(["scan_id", "slice"])
            for (sid, k), pred in run["examples"].items():
                i = int(np.flatnonzero(scans[sid].slices == k)[0])
                for m, v in RF.slice_metrics(pred, scans[sid].lesion_gt[i]).items():
                    assert ps.at[(sid, k), f"gt_{m}"] == pytest.approx(v)
                for m, v in RF.slice_metrics(pred, scans[sid].lesion[i]).items():
                    assert ps.at[(sid, k), m] == pytest.approx(v)
        in_ch = {a: res["runs"][net][a]["n_parameters"] for a in cfg.arms}
        assert in_ch["mri+features"] > in_ch["mri"]  # only the first convolution differs
    # within-patient validation with a single training patient
    single = {"name": "fold0", "train": [patients["subject_id"].iloc[0]], "test": [patients["subject_id"].iloc[1]],
              "val_unit": "slices"}
    res1 = RF.run_fold(scans, single, RF.FusionConfig(**{**TINY_NETS, "nets": ("attention_unet",)}))
    assert res1["val_unit"] == "slices" and res1["val_subjects"] == []
    assert res1["n_slices"]["fit"] + res1["n_slices"]["val"] == len(scans[patients.index[0]])


def _per_slice() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for f in range(3):
        for s in range(4):
            subj = f"p{f}{s // 2}"
            d = rng.uniform(0.3, 0.7)
            for arm, shift in (("mri", 0.0), ("mri+features", 0.05 + rng.uniform(-0.01, 0.01))):
                rows.append({"fold": f"fold{f}", "net": "resnext_unet", "arm": arm, "scan_id": f"{subj}_s",
                             "subject_id": subj, "slice": s, "lesion_pixels": 10, "dice": d + shift,
                             "precision": d, "sensitivity": d + 2 * shift})
    return pd.DataFrame(rows)


def test_vs_truth_table():
    ps = _per_slice()
    with pytest.raises(ValueError, match="no 'gt_dice' in the per-slice table: the cohort declares no "
                                         "'gt_lesion_mask'"):
        RF.vs_truth_table(ps)
    with pytest.raises(ValueError, match=r"'metric' must be one of \['dice', 'precision', 'sensitivity'\]; got 'iou'"):
        RF.vs_truth_table(ps, "iou")
    ps["gt_dice"] = ps["dice"] - 0.1 * (ps["arm"] == "mri")
    t = RF.vs_truth_table(ps)
    for arm, drop in (("mri", 0.1), ("mri+features", 0.0)):
        folds = ps[ps["arm"] == arm].groupby("fold")["dice"].mean()
        row = t.loc[("resnext_unet", arm)]
        assert row["lesion_mask mean"] == pytest.approx(folds.mean())
        assert row["lesion_mask sd"] == pytest.approx(folds.std(ddof=0))
        assert row["gt_lesion_mask mean"] == pytest.approx(folds.mean() - drop)
        assert row["gt_lesion_mask sd"] == pytest.approx(folds.std(ddof=0))
        assert row["n slices"] == 12


def test_metrics_table_and_dice_by_fold():
    ps = _per_slice()
    t = RF.metrics_table(ps, "resnext_unet")
    folds = ps.groupby(["fold", "arm"])["dice"].mean().unstack()
    assert t.at["dice", "mri mean"] == pytest.approx(folds["mri"].mean())
    assert t.at["dice", "mri+features sd"] == pytest.approx(folds["mri+features"].std(ddof=0))
    pairs = ps.pivot_table(index=["fold", "scan_id", "slice"], columns="arm", values="dice")
    expected = min(1.0, 3 * wilcoxon(pairs["mri+features"], pairs["mri"]).pvalue)
    assert t.at["dice", "p slices"] == pytest.approx(expected)
    by_patient = ps.groupby(["subject_id", "arm"])["sensitivity"].mean().unstack()
    expected = min(1.0, 3 * wilcoxon(by_patient["mri+features"], by_patient["mri"]).pvalue)
    assert t.at["sensitivity", "p patients"] == pytest.approx(expected)
    assert (t.at["dice", "n slices"], t.at["dice", "n patients"]) == (12, 6)
    table2 = RF.dice_by_fold(ps, "resnext_unet")
    assert list(table2.columns) == ["1", "2", "3"] and list(table2.index) == ["mri", "mri+features"]
    assert table2.at["mri", "2"] == pytest.approx(folds.at["fold1", "mri"])
    d = RF.arm_difference(ps, "resnext_unet", "mri+features", n_boot=200)
    diffs = pairs["mri+features"] - pairs["mri"]
    assert d["mean"] == pytest.approx(diffs.mean()) and 0.04 <= d["ci_low"] < d["mean"] < d["ci_high"] <= 0.06
    assert (d["n_slices"], d["n_patients"]) == (12, 6)


def test_paired_wilcoxon_edge_cases():
    assert RF.paired_wilcoxon([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert RF.paired_wilcoxon([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]) == pytest.approx(0.03125)


def test_sdd_table():
    results = {f"fold{k}": {"runs": {"attention_unet": {"mri": {"sdd": 0.2 + k / 100}, "mri+features": {"sdd": 0.1}}}}
               for k in range(6)}
    table, p = RF.sdd_table(results, "attention_unet")
    assert table.shape == (6, 2) and p == pytest.approx(0.03125)  # all six lower: the paper's p = 0.03


def test_inside_outside_effect_sizes():
    les = np.zeros((1, 6, 6), np.uint8)
    les[0, :2] = 1
    brain = np.ones_like(les, bool)
    brain[0, 5] = False
    cr = np.where(les > 0, 2.0, 1.0).astype(np.float32)
    re = np.where(les > 0, 0.5, 1.0).astype(np.float32)
    scan = RF.FusionScan("a_s", "a", np.array([0]), cr, cr, re, les, brain, "manifest", (1.0, 1.0))
    t = RF.inside_outside([scan])
    assert (t.at["cr", "n_inside"], t.at["cr", "n_outside"]) == (12, 18)
    assert t.at["cr", "prob_superiority"] == 1.0 and t.at["cr", "rank_biserial"] == 1.0
    assert t.at["re", "prob_superiority"] == 0.0 and t.at["re", "median_inside"] == 0.5
    samples = RF.map_samples([scan], "cr", n=5)
    assert samples.groupby("where").size().to_dict() == {"inside lesions": 5, "outside lesions": 5}


def test_paper_numbers_are_consistent():
    """Tables 1 / 3 are the mean and population SD of the per-fold Dice of Tables 2 / 4 (to rounding)."""
    p = RF.paper_numbers()
    for summary, folds in (("table1", "table2"), ("table3", "table4")):
        for arm in RF.MAIN_ARMS:
            vals = np.array(p[folds][arm])
            assert p[summary][arm]["dice"]["mean"] == pytest.approx(vals.mean(), abs=0.005)
            assert p[summary][arm]["dice"]["sd"] == pytest.approx(vals.std(ddof=0), abs=0.002)
    assert p["cohort"]["patients"] == sum(p["cohort"]["fold_sizes"]) == 46
