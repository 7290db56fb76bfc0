"""Tests for msutils.segmentation.training (seed 002's losses, optimisers and learning-rate schedules)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msutils.segmentation import nets as N
from msutils.segmentation import training as T


def test_paper_recipes():
    r = T.RECIPES["resnext_unet"]
    assert (r.loss, r.gamma, r.optimizer, r.lr, r.weight_decay) == ("dice_bce", 0.5, "adamw", 1e-4, 1e-5)
    assert (r.schedule, r.warmup_iters, r.warmup_start_lr, r.min_lr) == ("warmup_cosine", 100, 1e-6, 5e-6)
    assert (r.epochs, r.batch_size, r.image_size, r.flip_prob) == (50, 32, 256, 0.5)
    a = T.RECIPES["attention_unet"]
    assert (a.loss, a.optimizer, a.lr, a.schedule, a.lr_decay) == ("dice", "rmsprop", 1e-4, "exponential", 0.995)
    assert (a.epochs, a.batch_size, a.image_size, a.flip_prob) == (40, 6, 224, 0.5)


def test_warmup_cosine_values():
    kw = dict(base_lr=1e-4, warmup_iters=100, warmup_start_lr=1e-6, total_iters=1100, min_lr=5e-6)
    assert T.warmup_cosine_lr(0, **kw) == pytest.approx(1e-6, rel=1e-12)
    assert T.warmup_cosine_lr(50, **kw) == pytest.approx(1e-6 + 0.5 * (1e-4 - 1e-6), rel=1e-12)
    assert T.warmup_cosine_lr(99, **kw) == pytest.approx(1e-6 + 0.99 * (1e-4 - 1e-6), rel=1e-12)
    assert T.warmup_cosine_lr(100, **kw) == pytest.approx(1e-4, rel=1e-12)
    assert T.warmup_cosine_lr(600, **kw) == pytest.approx((1e-4 + 5e-6) / 2, rel=1e-12)
    assert T.warmup_cosine_lr(350, **kw) == pytest.approx(5e-6 + 95e-6 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert T.warmup_cosine_lr(1100, **kw) == pytest.approx(5e-6, rel=1e-12)
    assert T.warmup_cosine_lr(5000, **kw) == pytest.approx(5e-6, rel=1e-12)
    lrs = [T.warmup_cosine_lr(i, **kw) for i in range(1101)]
    assert np.all(np.diff(lrs[:101]) > 0) and np.all(np.diff(lrs[100:]) < 0)


def test_exponential_values():
    assert T.exponential_lr(0, base_lr=1e-4, gamma=0.995) == 1e-4
    assert T.exponential_lr(1, base_lr=1e-4, gamma=0.995) == pytest.approx(0.995e-4, rel=1e-12)
    assert T.exponential_lr(39, base_lr=1e-4, gamma=0.995) == pytest.approx(1e-4 * 0.995**39, rel=1e-12)


def _tiny(name):
    torch.manual_seed(0)  # the weight initialisation is part of "same seed, same numbers"
    size = (dict(stem_channels=4, layers=(1, 1, 1, 1), cardinality=2) if name == "resnext_unet" else
            dict(down_blocks=(1,) * 5, up_blocks=(1,) * 5, bottleneck_layers=1, growth_rate=2, first_channels=4))
    return N.build_net(name, 2, **size)


def _data(n=10, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2, size, size)).astype(np.float32)
    y = (rng.random((n, size, size)) > 0.9).astype(np.uint8)
    return x, y


def test_learning_rates_applied_in_training():
    x, y = _data(10)
    cfg = T.paper_config("resnext_unet", epochs=4, batch_size=4, warmup_iters=5, image_size=32, device="cpu")
    res = T.train_net(_tiny("resnext_unet"), x, y, x[:3], y[:3], cfg)
    total = 3 * 4  # ceil(10 / 4) = 3 iterations per epoch
    expected = [T.warmup_cosine_lr(3 * (e + 1) - 1, base_lr=1e-4, warmup_iters=5, warmup_start_lr=1e-6,
                                   total_iters=total, min_lr=5e-6) for e in range(4)]
    assert res.history["lr"] == pytest.approx(expected, rel=1e-12)
    cfg = T.paper_config("attention_unet", epochs=3, batch_size=4, image_size=32, device="cpu")
    res = T.train_net(_tiny("attention_unet"), x, y, x[:3], y[:3], cfg)
    assert res.history["lr"] == pytest.approx([1e-4, 0.995e-4, 0.995**2 * 1e-4], rel=1e-12)
    assert isinstance(T.make_optimizer(_tiny("attention_unet"), cfg), torch.optim.RMSprop)


def test_losses_match_formulas():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.7).float()
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    bce = torch.nn.functional.binary_cross_entropy(p, target)
    got = T.make_loss(T.RECIPES["resnext_unet"])(logits, target)
    assert float(got) == pytest.approx(float(0.5 * dice + 0.5 * bce), rel=1e-5)
    got = T.make_loss(T.paper_config("resnext_unet", gamma=0.2))(logits, target)
    assert float(got) == pytest.approx(float(0.2 * dice + 0.8 * bce), rel=1e-5)
    assert float(T.make_loss(T.RECIPES["attention_unet"])(logits, target)) == pytest.approx(float(dice), rel=1e-5)


def test_best_epoch_and_determinism():
    x, y = _data(8, seed=1)
    cfg = T.paper_config("attention_unet", epochs=4, batch_size=4, image_size=32, device="cpu", lr=1e-3, seed=3)
    a = T.train_net(_tiny("attention_unet"), x, y, x[:4], y[:4], cfg)
    b = T.train_net(_tiny("attention_unet"), x, y, x[:4], y[:4], cfg)
    assert a.history == b.history
    assert a.best_epoch == int(np.argmax(a.history["val_dice"])) + 1
    assert a.best_val_dice == max(a.history["val_dice"])
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k])
    assert (a.n_train, a.n_val) == (8, 4)


def test_mean_slice_dice():
    pred = np.zeros((3, 4, 4), bool)
    truth = np.zeros((3, 4, 4), bool)
    pred[0, :2] = True
    truth[0, :1] = True  # 2 * 4 / (8 + 4)
    truth[1, 0, 0] = True  # prediction empty: 0
    # slice 2: both empty -> 1
    assert T.mean_slice_dice(pred, truth) == pytest.approx((8 / 12 + 0 + 1) / 3)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match=r"^'optimizer' must be one of \['adamw', 'rmsprop'\]; got 'sgd'$"):
        T.TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match=r"^'epochs' must be a positive integer; got 0$"):
        T.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"^'gamma' must be in \[0.0, 1.0\]; got 1.5$"):
        T.TrainConfig(gamma=1.5)
    with pytest.raises(ValueError, match=r"^'net' must be one of \['resnext_unet', 'attention_unet'\]; got 'x'$"):
        T.paper_config("x")
    cfg = T.paper_config("attention_unet", epochs=1, image_size=32, device="cpu")
    x, y = _data(2)
    with pytest.raises(ValueError, match=r"^'train_y' must be \(n, H, W\) = \(2, 32, 32\); got \(2, 16, 16\)$"):
        T.train_net(_tiny("attention_unet"), x, y[:, :16, :16], x, y, cfg)
    with pytest.raises(ValueError, match=r"^'val_x' must be \(n, channels, H, W\); got shape \(2, 32, 32\)$"):
        T.train_net(_tiny("attention_unet"), x, y, x[:, 0], y, cfg)
