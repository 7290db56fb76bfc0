"""Tests for msutils.data.cohort: manifest validation, loading and writing.

Fixtures are tiny (8x8x8) NIfTI files written in tmp_path with a fixed rng.
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msutils.data import cohort as C
from msutils.data.cohort import ManifestError, load_cohort, validate_manifest, write_manifest

SHAPE = (8, 8, 8)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
LABELS = {1: "thalamus_L", 2: "thalamus_R", 9: "whole_wm"}


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _write_scan(root: Path, sid: str, ses: str, rng: np.random.Generator) -> dict[str, str]:
    t1 = rng.normal(100, 10, SHAPE).astype(np.float32)
    flair = rng.normal(50, 5, SHAPE).astype(np.float32)
    brain = np.zeros(SHAPE, np.uint8)
    brain[1:7, 1:7, 1:7] = 1
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[3:5, 3:5, 3:5] = 1
    labels = np.zeros(SHAPE, np.int16)
    labels[1:4, 1:7, 1:7] = 1
    labels[4:7, 1:7, 1:7] = 2
    labels[3:5, 3:5, 3:5] = 9
    files = {"t1": t1, "flair": flair, "brain_mask": brain, "lesion_mask": lesion, "roi_labels": labels}
    out = {}
    for col, data in files.items():
        rel = f"{sid}/{ses}/{col}.nii.gz"
        _save(root / rel, data)
        out[col] = rel
    return out


ROWS: list[dict[str, str]] = [
    dict(subject_id="sub-001", session="ses-01", center="A", scanner="S1", group="MS", course="RR",
         age="34", sex="F", disease_duration="5", edss="2.5"),
    dict(subject_id="sub-001", session="ses-02", center="A", scanner="S1", group="MS", course="RR",
         age="35", sex="F", disease_duration="6", edss="3"),
    dict(subject_id="sub-002", session="ses-01", center="B", scanner="S2", group="HC", course="NA",
         age="40", sex="M", disease_duration="", edss=""),
]


def _meta(**over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "tiny",
        "description": "test cohort",
        "images": ["t1", "flair"],
        "masks": ["brain_mask", "lesion_mask", "roi_labels"],
        "roi_labels": dict(LABELS),
        "roi_sets": {"thalamus_L": [1], "thalamus": [1, 2], "whole_wm": [9]},
    }
    meta.update(over)
    return meta


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0].keys())
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _write_yaml(path: Path, meta: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A valid 3-scan manifest (two centers, one HC) with all masks."""
    rng = np.random.default_rng(0)
    rows = []
    for base in ROWS:
        row = dict(base)
        row.update(_write_scan(tmp_path, row["subject_id"], row["session"], rng))
        row["tiv_ml"] = "1400.5"
        rows.append(row)
    manifest = tmp_path / "manifest.csv"
    _write_csv(manifest, rows, list(C.REQUIRED_COLUMNS) + ["tiv_ml"])
    _write_yaml(tmp_path / "manifest.yaml", _meta())
    return manifest


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def _edit(manifest: Path, row: int, **cells: str) -> None:
    """Set cells of data row ``row`` (1-based)."""
    rows = _rows(manifest)
    rows[row - 1].update(cells)
    _write_csv(manifest, rows, list(rows[0].keys()))


# ---------------------------------------------------------------------------- valid


def test_constants() -> None:
    assert C.REQUIRED_COLUMNS[:2] == ("subject_id", "session")
    assert len(C.REQUIRED_COLUMNS) == 15
    assert set(C.GROUPS) == {"MS", "HC"}
    assert set(C.COURSES) == {"RR", "SP", "PP", "CIS", "NA"}
    assert set(C.SEXES) == {"M", "F"}


def test_valid_manifest_loads(tiny: Path) -> None:
    assert validate_manifest(tiny) == []
    coh = load_cohort(tiny)
    assert list(coh.table.index) == ["sub-001_ses-01", "sub-001_ses-02", "sub-002_ses-01"]
    assert coh.table.index.name == "scan_id"
    assert coh.centers == ["A", "B"]
    assert coh.subjects == ["sub-001", "sub-002"]
    assert coh.labels == LABELS
    assert coh.roi_sets == {"thalamus_L": [1], "thalamus": [1, 2], "whole_wm": [9]}
    t = coh.table
    assert t.loc["sub-001_ses-01", "edss"] == 2.5
    assert t.loc["sub-001_ses-02", "age"] == 35.0
    assert np.isnan(t.loc["sub-002_ses-01", "edss"])
    assert np.isnan(t.loc["sub-002_ses-01", "disease_duration"])
    assert t.loc["sub-002_ses-01", "course"] == "NA"
    assert t.loc["sub-001_ses-01", "tiv_ml"] == 1400.5
    t1 = t.loc["sub-001_ses-01", "t1"]
    assert os.path.isabs(t1) and t1 == str(tiny.parent / "sub-001/ses-01/t1.nii.gz")
    arr = coh.array("sub-001_ses-01", "lesion_mask", dtype=bool)
    assert arr.shape == SHAPE and arr.dtype == bool and int(arr.sum()) == 8
    img = coh.image("sub-002_ses-01", "roi_labels")
    assert set(np.unique(np.asanyarray(img.dataobj)).tolist()) == {0, 1, 2, 9}
    assert coh.array("sub-001_ses-01", "t1").dtype == np.float32


def test_check_images_false_skips_voxels(tiny: Path) -> None:
    _save(tiny.parent / "sub-001/ses-01/t1.nii.gz", np.full(SHAPE, np.nan, np.float32))
    assert validate_manifest(tiny, check_images=False) == []
    assert validate_manifest(tiny) == [
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/t1.nii.gz' (column 't1') contains 512 NaN/inf voxels"
    ]


def test_accepts_yaml_or_folder_path(tiny: Path) -> None:
    assert validate_manifest(tiny.with_suffix(".yaml")) == []
    assert validate_manifest(tiny.parent) == []


def test_data_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    row = dict(ROWS[0])
    row.update(_write_scan(data, "sub-001", "ses-01", rng))
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    _write_csv(mdir / "m.csv", [row], list(C.REQUIRED_COLUMNS))
    _write_yaml(mdir / "m.yaml", _meta(data_root="../data"))
    coh = load_cohort(mdir / "m.csv")
    assert coh.table.loc["sub-001_ses-01", "flair"] == str(data / "sub-001/ses-01/flair.nii.gz")
    _write_yaml(mdir / "m.yaml", _meta(data_root="../nowhere"))
    assert validate_manifest(mdir / "m.csv") == [
        f"sidecar 'm.yaml': data_root '../nowhere' (resolved to '{tmp_path / 'nowhere'}') is not a directory; "
        "image files were not checked"
    ]


def test_inputs_unchanged(tiny: Path) -> None:
    files = sorted(p for p in tiny.parent.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    validate_manifest(tiny)
    coh = load_cohort(tiny)
    coh.array("sub-001_ses-01", "t1")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    assert after == before
    assert sorted(p for p in tiny.parent.rglob("*") if p.is_file()) == files


# ---------------------------------------------------------------------------- all at once


def test_reports_all_problems_at_once(tiny: Path) -> None:
    (tiny.parent / "sub-001/ses-02/t1.nii.gz").unlink()
    _save(tiny.parent / "sub-002/ses-01/flair.nii.gz", np.zeros((8, 8, 9), np.float32))
    _edit(tiny, 1, edss="10.5")
    expected = [
        "row 1 (sub-001/ses-01): column 'edss': 10.5 is outside 0-10",
        "row 2 (sub-001/ses-02): file 'sub-001/ses-02/t1.nii.gz' (column 't1') does not exist",
        "row 3 (sub-002/ses-01): file 'sub-002/ses-01/flair.nii.gz' (column 'flair') has shape (8, 8, 9); "
        "expected (8, 8, 8) as in column 't1'",
    ]
    assert validate_manifest(tiny) == expected
    with pytest.raises(ManifestError) as info:
        load_cohort(tiny)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.problems == expected
    assert str(err).splitlines() == [f"manifest '{tiny}' has 3 problems:"] + [f"  {p}" for p in expected]
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ManifestError) and again.problems == expected and str(again) == str(err)


# ---------------------------------------------------------------------------- files


def test_missing_manifest_and_sidecar(tmp_path: Path) -> None:
    assert validate_manifest(tmp_path / "none.csv") == [
        f"manifest file '{tmp_path / 'none.csv'}' does not exist",
        f"sidecar file '{tmp_path / 'none.yaml'}' does not exist; expected beside the manifest, with the same name",
    ]


def test_missing_sidecar_only(tiny: Path) -> None:
    tiny.with_suffix(".yaml").unlink()
    assert validate_manifest(tiny) == [
        f"sidecar file '{tiny.with_suffix('.yaml')}' does not exist; expected beside the manifest, with the same name"
    ]


def test_unparsable_yaml(tiny: Path) -> None:
    tiny.with_suffix(".yaml").write_text("name: tiny\nmasks: [a\n")
    (problem,) = validate_manifest(tiny)
    assert problem.startswith("sidecar 'manifest.yaml': unparsable YAML at line 3, column 1: ")


def test_sidecar_not_mapping(tiny: Path) -> None:
    tiny.with_suffix(".yaml").write_text("- a\n- b\n")
    assert validate_manifest(tiny) == [
        "sidecar 'manifest.yaml': expected a YAML mapping (key: value) at the top level; got list"
    ]


def test_sidecar_key_problems(tiny: Path) -> None:
    meta = _meta(roi_sets={"thalamus_L": [1], "bad": [1, 77, 78]})
    del meta["name"]
    del meta["masks"]
    _write_yaml(tiny.with_suffix(".yaml"), meta)
    problems = validate_manifest(tiny)
    assert problems[:3] == [
        "sidecar 'manifest.yaml': key 'name' is missing or not a non-empty string",
        "sidecar 'manifest.yaml': key 'masks' is missing; expected a list, a subset of "
        "['brain_mask', 'lesion_mask', 'roi_labels'] (use [] if the cohort has none)",
        "sidecar 'manifest.yaml': roi_sets 'bad' references labels missing from roi_labels: [77, 78]",
    ]
    assert len(problems) == 3


def test_missing_columns(tiny: Path) -> None:
    rows = _rows(tiny)
    cols = [c for c in rows[0] if c not in ("edss", "sex")]
    _write_csv(tiny, rows, cols)
    assert validate_manifest(tiny) == ["manifest 'manifest.csv': missing required columns ['sex', 'edss']"]


def test_missing_file_message(tiny: Path) -> None:
    (tiny.parent / "sub-002/ses-01/t1.nii.gz").unlink()
    assert validate_manifest(tiny) == [
        "row 3 (sub-002/ses-01): file 'sub-002/ses-01/t1.nii.gz' (column 't1') does not exist"
    ]


def test_corrupt_gzip_detected(tiny: Path) -> None:
    f = tiny.parent / "sub-001/ses-01/flair.nii.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw)[:-200])  # header intact, data truncated
    (problem,) = validate_manifest(tiny)
    assert problem.startswith(
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/flair.nii.gz' (column 'flair') could not be read ("
    )
    # header-only checks cannot see it
    assert validate_manifest(tiny, check_images=False) == []


def test_corrupt_gzip_crc_detected(tiny: Path) -> None:
    """A flipped byte inside the stream: same length, nibabel alone would not notice."""
    f = tiny.parent / "sub-001/ses-02/t1.nii.gz"
    raw = bytearray(gzip.compress(gzip.decompress(f.read_bytes()), compresslevel=0))
    raw[-100] ^= 0xFF  # stored (uncompressed) block: a silent data change, caught by the CRC
    f.write_bytes(bytes(raw))
    (problem,) = validate_manifest(tiny)
    assert problem.startswith(
        "row 2 (sub-001/ses-02): file 'sub-001/ses-02/t1.nii.gz' (column 't1') could not be read "
        "(BadGzipFile: CRC check failed"
    )


def test_garbage_file_detected(tiny: Path) -> None:
    (tiny.parent / "sub-001/ses-01/t1.nii.gz").write_bytes(b"not an image at all")
    (problem,) = validate_manifest(tiny, check_images=False)
    assert problem.startswith(
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/t1.nii.gz' (column 't1') is not a readable NIfTI image ("
    )


def test_4d_detected(tiny: Path) -> None:
    _save(tiny.parent / "sub-001/ses-02/flair.nii.gz", np.zeros(SHAPE + (2,), np.float32))
    assert validate_manifest(tiny) == [
        "row 2 (sub-001/ses-02): file 'sub-001/ses-02/flair.nii.gz' (column 'flair') is 4D with shape "
        "(8, 8, 8, 2); expected a 3D image"
    ]


def test_affine_mismatch(tiny: Path) -> None:
    aff = AFFINE.copy()
    aff[0, 3] = 0.5
    m = np.zeros(SHAPE, np.uint8)
    m[2, 2, 2] = 1
    _save(tiny.parent / "sub-001/ses-01/lesion_mask.nii.gz", m, aff)
    assert validate_manifest(tiny) == [
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/lesion_mask.nii.gz' (column 'lesion_mask') has an affine "
        "that differs from column 't1' by up to 0.5 (tolerance 0.001)"
    ]
    aff[0, 3] = 5e-4  # within tolerance
    _save(tiny.parent / "sub-001/ses-01/lesion_mask.nii.gz", m, aff)
    assert validate_manifest(tiny) == []


def test_nan_detected(tiny: Path) -> None:
    data = np.ones(SHAPE, np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    _save(tiny.parent / "sub-002/ses-01/flair.nii.gz", data)
    assert validate_manifest(tiny) == [
        "row 3 (sub-002/ses-01): file 'sub-002/ses-01/flair.nii.gz' (column 'flair') contains 2 NaN/inf voxels"
    ]


def test_non_binary_lesion_mask(tiny: Path) -> None:
    m = np.zeros(SHAPE, np.float32)
    m[2, 2, 2] = 1
    m[3, 3, 3] = 2
    m[4, 4, 4] = 0.5
    _save(tiny.parent / "sub-001/ses-02/lesion_mask.nii.gz", m)
    assert validate_manifest(tiny) == [
        "row 2 (sub-001/ses-02): file 'sub-001/ses-02/lesion_mask.nii.gz' (column 'lesion_mask') is not binary: "
        "found values other than 0 and 1 (e.g. 0.5, 2)"
    ]


def test_empty_brain_mask(tiny: Path) -> None:
    _save(tiny.parent / "sub-001/ses-02/brain_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    assert validate_manifest(tiny) == [
        "row 2 (sub-001/ses-02): file 'sub-001/ses-02/brain_mask.nii.gz' (column 'brain_mask') is empty "
        "(all voxels are 0)"
    ]


def test_empty_roi_labels(tiny: Path) -> None:
    _save(tiny.parent / "sub-001/ses-01/roi_labels.nii.gz", np.zeros(SHAPE, np.int16))
    assert validate_manifest(tiny) == [
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/roi_labels.nii.gz' (column 'roi_labels') is empty "
        "(all voxels are 0)"
    ]


def test_unknown_roi_labels(tiny: Path) -> None:
    lab = np.zeros(SHAPE, np.int16)
    lab[1, 1, 1] = 1
    lab[2, 2, 2] = 12
    lab[3, 3, 3] = 13
    _save(tiny.parent / "sub-001/ses-01/roi_labels.nii.gz", lab)
    assert validate_manifest(tiny) == [
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/roi_labels.nii.gz' (column 'roi_labels') contains labels "
        "missing from the sidecar roi_labels table: [12, 13]"
    ]


def test_non_integer_roi_labels(tiny: Path) -> None:
    lab = np.zeros(SHAPE, np.float32)
    lab[1, 1, 1] = 1.5
    _save(tiny.parent / "sub-001/ses-01/roi_labels.nii.gz", lab)
    assert validate_manifest(tiny) == [
        "row 1 (sub-001/ses-01): file 'sub-001/ses-01/roi_labels.nii.gz' (column 'roi_labels') has non-integer "
        "values (e.g. 1.5); expected integer labels"
    ]


def test_shared_file_read_once_reported_per_row(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A label map shared by all rows (atlas in template space) is read once."""
    rows = _rows(tiny)
    for r in rows:
        r["roi_labels"] = "sub-001/ses-01/roi_labels.nii.gz"
    _write_csv(tiny, rows, list(rows[0].keys()))
    from msutils.data import manifest_checks

    calls: list[Any] = []
    real = manifest_checks._read_voxels
    monkeypatch.setattr(
        manifest_checks, "_read_voxels", lambda img, roles, path: calls.append(path) or real(img, roles, path)
    )
    assert validate_manifest(tiny) == []
    assert len(calls) == 13  # 3 rows x 4 own files + 1 shared label map


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("cells", "row", "message"),
    [
        ({"edss": "3.2"}, 1, "column 'edss': 3.2 is not a multiple of 0.5"),
        ({"edss": "-0.5"}, 1, "column 'edss': -0.5 is outside 0-10"),
        ({"edss": "N/A"}, 1, "column 'edss': 'N/A' is not a number"),
        ({"age": "abc"}, 2, "column 'age': 'abc' is not a number"),
        ({"age": "-3"}, 2, "column 'age': -3 is negative; expected >= 0 (years)"),
        ({"age": ""}, 2, "column 'age': empty; expected a number >= 0 (years)"),
        ({"age": "nan"}, 2, "column 'age': 'nan' is not a finite number"),
        ({"disease_duration": "-1"}, 1, "column 'disease_duration': -1 is negative; expected >= 0 (years) or empty"),
        ({"disease_duration": "40"}, 1, "column 'disease_duration': 40 exceeds the age 34"),
        ({"group": "PAT"}, 1, "column 'group': 'PAT' is not one of ['MS', 'HC']"),
        ({"course": "RRMS"}, 1, "column 'course': 'RRMS' is not one of ['RR', 'SP', 'PP', 'CIS', 'NA']"),
        ({"course": ""}, 1, "column 'course': empty; expected one of ['RR', 'SP', 'PP', 'CIS', 'NA']"),
        ({"sex": "X"}, 1, "column 'sex': 'X' is not one of ['M', 'F']"),
        ({"course": "RR"}, 3, "column 'course': 'RR' for group 'HC'; expected 'NA'"),
        ({"edss": "0"}, 3, "column 'edss': 0 for group 'HC'; expected empty"),
        ({"disease_duration": "2"}, 3, "column 'disease_duration': 2 for group 'HC'; expected empty"),
        ({"center": ""}, 3, "column 'center': empty; expected a center name"),
        ({"scanner": ""}, 3, "column 'scanner': empty; expected a scanner description ('unknown' if not known)"),
        ({"session": "ses 1"}, 3, "column 'session': 'ses 1' may only contain letters, digits, '.', '_' and '-'"),
        ({"t1": ""}, 2, "column 't1': empty; expected a path to a NIfTI image"),
        ({"brain_mask": ""}, 2, "column 'brain_mask': empty, but the sidecar lists 'brain_mask' under masks; "
                                "expected a path to a NIfTI image"),
    ],
)
def test_bad_values(tiny: Path, cells: dict[str, str], row: int, message: str) -> None:
    _edit(tiny, row, **cells)
    rows = _rows(tiny)
    tag = f"row {row} ({rows[row - 1]['subject_id'] or '?'}/{rows[row - 1]['session'] or '?'})"
    assert validate_manifest(tiny, check_images=False) == [f"{tag}: {message}"]


def test_empty_subject_id(tiny: Path) -> None:
    _edit(tiny, 2, subject_id="")
    assert validate_manifest(tiny, check_images=False) == [
        "row 2 (?/ses-02): column 'subject_id': empty; expected a subject identifier"
    ]


def test_hc_without_lesion_mask_is_allowed(tiny: Path) -> None:
    _edit(tiny, 3, lesion_mask="")
    assert validate_manifest(tiny) == []
    coh = load_cohort(tiny)
    assert coh.table.loc["sub-002_ses-01", "lesion_mask"] is None
    with pytest.raises(ValueError, match="scan 'sub-002_ses-01' has no 'lesion_mask': the manifest cell is empty"):
        coh.image("sub-002_ses-01", "lesion_mask")


def test_unlisted_mask_allows_empty_and_rejects_given(tiny: Path) -> None:
    _write_yaml(tiny.with_suffix(".yaml"), _meta(masks=["lesion_mask", "roi_labels"]))
    assert validate_manifest(tiny, check_images=False) == [
        f"row {i} ({s}): column 'brain_mask': '{s}/brain_mask.nii.gz' given, but the sidecar does not list "
        "'brain_mask' under masks"
        for i, s in [(1, "sub-001/ses-01"), (2, "sub-001/ses-02"), (3, "sub-002/ses-01")]
    ]
    rows = _rows(tiny)
    for r in rows:
        r["brain_mask"] = ""
    _write_csv(tiny, rows, list(rows[0].keys()))
    assert validate_manifest(tiny) == []
    assert load_cohort(tiny).table["brain_mask"].tolist() == [None, None, None]


def test_duplicates(tiny: Path) -> None:
    _edit(tiny, 2, session="ses-01")
    assert validate_manifest(tiny, check_images=False) == [
        "row 2 (sub-001/ses-01): duplicate (subject_id, session); first in row 1"
    ]


def test_subject_in_two_centers(tiny: Path) -> None:
    _edit(tiny, 2, center="B")
    assert validate_manifest(tiny, check_images=False) == [
        "row 2 (sub-001/ses-02): subject 'sub-001' is in center 'B' here but in center 'A' in row 1; "
        "a subject belongs to one center"
    ]


def test_ragged_row(tiny: Path) -> None:
    lines = tiny.read_text().splitlines()
    lines[2] = lines[2] + ",extra"
    tiny.write_text("\n".join(lines) + "\n")
    assert validate_manifest(tiny, check_images=False) == [
        "row 2 (sub-001/ses-02): has 17 cells; expected 16 as in the header (row not checked further)"
    ]


def test_no_rows(tiny: Path) -> None:
    tiny.write_text(tiny.read_text().splitlines()[0] + "\n")
    assert validate_manifest(tiny) == ["manifest 'manifest.csv': no data rows"]


# ---------------------------------------------------------------------------- cohort API


def test_select_and_content_hash(tiny: Path) -> None:
    coh = load_cohort(tiny)
    h = coh.content_hash()
    assert len(h) == 64 and int(h, 16) >= 0
    assert load_cohort(tiny).content_hash() == h  # stable
    sub = coh.select(["sub-002_ses-01", "sub-001_ses-01"])
    assert list(sub.table.index) == ["sub-002_ses-01", "sub-001_ses-01"]
    assert sub.meta == coh.meta and sub.centers == ["A", "B"] and sub.subjects == ["sub-001", "sub-002"]
    assert sub.content_hash() != h
    assert sub.content_hash() == coh.select(["sub-002_ses-01", "sub-001_ses-01"]).content_hash()
    assert coh.select(["sub-001_ses-01"]).content_hash() != sub.content_hash()
    assert len(coh) == 3  # the original is untouched
    with pytest.raises(KeyError, match="nope"):
        coh.select(["nope"])
    with pytest.raises(ValueError, match="more than once"):
        coh.select(["sub-001_ses-01", "sub-001_ses-01"])
    # changing the CSV changes the hash; changing it back restores it
    original = tiny.read_bytes()
    _edit(tiny, 1, edss="3.5")
    h2 = load_cohort(tiny).content_hash()
    assert h2 != h
    tiny.write_bytes(original)
    assert load_cohort(tiny).content_hash() == h
    # so does the sidecar
    y = tiny.with_suffix(".yaml")
    y.write_text(y.read_text() + "# comment\n")
    assert load_cohort(tiny).content_hash() != h


def test_image_api_errors(tiny: Path) -> None:
    coh = load_cohort(tiny)
    with pytest.raises(KeyError, match="scan_id 'x' is not in cohort 'tiny'"):
        coh.image("x", "t1")
    with pytest.raises(ValueError, match="'column' must be one of"):
        coh.image("sub-001_ses-01", "t2")


def test_cohort_is_frozen(tiny: Path) -> None:
    coh = load_cohort(tiny)
    with pytest.raises(AttributeError):
        coh.meta = {}  # type: ignore[misc]


# ---------------------------------------------------------------------------- write


def test_write_manifest_roundtrip(tiny: Path, tmp_path: Path) -> None:
    coh = load_cohort(tiny)
    out = tmp_path / "copy" / "cohort.csv"
    meta = dict(coh.meta)
    meta["data_root"] = ".."  # paths become relative to tmp_path
    meta["synthetic"] = {"seed": np.int64(3), "params": {"sd": np.float32(0.5), "shape": (8, 8, 8)}}
    assert write_manifest(coh.table, meta, out) == out
    text = out.read_text()
    assert text.splitlines()[0] == ",".join(list(C.REQUIRED_COLUMNS) + ["tiv_ml"])
    assert "sub-001/ses-01/t1.nii.gz" in text and str(tmp_path) not in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["cohort.csv", "cohort.yaml"]  # no temp files
    back = load_cohort(out)
    pd.testing.assert_frame_equal(back.table, coh.table)
    assert back.meta["synthetic"] == {"seed": 3, "params": {"sd": 0.5, "shape": [8, 8, 8]}}
    assert back.labels == LABELS
    y = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert y["roi_labels"] == LABELS


def test_write_manifest_validates_arguments(tmp_path: Path) -> None:
    df = pd.DataFrame([ROWS[0]])
    with pytest.raises(ValueError, match="'path' must end with '.csv'"):
        write_manifest(df, _meta(), tmp_path / "m.txt")
    with pytest.raises(ValueError, match=r"missing required columns \['t1', 'flair'"):
        write_manifest(df, _meta(), tmp_path / "m.csv")
    assert not list(tmp_path.iterdir())
