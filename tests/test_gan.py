"""Tests for msutils.models.gan: config, labels, warps, DiffAugment3D, networks, training, generation, GBA."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from msutils.data.leakage import FitLog, LeakageError, assert_no_leak
from msutils.models import gan as G

S = 16  # tiny volumes keep every test fast
TINY = dict(g_channels=(4, 8, 16), g_strides=(2, 2), g_res_units=1, d_channels=4, d_layers=2, batch_size=2,
            max_epochs=2, patience=2)


def _cohort(n: int = 8, seed: int = 0, prefix: str = "s") -> G.ImageSet:
    """Spheres (WM label 9) with a nucleus (label 1) that is brighter in class 1, plus CSF rim."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(S, dtype=float)] * 3, indexing="ij")
    d = np.sqrt((x - 7.5) ** 2 + (y - 7.5) ** 2 + (z - 7.5) ** 2)
    images, labels, classes = [], [], []
    for i in range(n):
        c = i % 2
        r = 5.0 + rng.normal(0, 0.3)
        brain = d < r + 1.5
        lab = np.zeros((S, S, S), np.int16)
        lab[d < r] = 9
        lab[(np.abs(x - 9.5) < 1.6) & (np.abs(y - 7.5) < 2) & (np.abs(z - 7.5) < 2)] = 1
        img = 0.3 * brain + 0.5 * (lab == 9) + (0.2 + 0.3 * c) * (lab == 1) + rng.normal(0, 0.02, d.shape) * brain
        images.append(np.where(brain, np.maximum(img, 0.01), 0.0))
        labels.append(lab)
        classes.append(c)
    return G.ImageSet(np.array(images), np.array(labels), np.array(classes), [f"{prefix}{i}" for i in range(n)])


def _gan_data(n: int = 6, seed: int = 0) -> tuple[G.GanData, G.LabelCoder]:
    coder = G.LabelCoder([1, 9])
    data, _ = G.GanData.from_images(_cohort(n, seed), coder, 99.5)
    return data, coder


def test_no_torchvision_or_timm_imported():
    assert "torchvision" not in sys.modules and "timm" not in sys.modules


# --------------------------------------------------------------------------- config
def test_config_defaults_are_paper_scale_and_validate():
    cfg = G.GanConfig()
    assert (cfg.max_epochs, cfg.patience, cfg.negative_slope, cfg.lambda_l1) == (300, 10, 0.01, 100.0)
    with pytest.raises(ValueError, match=r"'adversarial' must be one of \['bce', 'least_squares', 'hinge'\]; got 'x'"):
        G.GanConfig(adversarial="x")
    with pytest.raises(ValueError, match=r"'g_strides' must hold len\(g_channels\) - 1 = 2 positive ints"):
        G.GanConfig(g_channels=(4, 8, 16), g_strides=(2,))
    with pytest.raises(ValueError, match=r"'patience' must be an integer >= 1; got 0"):
        G.GanConfig(patience=0)
    with pytest.raises(ValueError, match=r"'monitor_fraction' must be a number in \[0.0, 0.5\]; got 0.9"):
        G.GanConfig(monitor_fraction=0.9)


def test_config_from_mapping():
    cfg = G.GanConfig.from_mapping({"g_channels": [4, 8], "g_strides": [2], "max_epochs": 3})
    assert cfg.g_channels == (4, 8) and cfg.g_strides == (2,) and cfg.max_epochs == 3
    assert G.GanConfig.from_mapping(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown GanConfig field\(s\) \['epochs'\]"):
        G.GanConfig.from_mapping({"epochs": 3})


# --------------------------------------------------------------------------- labels and intensities
def test_label_coder_round_trip_and_errors():
    coder = G.LabelCoder([9, 1, 2])
    assert coder.label_values == (1, 2, 9) and coder.n_labels == 5
    lab = np.array([[0, 0, 1, 2, 9, 0]])
    brain = np.array([[0, 1, 1, 1, 1, 1]])
    compact = coder.encode(lab, brain)
    np.testing.assert_array_equal(compact, [[0, 1, 2, 3, 4, 1]])
    back, mask = coder.decode(compact)
    np.testing.assert_array_equal(back, lab)
    np.testing.assert_array_equal(mask, brain.astype(bool))
    # an ROI voxel outside the brain mask is still brain
    assert coder.encode(np.array([1]), np.array([0]))[0] == 2
    with pytest.raises(ValueError, match=r"label maps hold values \[5\] outside 'label_values' \[1, 2, 9\]"):
        coder.encode(np.array([0, 5]), np.array([1, 1]))
    with pytest.raises(ValueError, match="'label_values' must be distinct positive ints"):
        G.LabelCoder([0, 1])


def test_intensity_scales_and_errors():
    img = np.zeros((2, 2, 2, 5))
    img[0, 0, 0] = [1, 2, 3, 4, 5]
    img[1, 0, 0] = [10, 20, 30, 40, 50]
    mask = img > 0
    np.testing.assert_allclose(G.intensity_scales(img, mask, 50), [3.0, 30.0])
    mask[1] = False
    with pytest.raises(ValueError, match="image 1: brain mask is empty"):
        G.intensity_scales(img, mask, 50)


def test_image_set_validation():
    data = _cohort(4)
    with pytest.raises(ValueError, match=r"'subjects' has 3 entries for 4 images"):
        G.ImageSet(data.images, data.label_maps, data.classes, data.subjects[:3])
    with pytest.raises(ValueError, match=r"subjects with scans of more than one class: \['s0'\]"):
        G.ImageSet(data.images[:2], data.label_maps[:2], np.array([0, 1]), ["s0", "s0"])
    np.testing.assert_array_equal(data.brain_masks, data.images > 0)


# --------------------------------------------------------------------------- warps
def test_random_warp_grid_identity_and_smooth_displacement():
    x = torch.rand(2, 1, 8, 10, 12)
    grid0 = G.random_warp_grid(2, (8, 10, 12), 0.0)
    assert grid0.shape == (2, 8, 10, 12, 3)
    torch.testing.assert_close(G.warp_images(x, grid0), x, atol=1e-6, rtol=0)
    gen = torch.Generator().manual_seed(0)
    grid = G.random_warp_grid(64, (16, 16, 16), 0.5, 5, generator=gen)
    # displacement in voxels: normalised offset * n / 2, components (z, y, x) -> tensor axes reversed
    disp = (grid - G.random_warp_grid(64, (16, 16, 16), 0.0)) * 8.0
    # the corner voxels hold lattice points exactly: SD 0.5 x spacing 15 / 4 = 1.875 voxels
    corners = disp[:, [0, -1]][:, :, [0, -1]][:, :, :, [0, -1]]
    assert float(corners.std()) == pytest.approx(1.875, rel=0.1)
    sd = float(disp.std())  # trilinear interpolation: variance x (2/3)^3 on average, SD x 0.54
    assert sd == pytest.approx(0.544 * 1.875, rel=0.15)
    # smooth: neighbouring voxels move together (independent voxels would differ by about 1.13 sd)
    assert float((disp[:, 1:] - disp[:, :-1]).abs().mean()) < 0.5 * sd
    lab = torch.randint(0, 4, (64, 16, 16, 16))
    warped = G.warp_labels(lab, grid)
    assert warped.dtype == torch.int64 and set(warped.unique().tolist()) <= {0, 1, 2, 3}


def test_generation_deformation_keeps_structure_volumes():
    # a 3.6 ml ellipsoid (451 voxels at 2 mm) in a 48 x 56 x 48 box keeps its volume within a few per cent
    shape = (48, 56, 48)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    ell = ((x - 20) / 3.75) ** 2 + ((y - 27) / 6.5) ** 2 + ((z - 24) / 4.25) ** 2 < 1
    ell = torch.from_numpy(ell.astype(np.int64))
    sds = []
    for strength in (0.0, 0.03, 0.06):
        grid = G.random_warp_grid(24, shape, strength, 5, generator=torch.Generator().manual_seed(0))
        ratio = G.warp_labels(ell.expand(24, *shape), grid).sum((1, 2, 3)).double() / ell.sum()
        assert abs(float(ratio.mean()) - 1) < 0.03
        sds.append(float(ratio.std()))
    assert sds[0] == 0.0 and 0.01 < sds[1] < 0.06 and sds[2] > 1.5 * sds[1]


def test_warp_axis_convention_matches_tensor_axes():
    # a +1 voxel displacement along tensor axis 0 only (control points constant) shifts axis 0 by one voxel
    shape = (6, 7, 8)
    grid = G.random_warp_grid(1, shape, 0.0)
    grid[..., 2] += 2.0 / shape[0]  # grid component 2 addresses tensor axis 0
    x = torch.arange(math.prod(shape), dtype=torch.float32).view(1, 1, *shape)
    out = G.warp_images(x, grid)
    torch.testing.assert_close(out[0, 0, :-1], x[0, 0, 1:])


# --------------------------------------------------------------------------- DiffAugment3D
def test_diffaugment_identity_at_zero_strength():
    aug = G.DiffAugment3D(0.0, 0.0, 0.0)
    x = torch.rand(3, 2, 8, 9, 10)
    torch.testing.assert_close(aug(x, generator=torch.Generator().manual_seed(1)), x, atol=1e-6, rtol=0)


def test_diffaugment_sample_ranges():
    aug = G.DiffAugment3D(10.0, 0.1, 0.2)
    theta = aug.sample(500, generator=torch.Generator().manual_seed(0))
    assert theta.shape == (500, 3, 4)
    zoom = torch.linalg.det(theta[:, :, :3]) ** (1 / 3)
    assert float(zoom.min()) >= 0.8 - 1e-9 and float(zoom.max()) <= 1.2 + 1e-9
    assert float(theta[:, :, 3].abs().max()) <= 0.2 + 1e-12
    rot = theta[:, :, :3] / zoom[:, None, None]
    # rotation part is orthonormal, with angles up to 10 degrees per axis
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
    angle = torch.acos(((rot.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1))
    assert float(angle.max()) <= math.radians(10.0) * math.sqrt(3) + 1e-9 and float(angle.max()) > 0.05


def test_diffaugment_translation_moves_one_voxel():
    x = torch.arange(6 * 7 * 8, dtype=torch.float32).view(1, 1, 6, 7, 8)
    theta = torch.eye(3, 4, dtype=torch.float64)[None].clone()
    theta[0, 0, 3] = 2.0 / 8  # column 0 of theta addresses the last tensor axis
    out = G.DiffAugment3D.apply(x, theta)
    torch.testing.assert_close(out[..., :-1], x[..., 1:])


def test_diffaugment_is_differentiable():
    x = torch.rand(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    theta = G.DiffAugment3D(8.0, 0.05, 0.05).sample(1, generator=torch.Generator().manual_seed(3))
    theta.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, t: G.DiffAugment3D.apply(a, t), (x, theta), eps=1e-6, atol=1e-4)
    # gradients reach the generator through the augmentation
    gen_out = torch.rand(2, 1, 8, 8, 8, requires_grad=True)
    G.DiffAugment3D()(gen_out, generator=torch.Generator().manual_seed(0)).square().sum().backward()
    assert gen_out.grad is not None and float(gen_out.grad.abs().sum()) > 0


def test_diffaugment_rejects_bad_input():
    with pytest.raises(ValueError, match=r"'rotation_deg' must be a number in \[0, 180.0\]; got -1"):
        G.DiffAugment3D(rotation_deg=-1)
    with pytest.raises(ValueError, match=r"expected a \(B, C, X, Y, Z\) tensor"):
        G.DiffAugment3D.apply(torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 4))


# --------------------------------------------------------------------------- networks
def test_generator_shapes_condition_and_brain_mask():
    cfg = G.GanConfig(**TINY)
    torch.manual_seed(0)
    net = G.ConditionalGenerator(4, 2, cfg)
    labels = torch.zeros(2, S, S, S, dtype=torch.int64)
    labels[:, 4:12, 4:12, 4:12] = 1
    labels[:, 6:9, 6:9, 6:9] = 3
    classes = torch.tensor([0, 1])
    cond = net.condition(labels, classes)
    assert cond.shape == (2, 6, S, S, S)
    torch.testing.assert_close(cond[:, :4].sum(1), torch.ones(2, S, S, S))
    assert bool((cond[0, 4] == 1).all() and (cond[0, 5] == 0).all() and (cond[1, 5] == 1).all())
    out = net(labels, classes, torch.randn(2, 1, S, S, S))
    assert out.shape == (2, 1, S, S, S)
    out = out.detach()
    assert float(out[:, 0][labels == 0].abs().max()) == 0.0 and float(out[:, 0][labels > 0].abs().max()) > 0
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.01 for a in acts)
    with pytest.raises(ValueError, match="'noise' must have shape"):
        net(labels, classes, torch.randn(2, 2, S, S, S))


def test_patch_output_shape_matches_monai_and_rejects_small_volumes():
    cfg = G.GanConfig(**TINY)
    disc = G.build_discriminator(7, cfg)
    out = disc(torch.zeros(1, 7, S, S, 24))[-1]
    assert tuple(out.shape[2:]) == G.patch_output_shape((S, S, 24), 2, 4) == (2, 2, 4)
    assert all(m.negative_slope == 0.01 for m in disc.modules() if isinstance(m, torch.nn.LeakyReLU))
    with pytest.raises(ValueError, match=r"shape \(16, 16, 16\) are too small for a PatchGAN with d_layers=3"):
        G.patch_output_shape((S, S, S), 3, 4)


# --------------------------------------------------------------------------- training
def test_training_is_deterministic_by_seed():
    data, coder = _gan_data()
    tr, mon = data.subset([0, 1, 2, 3]), data.subset([4, 5])
    cfg = G.GanConfig(**TINY)
    a = G.train_cgan(tr, mon, cfg, n_labels=coder.n_labels, seed=5, device="cpu")
    b = G.train_cgan(tr, mon, cfg, n_labels=coder.n_labels, seed=5, device="cpu")
    c = G.train_cgan(tr, mon, cfg, n_labels=coder.n_labels, seed=6, device="cpu")
    cols = ["d_loss", "g_adv", "g_l1", "monitor_l1"]
    np.testing.assert_array_equal(a.history[cols].to_numpy(), b.history[cols].to_numpy())
    sa, sb, sc = (f.generator.state_dict() for f in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.train_subjects == ("s0", "s1", "s2", "s3") and a.monitor_subjects == ("s4", "s5")
    assert a.device == "cpu" and not a.generator.training


def test_training_leaves_global_rng_untouched():
    data, coder = _gan_data(4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    G.train_cgan(data, None, G.GanConfig(**{**TINY, "max_epochs": 1}), n_labels=coder.n_labels, seed=0,
                 device="cpu")
    torch.testing.assert_close(torch.rand(3), expected)


def test_l1_and_monitor_loss_fall_during_training():
    data, coder = _gan_data(8)
    cfg = G.GanConfig(**{**TINY, "max_epochs": 12, "patience": 12, "lr_g": 2e-3, "lr_d": 2e-4})
    fit = G.train_cgan(data.subset(range(6)), data.subset([6, 7]), cfg, n_labels=coder.n_labels, seed=0,
                       device="cpu")
    h = fit.history
    assert len(h) == 12 and not fit.stopped_early
    assert h["g_l1"].iloc[-3:].mean() < 0.6 * h["g_l1"].iloc[0]
    assert h["monitor_l1"].min() < 0.6 * h["monitor_l1"].iloc[0]
    assert fit.best_epoch == int(h["epoch"][h["monitor_l1"].idxmin()])


# no augmentation or deformation: each loss then moves only because of the network being trained
STILL = dict(aug_rotation_deg=0.0, aug_translation=0.0, aug_scale=0.0, train_deform=0.0, lambda_l1=0.0,
             max_epochs=6)


def test_discriminator_loss_falls_against_a_frozen_generator():
    data, coder = _gan_data(6)
    cfg = G.GanConfig(**{**TINY, **STILL, "lr_g": 1e-12, "lr_d": 5e-3})
    h = G.train_cgan(data, None, cfg, n_labels=coder.n_labels, seed=0, device="cpu").history
    assert h["d_loss"].iloc[0] > 0.5 and h["d_loss"].iloc[-1] < 0.1 * h["d_loss"].iloc[0]
    assert h["g_adv"].iloc[-1] > 2 * h["g_adv"].iloc[0]  # the frozen generator fools it less and less


def test_generator_adversarial_loss_falls_against_a_frozen_discriminator():
    data, coder = _gan_data(6)
    cfg = G.GanConfig(**{**TINY, **STILL, "lr_g": 5e-3, "lr_d": 1e-12})
    h = G.train_cgan(data, None, cfg, n_labels=coder.n_labels, seed=0, device="cpu").history
    assert h["g_adv"].iloc[-1] < 0.8 * h["g_adv"].iloc[0]
    assert h["d_loss"].iloc[-1] > h["d_loss"].iloc[0]  # the frozen discriminator is fooled more and more


def test_early_stopping_keeps_the_best_epoch():
    data, coder = _gan_data(6)
    # min_delta larger than any possible improvement: epoch 1 stays best, stop after `patience` more epochs
    cfg = G.GanConfig(**{**TINY, "max_epochs": 20, "patience": 3, "min_delta": 10.0})
    fit = G.train_cgan(data.subset([0, 1, 2, 3]), data.subset([4, 5]), cfg, n_labels=coder.n_labels, seed=0,
                       device="cpu")
    assert fit.stopped_early and fit.best_epoch == 1 and len(fit.history) == 4


def test_divergence_is_reported_not_hidden():
    data, coder = _gan_data(4)
    cfg = G.GanConfig(**{**TINY, "max_epochs": 3, "lr_g": 1e9, "lr_d": 1e9})
    with pytest.raises(RuntimeError, match=r"cGAN training diverged at epoch 1: non-finite \['monitor_l1'\]"):
        G.train_cgan(data.subset([0, 1]), data.subset([2, 3]), cfg, n_labels=coder.n_labels, device="cpu")


def test_train_rejects_bad_input():
    data, coder = _gan_data(4)
    cfg = G.GanConfig(**TINY)
    with pytest.raises(ValueError, match=r"subjects in both 'train' and 'monitor': \['s0'\]"):
        G.train_cgan(data, data.subset([0]), cfg, n_labels=coder.n_labels)
    odd = G.GanData(data.images[:, :, :, :14], data.labels[:, :, :, :14], data.classes, data.subjects)
    with pytest.raises(ValueError, match=r"volume shape \(16, 16, 14\) must be divisible by the product of "
                                         r"'g_strides' \(4\)"):
        G.train_cgan(odd, None, cfg, n_labels=coder.n_labels)
    with pytest.raises(ValueError, match=r"'train' labels must lie in \[0, 2\]"):
        G.train_cgan(data, None, cfg, n_labels=3)
    with pytest.raises(ValueError, match=r"'device' must be one of \['auto', 'cpu', 'cuda'\]; got 'tpu'"):
        G.train_cgan(data, None, cfg, n_labels=coder.n_labels, device="tpu")


# --------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def tiny_fit() -> tuple[G.GanFit, G.GanData]:
    data, coder = _gan_data(6)
    fit = G.train_cgan(data, None, G.GanConfig(**TINY), n_labels=coder.n_labels, seed=0, device="cpu",
                       num_threads=1)
    return fit, data


def test_generate_shapes_parents_and_determinism(tiny_fit):
    fit, data = tiny_fit
    a = G.generate(fit, data, n_per_class=4, seed=1, deform=0.15, device="cpu")
    b = G.generate(fit, data, n_per_class=4, seed=1, deform=0.15, device="cpu")
    c = G.generate(fit, data, n_per_class=4, seed=2, deform=0.15, device="cpu")
    assert a.images.shape == (8, S, S, S) and a.labels.shape == (8, S, S, S)
    np.testing.assert_array_equal(a.classes, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.classes[a.parents], a.classes)
    # 3 parents per class: each used once before any is used twice
    for cls in (0, 1):
        first3 = a.parents[a.classes == cls][:3]
        assert len(set(first3.tolist())) == 3
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    # one random stream per image: the batch size changes nothing but rounding
    d = G.generate(fit, data, n_per_class=4, seed=1, deform=0.15, batch_size=3, device="cpu")
    np.testing.assert_array_equal(d.labels, a.labels)
    np.testing.assert_allclose(d.images, a.images, atol=1e-5)
    assert float(np.abs(a.images[a.labels == 0]).max()) == 0.0
    # new deformations: no generated label map equals its parent's
    assert all(not np.array_equal(a.labels[i], data.labels[p]) for i, p in enumerate(a.parents))


def test_generate_without_deformation_keeps_parent_anatomy(tiny_fit):
    fit, data = tiny_fit
    out = G.generate(fit, data, n_per_class=2, seed=0, deform=0.0, device="cpu")
    np.testing.assert_array_equal(out.labels, data.labels[out.parents])
    with pytest.raises(ValueError, match="no parent image of class 1"):
        G.generate(fit, data.subset([0, 2]), n_per_class=1, seed=0)


def test_reconstruct_matches_generator_on_own_labels(tiny_fit):
    fit, data = tiny_fit
    rec = G.reconstruct(fit, data, seed=0, device="cpu")
    assert rec.shape == data.images.shape
    # same noise whatever the batch size (batched convolutions round differently)
    np.testing.assert_allclose(rec, G.reconstruct(fit, data, seed=0, batch_size=1, device="cpu"), atol=1e-5)


# --------------------------------------------------------------------------- GBA scenario
def test_monitor_split_is_subject_level_and_stratified():
    subjects = ["a", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    classes = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    tr, mon = G.monitor_split(subjects, classes, 0.25, seed=0)
    mon_subj = {subjects[i] for i in mon}
    assert len(mon_subj & {"a", "b", "c", "d"}) == 1 and len(mon_subj & {"e", "f", "g", "h", "i"}) == 1
    assert ({0, 1} <= set(mon.tolist())) or not ({0, 1} & set(mon.tolist()))  # both visits of "a" together
    assert sorted(tr.tolist() + mon.tolist()) == list(range(10))
    tr2, mon2 = G.monitor_split(subjects, classes, 0.25, seed=0)
    np.testing.assert_array_equal(mon, mon2)
    assert len(G.monitor_split(subjects, classes, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="subject 'a' has scans of more than one class"):
        G.monitor_split(["a", "a"], [0, 1], 0.2, seed=0)


def test_gba_scenario_end_to_end_and_leakage_record():
    train = _cohort(10, seed=1)
    val = _cohort(4, seed=2, prefix="v")
    log = FitLog()
    res = G.gba_scenario(train, n_folds=2, n_per_class=3, seed=0, config={**TINY, "monitor_fraction": 0.2},
                         validation=val, log=log, device="cpu")
    assert res.label_values == (1, 9) and len(res.folds) == 2
    for k, fold in enumerate(res.folds):
        assert fold.index == k and fold.images.shape == (6, S, S, S) and fold.images.dtype == np.float32
        np.testing.assert_array_equal(fold.classes, [0, 0, 0, 1, 1, 1])
        assert set(np.unique(fold.label_maps).tolist()) <= {0, 1, 9}
        assert (fold.brain_masks | (fold.label_maps == 0)).all()  # every labelled voxel is brain
        cls_of = dict(zip(train.subjects, train.classes.tolist()))
        assert [cls_of[p] for p in fold.parents] == fold.classes.tolist()
        assert [train.subjects[i] for i in fold.parent_rows] == list(fold.parents)
        assert float(np.abs(fold.images[~fold.brain_masks]).max()) == 0.0
    assert not np.array_equal(res.folds[0].images, res.folds[1].images)
    assert res.fit.subjects_seen == sorted(train.subjects)
    assert len(res.fit.monitor_subjects) == 2  # one per class
    assert log.seen("cgan") == frozenset(train.subjects)
    assert_no_leak(log, val.subjects)
    with pytest.raises(LeakageError):
        assert_no_leak(log, ["s3"])
    pairs = res.validation
    assert pairs.generated.shape == val.images.shape and pairs.subjects == val.subjects
    np.testing.assert_array_equal(pairs.real, val.images * val.brain_masks)
    summary = res.fit.summary()
    assert summary["epochs_run"] == len(res.fit.history) and summary["config"]["g_channels"] == [4, 8, 16]


def test_gba_scenario_is_deterministic():
    train = _cohort(6, seed=3)
    cfg = {**TINY, "max_epochs": 1, "monitor_fraction": 0.0}
    a = G.gba_scenario(train, n_folds=1, n_per_class=2, seed=4, config=cfg, device="cpu")
    b = G.gba_scenario(train, n_folds=1, n_per_class=2, seed=4, config=cfg, device="cpu")
    np.testing.assert_array_equal(a.folds[0].images, b.folds[0].images)
    np.testing.assert_array_equal(a.folds[0].label_maps, b.folds[0].label_maps)
    assert a.fit.monitor_subjects == () and a.validation is None


def test_gba_scenario_rejects_bad_input():
    train = _cohort(6)
    with pytest.raises(ValueError, match=r"subjects in both 'train' and 'validation': \['s0', 's1'\]"):
        G.gba_scenario(train, n_folds=1, n_per_class=1, seed=0, config=TINY, validation=_cohort(2))
    only_hc = G.ImageSet(train.images[::2], train.label_maps[::2], train.classes[::2], train.subjects[::2])
    with pytest.raises(ValueError, match=r"'train' has no scan of class\(es\) \[1\]"):
        G.gba_scenario(only_hc, n_folds=1, n_per_class=1, seed=0, config=TINY)
    with pytest.raises(ValueError, match=r"'n_per_class' must be an integer >= 1; got 0"):
        G.gba_scenario(train, n_folds=1, n_per_class=0, seed=0, config=TINY)
    with pytest.raises(ValueError, match=r"label maps hold values \[9\] outside 'label_values' \[1\]"):
        G.gba_scenario(train, n_folds=1, n_per_class=1, seed=0, config=TINY, label_values=[1])


# --------------------------------------------------------------------------- coarse GAN grid
def test_block_resampling():
    rng = np.random.default_rng(0)
    img = rng.random((2, 4, 6, 8)).astype(np.float32)
    down = G.downsample_images(img, 2)
    np.testing.assert_allclose(down, img.reshape(2, 2, 2, 3, 2, 4, 2).mean(axis=(2, 4, 6)), rtol=1e-6)
    lab = np.zeros((1, 2, 2, 2), np.int64)
    lab[0, 0, 0, :] = 3  # 2 of 8 voxels
    lab[0, 1, :, :] = 2  # 4 of 8 voxels
    assert G.downsample_labels(lab, 2, 4).tolist() == [[[[2]]]]
    lab[0, 1, 1, :] = 1  # now 2 x label 1, 2 x label 2, 2 x label 3, 2 x 0: the lowest label wins the tie
    assert G.downsample_labels(lab, 2, 4).tolist() == [[[[0]]]]
    many = rng.integers(0, 5, (5, 4, 4, 6))
    np.testing.assert_array_equal(G.downsample_labels(many, 2, 5, chunk=2), G.downsample_labels(many, 2, 5, chunk=5))
    onehot = np.eye(5)[many].reshape(5, 2, 2, 2, 2, 3, 2, 5).sum(axis=(2, 4, 6))
    np.testing.assert_array_equal(G.downsample_labels(many, 2, 5), onehot.argmax(-1))  # argmax: lowest on ties
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (1, 16, 4, 4))
    up = G.upsample_images(G.downsample_images(ramp, 2), 2)
    np.testing.assert_allclose(up[0, 1:-1], ramp[0, 1:-1], atol=1e-5)  # linear ramps survive, edges clamp
    with pytest.raises(ValueError, match=r"volume shape \(4, 6, 8\) must be divisible by the grid factor 4"):
        G.downsample_images(img, 4)


def test_generate_on_a_coarse_grid_keeps_fine_truth(tiny_fit):
    fit, data = tiny_fit
    fine = np.repeat(np.repeat(np.repeat(data.labels, 2, 1), 2, 2), 2, 3)
    out = G.generate(fit, data, n_per_class=2, seed=0, deform=0.0, fine_labels=fine, factor=2, device="cpu")
    assert out.images.shape == (4, 32, 32, 32)
    np.testing.assert_array_equal(out.labels, fine[out.parents])
    assert float(np.abs(out.images[out.labels == 0]).max()) == 0.0
    warped = G.generate(fit, data, n_per_class=2, seed=0, fine_labels=fine, factor=2, device="cpu")
    # the fine truth follows the same deformation as the coarse generator input
    coarse_of_truth = G.downsample_labels(warped.labels, 2, fit.n_labels)
    agree = float((coarse_of_truth == G.generate(fit, data, n_per_class=2, seed=0, device="cpu").labels).mean())
    assert agree > 0.9
    with pytest.raises(ValueError, match=r"'fine_labels' must have shape \(6, 32, 32, 32\) for factor 2"):
        G.generate(fit, data, n_per_class=1, seed=0, factor=2)


def test_gba_scenario_with_grid_factor():
    small = _cohort(8, seed=5)
    up = lambda a: np.repeat(np.repeat(np.repeat(a, 2, 1), 2, 2), 2, 3)  # noqa: E731
    train = G.ImageSet(up(small.images), up(small.label_maps), small.classes, small.subjects)
    res = G.gba_scenario(train, n_folds=1, n_per_class=2, seed=0, config={**TINY, "max_epochs": 1}, grid_factor=2,
                         validation=G.ImageSet(train.images[:2], train.label_maps[:2], train.classes[:2], ["v0", "v1"]),
                         device="cpu")
    fold = res.folds[0]
    assert fold.images.shape == (4, 32, 32, 32) and fold.label_maps.shape == (4, 32, 32, 32)
    assert set(np.unique(fold.label_maps).tolist()) == {0, 1, 9}
    assert float(np.abs(fold.images[~fold.brain_masks]).max()) == 0.0
    assert res.validation.generated.shape == (2, 32, 32, 32)
