"""End-to-end tests of notebooks/04_radiomics_fusion.ipynb (seed 002, CR / RE maps fused into two U-Nets).

* smoke profile through the runner (2 folds fanned out in parallel + aggregate) on the
  synthetic smoke cohort: summary.json holds per-fold metrics per network and arm, the
  Wilcoxon results, SDDs and the inside/outside statistics, each consistent with the
  others (tables = mean / population SD of the fold values, SDD = Eqs. 4-5 of the
  recorded validation curve), the leakage audit passed, folds cached;
* the same on the real MSLUB sample (2 patients, 2 folds: each fold trains both arms
  on one patient and tests on the other; skipped when the data are absent): real NIfTI
  volumes flow through the maps, training and the metrics; no truth columns, so no ``vs_truth``;
* beyond the seed on the synthetic cohort: the test Dice per network and arm against the true
  lesions (``gt_lesion_mask``) beside the Dice against the manifest mask (``vs_truth``).

The MSLUB sample is read from ``../shared/data/open_ms_data`` beside the repository or
from ``$MSUTILS_TEST_MSLUB``; a manifest for it is written to a temporary folder with
:func:`msutils.data.mslub.build_manifest`. Both runs share one xdist group (each uses
2 processes).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from msutils.pipeline import runner as run

NOTEBOOK = "04_radiomics_fusion"
REPO = Path(__file__).resolve().parent.parent
MSLUB_DATA = Path(os.environ.get("MSUTILS_TEST_MSLUB", REPO.parent / "shared" / "data" / "open_ms_data"))
NETS = ("resnext_unet", "attention_unet")
ARMS = ("mri", "mri+features")
METRICS = ("dice", "precision", "sensitivity")
SMOKE_EPOCHS = {"resnext_unet": 4, "attention_unet": 4}
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("notebook_04")]


@pytest.fixture(scope="module")
def mslub_manifest(tmp_path_factory):
    if not (MSLUB_DATA / "patient_info.csv").is_file():
        return None
    from msutils.data.mslub import build_manifest

    return build_manifest(MSLUB_DATA, tmp_path_factory.mktemp("mslub") / "manifest.csv")


def _run(root: Path, overrides: dict) -> tuple[Path, dict]:
    out = root / "out"
    path = run.run_notebook(NOTEBOOK, profile="smoke", out_dir=out, executed_dir=root / "book", overrides=overrides)
    return out, json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def smoke_run(smoke_notebook):
    # the notebook's default real sample (data_manifests/mslub), as in the smoke book it is shared with
    return smoke_notebook(NOTEBOOK)


@pytest.fixture(scope="module")
def mslub_run(tmp_path_factory, mslub_manifest):
    if mslub_manifest is None:
        pytest.skip(f"the MSLUB sample is not available at {MSLUB_DATA}")
    return _run(tmp_path_factory.mktemp("nb04_mslub"),
                {"manifest": str(mslub_manifest), "real_manifest": str(mslub_manifest)})


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_runs(s: dict) -> None:
    """Per-fold numbers in range; tables, SDDs and Dice-by-fold consistent with them."""
    folds = s["folds"]
    n_test = {net: 0 for net in NETS}
    for net in NETS:
        for fold in folds:
            for arm in ARMS:
                r = s["per_fold"][net][fold][arm]
                curve = np.array(r["val_dice_curve"], dtype=float)
                assert len(curve) == SMOKE_EPOCHS[net]
                assert r["best_epoch"] == int(np.argmax(curve)) + 1 and r["best_val_dice"] == pytest.approx(curve.max())
                d = np.diff(curve)
                assert r["sdd"] == pytest.approx(np.sqrt(np.mean((d - d.mean()) ** 2)), abs=1e-12)
                assert all(0 <= r["test"][m] <= 1 for m in METRICS)
                assert r["n_parameters"] > 0 and r["seconds"]["train"] > 0
            assert s["per_fold"][net][fold]["mri"]["n_test_slices"] == s["per_fold"][net][fold]["mri+features"][
                "n_test_slices"]
            n_test[net] += s["per_fold"][net][fold]["mri"]["n_test_slices"]
            # the arms differ only in the first convolution's input channels
            assert s["per_fold"][net][fold]["mri+features"]["n_parameters"] > s["per_fold"][net][fold]["mri"][
                "n_parameters"]
        assert n_test[net] == s["n_slices"]  # every study slice is tested exactly once
        table = s["tables"][net]
        for metric in METRICS:
            for arm in ARMS:
                vals = np.array([s["per_fold"][net][f][arm]["test"][metric] for f in folds])
                assert table[metric][f"{arm} mean"] == pytest.approx(vals.mean(), abs=1e-9)
                assert table[metric][f"{arm} sd"] == pytest.approx(vals.std(ddof=0), abs=1e-9)
            for p in ("p slices", "p patients"):
                assert 0 <= table[metric][p] <= 1
            assert table[metric]["n slices"] == s["n_slices"]
            assert table[metric]["n patients"] == s["n_patients"]
        for arm in ARMS:
            assert [s["dice_by_fold"][net][arm][str(k + 1)] for k in range(len(folds))] == pytest.approx(
                [s["per_fold"][net][f][arm]["test"]["dice"] for f in folds])
        sdd = s["sdd"][net]
        assert sdd["per_fold"][folds[0]]["mri"] == pytest.approx(s["per_fold"][net][folds[0]]["mri"]["sdd"])
        assert 0 <= sdd["wilcoxon_p"] <= 1
        diff = s["arm_differences"][net]["mri+features"]
        assert diff["n_slices"] == s["n_slices"] and diff["n_patients"] == s["n_patients"]
        assert -1 <= diff["ci_low"] <= diff["ci_high"] <= 1 and -1 <= diff["mean"] <= 1


def _check_maps(stats: dict, cr_min: float, re_min: float) -> None:
    """Both maps higher inside the lesions: effect sizes above measured lower bounds (with margin)."""
    for name, bound in (("cr", cr_min), ("re", re_min)):
        r = stats[name]
        assert r["prob_superiority"] > bound and r["median_inside"] > r["median_outside"]
        assert r["rank_biserial"] == pytest.approx(2 * r["prob_superiority"] - 1)
        assert r["p"] < 1e-10 and r["n_inside"] > 100 and r["n_outside"] > r["n_inside"]


def _check_vs_truth(s: dict) -> None:
    """Beyond the seed: the same test predictions against the true lesions (synthetic cohorts only)."""
    vt = s["vs_truth"]
    assert vt is not None and vt["reference"] == "gt_lesion_mask"
    for net in NETS:
        for arm in ARMS:
            d = vt["dice"][net][arm]
            # the Dice against the manifest mask is Table 1 / 3's
            assert d["lesion_mask"] == pytest.approx(s["tables"][net]["dice"][f"{arm} mean"])
            assert _finite(d["gt_lesion_mask"]) and 0 <= d["gt_lesion_mask"] <= 1
            assert _finite(d["gt_lesion_mask_sd"]) and d["gt_lesion_mask_sd"] >= 0
    # the rater-like lesion_mask against the truth on every study slice: close but not identical
    assert vt["rater_slices"] == s["n_slices"] and 0.3 < vt["rater_dice"] < 1


def test_smoke_vs_truth(smoke_run):
    _check_vs_truth(smoke_run[1])


def test_smoke_summary(smoke_run, mslub_manifest):
    out, s = smoke_run
    assert s["profile"] == "smoke" and s["folds"] == ["fold0", "fold1"] and s["leakage_audit"] == "passed"
    assert s["n_patients"] == 6 and s["val_units"] == ["patient"] and s["cohort"] == "synthetic-smoke"
    assert s["config"]["arms"] == list(ARMS) and s["config"]["maps"]["alpha"] == 7.0
    assert 6 <= s["n_slices"] <= 36  # at most 6 study slices per patient
    _check_runs(s)
    # synthetic lesions are FLAIR-hyperintense by construction: CR and RE higher inside
    # (measured P(inside > outside): CR 0.81, RE 0.77)
    assert s["inside_outside"]["cohort"]["synthetic"] is True
    _check_maps(s["inside_outside"]["cohort"]["maps"], 0.7, 0.65)
    if mslub_manifest is not None:  # real MSLUB lesions (measured: CR 0.95, RE 0.62)
        assert s["inside_outside"]["real"]["name"] == "mslub"
        _check_maps(s["inside_outside"]["real"]["maps"], 0.85, 0.55)
    else:
        assert s["inside_outside"]["real"] is None
    cache_root = out / "cache" / NOTEBOOK
    assert {p.name.split("-")[0] for p in cache_root.iterdir() if not p.name.startswith(".")} == {"fold0", "fold1", "aggregate"}
    assert len(list((out / NOTEBOOK / "maps").glob("*.npz"))) >= 6  # one map cache entry per scan
    assert (out.parent / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_mslub_real_data(mslub_run):
    out, s = mslub_run
    assert s["cohort"] == "mslub" and s["leakage_audit"] == "passed"
    assert s["n_patients"] == 2 and s["val_units"] == ["slices"]
    for net in NETS:  # each fold trains on one patient's slices and tests on the other's
        tests = [s["per_fold"][net][f]["mri"]["n_test_slices"] for f in s["folds"]]
        assert sum(tests) == s["n_slices"] and all(t > 0 for t in tests)
    _check_runs(s)
    assert s["inside_outside"]["cohort"]["name"] == "mslub" and s["inside_outside"]["cohort"]["synthetic"] is False
    assert s["vs_truth"] is None  # a real cohort has no truth columns
    _check_maps(s["inside_outside"]["cohort"]["maps"], 0.85, 0.55)
