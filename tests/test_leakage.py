"""Tests of msutils.data.leakage: the fit log catches held-out subjects reaching a fitted step."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from msutils.data import splits as sp
from msutils.data.leakage import (
    FitLog,
    LeakageError,
    assert_disjoint,
    assert_no_leak,
    audit_split,
    fit_logged,
)


@pytest.fixture()
def scans() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """12 subjects at 2 centers, 2 sessions each; features and MS/HC labels per scan."""
    rng = np.random.default_rng(0)
    rows = [(f"s{i:02d}", f"ses-0{k}", "A" if i < 8 else "B", "MS" if i % 2 else "HC")
            for i in range(12) for k in (1, 2)]
    t = pd.DataFrame(rows, columns=["subject_id", "session", "center", "group"])
    X = rng.normal(size=(len(t), 3)) + (t["group"] == "MS").to_numpy()[:, None]
    y = (t["group"] == "MS").to_numpy().astype(int)
    return t, X, y


def test_fitlog_records_union_and_roundtrips_json():
    log = FitLog()
    log.record("scaler", ["s1", "s2", "s2"])
    log.record("scaler", np.array(["s3"]))
    log.record("gan", pd.Series([4, 5]))                 # ids are stored as strings
    assert log.seen("scaler") == frozenset({"s1", "s2", "s3"})
    assert log.seen("gan") == frozenset({"4", "5"})
    assert log.steps == ["scaler", "gan"] and len(log) == 2 and "gan" in log
    d = json.loads(json.dumps(log.to_dict()))
    assert d == {"version": 1, "steps": {"scaler": ["s1", "s2", "s3"], "gan": ["4", "5"]}}
    assert FitLog.from_dict(d) == log
    assert log.all_seen() == frozenset({"s1", "s2", "s3", "4", "5"})


def test_fitlog_input_errors():
    log = FitLog()
    with pytest.raises(ValueError, match="'step' must be a non-empty string; got ''"):
        log.record("", ["a"])
    with pytest.raises(TypeError, match="not a single string 's01'"):
        log.record("x", "s01")
    with pytest.raises(KeyError, match="step 'lasso' was never recorded"):
        log.seen("lasso")
    with pytest.raises(ValueError, match="'version' must be 1; got 2"):
        FitLog.from_dict({"version": 2, "steps": {}})


def test_deliberate_leak_scaler_fitted_on_all_subjects_is_caught(scans):
    t, X, y = scans
    split = sp.leave_one_center_out(t, centers=["B"])[0]
    masks = sp.split_masks(t, split)
    tr = masks["train"].to_numpy()
    subj = t["subject_id"].to_numpy()
    log = FitLog()
    # the bug: the scaler sees every scan, including the held-out center
    scaler = fit_logged(log, "scaler", StandardScaler(), X, subjects=subj)
    fit_logged(log, "classifier", LogisticRegression(), scaler.transform(X[tr]), y[tr], subjects=subj[tr])
    with pytest.raises(LeakageError) as err:
        assert_no_leak(log, sp.heldout_subjects(split))
    heldout = ["s08", "s09", "s10", "s11"]
    assert err.value.leaks == {"scaler": heldout}
    assert str(err.value) == (
        "held-out subjects were seen while fitting:\n"
        "  step 'scaler': 4 subject(s) ['s08', 's09', 's10', 's11']"
    )
    assert isinstance(err.value, AssertionError)


def test_every_leaking_step_is_named(scans):
    t, X, y = scans
    log = FitLog()
    log.record("harmonize", ["s01", "s08"])
    log.record("lasso", ["s01"])
    log.record("threshold", ["s09", "s11", "s02"])
    with pytest.raises(LeakageError) as err:
        assert_no_leak(log, ["s08", "s09", "s10", "s11"])
    assert err.value.leaks == {"harmonize": ["s08"], "threshold": ["s09", "s11"]}
    assert "step 'harmonize': 1 subject(s) ['s08']" in str(err.value)
    assert "step 'threshold': 2 subject(s) ['s09', 's11']" in str(err.value)
    assert "lasso" not in str(err.value)


def test_correct_pipeline_passes_audit(scans):
    t, X, y = scans
    for split in sp.leave_one_center_out(t):
        m = sp.split_masks(t, split)
        tr = m["train"].to_numpy()
        subj = t["subject_id"].to_numpy()
        log = FitLog()
        pipe = fit_logged(log, "pipeline", make_pipeline(StandardScaler(), LogisticRegression()),
                          X[tr], y[tr], subjects=subj[tr])
        assert pipe.predict(X[m["test"].to_numpy()]).shape == (int(m["test"].sum()),)
        audit_split(log, split, steps=["pipeline"])    # no exception
        assert log.seen("pipeline") == frozenset(split["train"])


def test_fit_logged_methods_and_row_check(scans):
    t, X, y = scans
    subj = t["subject_id"].to_numpy()
    log = FitLog()
    Z = fit_logged(log, "scaler", StandardScaler(), X, subjects=subj, method="fit_transform")
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    with pytest.raises(ValueError, match="'subjects' has 23 entries but X has 24 rows"):
        fit_logged(log, "x", StandardScaler(), X, subjects=subj[:-1])
    with pytest.raises(ValueError, match=r"'method' must be one of \['fit', 'fit_transform'"):
        fit_logged(log, "x", StandardScaler(), X, subjects=subj, method="transform")
    assert log.steps == ["scaler"]


def test_assert_no_leak_requires_requested_steps():
    log = FitLog({"scaler": ["a"]})
    with pytest.raises(KeyError, match="step 'gan' was never recorded"):
        assert_no_leak(log, ["b"], steps=["scaler", "gan"])
    assert_no_leak(log, ["b"], steps=["scaler"])


def test_assert_disjoint(scans):
    t = scans[0]
    for split in sp.nested_loco(t, n_inner=2, seed=0):
        assert_disjoint(split)
    bad = {"name": "holdout", "train": ["s1", "s2"], "test": ["s2", "s3"], "external": ["s1", "s3"]}
    with pytest.raises(LeakageError) as err:
        assert_disjoint(bad)
    assert err.value.leaks == {"train/test": ["s2"], "train/external": ["s1"], "test/external": ["s3"]}
    assert str(err.value).startswith("split 'holdout' is not disjoint:\n  train/test: 1 subject(s) ['s2']")
    nested = {"name": "loco-B", "train": ["s1", "s2"], "test": ["s3"],
              "inner": [{"name": "fold0", "train": ["s1"], "test": ["s3"]}]}
    with pytest.raises(LeakageError) as err:
        assert_disjoint(nested)
    assert err.value.leaks == {"fold0:outside-outer-train": ["s3"]}


def test_audit_table_counts_from_log_and_split():
    split = {"name": "s", "train": ["a", "b", "c"], "test": ["d"], "external": ["e", "f"]}
    log = FitLog()
    log.record("scaler", ["a", "b", "c"])
    log.record("cv.fold0", ["a", "b"])
    log.record("leaky", ["a", "d", "f"])
    from msutils.data.leakage import audit_table

    t = audit_table(log, split)
    assert t.index.name == "fitted step" and list(t.index) == ["scaler", "cv.fold0", "leaky"]
    assert t.to_dict(orient="index") == {
        "scaler": {"subjects seen": 3, "training subjects among them": 3, "held-out subjects among them": 0},
        "cv.fold0": {"subjects seen": 2, "training subjects among them": 2, "held-out subjects among them": 0},
        "leaky": {"subjects seen": 3, "training subjects among them": 1, "held-out subjects among them": 2},
    }
    with pytest.raises(LeakageError, match="step 'leaky': 2 subject"):
        audit_split(log, split)
    with pytest.raises(TypeError, match="'log' must be a FitLog; got dict"):
        audit_table({}, split)
