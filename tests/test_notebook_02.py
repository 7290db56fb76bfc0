"""End-to-end tests of notebooks/02_edss_regression.ipynb (seed 001, EDSS regression).

* smoke profile through the runner (3 CV folds fanned out + aggregate): summary.json
  has every headline number, finite;
* leakage canary on the smoke cohort: permuting the internal / external test EDSS
  leaves the selected features and the fitted models unchanged
  (:func:`msutils.studies.edss_regression.fit_study` called twice);
* quick profile (slow, ~6-10 min on 2 cores): the best model reaches 60 % of the
  ceiling correlation on the internal test set and the selection recovers at least
  half of the true EDSS drivers.

Cohorts are generated into a temporary ``MSUTILS_HOME``; nothing is written into the
repository or the user's cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msutils.studies import edss_regression as edss
from msutils.pipeline import runner as run
from msutils.data.cohort import load_cohort
from msutils.data.leakage import FitLog, assert_no_leak

NOTEBOOK = "02_edss_regression"
pytestmark = pytest.mark.xdist_group("notebook_02")


def _run(tmp_root: Path, profile: str) -> tuple[Path, dict]:
    home = tmp_root / "msutils_home"
    out = tmp_root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSUTILS_HOME", str(home))  # inherited by the papermill kernels
        summary_path = run.run_notebook(NOTEBOOK, profile=profile, out_dir=out,
                                        executed_dir=tmp_root / "book")
    return out, json.loads(Path(summary_path).read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("nb02_smoke"), "smoke")


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("nb02_quick"), "quick")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_smoke_summary(smoke_run):
    out, s = smoke_run
    for key in ("metrics", "clinical_only_metrics", "selected_features", "drivers_recovered", "ceiling_r",
                "fraction_of_ceiling", "anova_p", "anova", "profile", "wall_time_s", "best_model",
                "best_internal_r", "n_drivers_recovered", "selection_stages", "icc", "hyperparameters"):
        assert key in s, key
    assert s["profile"] == "smoke" and s["leakage_audit"] == "passed"
    for fs in ("metrics", "clinical_only_metrics"):
        assert set(s[fs]) == {"training", "internal", "external"}
        for cohort, per in s[fs].items():
            assert set(per) == set(edss.MODEL_ORDER)
            for m, v in per.items():
                assert all(_finite(v[k]) for k in ("r", "r2", "mae")), (fs, cohort, m, v)
                assert v["r2"] == pytest.approx(v["r"] ** 2)
    assert s["metrics"]["training"]["ridge"]["n"] == s["n_subjects"]["training"]
    assert s["metrics"]["internal"]["ridge"]["n"] == s["n_subjects"]["internal"]
    assert s["metrics"]["external"]["ridge"]["n"] == s["n_subjects"]["external"]
    assert s["selected_features"] and all(isinstance(f, str) for f in s["selected_features"])
    assert s["selection_stages"]["CFS best first"] == len(s["selected_features"])
    assert set(s["drivers_recovered"]) == {"lesion_load", "thalamus_volume", "texture_amplitude", "age",
                                           "sp_course"}
    assert s["n_drivers_recovered"] == sum(bool(v) for v in s["drivers_recovered"].values())
    assert 0.5 < s["ceiling_r"] < 1
    assert s["fraction_of_ceiling"] == pytest.approx(s["best_internal_r"] / s["ceiling_r"])
    for name in ("internal", "external"):
        assert 0 <= s["anova_p"][name] <= 1
        assert _finite(s["anova"][name]["F"]) and 0 < s["anova"][name]["eps"] <= 1
    assert _finite(s["wall_time_s"])
    # the folds were fanned out and cached; the executed notebook was published
    cache_root = out / "cache" / NOTEBOOK
    assert {p.name.split("-")[0] for p in cache_root.iterdir() if not p.name.startswith(".")} == \
        {"shared", "cv0", "cv1", "cv2"}
    assert list(out.glob(f"{NOTEBOOK}/splits_*.json"))
    assert (out.parent / "book" / f"{NOTEBOOK}.ipynb").is_file()


def test_leakage_canary_smoke_cohort(smoke_run):
    """Permuting the test subjects' EDSS leaves every fitted quantity unchanged."""
    out, s = smoke_run
    cohort = load_cohort(s["manifest"], check_images=False)
    config = edss.StudyConfig(n_gm_parcels=8, icc_subjects=10, lasso_cv=5, n_jobs=1)
    data = edss.load_study_data(cohort, config, cache_dir=out / NOTEBOOK / "radiomics_cache", progress=False)
    split = edss.study_split(data.subjects, n_folds=3, seed=0)
    retest = edss.retest_radiomics(cohort, data, edss.icc_subset(cohort, data, split["train"], config), config,
                                   progress=False)
    heldout = list(split["test"]) + list(split["external"])
    log = FitLog()
    fit_a = edss.fit_study(data, split["train"], config, retest=retest, fit_log=log)
    assert_no_leak(log, heldout)
    y = data.edss.copy()
    y.loc[heldout] = np.random.default_rng(1).permutation(y.loc[heldout].to_numpy())[::-1]
    assert not y.equals(data.edss)
    fit_b = edss.fit_study(data.with_edss(y), split["train"], config, retest=retest)
    assert fit_a.selection.selected == fit_b.selection.selected
    assert fit_a.selection.selected == s["selected_features"]  # same as the notebook's selection
    for fs in edss.FEATURE_SETS:
        pd.testing.assert_frame_equal(fit_a.predict(data, split["train"], fs),
                                      fit_b.predict(data, split["train"], fs))


@pytest.mark.slow
def test_quick_profile_reaches_ceiling_fraction_and_recovers_drivers(quick_run):
    _, s = quick_run
    assert s["profile"] == "quick"
    assert s["best_internal_r"] >= 0.6 * s["ceiling_r"], s["metrics"]["internal"]
    n_drivers = len(s["drivers_recovered"])
    assert s["n_drivers_recovered"] >= math.ceil(n_drivers / 2), s["drivers_recovered"]
