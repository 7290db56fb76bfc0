"""Parameters and presets of the synthetic cohort generator.

:class:`SynthParams` holds every parameter (documented on the class); the
presets of :data:`PRESETS` are named parameter sets. The sidecar of every
generated cohort records ``SynthParams.to_dict()`` and :func:`params_hash`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from msutils.core.serialize import to_builtin
from msutils.synth.centers import CenterEffects, edss_centers, loco_centers

__all__ = [
    "GENERATOR_VERSION",
    "COURSES",
    "TISSUE_KEYS",
    "LESION_KINDS",
    "LOOKALIKE_KINDS",
    "EDSS_DRIVERS",
    "CENTER_CLINICAL_FIELDS",
    "SynthParams",
    "PRESETS",
    "get_params",
    "params_hash",
    "cell_counts",
    "for_center",
]

GENERATOR_VERSION = "4"
"""Bumped whenever the same parameters would produce different files."""

COURSES: tuple[str, ...] = ("RR", "SP", "PP", "CIS")
"""MS disease courses (healthy controls have course ``NA``)."""

TISSUE_KEYS: tuple[str, ...] = ("csf", "gm", "wm", "thalamus", "caudate", "putamen", "pallidum")
"""Tissue classes with a clean intensity per contrast."""

LESION_KINDS: tuple[str, ...] = ("periventricular", "ovoid", "deep", "juxtacortical", "infratentorial")
"""MS lesion kinds (see :mod:`msutils.synth.lesions`)."""

LOOKALIKE_KINDS: dict[int, str] = {
    1: "periventricular_cap",
    2: "punctate_wmh",
    3: "sulcal_hyperintensity",
    4: "flow_artefact",
}
"""Label value -> kind of the lesion look-alikes (``gt_lookalike_labels``; see :mod:`msutils.synth.lookalikes`)."""

EDSS_DRIVERS: tuple[str, ...] = ("lesion_load", "thalamus_volume", "texture_amplitude", "age", "sp_course")
"""EDSS drivers: ln(design lesion volume ml + 0.1), thalamic volume factor,
deep-GM texture amplitude, age (years), secondary-progressive course (0/1)."""

CENTER_CLINICAL_FIELDS: tuple[str, ...] = (
    "age_ms_mean", "age_ms_sd", "age_hc_mean", "age_hc_sd", "female_fraction_ms", "female_fraction_hc",
    "course_probs", "duration_mean", "lesion_volume_median_ml", "edss_offset",
)
"""Clinical parameters a center may override (``SynthParams.center_clinical``)."""



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
        clinical data; fresh scale jitter, bias field, noise and rater masks).
    centers : dict of str to CenterEffects
        Scanner, protocol and rater per center (:class:`msutils.synth.centers.CenterEffects`).
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
        Fractional deep-GM volume change per year of age (relative to 40 y).
    tissue_edge_mm : float
        Width of the soft edge of deep-GM ellipsoids (mm).
    thickness_sd_mm, thickness_local_sd_mm, thickness_spacing_mm : float
        Cortical thickness variation: the GM/WM boundary moves by a subject
        shift ~ N(0, ``thickness_sd_mm``) plus a smooth local field (SD
        ``thickness_local_sd_mm``, control points ``thickness_spacing_mm``
        apart); positive = thicker cortex.

    Tissue texture and contrast (every subject, also HC)
    ----------------------------------------------------
    tissue_gain_sd : dict of str to float
        SD of a per-subject multiplicative gain of the clean intensity of
        ``csf``, ``gm``, ``wm`` and ``deep`` (deep-GM nuclei), drawn per contrast:
        between-subject GM/WM contrast.
    contrast_age_slope : float
        GM/WM contrast fades with age: the GM (and deep-GM) intensity moves
        towards WM by this fraction of the gap per year from 40 y (Salat et al.
        2009 report a decline of the GM/WM T1 contrast with age).
    regional_sd, regional_spacing_mm : float
        A smooth multiplicative intensity field per tissue (GM, WM, deep GM)
        and contrast, SD ``regional_sd``, control points ``regional_spacing_mm``
        apart: regional between-subject differences.
    fine_texture : dict of str to float
        Median relative SD of the fine-scale texture of ``gm`` and ``wm``; a
        subject's amplitude is the median times ``exp(fine_texture_log_sd * N(0, 1))``
        (the exponent clipped to +-0.7, a factor 0.5-2).
    fine_texture_log_sd : float
        Between-subject log-SD of the fine texture amplitudes.
    fine_texture_corr_mm : float
        Correlation length (Gaussian sigma, mm) of the fine texture field
        (one field per subject shared by T1 and FLAIR: the same microstructure).

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
    lesion_kinds : dict of str to float
        Probability of each kind of :data:`LESION_KINDS` (sums to 1):
        confluent ``periventricular``, ``ovoid`` (perpendicular to the
        ventricles), ``deep`` WM, ``juxtacortical``, ``infratentorial``.
    ovoid_aspect_range : tuple of float
        Range of the minor / major axis ratio of ovoid lesions.
    lesion_aspect_range : tuple of float
        Range of the two minor / major axis ratios of the other lesions' blobs.
    confluent_blobs : tuple of int
        Range of the number of blobs merged into a confluent periventricular lesion.
    lesion_irregularity : float
        Amplitude of the smooth radial noise that makes lesion borders irregular
        (relative radius).
    lesion_edge_mm : float
        Width of the soft lesion edge (mm).
    lesion_flair_contrast, lesion_flair_contrast_sd : float
        Lesion FLAIR intensity = normal WM x (1 + contrast x gain), contrast per
        lesion ~ N(mean, sd).
    lesion_t1_contrast, lesion_t1_contrast_sd : float
        Lesion T1 intensity = normal WM x (1 - contrast x gain).
    lesion_heterogeneity : float
        Rim / core heterogeneity: the gain of a voxel at normalised radius d is
        ``1 + h (d - 0.5)`` with ``h ~ U(-1, 1) x lesion_heterogeneity`` per
        lesion (h > 0: brighter rim), times a fine texture (SD 0.1).

    Lesion look-alikes (every subject, see :mod:`msutils.synth.lookalikes`)
    ----------------------------------------------------------------------
    cap_logit, cap_age_slope : float
        Each of the four ventricular horns carries a cap with probability
        ``expit(cap_logit + cap_age_slope * (age - 50))``.
    band_logit : float
        A thin periventricular band lines the ventricle bodies with probability
        ``expit(band_logit + cap_age_slope * (age - 50))``.
    punctate_rate, punctate_age_slope : float
        Punctate WM hyperintensities ~ Poisson(``punctate_rate * exp(slope * (age - 40))``).
    sulcal_rate, flow_rate : float
        Sulcal / cortical and flow-like hyperintensities ~ Poisson(rate x the
        center's ``artefact_rate``).
    lookalike_flair_contrast : dict of str to float
        FLAIR contrast per kind: caps and punctate WMH reach WM x (1 + c);
        sulcal hyperintensities GM x (1 + c); flow artefacts WM x (1 + c).
    lookalike_t1_contrast : dict of str to float
        T1 hypointensity per kind (WM x (1 - c) for caps and punctate WMH; 0:
        invisible on T1).

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
        Correlation length (Gaussian sigma, mm) of the deep-GM texture field.

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
    center_clinical : dict
        ``{center: {field: value}}``: per-center values of the clinical
        parameters in :data:`CENTER_CLINICAL_FIELDS` (a center's population and
        its EDSS rating differ, as between seed 001's sites).

    EDSS model
    ----------
    edss_weights : dict of str to float
        Weight of each standardized driver (:data:`EDSS_DRIVERS`).
    edss_noise_sd : float
        SD of the Gaussian noise added to the latent.
    edss_offset : float
        Rating offset added to the observed EDSS latent (standardized units),
        e.g. a center whose raters score lower; 0 by default, set per center
        in ``center_clinical``.
    edss_map_center, edss_map_slope : float
        EDSS = 9.5 * expit(center + slope * u), u = standardized latent;
        rounded to 0.5 steps.
    reference_n, reference_seed : int
        Size and seed of the simulated clinical sample used for standardization
        and the calibration numbers.
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
    centers: dict = field(default_factory=loco_centers)
    scan_scale_jitter: float = 0.02
    # anatomy
    head_scale_mean: float = 0.93
    head_scale_sd: float = 0.03
    head_scale_male: float = 0.03
    deformation_mm: float = 2.0
    deformation_spacing_mm: float = 30.0
    dgm_volume_sd: float = 0.07
    dgm_age_slope: float = -0.002
    tissue_edge_mm: float = 1.0
    thickness_sd_mm: float = 0.25
    thickness_local_sd_mm: float = 0.2
    thickness_spacing_mm: float = 40.0
    # tissue texture and contrast
    tissue_gain_sd: dict = field(default_factory=lambda: {"csf": 0.12, "gm": 0.08, "wm": 0.04, "deep": 0.07})
    contrast_age_slope: float = 0.003
    regional_sd: float = 0.06
    regional_spacing_mm: float = 30.0
    fine_texture: dict = field(default_factory=lambda: {"gm": 0.08, "wm": 0.04})
    fine_texture_log_sd: float = 0.5
    fine_texture_corr_mm: float = 1.2
    # lesions
    lesion_volume_median_ml: float = 7.5
    lesion_volume_loading: float = 0.45
    lesion_volume_sd: float = 0.85
    lesion_volume_range_ml: tuple = (0.3, 80.0)
    lesion_mean_size_ml: float = 0.3
    lesion_size_log_sd: float = 1.0
    max_lesions: int = 60
    lesion_kinds: dict = field(default_factory=lambda: {
        "periventricular": 0.30, "ovoid": 0.20, "deep": 0.18, "juxtacortical": 0.20, "infratentorial": 0.12})
    ovoid_aspect_range: tuple = (0.35, 0.6)
    lesion_aspect_range: tuple = (0.5, 1.0)
    confluent_blobs: tuple = (2, 5)
    lesion_irregularity: float = 0.25
    lesion_edge_mm: float = 0.8
    lesion_flair_contrast: float = 1.0
    lesion_flair_contrast_sd: float = 0.15
    lesion_t1_contrast: float = 0.40
    lesion_t1_contrast_sd: float = 0.08
    lesion_heterogeneity: float = 0.5
    # look-alikes
    cap_logit: float = 0.0
    cap_age_slope: float = 0.06
    band_logit: float = -1.0
    punctate_rate: float = 3.0
    punctate_age_slope: float = 0.04
    sulcal_rate: float = 2.0
    flow_rate: float = 1.5
    lookalike_flair_contrast: dict = field(default_factory=lambda: {
        "periventricular_cap": 0.6, "punctate_wmh": 0.8, "sulcal_hyperintensity": 0.45, "flow_artefact": 1.1})
    lookalike_t1_contrast: dict = field(default_factory=lambda: {
        "periventricular_cap": 0.05, "punctate_wmh": 0.12, "sulcal_hyperintensity": 0.0, "flow_artefact": 0.0})
    # deep GM
    thalamus_atrophy_mean: float = 0.15
    thalamus_atrophy_loading: float = 0.03
    thalamus_atrophy_sd: float = 0.035
    other_dgm_atrophy_ratio: float = 0.6
    texture_hc_mean: float = 0.08
    texture_hc_sd: float = 0.022
    texture_ms_mean: float = 0.16
    texture_ms_loading: float = 0.036
    texture_ms_sd: float = 0.042
    texture_corr_mm: float = 2.0
    # contrast
    t1_intensity: dict = field(default_factory=lambda: {
        "csf": 0.25, "gm": 0.62, "wm": 1.0, "thalamus": 0.84, "caudate": 0.74, "putamen": 0.78,
        "pallidum": 0.90})
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
    center_clinical: dict = field(default_factory=dict)
    # EDSS
    edss_weights: dict = field(default_factory=lambda: {
        "lesion_load": 0.25, "thalamus_volume": -0.40, "texture_amplitude": 0.40, "age": 0.30,
        "sp_course": 0.70})
    edss_noise_sd: float = 1.0
    edss_offset: float = 0.0
    edss_map_center: float = -0.85
    edss_map_slope: float = 0.9
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


def _check_fractions(name: str, value: Any, keys: tuple[str, ...] | None = None) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"'{name}' must be a non-empty dict; got {value!r}")
    if keys is not None and set(value) - set(keys):
        raise ValueError(f"'{name}' keys must be among {list(keys)}; got {sorted(value)}")
    if any(not 0.0 <= float(v) <= 1.0 for v in value.values()):
        raise ValueError(f"'{name}' values must be in [0, 1]; got {value!r}")
    if not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"'{name}' must sum to 1; got {sum(value.values())!r}")


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
    if p.size_factor <= 0:
        raise ValueError(f"'size_factor' must be > 0; got {p.size_factor!r}")
    for name in ("second_visit_fraction", "female_fraction_ms", "female_fraction_hc"):
        v = getattr(p, name)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"'{name}' must be in [0, 1]; got {v!r}")
    for name in ("thickness_sd_mm", "thickness_local_sd_mm", "regional_sd", "fine_texture_log_sd",
                 "lesion_irregularity", "lesion_heterogeneity", "punctate_rate",
                 "sulcal_rate", "flow_rate", "edss_noise_sd"):
        if not getattr(p, name) >= 0:
            raise ValueError(f"'{name}' must be >= 0; got {getattr(p, name)!r}")
    for name in ("thickness_spacing_mm", "regional_spacing_mm", "fine_texture_corr_mm", "texture_corr_mm",
                 "lesion_edge_mm", "tissue_edge_mm", "lesion_mean_size_ml"):
        if not getattr(p, name) > 0:
            raise ValueError(f"'{name}' must be > 0; got {getattr(p, name)!r}")
    _check_fractions("course_probs", p.course_probs, COURSES)
    _check_fractions("lesion_kinds", p.lesion_kinds, LESION_KINDS)
    if set(p.edss_weights) != set(EDSS_DRIVERS):
        raise ValueError(f"'edss_weights' keys must be {list(EDSS_DRIVERS)}; got {sorted(p.edss_weights)}")
    for name in ("t1_intensity", "flair_intensity"):
        if set(getattr(p, name)) != set(TISSUE_KEYS):
            raise ValueError(f"'{name}' keys must be {list(TISSUE_KEYS)}; got {sorted(getattr(p, name))}")
    if set(p.tissue_gain_sd) != {"csf", "gm", "wm", "deep"}:
        raise ValueError(f"'tissue_gain_sd' keys must be ['csf', 'gm', 'wm', 'deep']; got {sorted(p.tissue_gain_sd)}")
    if set(p.fine_texture) != {"gm", "wm"}:
        raise ValueError(f"'fine_texture' keys must be ['gm', 'wm']; got {sorted(p.fine_texture)}")
    kinds = sorted(LOOKALIKE_KINDS.values())
    for name in ("lookalike_flair_contrast", "lookalike_t1_contrast"):
        if sorted(getattr(p, name)) != kinds:
            raise ValueError(f"'{name}' keys must be {kinds}; got {sorted(getattr(p, name))}")
    lo, hi = p.confluent_blobs
    if int(lo) != lo or int(hi) != hi or not 1 <= lo <= hi:
        raise ValueError(f"'confluent_blobs' must be integers 1 <= min <= max; got {p.confluent_blobs!r}")
    for name in ("ovoid_aspect_range", "lesion_aspect_range"):
        a, b = getattr(p, name)
        if not 0.0 < a <= b <= 1.0:
            raise ValueError(f"'{name}' must satisfy 0 < min <= max <= 1; got {getattr(p, name)!r}")
    for center, over in p.center_clinical.items():
        if center not in p.centers:
            raise ValueError(f"'center_clinical' center {center!r} has no entry in 'centers' {sorted(p.centers)}")
        unknown = sorted(set(over) - set(CENTER_CLINICAL_FIELDS))
        if unknown:
            raise ValueError(f"'center_clinical[{center!r}]' fields must be among {list(CENTER_CLINICAL_FIELDS)}; "
                             f"got {unknown}")
        if "course_probs" in over:
            _check_fractions(f"center_clinical[{center!r}]['course_probs']", over["course_probs"], COURSES)
    if p.max_lesions < 1 or p.min_per_cell < 0 or p.reference_n < 100:
        raise ValueError("'max_lesions' must be >= 1, 'min_per_cell' >= 0 and 'reference_n' >= 100")


def for_center(params: SynthParams, center: str | None) -> SynthParams:
    """``params`` with a center's clinical overrides (``center_clinical``) applied."""
    over = params.center_clinical.get(center) if center is not None else None
    if not over:
        return params
    return params.replace(**over)


def _presets() -> dict[str, SynthParams]:
    loco = dict(design="loco")
    # seed 001, Table 1: site 1 (n = 500) age 37.5 (10.9), 69.8 % F, 14.4 % SP, DD 9.3 (8.1),
    # EDSS 2.5 (2.0-4.0), TLV 10.6 (13.4) ml; site 2 (n = 104) age 38.3 (9.8), 76.9 % F, 19.2 % SP,
    # DD 9.2 (8.5), EDSS 2.0 (1.5-4.0), TLV 7.2 (8.6) ml.
    edss = dict(
        design="edss",
        counts={"site1": {"MS": 500}, "site2": {"MS": 104}},
        centers=edss_centers(),
        course_probs={"RR": 0.856, "SP": 0.144},
        age_ms_mean=36.3, age_ms_sd=10.9, female_fraction_ms=0.70,
        duration_mean={"RR": 8.0, "SP": 16.0, "PP": 8.0, "CIS": 0.8},
        center_clinical={
            "site2": {"course_probs": {"RR": 0.808, "SP": 0.192}, "age_ms_mean": 36.9, "age_ms_sd": 9.8,
                      "female_fraction_ms": 0.77, "lesion_volume_median_ml": 5.1, "edss_offset": -0.35},
        },
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
