"""Overlap of two binary masks: the one Dice of msutils.

:mod:`msutils.segmentation.metrics` builds its voxel metrics on these helpers and
re-exports :func:`dice`; the synthetic generator (:mod:`msutils.synth.raters`), which
sits below the segmentation layer, scores its simulated raters with the same
function.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msutils.core.validation import as_mask, ratio

__all__ = ["dice", "mask_pair", "overlap_counts"]


def mask_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as validated boolean arrays of one shape.

    Raises
    ------
    ValueError
        A mask is not 2D / 3D or not binary, or the shapes differ.
    TypeError
        A mask has a non-numeric dtype.
    """
    p = as_mask("pred", pred)
    t = as_mask("truth", truth)
    if p.shape != t.shape:
        raise ValueError(f"'pred' and 'truth' must have the same shape; got {p.shape} and {t.shape}")
    return p, t


def overlap_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` voxel counts of two boolean masks of one shape."""
    tp = int(np.count_nonzero(pred & truth))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp


def dice(pred: Any, truth: Any, *, empty_score: float = 1.0) -> float:
    """Dice similarity coefficient ``2 TP / (2 TP + FP + FN)``.

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
    return ratio(2 * tp, 2 * tp + fp + fn, empty_score)
