"""Normalized Dice loss and blob loss: the training objective of seed 004's 3D U-Net.

Neither exists in MONAI. Both work on the *lesion-class probability* ``p`` (the
softmax of the network's logits, channel ``lesion_channel``) against a binary
target ``g``; sums run over the voxels of one sample (patch):

``TP = sum(p g)``, ``FP = sum(p (1 - g))``, ``FN = sum((1 - p) g)``,
``|G| = sum(g)``, ``n`` = number of voxels.

Normalized Dice (Raina et al., ISBI 2023)
    ``nDSC = 2 TP / (2 TP + k FP + FN)`` with
    ``k = (1 - r) |G| / (r (n - |G|))``: false positives are rescaled as if the
    lesion load ``|G| / n`` were the reference load ``r`` (``effective_load``,
    0.001), which removes the Dice's dependence on how much lesion a scan
    holds. ``k = 1`` when ``|G| = 0`` (plain Dice) or ``|G| = n``. The loss of
    one sample is ``1 - (2 TP + s_nr) / (2 TP + k FP + FN + s_dr)`` (MONAI's
    smoothing terms, 1e-5 each, so an empty target with an empty prediction
    costs 0); the batch loss is the mean over samples. With a hard (0/1) ``p``
    and no smoothing it is ``1 - nDSC`` (:func:`msutils.segmentation.metrics.normalized_dice`).
Blob loss (Kofler et al., 2022)
    For sample ``b`` and each ground-truth *instance* ``l`` of that sample (an
    integer instance map, 0 = background): every voxel belonging to *another*
    instance is set to zero in both prediction and target, and the criterion
    (the normalized Dice loss above, with ``n`` still the whole patch) is
    computed on that masked pair; the instance losses are averaged per sample,
    and the per-sample values are averaged over the samples that hold at least
    one instance (0 for a batch without any). So a large lesion cannot hide a
    missed small one: each lesion weighs the same. Because the masked
    prediction keeps the background, ``TP_l = S_l = sum(p [inst == l])``,
    ``FP_l = sum(p [inst == 0])`` (the same for every ``l``) and
    ``FN_l = |l| - S_l``; all instances therefore come from one segment sum
    (``scatter_add``), not one masked pass per lesion. The tests check this
    against the literal per-instance masking loop.
Combined objective
    ``lambda_global * nDSC_loss(p, g) + lambda_blob * blob(p, instances)``
    with ``g = instances > 0``; the defaults ``2.0`` and ``1.0`` are the blob
    loss paper's recommendation and the values of the seed authors' public
    training code (the paper only says "a linear combination").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = [
    "EFFECTIVE_LOAD",
    "normalized_dice_loss",
    "blob_loss",
    "NormalizedDiceLoss",
    "BlobNormalizedDiceLoss",
]

logger = logging.getLogger(__name__)

#: Reference lesion load ``r`` of the normalized Dice (Raina et al.).
EFFECTIVE_LOAD: float = 1e-3


def _check_positive(name: str, value: float, *, upper: float | None = None, allow_zero: bool = False) -> float:
    v = float(value)
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if upper is not None:
        ok = ok and v < upper
    if not ok:
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"'{name}' must be {'>= 0' if allow_zero else '> 0'}{bound}; got {value!r}")
    return v


def _scaling(ground: torch.Tensor, n: int, effective_load: float) -> torch.Tensor:
    """``k = (1 - r) |G| / (r (n - |G|))``, 1 where ``|G|`` is 0 or ``n``."""
    r = effective_load
    degenerate = (ground <= 0) | (ground >= n)
    safe = torch.where(degenerate, torch.ones_like(ground), ground)
    k = (1.0 - r) * safe / (r * (n - safe).clamp_min(1.0))
    return torch.where(degenerate, torch.ones_like(k), k)


def _ndsc_loss_from_sums(
    tp: torch.Tensor, fp: torch.Tensor, ground: torch.Tensor, n: int, effective_load: float,
    smooth_nr: float, smooth_dr: float,
) -> torch.Tensor:
    k = _scaling(ground, n, effective_load)
    fn = ground - tp
    return 1.0 - (2.0 * tp + smooth_nr) / (2.0 * tp + k * fp + fn + smooth_dr)


def _flat(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"'{name}' must have a batch axis and at least one spatial axis; got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def normalized_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    effective_load: float = EFFECTIVE_LOAD,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """Per-sample soft normalized Dice loss.

    Parameters
    ----------
    probs : Tensor, shape (B, *spatial)
        Lesion-class probabilities in [0, 1].
    target : Tensor, shape (B, *spatial)
        Binary target (0/1, any dtype).
    effective_load : float in (0, 1), default 0.001
        Reference lesion load ``r``.
    smooth_nr, smooth_dr : float >= 0
        Added to numerator and denominator.

    Returns
    -------
    Tensor, shape (B,)
        ``1 - (2 TP + s_nr) / (2 TP + k FP + FN + s_dr)`` per sample.
    """
    r = _check_positive("effective_load", effective_load, upper=1.0)
    snr = _check_positive("smooth_nr", smooth_nr, allow_zero=True)
    sdr = _check_positive("smooth_dr", smooth_dr, allow_zero=True)
    p = _flat("probs", probs)
    g = _flat("target", target).to(p.dtype)
    if probs.shape != target.shape:
        raise ValueError(f"'probs' and 'target' must have the same shape; got {tuple(probs.shape)} and "
                         f"{tuple(target.shape)}")
    tp = (p * g).sum(1)
    ground = g.sum(1)
    fp = p.sum(1) - tp
    return _ndsc_loss_from_sums(tp, fp, ground, p.shape[1], r, snr, sdr)


def blob_loss(
    probs: torch.Tensor,
    instances: torch.Tensor,
    *,
    effective_load: float = EFFECTIVE_LOAD,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """Blob loss with the normalized Dice loss as the per-instance criterion.

    Parameters
    ----------
    probs : Tensor, shape (B, *spatial)
        Lesion-class probabilities.
    instances : Tensor, shape (B, *spatial), integer
        Ground-truth instance map of each sample: 0 background, positive ids
        for lesions (ids need not be consecutive; they are per sample).
    effective_load, smooth_nr, smooth_dr
        As in :func:`normalized_dice_loss`.

    Returns
    -------
    Tensor, scalar
        Mean over samples with at least one instance of the mean instance loss;
        0 when no sample has an instance.
    """
    r = _check_positive("effective_load", effective_load, upper=1.0)
    snr = _check_positive("smooth_nr", smooth_nr, allow_zero=True)
    sdr = _check_positive("smooth_dr", smooth_dr, allow_zero=True)
    p = _flat("probs", probs)
    inst = _flat("instances", instances)
    if inst.is_floating_point() or inst.dtype == torch.bool:
        raise TypeError(f"'instances' must be an integer instance map; got dtype {instances.dtype}")
    if probs.shape != instances.shape:
        raise ValueError(f"'probs' and 'instances' must have the same shape; got {tuple(probs.shape)} and "
                         f"{tuple(instances.shape)}")
    if inst.numel() and int(inst.min()) < 0:
        raise ValueError(f"'instances' must be >= 0 (0 = background); got minimum {int(inst.min())}")
    n = p.shape[1]
    per_sample = []
    for b in range(p.shape[0]):
        ids, codes = torch.unique(inst[b], return_inverse=True)
        if ids.numel() == 0 or int(ids[-1]) == 0:
            continue  # no instance in this sample
        seg = torch.zeros(ids.numel(), dtype=p.dtype, device=p.device).scatter_add(0, codes, p[b])
        size = torch.bincount(codes, minlength=ids.numel()).to(p.dtype)
        fg = ids > 0
        background = seg[~fg].sum()  # sum of p over background voxels (0 if the sample has none)
        s_l, size_l = seg[fg], size[fg]
        losses = _ndsc_loss_from_sums(s_l, background.expand_as(s_l), size_l, n, r, snr, sdr)
        per_sample.append(losses.mean())
    if not per_sample:
        return p.sum() * 0.0  # keeps the graph (and the device) for backward
    return torch.stack(per_sample).mean()


def _lesion_probs(logits: torch.Tensor, lesion_channel: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.ndim < 3:
        raise ValueError("'logits' must be a tensor of shape (B, C, *spatial)")
    if not 0 <= lesion_channel < logits.shape[1]:
        raise ValueError(f"'lesion_channel' must be in [0, {logits.shape[1] - 1}] for {logits.shape[1]} output "
                         f"channels; got {lesion_channel}")
    return torch.softmax(logits, dim=1)[:, lesion_channel]


def _squeeze_channel(name: str, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if x.ndim == logits.ndim and x.shape[1] == 1:
        x = x[:, 0]
    if tuple(x.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"'{name}' must have shape (B, *spatial) or (B, 1, *spatial) matching the logits "
                         f"{tuple(logits.shape)}; got {tuple(x.shape)}")
    return x


class NormalizedDiceLoss(nn.Module):
    """Soft normalized Dice loss on the softmax of logits (batch mean).

    Parameters
    ----------
    effective_load : float, default 0.001
        Reference lesion load ``r``.
    lesion_channel : int, default 1
        Output channel of the lesion class.
    smooth_nr, smooth_dr : float
        Smoothing terms (see :func:`normalized_dice_loss`).
    """

    def __init__(self, effective_load: float = EFFECTIVE_LOAD, *, lesion_channel: int = 1,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        self.effective_load = _check_positive("effective_load", effective_load, upper=1.0)
        self.smooth_nr = _check_positive("smooth_nr", smooth_nr, allow_zero=True)
        self.smooth_dr = _check_positive("smooth_dr", smooth_dr, allow_zero=True)
        if isinstance(lesion_channel, bool) or not isinstance(lesion_channel, int) or lesion_channel < 0:
            raise ValueError(f"'lesion_channel' must be a non-negative integer; got {lesion_channel!r}")
        self.lesion_channel = lesion_channel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, *spatial)`` against a binary target ``(B[, 1], *spatial)``."""
        p = _lesion_probs(logits, self.lesion_channel)
        g = _squeeze_channel("target", target, logits)
        return normalized_dice_loss(p, g, effective_load=self.effective_load, smooth_nr=self.smooth_nr,
                                    smooth_dr=self.smooth_dr).mean()


class BlobNormalizedDiceLoss(nn.Module):
    """``lambda_global * normalized Dice loss + lambda_blob * blob loss`` (seed 004).

    Parameters
    ----------
    lambda_global : float, default 2.0
        Weight of the whole-patch normalized Dice loss.
    lambda_blob : float, default 1.0
        Weight of the blob (per-instance) loss.
    effective_load, lesion_channel, smooth_nr, smooth_dr
        As in :class:`NormalizedDiceLoss`.
    """

    def __init__(self, lambda_global: float = 2.0, lambda_blob: float = 1.0, *,
                 effective_load: float = EFFECTIVE_LOAD, lesion_channel: int = 1,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        self.lambda_global = _check_positive("lambda_global", lambda_global, allow_zero=True)
        self.lambda_blob = _check_positive("lambda_blob", lambda_blob, allow_zero=True)
        if self.lambda_global + self.lambda_blob == 0:
            raise ValueError("'lambda_global' and 'lambda_blob' must not both be 0")
        self.ndsc = NormalizedDiceLoss(effective_load, lesion_channel=lesion_channel, smooth_nr=smooth_nr,
                                       smooth_dr=smooth_dr)

    def forward(self, logits: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, *spatial)`` against a ground-truth instance map ``(B[, 1], *spatial)``."""
        inst = _squeeze_channel("instances", instances, logits)
        p = _lesion_probs(logits, self.ndsc.lesion_channel)
        kw = {"effective_load": self.ndsc.effective_load, "smooth_nr": self.ndsc.smooth_nr,
              "smooth_dr": self.ndsc.smooth_dr}
        glob = normalized_dice_loss(p, (inst > 0), **kw).mean()
        return self.lambda_global * glob + self.lambda_blob * blob_loss(p, inst, **kw)
