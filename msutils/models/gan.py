"""Conditional 3D GAN for generative T1 augmentation (GBA) of seed 000.

The seed trains, per leave-one-center-out iteration and inner fold, a
conditional GAN on that fold's training subjects only: a 3D U-Net generator,
a PatchGAN discriminator, LeakyReLU slope 0.01, the loss "adversarial + L1
reconstruction" and differentiable augmentation (small random geometric
perturbations of real and generated volumes right before the discriminator).
It then generates 50 MS and 50 HC images per synthetic fold.

Generator input: why L1 has a target and the outputs are new subjects
----------------------------------------------------------------------
An L1 reconstruction term needs a target image, yet the seed's synthetic
scans "do not represent the same individuals". Here the generator maps an
**anatomical label map** plus the **class label** plus **noise** to a T1:

``G(one_hot(L), one_hot(c), z) -> T1`` with, per voxel,

- ``one_hot(L)``: the compact label map (:class:`LabelCoder`): 0 outside the
  brain, 1 brain without an ROI label (CSF, unlabelled tissue), ``2 + i`` the
  i-th ROI label value (e.g. the ten seed-000 ROIs);
- ``one_hot(c)``: the class (0 = HC, 1 = MS), broadcast over the volume;
- ``z``: ``noise_channels`` channels of N(0, 1) noise.

The output is multiplied by the brain mask (``L > 0``), like the
skull-stripped real scans.

Training
    Each step takes training subject ``i`` with label map ``L_i``, T1 ``I_i``
    and class ``c_i``, draws a smooth random deformation ``phi``
    (:func:`random_warp_grid`, control-point SD ``train_deform`` x their spacing)
    and asks ``G(phi(L_i), c_i, z) ~ phi(I_i)``: the same warp on both sides,
    so the L1 term ``|G(...) - phi(I_i)|`` has an exact target.
Generation
    A synthetic image of class ``c`` takes the label map ``L_j`` of a
    training subject ``j`` of class ``c`` (the *parent*; parents are cycled
    through in random order so each is used about equally), a **new** random
    deformation ``psi`` (SD ``generation_deform`` x spacing) and fresh noise:
    ``G(psi(L_j), c, z')``. Its anatomy is a warp of a training anatomy that
    no training step saw, and its intensities and texture are synthesised by
    the generator from the class and the noise, not copied from ``I_j``. The
    non-copy check of :mod:`msutils.features.fidelity` measures how far each
    synthetic image is from its nearest real training image.
    ``psi(L_j)`` is the exact label map of the generated image: the ground
    truth against which a segmentation of the synthetic images is scored
    (Dice / Jaccard), which the seed could only approximate on a subset.
Intensities
    Each training image is divided by its ``intensity_percentile`` within the
    brain (:func:`intensity_scales`); the generator works in those units and
    a generated image is multiplied back by its parent's scale.

Grid
    ``gba_scenario(grid_factor=f)`` trains and runs the GAN on a grid ``f``
    times coarser than the input volumes (block means / block-majority
    labels), which is what makes CPU profiles affordable. Generation then
    deforms the parent label map *on the input grid* (the same smooth field,
    interpolated), feeds its block majority to the generator and upsamples
    the output trilinearly, so the returned label map is exact on the input
    grid while the image carries the coarse grid's detail only.
    :func:`brain_box` / :func:`crop_box` / :func:`paste_box` cut the volumes
    to the box around the training brains (a multiple of the total stride
    times the grid factor) before the GAN sees them and paste outputs back.

Discriminator and loss
    A conditional PatchGAN (MONAI ``PatchDiscriminator``) sees the condition
    channels concatenated with the image. :class:`DiffAugment3D` (random
    rotation, translation and isotropic scaling through ``affine_grid`` /
    ``grid_sample``, differentiable, identity at zero strength) is applied to
    that concatenation right before the discriminator, with independent
    draws for the real batch, the fake batch of the discriminator step and
    the fake batch of the generator step (as in DiffAugment; condition and
    image of one sample move together). Losses (MONAI
    ``PatchAdversarialLoss``):
    ``L_D = (adv(D(aug(real)), real) + adv(D(aug(fake)), fake)) / 2`` and
    ``L_G = adv(D(aug(fake)), real) + lambda_l1 * |fake - target|_1``.
Early stopping
    After every epoch the L1 error of the generator on the *monitor* subjects
    (their undeformed label maps, fixed noise) is computed; training stops
    after ``patience`` epochs without an improvement larger than
    ``min_delta`` and the best generator is kept. The seed both "fully
    isolates" the fold's validation split from GAN training and early-stops
    on "validation": :func:`gba_scenario` therefore carves the monitor
    subjects out of the fold's *training* subjects (``monitor_fraction``,
    subject-level, stratified by class), so the inner validation split stays
    untouched and can score the generator (SSIM / PSNR pairs).

Choices where the seed is silent or inconsistent
    Its Fig. 2 gives the encoder stride 3 and the decoder stride 2, which
    cannot be inverted by a U-Net with skip connections: both are 2 here.
    ``lambda_l1 = 100``, Adam (lr 2e-4, betas 0.5 / 0.999) and the BCE
    adversarial criterion follow Isola et al. (the seed's PatchGAN
    reference). Paper-scale defaults are those of :class:`GanConfig`; the
    profiles scale epochs, width and grid.

Scenario signature (for the study's scenario registry)
------------------------------------------------------
``gba_scenario(train: ImageSet, *, n_folds: int, n_per_class: int, seed: int,
**options) -> GbaResult``: ``train`` holds the fold's real training images
(``(n, X, Y, Z)`` float), ROI label maps (``(n, X, Y, Z)`` int), classes
(0 = HC, 1 = MS) and subject ids; the result's ``folds`` are ``n_folds``
:class:`SyntheticFold` objects, each with ``n_per_class`` images per class,
their known ROI label maps and brain masks, classes and parent subject ids.
:func:`msutils.studies.gan_augmentation.gba_images` wraps it in the study
registry's signature ``fn(request) -> DataFrame`` (cohort I/O, the brain box of
:func:`brain_box`, segmentation, NIfTI files, image-quality record).

Determinism: every random draw (data order, warps, noise, augmentation,
monitor split, parents) comes from generators seeded by ``seed``, weights
are initialised under ``torch.manual_seed(seed)`` and training runs inside
``torch.random.fork_rng`` (the caller's global RNG state is untouched). On
CPU two runs with the same seed give identical weights. On CUDA the backward
passes of ``grid_sample`` and 3D convolutions use atomic additions, so runs
agree only to floating-point tolerance (the documented GPU exception).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from msutils.core.validation import check_choice, check_int
from msutils.data.leakage import FitLog
from msutils.core.device import resolve_device, torch_threads

__all__ = [
    "GanConfig",
    "LabelCoder",
    "ImageSet",
    "GanData",
    "DiffAugment3D",
    "ConditionalGenerator",
    "GanFit",
    "Generated",
    "SyntheticFold",
    "ValidationPairs",
    "GbaResult",
    "intensity_scales",
    "random_warp_grid",
    "warp_images",
    "warp_labels",
    "downsample_images",
    "downsample_labels",
    "upsample_images",
    "brain_box",
    "crop_box",
    "paste_box",
    "build_discriminator",
    "patch_output_shape",
    "monitor_split",
    "train_cgan",
    "generate",
    "reconstruct",
    "gba_scenario",
]

logger = logging.getLogger(__name__)

_CRITERIA = ("bce", "least_squares", "hinge")
_NORMS = ("INSTANCE", "BATCH")


# --------------------------------------------------------------------------- small helpers
def _derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed derived from ``seed`` and integer ``keys`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class GanConfig:
    """Hyper-parameters of the conditional GAN (defaults: paper scale).

    Attributes
    ----------
    max_epochs, patience, min_delta
        Up to ``max_epochs`` epochs (one pass over the training subjects);
        stop after ``patience`` epochs whose monitor L1 did not improve by
        more than ``min_delta`` (seed: 300 and 10).
    batch_size
        Volumes per step.
    g_channels, g_strides, g_res_units, dropout
        MONAI ``UNet`` generator: channels per level, strides between levels
        (``len(g_strides) == len(g_channels) - 1``), residual units per
        block, dropout.
    d_channels, d_layers, d_kernel
        MONAI ``PatchDiscriminator``: first-layer channels, number of
        down-sampling layers, kernel size.
    norm
        ``"INSTANCE"`` or ``"BATCH"`` normalisation in both networks.
    negative_slope
        LeakyReLU slope of every activation (seed: 0.01).
    noise_channels
        Channels of N(0, 1) noise in the generator input.
    lambda_l1
        Weight of the L1 reconstruction term.
    adversarial
        ``PatchAdversarialLoss`` criterion: ``"bce"``, ``"least_squares"`` or ``"hinge"``.
    lr_g, lr_d, betas
        Adam settings of generator and discriminator.
    aug_rotation_deg, aug_translation, aug_scale
        :class:`DiffAugment3D` strengths: maximum rotation per axis (degrees),
        translation (fraction of the field of view) and scaling (fraction).
    train_deform, generation_deform, deform_control_points
        Smooth random deformations (:func:`random_warp_grid`): SD of the
        control-point displacements as a fraction of the control-point
        spacing (resolution-free) during training and at generation, and
        control points per axis. The generation default 0.06 is about the
        synthetic cohort's own between-subject warp (2 mm SD at 30 mm
        spacing): a new anatomy differs from its parent about as much as two
        subjects differ. The price is volume noise: measured with 5 points on
        a 3.6 ml ellipsoid (450 voxels at 2 mm), 0.03 / 0.06 change its volume
        by 3 / 7 % (SD) in a 48 x 56 x 48 box and by 7.5 / 11 % in a
        96 x 112 x 96 box (the nearest-neighbour label warp's sub-voxel
        quantisation adds about 5 %), against a natural deep-GM volume SD of
        5 % and an MS atrophy of 9-15 % in that cohort. Strengths above about
        0.1 start to fold the warp.
    monitor_fraction
        Fraction of the fold's training subjects (per class) held out of the
        gradient steps to early-stop on (:func:`monitor_split`); 0 trains
        ``max_epochs`` epochs without early stopping.
    intensity_percentile
        Brain-intensity percentile each image is divided by.
    """

    max_epochs: int = 300
    patience: int = 10
    min_delta: float = 0.0
    batch_size: int = 2
    g_channels: tuple[int, ...] = (32, 64, 128, 256)
    g_strides: tuple[int, ...] = (2, 2, 2)
    g_res_units: int = 2
    dropout: float = 0.0
    d_channels: int = 32
    d_layers: int = 3
    d_kernel: int = 4
    norm: str = "INSTANCE"
    negative_slope: float = 0.01
    noise_channels: int = 1
    lambda_l1: float = 100.0
    adversarial: str = "bce"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    aug_rotation_deg: float = 5.0
    aug_translation: float = 0.05
    aug_scale: float = 0.05
    train_deform: float = 0.06
    generation_deform: float = 0.06
    deform_control_points: int = 5
    monitor_fraction: float = 0.15
    intensity_percentile: float = 99.5

    def __post_init__(self) -> None:
        minimum = {"max_epochs": 1, "patience": 1, "batch_size": 1, "d_channels": 1, "d_layers": 1,
                   "deform_control_points": 2, "d_kernel": 2, "g_res_units": 0, "noise_channels": 0}
        for name, low in minimum.items():
            check_int(name, getattr(self, name), low)
        g_channels = tuple(int(c) for c in self.g_channels)
        g_strides = tuple(int(s) for s in self.g_strides)
        if len(g_channels) < 2 or any(c < 1 for c in g_channels):
            raise ValueError(f"'g_channels' must hold at least 2 positive ints; got {self.g_channels!r}")
        if len(g_strides) != len(g_channels) - 1 or any(s < 1 for s in g_strides):
            raise ValueError(
                f"'g_strides' must hold len(g_channels) - 1 = {len(g_channels) - 1} positive ints; "
                f"got {self.g_strides!r}"
            )
        object.__setattr__(self, "g_channels", g_channels)
        object.__setattr__(self, "g_strides", g_strides)
        check_choice("norm", self.norm, _NORMS)
        check_choice("adversarial", self.adversarial, _CRITERIA)
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"'betas' must be two floats in [0, 1); got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        checks = {
            "min_delta": (0.0, math.inf), "dropout": (0.0, 1.0 - 1e-9), "negative_slope": (0.0, 1.0),
            "lambda_l1": (0.0, math.inf), "lr_g": (1e-12, math.inf), "lr_d": (1e-12, math.inf),
            "aug_rotation_deg": (0.0, 180.0), "aug_translation": (0.0, 1.0), "aug_scale": (0.0, 1.0 - 1e-9),
            "train_deform": (0.0, 0.25), "generation_deform": (0.0, 0.25),
            "monitor_fraction": (0.0, 0.5), "intensity_percentile": (1e-9, 100.0),
        }
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"'{name}' must be a number in [{lo}, {hi}]; got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None) -> GanConfig:
        """Build a config from a mapping (e.g. profile parameters); unknown keys are an error."""
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown GanConfig field(s) {unknown}; known fields: {known}")
        for key in ("g_channels", "g_strides", "betas"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- labels and intensities
class LabelCoder:
    """ROI label maps + brain masks <-> the generator's compact labels.

    Compact label 0 is outside the brain, 1 inside the brain without an ROI
    label, ``2 + i`` the ROI value ``label_values[i]``.

    Parameters
    ----------
    label_values : sequence of int
        The positive ROI label values (0 is background / unlabelled).
    """

    def __init__(self, label_values: Sequence[int]) -> None:
        values = [int(v) for v in np.asarray(list(label_values)).ravel()]
        if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"'label_values' must be distinct positive ints; got {list(label_values)!r}")
        if len(values) > 1000:
            raise ValueError(f"'label_values' holds {len(values)} labels; at most 1000 are supported")
        self.label_values: tuple[int, ...] = tuple(sorted(values))

    @property
    def n_labels(self) -> int:
        """Number of compact labels (generator one-hot channels)."""
        return len(self.label_values) + 2

    def encode(self, label_maps: np.ndarray, brain_masks: np.ndarray) -> np.ndarray:
        """Compact int16 labels; ROI voxels count as brain even where the mask is 0."""
        label_maps = np.asarray(label_maps)
        brain_masks = np.asarray(brain_masks)
        if label_maps.shape != brain_masks.shape:
            raise ValueError(f"label maps {label_maps.shape} and brain masks {brain_masks.shape} differ in shape")
        if not np.issubdtype(label_maps.dtype, np.integer):
            if not np.array_equal(label_maps, np.round(label_maps)):
                raise ValueError("label maps must hold integer label values")
            label_maps = label_maps.astype(np.int64)
        unknown = sorted(set(np.unique(label_maps).tolist()) - {0, *self.label_values})
        if unknown:
            raise ValueError(f"label maps hold values {unknown} outside 'label_values' {list(self.label_values)}")
        lut = np.zeros(max(self.label_values) + 1, dtype=np.int16)
        lut[list(self.label_values)] = np.arange(2, self.n_labels)
        out = lut[label_maps]
        out[(out == 0) & (brain_masks > 0)] = 1
        return out

    def decode(self, compact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ROI label maps (int32) and brain masks (bool) from compact labels."""
        compact = np.asarray(compact)
        if compact.size and (compact.min() < 0 or compact.max() >= self.n_labels):
            raise ValueError(f"compact labels must lie in [0, {self.n_labels - 1}]")
        lut = np.array([0, 0, *self.label_values], dtype=np.int32)
        return lut[compact], compact > 0


def intensity_scales(images: np.ndarray, brain_masks: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Per image, the ``percentile`` of its intensities inside its brain mask.

    Parameters
    ----------
    images, brain_masks : ndarray, shape (n, X, Y, Z)
    percentile : float

    Returns
    -------
    ndarray of float64, shape (n,)

    Raises
    ------
    ValueError
        An empty mask or a non-positive scale (named by image index).
    """
    images = np.asarray(images)
    brain_masks = np.asarray(brain_masks, dtype=bool)
    if images.shape != brain_masks.shape or images.ndim != 4:
        raise ValueError(f"images {images.shape} and brain masks {brain_masks.shape} must both be (n, X, Y, Z)")
    scales = np.empty(len(images))
    for i, (img, mask) in enumerate(zip(images, brain_masks)):
        if not mask.any():
            raise ValueError(f"image {i}: brain mask is empty")
        scales[i] = np.percentile(img[mask], percentile)
        if not np.isfinite(scales[i]) or scales[i] <= 0:
            raise ValueError(f"image {i}: brain intensity percentile {percentile} is {scales[i]!r}; expected > 0")
    return scales


@dataclass(frozen=True)
class ImageSet:
    """Real images of one side of a fold, as the study passes them in.

    Attributes
    ----------
    images : ndarray, shape (n, X, Y, Z)
        T1 intensities (background 0, as after skull stripping).
    label_maps : ndarray of int, shape (n, X, Y, Z)
        ROI label maps (0 = no ROI).
    classes : ndarray of int, shape (n,)
        0 = HC, 1 = MS (any ``0 .. n_classes - 1``).
    subjects : sequence of str, length n
        Subject id of each scan (visits of one subject share it).
    brain_masks : ndarray of bool, shape (n, X, Y, Z), optional
        Default ``images > 0``.
    """

    images: np.ndarray
    label_maps: np.ndarray
    classes: np.ndarray
    subjects: tuple[str, ...]
    brain_masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = np.asarray(self.images, dtype=np.float32)
        labels = np.asarray(self.label_maps)
        classes = np.asarray(self.classes)
        subjects = tuple(str(s) for s in self.subjects)
        if images.ndim != 4:
            raise ValueError(f"'images' must be (n, X, Y, Z); got shape {images.shape}")
        if labels.shape != images.shape:
            raise ValueError(f"'label_maps' shape {labels.shape} differs from 'images' shape {images.shape}")
        if classes.shape != (len(images),) or not np.issubdtype(classes.dtype, np.integer) or (classes < 0).any():
            raise ValueError(f"'classes' must be {len(images)} non-negative ints; got {classes!r}")
        if len(subjects) != len(images):
            raise ValueError(f"'subjects' has {len(subjects)} entries for {len(images)} images")
        if not np.isfinite(images).all():
            raise ValueError("'images' hold non-finite values")
        masks = images > 0 if self.brain_masks is None else np.asarray(self.brain_masks, dtype=bool)
        if masks.shape != images.shape:
            raise ValueError(f"'brain_masks' shape {masks.shape} differs from 'images' shape {images.shape}")
        per_subject: dict[str, set[int]] = {}
        for s, c in zip(subjects, classes.tolist()):
            per_subject.setdefault(s, set()).add(c)
        mixed = sorted(s for s, cs in per_subject.items() if len(cs) > 1)
        if mixed:
            raise ValueError(f"subjects with scans of more than one class: {mixed}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "label_maps", labels)
        object.__setattr__(self, "classes", classes.astype(np.int64))
        object.__setattr__(self, "subjects", subjects)
        object.__setattr__(self, "brain_masks", masks)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class GanData:
    """Generator-ready arrays: normalised images (float32), compact labels (int16), classes, subject ids."""

    images: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    subjects: tuple[str, ...]

    def __post_init__(self) -> None:
        images = np.ascontiguousarray(self.images, dtype=np.float32)
        labels = np.ascontiguousarray(self.labels, dtype=np.int16)
        classes = np.asarray(self.classes, dtype=np.int64)
        if images.ndim != 4 or labels.shape != images.shape:
            raise ValueError(f"images {images.shape} and labels {labels.shape} must both be (n, X, Y, Z)")
        if classes.shape != (len(images),) or len(self.subjects) != len(images):
            raise ValueError("'classes' and 'subjects' must have one entry per image")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "subjects", tuple(str(s) for s in self.subjects))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of the volumes."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Sequence[int] | np.ndarray) -> GanData:
        """The rows ``index``."""
        idx = np.asarray(index, dtype=np.int64)
        return GanData(self.images[idx], self.labels[idx], self.classes[idx], tuple(self.subjects[i] for i in idx))

    @classmethod
    def from_images(cls, data: ImageSet, coder: LabelCoder, percentile: float) -> tuple[GanData, np.ndarray]:
        """Normalise ``data`` (images / brain percentile) and encode its labels; also return the scales."""
        scales = intensity_scales(data.images, data.brain_masks, percentile)
        images = data.images / scales[:, None, None, None].astype(np.float32)
        return cls(images, coder.encode(data.label_maps, data.brain_masks), data.classes, data.subjects), scales


# --------------------------------------------------------------------------- warps and augmentation
def _identity_grid(batch: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    theta = torch.eye(3, 4, dtype=dtype).expand(batch, 3, 4)
    return F.affine_grid(theta, [batch, 1, *shape], align_corners=False)


def random_warp_grid(
    batch: int,
    shape: Sequence[int],
    amplitude: float,
    control_points: int = 5,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampling grids of smooth random deformations (for ``grid_sample``).

    Displacements are drawn i.i.d. on a ``control_points``^3 lattice spanning
    the volume and interpolated trilinearly to every voxel; along each axis
    their SD is ``amplitude`` times the lattice spacing on that axis, so the
    warp's Jacobian (local volume change) does not depend on the resolution.

    Parameters
    ----------
    batch : int
    shape : sequence of 3 int
        Spatial shape ``(X, Y, Z)`` of the volumes to warp.
    amplitude : float
        SD of the control-point displacements as a fraction of the lattice
        spacing; 0 gives the identity.
    control_points : int
        Lattice points per axis (>= 2).
    generator : torch.Generator, optional
        Source of randomness (CPU).

    Returns
    -------
    torch.Tensor, shape (batch, X, Y, Z, 3)
        Normalised coordinates (``align_corners=False``), last axis ordered
        (Z, Y, X) as ``grid_sample`` expects.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"'shape' must be 3 positive ints; got {shape!r}")
    if amplitude < 0:
        raise ValueError(f"'amplitude' must be >= 0; got {amplitude!r}")
    control_points = check_int("control_points", control_points, 2)
    grid = _identity_grid(batch, shape)
    if amplitude == 0:
        return grid
    coarse = torch.randn((batch, 3, control_points, control_points, control_points), generator=generator)
    disp = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    # SD in normalised units: amplitude x spacing (n - 1) / (control_points - 1) voxels x 2 / n
    scale = [float(amplitude) * 2.0 * (n - 1) / ((control_points - 1) * n) for n in shape]
    return grid + (disp * torch.tensor(scale, dtype=disp.dtype).view(1, 3, 1, 1, 1)).flip(1).permute(0, 2, 3, 4, 1)


def warp_images(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Trilinear resampling of ``(B, C, X, Y, Z)`` images on ``grid`` (zeros outside)."""
    return F.grid_sample(images, grid.to(images), mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_labels(labels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling of ``(B, X, Y, Z)`` integer labels on ``grid`` (0 outside)."""
    out = F.grid_sample(labels[:, None].to(torch.float32), grid.to(labels.device, torch.float32),
                        mode="nearest", padding_mode="zeros", align_corners=False)
    return out[:, 0].round().to(torch.int64)


def _check_factor(shape: Sequence[int], factor: int) -> int:
    factor = check_int("factor", factor, 1)
    if any(int(s) % factor for s in shape):
        raise ValueError(f"volume shape {tuple(shape)} must be divisible by the grid factor {factor}")
    return factor


def downsample_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor``^3 voxels of ``(n, X, Y, Z)`` volumes (float32)."""
    images = np.require(images, dtype=np.float32, requirements=["C", "W"])
    factor = _check_factor(images.shape[1:], factor)
    if factor == 1:
        return images
    return F.avg_pool3d(torch.from_numpy(images)[:, None], factor)[:, 0].numpy()


def downsample_labels(labels: np.ndarray, factor: int, n_labels: int, *, chunk: int = 8) -> np.ndarray:
    """Majority label of each ``factor``^3 block of ``(n, X, Y, Z)`` compact labels (ties: lower label).

    Works on ``chunk`` volumes and one label at a time (memory: a few float32
    volumes per chunk). Returns int16.
    """
    labels = np.asarray(labels)
    factor = _check_factor(labels.shape[1:], factor)
    n_labels = check_int("n_labels", n_labels, 2)
    if factor == 1:
        return labels.astype(np.int16)
    out = []
    for start in range(0, len(labels), check_int("chunk", chunk, 1)):
        lab = torch.from_numpy(np.ascontiguousarray(labels[start:start + chunk], dtype=np.int16))[:, None]
        best_count = F.avg_pool3d((lab == 0).to(torch.float32), factor)
        best = torch.zeros(best_count.shape, dtype=torch.int16)
        for value in range(1, n_labels):
            count = F.avg_pool3d((lab == value).to(torch.float32), factor)
            better = count > best_count
            best[better] = value
            best_count = torch.where(better, count, best_count)
        out.append(best[:, 0].numpy())
    return np.concatenate(out)


def upsample_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Trilinear upsampling of ``(n, X, Y, Z)`` volumes by ``factor`` (voxel centres kept, float32)."""
    images = np.require(images, dtype=np.float32, requirements=["C", "W"])
    factor = check_int("factor", factor, 1)
    if factor == 1:
        return images
    return F.interpolate(torch.from_numpy(images)[:, None], scale_factor=factor, mode="trilinear",
                         align_corners=False)[:, 0].numpy()


# --------------------------------------------------------------------------- the working box
def brain_box(masks: np.ndarray, *, multiple: int, margin: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Start and size of the box around the union of ``masks``, grown to a multiple of ``multiple``.

    Parameters
    ----------
    masks : ndarray of bool, shape (n, X, Y, Z)
    multiple : int
        Every box side is a multiple of this.
    margin : int
        Voxels added on each side of the bounding box first.

    Returns
    -------
    (start, size) : tuple of int, tuple of int
        The box is centred on the bounding box and may reach outside the
        volume (:func:`crop_box` pads with zeros there).
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or not masks.any():
        raise ValueError(f"'masks' must be (n, X, Y, Z) with at least one brain voxel; got shape {masks.shape}")
    multiple = check_int("multiple", multiple, 1)
    margin = check_int("margin", margin, 0)
    union = masks.any(axis=0)
    starts, sizes = [], []
    for axis in range(3):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(hit[0]) - margin, int(hit[-1]) + 1 + margin
        size = int(math.ceil((hi - lo) / multiple) * multiple)
        starts.append(lo - (size - (hi - lo)) // 2)
        sizes.append(size)
    return tuple(starts), tuple(sizes)


def crop_box(volumes: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The box of ``(n, X, Y, Z)`` volumes, zero where it reaches outside them."""
    volumes = np.asarray(volumes)
    out = np.zeros((volumes.shape[0], *size), dtype=volumes.dtype)
    src, dst = _overlap(volumes.shape[1:], start, size)
    out[(slice(None), *dst)] = volumes[(slice(None), *src)]
    return out


def paste_box(boxes: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Full ``(n, *shape)`` volumes, zero outside the box, holding ``boxes`` (the inverse of :func:`crop_box`)."""
    boxes = np.asarray(boxes)
    out = np.zeros((boxes.shape[0], *shape), dtype=boxes.dtype)
    src, dst = _overlap(shape, start, boxes.shape[1:])
    out[(slice(None), *src)] = boxes[(slice(None), *dst)]
    return out


def _overlap(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> tuple[list[slice], list[slice]]:
    """Slices of the volume and of the box covering their common part."""
    vol, box = [], []
    for n, s, k in zip(shape, start, size):
        lo, hi = max(int(s), 0), min(int(s) + int(k), int(n))
        if hi <= lo:
            raise ValueError(f"box start {tuple(start)} size {tuple(size)} lies outside volumes of shape "
                             f"{tuple(shape)}")
        vol.append(slice(lo, hi))
        box.append(slice(lo - int(s), hi - int(s)))
    return vol, box


def _upsample_grid(grid: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The same deformation on a finer grid covering the same field of view."""
    batch = grid.shape[0]
    disp = (grid - _identity_grid(batch, grid.shape[1:4])).permute(0, 4, 1, 2, 3)
    fine = F.interpolate(disp, size=tuple(shape), mode="trilinear", align_corners=False)
    return _identity_grid(batch, shape) + fine.permute(0, 2, 3, 4, 1)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations ``Rz @ Ry @ Rx`` from (B, 3) angles in radians."""
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


class DiffAugment3D(nn.Module):
    """Differentiable random 3D geometric augmentation for the discriminator input.

    Each sample gets its own affine map: rotations uniform in
    ``[-rotation_deg, rotation_deg]`` about each axis, a translation uniform in
    ``[-translation, translation]`` of the field of view per axis and an
    isotropic scaling ``1 + U(-scale, scale)``; the volume is resampled with
    ``affine_grid`` / ``grid_sample`` (trilinear, zeros outside), which is
    differentiable in the input. With all strengths 0 it is the identity.

    Parameters
    ----------
    rotation_deg : float
        Maximum rotation per axis, degrees (0..180).
    translation : float
        Maximum shift per axis as a fraction of the field of view (0..1).
    scale : float
        Maximum relative isotropic scaling (0..1).
    """

    def __init__(self, rotation_deg: float = 5.0, translation: float = 0.05, scale: float = 0.05) -> None:
        super().__init__()
        for name, value, hi in (("rotation_deg", rotation_deg, 180.0), ("translation", translation, 1.0),
                                ("scale", scale, 0.999)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
                raise ValueError(f"'{name}' must be a number in [0, {hi}]; got {value!r}")
        self.rotation_deg = float(rotation_deg)
        self.translation = float(translation)
        self.scale = float(scale)

    def sample(self, batch: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``(batch, 3, 4)`` affine matrices (float64, CPU) for :meth:`apply`."""
        u = torch.rand((batch, 7), generator=generator, dtype=torch.float64) * 2 - 1
        rot = _rotation(u[:, :3] * math.radians(self.rotation_deg))
        shift = u[:, 3:6] * (2.0 * self.translation)  # normalised coordinates span 2 per axis
        zoom = 1.0 + u[:, 6] * self.scale
        return torch.cat([rot * zoom[:, None, None], shift[:, :, None]], dim=2)

    @staticmethod
    def apply(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Resample ``(B, C, X, Y, Z)`` volumes with the affine maps ``theta`` (B, 3, 4)."""
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, X, Y, Z) tensor; got shape {tuple(x.shape)}")
        if theta.shape != (x.shape[0], 3, 4):
            raise ValueError(f"'theta' must have shape ({x.shape[0]}, 3, 4); got {tuple(theta.shape)}")
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` with freshly drawn transforms."""
        return self.apply(x, self.sample(x.shape[0], generator=generator))

    def extra_repr(self) -> str:
        return f"rotation_deg={self.rotation_deg}, translation={self.translation}, scale={self.scale}"


# --------------------------------------------------------------------------- networks
def _act(config: GanConfig) -> tuple[str, dict[str, float]]:
    return ("LEAKYRELU", {"negative_slope": float(config.negative_slope)})


class ConditionalGenerator(nn.Module):
    """3D U-Net generator ``(label map, class, noise) -> T1`` (see the module docstring).

    Parameters
    ----------
    n_labels : int
        Compact labels (:attr:`LabelCoder.n_labels`).
    n_classes : int
        Conditioning classes.
    config : GanConfig
    """

    def __init__(self, n_labels: int, n_classes: int, config: GanConfig) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.n_labels = check_int("n_labels", n_labels, 2)
        self.n_classes = check_int("n_classes", n_classes, 1)
        self.noise_channels = int(config.noise_channels)
        self.unet = UNet(
            spatial_dims=3, in_channels=self.n_labels + self.n_classes + self.noise_channels, out_channels=1,
            channels=config.g_channels, strides=config.g_strides, num_res_units=config.g_res_units,
            act=_act(config), norm=config.norm, dropout=config.dropout,
        )

    def condition(self, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Condition channels ``(B, n_labels + n_classes, X, Y, Z)``: one-hot labels and class."""
        if labels.ndim != 4:
            raise ValueError(f"'labels' must be (B, X, Y, Z); got shape {tuple(labels.shape)}")
        onehot = torch.zeros((labels.shape[0], self.n_labels, *labels.shape[1:]), device=labels.device)
        onehot.scatter_(1, labels[:, None].long(), 1.0)
        cls = F.one_hot(classes, self.n_classes).to(torch.float32)[:, :, None, None, None]
        return torch.cat([onehot, cls.expand(-1, -1, *labels.shape[1:])], dim=1)

    def forward(self, labels: torch.Tensor, classes: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """T1 volumes ``(B, 1, X, Y, Z)``, zero outside the brain (``labels == 0``)."""
        if noise.shape != (labels.shape[0], self.noise_channels, *labels.shape[1:]):
            raise ValueError(
                f"'noise' must have shape {(labels.shape[0], self.noise_channels, *labels.shape[1:])}; "
                f"got {tuple(noise.shape)}"
            )
        out = self.unet(torch.cat([self.condition(labels, classes), noise], dim=1))
        return out * (labels > 0)[:, None].to(out.dtype)


def patch_output_shape(shape: Sequence[int], d_layers: int, d_kernel: int) -> tuple[int, ...]:
    """Spatial shape of the PatchGAN logits for input ``shape``.

    Raises
    ------
    ValueError
        When a normalised layer would have a single voxel or the output would
        be empty (the volume is too small for ``d_layers``).
    """
    pad = (d_kernel - 1) // 2

    def conv(s: int, stride: int) -> int:
        return (s + 2 * pad - d_kernel) // stride + 1

    sizes = [conv(int(s), 2) for s in shape]  # initial conv (no norm)
    for layer in range(d_layers):
        sizes = [conv(s, 1 if layer == d_layers - 1 else 2) for s in sizes]
        if min(sizes) < 1 or math.prod(sizes) < 2:
            raise ValueError(
                f"volumes of shape {tuple(shape)} are too small for a PatchGAN with d_layers={d_layers}, "
                f"d_kernel={d_kernel}: layer {layer + 1} would have shape {tuple(sizes)}"
            )
    out = [conv(s, 1) for s in sizes]
    if min(out) < 1:
        raise ValueError(f"volumes of shape {tuple(shape)} give an empty PatchGAN output with d_layers={d_layers}")
    return tuple(out)


def build_discriminator(in_channels: int, config: GanConfig) -> nn.Module:
    """The conditional PatchGAN (MONAI ``PatchDiscriminator``); its last output is the patch logits."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=3, channels=config.d_channels, in_channels=check_int("in_channels", in_channels, 1),
        out_channels=1, num_layers_d=config.d_layers, kernel_size=config.d_kernel, activation=_act(config),
        norm=config.norm, padding=(config.d_kernel - 1) // 2,
    )


# --------------------------------------------------------------------------- training
@dataclass
class GanFit:
    """A trained conditional GAN and its training record.

    Attributes
    ----------
    generator : ConditionalGenerator
        The generator of the best monitor epoch (CPU, eval mode).
    config : GanConfig
    n_labels, n_classes : int
    history : pandas.DataFrame
        Per epoch: ``epoch, d_loss, g_adv, g_l1, g_loss, monitor_l1, seconds``.
    best_epoch : int
        Epoch whose generator was kept (1-based).
    stopped_early : bool
    train_subjects, monitor_subjects : tuple of str
        Subjects of the gradient steps and of early stopping.
    seed : int
    device : str
    seconds : float
        Wall time of training.
    """

    generator: ConditionalGenerator
    config: GanConfig
    n_labels: int
    n_classes: int
    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    train_subjects: tuple[str, ...]
    monitor_subjects: tuple[str, ...]
    seed: int
    device: str
    seconds: float

    @property
    def subjects_seen(self) -> list[str]:
        """Every subject the fit used (gradient steps and early stopping), sorted."""
        return sorted(set(self.train_subjects) | set(self.monitor_subjects))

    def record(self, log: FitLog, step: str = "cgan") -> FitLog:
        """Record :attr:`subjects_seen` under ``step`` in ``log``; return ``log``."""
        if not isinstance(log, FitLog):
            raise TypeError(f"'log' must be a FitLog; got {type(log).__name__}")
        log.record(step, self.subjects_seen)
        return log

    def summary(self) -> dict[str, Any]:
        """JSON-friendly record without weights."""
        return {
            "config": self.config.to_dict(), "best_epoch": self.best_epoch, "epochs_run": len(self.history),
            "stopped_early": self.stopped_early, "train_subjects": list(self.train_subjects),
            "monitor_subjects": list(self.monitor_subjects), "seed": self.seed, "device": self.device,
            "seconds": round(self.seconds, 3), "history": self.history.to_dict(orient="list"),
        }


def _check_gan_data(data: GanData, n_labels: int, n_classes: int, name: str, shape: tuple[int, ...] | None) -> None:
    if not isinstance(data, GanData):
        raise TypeError(f"'{name}' must be a GanData; got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"'{name}' holds no images")
    if data.labels.min() < 0 or data.labels.max() >= n_labels:
        raise ValueError(f"'{name}' labels must lie in [0, {n_labels - 1}]")
    if data.classes.min() < 0 or data.classes.max() >= n_classes:
        raise ValueError(f"'{name}' classes must lie in [0, {n_classes - 1}]")
    if shape is not None and data.shape != shape:
        raise ValueError(f"'{name}' volumes have shape {data.shape}; the training volumes have {shape}")


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _synthesize(
    generator: ConditionalGenerator,
    labels: torch.Tensor,
    classes: torch.Tensor,
    noise: torch.Tensor,
    device: str,
    batch_size: int,
) -> torch.Tensor:
    """Generator outputs (CPU, ``(n, X, Y, Z)``) for given labels, classes and noise, in eval mode."""
    out = []
    with torch.no_grad():
        for sl in _batches(len(labels), batch_size):
            out.append(generator(labels[sl].to(device), classes[sl].to(device), noise[sl].to(device))[:, 0].cpu())
    return torch.cat(out)


def train_cgan(
    train: GanData,
    monitor: GanData | None = None,
    config: GanConfig | None = None,
    *,
    n_labels: int,
    n_classes: int = 2,
    seed: int = 0,
    device: str = "auto",
    num_threads: int | None = None,
) -> GanFit:
    """Train the conditional GAN on ``train``, early-stopping on ``monitor``.

    Parameters
    ----------
    train : GanData
        Training subjects (normalised images, compact labels, classes).
    monitor : GanData, optional
        Early-stopping subjects (never in a gradient step). ``None``: train
        ``config.max_epochs`` epochs and keep the last generator.
    config : GanConfig, optional
        Default :class:`GanConfig()` (paper scale).
    n_labels : int
        Compact labels (:attr:`LabelCoder.n_labels`).
    n_classes : int
        Conditioning classes.
    seed : int
    device : {"auto", "cpu", "cuda"}
    num_threads : int, optional
        torch CPU threads during training (restored afterwards).

    Returns
    -------
    GanFit
    """
    config = GanConfig() if config is None else config
    if not isinstance(config, GanConfig):
        raise TypeError(f"'config' must be a GanConfig; got {type(config).__name__}")
    seed = check_int("seed", seed, 0)
    n_labels = check_int("n_labels", n_labels, 2)
    n_classes = check_int("n_classes", n_classes, 1)
    _check_gan_data(train, n_labels, n_classes, "train", None)
    shape = train.shape
    if monitor is not None:
        _check_gan_data(monitor, n_labels, n_classes, "monitor", shape)
        shared = sorted(set(train.subjects) & set(monitor.subjects))
        if shared:
            raise ValueError(f"subjects in both 'train' and 'monitor': {shared}")
    factor = math.prod(config.g_strides)
    if any(s % factor for s in shape):
        raise ValueError(f"volume shape {shape} must be divisible by the product of 'g_strides' ({factor})")
    patch_output_shape(shape, config.d_layers, config.d_kernel)
    dev = resolve_device(device)
    fork_devices = [torch.cuda.current_device()] if dev == "cuda" else []
    t0 = time.perf_counter()
    with torch_threads(num_threads), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        gen_net = ConditionalGenerator(n_labels, n_classes, config).to(dev)
        disc = build_discriminator(n_labels + n_classes + 1, config).to(dev)
        history, best_epoch, stopped, best_state = _fit_loop(gen_net, disc, train, monitor, config, seed, dev)
    gen_net.load_state_dict(best_state)
    gen_net = gen_net.cpu().eval()
    seconds = time.perf_counter() - t0
    logger.info("cGAN: %d epoch(s) on %d scan(s) (%s), best epoch %d%s, %.1f s", len(history), len(train), dev,
                best_epoch, " (early stop)" if stopped else "", seconds)
    return GanFit(
        generator=gen_net, config=config, n_labels=n_labels, n_classes=n_classes, history=history,
        best_epoch=best_epoch, stopped_early=stopped, train_subjects=tuple(sorted(set(train.subjects))),
        monitor_subjects=tuple(sorted(set(monitor.subjects))) if monitor is not None else (),
        seed=seed, device=dev, seconds=seconds,
    )


def _fit_loop(
    gen_net: ConditionalGenerator,
    disc: nn.Module,
    train: GanData,
    monitor: GanData | None,
    config: GanConfig,
    seed: int,
    dev: str,
) -> tuple[pd.DataFrame, int, bool, dict[str, torch.Tensor]]:
    from monai.losses import PatchAdversarialLoss

    adv = PatchAdversarialLoss(criterion=config.adversarial)
    opt_g = torch.optim.Adam(gen_net.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr_d, betas=config.betas)
    aug = DiffAugment3D(config.aug_rotation_deg, config.aug_translation, config.aug_scale)
    rng = torch.Generator().manual_seed(_derive_seed(seed, 1))
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    classes = torch.from_numpy(train.classes)
    shape = train.shape
    if monitor is not None:
        mon_rng = torch.Generator().manual_seed(_derive_seed(seed, 2))
        mon_noise = torch.randn((len(monitor), config.noise_channels, *shape), generator=mon_rng)
        mon_labels = torch.from_numpy(monitor.labels).long()
        mon_classes = torch.from_numpy(monitor.classes)
        mon_target = torch.from_numpy(monitor.images) * (mon_labels > 0)
    rows: list[dict[str, float]] = []
    best = math.inf
    best_epoch, wait, stopped = 0, 0, False
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        gen_net.train()
        disc.train()
        sums = {"d_loss": 0.0, "g_adv": 0.0, "g_l1": 0.0, "g_loss": 0.0}
        perm = torch.randperm(len(train), generator=rng)
        for sl in _batches(len(train), config.batch_size):
            idx = perm[sl]
            b = len(idx)
            grid = random_warp_grid(b, shape, config.train_deform, config.deform_control_points, generator=rng)
            lab = warp_labels(labels[idx].long(), grid)
            real = warp_images(images[idx][:, None], grid) * (lab > 0)[:, None]
            noise = torch.randn((b, config.noise_channels, *shape), generator=rng)
            thetas = [aug.sample(b, generator=rng) for _ in range(3)]
            lab, real, noise, cls = lab.to(dev), real.to(dev), noise.to(dev), classes[idx].to(dev)
            cond = gen_net.condition(lab, cls)
            fake = gen_net(lab, cls, noise)
            # discriminator step
            disc.requires_grad_(True)
            d_real = disc(aug.apply(torch.cat([cond, real], 1), thetas[0]))[-1]
            d_fake = disc(aug.apply(torch.cat([cond, fake.detach()], 1), thetas[1]))[-1]
            loss_d = 0.5 * (adv(d_real, target_is_real=True, for_discriminator=True)
                            + adv(d_fake, target_is_real=False, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator step
            disc.requires_grad_(False)
            g_adv = adv(disc(aug.apply(torch.cat([cond, fake], 1), thetas[2]))[-1],
                        target_is_real=True, for_discriminator=False)
            g_l1 = F.l1_loss(fake, real)
            loss_g = g_adv + config.lambda_l1 * g_l1
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            for key, value in (("d_loss", loss_d), ("g_adv", g_adv), ("g_l1", g_l1), ("g_loss", loss_g)):
                sums[key] += float(value.detach()) * b
        disc.requires_grad_(True)
        row = {"epoch": epoch, **{k: v / len(train) for k, v in sums.items()}}
        gen_net.eval()
        if monitor is not None:
            out = _synthesize(gen_net, mon_labels, mon_classes, mon_noise, dev, config.batch_size)
            row["monitor_l1"] = float(torch.mean(torch.abs(out - mon_target)))
            improved = row["monitor_l1"] < best - config.min_delta
        else:
            row["monitor_l1"] = float("nan")
            improved = True
        row["seconds"] = time.perf_counter() - t0
        checked = ["d_loss", "g_loss"] + (["monitor_l1"] if monitor is not None else [])
        bad = [k for k in checked if not math.isfinite(row[k])]
        if bad:
            raise RuntimeError(f"cGAN training diverged at epoch {epoch}: non-finite {bad}; lower 'lr_g' / 'lr_d'")
        rows.append(row)
        logger.debug("cGAN epoch %d: %s", epoch, {k: round(v, 5) for k, v in row.items()})
        if improved:
            best = row["monitor_l1"] if monitor is not None else best
            best_epoch, wait = epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in gen_net.state_dict().items()}
        else:
            wait += 1
            if wait >= config.patience:
                stopped = True
                break
    return pd.DataFrame(rows), best_epoch, stopped, best_state


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Generated:
    """Generator outputs in normalised units.

    Attributes
    ----------
    images : ndarray of float32, shape (n, X, Y, Z)
        On the output grid.
    labels : ndarray of int16, shape (n, X, Y, Z)
        Compact label map of each image on the output grid (its known anatomy).
    classes : ndarray of int64, shape (n,)
    parents : ndarray of int64, shape (n,)
        Row of the parent (label-map donor) in the ``parents`` data.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    parents: np.ndarray


def _parent_draw(parent_classes: np.ndarray, n_classes: int, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
    rows = []
    for c in range(n_classes):
        pool = np.flatnonzero(parent_classes == c)
        if pool.size == 0:
            raise ValueError(f"no parent image of class {c}: cannot generate that class")
        reps = -(-n_per_class // pool.size)
        order = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n_per_class]
        rows.append(order)
    return np.concatenate(rows)


def generate(
    fit: GanFit,
    parents: GanData,
    *,
    n_per_class: int,
    seed: int,
    deform: float | None = None,
    fine_labels: np.ndarray | None = None,
    factor: int = 1,
    batch_size: int | None = None,
    device: str = "auto",
) -> Generated:
    """Generate ``n_per_class`` new images of every class.

    Each image takes the label map of a parent of its class (parents cycled
    in random order), a new smooth random deformation and fresh noise.

    Parameters
    ----------
    fit : GanFit
    parents : GanData
        Label-map donors (the fold's training subjects), on the GAN's grid.
    n_per_class : int
    seed : int
    deform : float, optional
        Deformation strength (:func:`random_warp_grid` ``amplitude``); default
        ``fit.config.generation_deform``.
    fine_labels : ndarray, shape (n_parents, factor * X, factor * Y, factor * Z), optional
        With ``factor > 1``: the parents' compact labels on the output grid
        (``factor`` times finer than the GAN grid). The deformation is
        applied to them, their block majority is the generator input and
        the generated image is upsampled trilinearly to the output grid.
    factor : int
        Output grid / GAN grid voxel ratio (1: output on the GAN grid).
    batch_size : int, optional
        Default ``fit.config.batch_size``.
    device : {"auto", "cpu", "cuda"}

    Returns
    -------
    Generated
        On the output grid; classes in blocks ``0, ..., n_classes - 1``.
    """
    if not isinstance(fit, GanFit):
        raise TypeError(f"'fit' must be a GanFit; got {type(fit).__name__}")
    n_per_class = check_int("n_per_class", n_per_class, 1)
    seed = check_int("seed", seed, 0)
    _check_gan_data(parents, fit.n_labels, fit.n_classes, "parents", None)
    cfg = fit.config
    amplitude = cfg.generation_deform if deform is None else float(deform)
    batch_size = cfg.batch_size if batch_size is None else check_int("batch_size", batch_size, 1)
    factor = check_int("factor", factor, 1)
    out_shape = tuple(factor * s for s in parents.shape)
    if factor > 1 and (fine_labels is None or np.shape(fine_labels) != (len(parents), *out_shape)):
        raise ValueError(f"'fine_labels' must have shape {(len(parents), *out_shape)} for factor {factor}; "
                         f"got {None if fine_labels is None else np.shape(fine_labels)}")
    source = parents.labels if factor == 1 else fine_labels
    rows = _parent_draw(parents.classes, fit.n_classes, n_per_class, np.random.default_rng(_derive_seed(seed, 3)))
    images = np.empty((len(rows), *out_shape), dtype=np.float32)
    labels = np.empty((len(rows), *out_shape), dtype=np.int16)
    dev = resolve_device(device)
    gen_net = fit.generator.to(dev).eval()
    try:
        for sl in _batches(len(rows), batch_size):
            # one generator per image: the result does not depend on the batch size
            rngs = [torch.Generator().manual_seed(_derive_seed(seed, 4, i)) for i in range(sl.start, sl.stop)]
            grid = torch.cat([random_warp_grid(1, parents.shape, amplitude, cfg.deform_control_points, generator=g)
                              for g in rngs])
            noise = torch.cat([torch.randn((1, cfg.noise_channels, *parents.shape), generator=g) for g in rngs])
            chunk = torch.from_numpy(np.asarray(source[rows[sl]], dtype=np.int64))
            out = warp_labels(chunk, grid if factor == 1 else _upsample_grid(grid, out_shape))
            coarse = out if factor == 1 else torch.from_numpy(downsample_labels(out.numpy(), factor, fit.n_labels))
            img = _synthesize(gen_net, coarse.long(), torch.from_numpy(parents.classes[rows[sl]]), noise, dev,
                              batch_size).numpy()
            labels[sl] = out.numpy()
            images[sl] = img if factor == 1 else upsample_images(img, factor) * (labels[sl] > 0)
    finally:
        fit.generator.cpu()
    return Generated(images, labels, parents.classes[rows].copy(), rows.astype(np.int64))


def reconstruct(
    fit: GanFit, data: GanData, *, seed: int, batch_size: int | None = None, device: str = "auto"
) -> np.ndarray:
    """The generator's image for each row of ``data`` from its own, undeformed label map and class.

    Paired with the real images of ``data`` (subjects the GAN never saw,
    e.g. the inner validation split) this gives the SSIM / PSNR pairs.

    Returns
    -------
    ndarray of float32, shape (n, X, Y, Z), normalised units.
    """
    if not isinstance(fit, GanFit):
        raise TypeError(f"'fit' must be a GanFit; got {type(fit).__name__}")
    seed = check_int("seed", seed, 0)
    _check_gan_data(data, fit.n_labels, fit.n_classes, "data", None)
    batch_size = fit.config.batch_size if batch_size is None else check_int("batch_size", batch_size, 1)
    out = np.empty(data.images.shape, dtype=np.float32)
    dev = resolve_device(device)
    gen_net = fit.generator.to(dev).eval()
    try:
        for sl in _batches(len(data), batch_size):
            noise = torch.cat([torch.randn((1, fit.config.noise_channels, *data.shape),
                                           generator=torch.Generator().manual_seed(_derive_seed(seed, 5, i)))
                               for i in range(sl.start, sl.stop)])
            out[sl] = _synthesize(gen_net, torch.from_numpy(data.labels[sl]).long(),
                                  torch.from_numpy(data.classes[sl]), noise, dev, batch_size).numpy()
    finally:
        fit.generator.cpu()
    return out


# --------------------------------------------------------------------------- the study scenario
def monitor_split(
    subjects: Sequence[str], classes: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Subject-level, class-stratified split of rows into (train rows, monitor rows).

    Per class with ``k >= 2`` subjects, ``max(1, round(fraction * k))``
    subjects (all their rows) go to the monitor side; a class with a single
    subject stays in training. ``fraction == 0`` puts everything in training.

    Returns
    -------
    (ndarray, ndarray) of int64
        Sorted row indices.
    """
    subjects = [str(s) for s in subjects]
    classes = np.asarray(classes, dtype=np.int64)
    if len(subjects) != len(classes):
        raise ValueError(f"'subjects' ({len(subjects)}) and 'classes' ({len(classes)}) differ in length")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 0.5:
        raise ValueError(f"'fraction' must be a number in [0, 0.5]; got {fraction!r}")
    seed = check_int("seed", seed, 0)
    rng = np.random.default_rng(_derive_seed(seed, 6))
    subject_class: dict[str, int] = {}
    for s, c in zip(subjects, classes.tolist()):
        if subject_class.setdefault(s, c) != c:
            raise ValueError(f"subject {s!r} has scans of more than one class")
    monitor: set[str] = set()
    if fraction > 0:
        for c in sorted(set(subject_class.values())):
            pool = sorted(s for s, k in subject_class.items() if k == c)
            if len(pool) >= 2:
                n = max(1, int(round(fraction * len(pool))))
                monitor.update(rng.choice(pool, size=n, replace=False).tolist())
    is_mon = np.array([s in monitor for s in subjects], dtype=bool)
    return np.flatnonzero(~is_mon), np.flatnonzero(is_mon)


@dataclass(frozen=True)
class SyntheticFold:
    """One synthetic fold of generated images (in the parents' intensity units).

    Attributes
    ----------
    index : int
        Fold number (0-based).
    images : ndarray of float32, shape (n, X, Y, Z)
    label_maps : ndarray of int32, shape (n, X, Y, Z)
        The known ROI label map of each image (segmentation ground truth).
    brain_masks : ndarray of bool, shape (n, X, Y, Z)
    classes : ndarray of int64, shape (n,)
    parents : tuple of str
        Subject id of each image's label-map donor.
    parent_rows : ndarray of int64, shape (n,)
        Row of that donor scan in the training :class:`ImageSet`.
    seed : int
        Generation seed of this fold.
    """

    index: int
    images: np.ndarray
    label_maps: np.ndarray
    brain_masks: np.ndarray
    classes: np.ndarray
    parents: tuple[str, ...]
    parent_rows: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ValidationPairs:
    """Generator reconstructions of subjects the GAN never saw, paired with their real T1.

    ``generated[i]`` is ``G(label map of subjects[i], class, noise)`` rescaled
    to that scan's intensity units; ``real[i]`` its real T1 (zero outside the
    brain mask). These are the SSIM / PSNR pairs.
    """

    generated: np.ndarray
    real: np.ndarray
    classes: np.ndarray
    subjects: tuple[str, ...]


@dataclass
class GbaResult:
    """What :func:`gba_scenario` returns: the synthetic folds, the fit and validation pairs."""

    folds: list[SyntheticFold]
    fit: GanFit
    label_values: tuple[int, ...]
    validation: ValidationPairs | None
    seconds: dict[str, float]


def gba_scenario(
    train: ImageSet,
    *,
    n_folds: int,
    n_per_class: int,
    seed: int,
    config: GanConfig | Mapping[str, Any] | None = None,
    label_values: Sequence[int] | None = None,
    n_classes: int = 2,
    validation: ImageSet | None = None,
    grid_factor: int = 1,
    log: FitLog | None = None,
    step: str = "cgan",
    device: str = "auto",
    num_threads: int | None = None,
) -> GbaResult:
    """GAN-based augmentation (the seed's GBA) for one fold.

    Trains the conditional GAN on ``train`` only (a subject-level monitor
    split of it early-stops training, see :func:`monitor_split`), then
    generates ``n_folds`` synthetic folds of ``n_per_class`` images per class.

    Parameters
    ----------
    train : ImageSet
        The fold's real training scans.
    n_folds : int
        Synthetic folds (seed: 5).
    n_per_class : int
        Images per class per fold (seed: 50).
    seed : int
    config : GanConfig or mapping, optional
        GAN settings (profile parameters); default paper scale.
    label_values : sequence of int, optional
        ROI label values; default the non-zero values found in ``train``.
    n_classes : int
        Classes (2: HC = 0, MS = 1).
    validation : ImageSet, optional
        Scans the GAN must not see (the inner validation split): returned as
        :class:`ValidationPairs` for SSIM / PSNR.
    grid_factor : int
        The GAN works on a grid ``grid_factor`` times coarser than the input
        (block means of the images, block majority of the labels); generated
        images are upsampled back to the input grid and their known label
        maps are the deformed parents' label maps *at the input grid*
        (:func:`generate` with ``fine_labels``). The input shape must be
        divisible by ``grid_factor`` and the coarse shape by the generator's
        total stride.
    log : FitLog, optional
        Receives ``step`` with every training subject (gradient and monitor).
    step : str
        Step name in ``log``.
    device : {"auto", "cpu", "cuda"}
    num_threads : int, optional
        torch CPU threads while training / generating.

    Returns
    -------
    GbaResult
    """
    if not isinstance(train, ImageSet):
        raise TypeError(f"'train' must be an ImageSet; got {type(train).__name__}")
    if validation is not None and not isinstance(validation, ImageSet):
        raise TypeError(f"'validation' must be an ImageSet or None; got {type(validation).__name__}")
    n_folds = check_int("n_folds", n_folds, 1)
    n_per_class = check_int("n_per_class", n_per_class, 1)
    seed = check_int("seed", seed, 0)
    n_classes = check_int("n_classes", n_classes, 1)
    cfg = config if isinstance(config, GanConfig) else GanConfig.from_mapping(config)
    if log is not None and not isinstance(log, FitLog):
        raise TypeError(f"'log' must be a FitLog or None; got {type(log).__name__}")
    if train.classes.max() >= n_classes:
        raise ValueError(f"'train' classes must lie in [0, {n_classes - 1}]; got max {int(train.classes.max())}")
    missing = sorted(set(range(n_classes)) - set(train.classes.tolist()))
    if missing:
        raise ValueError(f"'train' has no scan of class(es) {missing}: the GAN cannot learn them")
    if validation is not None:
        shared = sorted(set(train.subjects) & set(validation.subjects))
        if shared:
            raise ValueError(f"subjects in both 'train' and 'validation': {shared}")
        if validation.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(f"'validation' volumes {validation.images.shape[1:]} differ from 'train' "
                             f"{train.images.shape[1:]}")
    if label_values is None:
        label_values = [int(v) for v in np.unique(train.label_maps) if v != 0]
    coder = LabelCoder(label_values)
    factor = _check_factor(train.images.shape[1:], grid_factor)
    fine, scales = GanData.from_images(train, coder, cfg.intensity_percentile)
    data = GanData(downsample_images(fine.images, factor), downsample_labels(fine.labels, factor, coder.n_labels),
                   fine.classes, fine.subjects)
    tr_rows, mon_rows = monitor_split(data.subjects, data.classes, cfg.monitor_fraction, seed)
    monitor = data.subset(mon_rows) if len(mon_rows) else None
    if log is not None:
        log.record(step, data.subjects)
    fit = train_cgan(data.subset(tr_rows), monitor, cfg, n_labels=coder.n_labels, n_classes=n_classes, seed=seed,
                     device=device, num_threads=num_threads)
    t0 = time.perf_counter()
    folds = []
    with torch_threads(num_threads):
        for k in range(n_folds):
            fold_seed = _derive_seed(seed, 100, k)
            gen = generate(fit, data, n_per_class=n_per_class, seed=fold_seed, fine_labels=fine.labels, factor=factor,
                           device=device)
            label_maps, masks = coder.decode(gen.labels)
            images = gen.images * scales[gen.parents][:, None, None, None].astype(np.float32)
            folds.append(SyntheticFold(k, images, label_maps, masks, gen.classes,
                                       tuple(data.subjects[i] for i in gen.parents), gen.parents, fold_seed))
        t_gen = time.perf_counter() - t0
        pairs = None
        if validation is not None:
            vfine, vscales = GanData.from_images(validation, coder, cfg.intensity_percentile)
            vdata = GanData(downsample_images(vfine.images, factor),
                            downsample_labels(vfine.labels, factor, coder.n_labels), vfine.classes, vfine.subjects)
            rec = upsample_images(reconstruct(fit, vdata, seed=_derive_seed(seed, 200), device=device), factor)
            pairs = ValidationPairs(rec * (vfine.labels > 0) * vscales[:, None, None, None].astype(np.float32),
                                    validation.images * validation.brain_masks, validation.classes,
                                    validation.subjects)
    logger.info("GBA: %d fold(s) x %d image(s) per class generated in %.1f s", n_folds, n_per_class, t_gen)
    return GbaResult(folds, fit, coder.label_values, pairs,
                     {"train": round(fit.seconds, 3), "generate": round(t_gen, 3),
                      "validation": round(time.perf_counter() - t0 - t_gen, 3)})
