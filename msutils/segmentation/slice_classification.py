"""Slice-level lesion detection (seed 003): each 2D slice scored TP / FP / TN / FN.

Conventions
-----------
    A slice is *positive* when it holds at least one ground-truth lesion. A
    positive slice is **TP** when at least one of its ground-truth lesions is
    detected, otherwise **FN** (also when the prediction is non-empty but
    misplaced). Lesions are 2D connected components inside the slice. Which
    lesion counts as detected is ``truth_overlap``:

    ``"instance"`` (default, seed 003's rule)
        one *predicted lesion* (connected component of the prediction) covers
        at least ``overlap_threshold`` (10 %) of the ground-truth lesion: "the
        model must detect at least one lesion in a positive scan with a
        volumetric overlap of at least 10 % compared to the ground truth".
    ``"union"`` (lenient variant)
        the *whole predicted mask* covers at least ``overlap_threshold`` of the
        ground-truth lesion, so several predicted fragments that each cover
        less than the threshold can add up to a detection.

    The two rules differ only for a lesion covered by several predicted
    fragments none of which reaches the threshold alone (see
    :func:`msutils.segmentation.lesions.match_instances`). A negative slice is
    **TN** when the (size-filtered) prediction has no voxel, otherwise **FP**.
    Negative slices are sub-sampled to
    ``round(negative_ratio * n_positive)`` (all of them if fewer exist, with a
    logged warning; ``negative_ratio=None`` keeps all) by
    ``numpy.random.default_rng(seed).choice`` without replacement over the
    eligible negative slices in index order; the draw depends only on the
    ground truth (and ``brain_mask``), never on the prediction, so every model
    and every threshold is scored on the same slices. Positive slices are
    always kept.

Lesions inside a slice are found and matched with :mod:`msutils.segmentation.lesions`
(2D connectivity); the ratios of the counts (accuracy, sensitivity, ...) come from
:func:`msutils.segmentation.metrics.classification_metrics`. Threshold curves
(seed 003, Figs 4-5) re-score the same slices at every TP overlap threshold of
:data:`DEFAULT_THRESHOLDS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from msutils.core.validation import as_mask, check_choice, check_fraction
from msutils.segmentation.lesions import TRUTH_OVERLAP_RULES, connectivity_structure, instances, pair_overlaps
from msutils.segmentation.metrics import CLASSIFICATION_METRICS, classification_metrics

__all__ = [
    "OUTCOMES",
    "DEFAULT_THRESHOLDS",
    "SliceClassification",
    "draw_negatives",
    "slice_level_classification",
    "slice_stack_classification",
    "threshold_curve",
    "threshold_curve_from_slices",
]

logger = logging.getLogger(__name__)

#: Slice outcomes, in the order used by count tables.
OUTCOMES: tuple[str, ...] = ("TP", "FP", "TN", "FN")

@dataclass(frozen=True)
class SliceClassification:
    """Result of slice-level classification (seed 003).

    Attributes
    ----------
    table : DataFrame
        One row per slice: ``slice`` (index or id), ``truth_positive``,
        ``n_truth_lesions``, ``n_pred_lesions``, ``n_pred_voxels``,
        ``best_overlap`` (largest detection coverage of a ground-truth lesion,
        per ``truth_overlap``), ``eligible`` (may be drawn as a negative),
        ``sampled`` (part of the evaluated set), ``outcome`` (TP/FP/TN/FN,
        computed for every slice, also unsampled ones).
    params : dict
        Rules used.
    """

    table: pd.DataFrame
    params: dict = field(default_factory=dict)

    def outcomes_at(self, overlap_threshold: float) -> pd.Series:
        """Outcomes of every slice for another TP overlap threshold."""
        thr = check_fraction("overlap_threshold", overlap_threshold)
        return _outcomes(self.table, thr)

    def counts_at(self, overlap_threshold: float | None = None) -> dict[str, int]:
        """TP/FP/TN/FN counts over the sampled slices (optionally re-thresholded)."""
        out = self.table["outcome"] if overlap_threshold is None else self.outcomes_at(overlap_threshold)
        out = out[self.table["sampled"].to_numpy()]
        vc = out.value_counts()
        return {k.lower(): int(vc.get(k, 0)) for k in OUTCOMES}

    @property
    def counts(self) -> dict[str, int]:
        """``tp, fp, tn, fn`` over the sampled slices."""
        return self.counts_at(None)

    def metrics(self, *, alpha: float = 0.05) -> dict[str, float]:
        """Accuracy, sensitivity, specificity, PPV, NPV with exact CIs."""
        return classification_metrics(**self.counts, alpha=alpha)


def draw_negatives(eligible: Sequence[bool] | np.ndarray, n_positive: int, ratio: float = 1.0,
                   seed: int = 0) -> np.ndarray:
    """Indices of the negative slices to evaluate (the seed-003 balanced draw).

    ``round(ratio * n_positive)`` indices (all eligible ones if fewer exist, with a
    logged warning) drawn by ``numpy.random.default_rng(seed).choice`` without
    replacement from ``flatnonzero(eligible)``, returned sorted. The draw depends
    only on which slices are eligible, never on a prediction.

    Parameters
    ----------
    eligible : sequence of bool
        Which slices may be drawn (lesion-free slices with enough brain, say).
    n_positive : int
        Number of positive slices.
    ratio : float
        Negatives per positive (seed 003: 1, balanced).
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of int
    """
    elig = np.flatnonzero(np.asarray(eligible, dtype=bool))
    if not np.isfinite(ratio) or ratio < 0:
        raise ValueError(f"'ratio' must be a non-negative number; got {ratio!r}")
    n_want = int(round(ratio * int(n_positive)))
    if n_want > elig.size:
        logger.warning("only %d negative slices available for %d requested (ratio %s); using all of them",
                       elig.size, n_want, ratio)
        n_want = elig.size
    if n_want == 0:
        return np.array([], dtype=int)
    return np.sort(np.random.default_rng(seed).choice(elig, size=n_want, replace=False))


def _outcomes(table: pd.DataFrame, thr: float) -> pd.Series:
    pos = table["truth_positive"].to_numpy(bool)
    best = table["best_overlap"].to_numpy(float)
    det = (best >= thr) & (best > 0)
    has_pred = table["n_pred_voxels"].to_numpy() > 0
    out = np.where(pos, np.where(det, "TP", "FN"), np.where(has_pred, "FP", "TN"))
    return pd.Series(out, index=table.index, name="outcome", dtype=object)


def _slice_summary(
    p: np.ndarray, t: np.ndarray, *, connectivity: int | None, min_size: int, truth_overlap: str
) -> tuple[bool, int, int, int, float]:
    """(truth positive, n truth lesions, n pred lesions, n pred voxels, best coverage) of one 2D slice."""
    if p.shape != t.shape:
        raise ValueError(f"prediction and truth slices must have the same shape; got {p.shape} and {t.shape}")
    t_lab, n_t = instances(t, connectivity=connectivity, min_size=min_size) if t.any() else (None, 0)
    p_lab, n_p = instances(p, connectivity=connectivity, min_size=min_size) if p.any() else (None, 0)
    n_pred_vox = int((p_lab > 0).sum()) if n_p else 0
    best = 0.0
    if n_t and n_p:
        t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)
        if truth_overlap == "union":
            ov = np.bincount(t_lab[p_lab > 0], minlength=n_t + 1)
            best = float((ov[1:] / t_size[1:]).max())
        else:
            pr = pair_overlaps(t_lab, p_lab, n_p)
            if len(pr):
                best = float((pr["overlap_voxels"] / t_size[pr["truth_id"].to_numpy()]).max())
    return n_t > 0, n_t, n_p, n_pred_vox, best


def _classify_slices(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    ids: Sequence[Any],
    eligible: np.ndarray,
    *,
    overlap_threshold: float,
    negative_ratio: float | None,
    seed: int,
    connectivity: int | None,
    min_size: int,
    truth_overlap: str,
) -> SliceClassification:
    thr = check_fraction("overlap_threshold", overlap_threshold)
    check_choice("truth_overlap", truth_overlap, TRUTH_OVERLAP_RULES)
    if negative_ratio is not None and (not np.isfinite(negative_ratio) or negative_ratio < 0):
        raise ValueError(f"'negative_ratio' must be a non-negative number or None; got {negative_ratio!r}")
    rows = [
        _slice_summary(p, t, connectivity=connectivity, min_size=min_size, truth_overlap=truth_overlap)
        for p, t in pairs
    ]
    arr = list(zip(*rows)) if rows else [[], [], [], [], []]
    table = pd.DataFrame(
        {
            "slice": list(ids),
            "truth_positive": np.asarray(arr[0], dtype=bool),
            "n_truth_lesions": np.asarray(arr[1], dtype=np.int64),
            "n_pred_lesions": np.asarray(arr[2], dtype=np.int64),
            "n_pred_voxels": np.asarray(arr[3], dtype=np.int64),
            "best_overlap": np.asarray(arr[4], dtype=float),
        }
    )
    pos = table["truth_positive"].to_numpy()
    table["eligible"] = pos | np.asarray(eligible, dtype=bool)
    negatives = ~pos & table["eligible"].to_numpy()
    sampled = pos.copy()
    if negative_ratio is None:
        sampled[negatives] = True
    else:
        sampled[draw_negatives(negatives, int(pos.sum()), negative_ratio, seed)] = True
    table["sampled"] = sampled
    table["outcome"] = _outcomes(table, thr)
    params = {
        "overlap_threshold": thr,
        "negative_ratio": negative_ratio,
        "seed": seed,
        "connectivity": connectivity or 8,
        "min_size": int(min_size),
        "truth_overlap": truth_overlap,
    }
    return SliceClassification(table=table, params=params)


def slice_level_classification(
    pred_vol: np.ndarray,
    truth_vol: np.ndarray,
    *,
    axis: int = 2,
    overlap_threshold: float = 0.1,
    negative_ratio: float | None = 1.0,
    seed: int = 0,
    connectivity: int | None = None,
    min_size: int = 0,
    truth_overlap: Literal["union", "instance"] = "instance",
    brain_mask: np.ndarray | None = None,
) -> SliceClassification:
    """Slice-level classification of one 3D volume (seed 003 rule).

    Each 2D slice along ``axis`` is one sample; lesions are 2D connected
    components inside the slice. See the module docstring for the TP/FP/TN/FN
    rule and the negative sub-sampling.

    Parameters
    ----------
    pred_vol, truth_vol : ndarray, 3D, same shape
        Binary predicted and ground-truth masks.
    axis : int, default 2
        Slicing axis (2 = the last voxel axis, axial for RAS-like NIfTI arrays).
    overlap_threshold : float in [0, 1], default 0.1
        Share of a ground-truth lesion that must be covered for a TP slice.
    negative_ratio : float or None, default 1.0
        Negatives drawn per positive slice; ``None`` keeps every negative.
    seed : int, default 0
        Seed of the negative draw.
    connectivity : {4, 8}, optional
        2D connectivity inside a slice (default 8).
    min_size : int, default 0
        Drop 2D components smaller than this (prediction and truth).
    truth_overlap : {"instance", "union"}, default "instance"
        TP rule: one predicted lesion (seed 003) or the whole predicted mask
        (lenient) must cover ``overlap_threshold`` of a ground-truth lesion;
        see the module docstring.
    brain_mask : ndarray, 3D, optional
        Slices without any brain voxel are never drawn as negatives.

    Returns
    -------
    SliceClassification
        ``table`` (``slice`` = index along ``axis``), ``counts``, ``metrics()``.
    """
    p = as_mask("pred_vol", pred_vol, ndims=(3,))
    t = as_mask("truth_vol", truth_vol, ndims=(3,))
    if p.shape != t.shape:
        raise ValueError(f"'pred_vol' and 'truth_vol' must have the same shape; got {p.shape} and {t.shape}")
    if int(axis) != axis or not -3 <= axis <= 2:
        raise ValueError(f"'axis' must be one of [0, 1, 2, -1, -2, -3]; got {axis!r}")
    p = np.moveaxis(p, axis, 0)
    t = np.moveaxis(t, axis, 0)
    if brain_mask is None:
        eligible = np.ones(p.shape[0], dtype=bool)
    else:
        b = as_mask("brain_mask", brain_mask, ndims=(3,))
        if b.shape != np.shape(truth_vol):
            raise ValueError(f"'brain_mask' must have the shape of 'truth_vol' {np.shape(truth_vol)}; got {b.shape}")
        eligible = np.moveaxis(b, axis, 0).reshape(p.shape[0], -1).any(axis=1)
    if connectivity is not None:
        connectivity_structure(2, connectivity)
    res = _classify_slices(
        [(p[i], t[i]) for i in range(p.shape[0])],
        list(range(p.shape[0])),
        eligible,
        overlap_threshold=overlap_threshold,
        negative_ratio=negative_ratio,
        seed=seed,
        connectivity=connectivity,
        min_size=min_size,
        truth_overlap=truth_overlap,
    )
    res.params["axis"] = int(axis)
    return res


def slice_stack_classification(
    preds: Sequence[np.ndarray] | np.ndarray,
    truths: Sequence[np.ndarray] | np.ndarray,
    *,
    ids: Sequence[Any] | None = None,
    overlap_threshold: float = 0.1,
    negative_ratio: float | None = 1.0,
    seed: int = 0,
    connectivity: int | None = None,
    min_size: int = 0,
    truth_overlap: Literal["union", "instance"] = "instance",
    eligible: Sequence[bool] | np.ndarray | None = None,
) -> SliceClassification:
    """Slice-level classification of a stack of independent 2D samples.

    Use this for 2D datasets (seed 003 / 002: every slice is a sample) and to
    pool slices of many scans into one evaluation: the negative draw is done
    once over the whole stack.

    Parameters
    ----------
    preds, truths : sequence of 2D arrays, or 3D arrays stacked on axis 0
        Binary masks; pairs must share a shape, different pairs may differ.
    ids : sequence, optional
        One id per slice (e.g. ``(scan_id, z)`` tuples); default ``0..n-1``.
    eligible : sequence of bool, optional
        Which negative slices may be drawn (default: all).
    overlap_threshold, negative_ratio, seed, connectivity, min_size, truth_overlap
        As in :func:`slice_level_classification`.

    Returns
    -------
    SliceClassification
    """
    if len(preds) != len(truths):
        raise ValueError(f"'preds' and 'truths' must have the same length; got {len(preds)} and {len(truths)}")
    n = len(truths)
    if ids is None:
        ids = list(range(n))
    elif len(ids) != n:
        raise ValueError(f"'ids' must have one entry per slice ({n}); got {len(ids)}")
    if eligible is None:
        elig = np.ones(n, dtype=bool)
    else:
        elig = np.asarray(eligible, dtype=bool)
        if elig.shape != (n,):
            raise ValueError(f"'eligible' must have one entry per slice ({n}); got shape {elig.shape}")
    if connectivity is not None:
        connectivity_structure(2, connectivity)
    pairs = []
    for i in range(n):
        p = as_mask(f"preds[{i}]", preds[i], ndims=(2,))
        t = as_mask(f"truths[{i}]", truths[i], ndims=(2,))
        if p.shape != t.shape:
            raise ValueError(f"'preds[{i}]' and 'truths[{i}]' must have the same shape; got {p.shape} and {t.shape}")
        pairs.append((p, t))
    return _classify_slices(
        pairs,
        list(ids),
        elig,
        overlap_threshold=overlap_threshold,
        negative_ratio=negative_ratio,
        seed=seed,
        connectivity=connectivity,
        min_size=min_size,
        truth_overlap=truth_overlap,
    )


# --------------------------------------------------------------------------- threshold curves
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.linspace(0.05, 0.95, 19), 2)
"""TP overlap thresholds of the threshold curves (Figs 4-5): 0.05, 0.10, ..., 0.95."""


def _check_thresholds(thresholds: Any) -> np.ndarray:
    try:
        thr = np.asarray(thresholds, dtype=float).ravel()
    except (TypeError, ValueError):
        thr = np.array([np.nan])
    if thr.size == 0 or np.any(~np.isfinite(thr)) or np.any((thr < 0) | (thr > 1)):
        raise ValueError(f"'thresholds' must be a non-empty sequence of numbers in [0, 1]; got {thresholds!r}")
    return thr


def threshold_curve_from_slices(
    result: Any,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Slice-level metrics as a function of the TP overlap threshold.

    Parameters
    ----------
    result : msutils.segmentation.lesions.SliceClassification
        Output of ``slice_level_classification`` / ``slice_stack_classification``.
        The sampled slices stay fixed; only the TP/FN rule of positive slices
        changes with the threshold (negatives do not depend on it).
    thresholds : sequence of float in [0, 1]
    alpha : float, default 0.05

    Returns
    -------
    DataFrame
        One row per threshold: ``threshold, tp, fp, tn, fn`` and the
        :func:`classification_metrics` ratios with their CIs.
    """
    thr = _check_thresholds(thresholds)
    rows = []
    for t in thr:
        c = result.counts_at(float(t))
        m = classification_metrics(c["tp"], c["fp"], c["tn"], c["fn"], alpha=alpha)
        rows.append({"threshold": float(t), **m})
    cols = ["threshold", "tp", "fp", "tn", "fn", "n"]
    for name in CLASSIFICATION_METRICS:
        cols += [name, f"{name}_ci_low", f"{name}_ci_high"]
    return pd.DataFrame(rows, columns=cols)


def threshold_curve(
    preds: Sequence[np.ndarray] | np.ndarray,
    truths: Sequence[np.ndarray] | np.ndarray,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    *,
    ids: Sequence[Any] | None = None,
    negative_ratio: float | None = 1.0,
    seed: int = 0,
    connectivity: int | None = None,
    min_size: int = 0,
    truth_overlap: str = "instance",
    eligible: Sequence[bool] | np.ndarray | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Slice-level accuracy / sensitivity / PPV / NPV vs the TP overlap threshold.

    Reproduces Figs 4-5 of seed 003. Slices are classified once
    (:func:`msutils.segmentation.lesions.slice_stack_classification`, one negative draw
    with ``seed``) and re-scored at each threshold.

    Parameters
    ----------
    preds, truths : sequence of 2D arrays, or 3D arrays stacked on axis 0
        Binary predicted / ground-truth slices (pool every test scan's slices
        here for a test-set curve).
    thresholds : sequence of float in [0, 1], default 0.05, 0.10, ..., 0.95
    ids, negative_ratio, seed, connectivity, min_size, truth_overlap, eligible
        See :func:`msutils.segmentation.lesions.slice_stack_classification`.
    alpha : float, default 0.05

    Returns
    -------
    DataFrame
        See :func:`threshold_curve_from_slices`.
    """

    thr = _check_thresholds(thresholds)
    res = slice_stack_classification(
        preds,
        truths,
        ids=ids,
        overlap_threshold=float(thr[0]),
        negative_ratio=negative_ratio,
        seed=seed,
        connectivity=connectivity,
        min_size=min_size,
        truth_overlap=truth_overlap,  # type: ignore[arg-type]
        eligible=eligible,
    )
    return threshold_curve_from_slices(res, thr, alpha=alpha)
