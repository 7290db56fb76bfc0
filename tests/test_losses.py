"""Tests for msutils.segmentation.losses and msutils.segmentation.metrics.normalized_dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msutils.segmentation import metrics as M
from msutils.segmentation import losses as L


def _ndsc_reference(p: np.ndarray, g: np.ndarray, r: float = 1e-3, snr: float = 0.0, sdr: float = 0.0) -> float:
    """The formula, written out for one sample."""
    p, g = p.ravel().astype(float), g.ravel().astype(float)
    n, ground = p.size, g.sum()
    tp = float((p * g).sum())
    fp = float((p * (1 - g)).sum())
    fn = float(((1 - p) * g).sum())
    k = 1.0 if ground in (0, n) else (1 - r) * ground / (r * (n - ground))
    return 1.0 - (2 * tp + snr) / (2 * tp + k * fp + fn + sdr)


# --------------------------------------------------------------------------- normalized Dice metric
def test_normalized_dice_metric_hand_made():
    truth = np.zeros((10, 10), bool)
    truth[0, :4] = True  # |T| = 4 of n = 100
    pred = np.zeros((10, 10), bool)
    pred[0, :3] = True  # TP 3, FN 1
    pred[5, 5] = True  # FP 1
    k = 0.999 * 4 / (0.001 * 96)
    assert M.normalized_dice(pred, truth) == pytest.approx(6 / (6 + k * 1 + 1))
    # without false positives it is the plain Dice
    pred[5, 5] = False
    assert M.normalized_dice(pred, truth) == pytest.approx(M.dice(pred, truth)) == pytest.approx(6 / 7)
    # another reference load
    pred[5, 5] = True
    k2 = 0.9 * 4 / (0.1 * 96)
    assert M.normalized_dice(pred, truth, effective_load=0.1) == pytest.approx(6 / (6 + k2 + 1))


def test_normalized_dice_metric_empty_cases():
    empty = np.zeros((4, 4, 4), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert M.normalized_dice(empty, empty) == 1.0
    assert np.isnan(M.normalized_dice(empty, empty, empty_score=float("nan")))
    assert M.normalized_dice(some, empty) == 0.0  # k = 1: a pure false alarm
    assert M.normalized_dice(empty, some) == 0.0
    with pytest.raises(ValueError, match=r"'effective_load' must be in \(0, 1\); got 0"):
        M.normalized_dice(some, some, effective_load=0)


def test_normalized_dice_falls_less_with_load_than_dice():
    """Same per-voxel error rates at two lesion loads: the Dice drops with the load, nDSC at r = load does not."""
    def case(n_lesion: int) -> tuple[np.ndarray, np.ndarray]:
        truth = np.zeros(20000, bool)
        truth[:n_lesion] = True
        pred = truth.copy()
        pred[: n_lesion // 10] = False  # 10 % of the lesion missed
        pred[-(20000 - n_lesion) // 100:] = True  # 1 % of the background
        return pred.reshape(100, 200), truth.reshape(100, 200)
    (p1, t1), (p2, t2) = case(2000), case(200)
    assert M.dice(p2, t2) < M.dice(p1, t1) - 0.1
    n1 = M.normalized_dice(p1, t1, effective_load=0.1)
    n2 = M.normalized_dice(p2, t2, effective_load=0.1)
    assert n1 == pytest.approx(1 - _ndsc_reference(p1, t1, 0.1))
    assert n1 == pytest.approx(n2, abs=0.02)  # k puts both scans at the load 0.1


# --------------------------------------------------------------------------- normalized Dice loss
def test_normalized_dice_loss_against_formula_hand_made():
    probs = torch.zeros(2, 4, 5, dtype=torch.float64)
    target = torch.zeros(2, 4, 5, dtype=torch.float64)
    target[0, 0, 0] = target[0, 0, 1] = 1
    probs[0, 0, 0], probs[0, 0, 1], probs[0, 3, 4] = 0.8, 0.6, 0.5
    # sample 0: TP 1.4, FP 0.5, FN 0.6, |G| = 2, n = 20, k = 0.999 * 2 / (0.001 * 18) = 111
    loss = L.normalized_dice_loss(probs, target, smooth_nr=0.0, smooth_dr=0.0)
    assert loss.shape == (2,)
    assert float(loss[0]) == pytest.approx(1 - 2.8 / (2.8 + 111 * 0.5 + 0.6))
    # sample 1: empty target and empty prediction -> 0 with MONAI's smoothing
    loss_s = L.normalized_dice_loss(probs, target)
    assert float(loss_s[1]) == pytest.approx(0.0)
    assert float(loss_s[0]) == pytest.approx(1 - (2.8 + 1e-5) / (2.8 + 111 * 0.5 + 0.6 + 1e-5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_dice_loss_random_against_reference(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((3, 6, 7, 5))
    g = rng.random((3, 6, 7, 5)) < 0.05
    g[2] = False  # one sample without lesion: k = 1
    got = L.normalized_dice_loss(torch.from_numpy(p), torch.from_numpy(g), effective_load=0.01).numpy()
    want = [_ndsc_reference(p[b], g[b], 0.01, 1e-5, 1e-5) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_hard_loss_is_one_minus_metric():
    rng = np.random.default_rng(3)
    t = rng.random((1, 12, 12, 12)) < 0.02
    p = (rng.random((1, 12, 12, 12)) < 0.02) | t & (rng.random((1, 12, 12, 12)) < 0.7)
    loss = L.normalized_dice_loss(torch.from_numpy(p.astype(float)), torch.from_numpy(t), smooth_nr=0, smooth_dr=0)
    assert float(loss[0]) == pytest.approx(1 - M.normalized_dice(p[0], t[0]), rel=1e-12)


# --------------------------------------------------------------------------- blob loss
def _blob_reference(p: np.ndarray, inst: np.ndarray, r: float = 1e-3, smooth: float = 1e-5) -> float:
    """Literal blob loss: per sample, per instance, mask the other instances out and apply the criterion."""
    per_sample = []
    for b in range(p.shape[0]):
        ids = [i for i in np.unique(inst[b]) if i > 0]
        if not ids:
            continue
        vals = []
        for lab in ids:
            keep = (inst[b] == 0) | (inst[b] == lab)
            vals.append(_ndsc_reference(p[b] * keep, (inst[b] == lab) & keep, r, smooth, smooth))
        per_sample.append(np.mean(vals))
    return float(np.mean(per_sample)) if per_sample else 0.0


def _multi_lesion_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inst = np.zeros((3, 10, 10, 10), np.int64)
    inst[0, 1:4, 1:4, 1:4] = 1  # 27 voxels
    inst[0, 6, 6, 6] = 2  # 1 voxel
    inst[0, 6:9, 1:3, 5:9] = 3  # 24 voxels
    inst[2, 4:6, 4:6, 4:6] = 7  # non-consecutive id; sample 1 has no lesion
    p = rng.random(inst.shape) * 0.3
    p[inst > 0] = 0.5 + 0.5 * rng.random(int((inst > 0).sum()))
    p[0, 6, 6, 6] = 0.05  # the one-voxel lesion is missed
    return p, inst


@pytest.mark.parametrize("seed", [0, 1])
def test_blob_loss_against_per_lesion_loop(seed):
    p, inst = _multi_lesion_case(seed)
    got = float(L.blob_loss(torch.from_numpy(p), torch.from_numpy(inst)))
    assert got == pytest.approx(_blob_reference(p, inst), rel=1e-10)


def test_blob_loss_weighs_every_lesion_equally():
    """A big lesion found and a small one missed: the blob term sees the miss, the global term hardly does."""
    inst = np.zeros((1, 12, 12, 12), np.int64)
    inst[0, 1:7, 1:7, 1:7] = 1  # 216 voxels
    inst[0, 10, 10, 10] = 2  # 1 voxel
    p = np.where(inst == 1, 1.0, 0.0)
    glob = float(L.normalized_dice_loss(torch.from_numpy(p), torch.from_numpy(inst > 0), smooth_nr=0, smooth_dr=0)[0])
    blob = float(L.blob_loss(torch.from_numpy(p), torch.from_numpy(inst), smooth_nr=0, smooth_dr=0))
    assert glob == pytest.approx(1 - 432 / 433)  # one missed voxel of 217
    assert blob == pytest.approx(0.5)  # lesion 1 perfect (loss 0), lesion 2 missed (loss 1)
    assert blob == pytest.approx(_blob_reference(p, inst, smooth=0.0), rel=1e-12)


def test_blob_loss_without_instances_is_zero_and_differentiable():
    p = torch.rand(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    out = L.blob_loss(p, torch.zeros(2, 4, 4, 4, dtype=torch.long))
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.count_nonzero(p.grad) == 0


def test_combined_loss_is_the_linear_combination_and_has_gradients():
    p_np, inst = _multi_lesion_case(4)
    logits = torch.from_numpy(np.stack([np.zeros_like(p_np), np.log(p_np / (1 - p_np))], 1)).requires_grad_()
    crit = L.BlobNormalizedDiceLoss()
    loss = crit(logits, torch.from_numpy(inst)[:, None])
    p = torch.softmax(logits, 1)[:, 1].detach().numpy()
    np.testing.assert_allclose(p, p_np, rtol=1e-10)
    glob = np.mean([_ndsc_reference(p[b], inst[b] > 0, 1e-3, 1e-5, 1e-5) for b in range(3)])
    assert float(loss.detach()) == pytest.approx(2.0 * glob + _blob_reference(p, inst), rel=1e-10)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    single = L.NormalizedDiceLoss()(logits.detach(), torch.from_numpy(inst > 0))
    assert float(single) == pytest.approx(glob, rel=1e-10)


# --------------------------------------------------------------------------- bad input
def test_loss_bad_inputs():
    p = torch.rand(1, 3, 3)
    with pytest.raises(ValueError, match=r"'effective_load' must be > 0 and < 1.0; got 1.5"):
        L.normalized_dice_loss(p, p > 0.5, effective_load=1.5)
    with pytest.raises(ValueError, match=r"'probs' and 'target' must have the same shape; got \(1, 3, 3\) and \(1, 9\)"):
        L.normalized_dice_loss(p, torch.zeros(1, 9))
    with pytest.raises(TypeError, match="'instances' must be an integer instance map; got dtype torch.float32"):
        L.blob_loss(p, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r"'instances' must be >= 0 \(0 = background\); got minimum -1"):
        L.blob_loss(p, -torch.ones(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="'lesion_channel' must be in \\[0, 1\\] for 2 output channels; got 2"):
        L.NormalizedDiceLoss(lesion_channel=2)(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="'lambda_global' and 'lambda_blob' must not both be 0"):
        L.BlobNormalizedDiceLoss(0, 0)
    with pytest.raises(ValueError, match=r"'target' must have shape \(B, \*spatial\)"):
        L.NormalizedDiceLoss()(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3))
