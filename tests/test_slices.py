"""Tests for msutils.segmentation.slices (seed 003 FLAIR slice preprocessing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msutils.segmentation import slices as S


def _disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def _volume(rng: np.random.Generator, shape=(40, 48, 10)):
    """Ellipsoid 'brain' inside a bright 'skull' shell, one lesion, noise."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    r = x**2 / 0.7**2 + y**2 / 0.8**2 + z**2 / 1.2**2
    brain = r <= 1.0
    skull = (r > 1.15) & (r <= 1.4)
    vol = np.where(brain, 100.0, 0.0) + np.where(skull, 300.0, 0.0)
    vol = vol + rng.normal(0, 2, shape) * (brain | skull)
    lesion = (x - 0.1) ** 2 + y**2 <= 0.2**2
    lesion &= brain & (np.abs(z) < 0.6)
    vol = np.where(lesion, 180.0, vol)
    return vol.astype(np.float32), brain, lesion.astype(np.uint8)


# --------------------------------------------------------------------------- entropy
def test_entropy_reference_values():
    assert S.mask_entropy(np.zeros((512, 512))) == 0.0
    assert S.mask_entropy(np.ones((16, 16))) == 0.0
    half = np.zeros((64, 64), np.uint8)
    half[:32] = 1
    assert S.mask_entropy(half) == pytest.approx(1.0, abs=1e-12)
    quarter = np.zeros((8, 8))
    quarter[:2] = 1
    assert S.mask_entropy(quarter) == pytest.approx(0.8112781244591328, abs=1e-12)
    # labels 2 (e.g. "inactive plaque") and 255 count as lesion too
    lab = np.zeros((4, 4))
    lab[0, :2] = 2
    lab[1, :2] = 255
    assert S.mask_entropy(lab) == pytest.approx(0.8112781244591328, abs=1e-12)


def test_single_lesion_pixel_is_excluded():
    m = np.zeros((512, 512), np.uint8)
    m[100, 200] = 1
    p = 2.0**-18
    expected = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert S.mask_entropy(m) == pytest.approx(7.416798511185857e-05, rel=1e-9)
    assert S.mask_entropy(m) == pytest.approx(expected, rel=1e-12)
    assert not S.entropy_keep(m[None])[0]


def test_entropy_cut_at_0_01_bits():
    # 128 x 128: 14 lesion pixels -> 0.00994 bits (dropped), 15 -> 0.01056 bits (kept)
    stack = np.zeros((4, 128, 128), np.uint8)
    stack[1].flat[:14] = 1
    stack[2].flat[:15] = 1
    stack[3, :64] = 1
    ent = S.slice_entropies(stack)
    np.testing.assert_allclose(ent, [0.0, 0.009941780383494869, 0.010560739590698231, 1.0], rtol=1e-9)
    np.testing.assert_array_equal(S.entropy_keep(stack), [False, False, True, True])
    # 512 x 512: the cut is at the same lesion fraction (225 px dropped, 226 kept)
    big = np.zeros((2, 512, 512), np.uint8)
    big[0].flat[:225] = 1
    big[1].flat[:226] = 1
    np.testing.assert_array_equal(S.entropy_keep(big), [False, True])
    assert S.ENTROPY_THRESHOLD == 0.01


def test_entropy_stack_matches_scalar():
    rng = np.random.default_rng(3)
    stack = (rng.random((5, 20, 30)) < rng.random((5, 1, 1))).astype(np.uint8)
    np.testing.assert_allclose(S.slice_entropies(stack), [S.mask_entropy(m) for m in stack], rtol=1e-12)


# --------------------------------------------------------------------------- steps
def test_normalize_minmax_and_percentile():
    img = np.array([[0.0, 10.0, 20.0], [30.0, 40.0, 1000.0]], np.float32)
    mask = np.array([[0, 1, 1], [1, 1, 0]])
    out = S.normalize_intensity(img, mask)
    np.testing.assert_allclose(out, [[0, 0, 1 / 3], [2 / 3, 1, 0]], atol=1e-6)
    assert out.dtype == np.float32
    full = S.normalize_intensity(img)
    assert full.min() == 0.0 and full.max() == 1.0
    rob = S.normalize_intensity(img, method="percentile", percentiles=(0, 80))
    assert rob.max() == 1.0 and rob.min() == 0.0
    assert rob[1, 1] == 1.0  # 40 is the 80th percentile -> 1; 1000 is clipped to 1
    np.testing.assert_allclose(img, [[0, 10, 20], [30, 40, 1000]])  # input untouched


def test_normalize_errors():
    with pytest.raises(ValueError, match=r"'method' must be one of \['minmax', 'percentile'\]; got 'z'"):
        S.normalize_intensity(np.ones((2, 2)), method="z")
    with pytest.raises(ValueError, match="constant inside the mask"):
        S.normalize_intensity(np.ones((2, 2)))
    with pytest.raises(ValueError, match="does not match"):
        S.normalize_intensity(np.ones((2, 2)), np.ones((3, 3)))


def test_resize_shapes_and_binary_masks():
    rng = np.random.default_rng(0)
    img = rng.random((60, 50)).astype(np.float32)
    out = S.resize_image(img, (128, 96))
    assert out.shape == (128, 96) and out.dtype == np.float32
    assert out.min() >= img.min() and out.max() <= img.max()
    mask = _disk((60, 50), (30, 25), 10) * 255
    m = S.resize_mask(mask, (120, 100))
    assert m.shape == (120, 100) and m.dtype == np.uint8
    assert set(np.unique(m)) == {0, 1}
    assert m.sum() / (120 * 100) == pytest.approx(mask.astype(bool).mean(), rel=0.05)
    with pytest.raises(ValueError, match="'size' must be two positive integers"):
        S.resize_image(img, (0, 5))


def test_binarize():
    np.testing.assert_array_equal(S.binarize_mask(np.array([0, 0.4, 0.6, 2, 255])), [0, 0, 1, 1, 1])
    assert S.binarize_mask(np.array([True, False])).dtype == np.uint8


def test_skull_strip_and_fallback_mask():
    rng = np.random.default_rng(1)
    vol, brain, _ = _volume(rng)
    stripped, used = S.skull_strip(vol, brain)
    assert np.array_equal(used, brain)
    assert np.all(stripped[~brain] == 0) and np.array_equal(stripped[brain], vol[brain])
    est = S.estimate_brain_mask(vol)
    # the fallback is a head mask: it contains the brain (the skull shell is a separate component
    # here, and the brain is larger, so the largest component is the brain)
    dice = 2 * np.sum(est & brain) / (est.sum() + brain.sum())
    assert dice > 0.95
    with pytest.raises(ValueError, match="'brain_mask' shape"):
        S.skull_strip(vol, brain[:-1])


def test_volume_to_slices():
    rng = np.random.default_rng(2)
    vol, brain, lesion = _volume(rng)
    stack = S.volume_to_slices(vol, lesion, brain, size=(64, 64))
    assert len(stack) == vol.shape[2]
    assert stack.images.shape == (10, 64, 64) and stack.masks.shape == (10, 64, 64)
    assert stack.images.min() >= 0 and stack.images.max() <= 1
    assert stack.images.max() == pytest.approx(1.0, abs=0.02)  # lesion is the brightest tissue
    assert set(np.unique(stack.masks)) <= {0, 1}
    assert np.all(stack.images[~stack.brain] == 0)
    np.testing.assert_allclose(stack.entropy, S.slice_entropies(stack.masks))
    # lesion-free end slices have entropy 0 and are dropped by the paper's rule
    keep = stack.entropy >= S.ENTROPY_THRESHOLD
    assert keep.sum() > 0 and not keep[0] and not keep[-1]
    sub = stack.select(keep)
    assert len(sub) == keep.sum() and np.array_equal(sub.index, np.flatnonzero(keep))
    no_mask = S.volume_to_slices(vol, None, brain, size=(32, 40))
    assert no_mask.masks is None and no_mask.images.shape == (10, 32, 40)
    assert np.isnan(no_mask.entropy).all()


# --------------------------------------------------------------------------- augmentation
def _training_slices(n=3, size=48):
    rng = np.random.default_rng(5)
    masks = np.stack([_disk((size, size), (rng.uniform(15, 33), rng.uniform(15, 33)), 7) for _ in range(n)])
    images = (0.3 * _disk((size, size), (size / 2, size / 2), size / 2.2) + 0.6 * masks).astype(np.float32)
    return images, masks


def test_augment_counts_ranges_and_binary_masks():
    images, masks = _training_slices()
    aug = S.augment_slices(images, masks, n_copies=5, seed=0)
    assert len(aug) == 15
    assert aug.images.shape == (15, 48, 48) and aug.masks.shape == (15, 48, 48)
    np.testing.assert_array_equal(aug.source, np.repeat([0, 1, 2], 5))
    np.testing.assert_array_equal(aug.copy, np.tile([1, 2, 3, 4, 5], 3))
    assert aug.images.dtype == np.float32 and aug.masks.dtype == np.uint8
    assert aug.images.min() >= 0 and aug.images.max() <= 1
    assert set(np.unique(aug.masks)) <= {0, 1}
    # copies differ from the originals and from each other
    assert not np.array_equal(aug.images[0], images[0])
    assert not np.array_equal(aug.images[0], aug.images[1])


def test_augment_reproducible_by_seed():
    images, masks = _training_slices(n=2)
    a = S.augment_slices(images, masks, n_copies=3, seed=7)
    b = S.augment_slices(images, masks, n_copies=3, seed=7)
    c = S.augment_slices(images, masks, n_copies=3, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)


def test_augment_keeps_image_and_mask_aligned():
    # the mask used as the image gets the same geometric transform (bilinear vs nearest)
    _, masks = _training_slices(n=3, size=64)
    aug = S.augment_slices(masks.astype(np.float32), masks, n_copies=4, seed=3)
    for img, msk in zip(aug.images, aug.masks):
        a, b = img > 0.5, msk.astype(bool)
        assert b.sum() > 0
        assert np.sum(a & b) / np.sum(a | b) > 0.85


def test_augment_identity_when_ranges_are_zero():
    images, masks = _training_slices(n=2)
    aug = S.augment_slices(
        images, masks, n_copies=2, seed=0, rotate_deg=0, shift_fraction=0, shear_deg=0, zoom=0, flip_prob=0
    )
    np.testing.assert_allclose(aug.images, np.repeat(images, 2, axis=0), atol=1e-5)
    np.testing.assert_array_equal(aug.masks, np.repeat(masks, 2, axis=0))
    flipped = S.augment_slices(
        images, masks, n_copies=1, seed=0, rotate_deg=0, shift_fraction=0, shear_deg=0, zoom=0, flip_prob=1
    )
    np.testing.assert_array_equal(flipped.masks, masks[:, ::-1, :])


def test_augment_validation():
    images, masks = _training_slices(n=1)
    with pytest.raises(ValueError, match="'n_copies' must be a positive integer; got 0"):
        S.augment_slices(images, masks, n_copies=0)
    with pytest.raises(ValueError, match="'masks' shape"):
        S.augment_slices(images, masks[:, :10])
    with pytest.raises(ValueError, match=r"'flip_axis' must be one of \[0, 1\]; got 2"):
        S.augment_slices(images, masks, flip_axis=2)
