"""Rater / algorithm-like masks: what a real cohort's manifest masks look like.

The manifest's ``lesion_mask``, ``brain_mask`` and ``roi_labels`` of a
synthetic cohort are estimates drawn from the truth with the errors of the
scan's center (:class:`msutils.synth.centers.RaterEffects`), fresh for every
session (a re-segmentation of the rescan); the truth stays in the ``gt_*``
image columns.

Lesions
    The true lesion fraction plus a smooth random field (SD
    ``lesion_boundary_sd``) is thresholded at ``lesion_threshold`` inside the
    support of the true lesions (boundary error and bias); a true lesion
    (connected component, 26-connectivity) of volume ``v`` ml is missed with
    probability ``exp(-v / lesion_detect_ml)``; each lesion look-alike
    (component of the truth look-alike map) is marked as a lesion with
    probability ``lookalike_fp_prob`` (caps, punctate WMH) or a fifth of it
    (sulcal and flow-like hyperintensities): false-positive blobs.
Brain
    The tissue sum plus ``brain_bias`` and a smooth field (SD
    ``brain_boundary_sd``) thresholded at 0.5.
ROI labels
    The arg-max of the tissue-class probabilities (CSF, GM + ``gm_bias`` + n,
    WM + lesion - n, deep GM + ``dgm_bias`` + n') with two smooth random
    fields n (SD ``roi_boundary_sd / 2``; the template's GM / WM maps are
    blurry, so a smaller field moves the cortex as far) and n' (SD
    ``roi_boundary_sd``): boundary jitter of the cortex and of the nuclei, and
    a center-specific volume bias;
    GM voxels take the warped cortical parcel, deep-GM voxels the nearest
    nucleus, lesion voxels stay white matter, all inside the rater's brain mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from msutils.synth import anatomy
from msutils.synth.centers import RaterEffects
from msutils.synth.lookalikes import CSF_KINDS
from msutils.synth.tissue import SubjectAnatomy

__all__ = ["rater_masks"]

_CONN = np.ones((3, 3, 3), bool)
_CORTEX_JITTER = 0.5  # the GM/WM boundary field has half the SD: the template's tissue maps are blurry


def _field(shape: tuple[int, ...], res: float, spacing: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    if sd <= 0:
        return np.zeros(shape, np.float32)
    return (sd * anatomy.smooth_field(shape, res, spacing, rng)).astype(np.float32)


def rater_masks(anat: SubjectAnatomy, res: float, rater: RaterEffects, rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
    """A center's estimates of the brain mask, the lesion mask and the ROI label map.

    Parameters
    ----------
    anat : SubjectAnatomy
        The subject's truth (:func:`msutils.synth.tissue.subject_anatomy`).
    res : float
        Voxel size (mm).
    rater : RaterEffects
        The center's rater.
    rng : numpy.random.Generator
        Fresh per session.

    Returns
    -------
    dict
        ``brain_mask`` (bool), ``lesion_mask`` (bool), ``roi_labels`` (int16).
    """
    w = anat.w
    shape = anat.brain.shape
    sp = rater.noise_spacing_mm
    total = w["gm"] + w["wm"] + w["csf"] + w["dgm"] + w["lesion"]
    brain = (total + rater.brain_bias + _field(shape, res, sp, rater.brain_boundary_sd, rng)) > 0.5

    # ROI labels: noisy, biased tissue-class arg-max (one field moves the GM/WM boundary, one the nuclei's)
    deep_zone = w["dgm"] > 0.01
    n_gw = _field(shape, res, sp, _CORTEX_JITTER * rater.roi_boundary_sd, rng)
    n_dgm = _field(shape, res, sp, rater.roi_boundary_sd, rng)
    probs = np.stack([
        w["csf"],
        w["gm"] + rater.gm_bias * (w["gm"] > 0.01) + n_gw,
        w["wm"] + w["lesion"] - n_gw,
        np.where(deep_zone, w["dgm"] + rater.dgm_bias + n_dgm, -1.0),
    ])
    cls = np.argmax(probs, axis=0)
    labels = np.zeros(shape, np.int16)
    labels[(cls == 2) & brain] = anatomy.WM_LABEL
    gm_vox = (cls == 1) & brain
    labels[gm_vox] = anat.parcels[gm_vox]
    deep_vox = (cls == 3) & brain & (anat.near > 0)
    labels[deep_vox] = anat.near[deep_vox]

    # lesions: noisy threshold inside the true lesions' support, misses, false positives
    support = w["lesion"] > 0.02
    lesion = np.zeros(shape, bool)
    if support.any():
        nz = np.nonzero(support)
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
        sub_shape = tuple(b.stop - b.start for b in box)
        noisy = w["lesion"][box] + _field(sub_shape, res, max(2.0 * res, 4.0), rater.lesion_boundary_sd, rng)
        lesion[box] = support[box] & (noisy > rater.lesion_threshold)
        inst, n = ndimage.label(support, structure=_CONN)
        if n:
            true_vol = ndimage.sum_labels(anat.lesion_mask, inst, index=np.arange(1, n + 1)) * res**3 / 1000.0
            scale = max(rater.lesion_detect_ml, 1e-9)
            missed = rng.random(n) < np.exp(-true_vol / scale)
            if missed.any():
                lesion &= ~np.isin(inst, np.flatnonzero(missed) + 1)
    la_inst, n_la = ndimage.label(anat.lookalike_labels > 0, structure=_CONN)
    if n_la:
        idx = np.arange(1, n_la + 1)
        kinds = ndimage.maximum(anat.lookalike_labels, la_inst, index=idx).astype(int)
        p = np.where(np.isin(kinds, CSF_KINDS), rater.lookalike_fp_prob / 5.0, rater.lookalike_fp_prob)
        marked = rng.random(n_la) < p
        if marked.any():
            lesion |= np.isin(la_inst, idx[marked])
    lesion &= brain
    labels[lesion & (labels > 0)] = anatomy.WM_LABEL
    return {"brain_mask": brain, "lesion_mask": lesion, "roi_labels": labels}
