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


def test_smoke_summary(smoke_run):
    root, s = smoke_run
    assert s["profile"] == "smoke" and s["leakage_audit"] == "passed"
    assert s["heldout_centers"] == ["B", "C"]
    # Table 3: three classifiers x two scenarios, every metric a finite fraction
    assert set(s["metrics_overall"]) == {f"{c}|{sc}" for c in ("svm", "rf", "resnet") for sc in ("real", "real+tda")}
    for key, per in s["metrics_overall"].items():
        for m in ("f1", "accuracy", "precision", "recall", "auc"):
            assert _unit(per[m]["mean"]), (key, m)
    assert len(s["metrics_per_loco"]) == 12
    # segmentation Dice per held-out center and ROI
    for c in ("B", "C"):
        d = s["segmentation_dice"][c]
        assert len(d["per_roi"]) == 10 and _unit(d["mean"])
        assert s["selected_features"][c] and all("__" in f for f in s["selected_features"][c])
        n_test = s["n_scans"][c]["test"]
        assert n_test > 0 and s["n_scans"][c]["train"] > n_test
    # thresholds: 2 LOCO x 2 scenarios x 3 classifiers x 2 repetitions, each a probability
    assert len(s["thresholds"]) == 24 and all(0 <= v <= 1 for v in s["thresholds"].values())
    for sc, u in s["utility"].items():
        assert u["tp"] + u["fn"] + u["tn"] + u["fp"] == sum(s["n_scans"][c]["test"] for c in ("B", "C"))
        assert _unit(u["sensitivity"]) and _unit(u["specificity"])
    assert set(s["friedman"]) == {"real", "real+tda"}
    assert s["best_pipeline"]["scenario"] == "real+tda"
    for c in ("B", "C"):
        h = s["harmonization"][c]
        assert _unit(h["center_accuracy"]["before"]) and _unit(h["center_accuracy"]["after"])
        assert set(h["no_combat"]) == {"svm", "rf", "resnet"}
        assert set(s["ceiling_auc"][c]) == {"deep-GM generative variables", "all generative variables"}
    assert (root / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_bad_heldout_center_fails_before_training(tmp_path):
    with pytest.raises(run.FoldFailed) as err:
        run.run_notebook(NOTEBOOK, profile="smoke", out_dir=tmp_path / "out", executed_dir=tmp_path / "book",
                         overrides={"heldout_centers": ["B", "Z"]}, folds=[], aggregate=True)
    assert err.value.ename == "StudyDesignError"
    assert "held-out center 'Z' does not exist" in err.value.evalue
    assert err.value.first_line.startswith("manifest_path = ")
