"""FLAIR lesion look-alikes: hyperintensities that are not MS lesions (template space).

Every subject, healthy control or patient, gets them; they are recorded in the
truth (the kind map ``gt_lookalike_labels`` with the codes of
:data:`msutils.synth.params.LOOKALIKE_KINDS` and per-kind counts) and are never
part of the truth lesion mask. A rater may mark some of them as lesions
(:mod:`msutils.synth.raters`), and an intensity threshold on FLAIR finds them.

``periventricular_cap`` (code 1)
    A flattened cap (4-6 mm wide, 2-3 mm thick) at each of the four ventricular
    horn tips with probability ``expit(cap_logit + cap_age_slope (age - 50))``,
    and a thin band lining the ventricle bodies (patchy, ~2 mm) with
    probability ``expit(band_logit + cap_age_slope (age - 50))``: common in
    normal ageing. White matter there reaches ``WM x (1 + c)`` on FLAIR.
``punctate_wmh`` (code 2)
    Small round WM hyperintensities (radius 1-2.5 mm) in deep and subcortical
    WM, ``Poisson(punctate_rate exp(punctate_age_slope (age - 40)))``: they
    increase with age, also in controls (small-vessel disease).
``sulcal_hyperintensity`` (code 3)
    Incompletely suppressed CSF in a sulcus next to the cortex (a patch of
    sulcal CSF within 6-12 mm of a centre), ``Poisson(sulcal_rate x the
    center's artefact_rate)``; the CSF there reaches ``GM x (1 + c)``.
``flow_artefact`` (code 4)
    CSF inflow / pulsation artefacts: bright blobs (2-4 mm, elongated
    anterior-posterior) in the ventricles and midline cisterns,
    ``Poisson(flow_rate x artefact_rate)``; the CSF reaches ``WM x (1 + c)``.

Contrasts ``c`` per kind: ``SynthParams.lookalike_flair_contrast`` (T1:
``lookalike_t1_contrast``, WM kinds only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from msutils.synth import anatomy
from msutils.synth.centers import CenterEffects
from msutils.synth.lesions import random_rotation
from msutils.synth.params import LOOKALIKE_KINDS, SynthParams

__all__ = ["LookalikeMaps", "WM_KINDS", "CSF_KINDS", "render_lookalikes", "expected_counts"]

WM_KINDS: tuple[int, ...] = (1, 2)
"""Look-alike codes that modify white matter (caps / bands, punctate WMH)."""
CSF_KINDS: tuple[int, ...] = (3, 4)
"""Look-alike codes that modify CSF (sulcal hyperintensities, flow artefacts)."""


@dataclass
class LookalikeMaps:
    """Template-space look-alike maps of one subject.

    Attributes
    ----------
    fraction : ndarray of float32
        Strength in [0, 1] of the look-alike with the largest strength.
    kind : ndarray of uint8
        Its code (:data:`LOOKALIKE_KINDS`; 0 = none).
    counts : dict of str to int
        Look-alikes placed per kind name.
    """

    fraction: np.ndarray
    kind: np.ndarray
    counts: dict[str, int]


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def expected_counts(params: SynthParams, age: float, artefact_rate: float = 1.0) -> dict[str, float]:
    """Expected number of look-alikes of each kind for a subject of ``age`` years.

    Caps count the four horn caps plus the band (one instance when present).
    """
    a = float(age)
    p_cap = _expit(params.cap_logit + params.cap_age_slope * (a - 50.0))
    p_band = _expit(params.band_logit + params.cap_age_slope * (a - 50.0))
    return {
        "periventricular_cap": 4.0 * p_cap + p_band,
        "punctate_wmh": params.punctate_rate * math.exp(params.punctate_age_slope * (a - 40.0)),
        "sulcal_hyperintensity": params.sulcal_rate * artefact_rate,
        "flow_artefact": params.flow_rate * artefact_rate,
    }


def _put(maps: dict[str, np.ndarray], atlas: anatomy.Atlas, code: int, center: np.ndarray, radii_mm: np.ndarray,
         rot: np.ndarray, restrict: np.ndarray | None = None) -> None:
    """Soft ellipsoid of strength 1 inside (edge 0.7 mm), written with the max rule."""
    res = atlas.resolution
    ext = radii_mm.max() / res + 2.0
    lo = np.maximum(np.floor(center - ext).astype(int), 0)
    hi = np.minimum(np.ceil(center + ext).astype(int) + 1, atlas.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"))
    rel = (grid - center.reshape(3, 1, 1, 1)) * res
    loc = np.tensordot(rot.T, rel, axes=1) / radii_mm.reshape(3, 1, 1, 1)
    d = np.sqrt((loc**2).sum(0))
    r = float(np.prod(radii_mm) ** (1.0 / 3.0))
    f = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * r / 0.7, -50, 50)))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    if restrict is not None:
        f = f * restrict[box]
    cur = maps["fraction"][box]
    win = f > cur
    maps["fraction"][box] = np.where(win, f, cur).astype(np.float32)
    maps["kind"][box] = np.where(win & (f > 0.05), code, maps["kind"][box]).astype(np.uint8)


def _pick(atlas: anatomy.Atlas, zone: str, rng: np.random.Generator) -> np.ndarray:
    z = atlas.lookalike_zones[zone]
    return np.asarray(np.unravel_index(int(z[rng.integers(z.size)]), atlas.shape), float) + rng.uniform(-0.5, 0.5, 3)


def render_lookalikes(atlas: anatomy.Atlas, params: SynthParams, subj: Mapping[str, Any], eff: CenterEffects,
                      rng: np.random.Generator) -> LookalikeMaps:
    """Template-space look-alike maps of one subject (see the module docstring).

    Parameters
    ----------
    atlas : Atlas
        Template atlas.
    params : SynthParams
        Generator parameters.
    subj : mapping
        Subject design values (``age``).
    eff : CenterEffects
        The subject's center (``artefact_rate``).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    LookalikeMaps
    """
    shape = atlas.shape
    res = atlas.resolution
    maps = {"fraction": np.zeros(shape, np.float32), "kind": np.zeros(shape, np.uint8)}
    counts = {name: 0 for name in LOOKALIKE_KINDS.values()}
    age = float(subj["age"])
    expect = expected_counts(params, age, eff.artefact_rate)
    not_csf = np.clip(atlas.wm + atlas.gm, 0.0, 1.0)
    inv = np.linalg.inv(atlas.affine)

    # caps at the horn tips, pushed 2 mm into the white matter
    p_cap = _expit(params.cap_logit + params.cap_age_slope * (age - 50.0))
    for tip_mm in atlas.horn_tips_mm:
        if rng.random() >= p_cap:
            continue
        vox = inv[:3, :3] @ tip_mm + inv[:3, 3]
        normal = anatomy.ventricle_normal(atlas, vox)
        centre = vox + normal * 2.0 / res
        width = rng.uniform(4.0, 6.0)
        radii = np.array([rng.uniform(2.0, 3.0), width, width])
        t = rng.standard_normal(3)
        t -= normal * float(t @ normal)
        t /= np.linalg.norm(t) or 1.0
        rot = np.column_stack([normal, t, np.cross(normal, t)])
        _put(maps, atlas, 1, centre, radii, rot, restrict=not_csf)
        counts["periventricular_cap"] += 1
    # the band: patchy thin lining of the ventricle bodies
    p_band = _expit(params.band_logit + params.cap_age_slope * (age - 50.0))
    if rng.random() < p_band:
        band = atlas.lookalike_zones["band"]
        patches = anatomy.smooth_field(shape, res, 15.0, rng).reshape(-1)[band] > 0.0
        strength = np.exp(-np.maximum(atlas.ventricle_dist.reshape(-1)[band] - res, 0.0) / 1.5)
        f = np.where(patches, strength * not_csf.reshape(-1)[band], 0.0).astype(np.float32)
        flat_f = maps["fraction"].reshape(-1)
        flat_k = maps["kind"].reshape(-1)
        win = f > flat_f[band]
        flat_f[band[win]] = f[win]
        flat_k[band[win & (f > 0.05)]] = 1
        counts["periventricular_cap"] += 1
    # punctate WM hyperintensities
    n_punct = int(rng.poisson(expect["punctate_wmh"]))
    for _ in range(n_punct):
        r = float(np.exp(rng.uniform(math.log(1.0), math.log(2.5))))
        radii = r * rng.uniform(0.8, 1.2, 3)
        _put(maps, atlas, 2, _pick(atlas, "punctate", rng), radii, random_rotation(rng), restrict=not_csf)
        counts["punctate_wmh"] += 1
    # sulcal / cortical hyperintensities: a patch of sulcal CSF
    sulcal_zone = np.zeros(shape, np.float32)
    sulcal_zone.reshape(-1)[atlas.lookalike_zones["sulcal"]] = 1.0
    n_sulc = int(rng.poisson(expect["sulcal_hyperintensity"]))
    for _ in range(n_sulc):
        radius = rng.uniform(6.0, 12.0)
        _put(maps, atlas, 3, _pick(atlas, "sulcal", rng), np.full(3, radius), np.eye(3), restrict=sulcal_zone)
        counts["sulcal_hyperintensity"] += 1
    # flow artefacts in the ventricles / midline cisterns, elongated anterior-posterior
    csf_zone = np.zeros(shape, np.float32)
    csf_zone.reshape(-1)[atlas.lookalike_zones["flow"]] = 1.0
    csf_zone = ndimage.maximum_filter(csf_zone, size=3)
    n_flow = int(rng.poisson(expect["flow_artefact"]))
    for _ in range(n_flow):
        r = rng.uniform(2.0, 4.0)
        radii = np.array([0.6 * r, 1.6 * r, 0.8 * r])
        _put(maps, atlas, 4, _pick(atlas, "flow", rng), radii, np.eye(3), restrict=csf_zone)
        counts["flow_artefact"] += 1
    return LookalikeMaps(maps["fraction"], maps["kind"], counts)
