"""Tests for msutils.segmentation.saliency: Eq. 1 against the straightforward loop, crops, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from msutils.segmentation import saliency as S

SHAPE = (44, 40, 36)  # not multiples of 4: the padding path is exercised


def _net(seed: int = 0, norm: str = "batch") -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=2, channels=(4, 8, 16), strides=(2, 2), norm=norm,
               num_res_units=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return net.eval()


def _scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((2,) + SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.int32)
    labels[6:8, 5:8, 4:6] = 1  # 12 voxels near a corner: the crop meets the volume's edge
    labels[30, 25, 20:23] = 2  # 3 voxels inside: the crop is smaller than the volume
    labels[31, 26, 23] = 2  # diagonal neighbour (same lesion)
    labels[40:43, 36:39, 33:35] = 3  # at the high edge: the crop reaches the zero padding
    return image, labels


@pytest.fixture(scope="module")
def case():
    net = _net()
    image, labels = _scan()
    ref = S.smoothgrad_reference(net, image, labels, n_samples=3, seed=7)
    return net, image, labels, ref


def _assert_maps_equal(fast: dict, ref: dict, shape: tuple[int, ...] = SHAPE) -> None:
    assert sorted(fast) == sorted(ref)
    for lid, r in ref.items():
        got = fast[lid].full(shape)
        scale = float(np.abs(r).max())
        assert scale > 0
        np.testing.assert_allclose(got, r, rtol=0, atol=1e-5 * scale, err_msg=f"lesion {lid}")


def test_fast_path_equals_the_loop(case):
    net, image, labels, ref = case
    fast = S.instance_smoothgrad(net, image, labels, n_samples=3, seed=7, sample_batch=2)
    _assert_maps_equal(fast, ref)
    # the windows are true crops for the inner lesion, and the map is zero outside them
    w = fast[2].window
    assert np.prod([s.stop - s.start for s in w]) < 0.6 * np.prod(SHAPE)
    outside = ref[2].copy()
    outside[w] = 0
    assert not outside.any()
    assert fast[1].n_voxels == 12 and fast[2].n_voxels == 4 and fast[3].n_voxels == 18
    assert fast[1].method == "max" and fast[1].n_samples == 3


@pytest.mark.parametrize("seed", [1, 2])
def test_crops_exact_for_random_lesions(seed):
    """Lesions at random places (edges, padding, block residues), another network: crop == whole-volume loop."""
    net = _net(seed)
    image, labels = _scan(seed)
    rng = np.random.default_rng(seed)
    for k in range(4, 9):
        c = rng.integers(0, np.array(SHAPE) - 3)
        labels[c[0]:c[0] + rng.integers(1, 4), c[1]:c[1] + 2, c[2]:c[2] + rng.integers(1, 3)] = k
    ref = S.smoothgrad_reference(net, image, labels, n_samples=2, seed=seed)
    _assert_maps_equal(S.instance_smoothgrad(net, image, labels, n_samples=2, seed=seed), ref)


def test_voxel_batches_and_whole_volume_equal_the_loop(case):
    net, image, labels, ref = case
    _assert_maps_equal(S.instance_smoothgrad(net, image, labels, n_samples=3, seed=7, voxel_batch=5), ref)
    _assert_maps_equal(S.instance_smoothgrad(net, image, labels, n_samples=3, seed=7, crop=False, sample_batch=3), ref)


def test_signed_max_keeps_sign_and_magnitude(case):
    """Eq. 1 per sample: |M| at a voxel is at most the mean over samples of the largest |gradient|."""
    net, image, labels, ref = case
    one = S.smoothgrad_reference(net, image, labels, lesion_ids=[2], n_samples=1, seed=7)[2]
    assert (one > 0).any() and (one < 0).any()  # signed
    fast = S.instance_smoothgrad(net, image, labels, lesion_ids=[2], n_samples=1, seed=7)[2].full(SHAPE)
    np.testing.assert_allclose(fast, one, rtol=0, atol=1e-5 * np.abs(one).max())


def test_sum_variant_is_a_different_map(case):
    net, image, labels, ref = case
    ref_sum = S.smoothgrad_reference(net, image, labels, n_samples=3, seed=7, method="sum")
    fast_sum = S.instance_smoothgrad(net, image, labels, n_samples=3, seed=7, method="sum")
    _assert_maps_equal(fast_sum, ref_sum)
    for lid in ref:
        a, b = ref[lid], ref_sum[lid]
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert np.abs(a - b).max() > 0.05 * np.abs(a).max(), f"lesion {lid}: sum and max maps coincide"
        assert corr < 0.999


def test_deterministic_by_seed(case):
    net, image, labels, _ = case
    a = S.instance_smoothgrad(net, image, labels, lesion_ids=[2], n_samples=2, seed=3)[2].values
    b = S.instance_smoothgrad(net, image, labels, lesion_ids=[2], n_samples=2, seed=3)[2].values
    c = S.instance_smoothgrad(net, image, labels, lesion_ids=[2], n_samples=2, seed=4)[2].values
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()


def test_noise_levels():
    image, _ = _scan()
    rng_std = S._noise_std(image, 0.05, "range", 0)
    np.testing.assert_allclose(rng_std, 0.05 * (image[0].max() - image[0].min()))
    np.testing.assert_allclose(S._noise_std(image, 0.05, "absolute", 0), [0.05, 0.05])
    field = S.NoiseField((32, 32, 32), [0.5, 2.0], seed=1)
    full = field.crop(0, (slice(0, 32),) * 3)
    assert full.shape == (2, 32, 32, 32)
    assert full[0].std() == pytest.approx(0.5, rel=0.02) and full[1].std() == pytest.approx(2.0, rel=0.02)
    part = field.crop(0, (slice(5, 21), slice(16, 32), slice(3, 4)))
    np.testing.assert_array_equal(part, full[:, 5:21, 16:32, 3:4])
    assert not np.array_equal(field.crop(1, (slice(0, 8),) * 3), full[:, :8, :8, :8])


# --------------------------------------------------------------------------- receptive field and crops
def test_receptive_field_bounds_the_real_gradients():
    net = _net(1)
    rf = S.receptive_field(net, 2)
    assert rf == S.ReceptiveField(lo=(7, 7, 7), hi=(8, 8, 8), multiple=4)
    x = torch.randn(1, 2, 48, 48, 48, requires_grad=True)
    y = net(x)
    reach_lo, reach_hi = np.zeros(3, int), np.zeros(3, int)
    for base in [(24, 24, 24), (20, 28, 24)]:
        for r in np.ndindex(4, 4, 4):  # every position modulo the total stride
            p = np.array(base) + np.array(r)
            (g,) = torch.autograd.grad(y[(0, 1) + tuple(int(c) for c in p)], x, retain_graph=True)
            nz = np.argwhere(g[0].abs().sum(0).numpy() > 0)
            block = np.array(base)
            assert (nz.min(0) >= block - np.array(rf.lo)).all()
            assert (nz.max(0) <= block + 3 + np.array(rf.hi)).all()
            reach_lo = np.maximum(reach_lo, block - nz.min(0))
            reach_hi = np.maximum(reach_hi, nz.max(0) - block - 3)
    assert tuple(reach_lo) == rf.lo and tuple(reach_hi) == rf.hi  # the bound is tight


def test_window_alignment():
    rf = S.ReceptiveField(lo=(5, 5, 5), hi=(6, 6, 6), multiple=8)
    # the field is measured per block of 8 voxels: the box is first grown to whole blocks
    win = rf.window([20, 3, 40], [22, 4, 41], (64, 64, 64))
    assert win == (slice(8, 32), slice(0, 16), slice(32, 56))
    assert rf.window([20, 3, 40], [22, 4, 41], (64, 64, 48), margin=3)[2] == slice(32, 48)
    assert all(w.start % 8 == 0 and w.stop % 8 == 0 for w in win)


def test_a_crop_smaller_than_the_field_changes_the_map(case):
    """The exactness test can fail: shrink the field and the maps differ from the loop."""
    net, image, labels, ref = case
    rf = S.receptive_field(net, 2)
    cut = 8  # the crop misses 8 voxels of the field on each side
    small = S.ReceptiveField(lo=tuple(v - cut for v in rf.lo), hi=tuple(v - cut for v in rf.hi), multiple=rf.multiple)
    fast = S.instance_smoothgrad(net, image, labels, lesion_ids=[2], n_samples=3, seed=7, receptive=small)
    got = fast[2].full(SHAPE)
    assert np.abs(got - ref[2]).max() > 1e-3 * np.abs(ref[2]).max()


# --------------------------------------------------------------------------- bad input
def test_bad_inputs(case):
    net, image, labels, _ = case
    with pytest.raises(ValueError, match=r"'net' must be in eval mode \(call net.eval\(\)\)"):
        S.instance_smoothgrad(_net().train(), image, labels, n_samples=1)
    with pytest.raises(TypeError, match="'labels' must be an integer instance map; got dtype float64"):
        S.instance_smoothgrad(net, image, labels.astype(float), n_samples=1)
    with pytest.raises(ValueError, match=r"'lesion_ids' \[9\] are not labels of 'labels'"):
        S.instance_smoothgrad(net, image, labels, lesion_ids=[1, 9], n_samples=1)
    with pytest.raises(ValueError, match=r"'method' must be one of \['max', 'sum'\]; got 'mean'"):
        S.instance_smoothgrad(net, image, labels, method="mean")
    with pytest.raises(ValueError, match=r"'noise' must be one of \['range', 'absolute'\]; got 'relative'"):
        S.instance_smoothgrad(net, image, labels, noise="relative")
    with pytest.raises(ValueError, match="'n_samples' must be an integer >= 1; got 0"):
        S.instance_smoothgrad(net, image, labels, n_samples=0)
    with pytest.raises(ValueError, match=r"'labels' must have the image's spatial shape \(44, 40, 36\); got \(4, 4, 4\)"):
        S.instance_smoothgrad(net, image, np.zeros((4, 4, 4), int))
    with pytest.raises(ValueError, match=r"depends on the whole input \(\['InstanceNorm3d'\]\).*crop=False"):
        S.instance_smoothgrad(_net(norm="instance"), image, labels, n_samples=1)
