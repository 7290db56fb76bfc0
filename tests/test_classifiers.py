"""Classifiers with inner-CV selection and tuning (msutils.models.classifiers)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import RobustScaler
from sklearn.svm import SVC

from msutils.models import classifiers as C


def _data(n: int = 90, p: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{i}" for i in range(p)],
                     index=[f"scan{i:03d}" for i in range(n)])
    y = pd.Series(((X["f0"] + 0.8 * X["f1"] + rng.normal(0, 0.6, n)) > 0).astype(int), index=X.index)
    subjects = pd.Series([f"sub{i:03d}" for i in range(n)], index=X.index)
    ids = subjects.to_numpy()
    folds = [{"train": sorted(np.delete(ids, np.arange(k, n, 5))), "test": sorted(ids[k::5])} for k in range(5)]
    return X, y, subjects, folds


class _CallLog:
    """A FitLog stand-in that keeps every call's subjects."""

    def __init__(self):
        self.calls = []

    def record(self, step, ids):
        self.calls.append((step, set(ids)))


def test_make_scaler_and_classifier_names():
    assert isinstance(C.make_scaler("robust"), RobustScaler)
    with pytest.raises(ValueError, match=r"'scaler' must be one of \['robust', 'minmax', 'zscore'\]; got 'l2'"):
        C.make_scaler("l2")
    with pytest.raises(ValueError, match=r"'classifier' must be one of \['svm', 'rf', 'resnet'\]; got 'knn'"):
        C.make_classifier("knn")


def test_resnet_learns_is_deterministic_and_pickles():
    X, y, _, _ = _data(160)
    Xa, ya = X.to_numpy()[:120], y.to_numpy()[:120]
    m1 = C.TabularResNet(width=32, n_blocks=2, epochs=40, seed=3).fit(Xa, ya, eval_set=(X.to_numpy()[120:],
                                                                                       y.to_numpy()[120:]))
    m2 = C.TabularResNet(width=32, n_blocks=2, epochs=40, seed=3).fit(Xa, ya)
    p1 = m1.predict_proba(X.to_numpy()[120:])
    np.testing.assert_array_equal(p1, m2.predict_proba(X.to_numpy()[120:]))
    assert roc_auc_score(y.to_numpy()[120:], p1[:, 1]) > 0.9
    assert len(m1.history_["val_loss"]) == 40 and len(m1.history_["val_proba"][0]) == 40
    np.testing.assert_allclose(m1.history_["val_proba"][-1], p1[:, 1], rtol=1e-6)
    clone = pickle.loads(pickle.dumps(m1))
    np.testing.assert_array_equal(clone.predict_proba(X.to_numpy()[120:]), p1)
    with pytest.raises(ValueError, match="'n_blocks' must be an integer >= 0; got -1"):
        C.TabularResNet(n_blocks=-1).fit(Xa, ya)
    with pytest.raises(ValueError, match=r"TabularResNet is binary; 'y' has classes \[0, 1, 2\]"):
        C.TabularResNet().fit(Xa[:3], [0, 1, 2])


def test_l1_selector_finds_the_signal():
    X, y, _, _ = _data(200)
    sel = C.L1LogisticSelector(seed=0).fit(X, y)
    kept = list(sel.get_feature_names_out())
    assert {"f0", "f1"} <= set(kept)
    assert len(kept) < 12
    assert list(sel.transform(X).columns) == kept


def test_inner_selection_majority_rule_and_fallback():
    X, y, subjects, folds = _data()
    log = _CallLog()
    res = C.inner_selection(X, y, subjects, folds, min_folds=3, fit_log=log)
    counts = pd.Series(0, index=X.columns)
    for f in res.per_fold:
        counts[f] += 1
    assert res.selected == [c for c in res.counts.index if counts[c] >= 3]
    assert (res.counts.sort_index() == counts.sort_index()).all()
    assert {"f0", "f1"} <= set(res.selected)
    # LASSO k saw only fold k's training subjects
    lasso_calls = [ids for step, ids in log.calls if step == "lasso"]
    for ids, fold in zip(lasso_calls, folds):
        assert ids == set(fold["train"])
    noise = C.inner_selection(X[[c for c in X.columns if c not in ("f0", "f1")]], y, subjects, folds,
                              min_folds=5, fallback_k=4)
    if not any(n >= 5 for n in noise.counts):
        assert noise.rule.startswith("no feature reached 5 of 5 folds") and len(noise.selected) <= 4


def test_tune_svm_scores_equal_a_manual_loop():
    X, y, subjects, folds = _data()
    sel = C.inner_selection(X, y, subjects, folds)
    grid = {"kernel": ["rbf"], "C": [0.1, 10.0], "gamma": ["scale"]}
    res = C.tune("svm", X, y, subjects, folds, sel, grid=grid, seed=0)
    for _, row in res.scores.iterrows():
        aucs = []
        for k, fold in enumerate(folds):
            tr = subjects.isin(fold["train"]).to_numpy()
            va = subjects.isin(fold["test"]).to_numpy()
            f = sel.per_fold[k]
            sc = RobustScaler().fit(X.loc[tr, f])
            clf = CalibratedClassifierCV(
                SVC(kernel="rbf", C=row["param_C"], gamma="scale", class_weight="balanced", random_state=0),
                cv=StratifiedKFold(5, shuffle=True, random_state=0), ensemble=False).fit(sc.transform(X.loc[tr, f]),
                                                                                         y[tr])
            aucs.append(roc_auc_score(y[va], clf.predict_proba(sc.transform(X.loc[va, f]))[:, 1]))
        assert row["mean_auc"] == pytest.approx(np.mean(aucs))
    assert res.params["C"] == res.scores.loc[res.scores["mean_auc"].idxmax(), "param_C"]


def test_tune_resnet_picks_the_early_stopping_epoch():
    X, y, subjects, folds = _data()
    sel = C.inner_selection(X, y, subjects, folds)
    grid = {"width": [16], "n_blocks": [1], "dropout": [0.0], "lr": [1e-2], "weight_decay": [0.0], "epochs": [25]}
    res = C.tune("resnet", X, y, subjects, folds, sel, grid=grid, seed=1)
    curves = []
    for k, fold in enumerate(folds):
        tr = subjects.isin(fold["train"]).to_numpy()
        va = subjects.isin(fold["test"]).to_numpy()
        sc = RobustScaler().fit(X.loc[tr, sel.per_fold[k]])
        m = C.TabularResNet(width=16, n_blocks=1, dropout=0.0, lr=1e-2, weight_decay=0.0, epochs=25, seed=1).fit(
            sc.transform(X.loc[tr, sel.per_fold[k]]), y[tr].to_numpy(),
            eval_set=(sc.transform(X.loc[va, sel.per_fold[k]]), y[va].to_numpy()))
        curves.append(m.history_["val_loss"])
    assert res.params["epochs"] == int(np.argmin(np.mean(curves, axis=0))) + 1
    assert isinstance(res.params["width"], int) and isinstance(res.params["epochs"], int)


def test_oof_predictions_keep_synthetic_rows_of_validation_subjects_out():
    X, y, subjects, folds = _data()
    X_syn = X.iloc[:30].add(0.01).set_axis([f"syn{i}" for i in range(30)])
    y_syn = y.iloc[:30].set_axis(X_syn.index)
    src = subjects.iloc[:30].set_axis(X_syn.index)
    log = _CallLog()
    oof = C.oof_predictions("rf", {"n_estimators": 50}, X, y, subjects, folds, ["f0", "f1", "f2"],
                            X_syn=X_syn, y_syn=y_syn, source_syn=src, fit_log=log)
    assert oof.notna().all() and oof.index.equals(X.index)
    calls = [ids for step, ids in log.calls if step == "threshold"]
    assert len(calls) == 5
    for ids, fold in zip(calls, folds):
        assert ids == set(fold["train"])  # synthetic sources are training subjects of the fold
        assert not ids & set(fold["test"])


def test_classification_scores_hand_case():
    s = C.classification_scores([1, 1, 1, 0, 0], [0.9, 0.6, 0.4, 0.7, 0.1])
    # TP 2, FN 1, FP 1, TN 1
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["specificity"] == pytest.approx(0.5)
    assert s["auc"] == pytest.approx(4 / 6)  # positive-negative pairs ranked right: 4 of 6


def test_explain_is_additive():
    X, y, subjects, _ = _data(80, 6)
    feats = list(X.columns)
    pipe = C.fit_final("svm", {"C": 1.0}, X, y, subjects, feats)
    shap_df = C.explain(pipe, X.iloc[:40], X.iloc[40:44], max_background=10)
    fx = pipe.predict_proba(X.iloc[40:44].to_numpy())[:, 1]
    np.testing.assert_allclose(shap_df.sum(axis=1) + shap_df.attrs["base_value"], fx, atol=1e-6)
    assert shap_df.shape == (4, 6) and list(shap_df.columns) == feats
