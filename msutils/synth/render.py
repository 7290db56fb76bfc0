"""Rendering one subject: clean contrasts, scans per session, rater masks, files and manifest rows.

Clean image of a contrast (:func:`clean_image`), per voxel, from the tissue
fractions of :class:`msutils.synth.tissue.SubjectAnatomy`:

- GM: ``I_gm x gain_gm x (1 + regional_gm) x (1 + a_gm x fine)``; WM likewise
  (``a_wm``); CSF: ``I_csf x gain_csf``; deep GM: the nucleus' intensity x
  ``gain_deep x (1 + regional_deep) x (1 + A x deep texture)`` (``A`` = the
  deep-GM texture amplitude, the MS effect);
- lesions: WM x ``(1 + FLAIR contrast map)`` on FLAIR, ``(1 - T1 contrast map)``
  on T1 (heterogeneous, see :mod:`msutils.synth.lesions`);
- look-alikes: WM kinds multiply the WM intensity by ``1 + c s`` (FLAIR) /
  ``1 - c_T1 s`` (T1), CSF kinds move the CSF intensity towards their target
  (``s`` = look-alike strength; see :mod:`msutils.synth.lookalikes`).

Each session is acquired with the center's effects (:func:`msutils.synth.centers.acquire`)
and segmented by the center's rater (:func:`msutils.synth.raters.rater_masks`).
Files per session: ``t1``, ``flair``, ``brain_mask``, ``lesion_mask``,
``roi_labels`` (the rater's); per subject (shared by its sessions): the truth
``gt_brain_mask``, ``gt_lesion_mask``, ``gt_roi_labels``, ``gt_lookalike_labels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from msutils.synth import anatomy
from msutils.synth.centers import CenterEffects, acquire
from msutils.synth.params import LESION_KINDS, LOOKALIKE_KINDS, SynthParams
from msutils.core.overlap import dice
from msutils.synth.raters import rater_masks
from msutils.synth.tissue import SubjectAnatomy, subject_anatomy

__all__ = ["IMAGE_FILES", "MASK_FILES", "TRUTH_FILES", "clean_image", "render_subject", "init_worker"]

IMAGE_FILES: tuple[str, ...] = ("t1", "flair")
MASK_FILES: tuple[str, ...] = ("brain_mask", "lesion_mask", "roi_labels")
TRUTH_FILES: dict[str, str] = {
    "gt_brain_mask": "brain_mask",
    "gt_lesion_mask": "lesion_mask",
    "gt_roi_labels": "roi_labels",
    "gt_lookalike_labels": "label_map",
}
"""Truth image columns -> the checks that apply to them (sidecar ``truth_masks``)."""

_STRUCT_GROUP = {1: "thalamus", 2: "thalamus", 3: "caudate", 4: "caudate",
                 5: "putamen", 6: "putamen", 7: "pallidum", 8: "pallidum"}

_WORKER_ATLAS: anatomy.Atlas | None = None


def init_worker(atlas: anatomy.Atlas) -> None:
    """Process-pool initializer: keep the atlas (built once by the parent) in the worker."""
    global _WORKER_ATLAS
    _WORKER_ATLAS = atlas


def _atlas_for(params: SynthParams) -> anatomy.Atlas:
    a = _WORKER_ATLAS
    if a is not None and a.resolution == float(params.resolution):
        return a
    return anatomy.load_atlas(int(params.resolution))


def clean_image(anat: SubjectAnatomy, params: SynthParams, contrast: str) -> np.ndarray:
    """Noise-free image of ``contrast`` (``"t1"`` or ``"flair"``); see the module docstring."""
    if contrast not in ("t1", "flair"):
        raise ValueError(f"'contrast' must be one of ['t1', 'flair']; got {contrast!r}")
    inten = params.t1_intensity if contrast == "t1" else params.flair_intensity
    g = anat.gains[contrast]
    reg = anat.regional[contrast]
    w = anat.w
    fine = anat.fine
    gm_i = inten["gm"] * g["gm"] * (1.0 + reg["gm"]) * (1.0 + anat.fine_amplitude["gm"] * fine)
    wm_base = inten["wm"] * g["wm"] * (1.0 + reg["wm"])
    wm_i = wm_base * (1.0 + anat.fine_amplitude["wm"] * fine)
    csf_i = np.full(w["csf"].shape, inten["csf"] * g["csf"], np.float32)
    # look-alikes
    la_c = params.lookalike_flair_contrast if contrast == "flair" else None
    t1_c = params.lookalike_t1_contrast
    s = anat.lookalike_fraction
    k = anat.lookalike_kind
    for code, name in LOOKALIKE_KINDS.items():
        sel = (k == code) & (s > 0)
        if not sel.any():
            continue
        if code in (1, 2):
            factor = (1.0 + la_c[name] * s[sel]) if la_c is not None else (1.0 - t1_c[name] * s[sel])
            wm_i[sel] = wm_i[sel] * factor
        else:
            if la_c is not None:
                ref = inten["gm"] * g["gm"] if code == 3 else inten["wm"] * g["wm"]
                target = ref * (1.0 + la_c[name])
            else:
                target = csf_i[sel] * (1.0 - t1_c[name])
            csf_i[sel] = csf_i[sel] + s[sel] * (target - csf_i[sel])
    lc = anat.lesion_contrast[contrast]
    lesion_i = wm_base * ((1.0 + lc) if contrast == "flair" else (1.0 - lc))
    img = w["csf"] * csf_i + w["gm"] * gm_i + w["wm"] * wm_i + w["lesion"] * lesion_i
    lut = np.zeros(9, np.float32)
    for lab, grp in _STRUCT_GROUP.items():
        lut[lab] = inten[grp]
    deep = w["dgm"] * lut[np.clip(anat.near, 0, 8)] * g["deep"] * (1.0 + reg["deep"])
    if anat.dgm_box is not None and anat.dgm_texture is not None:
        deep[anat.dgm_box] *= 1.0 + anat.texture_amplitude * anat.dgm_texture
    return (img + deep).astype(np.float32)


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def render_subject(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Render and write one subject (all sessions); return its manifest rows.

    Parameters
    ----------
    task : mapping
        ``params`` (SynthParams), ``subject`` (design values), ``root`` (output
        folder), ``seed`` (cohort seed).

    Returns
    -------
    list of dict
        One manifest row per session (required columns, measured volumes,
        ``gt_*`` truth values, paths relative to ``root``).
    """
    params: SynthParams = task["params"]
    subj = task["subject"]
    root = Path(task["root"])
    seed = int(task["seed"])
    atlas = _atlas_for(params)
    res = atlas.resolution
    vv = atlas.voxel_volume_ml
    eff: CenterEffects = params.centers[subj["center"]]
    rng = np.random.default_rng([seed, 1, subj["index"]])
    anat = subject_anatomy(atlas, params, subj, eff, rng)
    clean = {c: clean_image(anat, params, c) for c in IMAGE_FILES}

    sdir = Path(subj["subject_id"])
    (root / sdir).mkdir(parents=True, exist_ok=True)
    truth = {"gt_brain_mask": anat.brain.astype(np.uint8), "gt_lesion_mask": anat.lesion_mask.astype(np.uint8),
             "gt_roi_labels": anat.labels, "gt_lookalike_labels": anat.lookalike_labels}
    for col, arr in truth.items():
        _save(arr, atlas.affine, root / sdir / f"{col}.nii.gz")
    labels = anat.labels
    thal = np.isin(labels, (1, 2))
    gt = {
        "gt_brain_volume_ml": float(anat.brain.sum() * vv),
        "gt_lesion_volume_ml": float(anat.lesion_mask.sum() * vv),
        "gt_lesion_volume_design_ml": subj["lesion_volume_design_ml"],
        "gt_lesion_count": int(subj["lesion_count"]),
        **{f"gt_lesions_{k}": int(anat.lesion_counts.get(k, 0)) for k in LESION_KINDS},
        **{f"gt_lookalikes_{name}": int(anat.lookalike_counts.get(name, 0)) for name in LOOKALIKE_KINDS.values()},
        "gt_lookalike_volume_ml": float((anat.lookalike_labels > 0).sum() * vv),
        "gt_thalamus_atrophy": subj["thalamus_atrophy"],
        "gt_dgm_atrophy": subj["dgm_atrophy"],
        "gt_thalamus_volume_factor": subj["thalamus_volume_factor"],
        "gt_thalamus_volume_ml": float(thal.sum() * vv),
        "gt_deep_gm_volume_ml": float(((labels >= 1) & (labels <= 8)).sum() * vv),
        "gt_texture_amplitude": subj["texture_amplitude"],
        "gt_cortical_thickness_shift_mm": anat.thickness_shift_mm,
        "gt_severity": subj["severity"],
        "gt_head_scale": subj["head_scale"],
        "gt_edss_latent": subj["edss_latent"],
        "gt_edss_noisefree": subj["edss_noisefree"],
    }
    rows = []
    for k in range(int(subj["n_sessions"])):
        session = f"ses-{k + 1:02d}"
        rel = sdir / session
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        srng = np.random.default_rng([seed, 2, subj["index"], k])
        t1 = acquire(clean["t1"], anat.brain, eff, eff.t1_scale, "t1", params.scan_scale_jitter, res, srng)
        fl = acquire(clean["flair"], anat.brain, eff, eff.flair_scale, "flair", params.scan_scale_jitter, res, srng)
        rater = rater_masks(anat, res, eff.rater, np.random.default_rng([seed, 3, subj["index"], k]))
        _save(t1, atlas.affine, folder / "t1.nii.gz")
        _save(fl, atlas.affine, folder / "flair.nii.gz")
        _save(rater["brain_mask"].astype(np.uint8), atlas.affine, folder / "brain_mask.nii.gz")
        _save(rater["lesion_mask"].astype(np.uint8), atlas.affine, folder / "lesion_mask.nii.gz")
        _save(rater["roi_labels"], atlas.affine, folder / "roi_labels.nii.gz")
        row = {
            "subject_id": subj["subject_id"],
            "session": session,
            "center": subj["center"],
            "scanner": eff.scanner,
            "group": subj["group"],
            "course": subj["course"],
            "age": subj["age"],
            "sex": subj["sex"],
            "disease_duration": subj["disease_duration"],
            "edss": subj["edss"],
        }
        for col in IMAGE_FILES + MASK_FILES:
            row[col] = (rel / f"{col}.nii.gz").as_posix()
        row["tiv_ml"] = float(rater["brain_mask"].sum() * vv)
        row["lesion_volume_ml"] = float(rater["lesion_mask"].sum() * vv)
        for col in TRUTH_FILES:
            row[col] = (sdir / f"{col}.nii.gz").as_posix()
        row.update(gt)
        row["gt_rater_dice_lesion"] = (dice(rater["lesion_mask"], anat.lesion_mask)
                                       if anat.lesion_mask.any() else float("nan"))
        row["gt_rater_dice_thalamus"] = dice(np.isin(rater["roi_labels"], (1, 2)), thal)
        row["gt_rater_dice_brain"] = dice(rater["brain_mask"], anat.brain)
        rows.append(row)
    return rows
