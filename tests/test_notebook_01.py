"""End-to-end test of notebooks/01_gan_augmentation.ipynb (seed 000) in the smoke profile.

The runner fans the two LOCO iterations (B-out, C-out) out as processes, then the
aggregate run writes summary.json; a manifest that cannot support the design fails
in the design cell, before any training. The smoke run is shared with the smoke book (tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest

from msutils.pipeline import runner as run

NOTEBOOK = "01_gan_augmentation"
pytestmark = pytest.mark.xdist_group("notebook_01")


@pytest.fixture(scope="module")
def smoke_run(smoke_notebook):
    out, summary = smoke_notebook(NOTEBOOK)  # shared with the smoke book (tests/conftest.py)
    return out.parent, summary


def _unit(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= 1


SCENARIOS = ("real", "real+tda", "real+gba")
CLASSIFIERS = ("svm", "rf", "resnet")


def test_smoke_summary(smoke_run):
    root, s = smoke_run
    assert s["profile"] == "smoke" and s["leakage_audit"] == "passed"
    assert s["heldout_centers"] == ["B", "C"]
    # Table 3: three classifiers x three scenarios, every metric a finite fraction
    assert set(s["metrics_overall"]) == {f"{c}|{sc}" for c in CLASSIFIERS for sc in SCENARIOS}
    for key, per in s["metrics_overall"].items():
        for m in ("f1", "accuracy", "precision", "recall", "auc"):
            assert _unit(per[m]["mean"]), (key, m)
    assert len(s["metrics_per_loco"]) == 2 * 3 * 3
    # segmentation Dice per held-out center and ROI
    for c in ("B", "C"):
        d = s["segmentation_dice"][c]
        assert len(d["per_roi"]) == 10 and _unit(d["mean"])
        assert s["selected_features"][c] and all("__" in f for f in s["selected_features"][c])
        n_test = s["n_scans"][c]["test"]
        assert n_test > 0 and s["n_scans"][c]["train"] > n_test
    # thresholds: 2 LOCO x 3 scenarios x 3 classifiers x 2 repetitions, each a probability
    assert len(s["thresholds"]) == 36 and all(0 <= v <= 1 for v in s["thresholds"].values())
    assert set(s["utility"]) == set(SCENARIOS)
    for sc, u in s["utility"].items():
        assert u["tp"] + u["fn"] + u["tn"] + u["fp"] == sum(s["n_scans"][c]["test"] for c in ("B", "C"))
        assert _unit(u["sensitivity"]) and _unit(u["specificity"])
    assert set(s["friedman"]) == set(SCENARIOS)
    # chosen on the inner folds among the augmented scenarios
    assert s["best_pipeline"]["scenario"] in ("real+tda", "real+gba")
    for c in ("B", "C"):
        h = s["harmonization"][c]
        assert _unit(h["center_accuracy"]["before"]) and _unit(h["center_accuracy"]["after"])
        assert set(h["no_combat"]) == set(CLASSIFIERS)
        assert set(s["ceiling_auc"][c]) == {"deep-GM generative variables", "all generative variables"}
    assert (root / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_smoke_gba_image_quality_and_fidelity(smoke_run):
    _, s = smoke_run
    iq = s["image_quality"]
    # one cGAN per LOCO iteration and repetition (= inner fold 0, 1): 2 x 2 rows
    assert len(iq["per_fold"]) == 4
    assert sorted({(r["loco"], r["inner_fold"]) for r in iq["per_fold"]}) == [("B", 0), ("B", 1), ("C", 0), ("C", 1)]
    for r in iq["per_fold"]:
        assert 0 < r["SSIM"] <= 1 and 5 < r["PSNR"] < 60, r
        assert r["FID"] >= 0 and math.isfinite(r["KID"]) and r["epochs"] == 1
        assert _unit(r["nearest_is_parent"]) and _unit(r["nn_synthetic"]) and _unit(r["nn_p_less"])
    for k in ("FID", "KID", "SSIM", "PSNR"):
        assert math.isfinite(iq["mean"][k]), k
    # the U-Net segments every generated image (2 LOCO x 2 folds x 4 images x 10 ROIs); its known label map
    # scores it. The smoke U-Net (80 steps, 3 mm) misses the small deep-GM nuclei even on real scans, so the
    # bound is on the large whole-GM / whole-WM ROIs; Jaccard = Dice / (2 - Dice) per pair is below Dice
    seg = s["synthetic_segmentation"]
    assert seg["all ten ROIs"]["n"] == 2 * 2 * 4 * 10
    assert seg["whole_gm"]["Dice mean"] > 0.3 and seg["whole_wm"]["Dice mean"] > 0.2
    assert 0 < seg["all ten ROIs"]["Jaccard mean"] < seg["all ten ROIs"]["Dice mean"] < 1
    # Table 2: energy distance and KS for both augmented scenarios, ARI for all three
    fm = s["fidelity"]["mean"]
    assert set(fm) == set(SCENARIOS)
    for sc in ("real+tda", "real+gba"):
        assert fm[sc]["energy_distance"] > 0 and 0 < fm[sc]["ks_mean"] <= 1, sc
    assert all(-1 <= fm[sc]["ARI"] <= 1 for sc in SCENARIOS)
    assert set(s["synthetic_class_auc"]) == {"real+tda", "real+gba"}
    assert all(_unit(v) for v in s["synthetic_class_auc"].values())
    # the signal table covers the real scans and both synthetic scenarios
    assert {(r["source"], r["measure"]) for r in s["signal"]} >= {
        (src, m) for src in SCENARIOS for m in ("deep_gm_volume_ml", "deep_gm_texture")}
    # verdict: 3 classifiers x 3 contrasts x 2 metrics, each interval around its estimate
    assert len(s["verdict"]) == 18
    for v in s["verdict"]:
        assert v["CI low"] <= v["this run"] <= v["CI high"] and v["verdict"] in ("better", "worse", "not resolved")
    # the cGAN of every inner fold used is a fitted step of the audit (which passed: no held-out subject)
    for c in ("B", "C"):
        assert {"cgan-inner0", "cgan-inner1", "roi_unet", "combat", "threshold"} <= set(s["fit_steps"][c])
        assert s["cpu_seconds"][c]["total"] > 0


def test_bad_heldout_center_fails_before_training(tmp_path):
    with pytest.raises(run.FoldFailed) as err:
        run.run_notebook(NOTEBOOK, profile="smoke", out_dir=tmp_path / "out", executed_dir=tmp_path / "book",
                         overrides={"heldout_centers": ["B", "Z"]}, folds=[], aggregate=True)
    assert err.value.ename == "StudyDesignError"
    assert "held-out center 'Z' does not exist" in err.value.evalue
    assert err.value.first_line.startswith("manifest_path = ")
