"""Tests for msutils.features.fusion_maps (seed 002: concentration rate and Rényi entropy maps).

The vectorised maps are compared with straightforward per-window references
(``numpy.sort`` of each window for CR; ``skimage.feature.graycomatrix`` of each
window for RE) on random slices and on a real FLAIR slice of the MSLUB sample
(read from ``../shared/data/open_ms_data`` beside the repository, or from
``$MSUTILS_TEST_MSLUB``; skipped when absent), to 1e-9.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from msutils.features import fusion_maps as F

REPO = Path(__file__).resolve().parent.parent
MSLUB_DATA = Path(os.environ.get("MSUTILS_TEST_MSLUB", REPO.parent / "shared" / "data" / "open_ms_data"))
TOL = 1e-9


# --------------------------------------------------------------------------------------
# hand-computed values
# --------------------------------------------------------------------------------------
def test_cr_order_statistics_by_hand():
    img = np.arange(25, dtype=float).reshape(5, 5)
    cr = F.concentration_rate(img)
    # centre window = all 25 values 0..24; X_(6) .. X_(20) = 5 .. 19 (the 5 highest 20..24 left out)
    assert cr[2, 2] == sum(range(5, 20)) == 180
    # corner (0, 0) with zero padding: values {0,1,2,5,6,7,10,11,12} + 16 zeros; ascending positions 5..19 hold
    # 11 zeros then 0, 1, 2, 5 (the 5 highest, 6, 7, 10, 11, 12, are left out)
    assert cr[0, 0] == 0 + 1 + 2 + 5
    # other num / m: s=1, N=9, num=3, m=2 -> ascending positions 4..6
    x = np.array([[9.0, 1, 8], [2, 7, 3], [6, 4, 5]])
    assert F.concentration_rate(x, s=1, num=3, m=2, pad_mode="edge")[1, 1] == 5 + 6 + 7


def test_re_by_hand_checkerboard_is_one_bit():
    lv = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
    # horizontal pairs of the 3 x 3 window: (0,1) x 3 and (1,0) x 3 -> p = 1/2, 1/2 -> H = 1 bit for any alpha
    for alpha in (0.5, 2.0, 7.0):
        re = F.renyi_entropy(lv, s=1, alpha=alpha, distances=[1], angles=[0], levels=2, symmetric=False)
        assert re[1, 1] == pytest.approx(1.0, abs=1e-12)
    # natural log: ln 2
    re = F.renyi_entropy(lv, s=1, distances=[1], angles=[0], levels=2, symmetric=False, log_base=math.e)
    assert re[1, 1] == pytest.approx(math.log(2), abs=1e-12)


def test_re_by_hand_uneven_counts():
    # one row window 1 x 3 is not possible (square windows); use a 3 x 3 window with horizontal pairs:
    lv = np.array([[0, 0, 0], [0, 0, 1], [2, 2, 2]])
    # pairs: (0,0),(0,0) | (0,0),(0,1) | (2,2),(2,2) -> counts (0,0)=3, (0,1)=1, (2,2)=2 of 6
    p = np.array([3, 1, 2]) / 6
    for alpha in (2.0, 7.0):
        expected = math.log2(np.sum(p**alpha)) / (1 - alpha)
        re = F.renyi_entropy(lv, s=1, alpha=alpha, distances=[1], angles=[0], levels=3, symmetric=False)
        assert re[1, 1] == pytest.approx(expected, abs=1e-12)
    # symmetric: P + P^T -> (0,0)=6, (0,1)=1, (1,0)=1, (2,2)=4 of 12
    ps = np.array([6, 1, 1, 4]) / 12
    re = F.renyi_entropy(lv, s=1, alpha=7.0, distances=[1], angles=[0], levels=3, symmetric=True)
    assert re[1, 1] == pytest.approx(math.log2(np.sum(ps**7)) / -6, abs=1e-12)


def test_constant_windows_give_zero_entropy():
    lv = np.full((9, 8), 17)
    re = F.renyi_entropy(lv, s=2, pad_mode="edge")
    assert np.all(re == 0.0)
    cr = F.concentration_rate(np.full((6, 6), 0.25), pad_mode="edge")
    assert np.allclose(cr, 15 * 0.25, atol=1e-15)


def test_quantize_levels():
    v = np.array([-0.5, 0.0, 1 / 256 - 1e-12, 1 / 256, 0.5, 1 - 1e-12, 1.0, 3.0])
    assert F.quantize(v).tolist() == [0, 0, 0, 1, 128, 255, 255, 255]
    assert F.quantize(np.array([10.0, 15.0, 20.0]), levels=4, value_range=(10, 20)).tolist() == [0, 2, 3]
    assert F.quantize(np.zeros((2, 3))).dtype == np.int32


def test_glcm_offsets_conventions():
    assert F.glcm_offsets([1, 2], [0, 45, 90, 135]) == [
        (0, 1), (1, 1), (1, 0), (1, -1), (0, 2), (2, 2), (2, 0), (2, -2)]
    # scikit-image's rounding: distance 2 at 45 degrees is the offset (1, 1)
    assert F.glcm_offsets([2], [45, 135], "rounded") == [(1, 1), (1, -1)]
    assert F.glcm_offsets([3], [45], "rounded") == [(2, 2)]


# --------------------------------------------------------------------------------------
# against the per-window references
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad_mode", F.PAD_MODES)
def test_cr_matches_reference_random(pad_mode):
    rng = np.random.default_rng(1)
    img = rng.random((23, 31))
    np.testing.assert_allclose(F.concentration_rate(img, pad_mode=pad_mode),
                               F.concentration_rate_reference(img, pad_mode=pad_mode), rtol=0, atol=TOL)
    # chunked processing gives the same map
    np.testing.assert_allclose(F.concentration_rate(img, pad_mode=pad_mode, chunk_rows=4),
                               F.concentration_rate(img, pad_mode=pad_mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("symmetric,diagonal,pad_mode", [
    (True, "chessboard", "constant"),
    (False, "chessboard", "reflect"),
    (True, "rounded", "edge"),
    (False, "rounded", "symmetric"),
])
def test_re_matches_graycomatrix_random(symmetric, diagonal, pad_mode):
    rng = np.random.default_rng(2)
    lv = rng.integers(0, 256, size=(19, 22))
    kw = dict(symmetric=symmetric, diagonal=diagonal, pad_mode=pad_mode)
    np.testing.assert_allclose(F.renyi_entropy(lv, **kw), F.renyi_entropy_reference(lv, **kw), rtol=0, atol=TOL)


def test_re_matches_graycomatrix_other_settings():
    rng = np.random.default_rng(3)
    lv = rng.integers(0, 6, size=(14, 13))  # few levels: many repeated pairs, large counts
    kw = dict(s=3, alpha=2.5, distances=[1, 3], angles=[45, 90], levels=6, log_base=10.0)
    np.testing.assert_allclose(F.renyi_entropy(lv, **kw), F.renyi_entropy_reference(lv, **kw), rtol=0, atol=TOL)
    kw = dict(alpha=0.5, levels=6, log_base=math.e)
    np.testing.assert_allclose(F.renyi_entropy(lv, **kw), F.renyi_entropy_reference(lv, **kw), rtol=0, atol=TOL)


def _real_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 26 x 26 crop around the largest lesion of an axial MSLUB FLAIR slice, min-max normalised in the brain."""
    import nibabel as nib

    folder = MSLUB_DATA / "MNI" / "patient07"
    if not (folder / "FLAIR.nii.gz").is_file():
        pytest.skip(f"MSLUB sample not found at {MSLUB_DATA} (set $MSUTILS_TEST_MSLUB)")
    flair = np.asarray(nib.load(folder / "FLAIR.nii.gz").dataobj, dtype=np.float64)
    lesion = np.asarray(nib.load(folder / "consensus_gt.nii.gz").dataobj) > 0
    brain = flair > 0
    norm = np.where(brain, (flair - flair[brain].min()) / (flair[brain].max() - flair[brain].min()), 0.0)
    k = int(np.argmax(lesion.sum(axis=(0, 1))))
    r, c = (int(np.median(ix)) for ix in np.nonzero(lesion[:, :, k]))
    return norm[r - 13:r + 13, c - 13:c + 13, k], lesion[r - 13:r + 13, c - 13:c + 13, k]


def test_maps_match_references_on_real_flair():
    img, lesion = _real_slice()
    assert lesion.any() and 0 <= img.min() and img.max() <= 1
    p = F.FusionMapParams()
    cr, re = F.fusion_maps(img, p)
    np.testing.assert_allclose(cr, F.concentration_rate_reference(img), rtol=0, atol=TOL)
    np.testing.assert_allclose(re, F.renyi_entropy_reference(F.quantize(img)), rtol=0, atol=TOL)
    # the paper's observation on this crop: both maps are higher inside the lesion on average
    assert cr[lesion].mean() > cr[~lesion].mean()


# --------------------------------------------------------------------------------------
# borders, volumes, cache
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (4, 9)])
@pytest.mark.parametrize("pad_mode", F.PAD_MODES)
def test_slice_smaller_than_window_is_padded(shape, pad_mode):
    rng = np.random.default_rng(4)
    img = rng.random(shape)
    p = F.FusionMapParams(pad_mode=pad_mode)
    cr, re = F.fusion_maps(img, p)
    assert cr.shape == re.shape == shape
    np.testing.assert_allclose(cr, F.concentration_rate_reference(img, pad_mode=pad_mode), rtol=0, atol=TOL)
    np.testing.assert_allclose(re, F.renyi_entropy_reference(F.quantize(img), pad_mode=pad_mode), rtol=0, atol=TOL)


def _blob_volume(rng: np.random.Generator, shape=(30, 34, 5)) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    inside = x**2 / 0.5**2 + y**2 / 0.6**2 + z**2 / 1.5**2 <= 1
    vol = np.where(inside, rng.uniform(0.2, 1.0, shape), 0.0)
    vol[:, :, 0] = 0.0  # an empty slice
    return vol


@pytest.mark.parametrize("pad_mode", F.PAD_MODES)
def test_volume_maps_equal_full_slices(pad_mode):
    rng = np.random.default_rng(5)
    vol = _blob_volume(rng)
    vol[0, 10, 2] = 0.7  # foreground touching the border of one slice
    p = F.FusionMapParams(pad_mode=pad_mode)
    for axis in (2, 0):
        cr, re = F.volume_fusion_maps(vol, p, axis=axis, dtype=np.float64)
        for k in range(vol.shape[axis]):
            full_cr, full_re = F.fusion_maps(np.take(vol, k, axis=axis), p)
            np.testing.assert_allclose(np.take(cr, k, axis=axis), full_cr, rtol=0, atol=1e-12)
            np.testing.assert_allclose(np.take(re, k, axis=axis), full_re, rtol=0, atol=1e-12)
        if axis == 2:  # the empty slice
            assert not cr[:, :, 0].any() and not re[:, :, 0].any()
    # only some slices: the others are NaN, the computed ones unchanged
    cr_some, re_some = F.volume_fusion_maps(vol, p, slices=[3, 1], dtype=np.float64)
    full_cr, full_re = F.volume_fusion_maps(vol, p, dtype=np.float64)
    for k in range(vol.shape[2]):
        if k in (1, 3):
            np.testing.assert_array_equal(cr_some[:, :, k], full_cr[:, :, k])
            np.testing.assert_array_equal(re_some[:, :, k], full_re[:, :, k])
        else:
            assert np.isnan(cr_some[:, :, k]).all() and np.isnan(re_some[:, :, k]).all()
    with pytest.raises(ValueError, match=r"^'slices' must be in \[0, 4\]; got \[5\]$"):
        F.volume_fusion_maps(vol, p, slices=[5])


def test_cache_reuses_and_keys_on_content_and_params(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    vol = _blob_volume(rng, (16, 18, 3)).astype(np.float32)
    p = F.FusionMapParams()
    cr, re = F.cached_volume_maps(vol, p, cache_dir=tmp_path, label="sub-001")
    files = list(tmp_path.glob("sub-001-*.npz"))
    assert len(files) == 1
    direct = F.volume_fusion_maps(vol, p)
    np.testing.assert_array_equal(cr, direct[0])
    np.testing.assert_array_equal(re, direct[1])

    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(F, "volume_fusion_maps", boom)
    cr2, re2 = F.cached_volume_maps(vol, p, cache_dir=tmp_path, label="sub-001")
    np.testing.assert_array_equal(cr2, cr)
    np.testing.assert_array_equal(re2, re)
    monkeypatch.undo()
    key = F.maps_cache_key(vol, p)
    assert key != F.maps_cache_key(vol, F.FusionMapParams(alpha=2.0))
    changed = vol.copy()
    changed[8, 9, 1] += 0.01
    assert key != F.maps_cache_key(changed, p)
    assert key != F.maps_cache_key(vol, p, axis=0)
    assert key != F.maps_cache_key(vol, p, slices=[1]) != F.maps_cache_key(vol, p, slices=[1, 2])
    F.cached_volume_maps(changed, p, cache_dir=tmp_path, label="sub-001")
    assert len(list(tmp_path.glob("sub-001-*.npz"))) == 2


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
def test_parameter_errors():
    with pytest.raises(ValueError, match=r"^'num' \+ 'm' must be <= N = \(2s \+ 1\)\^2 = 25; got num=21, m=5$"):
        F.concentration_rate(np.zeros((5, 5)), num=21)
    with pytest.raises(ValueError, match=r"^'alpha' must be a number > 0 and != 1; got 1$"):
        F.FusionMapParams(alpha=1)
    with pytest.raises(ValueError, match=r"^'pad_mode' must be one of \['constant', 'edge', 'reflect', 'symmetric'\]; "
                                         r"got 'wrap'$"):
        F.FusionMapParams(pad_mode="wrap")
    with pytest.raises(ValueError, match=r"^'diagonal' must be one of \['chessboard', 'rounded'\]; got 'euclid'$"):
        F.glcm_offsets(diagonal="euclid")
    with pytest.raises(ValueError, match=r"^'angles' must be distinct values among \[0, 45, 90, 135\] \(degrees\); "
                                         r"got \[30\]$"):
        F.glcm_offsets(angles=[30])
    with pytest.raises(ValueError, match=r"^every GLCM offset must fit in the RE window \(2 \* re_s = 2 pixels\); "
                                         r"got distances \[1, 3\]$"):
        F.FusionMapParams(re_s=1, distances=(1, 3))
    with pytest.raises(ValueError, match=r"^'levels_img' values must be in \[0, 3\]; got \[0, 4\]$"):
        F.renyi_entropy(np.array([[0, 4]]), levels=4)
    with pytest.raises(ValueError, match=r"^'levels_img' must be an integer array of grey levels \(see quantize\); "
                                         r"got dtype float64$"):
        F.renyi_entropy(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"^'image' must be a 2D array; got shape \(2, 2, 2\)$"):
        F.fusion_maps(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"^'image' contains NaN or infinite values$"):
        F.concentration_rate(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"^'value_range' must satisfy low < high \(finite\); got \(1, 1\)$"):
        F.quantize(np.zeros(3), value_range=(1, 1))
    with pytest.raises(TypeError, match=r"^'params' must be a FusionMapParams; got dict$"):
        F.fusion_maps(np.zeros((3, 3)), {"alpha": 2})
