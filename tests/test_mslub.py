"""Tests for msutils.data.mslub and the committed data_manifests/mslub manifest.

The real-data tests read the MSLUB sample at ``../shared/data/open_ms_data``
(beside the repository) and skip when it is absent (a fresh clone).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msutils.data import mslub
from msutils.data.cohort import load_cohort, validate_manifest

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = REPO.parent / "shared" / "data" / "open_ms_data"
COMMITTED = REPO / "data_manifests" / "mslub" / "manifest.csv"


@pytest.fixture()
def real_root() -> Path:
    if not (REAL_ROOT / "patient_info.csv").is_file():
        pytest.skip(f"MSLUB sample not found at {REAL_ROOT} (it lives beside the repository, not in it)")
    return REAL_ROOT


def _patient_info(root: Path) -> dict[int, dict[str, str]]:
    with open(root / "patient_info.csv", newline="") as fh:
        return {int(r["patient_id"]): r for r in csv.DictReader(fh)}


# ---------------------------------------------------------------------------- no data needed


def test_committed_manifest_points_beside_the_repo() -> None:
    meta = yaml.safe_load(COMMITTED.with_suffix(".yaml").read_text())
    assert meta["data_root"] == "../../../shared/data/open_ms_data"
    assert (COMMITTED.parent / meta["data_root"]).resolve() == (REPO.parent / "shared/data/open_ms_data").resolve()
    assert meta["masks"] == ["lesion_mask"] and meta["images"] == ["t1", "flair"]
    rows = list(csv.DictReader(open(COMMITTED, newline="")))
    assert [r["subject_id"] for r in rows] == ["patient07", "patient19"]
    assert all(r["brain_mask"] == "" and r["roi_labels"] == "" for r in rows)
    # the repository never holds the images themselves
    assert not list((REPO / "data_manifests").rglob("*.nii*"))


def _fake_root(root: Path) -> Path:
    """A tiny MSLUB-like tree: 2 mm voxels, PR and N/A patients, one incomplete folder."""
    root.mkdir(parents=True)
    (root / "patient_info.csv").write_text(
        "patient_id,age,sex,ms_type,edss,criteria\n"
        "3,37,F,N/A,N/A,N/A\n"
        "5,33,F,RR,3.5,McDonald 2005\n"
        "15,57,F,PR,6.5,McDonald 2005\n"
    )
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    for pid, n_lesion in ((3, 1), (5, 0), (15, 8)):
        d = root / "MNI" / f"patient{pid:02d}"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.normal(100, 5, (8, 8, 8)).astype(np.float32), aff), str(d / "T1.nii.gz"))
        if pid != 5:  # patient05 has no FLAIR: skipped
            nib.save(nib.Nifti1Image(rng.normal(50, 5, (8, 8, 8)).astype(np.float32), aff), str(d / "FLAIR.nii.gz"))
        gt = np.zeros((8, 8, 8), np.uint8)
        gt.reshape(-1)[:n_lesion] = 1
        nib.save(nib.Nifti1Image(gt, aff), str(d / "consensus_gt.nii.gz"))
    (root / "MNI" / "notes").mkdir()
    return root


def test_build_manifest_on_fake_tree(tmp_path: Path) -> None:
    root = _fake_root(tmp_path / "data" / "open_ms_data")
    out = mslub.build_manifest(root, tmp_path / "manifests" / "mslub" / "m.csv")
    assert out == tmp_path / "manifests" / "mslub" / "m.csv"
    assert validate_manifest(out) == []
    meta = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert meta["data_root"] == "../../data/open_ms_data"
    coh = load_cohort(out)
    t = coh.table
    assert list(t.index) == ["patient03_ses-01", "patient15_ses-01"]
    assert t["course"].tolist() == ["NA", "PP"]
    assert t["ms_type"].tolist() == ["N/A", "PR"]
    assert np.isnan(t.loc["patient03_ses-01", "edss"]) and t.loc["patient15_ses-01", "edss"] == 6.5
    assert t["age"].tolist() == [37.0, 57.0]
    assert t["criteria"].tolist() == ["", "McDonald 2005"]
    assert t["lesion_volume_ml"].tolist() == [0.008, 0.064]  # voxels x 8 mm^3
    assert t["center"].unique().tolist() == ["Ljubljana"] and t["group"].unique().tolist() == ["MS"]
    assert t["brain_mask"].tolist() == [None, None]
    assert t.loc["patient15_ses-01", "flair"] == str(root / "MNI/patient15/FLAIR.nii.gz")
    # an existing folder as `out` means out/manifest.csv
    (tmp_path / "other").mkdir()
    assert mslub.build_manifest(root, tmp_path / "other") == tmp_path / "other" / "manifest.csv"


def test_build_manifest_errors(tmp_path: Path) -> None:
    root = _fake_root(tmp_path / "d")
    info = (root / "patient_info.csv").read_text()
    (root / "patient_info.csv").write_text(info.replace("PR", "XX"))
    with pytest.raises(ValueError, match=r"patient 15: ms_type 'XX' is not one of"):
        mslub.build_manifest(root, tmp_path / "m.csv")
    (root / "patient_info.csv").write_text("\n".join(info.splitlines()[:3]) + "\n")
    with pytest.raises(ValueError, match="patient 15 is not in"):
        mslub.build_manifest(root, tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError, match="patient table"):
        mslub.build_manifest(tmp_path / "nowhere", tmp_path / "m.csv")


# ---------------------------------------------------------------------------- real sample


def test_committed_manifest_loads_real_sample(real_root: Path) -> None:
    coh = load_cohort(COMMITTED)
    info = _patient_info(real_root)
    assert list(coh.table.index) == ["patient07_ses-01", "patient19_ses-01"]
    assert coh.subjects == ["patient07", "patient19"]
    assert coh.centers == ["Ljubljana"]
    for pid, scan in ((7, "patient07_ses-01"), (19, "patient19_ses-01")):
        row = coh.table.loc[scan]
        assert row["age"] == float(info[pid]["age"])
        assert row["edss"] == float(info[pid]["edss"])
        assert row["sex"] == info[pid]["sex"] and row["course"] == info[pid]["ms_type"]
    assert coh.table.loc["patient07_ses-01", "edss"] == 0.5 and coh.table.loc["patient19_ses-01", "age"] == 47.0

    volumes = {}
    for scan in coh.scan_ids:
        for col in ("t1", "flair", "lesion_mask"):
            img = coh.image(scan, col)
            assert img.shape == (182, 218, 182)
            assert np.allclose(img.header.get_zooms(), 1.0)
        mask = coh.array(scan, "lesion_mask", dtype=np.uint8)
        assert set(np.unique(mask).tolist()) == {0, 1}
        volumes[scan] = int(mask.sum()) / 1000.0  # 1 mm^3 voxels -> mL
        assert coh.table.loc[scan, "lesion_volume_ml"] == pytest.approx(volumes[scan])
        flair = coh.array(scan, "flair")
        # skull-stripped: brain (image > 0) is a plausible 1-2 L, lesions lie inside it
        brain_ml = np.count_nonzero(flair > 0) / 1000.0
        assert 900 < brain_ml < 2200
        assert np.count_nonzero(mask.astype(bool) & (flair > 0)) > 0.95 * mask.sum()
    assert 1.0 < volumes["patient07_ses-01"] < 1.6
    assert 40.0 < volumes["patient19_ses-01"] < 60.0


def test_builder_reproduces_committed_manifest(real_root: Path, tmp_path: Path) -> None:
    out = mslub.build_manifest(real_root, tmp_path / "mslub" / "manifest.csv")
    committed, rebuilt = load_cohort(COMMITTED, check_images=False), load_cohort(out, check_images=False)
    pd.testing.assert_frame_equal(rebuilt.table, committed.table)
    meta_c, meta_r = dict(committed.meta), dict(rebuilt.meta)
    assert meta_c.pop("data_root") != meta_r.pop("data_root")
    assert meta_r == meta_c
