"""Tests of msutils.data.splits: subject-level LOCO / k-fold / hold-out splits and the splits file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from msutils.data import splits as sp


def _tiny_table() -> pd.DataFrame:
    """Hand-made scan table: 3 centers, two-session subjects, one subject at two centers."""
    rows = [
        # subject, session, center, group
        ("a1", "ses-01", "A", "MS"), ("a1", "ses-02", "A", "MS"),
        ("a2", "ses-01", "A", "HC"),
        ("a3", "ses-01", "A", "MS"),
        ("ab", "ses-01", "A", "MS"), ("ab", "ses-02", "B", "MS"),   # scanned at A then B
        ("b1", "ses-01", "B", "MS"), ("b1", "ses-02", "B", "MS"),
        ("b2", "ses-01", "B", "HC"),
        ("c1", "ses-01", "C", "MS"),
        ("c2", "ses-01", "C", "HC"), ("c2", "ses-02", "C", "HC"),
    ]
    t = pd.DataFrame(rows, columns=["subject_id", "session", "center", "group"])
    t.index = t["subject_id"] + "_" + t["session"]
    return t


def _cohort(n_subjects: int = 60, seed: int = 0) -> pd.DataFrame:
    """Synthetic scan table: 3 centers, MS/HC, 1-2 sessions, EDSS for MS only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        sid = f"sub-{i:03d}"
        group = "MS" if i % 3 else "HC"
        center = "ABC"[i % 3] if i % 5 else "ABC"[(i + 1) % 3]
        edss = float(rng.choice(np.arange(0, 7.5, 0.5))) if group == "MS" else np.nan
        for s in range(1 + (i % 2)):
            rows.append((sid, f"ses-{s + 1:02d}", center, group, edss))
    t = pd.DataFrame(rows, columns=["subject_id", "session", "center", "group", "edss"])
    t.index = t["subject_id"] + "_" + t["session"]
    return t


# --------------------------------------------------------------------------- masks


def test_scans_of_keeps_every_session_and_filters_center():
    t = _tiny_table()
    m = sp.scans_of(t, ["a1", "ab"])
    assert list(t.index[m]) == ["a1_ses-01", "a1_ses-02", "ab_ses-01", "ab_ses-02"]
    assert m.index.equals(t.index) and m.dtype == bool
    m_b = sp.scans_of(t, ["a1", "ab"], center="B")
    assert list(t.index[m_b]) == ["ab_ses-02"]


def test_scans_of_rejects_a_single_string():
    with pytest.raises(TypeError, match="not a single string 'a1'"):
        sp.scans_of(_tiny_table(), "a1")


def test_missing_column_is_named():
    t = _tiny_table().drop(columns="center")
    with pytest.raises(ValueError, match=r"scan table lacks column\(s\) \['center'\]"):
        sp.leave_one_center_out(t)


# --------------------------------------------------------------------------- LOCO


def test_leave_one_center_out_exact_sets_and_exclusion():
    t = _tiny_table()
    out = {s["name"]: s for s in sp.leave_one_center_out(t)}
    assert list(out) == ["loco-A", "loco-B", "loco-C"]
    a, b, c = out["loco-A"], out["loco-B"], out["loco-C"]
    assert a["heldout_center"] == "A"
    assert a["test"] == ["a1", "a2", "a3", "ab"]
    assert a["train"] == ["b1", "b2", "c1", "c2"]
    assert a["excluded"] == ["ab"]
    # 'ab' has a scan at B: held out with B, and its A scan is not used for training
    assert b["test"] == ["ab", "b1", "b2"]
    assert b["train"] == ["a1", "a2", "a3", "c1", "c2"]
    assert b["excluded"] == ["ab"]
    assert c["test"] == ["c1", "c2"] and c["excluded"] == []
    assert c["train"] == ["a1", "a2", "a3", "ab", "b1", "b2"]
    for s in out.values():
        assert sp.subject_overlaps(s) == {}


def test_loco_masks_test_only_heldout_center_scans():
    t = _tiny_table()
    split = sp.leave_one_center_out(t, centers=["B"])[0]
    masks = sp.split_masks(t, split)
    assert list(t.index[masks["test"]]) == ["ab_ses-02", "b1_ses-01", "b1_ses-02", "b2_ses-01"]
    # the A-scan of 'ab' is neither trained on nor tested
    assert not masks["train"]["ab_ses-01"] and not masks["test"]["ab_ses-01"]
    assert not (masks["train"] & masks["test"]).any()
    assert int(masks["train"].sum()) == 7


def test_loco_centers_validation():
    with pytest.raises(ValueError, match=r"'centers' entries must be one of \['A', 'B', 'C'\]; got 'D'"):
        sp.leave_one_center_out(_tiny_table(), centers=["B", "D"])
    one = _tiny_table().assign(center="A")
    with pytest.raises(ValueError, match="needs >= 2 centers"):
        sp.leave_one_center_out(one)


# --------------------------------------------------------------------------- k-fold


def test_grouped_kfold_partitions_subjects_and_keeps_sessions_together():
    t = _cohort()
    folds = sp.grouped_kfold(t, 5, seed=3)
    subjects = sorted(t["subject_id"].unique())
    assert [f["name"] for f in folds] == [f"fold{k}" for k in range(5)]
    tests = [x for f in folds for x in f["test"]]
    assert sorted(tests) == subjects          # every subject validated exactly once
    for f in folds:
        assert sorted(f["train"] + f["test"]) == subjects
        assert len(f["test"]) == 12            # 60 subjects -> subject-level 80/20
        m = sp.split_masks(t, f)
        assert not (m["train"] & m["test"]).any()
        assert bool((m["train"] | m["test"]).all())


def test_grouped_kfold_stratifies_group():
    t = _cohort()
    group = t.drop_duplicates("subject_id").set_index("subject_id")["group"]
    for f in sp.grouped_kfold(t, 5, seed=1):
        # 20 HC / 40 MS over 5 folds -> exactly 4 HC and 8 MS per validation fold
        assert (group[f["test"]] == "HC").sum() == 4


def test_grouped_kfold_is_seeded_and_restricts_subjects():
    t = _cohort()
    assert sp.grouped_kfold(t, 5, seed=7) == sp.grouped_kfold(t, 5, seed=7)
    assert sp.grouped_kfold(t, 5, seed=7) != sp.grouped_kfold(t, 5, seed=8)
    some = sorted(t["subject_id"].unique())[:30]
    folds = sp.grouped_kfold(t, 3, stratify=None, seed=0, subjects=some)
    assert sorted(x for f in folds for x in f["test"]) == some
    assert folds[0]["stratify"] is None and folds[0]["seed"] == 0


def test_grouped_kfold_continuous_stratify_bins_edss_and_keeps_nan_stratum():
    t = _cohort(n_subjects=90)
    folds = sp.grouped_kfold(t, 3, stratify="edss", seed=0)
    subj = t.drop_duplicates("subject_id").set_index("subject_id")
    for f in folds:
        # HC (edss NaN) are their own stratum: 30 HC -> 10 per fold
        assert subj.loc[f["test"], "edss"].isna().sum() == 10
    assert folds[0]["stratify"] == ["edss"]


def test_grouped_kfold_validation_messages():
    t = _cohort(n_subjects=6)
    with pytest.raises(ValueError, match="'n_splits' must be an integer >= 2; got 1"):
        sp.grouped_kfold(t, 1)
    with pytest.raises(ValueError, match=r"'n_splits'=7 is greater than the number of subjects \(6\)"):
        sp.grouped_kfold(t, 7, stratify=None)
    with pytest.raises(ValueError, match=r"'stratify' column\(s\) \['sex'\] not in the scan table"):
        sp.grouped_kfold(t, 2, stratify="sex")
    with pytest.raises(ValueError, match=r"'subjects' has id\(s\) not in the scan table: \['nobody'\]"):
        sp.grouped_kfold(t, 2, subjects=["nobody"])


# --------------------------------------------------------------------------- hold-out


def test_random_subject_split_sizes_stratification_and_seed():
    t = _cohort(n_subjects=50)
    s = sp.random_subject_split(t, 0.2, seed=0, stratify="group")
    assert s["name"] == "holdout" and len(s["test"]) == 10 and len(s["train"]) == 40
    group = t.drop_duplicates("subject_id").set_index("subject_id")["group"]
    assert (group[s["test"]] == "HC").sum() == round(0.2 * (group == "HC").sum())
    assert sp.random_subject_split(t, 0.2, seed=0, stratify="group") == s
    assert sp.random_subject_split(t, 0.2, seed=1, stratify="group")["test"] != s["test"]
    assert sp.subject_overlaps(s) == {}
    with pytest.raises(ValueError, match=r"'test_size' must be a float in \(0, 1\) or an int >= 1; got 1.5"):
        sp.random_subject_split(t, 1.5)


def test_internal_external_split_seed001_and_003_designs():
    t = _tiny_table()
    s = sp.internal_external_split(t, "A", 0.25, seed=0)
    # 'ab' was also scanned at B: external (and excluded), not in the internal pool
    assert sorted(s["train"] + s["test"]) == ["a1", "a2", "a3"]
    assert len(s["test"]) == 1
    assert s["external"] == ["ab", "b1", "b2", "c1", "c2"]
    assert s["excluded"] == ["ab"] and s["internal_center"] == "A"
    m = sp.split_masks(t, s)
    assert "ab_ses-01" not in t.index[m["external"] | m["train"] | m["test"]]
    assert sp.heldout_subjects(s) == sorted(set(s["test"]) | set(s["external"]))
    with pytest.raises(ValueError, match=r"'internal_center' must be one of \['A', 'B', 'C'\]; got 'Z'"):
        sp.internal_external_split(t, "Z")


# --------------------------------------------------------------------------- nested


def test_nested_loco_inner_folds_stay_in_outer_training_subjects():
    t = _cohort(n_subjects=90)
    outer = sp.nested_loco(t, n_inner=5, seed=2)
    assert [s["name"] for s in outer] == ["loco-A", "loco-B", "loco-C"]
    for s in outer:
        assert len(s["inner"]) == 5 and s["seed"] == 2
        inner_val = sorted(x for f in s["inner"] for x in f["test"])
        assert inner_val == s["train"]
        held = set(s["test"])
        for f in s["inner"]:
            assert not held & (set(f["train"]) | set(f["test"]))
    assert sp.validate_splits(outer, table=t) == []


# --------------------------------------------------------------------------- files


def test_write_read_roundtrip_has_schema_and_seed(tmp_path):
    t = _cohort()
    splits = sp.nested_loco(t, 3, seed=5)
    path = sp.write_splits(tmp_path / "splits.json", splits, seed=5, table=t, meta={"design": "nested LOCO"})
    payload = json.loads(path.read_text())
    assert payload["schema_version"] == sp.SCHEMA_VERSION == 1
    assert payload["seed"] == 5 and payload["meta"] == {"design": "nested LOCO"}
    assert payload["subjects_sha256"] == sp.subjects_hash(t)
    assert sp.read_splits(path, table=t) == splits
    assert not list(tmp_path.glob(".*tmp"))   # no temp file left behind


def test_load_or_create_writes_once_and_reuses(tmp_path):
    t = _cohort()
    calls = []

    def factory():
        calls.append(1)
        return sp.grouped_kfold(t, 5, seed=len(calls))   # would differ if called twice

    path = tmp_path / "sub" / "splits_final.json"
    first = sp.load_or_create_splits(path, factory, seed=1, table=t)
    mtime = path.stat().st_mtime_ns
    second = sp.load_or_create_splits(path, factory, seed=1, table=t)
    assert calls == [1]
    assert first == second == sp.grouped_kfold(t, 5, seed=1)
    assert path.stat().st_mtime_ns == mtime


def test_read_splits_names_file_and_subject_in_both_sides(tmp_path):
    bad = {"schema_version": 1, "seed": 0, "splits": [
        {"name": "holdout", "train": ["s01", "s02", "s03"], "test": ["s03", "s04"]},
    ]}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(sp.SplitsError) as err:
        sp.read_splits(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "split #0 'holdout': subject(s) in both 'train' and 'test': ['s03']" in msg
    assert err.value.problems == ["split #0 'holdout': subject(s) in both 'train' and 'test': ['s03']"]


def test_read_splits_reports_every_problem(tmp_path):
    bad = {"schema_version": 1, "splits": [
        {"name": "a", "train": ["s1"], "test": ["s2"],
         "inner": [{"name": "fold0", "train": ["s1"], "test": ["s9"]}]},
        {"name": "a", "train": ["s1", "s1"], "test": []},
    ]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(sp.SplitsError) as err:
        sp.read_splits(path)
    assert err.value.problems == [
        "split: duplicate name(s) ['a']",
        "split #0 'a' inner split #0 'fold0': uses subject(s) outside the outer 'train': ['s9']",
        "split #1 'a': 'train' lists subject(s) more than once: ['s1']",
        "split #1 'a': 'test' is empty",
    ]


def test_read_splits_bad_json_version_and_cohort(tmp_path):
    p = tmp_path / "x.json"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sp.read_splits(p)
    p.write_text("{not json")
    with pytest.raises(sp.SplitsError, match=f"splits file {p} is not valid JSON"):
        sp.read_splits(p)
    p.write_text(json.dumps({"schema_version": 99, "splits": []}))
    with pytest.raises(sp.SplitsError, match="'schema_version' must be 1; got 99"):
        sp.read_splits(p)
    t = _cohort()
    sp.write_splits(p, sp.grouped_kfold(t, 2), table=t)
    other = _cohort(n_subjects=61)
    with pytest.raises(sp.SplitsError, match="made for a different set of subjects"):
        sp.read_splits(p, table=other)
    fewer = t[t["subject_id"] != "sub-000"]
    with pytest.raises(sp.SplitsError, match=r"subject\(s\) not in the scan table: \['sub-000'\]"):
        sp.read_splits(p, table=fewer)


def test_write_splits_refuses_invalid_and_writes_nothing(tmp_path):
    p = tmp_path / "s.json"
    with pytest.raises(sp.SplitsError, match="refusing to write invalid splits"):
        sp.write_splits(p, [{"name": "x", "train": ["a"], "test": ["a"]}])
    assert not p.exists()


def test_grouped_kfold_stratifies_on_several_columns():
    rows = [(f"s{i:02d}", "ses-01", "AB"[i % 2], "MS" if (i // 2) % 2 else "HC") for i in range(40)]
    t = pd.DataFrame(rows, columns=["subject_id", "session", "center", "group"])
    subj = t.set_index("subject_id")
    for f in sp.grouped_kfold(t, 5, stratify=["group", "center"], seed=0):
        cells = subj.loc[f["test"]].groupby(["group", "center"]).size()
        assert cells.tolist() == [2, 2, 2, 2]      # 10 per (group, center) cell -> 2 per fold
