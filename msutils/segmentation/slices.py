"""FLAIR volume -> 2D axial slices, as in seed 003 (2D nnU-Net lesion segmentation).

The paper's preprocessing, step by step, and what this module does for each:

1. **Skull stripping** (paper: FSL BET). :func:`skull_strip` multiplies the
   FLAIR volume by a brain mask. Use the cohort's ``brain_mask`` when there is
   one. Without one, :func:`estimate_brain_mask` gives a crude fallback (see
   there): it is a foreground/head mask cleaned up morphologically, **not** a
   replacement for BET, and the notebook must say so when it is used.
2. **Normalisation to [0, 1]**: :func:`normalize_intensity`, per volume, from the
   brain voxels only (min-max as in the paper, or a robust percentile window);
   voxels outside the brain are 0.
3. **Resizing** to the profile's slice size (the paper: 512 x 512):
   :func:`resize_image` (linear, ``order=1``, anti-aliased when shrinking) for
   images, :func:`resize_mask` (nearest neighbour, ``order=0``) for masks.
4. **Mask processing**: :func:`binarize_mask` maps every mask to {0, 1}
   (``value > 0.5`` -> 1), so masks with several lesion labels (active /
   inactive) or 0/255 masks all become "lesion vs background".
5. **Entropy check**: :func:`mask_entropy` is Eq. (1) of the paper, the Shannon
   entropy **in bits** of the distribution of the binary mask's pixel values:
   ``p = fraction of lesion pixels``, ``H = -p log2 p - (1 - p) log2 (1 - p)``
   with ``0 log 0 = 0``. An empty mask has H = 0, a half-filled mask H = 1 bit.
   :func:`entropy_keep` keeps slices with ``H >= 0.01`` (the paper removes
   ``H < 0.01``). ``H`` only depends on the lesion *fraction*, so the cut is the
   same at every slice size: it keeps slices whose lesion area is at least
   ~0.086 % of the slice (>= 226 pixels at 512 x 512, >= 15 at 128 x 128). It also
   removes every lesion-free slice (H = 0): the training set is lesion slices
   only, as in the paper, whose negative test slices were chosen separately.
6. **Augmentation**: :func:`augment_slices`, offline, with MONAI dictionary
   transforms (``RandAffined`` + ``RandFlipd``), ``n_copies=5`` new images per
   slice, seeded. Apply it to the training slices of a fold only (never to
   validation or test slices). nnU-Net's own online augmentation is kept on top
   (the default ``nnUNetTrainer`` is used unchanged): the paper used nnU-Net
   out of the box *and* its own augmentation, so both are part of the recipe.

Slices are cut along ``axis`` (default 2, axial for RAS+ volumes as loaded by
nibabel) and keep the array axes of the volume: a slice is ``volume[:, :, k]``
with shape ``(X, Y)``. Display them with ``.T`` and ``origin="lower"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from msutils.core.validation import check_choice
from msutils.segmentation.lesions import largest_component

if TYPE_CHECKING:  # pragma: no cover
    from msutils.data.cohort import Cohort

__all__ = [
    "BRAIN_SOURCES",
    "brain_mask_for",
    "pad_to_square",
    "ENTROPY_THRESHOLD",
    "SliceStack",
    "AugmentedSlices",
    "estimate_brain_mask",
    "skull_strip",
    "normalize_intensity",
    "binarize_mask",
    "resize_image",
    "resize_mask",
    "mask_entropy",
    "slice_entropies",
    "entropy_keep",
    "volume_to_slices",
    "augment_slices",
]

logger = logging.getLogger(__name__)

#: The paper's cut: masks with a Shannon entropy below this (bits) are excluded.
ENTROPY_THRESHOLD: float = 0.01

_NORMALIZATIONS = ["minmax", "percentile"]


@dataclass(frozen=True)
class SliceStack:
    """2D slices cut from one volume.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n, H, W)`` float32 in [0, 1], skull-stripped and normalised.
    masks : numpy.ndarray or None
        ``(n, H, W)`` uint8 binary lesion masks (None when no lesion mask was given).
    brain : numpy.ndarray
        ``(n, H, W)`` bool brain masks, resized like the lesion masks.
    index : numpy.ndarray
        ``(n,)`` int, position of each slice along the cut axis of the volume.
    entropy : numpy.ndarray
        ``(n,)`` float, :func:`mask_entropy` of each mask in bits (NaN without masks).
    """

    images: np.ndarray
    masks: np.ndarray | None
    brain: np.ndarray
    index: np.ndarray
    entropy: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, keep: np.ndarray | Sequence[int] | Sequence[bool]) -> "SliceStack":
        """Return the slices picked by a boolean mask or an index array."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (len(self),):
            raise ValueError(f"boolean 'keep' must have shape ({len(self)},); got {keep.shape}")
        return SliceStack(
            images=self.images[keep],
            masks=None if self.masks is None else self.masks[keep],
            brain=self.brain[keep],
            index=self.index[keep],
            entropy=self.entropy[keep],
        )


@dataclass(frozen=True)
class AugmentedSlices:
    """Augmented copies made by :func:`augment_slices`.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n * n_copies, H, W)`` float32 in [0, 1].
    masks : numpy.ndarray
        ``(n * n_copies, H, W)`` uint8 in {0, 1}.
    source : numpy.ndarray
        ``(n * n_copies,)`` int, index of the input slice each copy was made from.
    copy : numpy.ndarray
        ``(n * n_copies,)`` int, copy number 1..n_copies (0 is kept for originals).
    """

    images: np.ndarray
    masks: np.ndarray
    source: np.ndarray
    copy: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- validation
def _as_array(x: object, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(x)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in dims:
        raise ValueError(f"'{name}' must be a {' or '.join(f'{d}D' for d in dims)} array; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"'{name}' is empty (shape {arr.shape})")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"'{name}' contains NaN or infinite values")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"'size' must be two positive integers (H, W); got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"'size' must be two positive integers (H, W); got {size!r}")
    return h, w


# --------------------------------------------------------------------------- steps
def estimate_brain_mask(
    flair: np.ndarray,
    *,
    threshold_fraction: float = 0.1,
    opening_radius: int = 2,
) -> np.ndarray:
    """Crude brain mask for a FLAIR volume that comes without one (fallback only).

    Steps: voxels above ``threshold_fraction`` x the 99th percentile of the
    positive voxels; a binary opening with a ball of ``opening_radius`` voxels
    (detaches thin skull/scalp bridges); the largest 3D connected component;
    holes filled in 3D and then slice by slice along the last axis.

    This is a head/foreground mask, not BET: on real scans it keeps parts of
    the skull and scalp. Prefer the cohort's ``brain_mask`` column.

    Parameters
    ----------
    flair : numpy.ndarray
        3D (or 2D) FLAIR intensities.
    threshold_fraction : float
        Fraction (0, 1) of the robust maximum used as the foreground threshold.
    opening_radius : int
        Radius of the opening structuring element, 0 to skip the opening.

    Returns
    -------
    numpy.ndarray
        Boolean mask, same shape as ``flair``.
    """
    from scipy import ndimage

    vol = _as_array(flair, "flair", (2, 3)).astype(np.float32, copy=False)
    _check_finite(vol, "flair")
    if not 0 < threshold_fraction < 1:
        raise ValueError(f"'threshold_fraction' must be in (0, 1); got {threshold_fraction}")
    if opening_radius < 0:
        raise ValueError(f"'opening_radius' must be >= 0; got {opening_radius}")
    positive = vol[vol > 0]
    if positive.size == 0:
        raise ValueError("'flair' has no positive voxels: cannot estimate a brain mask")
    mask = vol > threshold_fraction * float(np.percentile(positive, 99))
    if opening_radius > 0:
        grid = np.indices((2 * opening_radius + 1,) * vol.ndim) - opening_radius
        ball = (grid**2).sum(axis=0) <= opening_radius**2
        opened = ndimage.binary_opening(mask, structure=ball)
        mask = opened if opened.any() else mask
    mask = ndimage.binary_fill_holes(largest_component(mask, connectivity=2 * vol.ndim))
    if mask.ndim == 3:
        for k in range(mask.shape[2]):
            mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def skull_strip(flair: np.ndarray, brain_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero every voxel outside the brain.

    Parameters
    ----------
    flair : numpy.ndarray
        FLAIR intensities (2D or 3D).
    brain_mask : numpy.ndarray, optional
        Brain mask of the same shape (nonzero = brain). None -> the fallback
        :func:`estimate_brain_mask` (logged as a warning).

    Returns
    -------
    stripped : numpy.ndarray
        float32 copy of ``flair`` with zeros outside the brain.
    mask : numpy.ndarray
        The boolean brain mask used.
    """
    vol = _as_array(flair, "flair", (2, 3))
    _check_finite(vol, "flair")
    if brain_mask is None:
        logger.warning("no brain mask given: using the fallback estimate_brain_mask (not a real skull strip)")
        mask = estimate_brain_mask(vol)
    else:
        mask = np.asarray(brain_mask)
        if mask.shape != vol.shape:
            raise ValueError(f"'brain_mask' shape {mask.shape} does not match 'flair' shape {vol.shape}")
        mask = mask > 0
    stripped = np.where(mask, vol, 0).astype(np.float32)
    return stripped, mask


def normalize_intensity(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    method: str = "minmax",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Scale intensities to [0, 1] using the voxels inside ``mask``.

    Parameters
    ----------
    image : numpy.ndarray
        Image or volume.
    mask : numpy.ndarray, optional
        Region the scaling is computed from (nonzero = inside); outside it the
        output is 0. None -> the whole image.
    method : {"minmax", "percentile"}
        ``"minmax"`` (the paper): ``(v - min) / (max - min)`` over the mask.
        ``"percentile"``: the same with the ``percentiles`` of the mask voxels as
        min and max, values outside clipped (robust to a few hot voxels).
    percentiles : tuple of float
        Lower and upper percentile for ``method="percentile"``.

    Returns
    -------
    numpy.ndarray
        float32 array in [0, 1], same shape as ``image``.
    """
    if method not in _NORMALIZATIONS:
        raise ValueError(f"'method' must be one of {_NORMALIZATIONS}; got {method!r}")
    img = np.asarray(image, dtype=np.float32)
    _check_finite(img, "image")
    if mask is None:
        inside = np.ones(img.shape, dtype=bool)
    else:
        inside = np.asarray(mask) > 0
        if inside.shape != img.shape:
            raise ValueError(f"'mask' shape {inside.shape} does not match 'image' shape {img.shape}")
    values = img[inside]
    if values.size == 0:
        raise ValueError("'mask' is empty: nothing to normalise")
    if method == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        p_lo, p_hi = percentiles
        if not 0 <= p_lo < p_hi <= 100:
            raise ValueError(f"'percentiles' must satisfy 0 <= low < high <= 100; got {percentiles}")
        lo, hi = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
    if hi <= lo:
        raise ValueError(f"image is constant inside the mask (value {lo}): cannot scale to [0, 1]")
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    out[~inside] = 0.0
    return out.astype(np.float32, copy=False)


def binarize_mask(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Map a lesion mask to {0, 1}: ``value > threshold`` -> 1 (uint8)."""
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    arr = arr.astype(np.float32, copy=False)
    _check_finite(arr, "mask")
    return (arr > threshold).astype(np.uint8)


def resize_image(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a 2D image to ``size`` (H, W): linear interpolation, anti-aliased when shrinking.

    Returns float32; values stay within the input's range (``preserve_range``).
    """
    from skimage.transform import resize

    img = _as_array(image, "image", 2).astype(np.float32, copy=False)
    h, w = _check_size(size)
    if img.shape == (h, w):
        return img.copy()
    out = resize(img, (h, w), order=1, mode="constant", cval=0.0, preserve_range=True, anti_aliasing=None)
    return np.clip(out, float(img.min()), float(img.max())).astype(np.float32)


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a 2D mask to ``size`` (H, W) by nearest neighbour and binarise it (uint8 {0, 1})."""
    from skimage.transform import resize

    m = binarize_mask(_as_array(mask, "mask", 2))
    h, w = _check_size(size)
    if m.shape == (h, w):
        return m.copy()
    out = resize(m, (h, w), order=0, mode="constant", cval=0, preserve_range=True, anti_aliasing=False)
    return binarize_mask(out)


def mask_entropy(mask: np.ndarray) -> float:
    """Shannon entropy, in bits, of a binary mask's pixel-value distribution (paper Eq. 1).

    ``p`` is the fraction of lesion pixels (``mask > 0.5``); the value is
    ``-p log2 p - (1 - p) log2 (1 - p)`` with ``0 log 0 = 0``: 0 for an empty
    (or full) mask, 1 bit for a half-filled mask, ~7.4e-5 bits for one lesion
    pixel in 512 x 512.
    """
    arr = np.asarray(mask)
    if arr.size == 0:
        raise ValueError("'mask' is empty")
    p = float(np.count_nonzero(binarize_mask(arr))) / arr.size
    return _binary_entropy(np.array([p]))[0].item()


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros_like(p)
    inner = (p > 0) & (p < 1)
    q = p[inner]
    out[inner] = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return out


def slice_entropies(masks: np.ndarray) -> np.ndarray:
    """:func:`mask_entropy` of every slice of an ``(n, H, W)`` mask stack (float64, bits)."""
    m = _as_array(masks, "masks", 3)
    frac = np.count_nonzero(binarize_mask(m).reshape(m.shape[0], -1), axis=1) / float(m.shape[1] * m.shape[2])
    return _binary_entropy(frac)


def entropy_keep(masks: np.ndarray, threshold: float = ENTROPY_THRESHOLD) -> np.ndarray:
    """Boolean ``(n,)``: True for slices whose mask entropy is ``>= threshold`` (the paper drops ``< 0.01``)."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"'threshold' must be in [0, 1] bits; got {threshold}")
    return slice_entropies(masks) >= threshold


def volume_to_slices(
    flair: np.ndarray,
    lesion_mask: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    *,
    size: Sequence[int] = (512, 512),
    axis: int = 2,
    normalization: str = "minmax",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> SliceStack:
    """Run the paper's preprocessing steps 1-5 on one FLAIR volume.

    Skull strip (:func:`skull_strip`), normalise per volume inside the brain
    (:func:`normalize_intensity`), cut every slice along ``axis``, resize
    images (linear) and masks (nearest, binarised) to ``size``, zero the
    resized image outside the resized brain mask (interpolation would
    otherwise leak into the background), and compute each mask's entropy. No slice is dropped here: select with
    ``stack.select(stack.entropy >= ENTROPY_THRESHOLD)`` (training slices) or
    any other rule (e.g. lesion-free test slices).

    Parameters
    ----------
    flair : numpy.ndarray
        3D FLAIR volume.
    lesion_mask : numpy.ndarray, optional
        Lesion mask, same shape (any labels; > 0.5 is lesion).
    brain_mask : numpy.ndarray, optional
        Brain mask, same shape; None -> :func:`estimate_brain_mask` fallback.
    size : tuple of int
        Output slice size (H, W); the paper uses 512 x 512.
    axis : int
        Axis to cut along (2 = axial for RAS+ volumes).
    normalization : {"minmax", "percentile"}
        See :func:`normalize_intensity`.
    percentiles : tuple of float
        Used with ``normalization="percentile"``.

    Returns
    -------
    SliceStack
    """
    vol = _as_array(flair, "flair", 3)
    if axis not in (0, 1, 2):
        raise ValueError(f"'axis' must be one of [0, 1, 2]; got {axis}")
    h, w = _check_size(size)
    les = None
    if lesion_mask is not None:
        les = np.asarray(lesion_mask)
        if les.shape != vol.shape:
            raise ValueError(f"'lesion_mask' shape {les.shape} does not match 'flair' shape {vol.shape}")
        les = binarize_mask(les)
    stripped, brain = skull_strip(vol, brain_mask)
    norm = normalize_intensity(stripped, brain, method=normalization, percentiles=percentiles)

    n = vol.shape[axis]
    images = np.empty((n, h, w), dtype=np.float32)
    brains = np.empty((n, h, w), dtype=bool)
    masks = np.empty((n, h, w), dtype=np.uint8) if les is not None else None
    for k in range(n):
        brains[k] = resize_mask(np.take(brain, k, axis=axis), (h, w)).astype(bool)
        images[k] = np.where(brains[k], resize_image(np.take(norm, k, axis=axis), (h, w)), 0.0)
        if masks is not None:
            masks[k] = resize_mask(np.take(les, k, axis=axis), (h, w))
    entropy = slice_entropies(masks) if masks is not None else np.full(n, np.nan)
    return SliceStack(images=images, masks=masks, brain=brains, index=np.arange(n), entropy=entropy)


def augment_slices(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    n_copies: int = 5,
    seed: int = 0,
    rotate_deg: float = 40.0,
    shift_fraction: float = 0.2,
    shear_deg: float = 20.0,
    zoom: float = 0.2,
    flip_prob: float = 0.5,
    flip_axis: int = 0,
    device: str | None = None,
) -> AugmentedSlices:
    """Offline augmentation of training slices with MONAI (paper step 6).

    Give it the **training slices of one fold only**. Each slice gets
    ``n_copies`` new versions, each from one random affine transform
    (``monai.transforms.RandAffined``, applied with probability 1) followed by
    a random flip (``RandFlipd``):

    - rotation uniform in ``±rotate_deg`` (paper: ±40°);
    - translation uniform in ``±shift_fraction`` of the height and of the
      width, in pixels (paper: width/height shift ±20 %);
    - shear along the first in-plane axis with factor uniform in
      ``±tan(shear_deg)`` (paper/Keras: a single shear angle of ±20°);
    - zoom: scale factor ``1 + uniform(-zoom, zoom)`` drawn independently for
      each axis (paper/Keras: zoom range ±20 %);
    - flip along ``flip_axis`` with probability ``flip_prob``. With slices cut
      by :func:`volume_to_slices` from a RAS+ volume, axis 0 is left-right,
      i.e. the "horizontal flip" of the displayed image.

    Images are resampled bilinearly, masks by nearest neighbour (they stay in
    {0, 1}); both get the same transform; outside the field of view is 0.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, H, W)`` training slices in [0, 1].
    masks : numpy.ndarray
        ``(n, H, W)`` binary masks.
    n_copies : int
        New images per slice (paper: 5).
    seed : int
        Seeds the transforms (``set_random_state``); same seed, same copies.
        No global random state is touched.
    rotate_deg, shift_fraction, shear_deg, zoom, flip_prob, flip_axis
        Augmentation ranges (defaults: the paper's).
    device : str, optional
        Torch device for the resampling (e.g. ``"cuda"``); None -> CPU.

    Returns
    -------
    AugmentedSlices
        Only the new copies, ordered slice by slice then copy by copy; the
        training set of the fold is the original slices plus these.
    """
    import torch
    from monai.transforms import Compose, RandAffined, RandFlipd

    imgs = _as_array(images, "images", 3).astype(np.float32, copy=False)
    _check_finite(imgs, "images")
    msk = _as_array(masks, "masks", 3)
    if msk.shape != imgs.shape:
        raise ValueError(f"'masks' shape {msk.shape} does not match 'images' shape {imgs.shape}")
    msk = binarize_mask(msk)
    if int(n_copies) != n_copies or n_copies < 1:
        raise ValueError(f"'n_copies' must be a positive integer; got {n_copies}")
    if flip_axis not in (0, 1):
        raise ValueError(f"'flip_axis' must be one of [0, 1]; got {flip_axis}")
    for name, value, upper in (
        ("rotate_deg", rotate_deg, 180.0),
        ("shift_fraction", shift_fraction, 1.0),
        ("shear_deg", shear_deg, 89.0),
        ("zoom", zoom, 0.99),
        ("flip_prob", flip_prob, 1.0),
    ):
        if not 0 <= value <= upper:
            raise ValueError(f"'{name}' must be in [0, {upper}]; got {value}")

    n, h, w = imgs.shape
    keys = ["image", "mask"]
    transform = Compose(
        [
            RandAffined(
                keys=keys,
                prob=1.0,
                rotate_range=(float(np.deg2rad(rotate_deg)),),
                shear_range=(float(np.tan(np.deg2rad(shear_deg))), 0.0),
                translate_range=(shift_fraction * h, shift_fraction * w),
                scale_range=(zoom, zoom),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                device=None if device is None else torch.device(device),
            ),
            RandFlipd(keys=keys, prob=flip_prob, spatial_axis=flip_axis),
        ]
    )
    transform.set_random_state(seed=int(seed))

    total = n * int(n_copies)
    out_img = np.empty((total, h, w), dtype=np.float32)
    out_msk = np.empty((total, h, w), dtype=np.uint8)
    source = np.repeat(np.arange(n), int(n_copies))
    copy = np.tile(np.arange(1, int(n_copies) + 1), n)
    for i in range(n):
        sample = {"image": imgs[i][None], "mask": msk[i][None].astype(np.float32)}
        for c in range(int(n_copies)):
            res = transform(sample)
            j = i * int(n_copies) + c
            out_img[j] = np.clip(_to_numpy(res["image"])[0], 0.0, 1.0)
            out_msk[j] = binarize_mask(_to_numpy(res["mask"])[0])
    logger.info("augmented %d slices x %d copies (seed %d)", n, n_copies, seed)
    return AugmentedSlices(images=out_img, masks=out_msk, source=source, copy=copy)


def _to_numpy(x: object) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()  # type: ignore[no-any-return, attr-defined]
    return np.asarray(x)


# --------------------------------------------------------------------------- brain masks and padding
#: Where the skull-stripping mask comes from (see :func:`brain_mask_for`).
BRAIN_SOURCES: tuple[str, ...] = ("auto", "manifest", "nonzero", "estimate")


def brain_mask_for(cohort: "Cohort", scan_id: str, flair: np.ndarray, source: str = "auto") -> tuple[
    np.ndarray | None, str
]:
    """Skull-stripping mask of one scan and where it came from.

    ``source``:

    - ``"manifest"``: the cohort's ``brain_mask`` column (error if empty);
    - ``"nonzero"``: ``flair != 0``, for images that are already skull-stripped
      (e.g. the MSLUB sample: background set to exactly 0);
    - ``"estimate"``: None, i.e. :func:`msutils.segmentation.slices.estimate_brain_mask`, a
      crude foreground mask (a fallback, **not** FSL BET);
    - ``"auto"``: ``manifest`` when the scan has a brain mask; else ``nonzero``
      when at least half of the voxels are exactly 0 (an already
      skull-stripped image); else ``estimate``.

    Returns
    -------
    mask : ndarray of bool or None
        None means "let :func:`msutils.segmentation.slices.skull_strip` estimate it".
    used : str
        ``"manifest"``, ``"nonzero"`` or ``"estimate"``.
    """
    check_choice("source", source, BRAIN_SOURCES)
    has_mask = bool(cohort.table.loc[scan_id].get("brain_mask"))
    if source == "manifest" or (source == "auto" and has_mask):
        if not has_mask:
            raise ValueError(f"scan {scan_id!r} of {cohort.manifest_path} has no 'brain_mask' (brain_source="
                             "'manifest'); use 'nonzero' or 'estimate'")
        mask = cohort.array(scan_id, "brain_mask") > 0
        if mask.shape != flair.shape:
            raise ValueError(f"scan {scan_id!r}: brain_mask shape {mask.shape} differs from FLAIR {flair.shape}")
        return mask, "manifest"
    if source == "nonzero" or (source == "auto" and np.mean(flair == 0) >= 0.5):
        mask = flair != 0
        if not mask.any():
            raise ValueError(f"scan {scan_id!r}: the FLAIR image is all zero")
        return mask, "nonzero"
    return None, "estimate"


def pad_to_square(volume: np.ndarray, axis: int = 2) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Zero-pad the two axes other than ``axis`` to the larger of them (centred).

    Returns the padded array (same dtype) and the ``numpy.pad`` widths.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"'volume' must be a 3D array; got shape {vol.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"'axis' must be one of [0, 1, 2]; got {axis!r}")
    inplane = [a for a in range(3) if a != axis]
    side = max(vol.shape[a] for a in inplane)
    widths = [(0, 0)] * 3
    for a in inplane:
        extra = side - vol.shape[a]
        widths[a] = (extra // 2, extra - extra // 2)
    widths_t = tuple(widths)
    if all(w == (0, 0) for w in widths_t):
        return vol, widths_t
    return np.pad(vol, widths_t), widths_t
