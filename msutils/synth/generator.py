"""Synthetic multi-center MS cohort with known ground truth.

The generator draws subjects from a documented generative model on top of the
MNI152 2009 template that nilearn ships (see :mod:`msutils.synth.anatomy`), renders
T1 and FLAIR images with vendor-like center effects and writes a cohort
manifest (CSV + YAML sidecar, the format of :mod:`msutils.data.cohort`).

Generative model (per subject; all parameters in :class:`SynthParams`)
-------------------------------------------------------------------------
Anatomy
    Template tissue maps (GM, WM, CSF) and approximate deep-GM ellipsoids,
    deformed by a smooth random displacement field (SD ``deformation_mm``)
    and an isotropic head-size scaling (``head_scale_*``). Every deep-GM
    structure has a natural volume factor (subject-level and structure-level
    variation ``dgm_volume_sd``, age slope ``dgm_age_slope``).
Disease (MS only; healthy controls get none of it)
    A latent severity ``s ~ N(0, 1) + course shift + duration slope`` drives,
    with independent noise on each,

    - WM lesions: total volume ``V = median * exp(loading * s + sd * e)``;
      count ``1 + Poisson(V / mean_size - 1)`` (capped); single sizes
      log-normal, rescaled to sum to ``V``; centres in periventricular /
      juxtacortical / deep WM zones with the given fractions; smooth rotated
      ellipsoids restricted to WM; FLAIR hyperintense, T1 hypointense; the
      lesion mask is the rendered lesion fraction > 0.5.
      Overlaps, the WM restriction and partial voluming make the rendered
      volume (``gt_lesion_volume_ml``) smaller than the designed one
      (``gt_lesion_volume_design_ml``, about 0.65x at 3 mm, 0.8x at 2 mm) but
      the two agree closely on a log scale (r > 0.99).
    - deep-GM atrophy: thalamic volume loss ``a = mean + loading * s + sd * e``
      (other nuclei lose ``other_dgm_atrophy_ratio * a``); the ellipsoids
      shrink and the lost tissue becomes CSF. The nuclei are drawn in subject
      space (at the deformed template centres, radii scaled by head size and
      volume factors), so rendered volumes follow the ground truth rather
      than the local Jacobian of the random warp.
    - deep-GM texture: intensities inside the deep-GM nuclei are multiplied by
      ``1 + A * n(x)`` with ``n`` spatially correlated unit-SD noise
      (``texture_corr_mm``) and a subject-level amplitude ``A`` (healthy
      controls have a smaller baseline amplitude).
Clinical
    Age, sex, disease course (RR/SP/PP/CIS; ``NA`` for HC), disease duration
    and EDSS. EDSS latent = sum of ``edss_weights`` x standardized drivers
    (:data:`EDSS_DRIVERS`) + N(0, ``edss_noise_sd``); it is standardized with
    reference statistics and mapped monotonically to 0..9.5 with
    ``9.5 * expit(edss_map_center + edss_map_slope * u)``, rounded to 0.5 steps.
    The sidecar records drivers, weights, standardization, noise SD and the
    noise-free correlation ceiling ``ceiling_r`` (see :func:`edss_reference`).
Scans
    Contrasts from tissue fractions (:attr:`SynthParams.t1_intensity`,
    :attr:`SynthParams.flair_intensity`), then per center: gamma nonlinearity,
    scale and offset, Gaussian blur, a smooth multiplicative bias field and
    Rician noise; background 0. A fraction of subjects gets a second visit
    ``ses-02``: same anatomy, lesions and clinical data, fresh scanner
    realisation (scale jitter, bias, noise) — a test-retest pair.

Healthy controls have no lesions at all (their lesion masks are all zero, no
non-specific hyperintensities), no atrophy and a small baseline texture.

Files: ``out/manifest.csv``, ``out/manifest.yaml`` and
``out/sub-XXX/ses-YY/{t1,flair,brain_mask,lesion_mask,roi_labels}.nii.gz``
(float32 images, uint8 masks, int16 labels; paths in the CSV are relative to
the manifest directory). Read the CSV with ``keep_default_na=False,
na_values=[""]``: the course of healthy controls is the string ``NA``.

Determinism: every subject draws from its own seeded generators
(``[seed, stream, subject index, session]``), so files are identical byte for
byte whatever the number of worker processes. Workers are forked on Linux
(spawned elsewhere: guard scripts with ``if __name__ == "__main__"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from msutils.core.serialize import round_floats, to_builtin
from msutils.synth import anatomy
from msutils.core.io import atomic_write_text, file_lock
from msutils.core.parallel import process_map

__all__ = [
    "CenterEffects",
    "SynthParams",
    "PRESETS",
    "EDSS_DRIVERS",
    "REQUIRED_COLUMNS",
    "GT_COLUMNS",
    "get_params",
    "params_hash",
    "cell_counts",
    "simulate_clinical",
    "edss_reference",
    "edss_from_latent",
    "generate",
    "default_cohort",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "2"

SIDECAR_SIGNIFICANT_DIGITS = 12
"""Precision of the derived floats the generator computes and records (means, SDs, correlations)."""
"""Bumped whenever the same parameters would produce different files."""

REQUIRED_COLUMNS: tuple[str, ...] = (
    "subject_id", "session", "center", "scanner", "group", "course", "age", "sex",
    "disease_duration", "edss", "t1", "flair", "brain_mask", "lesion_mask", "roi_labels",
)
"""Manifest columns required by the cohort contract, in order."""

EDSS_DRIVERS: tuple[str, ...] = ("lesion_load", "thalamus_volume", "texture_amplitude", "age", "sp_course")
"""EDSS drivers: ln(design lesion volume ml + 0.1), thalamic volume factor,
deep-GM texture amplitude, age (years), secondary-progressive course (0/1)."""

GT_COLUMNS: dict[str, str] = {
    "gt_lesion_volume_ml": "rendered lesion volume: voxels of lesion_mask x voxel volume (ml)",
    "gt_lesion_volume_design_ml": (
        "designed total lesion volume (ml) before rendering; EDSS driver lesion_load = ln(x + 0.1)"),
    "gt_lesion_count": "number of lesions placed (they may touch)",
    "gt_thalamus_atrophy": "MS thalamic volume loss fraction (0 for HC)",
    "gt_dgm_atrophy": "MS volume loss fraction of caudate, putamen, pallidum (0 for HC)",
    "gt_thalamus_volume_factor": (
        "thalamic volume relative to the template thalamus at the subject's head size "
        "(natural x age x (1 - atrophy)); EDSS driver thalamus_volume"),
    "gt_thalamus_volume_ml": "rendered thalamus volume (labels 1, 2) in ml",
    "gt_deep_gm_volume_ml": "rendered deep-GM volume (labels 1..8) in ml",
    "gt_texture_amplitude": "deep-GM texture amplitude A (relative intensity SD); EDSS driver texture_amplitude",
    "gt_severity": "latent disease severity (MS only)",
    "gt_head_scale": "isotropic head-size scaling applied to the template",
    "gt_edss_latent": "noise-free EDSS latent: sum of weights x standardized drivers (MS only)",
    "gt_edss_noisefree": "noise-free latent mapped to the EDSS scale like edss (MS only)",
}
"""Ground-truth columns (all prefixed ``gt_``) added to the manifest."""

_COURSES = ("RR", "SP", "PP", "CIS")
_PRESET_NAMES = ("smoke", "quick", "paper", "edss-smoke", "edss-quick", "edss-paper")
_STRUCT_GROUP = {1: "thalamus", 2: "thalamus", 3: "caudate", 4: "caudate",
                 5: "putamen", 6: "putamen", 7: "pallidum", 8: "pallidum"}
_TISSUE_KEYS = ("csf", "gm", "wm", "thalamus", "caudate", "putamen", "pallidum")


@dataclass(frozen=True)
class CenterEffects:
    """Scanner / protocol effects of one center.

    Attributes
    ----------
    scanner : str
        Scanner label written to the manifest (simulated vendor name).
    t1_scale, flair_scale : float
        Intensity scale (a normal-WM voxel of the clean T1 is 1.0 before scaling).
    offset : float
        Additive offset inside the brain, as a fraction of the scale.
    gamma : float
        Intensity nonlinearity: clean intensities are raised to ``gamma``.
    bias_strength : float
        SD of the log of the smooth multiplicative bias field (fresh per scan).
    noise_sd : float
        Rician noise SD as a fraction of the scale (fresh per scan).
    blur_mm : float
        Gaussian blur sigma in mm (point-spread of the protocol); 0 = none.
    """

    scanner: str
    t1_scale: float = 1000.0
    flair_scale: float = 800.0
    offset: float = 0.0
    gamma: float = 1.0
    bias_strength: float = 0.06
    noise_sd: float = 0.02
    blur_mm: float = 0.0


def _loco_centers() -> dict[str, CenterEffects]:
    return {
        "A": CenterEffects("Siemens", 1000.0, 800.0, 0.00, 1.00, 0.04, 0.020, 0.0),
        "B": CenterEffects("Philips", 1350.0, 650.0, 0.05, 0.85, 0.08, 0.035, 1.0),
        "C": CenterEffects("GE", 820.0, 1000.0, 0.02, 1.15, 0.06, 0.025, 0.5),
    }


def _edss_centers() -> dict[str, CenterEffects]:
    return {
        "site1": CenterEffects("3T-site1", 1000.0, 900.0, 0.00, 1.00, 0.05, 0.020, 0.3),
        "site2": CenterEffects("3T-site2", 1200.0, 750.0, 0.03, 0.90, 0.07, 0.030, 0.8),
    }


@dataclass(frozen=True)
class SynthParams:
    """Every parameter of the synthetic cohort generator.

    Study design
    ------------
    name : str
        Preset name (``"custom"`` for hand-made parameters).
    design : {"loco", "edss"}
        ``loco``: MS + HC in centers A/B/C (seed 000); ``edss``: MS patients
        only in site1/site2 (seed 001).
    resolution : int
        Isotropic voxel size in mm (1 paper, 2 quick, 3 smoke).
    seed : int
        Default seed (``generate(seed=None)`` uses it).
    counts : dict
        ``{center: {"MS": n, "HC": n}}`` at paper scale (subjects).
    size_factor : float
        Multiplies every count (rounded half up).
    min_per_cell : int
        Lower bound of every scaled (center, group) count.
    second_visit_fraction : float
        Fraction of subjects with a rescan ``ses-02`` (same anatomy, lesions and
        clinical data; fresh scale jitter, bias field and noise).
    centers : dict of str to CenterEffects
        Scanner effects per center (see :class:`CenterEffects`).
    scan_scale_jitter : float
        SD of a per-scan multiplicative intensity-scale jitter.

    Anatomy
    -------
    head_scale_mean, head_scale_sd, head_scale_male : float
        Isotropic head-size scaling ~ N(mean + male shift, sd); the MNI152 brain
        is large (1.88 l), 0.93 gives intracranial volumes near 1.5 l.
    deformation_mm, deformation_spacing_mm : float
        SD (mm) and control-point spacing (mm) of the smooth displacement field.
    dgm_volume_sd : float
        Natural SD of deep-GM volume factors (half shared by the subject's nuclei).
    dgm_age_slope : float
        Fractional deep-GM volume change per year of age (relative to 40 y; negative = loss).
    tissue_edge_mm : float
        Width of the soft edge of deep-GM ellipsoids (mm).

    Lesion model (MS)
    -----------------
    lesion_volume_median_ml : float
        Median total lesion volume at severity 0.
    lesion_volume_loading, lesion_volume_sd : float
        Log total lesion volume = ln(median) + loading * severity + sd * N(0, 1).
    lesion_volume_range_ml : tuple of float
        Clip range of the total lesion volume.
    lesion_mean_size_ml, lesion_size_log_sd : float
        Count = 1 + Poisson(V / mean_size - 1); single sizes log-normal with this
        log-SD, rescaled to sum to V.
    max_lesions : int
        Cap of the lesion count.
    periventricular_fraction, juxtacortical_fraction : float
        Probability that a lesion centre lies in the periventricular /
        juxtacortical zone (the rest: deep WM).
    lesion_aspect_range : tuple of float
        Range of the two minor/major axis ratios of a lesion ellipsoid.
    lesion_edge_mm : float
        Width of the soft lesion edge (mm).
    lesion_flair_contrast : float
        Lesion FLAIR intensity = normal WM x (1 + contrast).
    lesion_t1_contrast : float
        Lesion T1 intensity = normal WM x (1 - contrast).

    Deep-GM atrophy and texture (MS)
    --------------------------------
    thalamus_atrophy_mean, thalamus_atrophy_loading, thalamus_atrophy_sd : float
        Thalamic volume loss fraction = mean + loading * severity + sd * N(0, 1),
        clipped to [0, 0.4].
    other_dgm_atrophy_ratio : float
        Caudate / putamen / pallidum loss = ratio x thalamic loss (+ 0.02 N(0, 1)).
    texture_hc_mean, texture_hc_sd : float
        Healthy deep-GM texture amplitude ~ N(mean, sd).
    texture_ms_mean, texture_ms_loading, texture_ms_sd : float
        MS amplitude = mean + loading * severity + sd * N(0, 1) (clipped >= 0.005).
    texture_corr_mm : float
        Correlation length (Gaussian sigma, mm) of the texture field.

    Contrast
    --------
    t1_intensity, flair_intensity : dict of str to float
        Clean intensity of csf, gm, wm, thalamus, caudate, putamen, pallidum.

    Clinical model
    --------------
    course_probs : dict of str to float
        MS disease course probabilities (RR, SP, PP, CIS).
    age_ms_mean, age_ms_sd, age_hc_mean, age_hc_sd : float
        Age ~ N(mean, sd) clipped to ``age_range``; SP/PP patients are
        ``progressive_age_shift`` years older on average.
    age_range : tuple of float
        Inclusion age range (years).
    progressive_age_shift : float
        Extra mean age of SP / PP patients.
    female_fraction_ms, female_fraction_hc : float
        Probability of sex F.
    duration_mean : dict of str to float
        Mean disease duration per course (gamma, shape 2), capped at age - 16.
    severity_course : dict of str to float
        Severity shift per course.
    severity_duration_slope : float
        Severity change per year of disease duration (relative to 9 years).

    EDSS model
    ----------
    edss_weights : dict of str to float
        Weight of each standardized driver (:data:`EDSS_DRIVERS`).
    edss_noise_sd : float
        SD of the Gaussian noise added to the latent.
    edss_map_center, edss_map_slope : float
        EDSS = 9.5 * expit(center + slope * u), u = standardized latent;
        rounded to 0.5 steps.
    reference_n, reference_seed : int
        Size and seed of the simulated clinical sample used for standardization
        and the ceiling correlation.
    """

    name: str = "custom"
    design: str = "loco"
    resolution: int = 2
    seed: int = 0
    counts: dict = field(default_factory=lambda: {
        "A": {"MS": 116, "HC": 102}, "B": {"MS": 21, "HC": 34}, "C": {"MS": 56, "HC": 39}})
    size_factor: float = 1.0
    min_per_cell: int = 0
    second_visit_fraction: float = 0.15
    centers: dict = field(default_factory=_loco_centers)
    scan_scale_jitter: float = 0.02
    # anatomy
    head_scale_mean: float = 0.93
    head_scale_sd: float = 0.03
    head_scale_male: float = 0.03
    deformation_mm: float = 2.0
    deformation_spacing_mm: float = 30.0
    dgm_volume_sd: float = 0.05
    dgm_age_slope: float = -0.002
    tissue_edge_mm: float = 1.0
    # lesions
    lesion_volume_median_ml: float = 5.0
    lesion_volume_loading: float = 0.8
    lesion_volume_sd: float = 0.6
    lesion_volume_range_ml: tuple = (0.3, 60.0)
    lesion_mean_size_ml: float = 0.35
    lesion_size_log_sd: float = 0.8
    max_lesions: int = 60
    periventricular_fraction: float = 0.45
    juxtacortical_fraction: float = 0.2
    lesion_aspect_range: tuple = (0.5, 1.0)
    lesion_edge_mm: float = 0.8
    lesion_flair_contrast: float = 0.9
    lesion_t1_contrast: float = 0.35
    # deep GM
    thalamus_atrophy_mean: float = 0.15
    thalamus_atrophy_loading: float = 0.04
    thalamus_atrophy_sd: float = 0.03
    other_dgm_atrophy_ratio: float = 0.6
    texture_hc_mean: float = 0.03
    texture_hc_sd: float = 0.008
    texture_ms_mean: float = 0.055
    texture_ms_loading: float = 0.015
    texture_ms_sd: float = 0.012
    texture_corr_mm: float = 2.0
    # contrast
    t1_intensity: dict = field(default_factory=lambda: {
        "csf": 0.25, "gm": 0.62, "wm": 1.0, "thalamus": 0.80, "caudate": 0.68, "putamen": 0.72,
        "pallidum": 0.86})
    flair_intensity: dict = field(default_factory=lambda: {
        "csf": 0.10, "gm": 0.78, "wm": 0.58, "thalamus": 0.66, "caudate": 0.75, "putamen": 0.72,
        "pallidum": 0.62})
    # clinical
    course_probs: dict = field(default_factory=lambda: {"RR": 0.72, "SP": 0.15, "PP": 0.07, "CIS": 0.06})
    age_ms_mean: float = 37.5
    age_ms_sd: float = 10.5
    age_hc_mean: float = 36.0
    age_hc_sd: float = 11.0
    age_range: tuple = (18.0, 70.0)
    progressive_age_shift: float = 8.0
    female_fraction_ms: float = 0.70
    female_fraction_hc: float = 0.60
    duration_mean: dict = field(default_factory=lambda: {"RR": 8.0, "SP": 16.0, "PP": 8.0, "CIS": 0.8})
    severity_course: dict = field(default_factory=lambda: {"RR": 0.0, "SP": 0.8, "PP": 0.6, "CIS": -0.8})
    severity_duration_slope: float = 0.03
    # EDSS
    edss_weights: dict = field(default_factory=lambda: {
        "lesion_load": 0.55, "thalamus_volume": -0.55, "texture_amplitude": 0.35, "age": 0.30,
        "sp_course": 0.45})
    edss_noise_sd: float = 0.8
    edss_map_center: float = -0.95
    edss_map_slope: float = 0.95
    reference_n: int = 20000
    reference_seed: int = 20240501

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML / JSON serialisable) dict of every parameter."""
        return to_builtin(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> "SynthParams":
        """Copy with some parameters changed (validated)."""
        return dataclasses.replace(self, **changes)


def _validate(p: SynthParams) -> None:
    def one_of(name: str, value: Any, allowed: list) -> None:
        if value not in allowed:
            raise ValueError(f"'{name}' must be one of {allowed}; got {value!r}")

    one_of("design", p.design, ["loco", "edss"])
    if not float(p.resolution).is_integer() or p.resolution < 1:
        raise ValueError(f"'resolution' must be a positive integer (mm); got {p.resolution!r}")
    if not p.counts:
        raise ValueError("'counts' must name at least one center")
    for center, groups in p.counts.items():
        if center not in p.centers:
            raise ValueError(f"'counts' center {center!r} has no entry in 'centers' {sorted(p.centers)}")
        for group, n in groups.items():
            one_of(f"counts[{center!r}] group", group, ["MS", "HC"] if p.design == "loco" else ["MS"])
            if int(n) != n or n < 0:
                raise ValueError(f"'counts[{center!r}][{group!r}]' must be an integer >= 0; got {n!r}")
    for c, eff in p.centers.items():
        if not isinstance(eff, CenterEffects):
            raise ValueError(f"'centers[{c!r}]' must be a CenterEffects; got {type(eff).__name__}")
    for name in ("size_factor",):
        if getattr(p, name) <= 0:
            raise ValueError(f"'{name}' must be > 0; got {getattr(p, name)!r}")
    for name in ("second_visit_fraction", "periventricular_fraction", "juxtacortical_fraction",
                 "female_fraction_ms", "female_fraction_hc"):
        v = getattr(p, name)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"'{name}' must be in [0, 1]; got {v!r}")
    if p.periventricular_fraction + p.juxtacortical_fraction > 1.0:
        raise ValueError("'periventricular_fraction' + 'juxtacortical_fraction' must be <= 1")
    if set(p.course_probs) - set(_COURSES):
        raise ValueError(f"'course_probs' keys must be among {list(_COURSES)}; got {sorted(p.course_probs)}")
    if not math.isclose(sum(p.course_probs.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"'course_probs' must sum to 1; got {sum(p.course_probs.values())!r}")
    if set(p.edss_weights) != set(EDSS_DRIVERS):
        raise ValueError(f"'edss_weights' keys must be {list(EDSS_DRIVERS)}; got {sorted(p.edss_weights)}")
    for name in ("t1_intensity", "flair_intensity"):
        if set(getattr(p, name)) != set(_TISSUE_KEYS):
            raise ValueError(f"'{name}' keys must be {list(_TISSUE_KEYS)}; got {sorted(getattr(p, name))}")
    if p.max_lesions < 1 or p.min_per_cell < 0 or p.reference_n < 100:
        raise ValueError("'max_lesions' must be >= 1, 'min_per_cell' >= 0 and 'reference_n' >= 100")


def _presets() -> dict[str, SynthParams]:
    loco = dict(design="loco")
    edss = dict(
        design="edss",
        counts={"site1": {"MS": 500}, "site2": {"MS": 104}},
        centers=_edss_centers(),
        course_probs={"RR": 0.85, "SP": 0.15},
    )
    return {
        "smoke": SynthParams(name="smoke", resolution=3, size_factor=0.12, min_per_cell=4, **loco),
        "quick": SynthParams(name="quick", resolution=2, size_factor=0.25, min_per_cell=8, **loco),
        "paper": SynthParams(name="paper", resolution=1, size_factor=1.0, **loco),
        "edss-smoke": SynthParams(name="edss-smoke", resolution=3, size_factor=0.08, min_per_cell=12, **edss),
        "edss-quick": SynthParams(name="edss-quick", resolution=2, size_factor=0.3, min_per_cell=40, **edss),
        "edss-paper": SynthParams(name="edss-paper", resolution=1, size_factor=1.0, **edss),
    }


PRESETS: dict[str, SynthParams] = _presets()
"""Named parameter sets: ``smoke``/``quick``/``paper`` (design loco, centers
A/B/C) and ``edss-smoke``/``edss-quick``/``edss-paper`` (design edss)."""


def get_params(preset: str | SynthParams) -> SynthParams:
    """Resolve a preset name (or pass a :class:`SynthParams` through).

    Raises
    ------
    ValueError
        ``"'preset' must be one of [...]; got 'x'"`` for an unknown name.
    """
    if isinstance(preset, SynthParams):
        return preset
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"'preset' must be one of {list(PRESETS)}; got {preset!r}")
    return PRESETS[preset]


def params_hash(params: SynthParams) -> str:
    """SHA-256 (hex) of every parameter plus the generator version."""
    blob = json.dumps({"version": GENERATOR_VERSION, "params": params.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cell_counts(params: SynthParams) -> list[tuple[str, str, int]]:
    """Scaled ``(center, group, n_subjects)`` cells of a design."""
    out = []
    for center, groups in params.counts.items():
        for group in ("MS", "HC"):
            if group in groups and groups[group] > 0:
                n = max(params.min_per_cell, int(math.floor(groups[group] * params.size_factor + 0.5)))
                out.append((center, group, n))
    return out


# ----------------------------------------------------------------------------- clinical model


def simulate_clinical(params: SynthParams, n: int, group: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n`` subjects' clinical and anatomical design values.

    Parameters
    ----------
    params : SynthParams
        Generator parameters.
    n : int
        Number of subjects.
    group : {"MS", "HC"}
        Group.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    dict of str to ndarray
        ``course, age, sex, disease_duration, severity, lesion_volume_design_ml,
        lesion_count, thalamus_atrophy, dgm_atrophy, texture_amplitude,
        head_scale, dgm_factors (n, 8), thalamus_volume_factor``. HC: course
        ``"NA"``, duration / severity NaN, no lesions, no atrophy.
    """
    if group not in ("MS", "HC"):
        raise ValueError(f"'group' must be one of ['MS', 'HC']; got {group!r}")
    p = params
    lo, hi = p.age_range
    if group == "MS":
        courses = list(p.course_probs)
        course = np.asarray(courses, dtype=object)[
            rng.choice(len(courses), size=n, p=np.asarray([p.course_probs[c] for c in courses]))]
        prog = np.isin(course, ["SP", "PP"])
        age = np.clip(rng.normal(p.age_ms_mean + p.progressive_age_shift * prog, p.age_ms_sd), lo, hi)
        female = rng.random(n) < p.female_fraction_ms
        dmean = np.asarray([p.duration_mean.get(c, 8.0) for c in course])
        duration = rng.gamma(2.0, dmean / 2.0)
        duration = np.clip(duration, 0.0, np.maximum(age - 16.0, 0.0))
        shift = np.asarray([p.severity_course.get(c, 0.0) for c in course])
        severity = rng.standard_normal(n) + shift + p.severity_duration_slope * (duration - 9.0)
        vol = np.exp(np.log(p.lesion_volume_median_ml) + p.lesion_volume_loading * severity
                     + p.lesion_volume_sd * rng.standard_normal(n))
        vol = np.clip(vol, *p.lesion_volume_range_ml)
        count = 1 + rng.poisson(np.maximum(vol / p.lesion_mean_size_ml - 1.0, 0.0))
        count = np.minimum(count, p.max_lesions)
        thal = np.clip(p.thalamus_atrophy_mean + p.thalamus_atrophy_loading * severity
                       + p.thalamus_atrophy_sd * rng.standard_normal(n), 0.0, 0.4)
        other = np.clip(p.other_dgm_atrophy_ratio * thal + 0.02 * rng.standard_normal(n), 0.0, 0.4)
        texture = np.clip(p.texture_ms_mean + p.texture_ms_loading * severity
                          + p.texture_ms_sd * rng.standard_normal(n), 0.005, None)
    else:
        course = np.full(n, "NA", dtype=object)
        age = np.clip(rng.normal(p.age_hc_mean, p.age_hc_sd, n), lo, hi)
        female = rng.random(n) < p.female_fraction_hc
        duration = np.full(n, np.nan)
        severity = np.full(n, np.nan)
        vol = np.zeros(n)
        count = np.zeros(n, dtype=int)
        thal = np.zeros(n)
        other = np.zeros(n)
        texture = np.clip(rng.normal(p.texture_hc_mean, p.texture_hc_sd, n), 0.005, None)
    male = ~female
    head = rng.normal(p.head_scale_mean + p.head_scale_male * male, p.head_scale_sd)
    shared = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, 8))
    factors = 1.0 + p.dgm_volume_sd * (math.sqrt(0.5) * shared + math.sqrt(0.5) * own)
    factors *= (1.0 + p.dgm_age_slope * (age - 40.0))[:, None]
    factors = np.clip(factors, 0.5, 1.5)
    atrophy = np.where(np.arange(8)[None, :] < 2, thal[:, None], other[:, None])
    thal_factor = (factors[:, :2] * (1.0 - atrophy[:, :2])).mean(axis=1)
    return {
        "course": course,
        "age": age,
        "sex": np.where(female, "F", "M").astype(object),
        "disease_duration": duration,
        "severity": severity,
        "lesion_volume_design_ml": vol,
        "lesion_count": count.astype(int),
        "thalamus_atrophy": thal,
        "dgm_atrophy": other,
        "texture_amplitude": texture,
        "head_scale": head,
        "dgm_factors": factors,
        "thalamus_volume_factor": thal_factor,
    }


def _drivers(clin: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "lesion_load": np.log(np.asarray(clin["lesion_volume_design_ml"], float) + 0.1),
        "thalamus_volume": np.asarray(clin["thalamus_volume_factor"], float),
        "texture_amplitude": np.asarray(clin["texture_amplitude"], float),
        "age": np.asarray(clin["age"], float),
        "sp_course": (np.asarray(clin["course"]) == "SP").astype(float),
    }


def _latent(drivers: Mapping[str, np.ndarray], ref: Mapping[str, Any], weights: Mapping[str, float]) -> np.ndarray:
    std = ref["standardization"]
    return sum(weights[k] * (drivers[k] - std[k]["mean"]) / std[k]["sd"] for k in EDSS_DRIVERS)


def edss_from_latent(latent: np.ndarray, ref: Mapping[str, Any]) -> np.ndarray:
    """Map an EDSS latent to the EDSS scale (0..9.5, 0.5 steps) as the generator does.

    ``u = (latent - ref["latent_mean"]) / ref["latent_sd"]``;
    ``edss = round_half(9.5 * expit(ref["map_center"] + ref["map_slope"] * u))``.
    """
    u = (np.asarray(latent, float) - ref["latent_mean"]) / ref["latent_sd"]
    z = ref["map_center"] + ref["map_slope"] * u
    cont = 9.5 / (1.0 + np.exp(-z))
    return np.clip(np.round(cont * 2.0) / 2.0, 0.0, 9.5)


_REF_CACHE: dict[str, dict[str, Any]] = {}


def edss_reference(params: SynthParams) -> dict[str, Any]:
    """Reference statistics of the EDSS model (deterministic, cached).

    Simulates ``params.reference_n`` MS patients' clinical values with
    ``params.reference_seed`` and returns what the sidecar records under
    ``synthetic.ground_truth.edss``: driver names, weights, per-driver
    standardization (mean, sd), noise SD, latent mean / total SD, mapping
    constants, the noise-free correlation ceiling ``ceiling_r`` (Pearson r of
    observed EDSS with the noise-free latent mapped the same way) and the
    correlation of observed EDSS with every driver.
    """
    key = params_hash(params)
    if key in _REF_CACHE:
        return json.loads(json.dumps(_REF_CACHE[key]))
    rng = np.random.default_rng(params.reference_seed)
    clin = simulate_clinical(params, params.reference_n, "MS", rng)
    drv = _drivers(clin)
    ref: dict[str, Any] = {
        "drivers": list(EDSS_DRIVERS),
        "driver_definitions": {
            "lesion_load": "ln(gt_lesion_volume_design_ml + 0.1)",
            "thalamus_volume": "gt_thalamus_volume_factor",
            "texture_amplitude": "gt_texture_amplitude",
            "age": "age",
            "sp_course": "1 if course == 'SP' else 0",
        },
        "weights": {k: float(params.edss_weights[k]) for k in EDSS_DRIVERS},
        "standardization": {k: {"mean": float(np.mean(v)), "sd": float(np.std(v) or 1.0)} for k, v in drv.items()},
        "noise_sd": float(params.edss_noise_sd),
    }
    ref["standardization"] = round_floats(ref["standardization"], SIDECAR_SIGNIFICANT_DIGITS)
    latent = _latent(drv, ref, params.edss_weights)
    ref["latent_mean"] = float(np.mean(latent))
    ref["latent_sd"] = float(math.sqrt(np.var(latent) + params.edss_noise_sd**2))
    ref["map_center"] = float(params.edss_map_center)
    ref["map_slope"] = float(params.edss_map_slope)
    ref["mapping"] = ("edss = clip(round(2 * 9.5 * expit(map_center + map_slope * "
                      "(latent - latent_mean) / latent_sd)) / 2, 0, 9.5); latent = gt_edss_latent + "
                      "N(0, noise_sd)")
    ref["latent_mean"] = round_floats(ref["latent_mean"], SIDECAR_SIGNIFICANT_DIGITS)
    ref["latent_sd"] = round_floats(ref["latent_sd"], SIDECAR_SIGNIFICANT_DIGITS)
    noisy = latent + params.edss_noise_sd * rng.standard_normal(latent.shape)
    edss = edss_from_latent(noisy, ref)
    ceiling = edss_from_latent(latent, ref)
    ref["ceiling_r"] = float(np.corrcoef(edss, ceiling)[0, 1])
    ref["ceiling_r2"] = float(ref["ceiling_r"] ** 2)
    ref["reference_n"] = int(params.reference_n)
    ref["driver_edss_r"] = {k: float(np.corrcoef(drv[k], edss)[0, 1]) for k in EDSS_DRIVERS}
    q = np.percentile(edss, [25, 50, 75])
    ref["edss_median_iqr"] = [float(q[1]), float(q[0]), float(q[2])]
    sp = np.asarray(clin["course"]) == "SP"
    ref["edss_median_by_course"] = {
        c: float(np.median(edss[np.asarray(clin["course"]) == c])) for c in params.course_probs
        if (np.asarray(clin["course"]) == c).any()
    }
    ref["sp_fraction"] = float(sp.mean())
    # Derived floats at 12 significant digits (the sidecar's documented precision): the
    # last bits of means / correlations differ between CPUs, and generation uses these values.
    ref = round_floats(ref, SIDECAR_SIGNIFICANT_DIGITS)
    _REF_CACHE[key] = ref
    return json.loads(json.dumps(ref))


# ----------------------------------------------------------------------------- subject design


def _design_subjects(params: SynthParams, seed: int) -> list[dict[str, Any]]:
    """All subjects' design values (deterministic in ``seed``; images not drawn here)."""
    rng = np.random.default_rng([seed, 0])
    ref = edss_reference(params)
    subjects: list[dict[str, Any]] = []
    for center, group, n in cell_counts(params):
        clin = simulate_clinical(params, n, group, rng)
        if group == "MS":
            latent = _latent(_drivers(clin), ref, params.edss_weights)
            noisy = latent + params.edss_noise_sd * rng.standard_normal(n)
            edss = edss_from_latent(noisy, ref)
            noisefree = edss_from_latent(latent, ref)
        else:
            latent = noisefree = edss = np.full(n, np.nan)
        for i in range(n):
            subjects.append({
                "center": center,
                "group": group,
                **{k: (v[i].tolist() if k == "dgm_factors" else to_builtin(v[i])) for k, v in clin.items()},
                "edss": float(edss[i]),
                "edss_latent": float(latent[i]),
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


# ----------------------------------------------------------------------------- rendering

_WORKER_ATLAS: anatomy.Atlas | None = None


def _init_worker(atlas: anatomy.Atlas) -> None:
    global _WORKER_ATLAS
    _WORKER_ATLAS = atlas


def _atlas_for(params: SynthParams) -> anatomy.Atlas:
    a = _WORKER_ATLAS
    if a is not None and a.resolution == float(params.resolution):
        return a
    return anatomy.load_atlas(int(params.resolution))


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _render_lesions(atlas: anatomy.Atlas, params: SynthParams, subj: Mapping[str, Any],
                    rng: np.random.Generator) -> np.ndarray:
    """Template-space lesion fraction map (max over smooth ellipsoids)."""
    lesion = np.zeros(atlas.shape, np.float32)
    n = int(subj["lesion_count"])
    if n <= 0:
        return lesion
    res = atlas.resolution
    sizes = rng.lognormal(0.0, params.lesion_size_log_sd, n)
    # design volume is in subject space: undo the head-size scaling applied by the warp
    sizes = sizes / sizes.sum() * float(subj["lesion_volume_design_ml"]) / float(subj["head_scale"]) ** 3
    p_pv, p_jc = params.periventricular_fraction, params.juxtacortical_fraction
    kinds = rng.choice(3, size=n, p=[p_pv, p_jc, max(0.0, 1.0 - p_pv - p_jc)])
    zones = [atlas.lesion_zones["periventricular"], atlas.lesion_zones["juxtacortical"],
             atlas.lesion_zones["deep"]]
    lo_a, hi_a = params.lesion_aspect_range
    edge = params.lesion_edge_mm
    for k in range(n):
        zone = zones[int(kinds[k])]
        center = np.asarray(np.unravel_index(int(zone[rng.integers(zone.size)]), atlas.shape), float)
        center += rng.uniform(-0.5, 0.5, 3)
        aspect = np.array([1.0, rng.uniform(lo_a, hi_a), rng.uniform(lo_a, hi_a)])
        r_geo = (3.0 * sizes[k] * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        radii = r_geo * aspect / np.prod(aspect) ** (1.0 / 3.0)
        rot = _rotation(rng)
        ext = (radii.max() + 3.0 * edge) / res + 1.0
        lo = np.maximum(np.floor(center - ext).astype(int), 0)
        hi = np.minimum(np.ceil(center + ext).astype(int) + 1, atlas.shape)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"))
        rel = (grid - center.reshape(3, 1, 1, 1)) * res
        loc = np.tensordot(rot.T, rel, axes=1) / radii.reshape(3, 1, 1, 1)
        d = np.sqrt((loc**2).sum(0))
        f = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * r_geo / edge, -50, 50)))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(lesion[box], f.astype(np.float32), out=lesion[box])
    return lesion


def _subject_anatomy(atlas: anatomy.Atlas, params: SynthParams, subj: Mapping[str, Any],
                     rng: np.random.Generator) -> dict[str, Any]:
    """Subject-space tissue fractions, labels, masks and the texture field."""
    factors = np.asarray(subj["dgm_factors"], float)
    atro = np.where(np.arange(8) < 2, subj["thalamus_atrophy"], subj["dgm_atrophy"])
    scale = float(subj["head_scale"])
    coords = anatomy.random_deformation(atlas, rng, params.deformation_mm, params.deformation_spacing_mm, scale)

    # lesions (template space) take the place of the tissue where WM dominates: L * min(1, 2 WM)
    gm = atlas.gm.copy()
    wm = atlas.wm.copy()
    csf = atlas.csf.copy()
    lfrac = _render_lesions(atlas, params, subj, rng)
    lesion = lfrac * np.minimum(1.0, 2.0 * wm)
    for t in (gm, wm, csf):
        t *= 1.0 - lesion
    w = {name: anatomy.warp(vol, coords, 1) for name, vol in (("gm", gm), ("wm", wm), ("csf", csf))}
    nz = np.nonzero(lesion > 0.01)
    if nz[0].size:
        lbox = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
        w["lesion"] = anatomy.warp_box(np.ascontiguousarray(lesion[lbox]), lbox, coords, 1)
    else:
        w["lesion"] = np.zeros(atlas.shape, np.float32)
    parcel_s = anatomy.warp(atlas.parcels, coords, 0)

    # deep GM in subject space: ellipsoids at the deformed template centres, radii scaled by head size
    # and volume factors (so rendered volumes follow the ground truth, not the local warp Jacobian);
    # the tissue lost to atrophy (between natural and atrophied ellipsoid) becomes CSF
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

    # deep-GM texture field (subject space, bounding box of the nuclei)
    nz = np.nonzero(w["dgm"] > 0.01)
    tex_box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz) if nz[0].size else None
    tex = None
    if tex_box is not None:
        from scipy import ndimage

        shape = tuple(s.stop - s.start for s in tex_box)
        noise = rng.standard_normal(shape).astype(np.float32)
        sigma = params.texture_corr_mm / atlas.resolution
        field_ = ndimage.gaussian_filter(noise, sigma) if sigma > 0.05 else noise
        tex = (field_ / (field_.std() or 1.0)).astype(np.float32)
    return {"w": w, "near": near_s, "brain": brain, "labels": labels, "lesion_mask": lesion_mask,
            "tex": tex, "tex_box": tex_box}


def _clean_image(anat: Mapping[str, Any], intensity: Mapping[str, float], lesion_factor: float,
                 amplitude: float) -> np.ndarray:
    w = anat["w"]
    img = (w["csf"] * intensity["csf"] + w["gm"] * intensity["gm"] + w["wm"] * intensity["wm"]
           + w["lesion"] * (intensity["wm"] * lesion_factor))
    lut = np.zeros(9, np.float32)
    for lab, grp in _STRUCT_GROUP.items():
        lut[lab] = intensity[grp]
    deep = w["dgm"] * lut[np.clip(anat["near"], 0, 8)]
    if anat["tex_box"] is not None:
        b = anat["tex_box"]
        deep[b] *= 1.0 + amplitude * anat["tex"]
    return (img + deep).astype(np.float32)


def _scan(clean: np.ndarray, brain: np.ndarray, eff: CenterEffects, scale: float, params: SynthParams,
          res: float, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    s = scale * (1.0 + params.scan_scale_jitter * rng.standard_normal())
    img = np.power(np.clip(clean, 0.0, None), eff.gamma) + eff.offset * brain
    img = (s * img).astype(np.float32)
    if eff.blur_mm > 0:
        img = ndimage.gaussian_filter(img, eff.blur_mm / res)
    if eff.bias_strength > 0:
        img *= np.exp(eff.bias_strength * anatomy.smooth_field(img.shape, res, 80.0, rng))
    sd = eff.noise_sd * s
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    img = np.sqrt((img + n1) ** 2 + n2**2)
    img[~brain] = 0.0
    return img.astype(np.float32)


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _render_subject(task: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Render and write one subject (all sessions); return its manifest rows."""
    params: SynthParams = task["params"]
    subj = task["subject"]
    root = Path(task["root"])
    seed = int(task["seed"])
    atlas = _atlas_for(params)
    res = atlas.resolution
    rng = np.random.default_rng([seed, 1, subj["index"]])
    anat = _subject_anatomy(atlas, params, subj, rng)
    t1_clean = _clean_image(anat, params.t1_intensity, 1.0 - params.lesion_t1_contrast, subj["texture_amplitude"])
    fl_clean = _clean_image(anat, params.flair_intensity, 1.0 + params.lesion_flair_contrast,
                            subj["texture_amplitude"])
    eff: CenterEffects = params.centers[subj["center"]]
    vv = atlas.voxel_volume_ml
    labels = anat["labels"]
    gt = {
        "tiv_ml": float(anat["brain"].sum() * vv),
        "lesion_volume_ml": float(anat["lesion_mask"].sum() * vv),
        "gt_lesion_volume_ml": float(anat["lesion_mask"].sum() * vv),
        "gt_lesion_volume_design_ml": subj["lesion_volume_design_ml"],
        "gt_lesion_count": int(subj["lesion_count"]),
        "gt_thalamus_atrophy": subj["thalamus_atrophy"],
        "gt_dgm_atrophy": subj["dgm_atrophy"],
        "gt_thalamus_volume_factor": subj["thalamus_volume_factor"],
        "gt_thalamus_volume_ml": float(np.isin(labels, (1, 2)).sum() * vv),
        "gt_deep_gm_volume_ml": float(((labels >= 1) & (labels <= 8)).sum() * vv),
        "gt_texture_amplitude": subj["texture_amplitude"],
        "gt_severity": subj["severity"],
        "gt_head_scale": subj["head_scale"],
        "gt_edss_latent": subj["edss_latent"],
        "gt_edss_noisefree": subj["edss_noisefree"],
    }
    rows = []
    for k in range(int(subj["n_sessions"])):
        session = f"ses-{k + 1:02d}"
        rel = Path(subj["subject_id"]) / session
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        srng = np.random.default_rng([seed, 2, subj["index"], k])
        t1 = _scan(t1_clean, anat["brain"], eff, eff.t1_scale, params, res, srng)
        fl = _scan(fl_clean, anat["brain"], eff, eff.flair_scale, params, res, srng)
        _save(t1, atlas.affine, folder / "t1.nii.gz")
        _save(fl, atlas.affine, folder / "flair.nii.gz")
        _save(anat["brain"].astype(np.uint8), atlas.affine, folder / "brain_mask.nii.gz")
        _save(anat["lesion_mask"].astype(np.uint8), atlas.affine, folder / "lesion_mask.nii.gz")
        _save(labels, atlas.affine, folder / "roi_labels.nii.gz")
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
        for col in ("t1", "flair", "brain_mask", "lesion_mask", "roi_labels"):
            row[col] = (rel / f"{col}.nii.gz").as_posix()
        row.update(gt)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- manifest


def _table(rows: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(rows)
    for col, nd in (("age", 1), ("disease_duration", 1), ("tiv_ml", 1), ("lesion_volume_ml", 3),
                    ("gt_lesion_volume_ml", 3), ("gt_lesion_volume_design_ml", 4), ("gt_thalamus_volume_ml", 3),
                    ("gt_deep_gm_volume_ml", 3)):
        df[col] = df[col].astype(float).round(nd)
    for col in ("gt_thalamus_atrophy", "gt_dgm_atrophy", "gt_thalamus_volume_factor", "gt_texture_amplitude",
                "gt_severity", "gt_head_scale", "gt_edss_latent", "gt_edss_noisefree"):
        df[col] = df[col].astype(float).round(6)
    ordered = list(REQUIRED_COLUMNS) + ["tiv_ml", "lesion_volume_ml"] + list(GT_COLUMNS)
    df = df[ordered].sort_values(["subject_id", "session"]).reset_index(drop=True)
    return df


def _sidecar(params: SynthParams, seed: int, df) -> dict[str, Any]:
    ref = edss_reference(params)
    n_parcels = anatomy.N_PARCELS
    centers = {}
    for c, eff in params.centers.items():
        if c in params.counts:
            centers[c] = to_builtin(dataclasses.asdict(eff))
    ms = df[df["group"] == "MS"]
    return {
        "name": f"synthetic-{params.name}",
        "description": (
            f"Synthetic multi-center MS cohort (design {params.design}, preset {params.name}, seed {seed}, "
            f"{params.resolution} mm) generated by msutils.synth from the MNI152 2009 template bundled with "
            "nilearn; known ground truth in the gt_ columns and under synthetic.ground_truth. Deep-GM nuclei "
            "are approximate ellipsoids; cortical parcels are k-means clusters (no real atlas)."
        ),
        "data_root": ".",
        "images": ["t1", "flair"],
        "masks": ["brain_mask", "lesion_mask", "roi_labels"],
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
                "groups": {
                    "MS": "WM lesions, deep-GM atrophy (thalamus strongest), deep-GM texture amplitude "
                          "texture_ms_*; EDSS from the model under edss",
                    "HC": "no lesions (lesion_mask all zero), no atrophy, baseline texture amplitude "
                          "texture_hc_*; EDSS and disease_duration empty, course NA",
                },
                "sessions": "ses-02 (when present) rescans the same anatomy, lesions and clinical data "
                            "with a fresh scale jitter, bias field and noise: a test-retest pair",
                "centers": centers,
                "n_subjects": int(df["subject_id"].nunique()),
                "n_scans": int(len(df)),
                "n_ms_subjects": int(ms["subject_id"].nunique()),
            },
        },
    }


def _write_manifest(df, meta: Mapping[str, Any], folder: Path) -> Path:
    import yaml

    csv_path = folder / "manifest.csv"
    atomic_write_text(csv_path, df.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(folder / "manifest.yaml", yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True))
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
        One of :data:`PRESETS` or a parameter set.
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
        Show a tqdm progress bar.

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
    subjects = _design_subjects(params, seed)
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
        _init_worker(atlas)
    per_subject = process_map(_render_subject, tasks, n_jobs=n_jobs, desc="synthetic subjects", unit="subjects",
                              initializer=_init_worker, initargs=(atlas,), progress=progress,
                              preload=("msutils.synth.generator",))
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
        One of :data:`PRESETS`.
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
