"""Lesion instances, lesion matching and lesion-wise detection scores.

A *lesion* is a connected component of a binary mask. Everything here works on
2D and 3D numpy arrays (bool, integer, or float masks holding only 0/1); any
non-zero voxel is foreground. Inputs are never modified.

Conventions (shared by every function of this module)
-----------------------------------------------------
connectivity
    Given as the number of neighbours a voxel touches: ``4`` or ``8`` in 2D,
    ``6``, ``18`` or ``26`` in 3D. The default (``None``) is *full*
    connectivity: 8 in 2D, 26 in 3D (faces, edges and corners all connect), the
    usual choice for MS lesion counting. Two lesions touching only at a corner
    are one lesion with 26-connectivity and two with 6-connectivity.
min_size
    Components with fewer than ``min_size`` voxels are dropped (from both the
    prediction and the ground truth) before anything else is computed; the
    remaining instances are relabelled ``1..n`` in scipy's raster order.
Ground-truth lesion detected (``truth_overlap``)
    A ground-truth lesion ``g`` is *detected* when the overlap fraction
    ``|P & g| / |g|`` is ``>= overlap_threshold`` **and** the overlap is
    non-zero (so ``overlap_threshold=0`` means "any overlap", the seed-004
    rule). With ``truth_overlap="union"`` (default) ``P`` is the whole
    (size-filtered) predicted mask; with ``"instance"`` it is the single
    predicted instance that covers ``g`` most (seed 003's "detect at least one
    lesion with a volumetric overlap of at least 10 %"). The two differ only
    when ``g`` is covered by several predicted fragments none of which reaches
    the threshold alone. Undetected ground-truth lesions are false negatives.
Predicted instance true/false positive (``pred_rule``)
    ``"any"`` (default, seed 004): a predicted instance is TP if it overlaps any
    ground-truth voxel, FP otherwise. ``"fraction"``: TP if
    ``|p & T| / |p| >= overlap_threshold`` (and non-zero), i.e. the same
    threshold applied to the predicted instance's own volume.
Lesion-wise scores
    ``precision = TP_pred / n_pred`` (predicted instances that are TP),
    ``recall = TP_truth / n_truth`` (ground-truth lesions detected),
    ``f1`` = harmonic mean of the two, and ``f1_counts = 2 TP_pred /
    (2 TP_pred + FP + FN)``, the formula behind seed 004's Table 1 (3050 TP,
    1818 FP, 789 FN -> F1 0.7006, PPV 0.6265). A precision or recall whose
    denominator is 0 (no predicted / no ground-truth lesion) is ``empty_score``
    (NaN by default); F1 is then 0.0 if the other side is non-empty (a pure
    miss or a pure false alarm) and ``empty_score`` if both are empty. Pool
    counts over scans with :func:`lesion_metrics_from_counts` rather than
    averaging per-scan ratios.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from msutils.core.validation import as_mask, check_choice, check_fraction, ratio

__all__ = [
    "LesionMatch",
    "default_connectivity",
    "instances",
    "largest_component",
    "match_instances",
    "lesion_wise_metrics",
    "lesion_metrics_from_counts",
    "TRUTH_OVERLAP_RULES",
    "connectivity_structure",
    "pair_overlaps",
]

logger = logging.getLogger(__name__)


_CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}
TRUTH_OVERLAP_RULES: tuple[str, ...] = ("union", "instance")
"""How a ground-truth lesion counts as detected (see the module docstring)."""
_PRED_RULE = ("any", "fraction")


# --------------------------------------------------------------------------- helpers
def _as_labels(name: str, arr: Any, ndims: tuple[int, ...] = (2, 3)) -> tuple[np.ndarray, int]:
    """Validate an instance label map (0 = background, 1..n = instances)."""
    a = np.asarray(arr)
    if a.ndim not in ndims:
        raise ValueError(f"'{name}' must be a {' or '.join(f'{d}D' for d in ndims)} array; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"'{name}' must be an integer label map when labelled=True; got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"'{name}' label map must be >= 0; got minimum {a.min()}")
    ids = np.unique(a)
    ids = ids[ids > 0]
    # relabel to 1..n keeping the order of the original ids
    lut = np.zeros(int(a.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[a], int(ids.size)


def default_connectivity(ndim: int) -> int:
    """Full connectivity for ``ndim``: 8 in 2D, 26 in 3D.

    Parameters
    ----------
    ndim : int
        2 or 3.

    Returns
    -------
    int
        Neighbour count.
    """
    if ndim not in _CONNECTIVITY:
        raise ValueError(f"'ndim' must be one of [2, 3]; got {ndim!r}")
    return max(_CONNECTIVITY[ndim])


def connectivity_structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """The scipy.ndimage structuring element for ``connectivity`` neighbours (None: full)."""
    from scipy import ndimage

    if ndim not in _CONNECTIVITY:
        raise ValueError(f"masks must be 2D or 3D; got {ndim}D")
    conn = default_connectivity(ndim) if connectivity is None else connectivity
    allowed = sorted(_CONNECTIVITY[ndim])
    if conn not in _CONNECTIVITY[ndim]:
        raise ValueError(f"'connectivity' must be one of {allowed} for {ndim}D masks; got {conn!r}")
    return ndimage.generate_binary_structure(ndim, _CONNECTIVITY[ndim][conn])


# --------------------------------------------------------------------------- instances
def instances(
    mask: np.ndarray,
    *,
    connectivity: int | None = None,
    min_size: int = 0,
) -> tuple[np.ndarray, int]:
    """Label the connected components (lesion instances) of a binary mask.

    Parameters
    ----------
    mask : ndarray, 2D or 3D
        Binary mask; any non-zero voxel is foreground.
    connectivity : {4, 8} in 2D, {6, 18, 26} in 3D, optional
        Neighbourhood defining connectedness. Default: full connectivity
        (8 in 2D, 26 in 3D).
    min_size : int, default 0
        Components with fewer voxels are removed.

    Returns
    -------
    labels : ndarray of int32
        0 for background, ``1..n`` for the kept components in scipy's raster
        order (order of each component's first voxel).
    n : int
        Number of kept components.
    """
    from scipy import ndimage

    m = as_mask("mask", mask)
    if int(min_size) != min_size or min_size < 0:
        raise ValueError(f"'min_size' must be a non-negative integer; got {min_size!r}")
    labels, n = ndimage.label(m, structure=connectivity_structure(m.ndim, connectivity))
    labels = labels.astype(np.int32, copy=False)
    if min_size > 1 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        lut = np.zeros(n + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = lut[labels]
        n = int(keep.sum())
    return labels, int(n)


# --------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class LesionMatch:
    """Result of :func:`match_instances`.

    Attributes
    ----------
    truth : DataFrame
        One row per ground-truth lesion: ``truth_id, size, overlap_voxels``
        (with the whole predicted mask), ``overlap_fraction`` (``overlap_voxels
        / size``), ``max_instance_fraction`` (largest share covered by a single
        predicted instance), ``matched_pred_ids`` (tuple of overlapping
        predicted ids), ``detected`` (bool), ``outcome`` (``"TP"``/``"FN"``).
    pred : DataFrame
        One row per predicted instance: ``pred_id, size, overlap_voxels`` (with
        the whole ground truth), ``overlap_fraction``, ``matched_truth_ids``,
        ``tp`` (bool), ``outcome`` (``"TP"``/``"FP"``).
    pairs : DataFrame
        ``truth_id, pred_id, overlap_voxels`` for every overlapping pair.
    truth_labels, pred_labels : ndarray
        The instance label maps used (ids as in the tables).
    params : dict
        Rules used (threshold, connectivity, truth_overlap, pred_rule, min_size).
    """

    truth: pd.DataFrame
    pred: pd.DataFrame
    pairs: pd.DataFrame
    truth_labels: np.ndarray = field(repr=False)
    pred_labels: np.ndarray = field(repr=False)
    params: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """``n_truth, n_pred, tp_truth, fn, tp_pred, fp``."""
        tp_truth = int(self.truth["detected"].sum())
        tp_pred = int(self.pred["tp"].sum())
        return {
            "n_truth": int(len(self.truth)),
            "n_pred": int(len(self.pred)),
            "tp_truth": tp_truth,
            "fn": int(len(self.truth)) - tp_truth,
            "tp_pred": tp_pred,
            "fp": int(len(self.pred)) - tp_pred,
        }

    def metrics(self, *, empty_score: float = float("nan")) -> dict[str, float]:
        """Lesion-wise precision, recall, F1 (see :func:`lesion_metrics_from_counts`)."""
        c = self.counts
        return lesion_metrics_from_counts(
            tp_pred=c["tp_pred"], fp=c["fp"], tp_truth=c["tp_truth"], fn=c["fn"], empty_score=empty_score
        )



def largest_component(mask: np.ndarray, *, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a binary mask (ties: the first in raster order).

    Parameters
    ----------
    mask : ndarray, 2D or 3D
        Binary mask; any non-zero voxel is foreground (not modified).
    connectivity : {4, 8} in 2D, {6, 18, 26} in 3D, optional
        Neighbourhood (default: full, :func:`default_connectivity`).

    Returns
    -------
    ndarray of bool
        Same shape; all False for an empty mask.
    """
    labels, n = instances(mask, connectivity=connectivity)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))

def pair_overlaps(truth_labels: np.ndarray, pred_labels: np.ndarray, n_pred: int) -> pd.DataFrame:
    """Overlap voxel count of every (truth instance, predicted instance) pair that touches."""
    both = (truth_labels > 0) & (pred_labels > 0)
    codes = truth_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both].astype(np.int64)
    uniq, cnt = np.unique(codes, return_counts=True)
    return pd.DataFrame(
        {
            "truth_id": (uniq // (n_pred + 1)).astype(np.int64),
            "pred_id": (uniq % (n_pred + 1)).astype(np.int64),
            "overlap_voxels": cnt.astype(np.int64),
        }
    )


def match_instances(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    overlap_threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 0,
    truth_overlap: Literal["union", "instance"] = "union",
    pred_rule: Literal["any", "fraction"] = "any",
    labelled: bool = False,
) -> LesionMatch:
    """Match predicted lesion instances to ground-truth lesions.

    Parameters
    ----------
    pred, truth : ndarray, 2D or 3D, same shape
        Binary masks (or, with ``labelled=True``, integer instance label maps
        with 0 as background; ids are relabelled ``1..n`` in increasing order).
    overlap_threshold : float in [0, 1], default 0.1
        Share of a ground-truth lesion's volume that must be covered for it to
        count as detected (``>=``, with non-zero overlap). Also the threshold
        of ``pred_rule="fraction"``.
    connectivity : int, optional
        See the module docstring (default 8 in 2D / 26 in 3D). Ignored when
        ``labelled=True``.
    min_size : int, default 0
        Drop components smaller than this (both masks) before matching.
        Ignored when ``labelled=True``.
    truth_overlap : {"union", "instance"}, default "union"
        Whether a ground-truth lesion's coverage is measured against the whole
        predicted mask or the best single predicted instance.
    pred_rule : {"any", "fraction"}, default "any"
        When a predicted instance is TP: any overlap with the ground truth
        (seed 004), or overlap >= ``overlap_threshold`` of its own volume.
    labelled : bool, default False
        Inputs are already instance label maps.

    Returns
    -------
    LesionMatch
        Per-lesion tables, overlapping pairs, label maps and counts.
    """
    thr = check_fraction("overlap_threshold", overlap_threshold)
    check_choice("truth_overlap", truth_overlap, TRUTH_OVERLAP_RULES)
    check_choice("pred_rule", pred_rule, _PRED_RULE)
    if labelled:
        p_lab, n_p = _as_labels("pred", pred)
        t_lab, n_t = _as_labels("truth", truth)
    else:
        p_mask = as_mask("pred", pred)
        t_mask = as_mask("truth", truth)
    shapes = (np.shape(pred), np.shape(truth))
    if shapes[0] != shapes[1]:
        raise ValueError(f"'pred' and 'truth' must have the same shape; got {shapes[0]} and {shapes[1]}")
    if not labelled:
        p_lab, n_p = instances(p_mask, connectivity=connectivity, min_size=min_size)
        t_lab, n_t = instances(t_mask, connectivity=connectivity, min_size=min_size)

    pairs = pair_overlaps(t_lab, p_lab, n_p)
    t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)[1:]
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:]

    t_ov = np.bincount(pairs["truth_id"], weights=pairs["overlap_voxels"], minlength=n_t + 1)[1:].astype(np.int64)
    p_ov = np.bincount(pairs["pred_id"], weights=pairs["overlap_voxels"], minlength=n_p + 1)[1:].astype(np.int64)
    t_best = np.zeros(n_t, dtype=np.int64)
    if len(pairs):
        best = pairs.groupby("truth_id")["overlap_voxels"].max()
        t_best[best.index.to_numpy() - 1] = best.to_numpy()
    t_matched: list[tuple[int, ...]] = [()] * n_t
    p_matched: list[tuple[int, ...]] = [()] * n_p
    for tid, grp in pairs.groupby("truth_id"):
        t_matched[int(tid) - 1] = tuple(int(x) for x in grp["pred_id"])
    for pid, grp in pairs.groupby("pred_id"):
        p_matched[int(pid) - 1] = tuple(int(x) for x in sorted(grp["truth_id"]))

    with np.errstate(invalid="ignore", divide="ignore"):
        t_frac = np.where(t_size > 0, t_ov / np.maximum(t_size, 1), 0.0)
        t_best_frac = np.where(t_size > 0, t_best / np.maximum(t_size, 1), 0.0)
        p_frac = np.where(p_size > 0, p_ov / np.maximum(p_size, 1), 0.0)
    cover = t_frac if truth_overlap == "union" else t_best_frac
    cover_vox = t_ov if truth_overlap == "union" else t_best
    detected = (cover >= thr) & (cover_vox > 0)
    if pred_rule == "any":
        tp = p_ov > 0
    else:
        tp = (p_frac >= thr) & (p_ov > 0)

    truth_tab = pd.DataFrame(
        {
            "truth_id": np.arange(1, n_t + 1, dtype=np.int64),
            "size": t_size.astype(np.int64),
            "overlap_voxels": t_ov,
            "overlap_fraction": t_frac.astype(float),
            "max_instance_fraction": t_best_frac.astype(float),
            "matched_pred_ids": pd.Series(t_matched, dtype=object),
            "detected": detected.astype(bool),
            "outcome": np.where(detected, "TP", "FN").astype(object),
        }
    )
    pred_tab = pd.DataFrame(
        {
            "pred_id": np.arange(1, n_p + 1, dtype=np.int64),
            "size": p_size.astype(np.int64),
            "overlap_voxels": p_ov,
            "overlap_fraction": p_frac.astype(float),
            "matched_truth_ids": pd.Series(p_matched, dtype=object),
            "tp": tp.astype(bool),
            "outcome": np.where(tp, "TP", "FP").astype(object),
        }
    )
    params = {
        "overlap_threshold": thr,
        "connectivity": None if labelled else (connectivity or default_connectivity(t_lab.ndim)),
        "min_size": None if labelled else int(min_size),
        "truth_overlap": truth_overlap,
        "pred_rule": pred_rule,
        "labelled": bool(labelled),
    }
    return LesionMatch(
        truth=truth_tab, pred=pred_tab, pairs=pairs, truth_labels=t_lab, pred_labels=p_lab, params=params
    )


def lesion_metrics_from_counts(
    *,
    tp_pred: int,
    fp: int,
    tp_truth: int,
    fn: int,
    empty_score: float = float("nan"),
) -> dict[str, float]:
    """Lesion-wise precision, recall and F1 from (pooled) counts.

    Parameters
    ----------
    tp_pred, fp : int
        Predicted instances that are true / false positives.
    tp_truth, fn : int
        Ground-truth lesions detected / missed.
    empty_score : float, default NaN
        Value of a ratio whose denominator is zero.

    Returns
    -------
    dict
        ``precision, recall, sensitivity`` (= recall), ``f1`` (harmonic mean),
        ``f1_counts`` (``2 tp_pred / (2 tp_pred + fp + fn)``, seed 004), and the
        counts.
    """
    for name, v in (("tp_pred", tp_pred), ("fp", fp), ("tp_truth", tp_truth), ("fn", fn)):
        if int(v) != v or v < 0:
            raise ValueError(f"'{name}' must be a non-negative integer; got {v!r}")
    precision = ratio(tp_pred, tp_pred + fp, empty_score)
    recall = ratio(tp_truth, tp_truth + fn, empty_score)
    if tp_pred + fp == 0 and tp_truth + fn == 0:
        f1 = float(empty_score)
    elif tp_pred + fp == 0 or tp_truth + fn == 0:
        f1 = 0.0  # lesions but no prediction (recall 0), or predictions but no lesion (precision 0)
    else:
        f1 = ratio(2 * precision * recall, precision + recall, 0.0)
    return {
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "f1": f1,
        "f1_counts": ratio(2 * tp_pred, 2 * tp_pred + fp + fn, empty_score),
        "tp_pred": int(tp_pred),
        "fp": int(fp),
        "tp_truth": int(tp_truth),
        "fn": int(fn),
    }


def lesion_wise_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    overlap_threshold: float = 0.1,
    connectivity: int | None = None,
    min_size: int = 0,
    truth_overlap: Literal["union", "instance"] = "union",
    pred_rule: Literal["any", "fraction"] = "any",
    labelled: bool = False,
    empty_score: float = float("nan"),
) -> dict[str, float]:
    """Lesion-level precision, recall (sensitivity) and F1 of one image.

    Parameters are those of :func:`match_instances`, plus ``empty_score`` (the
    value of a ratio with a zero denominator, NaN by default).

    Returns
    -------
    dict
        See :func:`lesion_metrics_from_counts`, plus ``n_truth`` and ``n_pred``.
    """
    m = match_instances(
        pred,
        truth,
        overlap_threshold=overlap_threshold,
        connectivity=connectivity,
        min_size=min_size,
        truth_overlap=truth_overlap,
        pred_rule=pred_rule,
        labelled=labelled,
    )
    out = m.metrics(empty_score=empty_score)
    out["n_truth"] = m.counts["n_truth"]
    out["n_pred"] = m.counts["n_pred"]
    return out
