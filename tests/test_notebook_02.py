"""End-to-end tests of notebooks/02_edss_regression.ipynb (seed 001, EDSS regression).

* smoke profile through the runner (3 CV folds + one repeated split fanned out +
  aggregate): summary.json has every headline number, finite; the headline model is
  the one with the lowest cross-validated MAE (never a test metric); the bootstrap
  intervals bracket their estimates; the correlations reach ground-truth bounds the
  smoke cohort makes certain; every recorded fitted step saw exactly its training
  subjects of the split file; the repeated split's fit log saw none of its test subjects;
* leakage canary on the smoke cohort: permuting the internal / external test EDSS
  leaves the selected features, the fitted models, the model chosen by CV and its
  hyper-parameters unchanged (the notebook's functions
  :func:`msutils.studies.edss_regression.fit_study` and
  :func:`~msutils.studies.edss_regression.headline` called twice);
* quick profile (slow): the model chosen by CV reaches 60 % of the ceiling reference
  on the internal test set, over the repeated splits too, and the selection recovers
  at least half of the true EDSS drivers.

Cohorts are generated into a temporary ``MSUTILS_HOME``; nothing is written into the
repository or the user's cache.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msutils.studies import edss_regression as edss
from msutils.pipeline import runner as run
from msutils.data.cohort import load_cohort
from msutils.data.leakage import FitLog, assert_no_leak
from msutils.data.splits import heldout_subjects, internal_external_cv, read_splits

NOTEBOOK = "02_edss_regression"
#: Ground-truth bounds of the smoke profile. Measured at seeds 0 / 1 / 2 (layout issue, under load):
#: best out-of-fold training r 0.948 / 0.775 / 0.804, best external-test r 0.741 / 0.868 / 0.684,
#: drivers recovered 3 / 2 / 4, ceiling r 0.887 each (whole cohort, ``ceiling_r_cohort``). Issue 13, seed 0:
#: model chosen by CV = ridge, internal r 0.366 (95 % CI -0.55 to 0.89, 8 patients), external r 0.681
#: (0.47-0.91); ceiling reference 0.737 / 0.885 on the same test patients. Realistic cohort (issue 8), seed 0:
#: ridge, internal r 0.398 (-0.79 to 0.91), external r 0.668 (0.37-0.91), training-CV r 0.904, ceiling reference
#: 0.691 / 0.776 (0.804 whole cohort), 3 drivers recovered. Set with margin; a pipeline that
#: lost the EDSS signal (shuffled targets, misaligned subjects, wrong features) stays near r = 0.
SMOKE_BOUNDS = {"ceiling_r": (0.5, 1.0), "best_training_r": 0.55, "best_external_r": 0.45, "n_drivers_recovered": 1}


def _run(tmp_root: Path, profile: str) -> tuple[Path, dict]:
    home = tmp_root / "msutils_home"
    out = tmp_root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSUTILS_HOME", str(home))  # inherited by the papermill kernels
        summary_path = run.run_notebook(NOTEBOOK, profile=profile, out_dir=out,
                                        executed_dir=tmp_root / "book")
    return out, json.loads(Path(summary_path).read_text())


@pytest.fixture(scope="session")
def smoke_run(smoke_notebook):
    return smoke_notebook(NOTEBOOK)  # shared with the smoke book (tests/conftest.py)


#: The quick-profile acceptance test runs only when this variable is set (it takes about 25 minutes of one
#: of two cores: the edss-quick cohort, radiomics of 190 scans and 14 folds), keeping `make test` on smoke data.
QUICK_ENV = "MSUTILS_QUICK_TESTS"


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    if not os.environ.get(QUICK_ENV):
        pytest.skip(f"quick-profile acceptance test: set {QUICK_ENV}=1 to run it (about 25 min on 2 cores)")
    return _run(tmp_path_factory.mktemp("nb02_quick"), "quick")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_smoke_summary(smoke_run):
    out, s = smoke_run
    for key in ("metrics", "clinical_only_metrics", "selected_features", "drivers_recovered", "ceiling_r",
                "ceiling_r_cohort", "fraction_of_ceiling", "anova_p", "anova", "profile", "wall_time_s",
                "model_chosen_by_cv", "chosen_by_cv", "chosen_by_cv_r", "intervals", "repeats", "sp_vs_rr",
                "ridge_weights", "lesion_volume", "n_drivers_recovered", "selection_stages", "icc",
                "hyperparameters", "split", "fit_log"):
        assert key in s, key
    assert "best_model" not in s and "best_internal_r" not in s
    assert s["profile"] == "smoke"
    for fs in ("metrics", "clinical_only_metrics"):
        assert set(s[fs]) == {"training", "internal", "external"}
        for cohort, per in s[fs].items():
            assert set(per) == set(edss.MODEL_ORDER)
            for m, v in per.items():
                assert all(_finite(v[k]) for k in ("r", "pearson_r2", "r2_score", "mae")), (fs, cohort, m, v)
                assert v["pearson_r2"] == pytest.approx(v["r"] ** 2)
    for cohort in ("training", "internal", "external"):
        assert s["metrics"][cohort]["ridge"]["n"] == s["n_subjects"][cohort]
    assert s["selected_features"] and all(isinstance(f, str) for f in s["selected_features"])
    assert s["selection_stages"]["CFS best first"] == len(s["selected_features"])
    assert set(s["drivers_recovered"]) == {"lesion_load", "thalamus_volume", "texture_amplitude", "age",
                                           "sp_course"}
    assert s["n_drivers_recovered"] == sum(bool(v) for v in s["drivers_recovered"].values())
    # the headline model: lowest CV MAE of the four tuned models, whatever the test sets say
    head = s["chosen_by_cv"]["selected"]
    assert s["model_chosen_by_cv"] == head["model_chosen_by_cv"] == min(head["cv_mae"], key=head["cv_mae"].get)
    assert set(head["cv_mae"]) == set(edss.MODEL_ORDER)
    ours = s["metrics"]["internal"][s["model_chosen_by_cv"]]
    assert {k: head["scores"]["internal"][k] for k in ours} == pytest.approx(ours)
    for c in ("internal", "external"):
        assert 0.3 <= s["ceiling_r"][c] <= 1.0  # a reference on 8-12 smoke test patients
        assert s["fraction_of_ceiling"][c] == pytest.approx(s["chosen_by_cv_r"][c] / s["ceiling_r"][c])
    # bootstrap intervals over the test patients bracket their estimates, for all four models
    for fs, key in (("selected", "metrics"), ("clinical", "clinical_only_metrics")):
        assert set(s["intervals"][fs]) == {"internal", "external"}
        for c, per in s["intervals"][fs].items():
            assert set(per) == set(edss.MODEL_ORDER)
            for m, by_metric in per.items():
                assert set(by_metric) == {"r", "pearson_r2", "r2_score", "mae"}
                for metric, (est, lo, hi) in by_metric.items():
                    assert est == pytest.approx(s[key][c][m][metric])
                    assert lo <= est <= hi and lo < hi, (fs, c, m, metric)
    # the repeated split: a different 80/20 split, the whole study again
    rep = s["repeats"]
    assert rep["split_seeds"] == [0, 1]
    assert rep["runs"][1]["metrics"]["selected"]["internal"].keys() == set(edss.MODEL_ORDER)
    assert set(rep["mean_sd"]["selected"]) >= {f"internal / {m}" for m in edss.MODEL_ORDER} | {
        f"external / {edss.CHOSEN_BY_CV}"}
    r_int = [r["metrics"]["selected"]["internal"]["ridge"]["r"] for r in rep["runs"]]
    assert rep["mean_sd"]["selected"]["internal / ridge"]["r mean"] == pytest.approx(np.mean(r_int))
    assert s["sp_vs_rr"]["levels"] == ["RR", "SP"] and s["sp_vs_rr"]["ci_low"] < s["sp_vs_rr"]["difference"]
    assert set(s["ridge_weights"]) == set(s["selected_features"]) | {"(intercept)"}
    assert "lesion_mask" in s["lesion_volume"]["source"]
    for name in ("internal", "external"):
        assert 0 <= s["anova_p"][name] <= 1
        assert _finite(s["anova"][name]["F"]) and 0 < s["anova"][name]["eps"] <= 1
    assert _finite(s["wall_time_s"])
    # the folds were fanned out and cached; the executed notebook was published
    cache_root = out / "cache" / NOTEBOOK
    assert {p.name.split("-")[0] for p in cache_root.iterdir() if not p.name.startswith(".")} == \
        {"shared", "cv0", "cv1", "cv2", "rep1", "aggregate"}
    assert (out.parent / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_smoke_ground_truth_bounds(smoke_run):
    """What the smoke cohort makes certain, with margin (measured over seeds 0-2, see SMOKE_BOUNDS)."""
    _, s = smoke_run
    b = SMOKE_BOUNDS
    assert b["ceiling_r"][0] <= s["ceiling_r_cohort"] <= b["ceiling_r"][1]
    best_training_r = max(v["r"] for v in s["metrics"]["training"].values())
    assert best_training_r >= b["best_training_r"], s["metrics"]["training"]
    best_external_r = max(v["r"] for v in s["metrics"]["external"].values())
    assert best_external_r >= b["best_external_r"], s["metrics"]["external"]
    assert s["n_drivers_recovered"] >= b["n_drivers_recovered"], s["drivers_recovered"]


def test_smoke_fitted_steps_saw_only_their_training_subjects(smoke_run):
    """The recorded fit log, checked against the split file the run wrote (not a 'passed' string)."""
    out, s = smoke_run
    split = read_splits(next(out.glob(f"{NOTEBOOK}/splits_*.json")))[0]
    assert s["split"] == {k: split[k] for k in ("train", "test", "external")}
    train, held = set(split["train"]), set(heldout_subjects(split))
    assert held and not train & held
    log = FitLog.from_dict(s["fit_log"])
    assert_no_leak(log, held)
    for step in ("volumes.normative", "selection.variance", "selection.collinearity", "selection.lasso",
                 "selection.cfs"):
        assert log.seen(step) == train, step
    assert log.seen("selection.icc_stability") <= train and len(log.seen("selection.icc_stability")) == \
        s["icc"]["subjects"]
    folds = [f"cv{k}" for k in range(len(split["inner"]))]
    for k, inner in enumerate(split["inner"]):
        for m in edss.MODEL_ORDER:
            assert log.seen(f"{folds[k]}/regression.{m}.cv.fold{k}") == set(inner["train"]), (k, m)
            assert log.seen(f"regression.{m}.cvpred.fold{k}") == set(inner["train"]), (k, m)
    for m in edss.MODEL_ORDER:
        assert log.seen(f"regression.{m}.final") == train
    n_models, n_folds = len(edss.MODEL_ORDER), len(split["inner"])
    assert len(log) == 6 + 2 * n_folds * n_models + n_models  # nothing fitted that the audit does not know of
    # the repeated split, audited against its own split (its fit log is in its fold result)
    import pickle

    rep = pickle.loads(next((out / "cache" / NOTEBOOK).glob("rep1*/result.pkl")).read_bytes())
    rep_log, rep_split = FitLog.from_dict(rep["fit_log"]), rep["split"]
    assert rep_split["test"] != split["test"] and rep["split_seed"] == 1
    assert_no_leak(rep_log, set(rep_split["test"]) | set(rep_split["external"]))
    for step in ("volumes.normative", "selection.lasso", "selection.cfs"):
        assert rep_log.seen(step) == set(rep_split["train"]), step
    assert rep_log.seen("selection.icc_stability") <= set(rep_split["train"])


def test_leakage_canary_smoke_cohort(smoke_run):
    """Permuting the test subjects' EDSS leaves every fitted quantity unchanged; the notebook's numbers are
    exactly what the canary's function gives with the hyper-parameters its folds chose."""
    import pickle

    out, s = smoke_run
    cohort = load_cohort(s["manifest"], check_images=False)
    config = edss.StudyConfig(n_gm_parcels=8, icc_subjects=10, lasso_cv=5, n_jobs=1)
    data = edss.load_study_data(cohort, config, cache_dir=out / NOTEBOOK / "radiomics_cache", progress=False)
    split = read_splits(next(out.glob(f"{NOTEBOOK}/splits_*.json")))[0]
    assert split == internal_external_cv(data.subjects.reset_index(), test_size=0.2, n_folds=3, seed=0)
    retest = edss.retest_radiomics(cohort, data, edss.icc_subset(cohort, data, split["train"], config), config,
                                   progress=False)
    heldout = list(split["test"]) + list(split["external"])
    folds = sorted(p for p in (out / "cache" / NOTEBOOK).glob("cv*/result.pkl"))
    assert len(folds) == len(split["inner"])
    cv_scores = pd.concat([pickle.loads(p.read_bytes())["scores"] for p in folds], ignore_index=True)
    choices = edss.choose_hyperparameters(cv_scores, len(folds))
    hyper = {fs: {m: ch.params for m, ch in per.items()} for fs, per in choices.items()}
    kw = {"hyperparameters": hyper, "folds": split["inner"],
          "test_sets": {"internal": split["test"], "external": split["external"]}}
    log = FitLog()
    fit_a = edss.fit_study(data, split["train"], config, retest=retest, fit_log=log, **kw)
    assert_no_leak(log, heldout)
    assert fit_a.selection.selected == s["selected_features"]  # same as the notebook's selection
    scores = fit_a.scores(data.edss)
    for fs, key in (("selected", "metrics"), ("clinical", "clinical_only_metrics")):
        for cohort_name, per in s[key].items():
            for m, v in per.items():
                assert {k: scores[fs][cohort_name][m][k] for k in v} == pytest.approx(v, rel=1e-12), (fs, m)
    y = data.edss.copy()
    y.loc[heldout] = np.random.default_rng(1).permutation(y.loc[heldout].to_numpy())[::-1]
    assert not y.equals(data.edss)
    fit_b = edss.fit_study(data.with_edss(y), split["train"], config, retest=retest, **kw)
    assert fit_a.selection.selected == fit_b.selection.selected
    # the headline: the notebook's choice, and it does not move with the test labels (only the test scores do)
    head_a = edss.headline(choices["selected"], scores["selected"])
    head_b = edss.headline(choices["selected"], fit_b.scores(y)["selected"])
    assert head_a["model_chosen_by_cv"] == s["model_chosen_by_cv"] == head_b["model_chosen_by_cv"]
    assert head_a["params"] == head_b["params"] == s["chosen_by_cv"]["selected"]["params"]
    assert head_a["scores"]["internal"] != head_b["scores"]["internal"]
    for fs in edss.FEATURE_SETS:
        for cohort_name in ("training", "internal", "external"):
            pd.testing.assert_frame_equal(fit_a.predictions[fs][cohort_name], fit_b.predictions[fs][cohort_name])


@pytest.mark.slow
def test_quick_profile_reaches_ceiling_fraction_and_recovers_drivers(quick_run):
    _, s = quick_run
    assert s["profile"] == "quick"
    assert s["chosen_by_cv_r"]["internal"] >= 0.6 * s["ceiling_r"]["internal"], s["metrics"]["internal"]
    assert len(s["repeats"]["split_seeds"]) >= 5
    chosen = s["repeats"]["mean_sd"]["selected"][f"internal / {edss.CHOSEN_BY_CV}"]
    ceilings = [r["ceiling"]["internal"] for r in s["repeats"]["runs"]]
    assert chosen["r mean"] >= 0.6 * np.mean(ceilings), chosen
    n_drivers = len(s["drivers_recovered"])
    assert s["n_drivers_recovered"] >= math.ceil(n_drivers / 2), s["drivers_recovered"]
