"""Truth image columns declared by the sidecar (``truth_masks``): validation, loading, writing.

Fixtures are tiny (8x8x8) NIfTI files in tmp_path, as in ``test_cohort.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from msutils.data import cohort as C
from msutils.data.cohort import load_cohort, validate_manifest, write_manifest

SHAPE = (8, 8, 8)
AFFINE = np.eye(4)
TRUTH = {"gt_brain_mask": "brain_mask", "gt_lesion_mask": "lesion_mask", "gt_roi_labels": "roi_labels",
         "gt_lookalike_labels": "label_map"}


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


@pytest.fixture()
def cohort_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, np.uint8)
    brain[1:7, 1:7, 1:7] = 1
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[3:5, 3:5, 3:5] = 1
    labels = np.where(brain > 0, 9, 0).astype(np.int16)
    labels[1:3, 1:7, 1:7] = 1
    lookalike = np.zeros(SHAPE, np.uint8)
    lookalike[5, 5, 5] = 2
    rows = []
    for sid, group in (("sub-001", "MS"), ("sub-002", "HC")):
        row = dict(subject_id=sid, session="ses-01", center="A", scanner="S", group=group,
                   course="RR" if group == "MS" else "NA", age="40", sex="F",
                   disease_duration="5" if group == "MS" else "", edss="2" if group == "MS" else "")
        images = {"t1": rng.normal(100, 5, SHAPE).astype(np.float32),
                  "flair": rng.normal(50, 5, SHAPE).astype(np.float32),
                  "brain_mask": brain, "lesion_mask": lesion, "roi_labels": labels}
        for col, arr in images.items():
            _save(tmp_path / sid / f"{col}.nii.gz", arr)
            row[col] = f"{sid}/{col}.nii.gz"
        truth = {"gt_brain_mask": brain, "gt_lesion_mask": lesion, "gt_roi_labels": labels,
                 "gt_lookalike_labels": lookalike}
        for col, arr in truth.items():
            _save(tmp_path / sid / f"{col}.nii.gz", arr)
            row[col] = f"{sid}/{col}.nii.gz"
        rows.append(row)
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    meta = {"name": "truth", "images": ["t1", "flair"], "masks": ["brain_mask", "lesion_mask", "roi_labels"],
            "truth_masks": dict(TRUTH), "roi_labels": {1: "thalamus_L", 9: "whole_wm"}}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return tmp_path


def _set_meta(folder: Path, **changes: Any) -> None:
    meta = yaml.safe_load((folder / "manifest.yaml").read_text())
    meta.update(changes)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def test_truth_columns_load_as_paths(cohort_dir: Path) -> None:
    manifest = cohort_dir / "manifest.csv"
    assert validate_manifest(manifest) == []
    coh = load_cohort(manifest)
    assert coh.truth_columns == TRUTH
    assert C.TRUTH_KINDS == ("brain_mask", "lesion_mask", "roi_labels", "label_map")
    path = coh.path("sub-001_ses-01", "gt_lesion_mask")
    assert path == cohort_dir / "sub-001" / "gt_lesion_mask.nii.gz" and path.is_absolute()
    assert coh.array("sub-002_ses-01", "gt_lookalike_labels", dtype=None)[5, 5, 5] == 2
    with pytest.raises(ValueError, match="'column' must be one of"):
        coh.path("sub-001_ses-01", "gt_nothing")


def test_truth_files_are_checked_by_kind(cohort_dir: Path) -> None:
    bad_lesion = np.zeros(SHAPE, np.float32)
    bad_lesion[2, 2, 2] = 0.5
    _save(cohort_dir / "sub-001" / "gt_lesion_mask.nii.gz", bad_lesion)
    bad_labels = np.zeros(SHAPE, np.int16)
    bad_labels[1, 1, 1] = 5  # not in the label table
    _save(cohort_dir / "sub-002" / "gt_roi_labels.nii.gz", bad_labels)
    negative = np.zeros(SHAPE, np.int16)
    negative[0, 0, 0] = -1
    _save(cohort_dir / "sub-002" / "gt_lookalike_labels.nii.gz", negative)
    _save(cohort_dir / "sub-001" / "gt_brain_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    _save(cohort_dir / "sub-002" / "gt_brain_mask.nii.gz", np.ones((8, 8, 7), np.uint8))
    problems = validate_manifest(cohort_dir / "manifest.csv")
    assert problems == [
        "row 1 (sub-001/ses-01): file 'sub-001/gt_brain_mask.nii.gz' (column 'gt_brain_mask') is empty "
        "(all voxels are 0)",
        "row 1 (sub-001/ses-01): file 'sub-001/gt_lesion_mask.nii.gz' (column 'gt_lesion_mask') is not binary: "
        "found values other than 0 and 1 (e.g. 0.5)",
        "row 2 (sub-002/ses-01): file 'sub-002/gt_brain_mask.nii.gz' (column 'gt_brain_mask') has shape "
        "(8, 8, 7); expected (8, 8, 8) as in column 't1'",
        "row 2 (sub-002/ses-01): file 'sub-002/gt_roi_labels.nii.gz' (column 'gt_roi_labels') contains labels "
        "missing from the sidecar roi_labels table: [5]",
        "row 2 (sub-002/ses-01): file 'sub-002/gt_lookalike_labels.nii.gz' (column 'gt_lookalike_labels') has "
        "negative values; expected integer codes >= 0",
    ]


def test_truth_sidecar_and_csv_problems(cohort_dir: Path) -> None:
    _set_meta(cohort_dir, truth_masks={"gt_lesion_mask": "mask", "flair": "lesion_mask", "gt_x": "label_map"})
    problems = validate_manifest(cohort_dir / "manifest.csv", check_images=False)
    assert "sidecar 'manifest.yaml': truth_masks 'gt_lesion_mask' has kind 'mask'; expected one of " \
           "['brain_mask', 'lesion_mask', 'roi_labels', 'label_map']" in problems
    assert "sidecar 'manifest.yaml': truth_masks column 'flair' clashes with a standard or image column; " \
           "use another name (e.g. prefixed 'gt_')" in problems
    assert "manifest 'manifest.csv': columns ['gt_x'] listed under the sidecar's 'truth_masks' are missing" \
           in problems
    _set_meta(cohort_dir, truth_masks=["gt_lesion_mask"])
    assert validate_manifest(cohort_dir / "manifest.csv", check_images=False) == [
        "sidecar 'manifest.yaml': key 'truth_masks' must be a mapping of column name -> kind "
        "(['brain_mask', 'lesion_mask', 'roi_labels', 'label_map']); got list"]


def test_empty_truth_cell_is_reported(cohort_dir: Path) -> None:
    text = (cohort_dir / "manifest.csv").read_text().replace("sub-002/gt_lesion_mask.nii.gz", "")
    (cohort_dir / "manifest.csv").write_text(text)
    assert validate_manifest(cohort_dir / "manifest.csv") == [
        "row 2 (sub-002/ses-01): column 'gt_lesion_mask': empty, but the sidecar lists it under truth_masks; "
        "expected a path to a NIfTI image"]


def test_write_manifest_writes_truth_paths_relative(cohort_dir: Path, tmp_path_factory) -> None:
    coh = load_cohort(cohort_dir / "manifest.csv")
    out = cohort_dir / "copy" / "manifest.csv"
    meta = dict(coh.meta, data_root="..")
    write_manifest(coh.table, meta, out)
    text = out.read_text()
    assert "sub-001/gt_lesion_mask.nii.gz" in text and str(cohort_dir) not in text
    assert validate_manifest(out) == []
    assert load_cohort(out).path("sub-001_ses-01", "gt_roi_labels") == cohort_dir / "sub-001" / "gt_roi_labels.nii.gz"
