"""Unit tests of msutils.studies.flair_nnunet (seed 003 study steps) and msutils.core.io.file_lock.

A tiny on-disk cohort (8 MS patients in centers A/B, one healthy control, 1 of
them with two sessions; 20 x 24 x 12 voxels) exercises the split, the slice
preprocessing, the training pool with its augmented copies, the evaluated
test slices and the evaluation with hand-made predictions. nnU-Net itself
(export, planning, training, prediction) runs in tests/test_notebook_03.py.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from msutils.core.device import resolve_device
from msutils.segmentation.slices import brain_mask_for, pad_to_square
from msutils.studies import flair_nnunet as S
from msutils.segmentation import slice_classification as SC
from msutils.data.cohort import load_cohort, write_manifest
from msutils.data.splits import internal_external_cv, load_or_create_internal_external_cv, resolve_centers
from msutils.core.io import file_lock
from msutils.segmentation.metrics import classification_metrics

SHAPE = (20, 24, 12)  # x, y, z (z = axial)
ZOOMS = (2.0, 2.0, 3.0)


def _volume(rng: np.random.Generator, lesions: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, ...]:
    """FLAIR (brain ellipsoid + bright lesions + noise outside), brain mask, lesion mask."""
    x, y, z = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = ((x - 9.5) / 8) ** 2 + ((y - 11.5) / 10) ** 2 + ((z - 5.5) / 5) ** 2 < 1
    lesion = np.zeros(SHAPE, bool)
    for cx, cy, cz, r in lesions:
        lesion |= ((x - cx) ** 2 + (y - cy) ** 2 < r * r) & (z == cz) & brain
    flair = np.where(brain, 100 + rng.normal(0, 2, SHAPE), rng.uniform(1, 5, SHAPE))
    flair = np.where(lesion, 200.0, flair).astype(np.float32)
    return flair, brain.astype(np.uint8), lesion.astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("segcohort")
    rng = np.random.default_rng(0)
    affine = np.diag([*ZOOMS, 1.0])
    rows = []
    # (subject, center, group, session, lesions (x, y, z, radius), brain mask in the manifest)
    subjects = [(f"ms{i:02d}", "A", "MS", [(9, 11, 4, 3), (9, 11, 6, 3), (12, 8, 5, 2)], True) for i in range(6)]
    subjects += [(f"ms{i:02d}", "B", "MS", [(9, 11, 5, 3)], False) for i in (6, 7)]
    subjects += [("hc00", "A", "HC", [], True)]
    for subject, center, group, lesions, with_brain in subjects:
        sessions = ["ses-01", "ses-02"] if subject == "ms00" else ["ses-01"]
        for ses in sessions:
            flair, brain, lesion = _volume(rng, lesions)
            if not with_brain:  # an already skull-stripped image without a brain mask
                flair = np.where(brain > 0, flair, 0.0).astype(np.float32)
            folder = root / subject / ses
            folder.mkdir(parents=True)
            for name, arr in (("flair", flair), ("t1", flair), ("brain_mask", brain), ("lesion_mask", lesion)):
                nib.save(nib.Nifti1Image(arr, affine), folder / f"{name}.nii.gz")
            rows.append({
                "subject_id": subject, "session": ses, "center": center, "scanner": f"scanner-{center}",
                "group": group, "course": "RR" if group == "MS" else "NA", "age": 40, "sex": "F",
                "disease_duration": 5 if group == "MS" else None, "edss": 2.0 if group == "MS" else None,
                "t1": f"{subject}/{ses}/t1.nii.gz", "flair": f"{subject}/{ses}/flair.nii.gz",
                "brain_mask": f"{subject}/{ses}/brain_mask.nii.gz",
                "lesion_mask": f"{subject}/{ses}/lesion_mask.nii.gz", "roi_labels": "",
            })
    meta = {"name": "seg-toy", "description": "test cohort", "images": ["t1", "flair"],
            "masks": ["brain_mask", "lesion_mask"], "roi_labels": {}, "roi_sets": {}}
    path = write_manifest(pd.DataFrame(rows), meta, root / "manifest.csv")
    return load_cohort(path)


CFG = S.SegConfig(image_size=12, n_aug_copies=2, seed=0)


# --------------------------------------------------------------------------- io.file_lock
def _hold_lock(path: str, log: str) -> None:
    with file_lock(path):
        Path(log).write_text("child in\n")
        time.sleep(0.6)
        with open(log, "a") as fh:
            fh.write("child out\n")


def test_file_lock_excludes_other_processes(tmp_path):
    lock = tmp_path / "sub" / ".x.lock"  # parent folder created on demand
    log = tmp_path / "log.txt"
    proc = multiprocessing.get_context("fork").Process(target=_hold_lock, args=(str(lock), str(log)))
    proc.start()
    deadline = time.time() + 20
    while not log.exists() and time.time() < deadline:
        time.sleep(0.01)
    with file_lock(lock) as got:
        text = log.read_text()  # the child released the lock only after writing "child out"
    proc.join(10)
    assert got == lock and lock.is_file()
    assert text == "child in\nchild out\n"
    with file_lock(lock):  # reusable once released, also after an error inside the block
        pass
    with pytest.raises(RuntimeError, match="boom"), file_lock(lock):
        raise RuntimeError("boom")
    with file_lock(lock):
        pass


# --------------------------------------------------------------------------- config
def test_config_validation_messages():
    with pytest.raises(ValueError, match=r"'image_size' must be an integer >= 8; got 4"):
        S.SegConfig(image_size=4)
    with pytest.raises(ValueError, match=r"'brain_source' must be one of \['auto', 'manifest', 'nonzero', "
                                         r"'estimate'\]; got 'bet'"):
        S.SegConfig(brain_source="bet")
    with pytest.raises(ValueError, match=r"'device' must be one of \['auto', 'cpu', 'cuda'\]; got 'gpu'"):
        S.SegConfig(device="gpu")
    with pytest.raises(ValueError, match=r"'n_stages' must be an integer >= 1 or None; got 0"):
        S.SegConfig(n_stages=0)
    with pytest.raises(ValueError, match=r"'overlap_threshold' must be a number in \[0, 1\]; got 1.5"):
        S.SegConfig(overlap_threshold=1.5)
    assert resolve_device("cpu") == "cpu"


def test_fold_index():
    assert S.fold_index("fold3") == (3, "aug")
    assert S.fold_index("fold0-noaug") == (0, "noaug")
    with pytest.raises(ValueError, match="fold names must look like 'fold<k>' or 'fold<k>-noaug'; got 'cv1'"):
        S.fold_index("cv1")


def test_workspace_key_depends_on_data_settings_only(cohort):
    scans = S.study_scans(cohort)
    split = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, seed=0)
    key = S.workspace_key(cohort, split, CFG)
    assert len(key) == 16
    from dataclasses import replace

    assert S.workspace_key(cohort, split, replace(CFG, num_epochs=3, device="cpu", use_mirroring=False)) == key
    assert S.workspace_key(cohort, split, replace(CFG, image_size=16)) != key
    assert S.workspace_key(cohort, split, replace(CFG, n_aug_copies=5)) != key
    other = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, seed=1)
    assert other["train"] != split["train"] and S.workspace_key(cohort, other, CFG) != key


def test_workspace_key_changes_with_the_library(cohort, monkeypatch):
    from msutils.core import fingerprint

    scans = S.study_scans(cohort)
    split = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, seed=0)
    key = S.workspace_key(cohort, split, CFG)
    real = fingerprint.library_fingerprint()
    monkeypatch.setattr(fingerprint, "library_fingerprint", lambda: {**real, "msutils_sources": "edited"})
    assert S.workspace_key(cohort, split, CFG) != key  # a fixed bug: a new workspace, trained again


# --------------------------------------------------------------------------- patients and split
def test_study_scans_ms_first_session(cohort):
    scans = S.study_scans(cohort)
    assert list(scans.index) == [f"ms{i:02d}_ses-01" for i in range(8)]
    assert "hc00_ses-01" not in scans.index


def test_study_scans_requires_lesion_masks(cohort):
    bad = cohort.table.copy()
    bad.loc["ms03_ses-01", "lesion_mask"] = None
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"column 'lesion_mask' is empty for MS scan\(s\) \['ms03_ses-01'\]"):
        S.study_scans(replace(cohort, table=bad))


def test_resolve_centers(cohort):
    scans = S.study_scans(cohort)
    assert resolve_centers(scans) == ("A", ["B"])
    assert resolve_centers(scans, "B") == ("B", ["A"])
    assert resolve_centers(scans, "A", []) == ("A", [])
    with pytest.raises(ValueError, match=r"'internal_center' must be one of \['A', 'B'\]; got 'Z'"):
        resolve_centers(scans, "Z")
    with pytest.raises(ValueError, match=r"'external_centers' must be among \['B'\] \(not the internal center\); "
                                         r"got \['A'\]"):
        resolve_centers(scans, "A", ["A"])
    with pytest.raises(TypeError, match="'external_centers' must be a list of center names; got the string 'B'"):
        resolve_centers(scans, "A", "B")


def test_study_split_subject_folds(cohort):
    scans = S.study_scans(cohort)
    split = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, test_size=0.25, seed=0)
    a = {f"ms{i:02d}" for i in range(6)}
    assert len(split["test"]) == 2 and len(split["train"]) == 4  # ceil(0.25 * 6) = 2 internal test patients
    assert set(split["train"]) | set(split["test"]) == a and not set(split["train"]) & set(split["test"])
    assert split["external"] == ["ms06", "ms07"] and split["unused"] == []
    assert split["fold_unit"] == "subject" and split["internal_center"] == "A"
    vals = [set(f["test"]) for f in split["inner"]]
    assert len(vals) == 2 and vals[0] | vals[1] == set(split["train"]) and not vals[0] & vals[1]
    assert [len(v) for v in vals] == [2, 2]
    # same seed, same split; another seed, another one
    again = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, test_size=0.25,
                                 seed=0)
    assert again == split
    others = [internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, test_size=0.25,
                                   seed=s) for s in (1, 2, 3)]
    assert any(o["test"] != split["test"] for o in others)
    assert any([f["test"] for f in o["inner"]] != [f["test"] for f in split["inner"]] for o in others)


def test_splits_file_is_written_once_and_named_by_design(cohort, tmp_path):
    scans = S.study_scans(cohort)
    h = cohort.content_hash()
    split = load_or_create_internal_external_cv(tmp_path, scans, h, n_folds=2, test_size=0.25, seed=0)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"splits_{h[:12]}_A_B_test0.25_cv2_seed0.json"]
    assert split == internal_external_cv(scans, n_folds=2, test_size=0.25, seed=0)
    mtime = files[0].stat().st_mtime_ns
    assert load_or_create_internal_external_cv(tmp_path, scans, h, internal_center="A", n_folds=2,
                                               test_size=0.25, seed=0) == split
    assert files[0].stat().st_mtime_ns == mtime  # read back, not rewritten
    load_or_create_internal_external_cv(tmp_path, scans, h, external_centers=[], n_folds=2, test_size=0.25)
    assert (tmp_path / f"splits_{h[:12]}_A_none_test0.25_cv2_seed0.json").is_file()


def test_study_split_slab_fallback_and_single_center(cohort):
    scans = S.study_scans(cohort)
    split = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=5, seed=0)
    assert split["fold_unit"] == "slab" and "inner" not in split and len(split["train"]) == 4
    two = scans.loc[["ms06_ses-01", "ms07_ses-01"]]
    one_center = internal_external_cv(two, internal_center="B", external_centers=[], n_folds=2, seed=0)
    assert len(one_center["train"]) == 1 and len(one_center["test"]) == 1
    assert one_center["external"] == [] and one_center["fold_unit"] == "slab"
    with pytest.raises(ValueError, match="the internal center 'B' has 1 subject"):
        internal_external_cv(two.iloc[:1], internal_center="B", n_folds=2)


def test_fold_groups_subject_and_slab():
    cases = pd.DataFrame({
        "case_id": ["a_s001", "a_s001_aug1", "a_s002", "a_s003", "a_s004", "b_s002", "b_s005", "b_s005_aug1"],
        "subject_id": ["a", "a", "a", "a", "a", "b", "b", "b"],
        "slice": [1, 1, 2, 3, 4, 2, 5, 5],
    })
    groups, val = S.fold_groups(cases, {"fold_unit": "subject", "n_folds": 2,
                                        "inner": [{"test": ["b"]}, {"test": ["a"]}]})
    assert val == [["b"], ["a"]] and groups["a_s001_aug1"] == "a" and groups["b_s005"] == "b"
    groups, val = S.fold_groups(cases, {"fold_unit": "slab", "n_folds": 2})
    # a: positions [1, 2, 3, 4] -> blocks [1, 2] | [3, 4]; b: [2, 5] -> [2] | [5]
    assert groups == {"a_s001": "a#slab0", "a_s001_aug1": "a#slab0", "a_s002": "a#slab0", "a_s003": "a#slab1",
                      "a_s004": "a#slab1", "b_s002": "b#slab0", "b_s005": "b#slab1", "b_s005_aug1": "b#slab1"}
    assert val == [["a#slab0", "b#slab0"], ["a#slab1", "b#slab1"]]
    with pytest.raises(ValueError, match="patient 'b' has 2 training slice"):
        S.fold_groups(cases, {"fold_unit": "slab", "n_folds": 3})


# --------------------------------------------------------------------------- slices
def test_pad_to_square():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out, widths = pad_to_square(vol, axis=2)
    assert out.shape == (3, 3, 4) and widths == ((0, 1), (0, 0), (0, 0))
    np.testing.assert_array_equal(out[:2], vol)
    assert not out[2].any()
    out, widths = pad_to_square(np.ones((5, 2, 7)), axis=0)  # in-plane axes 1 and 2 -> 7 x 7
    assert out.shape == (5, 7, 7) and widths == ((0, 0), (2, 3), (0, 0)) and out.sum() == 70
    same, widths = pad_to_square(np.ones((4, 4, 2)))
    assert same.shape == (4, 4, 2) and widths == ((0, 0),) * 3


def _without_brain_masks(cohort, scan_ids):
    from dataclasses import replace

    table = cohort.table.copy()
    table.loc[list(scan_ids), "brain_mask"] = None
    return replace(cohort, table=table)


def test_brain_mask_sources(cohort):
    flair = cohort.array("ms00_ses-01", "flair")
    mask, used = brain_mask_for(cohort, "ms00_ses-01", flair, "auto")
    assert used == "manifest" and mask.sum() == (cohort.array("ms00_ses-01", "brain_mask") > 0).sum()
    cohort = _without_brain_masks(cohort, ["ms06_ses-01"])
    stripped = cohort.array("ms06_ses-01", "flair")  # no brain mask, background exactly 0
    mask, used = brain_mask_for(cohort, "ms06_ses-01", stripped, "auto")
    assert used == "nonzero" and mask.sum() == np.count_nonzero(stripped)
    assert brain_mask_for(cohort, "ms00_ses-01", flair, "estimate") == (None, "estimate")
    noisy = stripped + 1.0  # no zero background, no mask -> the fallback
    assert brain_mask_for(cohort, "ms06_ses-01", noisy, "auto") == (None, "estimate")
    with pytest.raises(ValueError, match="scan 'ms06_ses-01' of .* has no 'brain_mask'"):
        brain_mask_for(cohort, "ms06_ses-01", stripped, "manifest")


def test_scan_slices_geometry_and_entropy(cohort):
    s = S.scan_slices(cohort, "ms00_ses-01", CFG)
    assert s.subject_id == "ms00" and s.center == "A" and s.brain_source == "manifest"
    assert s.stack.images.shape == (12, 12, 12) and len(s.stack) == SHAPE[2]
    # in-plane 20 x 24 padded to 24 x 24 at 2 mm, resized to 12 x 12 -> 4 mm pixels
    assert s.spacing == (4.0, 4.0)
    assert float(s.stack.images.max()) <= 1.0 and float(s.stack.images.min()) >= 0.0
    kept = s.kept(0.01)
    assert list(np.flatnonzero(kept)) == [4, 5, 6]  # the three lesion slices
    p = s.stack.masks[kept].reshape(3, -1).mean(axis=1)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(s.stack.entropy[kept], h)
    neg = s.negatives()  # every lesion-free slice that shows brain (no brain-area rule: the seed has none)
    area = s.stack.brain.reshape(12, -1).sum(axis=1)
    expected = (area > 0) & ~s.stack.masks.reshape(12, -1).any(axis=1)
    np.testing.assert_array_equal(neg, expected)
    assert neg.sum() > 0 and not (neg & kept).any()


def test_training_slices_counts_ids_and_seeding(cohort):
    scans = ["ms01_ses-01", "ms02_ses-01"]
    pool = S.training_slices(cohort, scans, CFG)
    cases = pool.cases
    assert len(cases) == len(pool.images) == len(pool.masks)
    assert list(pool.counts["kept"]) == [3, 3]
    assert list(pool.counts["copies"]) == [6, 6]  # 2 copies x 3 kept slices
    assert (pool.counts["kept"] + pool.counts["excluded_small"] == pool.counts["lesion_slices"]).all()
    assert int((~cases["augmented"]).sum()) == 6 and int(cases["augmented"].sum()) == 12
    assert cases["case_id"].is_unique
    assert "ms01_ses-01_s004" in set(cases["case_id"]) and "ms01_ses-01_s004_aug2" in set(cases["case_id"])
    assert set(cases.loc[cases["augmented"], "copy"]) == {1, 2}
    assert pool.spacing == (4.0, 4.0) and set(np.unique(pool.masks)) <= {0, 1}
    # a scan's copies do not depend on the other scans of the pool (per-scan seeds)
    alone = S.training_slices(cohort, ["ms02_ses-01"], CFG)
    sel = (cases["scan_id"] == "ms02_ses-01").to_numpy()
    np.testing.assert_array_equal(alone.images, pool.images[sel])
    np.testing.assert_array_equal(alone.masks, pool.masks[sel])
    plain = S.training_slices(cohort, scans, CFG, augment=False)
    assert len(plain.cases) == 6 and not plain.cases["augmented"].any()
    np.testing.assert_array_equal(plain.images, pool.images[pool.originals()])


def test_held_out_pool_and_protocols(cohort):
    cohort = _without_brain_masks(cohort, ["ms06_ses-01"])  # skull-stripped, no mask: brain = non-zero voxels
    pool = S.held_out_slices(cohort, ["ms00_ses-01", "ms06_ses-01"], CFG, name="toy")
    t = pool.slices
    assert len(pool) == len(pool.images) == len(pool.masks) and pool.truth is None
    assert cohort.truth_column("lesion_mask") is None
    assert (t["brain_pixels"] > 0).all()  # blank slices (no brain) are not in the pool
    assert list(pool.counts["slices"]) == [12, 12]
    assert list(pool.counts["positives"]) == [3, 1] and list(pool.counts["excluded_small"]) == [0, 0]
    assert pool.counts["brain_source"].to_dict() == {"ms00_ses-01": "manifest", "ms06_ses-01": "nonzero"}
    for sid, grp in t.groupby("scan_id"):
        assert len(grp) == pool.counts.at[sid, "brain_slices"]
        assert int((grp["lesion_pixels"] == 0).sum()) == pool.counts.at[sid, "lesion_free"]
    assert set(t["spacing_r"]) == {4.0} and set(t["spacing_z"]) == {3.0} and (t["truth_pixels"] == -1).all()
    # the seed's protocol: the kept lesion slices and as many lesion-free slices drawn from every brain slice
    idx = S.select_slices(pool, "seed", CFG)
    chosen = t.iloc[idx]
    assert int(chosen["kept"].sum()) == 4 and int((chosen["lesion_pixels"] == 0).sum()) == 4
    eligible = (t["lesion_pixels"] == 0).to_numpy()
    drawn = SC.draw_negatives(eligible, 4, 1.0, seed=CFG.seed)
    np.testing.assert_array_equal(idx, np.sort(np.concatenate([np.flatnonzero(t["kept"].to_numpy()), drawn])))
    assert (chosen.loc[chosen["kept"], "entropy"] >= 0.01).all()
    # every slice
    np.testing.assert_array_equal(S.select_slices(pool, "all", CFG), np.arange(len(pool)))
    with pytest.raises(ValueError, match=r"'protocol' must be one of \['seed', 'all'\]; got 'paper'"):
        S.select_slices(pool, "paper", CFG)
    with pytest.raises(ValueError, match="has no true lesion masks"):
        pool.reference("truth")
    again = S.held_out_slices(cohort, ["ms00_ses-01", "ms06_ses-01"], CFG, name="toy")
    pd.testing.assert_frame_equal(again.slices, t)


def _toy_predictions(pool):
    """Perfect predictions except one missed kept lesion slice and one false alarm on a drawn negative."""
    idx = S.select_slices(pool, "seed", CFG)
    kept = [i for i in idx if pool.slices["kept"].iat[i]]
    neg = [i for i in idx if pool.slices["lesion_pixels"].iat[i] == 0]
    pred = pool.masks.copy()
    pred[kept[0]] = 0  # a missed lesion slice: FN, dice 0, HD95 undefined
    pred[neg[0], 0, 0] = 1  # a false alarm on a negative slice: FP
    return pred


def test_evaluate_known_counts(cohort):
    pool = S.held_out_slices(cohort, ["ms00_ses-01", "ms06_ses-01"], CFG)
    pred = _toy_predictions(pool)
    res = S.evaluate_test_set(pool, pred, CFG, n_boot=200)
    assert (res.protocol, res.reference, res.truth_overlap) == ("seed", "manifest", "instance")
    assert res.slice_metrics == pytest.approx(classification_metrics(tp=3, fp=1, tn=3, fn=1))
    assert res.slice_rules["union"] == res.slice_rules["instance"]  # whole lesions predicted: the rules agree
    assert res.n_patients == 2 and len(res.voxel) == 4 and len(res.slices) == 8
    np.testing.assert_allclose(sorted(res.voxel["dice"]), [0.0, 1.0, 1.0, 1.0])
    assert res.voxel_summary.loc["dice", "mean"] == pytest.approx(0.75)
    assert res.voxel_summary.loc["dice", "n_units"] == 2
    assert res.voxel_summary.loc["hd95", "n"] == 3 and res.voxel_summary.loc["hd95", "mean"] == 0.0
    assert res.patient is None and res.patient_summary is None
    s = res.summary()
    assert s["n_positive_slices"] == 4 and s["n_negative_slices"] == 4
    assert s["voxel_level"]["dice"]["mean"] == pytest.approx(0.75)
    assert set(s["slice_level_by_rule"]) == {"instance", "union"} and s["patient_level"] is None
    # Figs 4-5: only positives change with the threshold; a perfect hit stays TP up to 0.95
    assert list(res.curve["threshold"]) == list(SC.DEFAULT_THRESHOLDS)
    assert (res.curve["tp"] == 3).all() and (res.curve["fp"] == 1).all()
    with pytest.raises(ValueError, match="'preds' shape"):
        S.evaluate_test_set(pool, pred[:-1], CFG)
    # every slice: all lesion slices and all lesion-free brain slices (the same miss and false alarm)
    n_free = int(pool.counts["lesion_free"].sum())
    every = S.evaluate_test_set(pool, pred, CFG, protocol="all", n_boot=200)
    assert every.slice_metrics == pytest.approx(classification_metrics(tp=3, fp=1, tn=n_free - 1, fn=1))
    assert len(every.slices) == len(pool) and len(every.voxel) == 4
    # per patient, whole stack: ms00 lost one of 3 equal lesion slices and has 1 false pixel
    patient = every.patient.set_index("subject_id")
    assert patient.loc["ms06", "dice"] == pytest.approx(1.0)
    tp, fp, fn = (int(patient.loc["ms00", k]) for k in ("tp", "fp", "fn"))
    assert fp == 1 and tp > 0 and fn > 0 and patient.loc["ms00", "dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert every.patient_summary.loc["dice", "mean"] == pytest.approx(patient["dice"].mean())
    # Table 5: counts, exact CIs and bootstrap CIs formatted per test set; an absent set is left out
    t5 = S.table5({"toy": res, "absent": None})
    assert list(t5.columns) == ["toy"]
    m = res.slice_metrics
    assert t5.at["TP / FN / TN / FP", "toy"] == "3 / 1 / 3 / 1"
    assert t5.at["slice sensitivity (%)", "toy"] == (
        f"75.0 ({100 * m['sensitivity_ci_low']:.1f}-{100 * m['sensitivity_ci_high']:.1f})")
    lo, hi = res.voxel_summary.loc["dice", ["ci_low", "ci_high"]]
    assert t5.at["voxel DSC (%)", "toy"] == f"75.0 ({100 * lo:.1f}-{100 * hi:.1f})"
    assert t5.at["voxel HD95 (mm)", "toy"] == "0.0 (0.0-0.0)"
    assert t5.at["slices (HD95 defined) / patients", "toy"] == "4 (3) / 2"
    # the variants side by side
    vt = S.variants_table({"seed protocol": res, "seed protocol, lenient rule": (res, "union"), "all": every,
                           "absent": None})
    assert list(vt.index) == ["seed protocol", "seed protocol, lenient rule", "all"]
    assert vt.at["all", "positive / negative slices"] == f"4 / {n_free}"
    assert vt.at["seed protocol", "TP / FN / TN / FP"] == "3 / 1 / 3 / 1"
    assert vt.at["seed protocol", "DSC per patient, all slices (%)"] == ""
    assert vt.at["all", "DSC per patient, all slices (%)"].startswith(f"{100 * patient['dice'].mean():.1f} (")


def test_evaluation_reports_the_seed_rule_and_the_lenient_rule(cohort):
    """A lesion hit only by small fragments: a miss under the seed's rule, a detection under the lenient one."""
    cfg = replace(CFG, image_size=24)  # 2 mm pixels: a 28-pixel lesion
    pool = S.held_out_slices(cohort, ["ms06_ses-01"], cfg)
    k = int(np.flatnonzero(pool.slices["kept"].to_numpy())[0])
    lesion = np.argwhere(pool.masks[k] > 0)
    assert len(lesion) >= 20
    pred = pool.masks.copy()
    pred[k] = 0
    # isolated single pixels of the lesion (no two 8-connected): each covers < 10 %, together >= 10 %
    picked = []
    for r, c in lesion:
        if all(max(abs(r - r2), abs(c - c2)) > 1 for r2, c2 in picked):
            picked.append((r, c))
    for r, c in picked:
        pred[k, r, c] = 1
    share = len(picked) / len(lesion)
    assert share >= 0.1 and 1 / len(lesion) < 0.1
    seed_rule = S.evaluate_test_set(pool, pred, cfg, n_boot=50)
    assert seed_rule.slice_rules["instance"]["fn"] == 1 and seed_rule.slice_rules["union"]["fn"] == 0
    assert seed_rule.slice_metrics["fn"] == 1
    row = seed_rule.slices.set_index("slice").loc[int(pool.slices["slice"].iat[k])]
    assert (row["outcome_instance"], row["outcome_union"]) == ("FN", "TP")
    lenient = S.evaluate_test_set(pool, pred, replace(cfg, truth_overlap="union"), n_boot=50)
    assert lenient.truth_overlap == "union" and lenient.slice_metrics["fn"] == 0
    with pytest.raises(ValueError, match=r"'truth_overlap' must be one of \['union', 'instance'\]; got 'any'"):
        S.SegConfig(truth_overlap="any")


def test_confidence_intervals_against_reference_computations(cohort):
    """Slice level: exact Clopper-Pearson (scipy); voxel level: a plain loop of the patient bootstrap."""
    from scipy.stats import binomtest

    pool = S.held_out_slices(cohort, ["ms00_ses-01", "ms01_ses-01", "ms06_ses-01", "ms07_ses-01"], CFG)
    pred = pool.masks.copy()
    rng = np.random.default_rng(1)
    pred[rng.random(pred.shape) > 0.97] = 1  # scattered false pixels: per-slice Dice below 1, some FP slices
    ev = S.evaluate_test_set(pool, pred, CFG, n_boot=300)
    m = ev.slice_metrics
    for k, (num, den) in {"sensitivity": ("tp", ("tp", "fn")), "specificity": ("tn", ("tn", "fp")),
                          "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn"))}.items():
        x = sum(m[c] for c in np.atleast_1d(num))
        n = sum(m[c] for c in den)
        ci = binomtest(int(x), int(n)).proportion_ci(0.95, method="exact")
        assert (m[f"{k}_ci_low"], m[f"{k}_ci_high"]) == pytest.approx((ci.low, ci.high)), k
    dice = ev.voxel["dice"].to_numpy()
    units = ev.voxel["subject_id"].to_numpy()
    codes, uniq = pd.factorize(units)  # patients in order of appearance, all slices of a drawn one together
    groups = [np.flatnonzero(codes == i) for i in range(len(uniq))]
    rng = np.random.default_rng(CFG.seed)
    boots = [dice[np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])].mean()
             for _ in range(300)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    assert ev.voxel_summary.loc["dice", ["mean", "ci_low", "ci_high"]].tolist() == pytest.approx([dice.mean(), lo, hi])
    assert ev.voxel_summary.loc["dice", "n_units"] == 4 and lo < dice.mean() < hi


def test_compute_held_out_stores_the_predictions(cohort, tmp_path, monkeypatch):
    calls = []

    def fake_predict(prepared, images, config, *, predictor=None, folds=None):
        calls.append((len(images), tuple(folds)))
        return (images > 0.95).astype(np.uint8)  # the bright lesions of the toy FLAIR

    monkeypatch.setattr(S, "predict_slices", fake_predict)
    res = S.compute_held_out(cohort, ["ms00_ses-01", "ms06_ses-01"], prepared=None, folds=[0, 1], config=CFG,
                             entry_dir=tmp_path, name="toy", n_boot=50)
    pool, preds = S.load_held_out(res, tmp_path)
    assert calls == [(len(pool), (0, 1))]  # every pool slice segmented once
    assert set(res["evaluations"]) == {"seed", "all"}  # no true masks in this cohort
    pd.testing.assert_frame_equal(pool.slices, res["slices"])
    ref = S.held_out_slices(cohort, ["ms00_ses-01", "ms06_ses-01"], CFG, name="toy")
    np.testing.assert_array_equal(pool.images, ref.images)
    np.testing.assert_array_equal(pool.masks, ref.masks)
    np.testing.assert_array_equal(preds, (ref.images > 0.95).astype(np.uint8))
    again = S.evaluate_test_set(pool, preds, CFG, protocol="all", n_boot=50)
    assert again.slice_metrics == res["evaluations"]["all"].slice_metrics
    assert res["folds"] == [0, 1] and set(res["seconds"]) == {"slices", "predict", "evaluate"}


@pytest.fixture(scope="module")
def truth_cohort(cohort):
    """The toy cohort with declared true lesion masks (sidecar ``truth_masks``): on ms00 the rater missed a lesion.

    ms00's truth adds a lesion on axial slice 8, absent from its manifest mask; every other true mask
    equals the manifest's.
    """
    root = Path(cohort.manifest_path).parent
    table = cohort.table.copy()
    paths = []
    for sid in table.index:
        lesion = cohort.array(sid, "lesion_mask").astype(np.uint8)
        if sid == "ms00_ses-01":
            x, y = np.mgrid[: SHAPE[0], : SHAPE[1]]
            lesion[..., 8] |= (((x - 9) ** 2 + (y - 11) ** 2) < 9).astype(np.uint8)
        path = root / f"{sid}_gt_lesion_mask.nii.gz"
        nib.save(nib.Nifti1Image(lesion, cohort.image(sid, "lesion_mask").affine), path)
        paths.append(str(path))
    table[S.TRUTH_COLUMN] = paths
    meta = {k: v for k, v in cohort.meta.items() if k not in ("synthetic",)}
    meta["truth_masks"] = {S.TRUTH_COLUMN: "lesion_mask"}
    return load_cohort(write_manifest(table, meta, root / "manifest_truth.csv"))


def test_evaluation_against_the_true_lesions(truth_cohort, tmp_path, monkeypatch):
    """Beyond the seed: predictions equal to the rater's masks miss the lesion the rater missed."""
    scans = ["ms00_ses-01", "ms06_ses-01"]
    assert truth_cohort.truth_column("lesion_mask") == truth_cohort.truth_column("lesion_mask", scans) == S.TRUTH_COLUMN
    pool = S.held_out_slices(truth_cohort, scans, CFG, name="toy")
    assert pool.truth is not None and pool.truth.shape == pool.masks.shape
    t = pool.slices
    missed = (t["scan_id"] == "ms00_ses-01").to_numpy() & (t["slice"] == 8).to_numpy()
    assert missed.sum() == 1 and t.loc[missed, "lesion_pixels"].item() == 0 and t.loc[missed, "truth_pixels"].item() > 0
    assert (t.loc[~missed, "truth_pixels"] == t.loc[~missed, "lesion_pixels"]).all()
    np.testing.assert_array_equal(pool.reference("truth")[~missed], pool.masks[~missed])
    # every slice against the truth: 5 true lesion slices, the rater-perfect prediction finds 4
    every = S.evaluate_test_set(pool, pool.masks, CFG, protocol="all", reference="truth", n_boot=50)
    n_neg = int((t["truth_pixels"] == 0).sum())
    assert every.reference == "truth"
    for rule in ("instance", "union"):
        assert every.slice_rules[rule] == pytest.approx(classification_metrics(tp=4, fp=0, tn=n_neg, fn=1))
    np.testing.assert_allclose(sorted(every.voxel["dice"]), [0.0, 1.0, 1.0, 1.0, 1.0])
    # against the manifest the same prediction is perfect
    manifest = S.evaluate_test_set(pool, pool.masks, CFG, protocol="all", n_boot=50)
    assert manifest.slice_metrics["fn"] == 0 and manifest.slice_metrics["fp"] == 0

    def fake_predict(prepared, images, config, *, predictor=None, folds=None):
        return pool.masks.copy()

    monkeypatch.setattr(S, "predict_slices", fake_predict)
    res = S.compute_held_out(truth_cohort, scans, prepared=None, folds=[0], config=CFG, entry_dir=tmp_path,
                             name="toy", n_boot=50)
    assert set(res["evaluations"]) == {"seed", "all", "seed-truth", "all-truth", "rater-truth"}
    assert res["evaluations"]["all-truth"].slice_metrics == every.slice_metrics
    assert res["evaluations"]["rater-truth"].slice_metrics == every.slice_metrics  # prediction = rater here
    loaded, _ = S.load_held_out(res, tmp_path)
    np.testing.assert_array_equal(loaded.truth, pool.truth)
    # a truth column declared but filled for only some scans
    part = truth_cohort.table.copy()
    part.loc["ms06_ses-01", S.TRUTH_COLUMN] = None
    from dataclasses import replace as dc_replace

    with pytest.raises(ValueError, match=r"column 'gt_lesion_mask' is empty for scan\(s\) \['ms06_ses-01'\]"):
        dc_replace(truth_cohort, table=part).truth_column("lesion_mask")


def test_held_out_cache_name_follows_the_checkpoints(tmp_path):
    from msutils.segmentation.nnunet import NnUNetWorkspace

    ws = NnUNetWorkspace(tmp_path / "ws")
    (ws.raw / "Dataset001_Toy").mkdir(parents=True)
    prepared = S.PreparedStudy(root=tmp_path, workspace=ws, dataset_id=1, variant="aug", info={})
    for f in (0, 1):
        prepared.checkpoint(f).parent.mkdir(parents=True)
        prepared.checkpoint(f).write_bytes(b"x")
    name = S.held_out_cache_name("internal", prepared, [1, 0])
    assert name.startswith("heldout-internal-") and name == S.held_out_cache_name("internal", prepared, [0, 1])
    assert S.held_out_cache_name("internal", prepared, [0]) != name
    prepared.checkpoint(1).write_bytes(b"retrained")
    assert S.held_out_cache_name("internal", prepared, [0, 1]) != name
    with pytest.raises(ValueError, match=r"'test_set' must be made of letters, digits, '_', '-', '.'; got 'a b'"):
        S.held_out_cache_name("a b", prepared, [0])


def test_table2_patient_characteristics():
    scans = pd.DataFrame({
        "subject_id": [f"s{i}" for i in range(6)], "sex": ["F", "F", "M", "F", "M", "F"],
        "age": [20.0, 30.0, 40.0, 50.0, 60.0, 35.0], "course": ["RR", "SP", "NA", "RR", "PP", "CIS"],
        "disease_duration": [1.0, 10.0, np.nan, 4.0, 8.0, 0.5], "edss": [1.0, 6.0, 2.0, 2.5, 4.0, np.nan],
    })
    split = {"train": ["s0", "s1", "s2", "s3"], "test": ["s4"], "external": ["s5"]}
    c = S.patient_characteristics(scans.iloc[:4])
    assert c["n"] == 4 and c["sex"] == {"F": 3, "M": 1}
    assert c["age"]["mean"] == 35.0 and c["age"]["sd"] == pytest.approx(np.std([20, 30, 40, 50], ddof=1))
    assert (c["age"]["q1"], c["age"]["median"], c["age"]["q3"]) == tuple(np.percentile([20, 30, 40, 50], [25, 50, 75]))
    assert c["course"] == {"RR": 2, "SP": 1, "PP": 0, "CIS": 0, "missing": 1}
    assert c["disease_duration"]["mean"] == pytest.approx(5.0) and c["edss"]["median"] == 2.25
    paper = {"original center": {"n": 103, "sex": {"F": 75, "M": 28},
                                 "age": {"mean": 33.07, "sd": 10.61, "min": 16, "max": 64, "q1": 24, "median": 33,
                                         "q3": 42},
                                 "course": {"RR": 68, "SP": 4, "PP": 1, "missing": 30},
                                 "treatments": {"RTX": 5}}}
    t2 = S.table2(scans, split, paper)
    assert list(t2.columns) == ["training", "internal test", "external test", "paper: original center"]
    assert t2.loc[("patients", "n"), "training"] == "4"
    assert t2.loc[("sex, n (%)", "female"), "training"] == "3 (75 %)"
    assert t2.loc[("sex, n (%)", "female"), "paper: original center"] == "75 (73 %)"
    assert t2.loc[("age (years)", "mean"), "training"] == "35.0"
    assert t2.loc[("age (years)", "maximum"), "external test"] == "35.0"
    assert t2.loc[("disease type, n (%)", "missing"), "training"] == "1 (25 %)"
    assert t2.loc[("disease type, n (%)", "CIS"), "paper: original center"] == "–"
    assert t2.loc[("disease duration (years)", "mean (SD)"), "paper: original center"] == "not reported"
    assert t2.loc[("EDSS", "median [IQR]"), "external test"] == "n/a [n/a, n/a]"
    assert t2.loc[("treatments, n (%)", "RTX"), "training"] == "not in this cohort"
    with pytest.raises(ValueError, match="'patients' needs column 'sex'"):
        S.patient_characteristics(scans.drop(columns="sex"))


def test_acquisition_table(cohort):
    scans = S.study_scans(cohort)
    split = {"internal_center": "A", "external_centers": ["B"]}
    t3 = S.acquisition_table(cohort, scans, split, CFG)
    assert list(t3.columns) == ["center A", "center B"]
    assert t3.at["patients", "center A"] == "6" and t3.at["scanner (manifest)", "center B"] == "scanner-B"
    assert t3.at["FLAIR matrix (voxels)", "center A"] == "20 x 24 x 12"
    assert t3.at["FLAIR voxel size (mm)", "center B"] == "2.00 x 2.00 x 3.00"
    assert t3.at["orientation (NIfTI axes)", "center A"] == "RAS"
    assert t3.at["slices after preprocessing", "center A"] == "12 x 12, 4.00 mm pixels"  # 24 x 2 mm on 12 pixels
    assert t3.at["FLAIR slice thickness / gap (mm, sidecar)", "center A"] == "not recorded"  # no simulated protocol
    assert t3.at["role", "center B"] == "external test"


def test_paper_counts_reproduce_printed_table5_with_swapped_labels():
    m = S.paper_slice_metrics()
    c1, c2 = m["center 1 (internal)"], m["center 2 (external)"]
    # printed: accuracy 83.3, "sensitivity" 99.5, "PPV" 75.1, "NPV" 99.3
    assert round(100 * c1["accuracy"], 1) == 83.3
    assert round(100 * c1["specificity"], 1) == 99.5
    assert round(100 * c1["npv"], 1) == 75.1
    assert round(100 * c1["ppv"], 1) == 99.3
    assert round(c1["sensitivity"], 3) == 0.670
    # center 2: accuracy 76.1, "sensitivity" 100, "PPV" 67.7, "NPV" 100
    assert round(100 * c2["accuracy"], 1) == 76.1
    assert c2["specificity"] == 1.0 and c2["ppv"] == 1.0
    assert 100 * c2["npv"] == pytest.approx(67.7, abs=0.06)  # 23/34 = 67.65 %, printed 67.7
    assert round(c2["sensitivity"], 3) == 0.522
    paper, ours = S.paper_vs_ours_rows({"center 1 (internal)": None})
    assert ours == {} and paper["center 1 (internal)"]["DSC"] == 0.703
    assert paper["center 2 (external)"]["sensitivity"] == pytest.approx(12 / 23)


def test_prepare_workspace_reuses_marker_without_recomputing(cohort, tmp_path, monkeypatch):
    """A prepared workspace (marker present) is reused: nothing is exported or planned again."""
    import json

    from msutils.segmentation import nnunet as N

    scans = S.study_scans(cohort)
    split = internal_external_cv(scans, internal_center="A", external_centers=["B"], n_folds=2, seed=0)
    key = S.workspace_key(cohort, split, CFG)
    marker = tmp_path / f"nnunet-{key}" / "aug" / "prepared.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"key": key, "n_cases": 7}))

    def boom(*args, **kwargs):
        raise AssertionError("must not export again")

    monkeypatch.setattr(N, "export_dataset", boom)
    prepared = S.prepare_workspace(cohort, split, CFG, tmp_path)
    assert prepared.info == {"key": key, "n_cases": 7} and prepared.dataset_id == 1
    assert prepared.root == (tmp_path / f"nnunet-{key}").resolve()
    assert (tmp_path / f".nnunet-{key}-aug.lock").is_file()
    with pytest.raises(ValueError, match=r"'variant' must be one of \['aug', 'noaug'\]; got 'x'"):
        S.prepare_workspace(cohort, split, CFG, tmp_path, variant="x")
