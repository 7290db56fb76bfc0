"""The ``msutils`` command line: synth -> validate, a broken manifest, a notebook run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from msutils.cli import main, parse_overrides


@pytest.fixture(scope="module")
def smoke_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "smoke"
    assert main(["synth", "--preset", "smoke", "--out", str(out), "--jobs", "2"]) == 0
    return out


def test_synth_then_validate_passes(smoke_cohort: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = smoke_cohort / "manifest.csv"
    assert main(["validate", str(manifest)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{manifest}: OK")


def test_validate_names_all_three_problems(smoke_cohort: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(smoke_cohort, broken)
    table = pd.read_csv(broken / "manifest.csv", dtype=str, keep_default_na=False)
    ms_rows = table.index[table["group"] == "MS"]
    # 1. a missing file
    (broken / table.loc[0, "flair"]).unlink()
    # 2. a shape mismatch between a scan's T1 and its brain mask
    mask_path = broken / table.loc[1, "brain_mask"]
    mask = nib.load(mask_path)
    nib.save(nib.Nifti1Image(np.asanyarray(mask.dataobj)[:-1], mask.affine), mask_path)
    # 3. a bad EDSS value
    table.loc[ms_rows[0], "edss"] = "10.5"
    table.to_csv(broken / "manifest.csv", index=False)

    assert main(["validate", str(broken / "manifest.csv")]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert f"file '{table.loc[0, 'flair']}' (column 'flair') does not exist" in out
    assert "column 'brain_mask'" in out and "has shape" in out
    assert "column 'edss': 10.5 is outside 0-10" in out


def test_parse_overrides() -> None:
    assert parse_overrides(["n=3", "name=abc", "x=0.5", "flag=true"]) == {
        "n": 3, "name": "abc", "x": 0.5, "flag": True}
    with pytest.raises(SystemExit, match="--set expects key=value; got 'oops'"):
        parse_overrides(["oops"])


@pytest.mark.slow
def test_run_cohort_notebook_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["run", "00_cohort", "--profile", "smoke", "--out", str(out)]) == 0
    summary = json.loads((out / "00_cohort" / "summary.json").read_text())
    assert summary["n_subjects"] == sum(summary["subjects_per_center_group"].values())
    ms, hc = (summary["mean_volume_ml_by_group"]["thalamus_ml"][g] for g in ("MS", "HC"))
    assert ms < hc  # deep-GM atrophy of the synthetic MS patients


def _assert_same_numbers(a: object, b: object, where: str = "") -> None:
    """Equal structures; floats equal to 1e-9 relative (derived floats may differ in the last bits by CPU)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            _assert_same_numbers(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12), f"{where}: {a} != {b}"
    else:
        assert a == b, where


def test_committed_example_manifest_is_what_synth_writes(smoke_cohort: Path) -> None:
    """The CSV (and every image path / integer in it) is exact; the sidecar's derived floats to 1e-9."""
    example = Path(__file__).resolve().parent.parent / "data_manifests" / "synthetic-smoke"
    assert (example / "manifest.csv").read_text() == (smoke_cohort / "manifest.csv").read_text()
    committed = yaml.safe_load((example / "manifest.yaml").read_text())
    written = yaml.safe_load((smoke_cohort / "manifest.yaml").read_text())
    _assert_same_numbers(committed, written, "manifest.yaml")


def test_same_numbers_check_can_fail() -> None:
    _assert_same_numbers({"r": 0.8873900450295389}, {"r": 0.8873900450295393})
    with pytest.raises(AssertionError, match="r: 0.8 != 0.81"):
        _assert_same_numbers({"r": 0.8}, {"r": 0.81})
