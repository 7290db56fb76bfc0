"""ROI U-Net (msutils.segmentation.roi_unet) and TDA (msutils.data.augment) on small synthetic volumes."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from msutils.data.augment import TdaParams, traditional_augment
from msutils.segmentation.roi_unet import (MIRROR_CLASSES, ROI_NAMES, RoiSegmenter, RoiUNetConfig, _network,
                                           class_map, class_rois, dice_per_roi, keep_largest_components,
                                           train_roi_unet)

ROI_SETS = {**{r: [i + 1] for i, r in enumerate(ROI_NAMES[:9])}, "whole_gm": [101, 102]}


def _phantom(seed: int, shape=(32, 32, 32)):
    """A brain-like ball (label 9 'WM', intensity 1) with a GM shell (101/102) and two nuclei (1, 3)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    lab = np.zeros(shape, np.int16)
    lab[r < 13] = 101
    lab[(r < 13) & (x > c[2])] = 102
    lab[r < 10] = 9
    for label, off in ((1, -4), (3, 4)):
        lab[np.sqrt((z - c[0]) ** 2 + (y - c[1] - off) ** 2 + (x - c[2]) ** 2) < 3] = label
    inten = {0: 0.0, 101: 0.6, 102: 0.6, 9: 1.0, 1: 0.8, 3: 0.68}
    img = np.vectorize(inten.get)(lab).astype(np.float32) + rng.normal(0, 0.02, shape).astype(np.float32)
    img[lab == 0] = 0
    return img, lab


def test_class_map_and_rois():
    _, lab = _phantom(0)
    cls = class_map(lab, ROI_SETS)
    assert cls.dtype == np.uint8 and set(np.unique(cls)) == {0, 1, 3, 9, 10}
    assert ((cls == 10) == np.isin(lab, [101, 102])).all()
    assert class_rois()["whole_gm"] == [10] and len(class_rois()) == 10
    with pytest.raises(ValueError, match=r"'roi_sets' lacks the ROIs \['whole_gm'\]"):
        class_map(lab, {k: v for k, v in ROI_SETS.items() if k != "whole_gm"})
    with pytest.raises(ValueError, match="label 9 belongs to both 'whole_wm' and 'whole_gm'"):
        class_map(lab, {**ROI_SETS, "whole_gm": [9, 101]})


def test_dice_per_roi_hand_case():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[0, 0, :2] = 1
    b[0, 0, 1:3] = 1
    d = dice_per_roi(a, b)
    assert d["thalamus_L"] == pytest.approx(0.5) and d["whole_gm"] == 1.0  # both empty


def test_config_validation():
    with pytest.raises(ValueError, match="'patch_size' must be a multiple of 8 for 4 levels; got 20"):
        RoiUNetConfig(patch_size=20)
    with pytest.raises(ValueError, match=r"'intensity_aug' must be in \[0, 1\]; got 2"):
        RoiUNetConfig(intensity_aug=2)


def test_mirror_classes_swap_left_and_right():
    names = ("background",) + ROI_NAMES
    for k, m in enumerate(MIRROR_CLASSES):
        assert names[m] == names[k].replace("_L", "_X").replace("_R", "_L").replace("_X", "_R")


def test_flip_tta_prediction_matches_a_hand_computation():
    cfg = RoiUNetConfig(channels=(4, 8), patch_size=16, seed=0, largest_component=False)
    torch.manual_seed(0)
    net = _network(cfg)
    seg = RoiSegmenter(cfg, net.state_dict(), {}, 0, [], [], 0.0)
    img = np.random.default_rng(1).normal(1.0, 0.3, (14, 12, 10)).astype(np.float32)
    x = torch.from_numpy(seg.network_input(img))[None, None]
    with torch.no_grad():
        p = torch.softmax(seg.network()(x), 1)[0].numpy()
        q = torch.softmax(seg.network()(torch.from_numpy(x.numpy()[:, :, ::-1].copy())), 1)[0].numpy()
    expected = np.zeros(p.shape[1:], np.int64)
    best = np.full(p.shape[1:], -1.0)
    for k in range(p.shape[0]):  # class k of the volume = class MIRROR[k] of the mirror image, mirrored back
        mean = 0.5 * (p[k] + q[MIRROR_CLASSES[k]][::-1])
        expected = np.where(mean > best, k, expected)
        best = np.maximum(mean, best)
    np.testing.assert_array_equal(seg.predict(img), expected[:14, :12, :10])
    plain = RoiSegmenter(replace(cfg, tta_flip=False), seg.state, {}, 0, [], [], 0.0)
    np.testing.assert_array_equal(plain.predict(img), p.argmax(0)[:14, :12, :10])


def test_keep_largest_components():
    cls = np.zeros((12, 12, 12), np.uint8)
    cls[1:4, 1:4, 1:4] = 1        # 27 voxels: kept
    cls[8:10, 8:10, 8:10] = 1     # 8 voxels: removed
    cls[4, 4, 4] = 1              # touches the big blob at a corner only: 26-connected, kept
    cls[6:8, 1:3, 1:3] = 2        # one component of class 2
    cls[0, 11, 11] = 2            # its stray voxel
    cls[9:11, 1:3, 1:3] = 9       # WM class, two pieces, not in ``values``: untouched
    cls[11, 11, 0] = 9
    before = cls.copy()
    out = keep_largest_components(cls, (1, 2))
    np.testing.assert_array_equal(cls, before)
    assert (out == 1).sum() == 28 and out[4, 4, 4] == 1 and (out[8:10, 8:10, 8:10] == 0).all()
    assert (out == 2).sum() == 8 and out[0, 11, 11] == 0
    np.testing.assert_array_equal(out == 9, before == 9)
    expected = before.copy()
    expected[8:10, 8:10, 8:10] = 0
    expected[0, 11, 11] = 0
    np.testing.assert_array_equal(out, expected)


def test_tiny_training_beats_empty_prediction_and_is_deterministic():
    train = [_phantom(s) for s in range(4)]
    val = [_phantom(10)]
    test = _phantom(20)
    cfg = RoiUNetConfig(channels=(8, 16), patch_size=16, batch_size=2, max_steps=60, val_every=20, patience=5,
                        lr=1e-2, fg_fraction=0.5, seed=3)
    args = ([i for i, _ in train], [class_map(lab, ROI_SETS) for _, lab in train],
            [i for i, _ in val], [class_map(lab, ROI_SETS) for _, lab in val], cfg)
    seg = train_roi_unet(*args, subjects=["s0", "s1", "s2", "s3"], val_subjects=["v"], progress=False)
    truth = class_map(test[1], ROI_SETS)
    pred = seg.predict(test[0])
    assert pred.shape == test[0].shape and pred.dtype == np.uint8
    d = dice_per_roi(pred, truth)
    present = ["thalamus_L", "caudate_L", "whole_wm", "whole_gm"]
    empty = dice_per_roi(np.zeros_like(truth), truth)
    assert all(empty[r] == 0 for r in present)
    assert np.mean([d[r] for r in present]) > 0.6, d
    assert seg.history["step"] == [20, 40, 60] and seg.best_step in (20, 40, 60)
    again = train_roi_unet(*args, progress=False)
    for k, v in seg.state.items():
        assert torch.equal(v, again.state[k]), k
    clone = pickle.loads(pickle.dumps(seg))
    np.testing.assert_array_equal(clone.predict(test[0]), pred)


def test_tda_identity_flip_and_label_consistency():
    img, lab = _phantom(1)
    ident = TdaParams(flip_prob=0, max_rotation_deg=0, max_translation_vox=0, scale_range=(1, 1))
    a, l, t = traditional_augment(img, lab, 0, ident)
    np.testing.assert_allclose(a, img, atol=1e-6)
    assert (l == lab).all() and not t["flip"]
    a, l, t = traditional_augment(img, lab, 0, TdaParams(flip_prob=1, max_rotation_deg=0, max_translation_vox=0,
                                                         scale_range=(1, 1)))
    assert t["flip"] and (l == lab[::-1]).all()
    shift = TdaParams(flip_prob=0, max_rotation_deg=0, max_translation_vox=3, scale_range=(1, 1))
    a, l, t = traditional_augment(img, lab, 4, shift)
    moved = np.argwhere(l == 9).mean(axis=0) - np.argwhere(lab == 9).mean(axis=0)
    np.testing.assert_allclose(moved, np.rint(t["translate_vox"]), atol=0.6)
    a, l, t = traditional_augment(img, lab, 5, TdaParams(flip_prob=0, max_rotation_deg=0, max_translation_vox=0,
                                                         scale_range=(1.1, 1.1)))
    assert (l == 9).sum() / (lab == 9).sum() == pytest.approx(1.1 ** 3, rel=0.06)
    # a full random transform keeps labels and intensities together
    a, l, t = traditional_augment(img, lab, 9)
    assert set(np.unique(l)) <= set(np.unique(lab))
    assert abs(a[l == 9].mean() - 1.0) < 0.05 and abs(a[l == 1].mean() - 0.8) < 0.08
    for k in ("rotate_deg", "translate_vox"):
        assert all(abs(v) <= 10 for v in t[k])
    assert 0.9 <= t["scale"] <= 1.1
    with pytest.raises(ValueError, match="'labels' must be an integer label map"):
        traditional_augment(img, lab.astype(float), 0)
