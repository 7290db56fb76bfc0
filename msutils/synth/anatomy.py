"""Template-space anatomy for the synthetic cohort: tissue maps, ROI atlas, warps.

Everything here is built offline from the MNI152 2009c (symmetric) templates that
nilearn ships inside its package (T1, grey matter, white matter; the brain mask is
the T1 template thresholded by nilearn). No file is downloaded.

The atlas (:func:`load_atlas`) holds, on the template grid cropped to the brain
bounding box plus a margin:

- tissue probability maps ``gm``, ``wm`` and ``csf`` (CSF = brain mask minus GM
  minus WM, clipped to [0, 1]; template GM within 5 mm of a deep-GM ellipsoid is
  moved to WM so that deep GM is exactly the ellipsoids);
- an ROI label map following the study-book convention: 1/2 thalamus L/R,
  3/4 caudate, 5/6 putamen, 7/8 pallidum, 9 whole white matter, 101..100+K
  cortical GM parcels (``gm_001``...), 0 background / CSF;
- the lateral-ventricle region and the candidate zones where the generator
  places lesions (periventricular, juxtacortical, deep and infratentorial WM) and
  lesion look-alikes (ventricle horns and lining, deep WM, sulcal CSF, CSF flow).

Deep grey-matter nuclei are **approximate ellipsoids** at standard MNI
coordinates (:data:`DEEP_GM`): no subcortical atlas ships offline with nilearn,
so they are a geometric stand-in, good enough for volumes and texture but not
anatomically exact. Cortical parcels are a deterministic k-means of the
left-hemisphere GM voxel coordinates, mirrored onto the right hemisphere (the
template is symmetric), so ``gm_00i`` and ``gm_00(i+K/2)`` are homologous.

Subject anatomy is produced by :func:`random_deformation` (a smooth cubic
B-spline displacement field of a few mm plus an isotropic head-size scaling)
and :func:`warp` (``scipy.ndimage.map_coordinates``; linear for intensities and
probabilities, nearest for labels).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage

__all__ = [
    "DeepStructure",
    "DEEP_GM",
    "WM_LABEL",
    "PARCEL_OFFSET",
    "N_PARCELS",
    "Atlas",
    "load_atlas",
    "label_table",
    "roi_sets",
    "deep_gm_membership",
    "smooth_field",
    "random_deformation",
    "warp",
    "warp_box",
    "subject_point",
    "ventricle_normal",
]

logger = logging.getLogger(__name__)

WM_LABEL = 9
"""Label value of the whole white matter (lesion voxels keep this label)."""

PARCEL_OFFSET = 100
"""Cortical GM parcel ``i`` (1-based) has label ``PARCEL_OFFSET + i``."""

N_PARCELS = 48
"""Default number of cortical GM parcels (24 per hemisphere)."""

_MARGIN_MM = 8.0
_BSPLINE_SD = (151.0 / 315.0) ** 1.5  # sd of a cubic B-spline field with N(0, 1) coefficients


@dataclass(frozen=True)
class DeepStructure:
    """An approximate deep grey-matter nucleus: an axis-aligned ellipsoid.

    Attributes
    ----------
    label : int
        ROI label value (1..8).
    name : str
        ROI name, e.g. ``"thalamus_L"``.
    center_mm : tuple of float
        Centre in MNI152 world coordinates (RAS+, mm; x < 0 is the left hemisphere).
    radii_mm : tuple of float
        Semi-axes along x, y, z in mm (template space).
    """

    label: int
    name: str
    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]


def _pair(label: int, name: str, center: tuple[float, float, float], radii: tuple[float, float, float]):
    x, y, z = center
    return (
        DeepStructure(label, f"{name}_L", (-abs(x), y, z), radii),
        DeepStructure(label + 1, f"{name}_R", (abs(x), y, z), radii),
    )


DEEP_GM: tuple[DeepStructure, ...] = (
    *_pair(1, "thalamus", (11.0, -18.0, 7.0), (9.8, 16.9, 11.1)),
    *_pair(3, "caudate", (13.0, 12.0, 10.0), (6.1, 12.2, 10.8)),
    *_pair(5, "putamen", (25.0, 2.0, 0.0), (6.9, 17.5, 10.6)),
    *_pair(7, "pallidum", (19.0, -4.0, -1.0), (5.6, 11.2, 7.2)),
)
"""The eight deep-GM ellipsoids (approximate, standard MNI coordinates).

Their radii give adult volumes per hemisphere in the 1 mm template (where
neighbours overlap, a voxel goes to the nearer ellipsoid): thalamus 7.5 ml,
caudate 3.4 ml, putamen 4.9 ml, pallidum 1.4 ml, within the ranges of adult
FreeSurfer norms (about 7-8, 3.5, 5 and 1.5-2 ml).
"""


def label_table(n_parcels: int = N_PARCELS) -> dict[int, str]:
    """Label value -> name of the synthetic ROI label maps.

    Parameters
    ----------
    n_parcels : int
        Number of cortical GM parcels.

    Returns
    -------
    dict of int to str
        ``{1: "thalamus_L", ..., 9: "whole_wm", 101: "gm_001", ...}``.
    """
    table = {s.label: s.name for s in DEEP_GM}
    table[WM_LABEL] = "whole_wm"
    for i in range(1, n_parcels + 1):
        table[PARCEL_OFFSET + i] = f"gm_{i:03d}"
    return table


def roi_sets(n_parcels: int = N_PARCELS) -> dict[str, list[int]]:
    """Named ROIs as unions of label values (the ten seed-000 ROIs + every parcel).

    Parameters
    ----------
    n_parcels : int
        Number of cortical GM parcels.

    Returns
    -------
    dict of str to list of int
        ``thalamus_L`` .. ``pallidum_R``, ``whole_wm`` ([9]), ``whole_gm`` (all
        parcels) and ``gm_001`` ... (one per parcel).
    """
    sets: dict[str, list[int]] = {s.name: [s.label] for s in DEEP_GM}
    sets["whole_wm"] = [WM_LABEL]
    parcels = [PARCEL_OFFSET + i for i in range(1, n_parcels + 1)]
    sets["whole_gm"] = list(parcels)
    for i, lab in enumerate(parcels, start=1):
        sets[f"gm_{i:03d}"] = [lab]
    return sets


@dataclass(frozen=True, eq=False)
class Atlas:
    """Template-space anatomy on a cropped MNI152 grid (see module docstring).

    Attributes
    ----------
    resolution : float
        Isotropic voxel size in mm.
    affine : ndarray, shape (4, 4)
        Voxel -> MNI world (mm) of the cropped grid.
    gm, wm, csf : ndarray of float32
        Tissue probability maps (0 outside the brain mask).
    brain : ndarray of bool
        Template brain mask.
    labels : ndarray of int16
        Template ROI label map (label convention in the module docstring).
    parcels : ndarray of int16
        Cortical parcel label of every brain voxel (nearest k-means centroid of
        its hemisphere); used to label GM voxels after deformation.
    ventricles : ndarray of bool
        Lateral (and third) ventricle region: CSF near the brain centre.
    lesion_zones : dict of str to ndarray of int64
        Flat voxel indices of candidate lesion centres: ``"periventricular"``
        (WM within 8 mm of the ventricles), ``"juxtacortical"`` (WM within 5 mm
        of cortical GM, away from the ventricles), ``"deep"`` (other
        supratentorial WM) and ``"infratentorial"`` (brainstem and cerebellar
        WM: below z = -12 mm and behind y = -15 mm, near the midline).
    deep_box : tuple of slice
        Bounding box of the deep-GM ellipsoids (grown by 50 % + 10 mm), where
        the generator computes deep-GM membership per subject.
    center_vox : ndarray, shape (3,)
        Brain centroid in voxel coordinates (centre of the head-size scaling).
    n_parcels : int
        Number of cortical parcels K.
    ventricle_dist : ndarray of float32
        Distance (mm) to the ventricle region (its gradient points away from
        the ventricles: the orientation of ovoid lesions).
    wm_grad : ndarray of float32
        Magnitude of the gradient of the WM probability (per mm): moving the
        GM/WM boundary by ``d`` mm changes WM by about ``d * wm_grad``.
    lookalike_zones : dict of str to ndarray of int64
        Flat voxel indices where lesion look-alikes sit: ``"band"`` (WM lining
        the ventricles, within 3 mm), ``"punctate"`` (deep and subcortical WM),
        ``"sulcal"`` (CSF within 3 mm of cortical GM, outside the ventricles)
        and ``"flow"`` (ventricles and the CSF spaces at the midline below them).
    horn_tips_mm : ndarray, shape (4, 3)
        World positions (mm) of the ventricle's frontal and occipital horn tips
        (left frontal, right frontal, left occipital, right occipital), where
        periventricular caps sit.
    """

    resolution: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    parcels: np.ndarray
    ventricles: np.ndarray
    lesion_zones: Mapping[str, np.ndarray]
    deep_box: tuple[slice, slice, slice]
    center_vox: np.ndarray
    n_parcels: int
    ventricle_dist: np.ndarray
    wm_grad: np.ndarray
    lookalike_zones: Mapping[str, np.ndarray]
    horn_tips_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(n) for n in self.gm.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in ml."""
        return float(self.resolution) ** 3 / 1000.0

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name (see :func:`label_table`)."""
        return label_table(self.n_parcels)

    @property
    def roi_sets(self) -> dict[str, list[int]]:
        """Named ROI unions (see :func:`roi_sets`)."""
        return roi_sets(self.n_parcels)

    def world_coords(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """MNI world coordinates (mm) of the grid (or of ``box``), shape (3, ...)."""
        box = box or tuple(slice(0, n) for n in self.shape)  # type: ignore[assignment]
        axes = [
            self.affine[d, 3] + self.affine[d, d] * np.arange(box[d].start, box[d].stop, dtype=np.float64)
            for d in range(3)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def deep_gm_membership(
    atlas: Atlas,
    volume_factors: Mapping[int, float] | None = None,
    edge_mm: float = 1.0,
    centers_mm: Mapping[int, np.ndarray] | None = None,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft deep-GM membership and nearest-structure label inside ``atlas.deep_box``.

    Parameters
    ----------
    atlas : Atlas
        Template atlas.
    volume_factors : mapping of int to float, optional
        Per-structure volume multiplier (label -> factor; 1.0 = template size).
        Radii scale with the cube root of the factor.
    edge_mm : float
        Width of the logistic edge of the soft membership, in mm.
    centers_mm : mapping of int to array, optional
        Per-structure centre (world mm) replacing the template centre, e.g. the
        image of the template centre under a subject deformation
        (:func:`subject_point`).
    scale : float
        Isotropic head-size scaling of all radii.

    Returns
    -------
    membership : ndarray of float32
        Soft membership in [0, 1] (0.5 on the ellipsoid surface), box-shaped.
    nearest : ndarray of int16
        Label of the structure with the smallest normalised distance (defined
        everywhere in the box; mask it with ``membership > 0.5`` to get the
        hard label map), box-shaped.
    """
    if edge_mm <= 0:
        raise ValueError(f"'edge_mm' must be > 0; got {edge_mm!r}")
    volume_factors = volume_factors or {}
    xyz = atlas.world_coords(atlas.deep_box)
    best_d = np.full(xyz.shape[1:], np.inf)
    best_r = np.ones(xyz.shape[1:])
    best_lab = np.zeros(xyz.shape[1:], dtype=np.int16)
    for s in DEEP_GM:
        f = float(volume_factors.get(s.label, 1.0))
        if f <= 0:
            raise ValueError(f"volume factor of label {s.label} must be > 0; got {f!r}")
        radii = np.asarray(s.radii_mm) * f ** (1.0 / 3.0) * scale
        c = np.asarray(s.center_mm if centers_mm is None else centers_mm[s.label], dtype=np.float64)
        d = np.sqrt(sum(((xyz[k] - c[k]) / radii[k]) ** 2 for k in range(3)))
        closer = d < best_d
        best_d = np.where(closer, d, best_d)
        best_r = np.where(closer, float(np.prod(radii) ** (1.0 / 3.0)), best_r)
        best_lab = np.where(closer, s.label, best_lab).astype(np.int16)
    z = np.clip((best_d - 1.0) * best_r / edge_mm, -50, 50)
    membership = (1.0 / (1.0 + np.exp(z))).astype(np.float32)
    return membership, best_lab


def _bspline_kernel(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    out = np.zeros_like(t)
    inner = t < 1
    outer = (t >= 1) & (t < 2)
    out[inner] = 2.0 / 3.0 - t[inner] ** 2 + 0.5 * t[inner] ** 3
    out[outer] = (2.0 - t[outer]) ** 3 / 6.0
    return out


def _bspline_weights(n: int, step_mm: float, spacing_mm: float) -> np.ndarray:
    """(n, m) cubic B-spline design matrix for n samples ``step_mm`` apart."""
    x = np.arange(n) * step_mm / spacing_mm
    m = int(np.ceil(x[-1])) + 4 if n > 0 else 4
    knots = np.arange(m) - 1.0
    return _bspline_kernel(x[:, None] - knots[None, :])


def smooth_field(
    shape: tuple[int, int, int],
    resolution: float,
    spacing_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Smooth random field with unit expected SD (cubic B-spline, control points ``spacing_mm`` apart).

    The field depends only on the grid extent in mm, the spacing and ``rng``:
    it is a tensor product of 1-D B-spline bases applied to i.i.d. N(0, 1)
    coefficients, scaled so that its expected standard deviation is 1.

    Parameters
    ----------
    shape : tuple of int
        Grid shape.
    resolution : float
        Voxel size in mm.
    spacing_mm : float
        Control-point spacing in mm (the correlation length is about this).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    ndarray of float32
        The field, shape ``shape``.
    """
    if spacing_mm <= 0:
        raise ValueError(f"'spacing_mm' must be > 0; got {spacing_mm!r}")
    w = [_bspline_weights(n, resolution, spacing_mm).astype(np.float32) for n in shape]
    a, b, c = (x.shape[1] for x in w)
    coef = rng.standard_normal((a, b, c)).astype(np.float32) / np.float32(_BSPLINE_SD)
    n1, n2, n3 = shape
    f = (w[0] @ coef.reshape(a, b * c)).reshape(n1, b, c)  # (n1, b, c)
    f = f @ w[2].T  # (n1, b, n3)
    f = np.matmul(w[1], f)  # (n1, n2, n3)
    return np.ascontiguousarray(f, dtype=np.float32)


def random_deformation(
    atlas: Atlas,
    rng: np.random.Generator,
    amplitude_mm: float = 2.0,
    spacing_mm: float = 30.0,
    scale: float = 1.0,
) -> np.ndarray:
    """Pull-back coordinates of a smooth random deformation plus head-size scaling.

    Subject voxel ``v`` samples the template at
    ``c + (v - c) / scale + u(v) / resolution`` where ``c`` is the brain centroid
    and ``u`` a smooth displacement (mm) with per-component SD ``amplitude_mm``
    (see :func:`smooth_field`). ``scale > 1`` gives a larger head.

    Parameters
    ----------
    atlas : Atlas
        Template atlas (gives grid, resolution and centre).
    rng : numpy.random.Generator
        Random generator.
    amplitude_mm : float
        SD of each displacement component, in mm.
    spacing_mm : float
        Control-point spacing of the displacement, in mm.
    scale : float
        Isotropic head-size scaling (volume scales with ``scale ** 3``).

    Returns
    -------
    ndarray of float32, shape (3, *atlas.shape)
        Template voxel coordinates to pass to :func:`warp`.
    """
    if scale <= 0:
        raise ValueError(f"'scale' must be > 0; got {scale!r}")
    if amplitude_mm < 0:
        raise ValueError(f"'amplitude_mm' must be >= 0; got {amplitude_mm!r}")
    shape = atlas.shape
    coords = np.empty((3, *shape), dtype=np.float32)
    for d in range(3):
        idx = np.arange(shape[d], dtype=np.float32)
        base = atlas.center_vox[d] + (idx - atlas.center_vox[d]) / scale
        view = [1, 1, 1]
        view[d] = shape[d]
        coords[d] = base.reshape(view)
        if amplitude_mm > 0:
            coords[d] += smooth_field(shape, atlas.resolution, spacing_mm, rng) * (
                amplitude_mm / atlas.resolution
            )
    return coords


def warp(volume: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``volume`` at template voxel ``coords`` (0 outside the grid).

    Parameters
    ----------
    volume : ndarray
        Template-space volume.
    coords : ndarray, shape (3, ...)
        Coordinates from :func:`random_deformation`.
    order : {0, 1}
        0 = nearest neighbour (labels; keeps the dtype), 1 = trilinear
        (intensities, probabilities; float32 output).

    Returns
    -------
    ndarray
        Resampled volume of shape ``coords.shape[1:]``.
    """
    if order not in (0, 1):
        raise ValueError(f"'order' must be one of [0, 1]; got {order!r}")
    dtype = volume.dtype if order == 0 else np.float32
    return ndimage.map_coordinates(
        volume, coords, order=order, mode="constant", cval=0, prefilter=False, output=dtype
    )


def warp_box(
    volume_box: np.ndarray, box: tuple[slice, slice, slice], coords: np.ndarray, order: int = 1
) -> np.ndarray:
    """Like :func:`warp` for a volume that is zero outside the template ``box``.

    Only the subject voxels whose coordinates fall in (or next to) ``box`` are
    interpolated, which is much cheaper for small structures.

    Parameters
    ----------
    volume_box : ndarray
        Template values inside ``box`` (shape of the box).
    box : tuple of slice
        Template-space box (start/stop set).
    coords : ndarray, shape (3, ...)
        Coordinates from :func:`random_deformation`.
    order : {0, 1}
        Interpolation order (see :func:`warp`).

    Returns
    -------
    ndarray
        Full subject-space volume (zero outside the warped box).
    """
    dtype = volume_box.dtype if order == 0 else np.float32
    out = np.zeros(coords.shape[1:], dtype=dtype)
    inside = np.ones(coords.shape[1:], dtype=bool)
    for d in range(3):
        inside &= (coords[d] > box[d].start - 1) & (coords[d] < box[d].stop)
    if not inside.any():
        return out
    sbox = []
    for d in range(3):
        proj = inside.any(axis=tuple(k for k in range(3) if k != d))
        idx = np.flatnonzero(proj)
        sbox.append(slice(int(idx[0]), int(idx[-1]) + 1))
    sbox_t = tuple(sbox)
    sub = coords[(slice(None), *sbox_t)] - np.array([b.start for b in box], np.float32).reshape(3, 1, 1, 1)
    out[sbox_t] = warp(volume_box, sub, order)
    return out


def subject_point(atlas: Atlas, coords: np.ndarray, point_mm: np.ndarray, n_iter: int = 8) -> np.ndarray:
    """Subject-space world position (mm) of a template point under a deformation.

    Inverts the pull-back ``coords`` (subject voxel -> template voxel) at one
    point by fixed-point iteration (the displacement is smooth and small).

    Parameters
    ----------
    atlas : Atlas
        Template atlas (grid and affine).
    coords : ndarray, shape (3, ...)
        Coordinates from :func:`random_deformation`.
    point_mm : array-like, shape (3,)
        Template world position (mm).
    n_iter : int
        Iterations.

    Returns
    -------
    ndarray, shape (3,)
        Subject world position (mm).
    """
    inv = np.linalg.inv(atlas.affine)
    target = inv[:3, :3] @ np.asarray(point_mm, dtype=np.float64) + inv[:3, 3]
    # local inverse Jacobian estimated from the grid spacing of coords around the start point
    x = target.copy()
    for _ in range(n_iter):
        here = np.array([
            ndimage.map_coordinates(coords[d], x.reshape(3, 1), order=1, mode="nearest")[0] for d in range(3)
        ])
        step = np.array([
            ndimage.map_coordinates(coords[d], (x + np.eye(3)[d]).reshape(3, 1), order=1, mode="nearest")[0]
            - here[d] for d in range(3)
        ])
        x = x + (target - here) / np.where(np.abs(step) > 1e-6, step, 1.0)
    return atlas.affine[:3, :3] @ x + atlas.affine[:3, 3]


def ventricle_normal(atlas: Atlas, vox: np.ndarray) -> np.ndarray:
    """Unit vector (voxel axes) pointing away from the ventricles at voxel position ``vox``.

    The central-difference gradient of ``atlas.ventricle_dist``; ``[1, 0, 0]``
    where it vanishes.
    """
    idx = np.clip(np.round(np.asarray(vox, float)).astype(int), 1, np.asarray(atlas.shape) - 2)
    dist = atlas.ventricle_dist
    g = np.array([
        float(dist[tuple(idx + e)]) - float(dist[tuple(idx - e)]) for e in np.eye(3, dtype=int)
    ])
    n = float(np.linalg.norm(g))
    return g / n if n > 1e-6 else np.array([1.0, 0.0, 0.0])


def _kmeans_parcels(
    coords_mm: np.ndarray, k: int, seed: int = 0, n_iter: int = 50
) -> np.ndarray:
    """Deterministic k-means centroids (k-means++ init, Lloyd iterations)."""
    from scipy.cluster.vq import kmeans2

    rng = np.random.default_rng(seed)
    centroids, _ = kmeans2(coords_mm, k, iter=n_iter, minit="++", seed=rng)
    # order parcels deterministically: anterior -> posterior, then inferior -> superior
    order = np.lexsort((centroids[:, 2], -centroids[:, 1]))
    return centroids[order]


@functools.lru_cache(maxsize=4)
def load_atlas(resolution: float = 2, n_parcels: int = N_PARCELS) -> Atlas:
    """Build (once per resolution, cached) the template-space atlas.

    Parameters
    ----------
    resolution : float
        Isotropic voxel size in mm (1 = paper, 2 = quick, 3-4 = smoke). Must be a
        positive integer value (nilearn resamples its 1 mm templates).
    n_parcels : int
        Number of cortical GM parcels; even, >= 2 (K/2 per hemisphere).

    Returns
    -------
    Atlas
        Read-only arrays; copy before modifying.
    """
    if not float(resolution).is_integer() or resolution < 1:
        raise ValueError(f"'resolution' must be a positive integer number of mm; got {resolution!r}")
    if n_parcels < 2 or n_parcels % 2:
        raise ValueError(f"'n_parcels' must be an even integer >= 2; got {n_parcels!r}")
    from nilearn import datasets

    res = int(resolution)
    t1_img = datasets.load_mni152_template(resolution=res)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=res).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=res).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=res).get_fdata()) > 0.5
    affine = np.asarray(t1_img.affine, dtype=np.float64)

    # crop to the brain bounding box + margin (room for head-size scaling)
    margin = int(np.ceil(_MARGIN_MM / res))
    nz = np.nonzero(brain)
    lo = [max(int(a.min()) - margin, 0) for a in nz]
    hi = [min(int(a.max()) + margin + 1, n) for a, n in zip(nz, brain.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, brain = gm[crop], wm[crop], brain[crop]
    affine = affine.copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.asarray(lo, dtype=np.float64)

    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)

    # provisional atlas to reuse the geometry helpers
    full = tuple(slice(0, n) for n in gm.shape)
    center_vox = np.array([np.mean(a) for a in np.nonzero(brain)], dtype=np.float64)
    stub = Atlas(
        resolution=float(res), affine=affine, gm=gm, wm=wm, csf=csf, brain=brain,
        labels=np.zeros(gm.shape, np.int16), parcels=np.zeros(gm.shape, np.int16),
        ventricles=np.zeros(gm.shape, bool), lesion_zones={}, deep_box=full,
        center_vox=center_vox, n_parcels=n_parcels, ventricle_dist=np.zeros(gm.shape, np.float32),
        wm_grad=np.zeros(gm.shape, np.float32), lookalike_zones={}, horn_tips_mm=np.zeros((4, 3)),
    )

    # deep-GM box: bounding box of all ellipsoids grown by 50 % + 10 mm (room for subject
    # deformation, head-size scaling and larger nuclei)
    pts = []
    for s in DEEP_GM:
        for sign in (-1.0, 1.0):
            pts.append(np.asarray(s.center_mm) + sign * (1.5 * np.asarray(s.radii_mm) + 10.0))
    pts = np.asarray(pts)
    inv = np.linalg.inv(affine)
    vox = (inv[:3, :3] @ pts.T).T + inv[:3, 3]
    dlo = np.maximum(np.floor(vox.min(axis=0)).astype(int) - 1, 0)
    dhi = np.minimum(np.ceil(vox.max(axis=0)).astype(int) + 2, gm.shape)
    deep_box = tuple(slice(int(a), int(b)) for a, b in zip(dlo, dhi))
    stub = _replace(stub, deep_box=deep_box)
    memb_box, near_box = deep_gm_membership(stub)
    deep = np.zeros(gm.shape, np.int16)
    deep[deep_box] = np.where(memb_box > 0.5, near_box, 0)
    deep_region = ndimage.binary_dilation(deep > 0, iterations=max(1, int(round(2.0 / res))))

    # Template subcortical GM around the ellipsoids (the parts of the real nuclei the
    # ellipsoids miss) would otherwise be labelled as cortical parcels: within 5 mm of a
    # nucleus, GM probability is moved to WM, so deep GM is exactly the ellipsoids.
    dist_deep = ndimage.distance_transform_edt(deep == 0, sampling=res)
    rim = (dist_deep <= 5.0) & (deep == 0)
    wm = np.where(rim, wm + gm, wm).astype(np.float32)
    gm = np.where(rim, 0.0, gm).astype(np.float32)
    stub = _replace(stub, gm=gm, wm=wm)

    world = stub.world_coords()

    # ventricles: CSF-dominant voxels near the centre, largest connected pieces
    central = (
        (np.abs(world[0]) <= 30) & (world[1] >= -45) & (world[1] <= 30) & (world[2] >= -5) & (world[2] <= 35)
    )
    vent_cand = (csf > 0.5) & central & (deep == 0)
    comp, n_comp = ndimage.label(vent_cand)
    ventricles = np.zeros(gm.shape, bool)
    if n_comp:
        sizes = ndimage.sum_labels(vent_cand, comp, index=np.arange(1, n_comp + 1)) * res**3
        keep = np.flatnonzero(sizes >= 500.0) + 1  # >= 0.5 ml
        if keep.size == 0:
            keep = np.array([int(np.argmax(sizes)) + 1])
        ventricles = np.isin(comp, keep)

    # labels: deep GM, WM, cortical parcels
    cortex = (gm > wm) & (gm > csf) & brain & ~deep_region
    left = world[0] < 0
    coords_l = world[:, cortex & left].T
    if coords_l.shape[0] < n_parcels:
        raise RuntimeError(f"too few GM voxels ({coords_l.shape[0]}) for {n_parcels} parcels at {res} mm")
    cl = _kmeans_parcels(coords_l, n_parcels // 2, seed=0)
    cr = cl * np.array([-1.0, 1.0, 1.0])
    parcels = np.zeros(gm.shape, np.int16)
    from scipy.spatial import cKDTree

    for hemi_mask, cents, first in ((left & brain, cl, 1), (~left & brain, cr, n_parcels // 2 + 1)):
        _, nearest = cKDTree(cents).query(world[:, hemi_mask].T)
        parcels[hemi_mask] = (PARCEL_OFFSET + first + nearest).astype(np.int16)

    labels = np.zeros(gm.shape, np.int16)
    wm_dom = (wm >= gm) & (wm >= csf) & brain & (deep == 0)
    labels[wm_dom] = WM_LABEL
    labels[cortex & (deep == 0)] = parcels[cortex & (deep == 0)]
    labels[deep > 0] = deep[deep > 0]

    # lesion-centre zones
    dist_vent = ndimage.distance_transform_edt(~ventricles, sampling=res) if ventricles.any() else np.full(
        gm.shape, 1e3
    )
    dist_ctx = ndimage.distance_transform_edt(~cortex, sampling=res)
    posterior_fossa = (world[2] < -12.0) & (world[1] < -15.0) & (
        np.abs(world[0]) < np.where(world[1] > -45.0, 22.0, 35.0))
    wm_core = (wm > 0.6) & brain & ~deep_region & ~ventricles
    supra = wm_core & ~posterior_fossa
    pv = supra & (dist_vent <= 8.0)
    jc = supra & (dist_ctx <= 5.0) & (dist_vent > 10.0)
    dp = supra & ~pv & ~jc & (wm > 0.8)
    infra = (wm > 0.5) & brain & posterior_fossa
    zones = {}
    for name, z in (("periventricular", pv), ("juxtacortical", jc), ("deep", dp), ("infratentorial", infra)):
        if not z.any():
            logger.warning("lesion zone %r is empty at %s mm; using all core WM", name, res)
            z = wm_core
        zones[name] = _readonly(np.flatnonzero(z).astype(np.int64))

    # look-alike zones and horn tips
    band = (wm > 0.4) & brain & ~ventricles & ~deep_region & (dist_vent <= 3.0)
    punctate = supra & (dist_vent > 4.0)
    sulcal = (csf > 0.5) & brain & ~ventricles & (dist_ctx <= 3.0) & ~posterior_fossa
    flow = (ventricles | ((csf > 0.5) & brain & (np.abs(world[0]) < 12.0) & (world[2] < 5.0)
                          & (world[2] > -40.0) & (world[1] > -60.0) & (world[1] < 10.0)))
    la_zones = {}
    for name, z in (("band", band), ("punctate", punctate), ("sulcal", sulcal), ("flow", flow)):
        if not z.any():
            logger.warning("look-alike zone %r is empty at %s mm; using the brain", name, res)
            z = brain
        la_zones[name] = _readonly(np.flatnonzero(z).astype(np.int64))
    tips = []
    for front in (True, False):
        for left in (True, False):
            side = ventricles & ((world[0] < -3.0) if left else (world[0] > 3.0))
            if not side.any():
                side = brain
            y = world[1][side]
            near = (y >= y.max() - 6.0) if front else (y <= y.min() + 6.0)
            tips.append([float(world[d][side][near].mean()) for d in range(3)])
    grad = np.stack(np.gradient(wm.astype(np.float32), res))
    wm_grad = np.sqrt((grad**2).sum(axis=0)).astype(np.float32)

    atlas = Atlas(
        resolution=float(res),
        affine=_readonly(affine),
        gm=_readonly(gm.astype(np.float32)),
        wm=_readonly(wm.astype(np.float32)),
        csf=_readonly(csf.astype(np.float32)),
        brain=_readonly(brain),
        labels=_readonly(labels),
        parcels=_readonly(parcels),
        ventricles=_readonly(ventricles),
        lesion_zones=zones,
        deep_box=deep_box,
        center_vox=_readonly(center_vox),
        n_parcels=n_parcels,
        ventricle_dist=_readonly(np.minimum(dist_vent, 1e3).astype(np.float32)),
        wm_grad=_readonly(wm_grad),
        lookalike_zones=la_zones,
        horn_tips_mm=_readonly(np.asarray(tips, dtype=np.float64)),
    )
    logger.info(
        "atlas %s mm: grid %s, brain %.0f ml, ventricles %.1f ml",
        res, atlas.shape, brain.sum() * atlas.voxel_volume_ml, ventricles.sum() * atlas.voxel_volume_ml,
    )
    return atlas


def _replace(atlas: Atlas, **changes) -> Atlas:
    import dataclasses

    return dataclasses.replace(atlas, **changes)
