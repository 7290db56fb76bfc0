"""Acquisition centers of the synthetic cohort: scanner / protocol effects and mask raters.

A center differs from another in three ways (all parameters in the dataclasses
below, all written into the cohort sidecar):

- **scanner and protocol** (:class:`CenterEffects`): intensity scale, offset and
  gamma non-linearity, blur (point-spread), a fresh smooth multiplicative bias
  field and Rician noise per scan, and the FLAIR slice thickness: a center may
  acquire FLAIR as thick axial slices (e.g. 5.5 mm with a 1 mm gap as in seed
  003) that are resampled onto the isotropic grid of the T1 (:func:`acquire`);
- **FLAIR artefacts**: a multiplier of the rate of sulcal and flow-like
  hyperintensities (see :mod:`msutils.synth.lookalikes`);
- **the masks' rater** (:class:`RaterEffects`): how the center's lesion
  segmentation, skull stripping and ROI labelling differ from the truth
  (see :mod:`msutils.synth.raters`).

Clinical differences between centers (age, course, EDSS rating, lesion load)
are parameters of the clinical model (``SynthParams.center_clinical``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msutils.synth import anatomy

__all__ = ["RaterEffects", "CenterEffects", "loco_centers", "edss_centers", "acquire", "thick_slices"]


@dataclass(frozen=True)
class RaterEffects:
    """How one center's masks (the manifest's ``lesion_mask``, ``brain_mask``, ``roi_labels``) err.

    The truth stays in the ``gt_*`` columns; these parameters make the manifest
    masks look like a rater's or an algorithm's (see :mod:`msutils.synth.raters`).

    Attributes
    ----------
    lesion_threshold : float
        Partial-volume fraction at which the rater draws the lesion boundary
        (0.5 = unbiased; lower over-segments, higher under-segments).
    lesion_boundary_sd : float
        SD of a smooth random field (correlation ``noise_spacing_mm``) added to
        the lesion fraction before thresholding: irregular boundary errors.
    lesion_detect_ml : float
        Detection scale: a true lesion of volume ``v`` (ml) is missed with
        probability ``exp(-v / lesion_detect_ml)``.
    lookalike_fp_prob : float
        Probability that a periventricular cap or a punctate WM hyperintensity
        (a lesion look-alike) is marked as a lesion; sulcal and flow-like
        hyperintensities are marked with a fifth of it.
    roi_boundary_sd : float
        SD of the smooth random fields added to the tissue-class probabilities
        before the label map is taken as their arg-max: label-boundary jitter.
    dgm_bias, gm_bias : float
        Added to the deep-GM / cortical-GM class probability: a systematic
        over- (> 0) or under-segmentation of the nuclei / the cortex.
    brain_bias : float
        Added to the brain probability before thresholding at 0.5: a more
        inclusive (> 0) or conservative skull stripping.
    brain_boundary_sd : float
        SD of the smooth random field added to the brain probability.
    noise_spacing_mm : float
        Control-point spacing (mm) of the rater's smooth random fields.
    """

    lesion_threshold: float = 0.5
    lesion_boundary_sd: float = 0.17
    lesion_detect_ml: float = 0.02
    lookalike_fp_prob: float = 0.15
    roi_boundary_sd: float = 0.22
    dgm_bias: float = 0.0
    gm_bias: float = 0.0
    brain_bias: float = 0.0
    brain_boundary_sd: float = 0.20
    noise_spacing_mm: float = 10.0

    def __post_init__(self) -> None:
        for name in ("lesion_threshold", "lookalike_fp_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"'{name}' must be in [0, 1]; got {v!r}")
        for name in ("lesion_boundary_sd", "lesion_detect_ml", "roi_boundary_sd", "brain_boundary_sd"):
            v = getattr(self, name)
            if not v >= 0.0:
                raise ValueError(f"'{name}' must be >= 0; got {v!r}")
        if not self.noise_spacing_mm > 0:
            raise ValueError(f"'noise_spacing_mm' must be > 0; got {self.noise_spacing_mm!r}")


@dataclass(frozen=True)
class CenterEffects:
    """Scanner / protocol effects and the mask rater of one center.

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
        Median Rician noise SD as a fraction of the scale (fresh per scan).
    noise_log_sd : float
        Between-scan log-SD of the noise SD (coil loading, head size, motion):
        a scan's noise SD is ``noise_sd * exp(noise_log_sd * N(0, 1))``.
    blur_mm : float
        Gaussian blur sigma in mm (point-spread of the protocol); 0 = none.
    flair_slice_mm : float
        FLAIR slice thickness (mm) of a 2D axial acquisition; 0 = 3D isotropic
        (the grid's own resolution). See :func:`thick_slices`.
    flair_gap_mm : float
        Gap between FLAIR slices (mm); slice spacing = thickness + gap.
    artefact_rate : float
        Multiplier of the rates of sulcal and flow-like FLAIR hyperintensities.
    rater : RaterEffects
        How this center's masks err (see :class:`RaterEffects`).
    """

    scanner: str
    t1_scale: float = 1000.0
    flair_scale: float = 800.0
    offset: float = 0.0
    gamma: float = 1.0
    bias_strength: float = 0.06
    noise_sd: float = 0.02
    blur_mm: float = 0.0
    noise_log_sd: float = 0.25
    flair_slice_mm: float = 0.0
    flair_gap_mm: float = 0.0
    artefact_rate: float = 1.0
    rater: RaterEffects = field(default_factory=RaterEffects)

    def __post_init__(self) -> None:
        for name in ("t1_scale", "flair_scale", "gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"'{name}' must be > 0; got {getattr(self, name)!r}")
        for name in ("bias_strength", "noise_sd", "blur_mm", "noise_log_sd", "flair_slice_mm", "flair_gap_mm", "artefact_rate"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"'{name}' must be >= 0; got {getattr(self, name)!r}")
        if isinstance(self.rater, dict):  # built from a sidecar / to_dict() copy
            object.__setattr__(self, "rater", RaterEffects(**self.rater))
        if not isinstance(self.rater, RaterEffects):
            raise ValueError(f"'rater' must be a RaterEffects; got {type(self.rater).__name__}")


def loco_centers() -> dict[str, CenterEffects]:
    """Centers A/B/C of the leave-one-center-out design (seed 000's three vendors).

    A: 3D FLAIR, a careful rater. B: 3 mm FLAIR slices, noisier, a rater that
    over-segments lesions and nuclei. C: 5.5 mm FLAIR slices with a 1 mm gap
    (seed 003's protocol), a rater that misses small lesions and under-segments
    the nuclei.
    """
    return {
        "A": CenterEffects("Siemens", t1_scale=1000.0, flair_scale=800.0, offset=0.00, gamma=1.00,
                           bias_strength=0.04, noise_sd=0.020, blur_mm=0.0, noise_log_sd=0.25,
                           rater=RaterEffects(lesion_threshold=0.50, lesion_boundary_sd=0.17, lesion_detect_ml=0.015,
                                              lookalike_fp_prob=0.12, roi_boundary_sd=0.22, brain_boundary_sd=0.20)),
        "B": CenterEffects("Philips", t1_scale=1350.0, flair_scale=650.0, offset=0.05, gamma=0.85,
                           bias_strength=0.08, noise_sd=0.035, blur_mm=1.0, noise_log_sd=0.30, flair_slice_mm=3.0,
                           artefact_rate=1.6,
                           rater=RaterEffects(lesion_threshold=0.45, lesion_boundary_sd=0.22, lesion_detect_ml=0.025,
                                              lookalike_fp_prob=0.20, roi_boundary_sd=0.26, dgm_bias=0.06,
                                              gm_bias=-0.03, brain_bias=0.06, brain_boundary_sd=0.24)),
        "C": CenterEffects("GE", t1_scale=820.0, flair_scale=1000.0, offset=0.02, gamma=1.15,
                           bias_strength=0.06, noise_sd=0.025, blur_mm=0.5, noise_log_sd=0.25, flair_slice_mm=5.5,
                           flair_gap_mm=1.0, artefact_rate=0.8,
                           rater=RaterEffects(lesion_threshold=0.60, lesion_boundary_sd=0.22, lesion_detect_ml=0.060,
                                              lookalike_fp_prob=0.18, roi_boundary_sd=0.26, dgm_bias=-0.06,
                                              gm_bias=0.03, brain_bias=-0.04, brain_boundary_sd=0.20)),
    }


def edss_centers() -> dict[str, CenterEffects]:
    """Sites 1/2 of the EDSS design (seed 001: two 3T sites).

    Site 1 acquires 3D FLAIR; site 2 3 mm axial FLAIR slices and segments with
    a rater that under-segments lesions and over-segments the deep-GM nuclei.
    """
    return {
        "site1": CenterEffects("3T-site1", t1_scale=1000.0, flair_scale=900.0, offset=0.00, gamma=1.00,
                               bias_strength=0.05, noise_sd=0.020, blur_mm=0.3, noise_log_sd=0.25,
                               rater=RaterEffects(lesion_threshold=0.50, lesion_boundary_sd=0.17,
                                                  lesion_detect_ml=0.02, lookalike_fp_prob=0.15,
                                                  roi_boundary_sd=0.22, brain_boundary_sd=0.20)),
        "site2": CenterEffects("3T-site2", t1_scale=1200.0, flair_scale=750.0, offset=0.03, gamma=0.90,
                               bias_strength=0.07, noise_sd=0.030, blur_mm=0.8, noise_log_sd=0.25,
                               flair_slice_mm=3.0, artefact_rate=1.3,
                               rater=RaterEffects(lesion_threshold=0.58, lesion_boundary_sd=0.22,
                                                  lesion_detect_ml=0.04, lookalike_fp_prob=0.20,
                                                  roi_boundary_sd=0.26, dgm_bias=0.05, gm_bias=-0.02,
                                                  brain_bias=0.05, brain_boundary_sd=0.24)),
    }


def thick_slices(img: np.ndarray, res: float, thickness_mm: float, gap_mm: float) -> np.ndarray:
    """Simulate a 2D axial acquisition with thick slices, resampled back onto the grid.

    Each slice integrates the signal over ``thickness_mm`` along the last axis
    (superior-inferior; a box profile), slices are ``thickness_mm + gap_mm``
    apart (the first centred on the grid's first plane), and the volume is
    linearly interpolated back onto the isotropic grid, as a FLAIR registered
    to a 3D T1 looks.

    Parameters
    ----------
    img : ndarray, shape (x, y, z)
        Image on an isotropic grid of ``res`` mm.
    res : float
        Voxel size (mm).
    thickness_mm, gap_mm : float
        Slice thickness and gap (mm). No effect when ``thickness_mm <= res``
        and ``gap_mm == 0``.

    Returns
    -------
    ndarray of float32
        Same shape as ``img``.
    """
    if thickness_mm <= res and gap_mm <= 0:
        return img.astype(np.float32, copy=False)
    nz = img.shape[2]
    # box profile of the slice: average of sub-samples across the thickness
    n_sub = max(3, int(np.ceil(thickness_mm / res)) * 2 + 1)
    offsets = (np.arange(n_sub) + 0.5) / n_sub - 0.5  # in slice thicknesses
    spacing = (thickness_mm + gap_mm) / res  # in voxels
    centres = np.arange(0.0, nz - 1 + 1e-6, spacing)
    if centres[-1] < nz - 1:
        centres = np.append(centres, centres[-1] + spacing)

    def sample(z: np.ndarray) -> np.ndarray:
        z = np.clip(z, 0.0, nz - 1.0)
        lo = np.floor(z).astype(int)
        hi = np.minimum(lo + 1, nz - 1)
        w = (z - lo).astype(np.float32)
        return img[:, :, lo] * (1.0 - w) + img[:, :, hi] * w

    slabs = np.zeros(img.shape[:2] + (centres.size,), np.float32)
    for o in offsets:
        slabs += sample(centres + o * thickness_mm / res)
    slabs /= float(n_sub)
    # back onto the grid: linear interpolation between slice centres
    pos = np.arange(nz) / spacing
    lo = np.minimum(np.floor(pos).astype(int), centres.size - 2)
    w = (pos - lo).astype(np.float32)
    return (slabs[:, :, lo] * (1.0 - w) + slabs[:, :, lo + 1] * w).astype(np.float32)


def acquire(clean: np.ndarray, brain: np.ndarray, eff: CenterEffects, scale: float, contrast: str,
            scale_jitter: float, res: float, rng: np.random.Generator) -> np.ndarray:
    """One scan of a clean image at a center: gamma, scale, blur, slices, bias, Rician noise.

    Parameters
    ----------
    clean : ndarray
        Clean image (normal WM of the T1 = 1.0).
    brain : ndarray of bool
        Brain mask; the background is set to 0.
    eff : CenterEffects
        The center.
    scale : float
        Intensity scale of this contrast (``eff.t1_scale`` or ``eff.flair_scale``).
    contrast : {"t1", "flair"}
        Thick slices apply to FLAIR only (the T1 is a 3D acquisition).
    scale_jitter : float
        SD of a per-scan multiplicative jitter of ``scale``.
    res : float
        Voxel size (mm).
    rng : numpy.random.Generator
        Fresh per scan (bias field, noise, jitter).

    Returns
    -------
    ndarray of float32
    """
    from scipy import ndimage

    if contrast not in ("t1", "flair"):
        raise ValueError(f"'contrast' must be one of ['t1', 'flair']; got {contrast!r}")
    s = scale * (1.0 + scale_jitter * rng.standard_normal())
    img = np.power(np.clip(clean, 0.0, None), eff.gamma) + eff.offset * brain
    img = (s * img).astype(np.float32)
    if eff.blur_mm > 0:
        img = ndimage.gaussian_filter(img, eff.blur_mm / res)
    if contrast == "flair" and (eff.flair_slice_mm > res or eff.flair_gap_mm > 0):
        img = thick_slices(img, res, eff.flair_slice_mm, eff.flair_gap_mm)
    if eff.bias_strength > 0:
        img *= np.exp(eff.bias_strength * anatomy.smooth_field(img.shape, res, 80.0, rng))
    sd = eff.noise_sd * s * float(np.exp(eff.noise_log_sd * rng.standard_normal()))
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    img = np.sqrt((img + n1) ** 2 + n2**2)
    img[~brain] = 0.0
    return img.astype(np.float32)
