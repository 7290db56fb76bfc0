"""End-to-end tests of notebooks/03_flair_nnunet.ipynb (seed 003, 2D nnU-Net FLAIR segmentation).

* smoke profile through the runner (2 folds fanned out in parallel + aggregate) on the
  synthetic smoke cohort: summary.json holds every headline number, in range and
  consistent (slice counts, balanced negatives under the seed's protocol, every slice
  beside it, the seed's TP rule never finding more than the lenient one, exact CIs
  equal to scipy's Clopper-Pearson intervals, bootstrap CIs ordered), the exported NIfTI
  cases and the trained checkpoints exist, the fold results and the test-set
  predictions are cached;
* the same on the real MSLUB sample beside the repository (2 patients, one center:
  1 trains with slab folds, 1 is the internal test; skipped when the data are absent):
  real NIfTI volumes flow through preprocessing, export, nnU-Net training, prediction
  and the metrics.

Both run in one xdist group (each uses 2 processes); together about 3-4 minutes on 2 cores.
The synthetic cohort goes to the session's MSUTILS_HOME (tests/conftest.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from msutils.data.leakage import FitLog, assert_no_leak
from msutils.data.splits import heldout_subjects, read_splits
from msutils.pipeline import runner as run

NOTEBOOK = "03_flair_nnunet"
REPO = Path(__file__).resolve().parent.parent
MSLUB = REPO / "data_manifests" / "mslub" / "manifest.csv"
MSLUB_DATA = REPO.parent / "shared" / "data" / "open_ms_data"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("notebook_03")]

SLICE_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
VOXEL_METRICS = ("dice", "iou", "ppv", "sensitivity", "hd95")
#: Bounds of the smoke profile (2 epochs x 5 iterations at 64 x 64: a barely trained network). Measured at
#: seeds 0 / 1 / 2 (layout issue, under load): lowest fold validation Dice 0.024 / 0.023 / 0.014, internal
#: test Dice 0.058 / 0.024 / 0.034, external 0.051 / 0.031 / 0.027, lowest slice sensitivity 0.818 / 0.265 /
#: 0.37; on the realistic cohort (issue 8: rater-like masks, look-alikes), seed 0, the seed's TP rule and
#: protocol (issue 13, under load): 0.016, internal 0.022, external 0.019, lowest sensitivity 0.41. They
#: prove predictions that are non-empty and overlap the lesions (an empty or misaligned output scores 0);
#: that nnU-Net really learns is tested in tests/test_nnunet.py::test_training_learns_the_lesions.
SMOKE_BOUNDS = {"validation_dice": 0.005, "test_dice": 0.01, "slice_sensitivity": 0.1}


def _run(root: Path, overrides: dict | None = None) -> tuple[Path, dict]:
    out = root / "out"
    path = run.run_notebook(NOTEBOOK, profile="smoke", out_dir=out, executed_dir=root / "book", overrides=overrides)
    return out, json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def smoke_run(smoke_notebook):
    return smoke_notebook(NOTEBOOK)  # shared with the smoke book (tests/conftest.py)


@pytest.fixture(scope="module")
def mslub_run(tmp_path_factory):
    if not MSLUB_DATA.is_dir():
        pytest.skip(f"the MSLUB sample is not available at {MSLUB_DATA}")
    return _run(tmp_path_factory.mktemp("nb03_mslub"), {"manifest": str(MSLUB)})


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_test_set(res: dict, n_patients: int, size: int, *, balanced: bool = True) -> None:
    """Slice counts consistent, ratios in [0, 1] inside their exact CIs, voxel means inside their CIs."""
    from scipy.stats import binomtest

    sl = res["slice_level"]
    n_pos, n_neg = res["n_positive_slices"], res["n_negative_slices"]
    assert res["n_patients"] == n_patients
    assert n_pos > 0 and sl["tp"] + sl["fn"] == n_pos and sl["tn"] + sl["fp"] == n_neg
    assert sl["n"] == n_pos + n_neg
    if balanced:  # the seed's protocol: as many negatives as positives (fewer only if not enough exist)
        assert n_neg <= n_pos
    assert res["truth_overlap"] == "instance" and set(res["slice_level_by_rule"]) == {"instance", "union"}
    assert res["slice_level_by_rule"]["instance"] == sl
    lenient = res["slice_level_by_rule"]["union"]
    assert sl["tp"] <= lenient["tp"] and (sl["tn"], sl["fp"]) == (lenient["tn"], lenient["fp"])
    for m, (x, n) in {"sensitivity": (sl["tp"], n_pos), "specificity": (sl["tn"], n_neg),
                      "accuracy": (sl["tp"] + sl["tn"], n_pos + n_neg)}.items():
        if n:
            ci = binomtest(int(x), int(n)).proportion_ci(0.95, method="exact")
            assert (sl[f"{m}_ci_low"], sl[f"{m}_ci_high"]) == pytest.approx((ci.low, ci.high)), m
    for m in SLICE_METRICS:
        v, lo, hi = sl[m], sl[f"{m}_ci_low"], sl[f"{m}_ci_high"]
        if v is None:  # zero denominator (e.g. PPV without any predicted-positive slice)
            assert lo is None and hi is None
            continue
        assert 0 <= lo <= v <= hi <= 1, (m, lo, v, hi)
    assert sl["accuracy"] == pytest.approx((sl["tp"] + sl["tn"]) / sl["n"])
    assert sl["sensitivity"] == pytest.approx(sl["tp"] / n_pos)
    vox = res["voxel_level"]
    for m in VOXEL_METRICS:
        if vox[m]["n"] == 0:  # HD95 is undefined when every prediction of a lesion slice is empty
            assert m == "hd95"
            continue
        v = vox[m]  # percentile bootstrap over patients: ordered, not necessarily around the mean
        assert _finite(v["mean"]) and v["ci_low"] <= v["ci_high"] and v["n"] <= n_pos
        assert 1 <= v["n_units"] <= n_patients
        if m != "hd95":
            assert 0 <= v["ci_low"] and v["ci_high"] <= 1 and 0 <= v["mean"] <= 1
    assert vox["dice"]["n"] == n_pos and vox["dice"]["n_units"] == n_patients


def test_smoke_summary(smoke_run):
    out, s = smoke_run
    for key in ("validation_dice", "validation_dice_mean", "internal", "external", "profile", "image_size",
                "num_epochs", "iterations_per_epoch", "network", "preprocessing", "n_patients", "split", "fit_log",
                "wall_time_s", "fold_unit", "predicted_slices"):
        assert key in s, key
    assert s["profile"] == "smoke" and s["fold_unit"] == "subject"
    assert (s["image_size"], s["num_epochs"], s["iterations_per_epoch"]) == (64, 2, 5)
    assert s["folds"] == ["fold0", "fold1"] and set(s["validation_dice"]) == {"fold0", "fold1"}
    assert all(0 <= d <= 1 for d in s["validation_dice"].values())
    assert s["validation_dice_mean"] == pytest.approx(sum(s["validation_dice"].values()) / 2)
    assert s["ablation_no_augmentation"] is None  # the smoke profile runs no fold0-noaug
    assert all(s["seconds"]["folds"][f]["epochs"] > 0 for f in ("fold0", "fold1"))  # nnU-Net really trained
    n = s["n_patients"]
    assert n["internal_test"] >= 1 and n["external_test"] >= 1 and n["train"] >= 2
    assert s["tp_rule"] == "instance"
    _check_test_set(s["internal"], n["internal_test"], 64)
    _check_test_set(s["external"], n["external_test"], 64)
    for name, key in (("center 1 (internal)", "internal"), ("center 2 (external)", "external")):
        every, seed, counts = s["every_slice"][name], s[key], s["test_set_counts"][name]
        _check_test_set(every, n[f"{key}_test"], 64, balanced=False)
        # every slice: all lesion slices (small ones too) and all lesion-free slices, a superset of the protocol's
        assert every["n_positive_slices"] == counts["lesion_slices"] >= seed["n_positive_slices"] == counts["positives"]
        assert every["n_negative_slices"] == counts["lesion_free"] >= seed["n_negative_slices"]
        assert counts["positives"] + counts["excluded_small"] == counts["lesion_slices"]
        assert every["patient_level"]["dice"]["n_units"] == n[f"{key}_test"]
        p = s["predicted_slices"][name]  # every slice of the pool was segmented once
        assert p["shape"] == [64, 64] and p["n"] == every["n_positive_slices"] + every["n_negative_slices"]
        assert s["seconds"]["test_sets"][name]["predict"] > 0
        if s["truth"] is not None:  # a cohort with declared true lesions: scored against them too
            _check_test_set(s["truth"][name]["all-truth"], n[f"{key}_test"], 64, balanced=False)
    pre = s["preprocessing"]
    assert pre["train_scans"] == n["train"]
    assert pre["kept"] + pre["excluded_by_entropy"] == pre["lesion_slices"] <= pre["slices"]
    assert pre["augmented_copies"] == 2 * pre["kept"] and pre["exported_cases"] == 3 * pre["kept"]
    # the folds ran in their own processes and were cached; the nnU-Net artefacts exist
    cache_root = out / "cache" / NOTEBOOK
    entries = [p.name for p in cache_root.iterdir() if not p.name.startswith(".")]
    assert {e.split("-")[0] for e in entries} == {"fold0", "fold1", "aggregate", "heldout"}
    assert sorted(e.split("-")[1] for e in entries if e.startswith("heldout-")) == ["external", "internal"]
    ws = next((out / NOTEBOOK).glob("nnunet-*"))
    assert len(list(ws.glob("workspace/nnUNet_raw/Dataset001_*/imagesTr/*_0000.nii.gz"))) == pre["exported_cases"]
    splits = json.loads(next(ws.glob("workspace/nnUNet_preprocessed/Dataset001_*/splits_final.json")).read_text())
    assert len(splits) == 2 and not any("_aug" in c for f in splits for c in f["val"])
    for k in (0, 1):
        assert next(ws.glob(f"workspace/nnUNet_results/*/*/fold_{k}/checkpoint_final.pth")).is_file()
    assert (out.parent / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_smoke_ground_truth_bounds(smoke_run):
    """Dice and slice sensitivity the smoke training reaches on the synthetic lesions (SMOKE_BOUNDS).

    An empty prediction, or one misaligned with the masks, scores 0 on every lesion slice.
    """
    _, s = smoke_run
    assert min(s["validation_dice"].values()) >= SMOKE_BOUNDS["validation_dice"], s["validation_dice"]
    for key in ("internal", "external"):
        assert s[key]["voxel_level"]["dice"]["mean"] >= SMOKE_BOUNDS["test_dice"], (key, s[key]["voxel_level"])
        sl = s[key]["slice_level"]
        assert sl["tp"] / (sl["tp"] + sl["fn"]) >= SMOKE_BOUNDS["slice_sensitivity"], (key, sl)


def _check_fit_log_against_split(out: Path, s: dict) -> None:
    """The recorded fitted steps, checked against the split file the run wrote."""
    split = read_splits(next((out / NOTEBOOK).glob("splits_*.json")))[0]
    assert s["split"] == {k: split[k] for k in ("train", "test", "external")}
    train = set(split["train"])
    log = FitLog.from_dict(s["fit_log"])
    assert_no_leak(log, heldout_subjects(split))
    assert log.seen("nnunet-plan-aug") == train  # nnU-Net planned on the whole training pool
    for k in range(len(s["validation_dice"])):
        seen = log.seen(f"nnunet-aug-fold{k}")
        if split["fold_unit"] == "subject":  # a fold trains on every training patient but its validation ones
            assert seen == train - set(split["inner"][k]["test"]), k
        else:  # slab folds: validation blocks come from the same patients
            assert seen == train, k
    assert len(log) == 1 + len(s["validation_dice"])


def test_smoke_fitted_steps_saw_only_their_training_patients(smoke_run):
    out, s = smoke_run
    _check_fit_log_against_split(out, s)


def test_mslub_real_data(mslub_run):
    out, s = mslub_run
    assert s["cohort"] == "mslub"
    _check_fit_log_against_split(out, s)
    assert s["n_patients"] == {"train": 1, "internal_test": 1, "external_test": 0}
    assert s["fold_unit"] == "slab" and s["external"] is None and s["centers"]["external"] == []
    pre = s["preprocessing"]
    assert pre["brain_source"] == {"nonzero": 1}  # skull-stripped images without a brain mask
    assert pre["slices"] == 182 and pre["kept"] > 0 and pre["exported_cases"] == 3 * pre["kept"]
    assert pre["pixel_spacing_mm"] == pytest.approx([218 / 64, 218 / 64])  # 218 mm FOV on 64 pixels
    ws = next((out / NOTEBOOK).glob("nnunet-*"))
    assert len(list(ws.glob("workspace/nnUNet_raw/Dataset001_*/imagesTr/*_0000.nii.gz"))) == pre["exported_cases"]
    assert all(0 <= d <= 1 for d in s["validation_dice"].values()) and len(s["validation_dice"]) == 2
    _check_test_set(s["internal"], 1, 64)
    pred = s["predicted_slices"]["center 1 (internal)"]
    assert pred["shape"] == [64, 64]
    every = s["every_slice"]["center 1 (internal)"]
    assert pred["n"] == every["n_positive_slices"] + every["n_negative_slices"]
    assert s["truth"] is None  # a real cohort: no true lesions beyond the manual masks
    for m in ("dice", "iou", "ppv", "sensitivity"):
        assert _finite(s["internal"]["voxel_level"][m]["mean"])
