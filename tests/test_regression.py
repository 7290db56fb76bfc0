"""Tests of msutils.models.regression: per-fold grid search == GridSearchCV, metrics, clinical design."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from msutils.models import regression as reg


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, list]] = []

    def record(self, step, subject_ids) -> None:
        self.records.append((step, list(subject_ids)))


def _data(n=90, p=5, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)) * [1, 5, 0.2, 30, 2],
                     columns=[f"f{i}" for i in range(p)], index=[f"sub-{i:03d}" for i in range(n)])
    z = (X - X.mean()) / X.std()
    y = np.clip(3 + 1.0 * z["f0"] - 0.7 * z["f1"] + 0.4 * z["f2"] ** 2
                + rng.normal(scale=0.6, size=n), 0, 9.5)
    return X, pd.Series(y, index=X.index, name="edss")


def _run_all_folds(name, X, y, folds, grid="small"):
    return [reg.cv_fold_scores(name, X, y, folds, k, grid=grid, seed=0) for k in range(len(folds))]


@pytest.mark.parametrize("name", ["ridge", "svr", "random_forest", "gaussian_process"])
def test_per_fold_search_equals_gridsearchcv(name):
    X, y = _data()
    folds = reg.make_folds(len(X), n_splits=4, seed=1)
    choice = reg.select_hyperparameters(_run_all_folds(name, X, y, folds))
    gs = GridSearchCV(reg.make_model(name, seed=0), reg.param_grid(name, "small"), cv=folds,
                      scoring="neg_mean_absolute_error", refit=False).fit(X, y)
    assert choice.params_id == gs.best_index_
    assert repr(choice.params) == repr(gs.best_params_)
    np.testing.assert_allclose(choice.table["mean_score"], gs.cv_results_["mean_test_score"],
                               rtol=1e-9)
    np.testing.assert_allclose(choice.table["std_score"], gs.cv_results_["std_test_score"],
                               rtol=1e-7, atol=1e-12)
    assert choice.table["rank"].tolist() == gs.cv_results_["rank_test_score"].tolist()
    assert choice.mean_mae == pytest.approx(-gs.best_score_, rel=1e-9)


def test_predefined_split_and_tie_break_like_gridsearchcv(monkeypatch):
    X, y = _data(n=60)
    ps = PredefinedSplit(np.arange(60) % 3)
    # duplicated grid points tie exactly; GridSearchCV keeps the first
    grid = {"model__alpha": [5.0, 5.0, 1e6]}
    monkeypatch.setitem(reg.MODELS["ridge"].grids, "tie", grid)
    monkeypatch.setattr(reg, "GRID_SIZES", (*reg.GRID_SIZES, "tie"))
    results = [reg.cv_fold_scores("ridge", X, y, ps, k, grid="tie") for k in range(3)]
    choice = reg.select_hyperparameters(pd.concat(results))
    gs = GridSearchCV(reg.make_model("ridge"), grid, cv=ps, scoring="neg_mean_absolute_error",
                      refit=False).fit(X, y)
    assert choice.params_id == gs.best_index_ == 0
    assert choice.table["rank"].tolist() == gs.cv_results_["rank_test_score"].tolist() == [1, 1, 3]


def test_cv_fold_scores_rows_metrics_and_fit_log():
    X, y = _data()
    folds = reg.make_folds(len(X), n_splits=5, seed=0)
    log = RecordingLog()
    df = reg.cv_fold_scores("ridge", X, y, folds, 2, fit_log=log)
    cands = reg.param_candidates("ridge", "small")
    assert df["params_id"].tolist() == list(range(len(cands)))
    assert set(df["fold"]) == {2} and set(df["n_test"]) == {len(folds[2][1])}
    tr, te = folds[2]
    model = reg.make_model("ridge", cands[1]).fit(X.iloc[tr], y.iloc[tr])
    pred = model.predict(X.iloc[te])
    row = df.iloc[1]
    assert row["mae"] == pytest.approx(np.abs(y.iloc[te] - pred).mean(), rel=1e-12)
    assert row["r"] == pytest.approx(pearsonr(y.iloc[te], pred).statistic, rel=1e-12)
    assert row["pearson_r2"] == pytest.approx(row["r"] ** 2, rel=1e-12)
    assert row["r2_score"] == pytest.approx(r2_score(y.iloc[te], pred), rel=1e-12)
    assert row["score"] == -row["mae"]
    json.dumps(df.to_dict(orient="records"))  # cacheable as JSON
    assert log.records == [("regression.ridge.cv.fold2", [X.index[i] for i in tr])]
    assert not set(log.records[0][1]) & {X.index[i] for i in te}
    with pytest.raises(ValueError, match=r"'fold_index' must be in 0..4; got 5"):
        reg.cv_fold_scores("ridge", X, y, folds, 5)
    with pytest.raises(ValueError, match=r"'model_name' must be one of \['ridge', 'svr', "
                                         r"'random_forest', 'gaussian_process'\]; got 'lasso'"):
        reg.cv_fold_scores("lasso", X, y, folds, 0)
    with pytest.raises(ValueError, match=r"'grid' must be one of \['small', 'paper'\]; got 'big'"):
        reg.cv_fold_scores("ridge", X, y, folds, 0, grid="big")


def test_folds_keep_subjects_together():
    X, y = _data(n=40)
    subj = [f"s{i // 2}" for i in range(40)]
    folds = reg.make_folds(40, n_splits=4, seed=0, groups=subj)
    for tr, te in folds:
        assert not {subj[i] for i in tr} & {subj[i] for i in te}
    bad = [(np.arange(1, 40), np.arange(0, 2))]  # row 1 on both sides
    with pytest.raises(ValueError, match="fold 0 has rows in both train and test"):
        reg.cv_fold_scores("ridge", X, y, bad, 0)
    leaky = [(np.arange(0, 39, 2), np.arange(1, 40, 2))]  # disjoint rows, same subjects
    with pytest.raises(ValueError, match="fold 0: subjects on both sides"):
        reg.cv_fold_scores("ridge", X, y, leaky, 0, subject_ids=subj)


def test_select_hyperparameters_rejects_incomplete_results():
    X, y = _data(n=50)
    folds = reg.make_folds(50, n_splits=3, seed=0)
    res = _run_all_folds("ridge", X, y, folds)
    with pytest.raises(ValueError, match="must hold all 4 grid points"):
        reg.select_hyperparameters(pd.concat(res).iloc[1:])
    with pytest.raises(ValueError, match="repeated"):
        reg.select_hyperparameters(res + [res[0]])
    with pytest.raises(ValueError, match=r"must hold folds 0..2; got \[0, 2\]"):
        reg.select_hyperparameters([res[0], res[2]], n_folds=3)
    assert reg.select_hyperparameters(res, n_folds=3).params_id == \
        reg.select_hyperparameters(res).params_id


def test_fit_final_evaluate_and_cross_val_predictions():
    X, y = _data()
    train, test = X.index[:70], X.index[70:]
    log = RecordingLog()
    params = {"model__alpha": 10.0}
    model = reg.fit_final("ridge", params, X.loc[train], y.loc[train], fit_log=log)
    assert model.named_steps["model"].alpha == 10.0
    scores = reg.evaluate(model, X.loc[test], y.loc[test])
    pred = model.predict(X.loc[test])
    assert scores == pytest.approx({"n": 20, "r": pearsonr(y.loc[test], pred).statistic,
                                    "r_pvalue": pearsonr(y.loc[test], pred).pvalue,
                                    "pearson_r2": pearsonr(y.loc[test], pred).statistic ** 2,
                                    "r2_score": r2_score(y.loc[test], pred),
                                    "mae": np.abs(y.loc[test] - pred).mean()})
    assert log.records == [("regression.ridge.final", list(train))]
    folds = reg.make_folds(70, n_splits=5, seed=3)
    oof = reg.cross_val_predictions("ridge", params, X.loc[train], y.loc[train], folds)
    from sklearn.model_selection import cross_val_predict
    ref = cross_val_predict(reg.make_model("ridge", params), X.loc[train], y.loc[train], cv=folds)
    np.testing.assert_allclose(oof, ref, rtol=1e-12)
    # seeded models are reproducible
    a = reg.fit_final("random_forest", None, X, y, seed=4).predict(X)
    b = reg.fit_final("random_forest", None, X, y, seed=4).predict(X)
    assert np.array_equal(a, b)


def test_grids_and_models_documented():
    assert list(reg.MODELS) == ["ridge", "svr", "random_forest", "gaussian_process"]
    for name, spec in reg.MODELS.items():
        model = spec.make(seed=0)
        assert [s for s, _ in model.steps] == ["scale", "model"]
        small, paper = reg.param_candidates(name, "small"), reg.param_candidates(name, "paper")
        assert 2 <= len(small) <= 6 and len(small) < len(paper)
        for params in small[:1] + paper[-1:]:
            reg.make_model(name, params)  # every grid key is a valid parameter
    assert len(reg.param_candidates("ridge", "paper")) == 13
    assert reg.GRIDS["ridge"]["small"] == {"model__alpha": [0.1, 1.0, 10.0, 100.0]}


def test_clinical_features_and_clinical_only():
    table = pd.DataFrame({"age": [30, 41.5, 50], "sex": ["F", "M", "F"],
                          "disease_duration": [2.0, 10.0, 0.5], "course": ["RR", "SP", "PP"],
                          "edss": [1.5, 6.0, 4.0]}, index=["a", "b", "c"])
    out = reg.clinical_features(table)
    assert list(out.columns) == list(reg.CLINICAL_FEATURES)
    assert out.loc["b"].tolist() == [41.5, 1.0, 10.0, 1.0, 0.0, 0.0]
    assert out.loc["c", "course_PP"] == 1.0 and out.loc["a"].iloc[3:].sum() == 0
    hc = table.assign(course=["RR", "NA", "RR"], disease_duration=[2.0, np.nan, 1.0])
    with pytest.raises(ValueError, match=r"column 'disease_duration' has missing/non-numeric "
                                         r"values at rows \['b'\]"):
        reg.clinical_features(hc)
    cols = ["roi__fo__Median", "age", "course_SP", "wbv_z", "sex_M"]
    assert reg.clinical_only(cols) == ["age", "course_SP", "sex_M"]
