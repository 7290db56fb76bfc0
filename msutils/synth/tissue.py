"""One subject's anatomy in subject space: tissues, deep GM, lesions, look-alikes, texture.

:func:`subject_anatomy` turns a subject's design values into tissue fractions
and truth maps on the atlas grid:

1. a smooth random deformation plus head-size scaling of the template
   (:func:`msutils.synth.anatomy.random_deformation`);
2. cortical thickness: the GM/WM boundary of the template moves by a subject
   shift plus a smooth local field (``thickness_*``), where GM borders WM;
3. MS lesions (:mod:`msutils.synth.lesions`) replace the tissue (WM; also GM
   for juxtacortical and infratentorial lesions); look-alikes
   (:mod:`msutils.synth.lookalikes`) are drawn; both are warped with the tissues;
4. deep-GM nuclei are drawn in subject space (at the deformed template centres,
   radii scaled by head size and volume factors), the tissue lost to atrophy
   becomes CSF;
5. the truth label map (arg-max of CSF / GM / WM+lesion / deep GM; GM voxels
   take the warped cortical parcel, deep voxels the nearest nucleus; lesion
   voxels keep the WM label), the truth lesion mask (lesion fraction > 0.5),
   the truth look-alike kind map and the brain mask (tissue sum > 0.5);
6. the subject's tissue properties (every subject, HC too): per-contrast tissue
   gains (``tissue_gain_sd``; GM and deep-GM intensities move towards WM with
   age, ``contrast_age_slope``), smooth regional intensity fields per tissue
   shared by both contrasts (``regional_*``), a fine texture field shared by T1 and FLAIR with subject
   amplitudes for GM and WM (``fine_texture*``), and the deep-GM texture field
   whose amplitude is the MS texture effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from msutils.synth import anatomy
from msutils.synth.centers import CenterEffects
from msutils.synth.lesions import render_lesions
from msutils.synth.lookalikes import CSF_KINDS, WM_KINDS, render_lookalikes
from msutils.synth.params import SynthParams

__all__ = ["SubjectAnatomy", "subject_anatomy", "CONTRASTS"]

CONTRASTS: tuple[str, ...] = ("t1", "flair")


@dataclass
class SubjectAnatomy:
    """Subject-space maps of one subject (atlas grid).

    Attributes
    ----------
    w : dict of str to ndarray of float32
        Tissue fractions ``gm``, ``wm``, ``csf``, ``dgm`` (deep GM), ``lesion``.
    near : ndarray of int16
        Nearest deep-GM nucleus label (where ``w["dgm"] > 0``).
    parcels : ndarray of int16
        Warped cortical parcel label of every voxel.
    brain : ndarray of bool
        Truth brain mask.
    labels : ndarray of int16
        Truth ROI label map.
    lesion_mask : ndarray of bool
        Truth lesion mask.
    lesion_contrast : dict of str to ndarray of float32
        Per-voxel lesion contrast on ``t1`` (hypointensity) and ``flair``.
    lookalike_fraction : ndarray of float32
        Look-alike strength.
    lookalike_kind : ndarray of uint8
        Look-alike code where the strength is non-zero.
    lookalike_labels : ndarray of uint8
        Truth look-alike kind map (strength > 0.5 in its tissue, outside lesions).
    gains : dict
        ``{contrast: {"csf", "gm", "wm", "deep": gain}}``.
    regional : dict
        ``{contrast: {"gm", "wm", "deep": smooth field (float32)}}`` (the same fields for both contrasts).
    fine : ndarray of float32
        Unit-SD fine texture field.
    fine_amplitude : dict of str to float
        Its relative amplitude in ``gm`` and ``wm``.
    dgm_texture : ndarray of float32 or None
        Unit-SD deep-GM texture field inside ``dgm_box``.
    dgm_box : tuple of slice or None
        Box of the deep-GM texture field.
    texture_amplitude : float
        Relative amplitude of the deep-GM texture (the subject's ``texture_amplitude``).
    lesion_counts, lookalike_counts : dict of str to int
        Lesions / look-alikes placed per kind.
    thickness_shift_mm : float
        The subject's global cortical-thickness shift (mm).
    """

    w: dict[str, np.ndarray]
    near: np.ndarray
    parcels: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    lesion_mask: np.ndarray
    lesion_contrast: dict[str, np.ndarray]
    lookalike_fraction: np.ndarray
    lookalike_kind: np.ndarray
    lookalike_labels: np.ndarray
    gains: dict[str, dict[str, float]]
    regional: dict[str, dict[str, np.ndarray]]
    fine: np.ndarray
    fine_amplitude: dict[str, float]
    dgm_texture: np.ndarray | None
    dgm_box: tuple[slice, ...] | None
    texture_amplitude: float = 0.0
    lesion_counts: dict[str, int] = field(default_factory=dict)
    lookalike_counts: dict[str, int] = field(default_factory=dict)
    thickness_shift_mm: float = 0.0


def _thickness(atlas: anatomy.Atlas, params: SynthParams, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Template GM / WM maps with the subject's cortical thickness (boundary shift)."""
    gm = atlas.gm.copy()
    wm = atlas.wm.copy()
    shift = float(rng.normal(0.0, params.thickness_sd_mm))
    delta = shift + params.thickness_local_sd_mm * anatomy.smooth_field(
        atlas.shape, atlas.resolution, params.thickness_spacing_mm, rng)
    share = gm / (gm + atlas.csf + 1e-6)  # GM share of the non-WM tissue: 0 at the ventricle walls
    change = delta * atlas.wm_grad * share
    grow_gm = np.minimum(np.clip(change, 0.0, None), wm)   # thicker cortex: WM -> GM
    grow_wm = np.minimum(np.clip(-change, 0.0, None), gm)  # thinner cortex: GM -> WM
    wm += grow_wm - grow_gm
    gm += grow_gm - grow_wm
    return gm.astype(np.float32), wm.astype(np.float32), shift


def _warp_sparse(vol: np.ndarray, coords: np.ndarray, order: int, thresh: float = 0.0) -> np.ndarray:
    """Warp a template map that is zero outside a small region (its bounding box only)."""
    nz = np.nonzero(vol > thresh)
    if not nz[0].size:
        return np.zeros(coords.shape[1:], np.float32 if order == 1 else vol.dtype)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    return anatomy.warp_box(np.ascontiguousarray(vol[box]), box, coords, order)


def _unit_field(shape: tuple[int, ...], sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(shape).astype(np.float32)
    f = ndimage.gaussian_filter(noise, sigma_vox) if sigma_vox > 0.05 else noise
    return (f / (f.std() or 1.0)).astype(np.float32)


def subject_anatomy(atlas: anatomy.Atlas, params: SynthParams, subj: Mapping[str, Any], eff: CenterEffects,
                    rng: np.random.Generator) -> SubjectAnatomy:
    """Subject-space tissue fractions, truth maps and tissue properties (module docstring).

    Parameters
    ----------
    atlas : Atlas
        Template atlas.
    params : SynthParams
        Generator parameters.
    subj : mapping
        Design values of the subject (:func:`msutils.synth.clinical.simulate_clinical` fields).
    eff : CenterEffects
        The subject's center (look-alike artefact rate).
    rng : numpy.random.Generator
        The subject's anatomy generator.

    Returns
    -------
    SubjectAnatomy
    """
    res = atlas.resolution
    factors = np.asarray(subj["dgm_factors"], float)
    atro = np.where(np.arange(8) < 2, subj["thalamus_atrophy"], subj["dgm_atrophy"])
    scale = float(subj["head_scale"])
    coords = anatomy.random_deformation(atlas, rng, params.deformation_mm, params.deformation_spacing_mm, scale)

    gm, wm, shift = _thickness(atlas, params, rng)
    csf = atlas.csf.copy()
    les = render_lesions(atlas, params, subj, rng)
    allowed = np.minimum(1.0, 2.0 * (wm + np.where(les.cortical, gm, 0.0)))
    lesion = (les.fraction * allowed).astype(np.float32)
    for t in (gm, wm, csf):
        t *= 1.0 - lesion
    la = render_lookalikes(atlas, params, subj, eff, rng)

    w = {name: anatomy.warp(vol, coords, 1) for name, vol in (("gm", gm), ("wm", wm), ("csf", csf))}
    w["lesion"] = _warp_sparse(lesion, coords, 1, 0.01)
    # contrast maps warped fraction-weighted, then divided by the warped fraction: no dilution at the edges
    denom = np.maximum(w["lesion"], 1e-3)
    contrast = {c: np.where(w["lesion"] > 1e-3, _warp_sparse(lesion * m, coords, 1) / denom, 0.0).astype(np.float32)
                for c, m in (("flair", les.flair_contrast), ("t1", les.t1_contrast))}
    la_frac = _warp_sparse(la.fraction, coords, 1, 0.01)
    la_kind = _warp_sparse(np.where(la.fraction > 0.01, la.kind, 0).astype(np.uint8), coords, 0)
    parcel_s = anatomy.warp(atlas.parcels, coords, 0)

    # deep GM in subject space (see the module docstring)
    centers = {s.label: anatomy.subject_point(atlas, coords, s.center_mm) for s in anatomy.DEEP_GM}
    d0, near0 = anatomy.deep_gm_membership(atlas, {i + 1: factors[i] for i in range(8)}, params.tissue_edge_mm,
                                           centers, scale)
    d1, _ = anatomy.deep_gm_membership(atlas, {i + 1: factors[i] * (1.0 - atro[i]) for i in range(8)},
                                       params.tissue_edge_mm, centers, scale)
    box = atlas.deep_box
    keep = 1.0 - d0
    for name in ("gm", "wm", "lesion"):
        w[name][box] *= keep
    w["csf"][box] = w["csf"][box] * keep + np.clip(d0 - d1, 0.0, 1.0)
    w["dgm"] = np.zeros(atlas.shape, np.float32)
    w["dgm"][box] = d1
    near_s = np.zeros(atlas.shape, np.int16)
    near_s[box] = near0

    total = w["gm"] + w["wm"] + w["csf"] + w["dgm"] + w["lesion"]
    brain = total > 0.5
    cls = np.argmax(np.stack([w["csf"], w["gm"], w["wm"] + w["lesion"], w["dgm"]]), axis=0)
    labels = np.zeros(atlas.shape, np.int16)
    labels[(cls == 2) & brain] = anatomy.WM_LABEL
    gm_vox = (cls == 1) & brain
    labels[gm_vox] = parcel_s[gm_vox]
    deep_vox = (cls == 3) & brain
    labels[deep_vox] = near_s[deep_vox]
    lesion_mask = (w["lesion"] > 0.5) & brain
    labels[lesion_mask] = anatomy.WM_LABEL

    # truth look-alike kind map: strong enough in its own tissue, never on a lesion
    host = np.where(np.isin(la_kind, CSF_KINDS), w["csf"], w["wm"] + w["gm"])
    la_labels = np.where((la_frac > 0.5) & (host > 0.3) & brain & ~lesion_mask
                         & np.isin(la_kind, WM_KINDS + CSF_KINDS), la_kind, 0).astype(np.uint8)

    # tissue properties of the subject
    gains = {c: {t: float(1.0 + sd * rng.standard_normal()) for t, sd in params.tissue_gain_sd.items()}
             for c in CONTRASTS}
    ageing = params.contrast_age_slope * (float(subj["age"]) - 40.0)  # GM/WM contrast fades with age
    for c in CONTRASTS:
        inten = params.t1_intensity if c == "t1" else params.flair_intensity
        gains[c]["gm"] *= 1.0 + ageing * (inten["wm"] / inten["gm"] - 1.0)
        deep_mean = float(np.mean([inten[k] for k in ("thalamus", "caudate", "putamen", "pallidum")]))
        gains[c]["deep"] *= 1.0 + ageing * (inten["wm"] / deep_mean - 1.0)
    fields = {t: (params.regional_sd * anatomy.smooth_field(atlas.shape, res, params.regional_spacing_mm,
                                                            rng)).astype(np.float32) for t in ("gm", "wm", "deep")}
    regional = {c: fields for c in CONTRASTS}  # one tissue property, seen by both contrasts
    fine = _unit_field(atlas.shape, params.fine_texture_corr_mm / res, rng)
    amp = {t: float(a * math.exp(float(np.clip(params.fine_texture_log_sd * rng.standard_normal(), -0.7, 0.7))))
           for t, a in params.fine_texture.items()}

    # deep-GM texture field (subject space, bounding box of the nuclei)
    nz = np.nonzero(w["dgm"] > 0.01)
    tex_box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz) if nz[0].size else None
    tex = None
    if tex_box is not None:
        tex = _unit_field(tuple(s.stop - s.start for s in tex_box), params.texture_corr_mm / res, rng)
    return SubjectAnatomy(
        w=w, near=near_s, parcels=parcel_s, brain=brain, labels=labels, lesion_mask=lesion_mask,
        lesion_contrast=contrast, lookalike_fraction=la_frac, lookalike_kind=la_kind, lookalike_labels=la_labels,
        gains=gains, regional=regional, fine=fine, fine_amplitude=amp, dgm_texture=tex, dgm_box=tex_box,
        texture_amplitude=float(subj["texture_amplitude"]),
        lesion_counts=dict(les.counts), lookalike_counts=dict(la.counts), thickness_shift_mm=shift,
    )
