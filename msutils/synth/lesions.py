"""MS white-matter lesions of the synthetic cohort (template space).

A patient's designed total lesion volume ``V`` (:mod:`msutils.synth.clinical`)
is split into ``count`` lesions with log-normal sizes. Each lesion has a kind
(``SynthParams.lesion_kinds``, :data:`msutils.synth.params.LESION_KINDS`):

``periventricular``
    Confluent: 2-5 blobs (``confluent_blobs``) chained along the ventricle
    wall, each flattened towards the ventricle, merging into a band.
``ovoid``
    An ellipsoid centred near the ventricles whose long axis points away from
    them (the gradient of the ventricle distance map): Dawson's fingers,
    minor / major axis ratio in ``ovoid_aspect_range``.
``deep``
    A randomly oriented ellipsoid in deep white matter.
``juxtacortical``
    A randomly oriented ellipsoid touching the cortex; it may extend into GM.
``infratentorial``
    A smaller (x 0.6 volume) ellipsoid in brainstem / cerebellar white matter.

Every blob's border is irregular: its radius varies with direction by
``1 + lesion_irregularity * g``, ``g`` a unit-SD sum of six random bumps on the
sphere (a lobulated, star-shaped border that never fragments), and the soft
edge has width ``lesion_edge_mm``. The intensity is heterogeneous: a lesion's FLAIR contrast
``c ~ N(lesion_flair_contrast, lesion_flair_contrast_sd)`` is multiplied at
normalised radius ``d`` by ``1 + h (d - 0.5)`` (``h ~ U(-1, 1) x
lesion_heterogeneity``: a brighter rim for h > 0, a brighter core for h < 0)
and a fine texture (SD 0.1); its T1 hypointensity ``N(lesion_t1_contrast,
lesion_t1_contrast_sd)`` is deepest in the core (``1 + 0.3 (0.5 - d)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from msutils.synth import anatomy
from msutils.synth.params import LESION_KINDS, SynthParams

__all__ = ["LesionMaps", "render_lesions", "random_rotation"]

_SMALL_INFRATENTORIAL = 0.6
_N_BUMPS = 6
_BUMP_KAPPA = 4.0


@dataclass
class LesionMaps:
    """Template-space lesion maps of one subject.

    Attributes
    ----------
    fraction : ndarray of float32
        Lesion partial-volume fraction (max over lesions).
    flair_contrast, t1_contrast : ndarray of float32
        Per-voxel FLAIR / T1 contrast of the lesion with the largest fraction.
    cortical : ndarray of bool
        Voxels whose lesion may replace GM too (juxtacortical, infratentorial).
    counts : dict of str to int
        Lesions placed per kind.
    sizes_ml : list of float
        Designed (template-space) volume of each lesion.
    """

    fraction: np.ndarray
    flair_contrast: np.ndarray
    t1_contrast: np.ndarray
    cortical: np.ndarray
    counts: dict[str, int]
    sizes_ml: list[float]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (columns = rotated axes)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _frame(major: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation whose first column is ``major`` (unit), the others random around it."""
    a = major / (np.linalg.norm(major) or 1.0)
    t = rng.standard_normal(3)
    t -= a * float(t @ a)
    t /= np.linalg.norm(t) or 1.0
    return np.column_stack([a, t, np.cross(a, t)])


def _blob(atlas: anatomy.Atlas, params: SynthParams, maps: dict[str, np.ndarray], center: np.ndarray,
          radii_mm: np.ndarray, rot: np.ndarray, c_fl: float, c_t1: float, h: float, cortical: bool,
          rng: np.random.Generator) -> None:
    """Render one irregular, heterogeneous ellipsoidal blob into ``maps`` (max rule)."""
    res = atlas.resolution
    r_geo = float(np.prod(radii_mm) ** (1.0 / 3.0))
    edge = params.lesion_edge_mm
    ext = (radii_mm.max() * (1.0 + params.lesion_irregularity) + 3.0 * edge) / res + 1.0
    lo = np.maximum(np.floor(center - ext).astype(int), 0)
    hi = np.minimum(np.ceil(center + ext).astype(int) + 1, atlas.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"))
    rel = (grid - center.reshape(3, 1, 1, 1)) * res
    loc = np.tensordot(rot.T, rel, axes=1) / radii_mm.reshape(3, 1, 1, 1)
    d = np.sqrt((loc**2).sum(0))
    shape = d.shape
    if params.lesion_irregularity > 0:
        # star-shaped lobulation: the radius varies with direction only (never fragments)
        direction = loc / np.maximum(d, 1e-6)
        bumps = rng.standard_normal((_N_BUMPS, 3))
        bumps /= np.linalg.norm(bumps, axis=1, keepdims=True)
        weights = rng.standard_normal(_N_BUMPS)
        g = np.tensordot(weights, np.exp(_BUMP_KAPPA * (np.tensordot(bumps, direction, axes=1) - 1.0)), axes=1)
        g = (g - g.mean()) / (g.std() or 1.0)
        d = d / np.maximum(1.0 + params.lesion_irregularity * g, 0.4)
    f = 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * r_geo / edge, -50, 50)))
    dd = np.clip(d, 0.0, 1.0)
    het = (1.0 + h * (dd - 0.5) + 0.1 * rng.standard_normal(shape)) * c_fl
    t1c = c_t1 * (1.0 + 0.3 * (0.5 - dd))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    cur = maps["fraction"][box]
    win = f > cur
    maps["fraction"][box] = np.where(win, f, cur).astype(np.float32)
    maps["flair"][box] = np.where(win, het, maps["flair"][box]).astype(np.float32)
    maps["t1"][box] = np.where(win, t1c, maps["t1"][box]).astype(np.float32)
    if cortical:
        maps["cortical"][box] |= win & (f > 0.01)


def _centre(atlas: anatomy.Atlas, zone: str, rng: np.random.Generator) -> np.ndarray:
    z = atlas.lesion_zones[zone]
    c = np.asarray(np.unravel_index(int(z[rng.integers(z.size)]), atlas.shape), float)
    return c + rng.uniform(-0.5, 0.5, 3)


def render_lesions(atlas: anatomy.Atlas, params: SynthParams, subj: Mapping[str, Any],
                   rng: np.random.Generator) -> LesionMaps:
    """Template-space lesion maps of one subject (see the module docstring).

    Parameters
    ----------
    atlas : Atlas
        Template atlas.
    params : SynthParams
        Generator parameters.
    subj : mapping
        Subject design values: ``lesion_count``, ``lesion_volume_design_ml``
        (subject space) and ``head_scale``.
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    LesionMaps
    """
    shape = atlas.shape
    maps = {"fraction": np.zeros(shape, np.float32), "flair": np.zeros(shape, np.float32),
            "t1": np.zeros(shape, np.float32), "cortical": np.zeros(shape, bool)}
    counts = {k: 0 for k in LESION_KINDS}
    n = int(subj["lesion_count"])
    if n <= 0:
        return LesionMaps(maps["fraction"], maps["flair"], maps["t1"], maps["cortical"], counts, [])
    kinds_p = np.asarray([params.lesion_kinds.get(k, 0.0) for k in LESION_KINDS])
    kinds = rng.choice(len(LESION_KINDS), size=n, p=kinds_p / kinds_p.sum())
    sizes = rng.lognormal(0.0, params.lesion_size_log_sd, n)
    sizes = np.where(kinds == LESION_KINDS.index("infratentorial"), _SMALL_INFRATENTORIAL * sizes, sizes)
    # design volume is in subject space: undo the head-size scaling applied by the warp
    sizes = sizes / sizes.sum() * float(subj["lesion_volume_design_ml"]) / float(subj["head_scale"]) ** 3
    lo_a, hi_a = params.lesion_aspect_range
    ov_lo, ov_hi = params.ovoid_aspect_range
    b_lo, b_hi = params.confluent_blobs
    res = atlas.resolution
    for k in range(n):
        kind = LESION_KINDS[int(kinds[k])]
        counts[kind] += 1
        c_fl = max(0.2, rng.normal(params.lesion_flair_contrast, params.lesion_flair_contrast_sd))
        c_t1 = float(np.clip(rng.normal(params.lesion_t1_contrast, params.lesion_t1_contrast_sd), 0.02, 0.8))
        h = float(rng.uniform(-1.0, 1.0) * params.lesion_heterogeneity)
        r_geo = (3.0 * sizes[k] * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        if kind == "periventricular":
            n_blobs = int(rng.integers(b_lo, b_hi + 1))
            r_b = r_geo / n_blobs ** (1.0 / 3.0)
            c = _centre(atlas, "periventricular", rng)
            step = rng.standard_normal(3)
            for _ in range(n_blobs):
                normal = anatomy.ventricle_normal(atlas, c)
                rot = _frame(normal, rng)
                flat = rng.uniform(0.5, 0.8)
                radii = r_b * np.array([flat, 1.0, 1.0]) / flat ** (1.0 / 3.0)
                _blob(atlas, params, maps, c, radii, rot, c_fl, c_t1, h, False, rng)
                # next blob: a tangential step along the ventricle wall
                step = step + 0.5 * rng.standard_normal(3)
                step -= normal * float(step @ normal)
                step /= np.linalg.norm(step) or 1.0
                c = np.clip(c + step * 0.9 * r_b / res, 0, np.asarray(shape) - 1)
            continue
        if kind == "ovoid":
            c = _centre(atlas, "periventricular", rng)
            ratio = rng.uniform(ov_lo, ov_hi, 2)
            rot = _frame(anatomy.ventricle_normal(atlas, c), rng)
        else:
            c = _centre(atlas, kind, rng)
            ratio = rng.uniform(lo_a, hi_a, 2)
            rot = random_rotation(rng)
        aspect = np.array([1.0, ratio[0], ratio[1]])
        radii = r_geo * aspect / np.prod(aspect) ** (1.0 / 3.0)
        _blob(atlas, params, maps, c, radii, rot, c_fl, c_t1, h, kind in ("juxtacortical", "infratentorial"), rng)
    return LesionMaps(maps["fraction"], maps["flair"], maps["t1"], maps["cortical"], counts,
                      [float(s) for s in sizes])
