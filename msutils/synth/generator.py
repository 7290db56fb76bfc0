"""Synthetic multi-center MS cohort: design, generation, manifest and calibration record.

The generator draws subjects from the documented generative model of this
package on top of the MNI152 2009 template that nilearn ships, renders T1 and
FLAIR images with center effects, segments them like the center's rater and
writes a cohort manifest (CSV + YAML sidecar, the format of
:mod:`msutils.data.cohort`). The model is split by concern:

- :mod:`msutils.synth.params`: every parameter (:class:`~msutils.synth.params.SynthParams`) and the presets;
- :mod:`msutils.synth.anatomy`: the template atlas (tissues, nuclei, parcels, zones);
- :mod:`msutils.synth.clinical`: demographics, course, severity, EDSS model and its calibration;
- :mod:`msutils.synth.lesions`, :mod:`msutils.synth.lookalikes`: MS lesions and FLAIR look-alikes;
- :mod:`msutils.synth.tissue`: one subject's anatomy, atrophy and texture in subject space;
- :mod:`msutils.synth.centers`: scanner / protocol effects (incl. thick FLAIR slices) and raters;
- :mod:`msutils.synth.raters`: the rater-like manifest masks;
- :mod:`msutils.synth.render`: clean images, scans and files of one subject.

Manifest
    Per session the rater's ``brain_mask``, ``lesion_mask``, ``roi_labels``
    (what a real cohort has) and the measured ``tiv_ml`` and
    ``lesion_volume_ml``; per subject the truth images ``gt_brain_mask``,
    ``gt_lesion_mask``, ``gt_roi_labels``, ``gt_lookalike_labels`` (declared
    under the sidecar's ``truth_masks``) and the ground-truth values of
    :data:`GT_COLUMNS`. Healthy controls have no lesions (truth), no atrophy
    and the baseline texture, but look-alikes like everyone.
Sidecar
    Every parameter, the ground truth (EDSS model, columns, groups, centers,
    look-alike kinds) and ``synthetic.calibration``: numbers measured on this
    cohort (EDSS correlations, rater Dice per center, lesion load per course,
    look-alike counts, clinical distributions per center) beside the targets.

Files: ``out/manifest.csv``, ``out/manifest.yaml``,
``out/sub-XXX/ses-YY/{t1,flair,brain_mask,lesion_mask,roi_labels}.nii.gz`` and
``out/sub-XXX/gt_{brain_mask,lesion_mask,roi_labels,lookalike_labels}.nii.gz``
(float32 images, uint8 masks, int16 labels; paths relative to the manifest
folder). Read the CSV with ``keep_default_na=False, na_values=[""]``: the
course of healthy controls is the string ``NA``.

Determinism: every subject draws from its own seeded generators
(``[seed, stream, subject index, session]``), so files are identical byte for
byte whatever the number of worker processes
(:func:`msutils.core.parallel.process_map`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from msutils.core.io import atomic_write_text, file_lock
from msutils.core.parallel import process_map
from msutils.core.serialize import round_floats, to_builtin
from msutils.data.cohort import REQUIRED_COLUMNS
from msutils.synth import anatomy
from msutils.synth.clinical import (
    SIDECAR_SIGNIFICANT_DIGITS,
    drivers,
    edss_from_latent,
    edss_reference,
    latent,
    observe_edss,
    pearson,
    simulate_clinical,
    spearman,
)
from msutils.synth.params import (
    GENERATOR_VERSION,
    LESION_KINDS,
    LOOKALIKE_KINDS,
    SynthParams,
    cell_counts,
    for_center,
    get_params,
    params_hash,
)
from msutils.synth.render import TRUTH_FILES, init_worker, render_subject

__all__ = [
    "REQUIRED_COLUMNS",
    "GT_COLUMNS",
    "TRUTH_MASKS",
    "generate",
    "default_cohort",
    "design_subjects",
    "calibration",
]

logger = logging.getLogger(__name__)

TRUTH_MASKS: dict[str, str] = dict(TRUTH_FILES)
"""Truth image columns -> the mask checks that apply (sidecar ``truth_masks``)."""

GT_COLUMNS: dict[str, str] = {
    "gt_brain_volume_ml": "truth brain volume (gt_brain_mask) in ml; tiv_ml is the rater's brain mask",
    "gt_lesion_volume_ml": "truth lesion volume: voxels of gt_lesion_mask x voxel volume (ml); "
                           "lesion_volume_ml is the rater's lesion_mask",
    "gt_lesion_volume_design_ml": (
        "designed total lesion volume (ml) before rendering; EDSS driver lesion_load = ln(x + 0.1)"),
    "gt_lesion_count": "number of lesions placed (they may touch or merge)",
    **{f"gt_lesions_{k}": f"lesions of kind {k} placed" for k in LESION_KINDS},
    **{f"gt_lookalikes_{k}": f"look-alikes of kind {k} placed (HC and MS)" for k in LOOKALIKE_KINDS.values()},
    "gt_lookalike_volume_ml": "volume of the truth look-alike kind map gt_lookalike_labels (ml)",
    "gt_thalamus_atrophy": "MS thalamic volume loss fraction (0 for HC)",
    "gt_dgm_atrophy": "MS volume loss fraction of caudate, putamen, pallidum (0 for HC)",
    "gt_thalamus_volume_factor": (
        "thalamic volume relative to the template thalamus at the subject's head size "
        "(natural x age x (1 - atrophy)); EDSS driver thalamus_volume"),
    "gt_thalamus_volume_ml": "truth thalamus volume (labels 1, 2 of gt_roi_labels) in ml",
    "gt_deep_gm_volume_ml": "truth deep-GM volume (labels 1..8 of gt_roi_labels) in ml",
    "gt_texture_amplitude": "deep-GM texture amplitude A (relative intensity SD); EDSS driver texture_amplitude",
    "gt_cortical_thickness_shift_mm": "the subject's global shift of the GM/WM boundary (mm; > 0 thicker cortex)",
    "gt_severity": "latent disease severity (MS only)",
    "gt_head_scale": "isotropic head-size scaling applied to the template",
    "gt_edss_latent": "noise-free EDSS latent: sum of weights x standardized drivers (MS only)",
    "gt_edss_noisefree": "noise-free latent mapped to the EDSS scale like edss (MS only)",
    "gt_rater_dice_lesion": "Dice of lesion_mask vs gt_lesion_mask (scans with true lesions)",
    "gt_rater_dice_thalamus": "Dice of the thalamus (labels 1, 2) of roi_labels vs gt_roi_labels",
    "gt_rater_dice_brain": "Dice of brain_mask vs gt_brain_mask",
}
"""Ground-truth value columns (all prefixed ``gt_``) added to the manifest."""

_ROUND = {"age": 1, "disease_duration": 1, "tiv_ml": 1, "lesion_volume_ml": 3, "gt_brain_volume_ml": 1,
          "gt_lesion_volume_ml": 3, "gt_lesion_volume_design_ml": 4, "gt_lookalike_volume_ml": 3,
          "gt_thalamus_volume_ml": 3, "gt_deep_gm_volume_ml": 3}


# ----------------------------------------------------------------------------- subject design


def design_subjects(params: SynthParams, seed: int) -> list[dict[str, Any]]:
    """All subjects' design values (deterministic in ``seed``; images are not drawn here).

    Every (center, group) cell is drawn with the center's clinical model
    (``center_clinical``); MS patients get their EDSS (noise and the center's
    rating offset included), the noise-free latent and its mapped value.
    Subject ids are a seeded permutation; a seeded subset gets a second visit.
    """
    rng = np.random.default_rng([seed, 0])
    ref = edss_reference(params)
    subjects: list[dict[str, Any]] = []
    for center, group, n in cell_counts(params):
        clin = simulate_clinical(params, n, group, rng, center=center)
        if group == "MS":
            lat = latent(drivers(clin), ref, params.edss_weights)
            cp = for_center(params, center)
            edss = observe_edss(lat, ref, params.edss_noise_sd, cp.edss_offset, rng)
            noisefree = edss_from_latent(lat, ref)
        else:
            lat = noisefree = edss = np.full(n, np.nan)
        for i in range(n):
            subjects.append({
                "center": center,
                "group": group,
                **{k: (v[i].tolist() if k == "dgm_factors" else to_builtin(v[i])) for k, v in clin.items()},
                "edss": float(edss[i]),
                "edss_latent": float(lat[i]),
                "edss_noisefree": float(noisefree[i]),
            })
    n_total = len(subjects)
    width = max(3, len(str(n_total)))
    order = rng.permutation(n_total)
    n_two = int(math.floor(params.second_visit_fraction * n_total + 0.5))
    two = set(rng.choice(n_total, size=n_two, replace=False).tolist()) if n_two else set()
    for i, s in enumerate(subjects):
        s["index"] = int(order[i])
        s["subject_id"] = f"sub-{order[i] + 1:0{width}d}"
        s["n_sessions"] = 2 if i in two else 1
    subjects.sort(key=lambda s: s["index"])
    return subjects


# ----------------------------------------------------------------------------- manifest


def _table(rows: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(rows)
    for col, nd in _ROUND.items():
        df[col] = df[col].astype(float).round(nd)
    for col in ("gt_thalamus_atrophy", "gt_dgm_atrophy", "gt_thalamus_volume_factor", "gt_texture_amplitude",
                "gt_cortical_thickness_shift_mm", "gt_severity", "gt_head_scale", "gt_edss_latent",
                "gt_edss_noisefree", "gt_rater_dice_lesion", "gt_rater_dice_thalamus", "gt_rater_dice_brain"):
        df[col] = df[col].astype(float).round(6)
    ordered = list(REQUIRED_COLUMNS) + ["tiv_ml", "lesion_volume_ml"] + list(TRUTH_MASKS) + list(GT_COLUMNS)
    return df[ordered].sort_values(["subject_id", "session"]).reset_index(drop=True)


def _summary(values: Any) -> dict[str, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]), "max": float(q[4])}


def calibration(df, params: SynthParams) -> dict[str, Any]:
    """Numbers measured on a generated cohort's table, as the sidecar records them.

    Parameters
    ----------
    df : pandas.DataFrame
        The manifest table (:data:`REQUIRED_COLUMNS`, measured volumes, ``gt_*`` columns).
    params : SynthParams
        Its parameters.

    Returns
    -------
    dict
        ``edss`` (MS first sessions: Spearman of EDSS with the rater's lesion
        volume, the designed lesion load, the truth thalamic volume and the
        texture amplitude; Pearson r of EDSS with its noise-free value),
        ``rater_dice`` per center (lesion on scans with true lesions,
        thalamus, brain), ``lesion_volume_ml`` per course (truth, rater,
        design), ``lookalikes`` (mean count per kind and group, age slope of
        punctate WMH in HC), ``centers`` (clinical distributions per center),
        rounded to the sidecar's precision.
    """
    first = df.sort_values(["subject_id", "session"]).drop_duplicates("subject_id")
    ms = first[first["group"] == "MS"]
    out: dict[str, Any] = {}
    if len(ms) >= 3:
        e = ms["edss"].astype(float)
        out["edss"] = {
            "n": int(len(ms)),
            "spearman_lesion_volume_rater": spearman(ms["lesion_volume_ml"], e),
            "spearman_lesion_load_design": spearman(np.log(ms["gt_lesion_volume_design_ml"] + 0.1), e),
            "spearman_thalamus_volume_truth": spearman(ms["gt_thalamus_volume_ml"], e),
            "spearman_texture_amplitude": spearman(ms["gt_texture_amplitude"], e),
            "pearson_edss_noisefree": pearson(e, ms["gt_edss_noisefree"]),
        }
    dice = {}
    for center, sub in df.groupby("center"):
        dice[str(center)] = {
            "lesion": _summary(sub["gt_rater_dice_lesion"]),
            "thalamus": _summary(sub["gt_rater_dice_thalamus"]),
            "brain": _summary(sub["gt_rater_dice_brain"]),
        }
    out["rater_dice"] = dice
    vol = {}
    for course, sub in ms.groupby("course"):
        vol[str(course)] = {"truth": _summary(sub["gt_lesion_volume_ml"]),
                            "rater": _summary(sub["lesion_volume_ml"]),
                            "design": _summary(sub["gt_lesion_volume_design_ml"])}
    if len(ms):
        vol["all"] = {"truth": _summary(ms["gt_lesion_volume_ml"]), "rater": _summary(ms["lesion_volume_ml"]),
                      "design": _summary(ms["gt_lesion_volume_design_ml"])}
    out["lesion_volume_ml"] = vol
    la: dict[str, Any] = {}
    for group, sub in first.groupby("group"):
        la[str(group)] = {k: float(sub[f"gt_lookalikes_{k}"].mean()) for k in LOOKALIKE_KINDS.values()}
    hc = first[first["group"] == "HC"]
    if len(hc) >= 3:
        la["punctate_wmh_vs_age_spearman_hc"] = spearman(hc["age"], hc["gt_lookalikes_punctate_wmh"])
    out["lookalikes"] = la
    centers = {}
    for center, sub in ms.groupby("center"):
        q = np.percentile(sub["edss"].astype(float), [25, 50, 75])
        centers[str(center)] = {
            "n_ms": int(len(sub)), "age": _summary(sub["age"]), "female_fraction": float((sub["sex"] == "F").mean()),
            "sp_fraction": float((sub["course"] == "SP").mean()), "disease_duration": _summary(sub["disease_duration"]),
            "edss_median_iqr": [float(q[1]), float(q[0]), float(q[2])],
            "lesion_volume_ml_rater": _summary(sub["lesion_volume_ml"]),
        }
    out["centers_ms"] = centers
    out["targets"] = {
        "edss_spearman_lesion_load": [0.25, 0.45],
        "edss_ceiling_r": "about 0.8 (reference simulation, ground_truth.edss.ceiling_r)",
        "lesion_volume": "seed 001 Table 1: TLV 10.6 (SD 13.4) ml at site 1, 7.2 (8.6) ml at site 2",
    }
    return round_floats(to_builtin(out), SIDECAR_SIGNIFICANT_DIGITS)


def _sidecar(params: SynthParams, seed: int, df) -> dict[str, Any]:
    ref = edss_reference(params)
    n_parcels = anatomy.N_PARCELS
    centers = {c: to_builtin(dataclasses.asdict(eff)) for c, eff in params.centers.items() if c in params.counts}
    ms = df[df["group"] == "MS"]
    return {
        "name": f"synthetic-{params.name}",
        "description": (
            f"Synthetic multi-center MS cohort (design {params.design}, preset {params.name}, seed {seed}, "
            f"{params.resolution} mm) generated by msutils.synth from the MNI152 2009 template bundled with "
            "nilearn. The masks are rater-like estimates; the truth is in the gt_ image columns (truth_masks) "
            "and values, and under synthetic.ground_truth. Deep-GM nuclei are approximate ellipsoids; cortical "
            "parcels are k-means clusters (no real atlas)."
        ),
        "data_root": ".",
        "images": ["t1", "flair"],
        "masks": ["brain_mask", "lesion_mask", "roi_labels"],
        "truth_masks": dict(TRUTH_MASKS),
        "roi_labels": anatomy.label_table(n_parcels),
        "roi_sets": anatomy.roi_sets(n_parcels),
        "synthetic": {
            "preset": params.name,
            "seed": int(seed),
            "generator_version": GENERATOR_VERSION,
            "params_hash": params_hash(params),
            "params": params.to_dict(),
            "ground_truth": {
                "edss": ref,
                "columns": dict(GT_COLUMNS),
                "truth_masks": {
                    "gt_brain_mask": "true brain mask (tissue sum > 0.5)",
                    "gt_lesion_mask": "true lesion mask (lesion fraction > 0.5); look-alikes never in it",
                    "gt_roi_labels": "true ROI label map (same label table as roi_labels)",
                    "gt_lookalike_labels": "true look-alike kind map, codes of lookalike_kinds (0 = none)",
                },
                "lookalike_kinds": dict(LOOKALIKE_KINDS),
                "groups": {
                    "MS": "WM lesions (irregular, heterogeneous; kinds of lesion_kinds), deep-GM atrophy (thalamus "
                          "strongest), deep-GM texture amplitude texture_ms_*; EDSS from the model under edss",
                    "HC": "no lesions (gt_lesion_mask all zero; a rater may still mark look-alikes), no atrophy, "
                          "baseline texture amplitude texture_hc_*; EDSS and disease_duration empty, course NA",
                    "all": "lesion look-alikes on FLAIR (periventricular caps / bands, punctate WMH increasing with "
                           "age, sulcal and flow-like hyperintensities); between-subject tissue contrast, regional "
                           "intensity, fine texture and cortical thickness",
                },
                "sessions": "ses-02 (when present) rescans the same anatomy, lesions and clinical data with a fresh "
                            "scale jitter, bias field, noise and rater masks: a test-retest pair",
                "centers": centers,
                "n_subjects": int(df["subject_id"].nunique()),
                "n_scans": int(len(df)),
                "n_ms_subjects": int(ms["subject_id"].nunique()),
            },
            "calibration": calibration(df, params),
        },
    }


def _yaml_text(meta: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True)


def _write_manifest(df, meta: Mapping[str, Any], folder: Path) -> Path:
    csv_path = folder / "manifest.csv"
    atomic_write_text(csv_path, df.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(folder / "manifest.yaml", _yaml_text(meta))
    return csv_path


# ----------------------------------------------------------------------------- public entry points


def generate(
    preset: str | SynthParams,
    out: str | os.PathLike,
    seed: int | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate a synthetic cohort into ``out`` and return ``out/manifest.csv``.

    Parameters
    ----------
    preset : str or SynthParams
        One of :data:`msutils.synth.params.PRESETS` or a parameter set.
    out : path-like
        Output folder. Files are written into a temporary folder beside it and
        renamed at the end, so a killed run leaves nothing half-written. An
        existing ``out`` is replaced only if it is empty or holds a previous
        cohort (a ``manifest.csv``).
    seed : int, optional
        Cohort seed (default: ``params.seed``, 0 for the presets). Same seed,
        same files byte for byte.
    n_jobs : int, optional
        Worker processes (default: all CPUs, at most one per subject); 1 runs
        in-process.
    progress : bool
        Log progress lines.

    Returns
    -------
    Path
        Path of the manifest CSV.
    """
    params = get_params(preset)
    seed = params.seed if seed is None else seed
    if int(seed) != seed or seed < 0:
        raise ValueError(f"'seed' must be an integer >= 0; got {seed!r}")
    seed = int(seed)
    if n_jobs is not None and (int(n_jobs) != n_jobs or n_jobs < 1):
        raise ValueError(f"'n_jobs' must be a positive integer or None; got {n_jobs!r}")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.csv").exists())):
        raise ValueError(f"'out' exists and is not a synthetic cohort folder: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    atlas = anatomy.load_atlas(int(params.resolution))
    subjects = design_subjects(params, seed)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tasks = [{"params": params, "subject": s, "root": str(tmp), "seed": seed} for s in subjects]
        rows = _run_tasks(tasks, atlas, n_jobs, progress)
        df = _table(rows)
        _write_manifest(df, _sidecar(params, seed, df), tmp)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("synthetic cohort %s (seed %d): %d scans of %d subjects in %s", params.name, seed, len(df),
                df["subject_id"].nunique(), out)
    return out / "manifest.csv"


def _run_tasks(tasks: list[dict[str, Any]], atlas: anatomy.Atlas, n_jobs: int | None,
               progress: bool) -> list[dict[str, Any]]:
    """Render every subject (in worker processes when ``n_jobs > 1``); rows in subject order."""
    n_jobs = min(n_jobs or os.cpu_count() or 1, len(tasks)) or 1
    if n_jobs == 1:
        init_worker(atlas)
    per_subject = process_map(render_subject, tasks, n_jobs=n_jobs, desc="synthetic subjects", unit="subjects",
                              initializer=init_worker, initargs=(atlas,), progress=progress,
                              preload=("msutils.synth.render",))
    return [row for rows in per_subject for row in rows]


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder onto ``out`` (replacing an old cohort)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_cohort(preset: str = "quick", seed: int = 0) -> Path:
    """Manifest of the default synthetic cohort of a preset, generated if missing.

    The cohort lives under
    ``msutils.core.paths.home()/synth/<preset>-seed<seed>-<first 8 hex of params_hash>/manifest.csv``,
    so a parameter change gives a new folder. Concurrent callers wait on a
    file lock; the cohort is generated once.

    Parameters
    ----------
    preset : str
        One of :data:`msutils.synth.params.PRESETS`.
    seed : int
        Cohort seed.

    Returns
    -------
    Path
        Path of the manifest CSV.
    """
    from msutils.core import paths

    params = get_params(preset)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"'seed' must be an integer >= 0; got {seed!r}")
    folder = paths.home() / "synth" / f"{params.name}-seed{int(seed)}-{params_hash(params)[:8]}"
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if not manifest.exists():
            logger.info("generating default synthetic cohort %s (seed %d) in %s", params.name, seed, folder)
            generate(params, folder, seed=int(seed))
    return manifest
