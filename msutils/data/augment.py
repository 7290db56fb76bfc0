"""Traditional data augmentation (TDA) of 3D images together with their label maps.

Seed 000's TDA: random horizontal flip (mirroring across the sagittal plane),
an affine transform made of rotations within +/-10 degrees, translations of up
to 10 voxels and an isotropic scaling of 90-110 %. :func:`traditional_augment`
draws one such transform from a seeded generator and applies it with MONAI's
:class:`~monai.transforms.Affine` to the image (bilinear) and to the label map
(nearest neighbour) with the *same* parameters, so the labels follow the
anatomy; outside the field of view both are zero.

Arrays are in the cohort's voxel order (nibabel ``(i, j, k)``, RAS+ for the
synthetic cohort), so axis 0 is left-right and the flip mirrors across the
sagittal plane (left structures move to the right side, keeping their label
values: the label map is mirrored with the image).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["TdaParams", "draw_transform", "traditional_augment"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TdaParams:
    """Ranges of the random transform (seed 000's values by default).

    Attributes
    ----------
    flip_prob : float
        Probability of the sagittal mirror.
    flip_axis : int
        Array axis mirrored (0 = left-right in RAS voxel order).
    max_rotation_deg : float
        Rotation about each axis drawn uniformly in +/- this many degrees.
    max_translation_vox : float
        Translation along each axis drawn uniformly in +/- this many voxels.
    scale_range : tuple of float
        Isotropic scale factor drawn uniformly in this range.
    """

    flip_prob: float = 0.5
    flip_axis: int = 0
    max_rotation_deg: float = 10.0
    max_translation_vox: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self) -> None:
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"'flip_prob' must be in [0, 1]; got {self.flip_prob!r}")
        if self.flip_axis not in (0, 1, 2):
            raise ValueError(f"'flip_axis' must be one of [0, 1, 2]; got {self.flip_axis!r}")
        if self.max_rotation_deg < 0 or self.max_translation_vox < 0:
            raise ValueError("'max_rotation_deg' and 'max_translation_vox' must be >= 0")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"'scale_range' must satisfy 0 < low <= high; got {self.scale_range!r}")


def draw_transform(rng: np.random.Generator, params: TdaParams = TdaParams()) -> dict[str, Any]:
    """Draw one transform: ``flip`` (bool), ``rotate_deg`` (3), ``translate_vox`` (3), ``scale``."""
    return {
        "flip": bool(rng.random() < params.flip_prob),
        "rotate_deg": rng.uniform(-params.max_rotation_deg, params.max_rotation_deg, 3).tolist(),
        "translate_vox": rng.uniform(-params.max_translation_vox, params.max_translation_vox, 3).tolist(),
        "scale": float(rng.uniform(*params.scale_range)),
    }


def traditional_augment(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | int,
    params: TdaParams = TdaParams(),
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One random TDA copy of an image and its label map.

    Parameters
    ----------
    image : ndarray, 3D float
    labels : ndarray, 3D integer, same shape
    rng : numpy Generator or int seed
    params : TdaParams

    Returns
    -------
    (image, labels, transform)
        Float32 image, label map of the input dtype, and the drawn parameters
        (see :func:`draw_transform`): after the optional mirror the content is
        rotated about the volume centre, grows by the factor ``scale`` and moves
        by ``translate_vox`` voxels.
    """
    import torch
    from monai.transforms import Affine

    img = np.asarray(image, dtype=np.float32)
    lab = np.asarray(labels)
    if img.ndim != 3 or lab.shape != img.shape:
        raise ValueError(f"'image' must be 3D and 'labels' the same shape; got {img.shape} and {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"'labels' must be an integer label map; got dtype {lab.dtype}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    t = draw_transform(gen, params)
    if t["flip"]:
        img = np.flip(img, axis=params.flip_axis).copy()
        lab = np.flip(lab, axis=params.flip_axis).copy()
    # MONAI's Affine maps output to input coordinates: invert translation and scale so that the
    # content moves by +translate_vox and grows by the factor scale
    kwargs = dict(rotate_params=np.deg2rad(t["rotate_deg"]).tolist(),
                  translate_params=[-v for v in t["translate_vox"]], scale_params=[1.0 / t["scale"]] * 3,
                  padding_mode="zeros", image_only=True)
    out_img = Affine(mode="bilinear", **kwargs)(torch.from_numpy(img)[None])
    out_lab = Affine(mode="nearest", **kwargs)(torch.from_numpy(lab.astype(np.float32))[None])
    img_arr = np.asarray(out_img[0], dtype=np.float32)
    lab_arr = np.rint(np.asarray(out_lab[0])).astype(lab.dtype)
    logger.debug("TDA transform %s", t)
    return img_arr, lab_arr, {**t, "params": asdict(params)}
