"""Subject-level train/test splits and the splits file every run reuses.

A *split* is a plain, JSON-friendly dict::

    {"name": "loco-B", "train": ["s001", ...], "test": ["s101", ...], ...}

``train`` and ``test`` hold sorted **subject** ids (strings), never scans: every
session of a subject lands on the same side. Optional keys used here:

``heldout_center``
    (leave-one-center-out) the center whose scans form the test set.
``excluded``
    subjects removed from training because they were also scanned at the
    held-out / external center (seed 000's rule). They are a subset of
    ``test`` (LOCO) or ``external`` (internal/external design).
``external``
    subjects of the external test center(s) (seeds 001 and 003).
``internal_center``
    the center split into internal train/test (seeds 001 and 003).
``inner``
    list of inner splits over the outer ``train`` subjects (nested CV).
``fold``, ``seed``, ``stratify``
    provenance.

In inner cross-validation the ``test`` side is the validation part of the fold.

Splits are written once (:func:`write_splits`, :func:`load_or_create_splits`)
and read back by every later run, like nnU-Net's ``splits_final.json``;
:func:`read_splits` validates the file and names the problem and the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msutils.core.io import atomic_write_json
from msutils.core.validation import check_int

__all__ = [
    "SCHEMA_VERSION",
    "SUBJECT_KEYS",
    "Split",
    "SplitsError",
    "grouped_kfold",
    "heldout_subjects",
    "internal_external_cv",
    "internal_external_split",
    "leave_one_center_out",
    "load_or_create_internal_external_cv",
    "load_or_create_splits",
    "nested_loco",
    "random_subject_split",
    "read_splits",
    "resolve_centers",
    "scans_of",
    "split_masks",
    "splits_file_name",
    "subject_overlaps",
    "subjects_hash",
    "validate_splits",
    "write_splits",
]

logger = logging.getLogger(__name__)

#: Version of the JSON layout written by :func:`write_splits`.
SCHEMA_VERSION = 1

#: Keys of a split that hold subject-id lists.
SUBJECT_KEYS = ("train", "test", "external", "excluded")

#: A split: ``{"name": str, "train": [ids], "test": [ids], ...}``.
Split = dict[str, Any]

_MAX_IDS_SHOWN = 10


class SplitsError(ValueError):
    """A split or splits file is invalid; ``.problems`` lists every problem."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


# --------------------------------------------------------------------------- helpers


def _show(ids: Sequence[str]) -> str:
    ids = list(ids)
    if len(ids) <= _MAX_IDS_SHOWN:
        return repr(ids)
    return f"{ids[:_MAX_IDS_SHOWN]!r} ... ({len(ids)} in total)"


def _check_table(table: pd.DataFrame, columns: Iterable[str]) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"'table' must be a pandas DataFrame; got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"scan table lacks column(s) {missing}; it has {list(map(str, table.columns))}"
        )
    bad = table.index[table["subject_id"].isna()]
    if len(bad):
        raise ValueError(f"scan table has an empty 'subject_id' in row(s) {list(bad)[:10]}")


def _as_id_list(ids: Iterable[Any], name: str) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"'{name}' must be a collection of subject ids, not a single string {ids!r}")
    return [str(i) for i in ids]


def _subject_rows(table: pd.DataFrame, subjects: Iterable[Any] | None) -> pd.DataFrame:
    """One row per subject (its first session), index = subject id (str), sorted."""
    t = table.copy()
    t["subject_id"] = t["subject_id"].astype(str)
    sort_cols = ["subject_id"] + (["session"] if "session" in t.columns else [])
    t = t.sort_values(sort_cols, kind="stable").drop_duplicates("subject_id", keep="first")
    t = t.set_index("subject_id")
    if subjects is not None:
        wanted = _as_id_list(subjects, "subjects")
        unknown = sorted(set(wanted) - set(t.index))
        if unknown:
            raise ValueError(f"'subjects' has id(s) not in the scan table: {_show(unknown)}")
        t = t.loc[sorted(set(wanted))]
    return t


def _strata(
    subj: pd.DataFrame, stratify: str | Sequence[str] | None, n_bins: int
) -> np.ndarray | None:
    """Per-subject stratum labels (strings), or None."""
    if stratify is None:
        return None
    cols = [stratify] if isinstance(stratify, str) else list(stratify)
    missing = [c for c in cols if c not in subj.columns]
    if missing:
        raise ValueError(
            f"'stratify' column(s) {missing} not in the scan table; "
            f"it has {list(map(str, subj.columns))}"
        )
    parts = []
    for c in cols:
        v = subj[c]
        if (
            pd.api.types.is_numeric_dtype(v)
            and not pd.api.types.is_bool_dtype(v)
            and v.nunique(dropna=True) > n_bins
        ):
            # continuous (e.g. EDSS, age): quantile bins over subjects
            binned = pd.qcut(v, q=n_bins, labels=False, duplicates="drop")
            lab = binned.map(lambda b: f"{c}:q{int(b)}" if pd.notna(b) else f"{c}:NA")
        else:
            lab = v.map(lambda x: f"{c}:{x}" if pd.notna(x) else f"{c}:NA")
        parts.append(lab.astype(str).to_numpy())
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(np.char.add(out.astype(str), "|"), p.astype(str))
    return np.asarray(out, dtype=str)


def subjects_hash(table: pd.DataFrame) -> str:
    """SHA-256 (hex) of the sorted unique subject ids of a scan table.

    Stored in the splits file so a file made for another cohort is detected.
    """
    _check_table(table, ["subject_id"])
    ids = sorted(set(table["subject_id"].astype(str)))
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- masks


def scans_of(
    table: pd.DataFrame, subjects: Iterable[Any], *, center: str | Iterable[str] | None = None
) -> pd.Series:
    """Boolean mask of the scans (rows) of ``subjects``, all sessions included.

    Parameters
    ----------
    table : DataFrame
        Scan table with a ``subject_id`` column (and ``center`` if ``center`` is given).
    subjects : iterable of subject ids
        Compared as strings.
    center : str or iterable of str, optional
        Keep only scans acquired at this / these center(s).

    Returns
    -------
    Series of bool, aligned with ``table.index`` (use with ``table.loc[mask]``).
    """
    _check_table(table, ["subject_id"] + (["center"] if center is not None else []))
    ids = set(_as_id_list(subjects, "subjects"))
    mask = table["subject_id"].astype(str).isin(ids)
    if center is not None:
        centers = {center} if isinstance(center, str) else {str(c) for c in center}
        mask &= table["center"].astype(str).isin(centers)
    return mask.astype(bool).rename("in_split")


def split_masks(table: pd.DataFrame, split: Mapping[str, Any]) -> dict[str, pd.Series]:
    """Scan masks for each subject list of ``split`` (``train``, ``test``, ``external``).

    The test side of a leave-one-center-out split keeps only the scans acquired
    at ``heldout_center``; the ``external`` side of an internal/external split
    keeps only scans outside ``internal_center``. ``excluded`` gets no mask.
    """
    out: dict[str, pd.Series] = {"train": scans_of(table, split["train"])}
    out["test"] = scans_of(table, split["test"], center=split.get("heldout_center"))
    if "external" in split:
        m = scans_of(table, split["external"])
        if split.get("internal_center") is not None:
            m &= table["center"].astype(str) != str(split["internal_center"])
        out["external"] = m
    return out


def heldout_subjects(split: Mapping[str, Any]) -> list[str]:
    """Every subject a model fitted on ``split["train"]`` must not have seen.

    The sorted union of ``test``, ``external`` and ``excluded``.
    """
    ids: set[str] = set()
    for key in SUBJECT_KEYS:
        if key != "train" and key in split:
            ids.update(map(str, split[key]))
    return sorted(ids)


def subject_overlaps(split: Mapping[str, Any]) -> dict[tuple[str, str], list[str]]:
    """Subjects shared by lists of ``split`` that must be disjoint.

    ``train`` must be disjoint from every other subject list, and ``test`` from
    ``external``. (``excluded`` is by design a subset of ``test`` / ``external``.)

    Returns
    -------
    dict mapping ``(key_a, key_b)`` to the sorted shared ids (only non-empty ones).
    """
    pairs = [("train", k) for k in SUBJECT_KEYS[1:]] + [("test", "external")]
    out: dict[tuple[str, str], list[str]] = {}
    for a, b in pairs:
        if a in split and b in split:
            shared = sorted(set(map(str, split[a])) & set(map(str, split[b])))
            if shared:
                out[(a, b)] = shared
    return out


# --------------------------------------------------------------------------- factories


def leave_one_center_out(
    table: pd.DataFrame, *, centers: Iterable[str] | None = None
) -> list[Split]:
    """Leave-one-center-out splits (seed 000).

    For each held-out center, ``test`` holds every subject with at least one
    scan at that center; ``train`` holds the subjects never scanned there. A
    subject scanned both at the held-out center and elsewhere is in ``test`` and
    listed in ``excluded``: none of their scans is used for training.

    Parameters
    ----------
    table : DataFrame
        Scan table with ``subject_id`` and ``center``.
    centers : iterable of str, optional
        Centers to hold out in turn (seed 000 holds out only B and C). Default:
        every center, sorted.

    Returns
    -------
    list of splits named ``loco-<center>`` with ``heldout_center`` and ``excluded``.
    """
    _check_table(table, ["subject_id", "center"])
    subj = table["subject_id"].astype(str)
    cen = table["center"].astype(str)
    all_centers = sorted(cen.unique())
    if len(all_centers) < 2:
        raise ValueError(f"leave-one-center-out needs >= 2 centers; the scan table has {all_centers}")
    if centers is None:
        chosen = all_centers
    else:
        chosen = _as_id_list(centers, "centers")
        for c in chosen:
            if c not in all_centers:
                raise ValueError(f"'centers' entries must be one of {all_centers}; got {c!r}")
    splits: list[Split] = []
    for c in chosen:
        test = set(subj[cen == c])
        other = set(subj[cen != c])
        excluded = sorted(other & test)
        train = sorted(other - test)
        if not train:
            raise ValueError(f"holding out center {c!r} leaves no training subject")
        if excluded:
            logger.info(
                "loco-%s: %d subject(s) also scanned at center %s are excluded from training: %s",
                c, len(excluded), c, _show(excluded),
            )
        splits.append(
            {"name": f"loco-{c}", "heldout_center": c, "train": train,
             "test": sorted(test), "excluded": excluded}
        )
    return splits


def grouped_kfold(
    table: pd.DataFrame,
    n_splits: int = 5,
    *,
    stratify: str | Sequence[str] | None = "group",
    seed: int = 0,
    subjects: Iterable[Any] | None = None,
    n_bins: int = 4,
) -> list[Split]:
    """Subject-grouped, stratified k-fold cross-validation.

    Folds are drawn over subjects (one row per subject), so all sessions of a
    subject are on one side and each fold's validation part holds ~1/k of the
    subjects (seed 000's "subject-level 80/20" inner folds for k=5; seed 001's
    10-fold and seed 003's 5-fold CV). With one label per subject, stratifying
    subjects with :class:`~sklearn.model_selection.StratifiedKFold` is exactly a
    stratified *group* k-fold that balances subjects rather than scans.

    Parameters
    ----------
    table : DataFrame
        Scan table with ``subject_id`` (and the ``stratify`` column(s)).
    n_splits : int
        Number of folds (>= 2, <= number of subjects).
    stratify : str, sequence of str or None
        Column(s) whose per-subject value is balanced across folds (e.g.
        ``"group"``, ``["group", "center"]``, ``"edss"``). A subject's value is
        taken from its first session (sorted by ``session``). A numeric column
        with more than ``n_bins`` distinct values is binned into ``n_bins``
        quantile bins first; missing values form their own stratum. ``None``:
        plain shuffled :class:`~sklearn.model_selection.KFold`.
    seed : int
        Shuffling seed.
    subjects : iterable of subject ids, optional
        Restrict the folds to these subjects (e.g. an outer split's ``train``).
    n_bins : int
        Quantile bins for a continuous stratification column.

    Returns
    -------
    list of splits named ``fold0`` ... with keys ``fold``, ``seed``, ``stratify``;
    ``test`` is the fold's validation part.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    _check_table(table, ["subject_id"])
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"'n_splits' must be an integer >= 2; got {n_splits!r}")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"'n_bins' must be an integer >= 2; got {n_bins!r}")
    subj = _subject_rows(table, subjects)
    ids = subj.index.to_numpy(dtype=str)
    if n_splits > len(ids):
        raise ValueError(f"'n_splits'={n_splits} is greater than the number of subjects ({len(ids)})")
    labels = _strata(subj, stratify, n_bins)
    if labels is None:
        cv = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = cv.split(ids)
    else:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = cv.split(ids, labels)
    strat = None if stratify is None else ([stratify] if isinstance(stratify, str) else list(stratify))
    return [
        {"name": f"fold{k}", "fold": k, "seed": int(seed), "stratify": strat,
         "train": sorted(ids[tr].tolist()), "test": sorted(ids[te].tolist())}
        for k, (tr, te) in enumerate(folds)
    ]


def random_subject_split(
    table: pd.DataFrame,
    test_size: float | int = 0.2,
    *,
    seed: int = 0,
    stratify: str | Sequence[str] | None = None,
    subjects: Iterable[Any] | None = None,
    n_bins: int = 4,
    name: str = "holdout",
) -> Split:
    """One random subject-level train/test split (e.g. seed 001's 80/20).

    Parameters
    ----------
    table : DataFrame
        Scan table with ``subject_id``.
    test_size : float in (0, 1) or int >= 1
        Fraction or number of subjects in ``test``.
    seed : int
        Random seed of :func:`sklearn.model_selection.train_test_split`.
    stratify, n_bins : see :func:`grouped_kfold`.
    subjects : iterable of subject ids, optional
        Split only these subjects.
    name : str
        Name of the split.
    """
    from sklearn.model_selection import train_test_split

    _check_table(table, ["subject_id"])
    if isinstance(test_size, bool) or not (
        (isinstance(test_size, float) and 0 < test_size < 1)
        or (isinstance(test_size, (int, np.integer)) and test_size >= 1)
    ):
        raise ValueError(f"'test_size' must be a float in (0, 1) or an int >= 1; got {test_size!r}")
    subj = _subject_rows(table, subjects)
    ids = subj.index.to_numpy(dtype=str)
    if len(ids) < 2:
        raise ValueError(f"a train/test split needs >= 2 subjects; got {len(ids)}")
    labels = _strata(subj, stratify, n_bins)
    try:
        tr, te = train_test_split(ids, test_size=test_size, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise ValueError(f"cannot split {len(ids)} subjects (stratify={stratify!r}): {exc}") from exc
    strat = None if stratify is None else ([stratify] if isinstance(stratify, str) else list(stratify))
    return {"name": name, "seed": int(seed), "stratify": strat,
            "train": sorted(tr.tolist()), "test": sorted(te.tolist())}


def internal_external_split(
    table: pd.DataFrame,
    internal_center: str,
    test_size: float | int = 0.2,
    *,
    seed: int = 0,
    stratify: str | Sequence[str] | None = None,
    n_bins: int = 4,
    name: str = "internal-external",
) -> Split:
    """Random internal train/test split of one center plus the other centers as external test.

    Seed 001: site 1 split 80/20 (``test_size=0.2``), site 2 external.
    Seed 003: 25 % of the main center's patients as internal test
    (``test_size=0.25``), the other center external.

    A subject with any scan outside ``internal_center`` is ``external`` (and
    listed in ``excluded`` if also scanned at the internal center), never in
    the internal train/test pool.
    """
    _check_table(table, ["subject_id", "center"])
    cen = table["center"].astype(str)
    centers = sorted(cen.unique())
    if str(internal_center) not in centers:
        raise ValueError(f"'internal_center' must be one of {centers}; got {internal_center!r}")
    subj = table["subject_id"].astype(str)
    inside = set(subj[cen == str(internal_center)])
    external = set(subj[cen != str(internal_center)])
    pool = sorted(inside - external)
    split = random_subject_split(
        table, test_size, seed=seed, stratify=stratify, subjects=pool, n_bins=n_bins, name=name
    )
    split.update(
        internal_center=str(internal_center),
        external=sorted(external),
        excluded=sorted(inside & external),
    )
    return split


def resolve_centers(
    table: pd.DataFrame,
    internal_center: str | None = None,
    external_centers: Sequence[str] | None = None,
) -> tuple[str, list[str]]:
    """The internal center and the external test center(s) of an internal/external design.

    Parameters
    ----------
    table : DataFrame
        Rows with ``subject_id`` and ``center``.
    internal_center : str, optional
        Default: the center with the most subjects (ties: the first in sorted order).
    external_centers : sequence of str, optional
        Default: every other center, pooled (seed 003's external patients came from
        two other centers; seed 001 has one). Each must be another center.

    Returns
    -------
    (str, list of str)
    """
    _check_table(table, ["subject_id", "center"])
    counts = table.assign(center=table["center"].astype(str)).groupby("center")["subject_id"].nunique()
    centers = sorted(counts.index)
    if internal_center is None:
        internal = str(counts.sort_index().idxmax())
    elif str(internal_center) in centers:
        internal = str(internal_center)
    else:
        raise ValueError(f"'internal_center' must be one of {centers}; got {internal_center!r}")
    others = [c for c in centers if c != internal]
    if external_centers is None:
        return internal, others
    if isinstance(external_centers, str):
        raise TypeError(f"'external_centers' must be a list of center names; got the string {external_centers!r}")
    bad = [c for c in external_centers if str(c) not in others]
    if bad:
        raise ValueError(f"'external_centers' must be among {others} (not the internal center); got {bad}")
    return internal, sorted(str(c) for c in external_centers)


def internal_external_cv(
    table: pd.DataFrame,
    *,
    internal_center: str | None = None,
    external_centers: Sequence[str] | None = None,
    test_size: float | int = 0.2,
    n_folds: int = 5,
    seed: int = 0,
    name: str | None = None,
) -> Split:
    """Seeds 001 and 003: internal train/test split of one center, CV folds, external test centers.

    The internal center's subjects are split at random into ``train`` and ``test``
    (:func:`internal_external_split`); the training subjects are divided into
    ``n_folds`` subject-level folds (:func:`grouped_kfold`, unstratified), stored as
    ``inner``; the subjects of ``external_centers`` are ``external``, those of any
    other center ``unused``.

    With fewer training subjects than folds (e.g. a two-patient real sample) no
    subject folds exist: ``fold_unit`` is then ``"slab"`` and there is no ``inner``
    (a study may cut folds inside the training subjects, see
    :func:`msutils.studies.flair_nnunet.fold_groups`); otherwise ``"subject"``.

    Parameters
    ----------
    table : DataFrame
        Rows with ``subject_id`` and ``center`` (scans or one row per subject).
    internal_center, external_centers
        See :func:`resolve_centers`.
    test_size : float or int
        Internal test share (seed 001: 0.2; seed 003: 0.25).
    n_folds : int
        Cross-validation folds over the training subjects (>= 2).
    seed : int
    name : str, optional
        Split name; default ``"internal-<center>"``.

    Returns
    -------
    Split
        ``train``, ``test``, ``external``, ``excluded``, ``unused``, ``internal_center``,
        ``external_centers``, ``seed``, ``test_size``, ``n_folds``, ``fold_unit`` and
        (subject folds) ``inner``.
    """
    n_folds = check_int("n_folds", n_folds, 2)
    internal, external = resolve_centers(table, internal_center, external_centers)
    cen = table["center"].astype(str)
    n_internal = table.loc[cen == internal, "subject_id"].nunique()
    if n_internal < 2:
        raise ValueError(f"the internal center {internal!r} has {n_internal} subject(s); the internal train/test "
                         "split needs at least 2")
    split = internal_external_split(table, internal, test_size, seed=seed, name=name or f"internal-{internal}")
    ext_subjects = set(table.loc[cen.isin(external), "subject_id"].astype(str))
    split["unused"] = sorted(set(split["external"]) - ext_subjects)
    split["external"] = sorted(set(split["external"]) & ext_subjects)
    split.update(external_centers=list(external), seed=int(seed), test_size=test_size, n_folds=n_folds)
    if len(split["train"]) >= n_folds:
        split["fold_unit"] = "subject"
        split["inner"] = grouped_kfold(table, n_folds, stratify=None, seed=seed, subjects=split["train"])
    else:
        split["fold_unit"] = "slab"
        logger.warning("%d training subject(s) for %d folds: no subject-level folds (fold_unit 'slab'); the test "
                       "subjects stay unseen", len(split["train"]), n_folds)
    return split


def nested_loco(
    table: pd.DataFrame,
    n_inner: int = 5,
    seed: int = 0,
    *,
    stratify: str | Sequence[str] | None = "group",
    centers: Iterable[str] | None = None,
    n_bins: int = 4,
) -> list[Split]:
    """Leave-one-center-out outer splits, each with inner k-fold over its training subjects.

    Each outer split (see :func:`leave_one_center_out`) gets ``"inner"``: the
    :func:`grouped_kfold` folds of its ``train`` subjects (seed 000: inner 5-fold,
    subject-level 80/20, within the training centers only), and ``"seed"``.
    """
    outer = leave_one_center_out(table, centers=centers)
    for split in outer:
        split["seed"] = int(seed)
        split["inner"] = grouped_kfold(
            table, n_inner, stratify=stratify, seed=seed, subjects=split["train"], n_bins=n_bins
        )
    return outer


# --------------------------------------------------------------------------- validation


def _split_problems(split: Any, where: str, outer_train: set[str] | None = None) -> list[str]:
    if not isinstance(split, Mapping):
        return [f"{where}: must be a JSON object; got {type(split).__name__}"]
    name = split.get("name")
    if not isinstance(name, str) or not name:
        return [f"{where}: 'name' must be a non-empty string; got {name!r}"]
    where = f"{where} {name!r}"
    problems: list[str] = []
    for key in ("train", "test"):
        if key not in split:
            problems.append(f"{where}: missing key {key!r}")
    for key in SUBJECT_KEYS:
        if key not in split:
            continue
        ids = split[key]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            problems.append(f"{where}: {key!r} must be a list of subject-id strings")
            continue
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            problems.append(f"{where}: {key!r} lists subject(s) more than once: {_show(dups)}")
        if key in ("train", "test") and not ids:
            problems.append(f"{where}: {key!r} is empty")
    if problems:
        return problems
    for (a, b), shared in subject_overlaps(split).items():
        problems.append(f"{where}: subject(s) in both {a!r} and {b!r}: {_show(shared)}")
    if outer_train is not None:
        outside = sorted((set(split["train"]) | set(split["test"])) - outer_train)
        if outside:
            problems.append(f"{where}: uses subject(s) outside the outer 'train': {_show(outside)}")
    if "inner" in split:
        inner = split["inner"]
        if not isinstance(inner, list):
            problems.append(f"{where}: 'inner' must be a list of splits")
        else:
            problems += _list_problems(inner, f"{where} inner split", set(split["train"]))
    return problems


def _list_problems(splits: Any, where: str, outer_train: set[str] | None = None) -> list[str]:
    if not isinstance(splits, list):
        return [f"splits must be a list; got {type(splits).__name__}"]
    problems: list[str] = []
    names = [s.get("name") for s in splits if isinstance(s, Mapping)]
    dups = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dups:
        problems.append(f"{where}: duplicate name(s) {dups}")
    for i, s in enumerate(splits):
        problems += _split_problems(s, f"{where} #{i}", outer_train)
    return problems


def validate_splits(splits: Any, *, table: pd.DataFrame | None = None) -> list[str]:
    """Every problem of a list of splits ([] if valid).

    Checks names (non-empty, unique), subject lists (lists of strings, no
    duplicates, non-empty ``train``/``test``), disjointness (see
    :func:`subject_overlaps`), inner splits (recursively, within the outer
    ``train``) and, if ``table`` is given, that every subject exists in it.
    """
    problems = _list_problems(splits, "split")
    if table is not None and not problems:
        known = set(table["subject_id"].astype(str))

        def walk(ss: list[Split]) -> set[str]:
            used: set[str] = set()
            for s in ss:
                for k in SUBJECT_KEYS:
                    used.update(s.get(k, []))
                used |= walk(s.get("inner", []))
            return used

        unknown = sorted(walk(splits) - known)
        if unknown:
            problems.append(f"subject(s) not in the scan table: {_show(unknown)}")
    return problems


# --------------------------------------------------------------------------- files


def write_splits(
    path: str | os.PathLike,
    splits: Sequence[Split],
    *,
    seed: int | None = None,
    table: pd.DataFrame | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Validate ``splits`` and write them atomically as JSON.

    The file holds ``{"schema_version", "seed", "subjects_sha256", "meta", "splits"}``;
    ``subjects_sha256`` (see :func:`subjects_hash`) is filled when ``table`` is given.

    Raises
    ------
    SplitsError
        If the splits are invalid (nothing is written).
    """
    splits = [dict(s) for s in splits]
    problems = validate_splits(splits, table=table)
    if problems:
        raise SplitsError(
            f"refusing to write invalid splits to {path}:\n  " + "\n  ".join(problems), problems
        )
    payload = {
        "schema_version": SCHEMA_VERSION,
        "seed": seed,
        "subjects_sha256": subjects_hash(table) if table is not None else None,
        "meta": dict(meta or {}),
        "splits": splits,
    }
    out = atomic_write_json(path, payload)
    logger.info("wrote %d split(s) to %s", len(splits), out)
    return out


def read_splits(path: str | os.PathLike, *, table: pd.DataFrame | None = None) -> list[Split]:
    """Read and validate a splits file written by :func:`write_splits`.

    Parameters
    ----------
    path : path-like
    table : DataFrame, optional
        The scan table the splits are used with: every subject must exist in
        it and, if the file recorded one, the subject-set hash must match.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    SplitsError
        The file is not valid JSON, has another schema version, or its splits
        are invalid; the message names the file and every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"splits file {path} does not exist")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SplitsError(f"splits file {path} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or "splits" not in payload:
        raise SplitsError(f"splits file {path}: expected a JSON object with key 'splits'")
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SplitsError(
            f"splits file {path}: 'schema_version' must be {SCHEMA_VERSION}; got {version!r}"
        )
    splits = payload["splits"]
    problems = validate_splits(splits, table=table)
    recorded = payload.get("subjects_sha256")
    if table is not None and recorded is not None and recorded != subjects_hash(table):
        problems.append(
            "it was made for a different set of subjects than the scan table "
            "(subjects_sha256 differs); delete the file to regenerate it"
        )
    if problems:
        raise SplitsError(
            f"splits file {path} is invalid:\n  " + "\n  ".join(problems), problems
        )
    return splits


def load_or_create_splits(
    path: str | os.PathLike,
    factory: Callable[[], Sequence[Split]],
    *,
    seed: int | None = None,
    table: pd.DataFrame | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[Split]:
    """Read the splits file at ``path``; create it with ``factory()`` if absent.

    The first run writes the file; later runs read it back unchanged, so every
    run (and every fold process) uses the very same subjects. The returned list
    is always what :func:`read_splits` gives, on the first run too. Concurrent
    first runs each write atomically; with a seeded factory they write the
    same content.

    Parameters
    ----------
    path : path-like
        Splits JSON file.
    factory : callable
        ``factory() -> list of splits``, e.g.
        ``lambda: nested_loco(table, 5, seed)``.
    seed, table, meta
        Passed to :func:`write_splits` (``table`` also to :func:`read_splits`).
    """
    path = Path(path)
    if path.exists():
        logger.info("reusing splits file %s", path)
    else:
        if not callable(factory):
            raise TypeError(f"'factory' must be callable; got {type(factory).__name__}")
        write_splits(path, factory(), seed=seed, table=table, meta=meta)
    return read_splits(path, table=table)


def splits_file_name(
    cohort_hash: str,
    *,
    internal_center: str,
    external_centers: Sequence[str],
    test_size: float | int,
    n_folds: int,
    seed: int,
) -> str:
    """File name of an :func:`internal_external_cv` splits file (one per cohort content and design).

    ``splits_<first 12 hex of the cohort hash>_<internal>_<externals joined by + or
    none>_test<test_size>_cv<n_folds>_seed<seed>.json``: a regenerated cohort or
    another design never reads a stale file.
    """
    if not isinstance(cohort_hash, str) or len(cohort_hash) < 12:
        raise ValueError(f"'cohort_hash' must be a hex digest (Cohort.content_hash()); got {cohort_hash!r}")
    ext = "+".join(map(str, external_centers)) or "none"
    return f"splits_{cohort_hash[:12]}_{internal_center}_{ext}_test{test_size}_cv{int(n_folds)}_seed{int(seed)}.json"


def load_or_create_internal_external_cv(
    folder: str | os.PathLike,
    table: pd.DataFrame,
    cohort_hash: str,
    *,
    internal_center: str | None = None,
    external_centers: Sequence[str] | None = None,
    test_size: float | int = 0.2,
    n_folds: int = 5,
    seed: int = 0,
) -> Split:
    """The study's :func:`internal_external_cv` split, written once to ``folder`` and reused.

    The centers are resolved first (:func:`resolve_centers`), so the file name
    (:func:`splits_file_name`) names the actual centers; the file is created by
    :func:`load_or_create_splits` and validated against ``table`` on every read.

    Returns
    -------
    Split
        As read back from the file.
    """
    internal, external = resolve_centers(table, internal_center, external_centers)
    path = Path(folder) / splits_file_name(cohort_hash, internal_center=internal, external_centers=external,
                                           test_size=test_size, n_folds=n_folds, seed=seed)
    return load_or_create_splits(
        path, lambda: [internal_external_cv(table, internal_center=internal, external_centers=external,
                                            test_size=test_size, n_folds=n_folds, seed=seed)],
        seed=seed, table=table)[0]
