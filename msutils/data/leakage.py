"""Leakage audit: which subjects did each fitted step see?

Every fitted step of an analysis (harmonization, scaling, feature selection,
hyper-parameter search, a network, a GAN, a threshold) records the subject ids
of the rows it was fitted on in a :class:`FitLog`; :func:`assert_no_leak` then
checks that no held-out subject is among them::

    log = FitLog()
    fit_logged(log, "scaler", scaler, X_train, subjects=subj_train)
    log.record("cgan", train_subjects)          # anything not scikit-learn
    assert_no_leak(log, heldout_subjects(split))

A :class:`FitLog` serialises to a JSON-friendly dict (:meth:`FitLog.to_dict`),
so fold results can store their audit next to their numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from msutils.data.splits import heldout_subjects, subject_overlaps

__all__ = [
    "FitLog",
    "KeepFitLogOnClone",
    "record_fit",
    "row_subject_ids",
    "LeakageError",
    "assert_disjoint",
    "assert_no_leak",
    "audit_split",
    "audit_table",
    "fit_logged",
]

logger = logging.getLogger(__name__)

_FIT_METHODS = ("fit", "fit_transform", "fit_predict", "fit_resample")


class LeakageError(AssertionError):
    """Held-out subjects reached a fitted step, or a split's sides overlap.

    ``.leaks`` maps each offending step (or ``"a/b"`` pair of split keys) to
    the sorted leaked subject ids.
    """

    def __init__(self, message: str, leaks: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.leaks = dict(leaks or {})


def _ids(subject_ids: Any, name: str) -> list[str]:
    if isinstance(subject_ids, (str, bytes)):
        raise TypeError(f"'{name}' must be a collection of subject ids, not a single string {subject_ids!r}")
    if subject_ids is None:
        raise TypeError(f"'{name}' must be a collection of subject ids; got None")
    return [str(s) for s in np.asarray(list(subject_ids), dtype=object).ravel()]


class FitLog:
    """Per fitted step, the set of subject ids the step saw.

    Parameters
    ----------
    steps : mapping of step name -> iterable of subject ids, optional
        Initial content (e.g. from :meth:`from_dict`).

    Notes
    -----
    Recording the same step twice takes the union: a step refitted on more
    data has seen all of it.
    """

    VERSION = 1

    def __init__(self, steps: Mapping[str, Iterable[Any]] | None = None) -> None:
        self._seen: dict[str, set[str]] = {}
        for step, ids in (steps or {}).items():
            self.record(step, ids)

    def record(self, step: str, subject_ids: Iterable[Any]) -> None:
        """Record that ``step`` was fitted on rows of ``subject_ids`` (repeats allowed)."""
        if not isinstance(step, str) or not step:
            raise ValueError(f"'step' must be a non-empty string; got {step!r}")
        ids = set(_ids(subject_ids, "subject_ids"))
        self._seen.setdefault(step, set()).update(ids)
        logger.debug("fit log: step %r saw %d subject(s)", step, len(ids))

    def merge(self, other: FitLog | Mapping[str, Any], *, prefix: str = "") -> FitLog:
        """Add every step of ``other`` (a log or its :meth:`to_dict`), names prefixed; returns ``self``.

        Used to gather the logs of fold results into one audit, e.g.
        ``log.merge(fold_result["fit_log"], prefix="cv3/")``.
        """
        if isinstance(other, Mapping):
            other = FitLog.from_dict(other)
        if not isinstance(other, FitLog):
            raise TypeError(f"'other' must be a FitLog or its to_dict(); got {type(other).__name__}")
        for step in other.steps:
            self.record(f"{prefix}{step}", other.seen(step))
        return self

    def seen(self, step: str) -> frozenset[str]:
        """Subject ids recorded for ``step``."""
        if step not in self._seen:
            raise KeyError(f"step {step!r} was never recorded; recorded steps: {self.steps}")
        return frozenset(self._seen[step])

    @property
    def steps(self) -> list[str]:
        """Recorded step names, in recording order."""
        return list(self._seen)

    def all_seen(self) -> frozenset[str]:
        """Union of the subjects seen by any step."""
        return frozenset().union(*self._seen.values()) if self._seen else frozenset()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly ``{"version": 1, "steps": {step: sorted ids}}``."""
        return {"version": self.VERSION, "steps": {k: sorted(v) for k, v in self._seen.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitLog:
        """Rebuild a log written by :meth:`to_dict`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("steps"), Mapping):
            raise ValueError("fit log dict must be a mapping with a 'steps' mapping")
        if data.get("version", cls.VERSION) != cls.VERSION:
            raise ValueError(f"fit log 'version' must be {cls.VERSION}; got {data.get('version')!r}")
        return cls(data["steps"])

    def __contains__(self, step: object) -> bool:
        return step in self._seen

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))

    def __len__(self) -> int:
        return len(self._seen)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FitLog) and self._seen == other._seen

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {len(v)} subjects" for k, v in self._seen.items())
        return f"FitLog({{{inner}}})"


def record_fit(fit_log: FitLog | None, step: str, subject_ids: Iterable[Any]) -> None:
    """Record the training subjects of a fitted step in ``fit_log`` (nothing if it is None).

    Any object with a ``record(step, subject_ids)`` method is accepted.
    """
    if fit_log is None:
        return
    if not callable(getattr(fit_log, "record", None)):
        raise TypeError("'fit_log' must have a record(step, subject_ids) method")
    fit_log.record(step, list(dict.fromkeys(subject_ids)))


def row_subject_ids(X: Any, subject_ids: Iterable[Any] | None) -> list[Any]:
    """The subject id of every row of ``X``: ``subject_ids`` if given, else ``X.index``."""
    ids = list(X.index) if subject_ids is None else list(subject_ids)
    if len(ids) != len(X):
        raise ValueError(f"'subject_ids' has {len(ids)} entries but 'X' has {len(X)} rows")
    return ids


class KeepFitLogOnClone:
    """Mixin for scikit-learn estimators with a ``fit_log`` parameter: ``clone`` keeps the same log.

    ``sklearn.base.clone`` deep-copies parameters; a fitted step inside a grid
    search would then record into a copy nobody reads. With this mixin every clone
    shares the caller's :class:`FitLog`.
    """

    def __sklearn_clone__(self) -> Any:
        from sklearn.base import clone

        params = self.get_params(deep=False)  # type: ignore[attr-defined]
        log = params.pop("fit_log", None)
        new = {k: clone(v, safe=False) for k, v in params.items()}
        return type(self)(**new, fit_log=log)


def fit_logged(
    log: FitLog,
    step: str,
    estimator: Any,
    X: Any,
    y: Any = None,
    *,
    subjects: Iterable[Any],
    method: str = "fit",
    **fit_params: Any,
) -> Any:
    """Fit a scikit-learn estimator / pipeline and record its subjects in ``log``.

    Parameters
    ----------
    log : FitLog
    step : str
        Step name in the log (e.g. ``"scaler"``, ``"lasso"``, ``"svm-gridsearch"``).
    estimator : object with ``fit`` (and ``method``)
    X : array-like, n_rows first
    y : array-like, optional
    subjects : iterable
        Subject id of every row of ``X`` (rows are often scans or slices).
    method : {"fit", "fit_transform", "fit_predict", "fit_resample"}
        Which method to call.
    **fit_params
        Passed to the method.

    Returns
    -------
    The fitted estimator for ``method="fit"``, else what ``method`` returns.

    Notes
    -----
    The subjects are recorded *before* fitting: a fit that fails half-way has
    still been given those rows.
    """
    if method not in _FIT_METHODS:
        raise ValueError(f"'method' must be one of {list(_FIT_METHODS)}; got {method!r}")
    if not hasattr(estimator, method):
        raise TypeError(f"{type(estimator).__name__} has no method {method!r}")
    ids = _ids(subjects, "subjects")
    n_rows = X.shape[0] if hasattr(X, "shape") else len(X)
    if len(ids) != n_rows:
        raise ValueError(f"'subjects' has {len(ids)} entries but X has {n_rows} rows")
    log.record(step, ids)
    fn = getattr(estimator, method)
    return fn(X, **fit_params) if y is None else fn(X, y, **fit_params)


def _format_ids(ids: list[str]) -> str:
    return f"{len(ids)} subject(s) {ids}"


def assert_no_leak(
    log: FitLog, heldout_subjects: Iterable[Any], *, steps: Iterable[str] | None = None
) -> None:
    """Raise :class:`LeakageError` if any held-out subject reached a fitted step.

    Parameters
    ----------
    log : FitLog
    heldout_subjects : iterable of subject ids
        Subjects the steps must not have seen (test, external, excluded);
        :func:`msutils.data.splits.heldout_subjects` gives them for a split.
    steps : iterable of str, optional
        Steps to check, each of which must have been recorded (so an audit
        cannot pass because a step forgot to record). Default: every step.

    Raises
    ------
    LeakageError
        Naming every leaking step and all of its leaked subject ids.
    KeyError
        A requested step was never recorded.
    """
    if not isinstance(log, FitLog):
        raise TypeError(f"'log' must be a FitLog; got {type(log).__name__}")
    held = set(_ids(heldout_subjects, "heldout_subjects"))
    check = log.steps if steps is None else _ids(steps, "steps")
    leaks: dict[str, list[str]] = {}
    for step in check:
        leaked = sorted(log.seen(step) & held)
        if leaked:
            leaks[step] = leaked
    if leaks:
        lines = [f"  step {s!r}: {_format_ids(ids)}" for s, ids in leaks.items()]
        raise LeakageError("held-out subjects were seen while fitting:\n" + "\n".join(lines), leaks)
    logger.info("leakage audit passed: %d step(s), %d held-out subject(s)", len(check), len(held))


def assert_disjoint(split: Mapping[str, Any]) -> None:
    """Raise :class:`LeakageError` if a subject is on two sides of ``split``.

    ``train`` must be disjoint from ``test``, ``external`` and ``excluded``,
    and ``test`` from ``external``; inner splits are checked too.
    """
    if not isinstance(split, Mapping) or "train" not in split or "test" not in split:
        raise TypeError("'split' must be a mapping with 'train' and 'test' subject lists")
    leaks: dict[str, list[str]] = {}

    def walk(s: Mapping[str, Any], prefix: str) -> None:
        for (a, b), shared in subject_overlaps(s).items():
            leaks[f"{prefix}{a}/{b}"] = shared
        outer = {str(i) for i in s["train"]}
        for inner in s.get("inner", []):
            iname = f"{prefix}{inner.get('name', '?')}:"
            walk(inner, iname)
            outside = sorted(({str(i) for i in inner["train"]} | {str(i) for i in inner["test"]}) - outer)
            if outside:
                leaks[f"{iname}outside-outer-train"] = outside
    walk(split, "")
    if leaks:
        name = split.get("name", "?")
        lines = [f"  {k}: {_format_ids(v)}" for k, v in leaks.items()]
        raise LeakageError(f"split {name!r} is not disjoint:\n" + "\n".join(lines), leaks)


def audit_split(log: FitLog, split: Mapping[str, Any], *, steps: Iterable[str] | None = None) -> None:
    """:func:`assert_disjoint` on ``split``, then :func:`assert_no_leak` against its held-out subjects."""
    assert_disjoint(split)
    assert_no_leak(log, heldout_subjects(split), steps=steps)


def audit_table(log: FitLog, split: Mapping[str, Any]) -> Any:
    """One row per fitted step: how many subjects it saw, and how many of them were held out.

    The counts are computed from the log and the split (nothing is assumed): a step
    with a non-zero ``held-out subjects among them`` is a leak, which
    :func:`audit_split` turns into an error.

    Parameters
    ----------
    log : FitLog
    split : mapping
        With ``train``, ``test`` and optionally ``external`` / ``excluded`` subject lists.

    Returns
    -------
    pandas.DataFrame
        Index ``fitted step``; columns ``subjects seen``, ``training subjects among them``,
        ``held-out subjects among them``.
    """
    import pandas as pd

    if not isinstance(log, FitLog):
        raise TypeError(f"'log' must be a FitLog; got {type(log).__name__}")
    train = set(_ids(split["train"], "split['train']"))
    held = set(_ids(heldout_subjects(split), "held-out subjects"))
    rows = {step: {"subjects seen": len(log.seen(step)),
                   "training subjects among them": len(log.seen(step) & train),
                   "held-out subjects among them": len(log.seen(step) & held)} for step in log.steps}
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["subjects seen", "training subjects among them",
                                          "held-out subjects among them"])
    out.index.name = "fitted step"
    return out
