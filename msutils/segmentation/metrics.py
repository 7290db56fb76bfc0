"""Segmentation and detection metrics: voxel overlap, HD95, slice classification.

Voxel-level metrics compare one predicted binary mask with one ground-truth
mask (a 2D slice or a 3D volume; any non-zero voxel is foreground). With
``TP, FP, FN`` the voxel counts:

============  ==========================  =========================================
metric        formula                     empty-mask convention
============  ==========================  =========================================
dice          2 TP / (2 TP + FP + FN)     both empty -> ``empty_score`` (1.0)
nDSC          2 TP / (2 TP + k FP + FN)   both empty -> ``empty_score``; k = 1
              (normalized Dice, k below)  when the truth is empty
iou           TP / (TP + FP + FN)         both empty -> ``empty_score`` (1.0)
ppv           TP / (TP + FP)              both empty -> ``empty_score``; only the
                                          prediction empty -> 0.0
sensitivity   TP / (TP + FN)              both empty -> ``empty_score``; only the
                                          truth empty -> 0.0
hd95          95th percentile symmetric   either mask empty -> ``hd_empty`` (NaN)
              surface distance, in the
              units of ``spacing`` (mm)
============  ==========================  =========================================

So a case where exactly one mask is empty scores 0 on every overlap metric
(it is a complete miss or a pure false alarm) and NaN on HD95 (a distance to
nothing is undefined; MONAI returns ``inf`` there). Average HD95 with
``nanmean`` and report how many cases had a finite value (``summarize_metrics``
gives ``n``). Set ``empty_score=float("nan")`` to exclude both-empty cases
from the overlap means instead (nnU-Net's convention).

The normalized Dice (Raina et al., ISBI 2023; seed 004) rescales false positives
by ``k = (1 - r) |T| / (r (n - |T|))`` (``n`` voxels, ``|T|`` truth voxels,
reference load ``r = 0.001``), as if every scan had the lesion load ``r``: the
plain Dice falls with the lesion load for the same voxel error rates, the
normalized one does not.

HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)``: the
surface of a mask is the set of foreground voxels removed by one binary
erosion with the face-connected (cross) structure, voxels outside the array
count as background; for every surface voxel of one mask the Euclidean
distance (voxel coordinates scaled by ``spacing``) to the nearest surface voxel
of the other is taken; HD95 = max of the two directed 95th percentiles
(linear interpolation). The tests check it against MONAI.

Classification metrics come with exact Clopper-Pearson intervals
(:func:`msutils.stats.exact_ci_proportion`); a ratio with a zero denominator
is NaN with a NaN interval. Means over cases get percentile-bootstrap
intervals from :func:`msutils.stats.bootstrap_ci` (:func:`summarize_metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from msutils.core.overlap import dice, mask_pair, overlap_counts
from msutils.core.validation import ratio

__all__ = [
    "dice",
    "normalized_dice",
    "iou",
    "ppv",
    "sensitivity",
    "hd95",
    "hausdorff_percentile",
    "voxel_metrics",
    "voxel_metrics_table",
    "classification_metrics",
    "summarize_metrics",
    "VOXEL_METRICS",
    "CLASSIFICATION_METRICS",
]

logger = logging.getLogger(__name__)

#: Metric columns of :func:`voxel_metrics` / :func:`voxel_metrics_table`.
VOXEL_METRICS: tuple[str, ...] = ("dice", "iou", "ppv", "sensitivity", "hd95")
#: Ratios returned by :func:`classification_metrics`.
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


# --------------------------------------------------------------------------- validation
def _spacing(spacing: Any, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"'spacing' must be one positive number or {ndim} positive numbers (one per array axis); got {spacing!r}"
        )
    return sp


# --------------------------------------------------------------------------- overlap
def normalized_dice(
    pred: np.ndarray, truth: np.ndarray, *, effective_load: float = 1e-3, empty_score: float = 1.0
) -> float:
    """Normalized Dice ``2 TP / (2 TP + k FP + FN)`` (Raina et al. 2023).

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    effective_load : float in (0, 1), default 0.001
        Reference lesion load ``r``; ``k = (1 - r) |T| / (r (n - |T|))``
        (``k = 1`` when the truth is empty or fills the array).
    empty_score : float, default 1.0
        Value when both masks are empty.

    Returns
    -------
    float
    """
    r = float(effective_load)
    if not 0.0 < r < 1.0:
        raise ValueError(f"'effective_load' must be in (0, 1); got {effective_load!r}")
    p, t = mask_pair(pred, truth)
    tp, fp, fn = overlap_counts(p, t)
    n, n_truth = t.size, tp + fn
    k = 1.0 if n_truth in (0, n) else (1.0 - r) * n_truth / (r * (n - n_truth))
    return ratio(2 * tp, 2 * tp + k * fp + fn, empty_score)


def iou(pred: np.ndarray, truth: np.ndarray, *, empty_score: float = 1.0) -> float:
    """Intersection over union (Jaccard) ``TP / (TP + FP + FN)``.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    empty_score : float, default 1.0
        Value when both masks are empty.

    Returns
    -------
    float
    """
    tp, fp, fn = overlap_counts(*mask_pair(pred, truth))
    return ratio(tp, tp + fp + fn, empty_score)


def ppv(pred: np.ndarray, truth: np.ndarray, *, empty_score: float = 1.0) -> float:
    """Voxel positive predictive value (precision) ``TP / (TP + FP)``.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    empty_score : float, default 1.0
        Value when both masks are empty; an empty prediction with a non-empty
        truth scores 0.0.

    Returns
    -------
    float
    """
    tp, fp, fn = overlap_counts(*mask_pair(pred, truth))
    if tp + fp == 0:
        return float(empty_score) if fn == 0 else 0.0
    return tp / (tp + fp)


def sensitivity(pred: np.ndarray, truth: np.ndarray, *, empty_score: float = 1.0) -> float:
    """Voxel sensitivity (recall, true-positive rate) ``TP / (TP + FN)``.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    empty_score : float, default 1.0
        Value when both masks are empty; an empty truth with a non-empty
        prediction scores 0.0.

    Returns
    -------
    float
    """
    tp, fp, fn = overlap_counts(*mask_pair(pred, truth))
    if tp + fn == 0:
        return float(empty_score) if fp == 0 else 0.0
    return tp / (tp + fn)


# --------------------------------------------------------------------------- distances
def _surface(m: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    struct = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=struct, border_value=0)


def hausdorff_percentile(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | float | None = None,
    *,
    percentile: float = 95.0,
    hd_empty: float = float("nan"),
) -> float:
    """Symmetric percentile Hausdorff distance between two mask surfaces.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    spacing : float or sequence of float, optional
        Voxel size per array axis (e.g. mm); default 1.
    percentile : float in [0, 100], default 95
        100 gives the classical (maximum) Hausdorff distance.
    hd_empty : float, default NaN
        Value when either mask is empty.

    Returns
    -------
    float
        In the units of ``spacing``.
    """
    from scipy.spatial import cKDTree

    p, t = mask_pair(pred, truth)
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"'percentile' must be in [0, 100]; got {percentile!r}")
    sp = _spacing(spacing, p.ndim)
    if not p.any() or not t.any():
        return float(hd_empty)
    cp = np.argwhere(_surface(p)).astype(np.float64) * sp
    ct = np.argwhere(_surface(t)).astype(np.float64) * sp
    d_pt = cKDTree(ct).query(cp, k=1)[0]
    d_tp = cKDTree(cp).query(ct, k=1)[0]
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | float | None = None,
    *,
    hd_empty: float = float("nan"),
) -> float:
    """95th-percentile symmetric Hausdorff distance (see the module docstring).

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    spacing : float or sequence of float, optional
        Voxel size per array axis (mm); default 1.
    hd_empty : float, default NaN
        Value when either mask is empty.

    Returns
    -------
    float
    """
    return hausdorff_percentile(pred, truth, spacing, percentile=95.0, hd_empty=hd_empty)


# --------------------------------------------------------------------------- bundles
def voxel_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | float | None = None,
    *,
    empty_score: float = 1.0,
    hd_empty: float = float("nan"),
) -> dict[str, float]:
    """All voxel-level metrics of one image or slice at once.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks.
    spacing : float or sequence of float, optional
        Voxel size per array axis (mm), for HD95.
    empty_score, hd_empty : float
        Empty-mask conventions, see the module docstring.

    Returns
    -------
    dict
        ``dice, iou, ppv, sensitivity, hd95`` and the voxel counts ``tp, fp,
        fn, n_pred, n_truth``.
    """
    p, t = mask_pair(pred, truth)
    tp, fp, fn = overlap_counts(p, t)
    if tp + fp == 0:
        ppv_v = float(empty_score) if fn == 0 else 0.0
    else:
        ppv_v = tp / (tp + fp)
    if tp + fn == 0:
        sens_v = float(empty_score) if fp == 0 else 0.0
    else:
        sens_v = tp / (tp + fn)
    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn, empty_score),
        "iou": ratio(tp, tp + fp + fn, empty_score),
        "ppv": float(ppv_v),
        "sensitivity": float(sens_v),
        "hd95": hd95(p, t, spacing, hd_empty=hd_empty),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_pred": tp + fp,
        "n_truth": tp + fn,
    }


def voxel_metrics_table(
    pairs: Sequence[tuple] | Mapping[Any, tuple] | Iterable[tuple],
    *,
    spacing: Sequence[float] | float | None = None,
    ids: Sequence[Any] | None = None,
    empty_score: float = 1.0,
    hd_empty: float = float("nan"),
) -> pd.DataFrame:
    """Voxel metrics of many cases (slices, scans) in one table.

    Parameters
    ----------
    pairs : sequence or mapping
        Items ``(pred, truth)`` or ``(pred, truth, spacing)``; a mapping's keys
        become the case ids.
    spacing : float or sequence, optional
        Spacing for items that carry none.
    ids : sequence, optional
        Case ids for a sequence (default ``0..n-1``).
    empty_score, hd_empty : float
        Empty-mask conventions, see the module docstring.

    Returns
    -------
    DataFrame
        Index ``case``; columns as :func:`voxel_metrics`.
    """
    if isinstance(pairs, Mapping):
        if ids is not None:
            raise ValueError("'ids' must be None when 'pairs' is a mapping (its keys are the ids)")
        keys, items = list(pairs.keys()), list(pairs.values())
    else:
        items = list(pairs)
        keys = list(range(len(items))) if ids is None else list(ids)
        if len(keys) != len(items):
            raise ValueError(f"'ids' must have one entry per pair ({len(items)}); got {len(keys)}")
    rows = []
    for key, item in zip(keys, items):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(f"pair {key!r} must be (pred, truth) or (pred, truth, spacing); got {type(item).__name__}")
        sp = item[2] if len(item) == 3 else spacing
        try:
            rows.append(voxel_metrics(item[0], item[1], sp, empty_score=empty_score, hd_empty=hd_empty))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"pair {key!r}: {exc}") from None
    cols = [*VOXEL_METRICS, "tp", "fp", "fn", "n_pred", "n_truth"]
    return pd.DataFrame(rows, index=pd.Index(keys, name="case"), columns=cols)


# --------------------------------------------------------------------------- statistics
def _exact_ci(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Clopper-Pearson interval via :func:`msutils.stats.exact_ci_proportion`; (NaN, NaN) for n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    from msutils.stats import exact_ci_proportion

    return exact_ci_proportion(int(k), int(n), alpha=alpha)


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"'alpha' must be in (0, 1); got {alpha!r}")
    return a


def classification_metrics(tp: int, fp: int, tn: int, fn: int, *, alpha: float = 0.05) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV and NPV with exact CIs.

    Parameters
    ----------
    tp, fp, tn, fn : int
        Confusion counts.
    alpha : float, default 0.05
        1 - confidence level of the Clopper-Pearson intervals.

    Returns
    -------
    dict
        For each ``m`` in ``accuracy, sensitivity, specificity, ppv, npv``:
        ``m``, ``m_ci_low``, ``m_ci_high`` (NaN when the denominator is 0);
        plus ``tp, fp, tn, fn, n``.
    """
    for name, v in (("tp", tp), ("fp", fp), ("tn", tn), ("fn", fn)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ValueError(f"'{name}' must be a non-negative integer; got {v!r}")
    a = _check_alpha(alpha)
    tp, fp, tn, fn = int(tp), int(fp), int(tn), int(fn)
    frac = {
        "accuracy": (tp + tn, tp + fp + tn + fn),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    out: dict[str, float] = {}
    for name, (k, n) in frac.items():
        out[name] = ratio(k, n, float("nan"))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _exact_ci(k, n, a)
    out.update(tp=tp, fp=fp, tn=tn, fn=fn, n=tp + fp + tn + fn)
    return out


def summarize_metrics(
    table: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    units: str | Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Mean and percentile-bootstrap CI of each metric column (one row per metric).

    The interval is :func:`msutils.stats.bootstrap_ci` of the mean. NaN values
    (e.g. HD95 of a case with an empty mask) are dropped per column first;
    ``n`` says how many values were kept.

    Parameters
    ----------
    table : DataFrame
        One row per case, e.g. from :func:`voxel_metrics_table`.
    columns : sequence of str, optional
        Default: the :data:`VOXEL_METRICS` present in ``table``.
    units : str or array-like, optional
        Resampling unit of each row: a column name of ``table`` or one value per
        row (e.g. the patient of each slice: slices of one patient are drawn
        together). Default: each row is its own unit.
    n_boot, seed, alpha
        See :func:`msutils.stats.bootstrap_ci`.

    Returns
    -------
    DataFrame
        Index ``metric``; columns ``mean, ci_low, ci_high, n, n_units``.
    """
    from msutils.stats import bootstrap_ci

    cols = [c for c in VOXEL_METRICS if c in table.columns] if columns is None else list(columns)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"'columns' not in table: {missing}; available: {list(table.columns)}")
    if units is None:
        unit_ids = None
    elif isinstance(units, str):
        if units not in table.columns:
            raise ValueError(f"'units' column {units!r} not in table; available: {list(table.columns)}")
        unit_ids = table[units].to_numpy()
    else:
        unit_ids = np.asarray(units)
        if len(unit_ids) != len(table):
            raise ValueError(f"'units' must have one entry per row ({len(table)}); got {len(unit_ids)}")
    rows = {}
    for c in cols:
        x = pd.to_numeric(table[c], errors="raise").to_numpy(dtype=float)
        keep = ~np.isnan(x)
        if not keep.any():
            rows[c] = {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0, "n_units": 0}
            continue
        ci = bootstrap_ci(
            x[keep],
            units=None if unit_ids is None else unit_ids[keep],
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
        )
        rows[c] = {"mean": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": int(keep.sum()),
                   "n_units": ci.n_units}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "ci_low", "ci_high", "n", "n_units"])
    out.index.name = "metric"
    return out
