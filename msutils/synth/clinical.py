"""Clinical model of the synthetic cohort: demographics, disease course, severity and EDSS.

Per subject (:func:`simulate_clinical`): age, sex, course, disease duration, a
latent severity ``s ~ N(0, 1) + course shift + duration slope`` and what it
drives (designed lesion volume and count, deep-GM atrophy, deep-GM texture
amplitude), head size and natural deep-GM volume factors. A center's
population may differ (``SynthParams.center_clinical``, :func:`msutils.synth.params.for_center`).

EDSS (:func:`edss_reference`, :func:`edss_from_latent`): latent = sum of
``edss_weights`` x standardized drivers (:data:`msutils.synth.params.EDSS_DRIVERS`)
+ N(0, ``edss_noise_sd``) + the center's rating offset; standardized with
reference statistics and mapped monotonically to 0..9.5 with
``9.5 * expit(edss_map_center + edss_map_slope * u)``, rounded to 0.5 steps.
The reference simulation also measures the calibration numbers the sidecar
records: the Spearman correlation of every driver with EDSS (lesion load - EDSS
0.25-0.45, the clinico-radiological paradox), the information each driver
adds (increase of R^2 when it joins the others) and the ceiling (Pearson r of
observed EDSS with its noise-free value).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

from msutils.core.serialize import round_floats
from msutils.synth.params import EDSS_DRIVERS, SynthParams, for_center, params_hash

__all__ = [
    "SIDECAR_SIGNIFICANT_DIGITS",
    "simulate_clinical",
    "drivers",
    "latent",
    "edss_from_latent",
    "observe_edss",
    "edss_reference",
    "spearman",
    "pearson",
    "incremental_r2",
]

SIDECAR_SIGNIFICANT_DIGITS = 12
"""Precision of the derived floats the generator computes and records (means, SDs, correlations)."""


def simulate_clinical(params: SynthParams, n: int, group: str, rng: np.random.Generator,
                      center: str | None = None) -> dict[str, np.ndarray]:
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
    center : str, optional
        Apply this center's clinical overrides (``params.center_clinical``).

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
    p = for_center(params, center)
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


def drivers(clin: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The EDSS driver values (:data:`EDSS_DRIVERS`) of simulated subjects."""
    return {
        "lesion_load": np.log(np.asarray(clin["lesion_volume_design_ml"], float) + 0.1),
        "thalamus_volume": np.asarray(clin["thalamus_volume_factor"], float),
        "texture_amplitude": np.asarray(clin["texture_amplitude"], float),
        "age": np.asarray(clin["age"], float),
        "sp_course": (np.asarray(clin["course"]) == "SP").astype(float),
    }


def latent(driver_values: Mapping[str, np.ndarray], ref: Mapping[str, Any],
           weights: Mapping[str, float]) -> np.ndarray:
    """Noise-free EDSS latent: sum of weights x standardized drivers."""
    std = ref["standardization"]
    return sum(weights[k] * (driver_values[k] - std[k]["mean"]) / std[k]["sd"] for k in EDSS_DRIVERS)


def edss_from_latent(value: np.ndarray, ref: Mapping[str, Any]) -> np.ndarray:
    """Map an EDSS latent to the EDSS scale (0..9.5, 0.5 steps) as the generator does.

    ``u = (latent - ref["latent_mean"]) / ref["latent_sd"]``;
    ``edss = round_half(9.5 * expit(ref["map_center"] + ref["map_slope"] * u))``.
    """
    u = (np.asarray(value, float) - ref["latent_mean"]) / ref["latent_sd"]
    z = ref["map_center"] + ref["map_slope"] * u
    cont = 9.5 / (1.0 + np.exp(-z))
    return np.clip(np.round(cont * 2.0) / 2.0, 0.0, 9.5)


def observe_edss(noise_free_latent: np.ndarray, ref: Mapping[str, Any], noise_sd: float, offset: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Observed EDSS: latent + N(0, ``noise_sd``) + ``offset`` x latent SD, mapped to the scale."""
    lat = np.asarray(noise_free_latent, float)
    noisy = lat + noise_sd * rng.standard_normal(lat.shape) + float(offset) * ref["latent_sd"]
    return edss_from_latent(noisy, ref)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN for fewer than 3 values or a constant input."""
    from scipy import stats

    xv, yv = np.asarray(x, float), np.asarray(y, float)
    if xv.size < 3 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return float("nan")
    return float(stats.spearmanr(xv, yv).statistic)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN for fewer than 3 values or a constant input (no division warning)."""
    xv, yv = np.asarray(x, float), np.asarray(y, float)
    if xv.size < 3 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return float("nan")
    return float(np.corrcoef(xv, yv)[0, 1])


def incremental_r2(X: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Increase of the OLS R^2 of ``y`` when each column of ``X`` joins all the others.

    Parameters
    ----------
    X : mapping of str to ndarray
        Predictors (equal lengths).
    y : ndarray
        Outcome.

    Returns
    -------
    dict of str to float
        ``R^2(all) - R^2(all but k)`` per predictor ``k`` (> 0: it adds information).
    """
    names = list(X)
    yv = np.asarray(y, float)

    def r2(cols: list[str]) -> float:
        A = np.column_stack([np.ones(yv.size)] + [np.asarray(X[c], float) for c in cols])
        beta, *_ = np.linalg.lstsq(A, yv, rcond=None)
        resid = yv - A @ beta
        return 1.0 - float(resid @ resid) / float(((yv - yv.mean()) ** 2).sum())

    full = r2(names)
    return {k: full - r2([c for c in names if c != k]) for k in names}


_REF_CACHE: dict[str, dict[str, Any]] = {}


def edss_reference(params: SynthParams) -> dict[str, Any]:
    """Reference statistics and calibration numbers of the EDSS model (deterministic, cached).

    Simulates ``params.reference_n`` MS patients' clinical values with
    ``params.reference_seed`` (no center overrides) and returns what the
    sidecar records under ``synthetic.ground_truth.edss``: driver names,
    weights, per-driver standardization (mean, sd), noise SD, latent mean /
    total SD, mapping constants and the calibration numbers: ``ceiling_r``
    (Pearson r of observed EDSS with the noise-free latent mapped the same
    way), ``driver_edss_r`` (Pearson) and ``driver_edss_spearman`` of every
    driver with observed EDSS, ``driver_incremental_r2`` (increase of the R^2
    of a linear model of EDSS when the driver joins the others), EDSS median /
    IQR overall and per course.
    """
    key = params_hash(params)
    if key in _REF_CACHE:
        return json.loads(json.dumps(_REF_CACHE[key]))
    rng = np.random.default_rng(params.reference_seed)
    clin = simulate_clinical(params, params.reference_n, "MS", rng)
    drv = drivers(clin)
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
    lat = latent(drv, ref, params.edss_weights)
    ref["latent_mean"] = round_floats(float(np.mean(lat)), SIDECAR_SIGNIFICANT_DIGITS)
    ref["latent_sd"] = round_floats(float(math.sqrt(np.var(lat) + params.edss_noise_sd**2)),
                                    SIDECAR_SIGNIFICANT_DIGITS)
    ref["map_center"] = float(params.edss_map_center)
    ref["map_slope"] = float(params.edss_map_slope)
    ref["mapping"] = ("edss = clip(round(2 * 9.5 * expit(map_center + map_slope * "
                      "(latent - latent_mean) / latent_sd)) / 2, 0, 9.5); latent = gt_edss_latent + "
                      "N(0, noise_sd) + edss_offset of the center x latent_sd")
    edss = observe_edss(lat, ref, params.edss_noise_sd, params.edss_offset, rng)
    ceiling = edss_from_latent(lat, ref)
    ref["ceiling_r"] = float(np.corrcoef(edss, ceiling)[0, 1])
    ref["ceiling_r2"] = float(ref["ceiling_r"] ** 2)
    ref["reference_n"] = int(params.reference_n)
    ref["driver_edss_r"] = {k: float(np.corrcoef(drv[k], edss)[0, 1]) for k in EDSS_DRIVERS}
    ref["driver_edss_spearman"] = {k: spearman(drv[k], edss) for k in EDSS_DRIVERS}
    ref["driver_incremental_r2"] = incremental_r2(drv, edss)
    q = np.percentile(edss, [25, 50, 75])
    ref["edss_median_iqr"] = [float(q[1]), float(q[0]), float(q[2])]
    courses = np.asarray(clin["course"])
    ref["edss_median_by_course"] = {
        c: float(np.median(edss[courses == c])) for c in params.course_probs if (courses == c).any()
    }
    ref["sp_fraction"] = float((courses == "SP").mean())
    # Derived floats at 12 significant digits (the sidecar's documented precision): the
    # last bits of means / correlations differ between CPUs, and generation uses these values.
    ref = round_floats(ref, SIDECAR_SIGNIFICANT_DIGITS)
    _REF_CACHE[key] = ref
    return json.loads(json.dumps(ref))
