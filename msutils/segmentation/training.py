"""Training recipes of seed 002's two networks: losses, optimisers, learning-rate schedules, loop.

Recipes (:data:`RECIPES`, :class:`TrainConfig`)
    ``"resnext_unet"`` (the paper's CNN): loss ``gamma * Dice + (1 - gamma) *
    BCE`` with ``gamma = 0.5``; AdamW, learning rate 1e-4, weight decay 1e-5;
    a linear warm-up over the first 100 iterations from 1e-6 to 1e-4, then
    cosine annealing to 5e-6 over the remaining iterations (updated every
    iteration); 50 epochs, batch 32, 256 x 256 slices.
    ``"attention_unet"``: soft Dice loss; RMSprop (torch defaults: smoothing
    0.99, eps 1e-8), learning rate 1e-4 multiplied by 0.995 after every epoch;
    40 epochs, batch 6, 224 x 224 slices.
    Both: random horizontal flip with probability 0.5 (training only), per
    slice min-max scaled inputs (done by the caller), sigmoid + threshold 0.5 at
    inference. Profiles shrink ``epochs``, ``batch_size`` and ``warmup_iters``.

Losses
    MONAI's ``DiceCELoss`` / ``DiceLoss`` with ``sigmoid=True`` and
    ``batch=True``: the Dice is computed over the whole batch (one ratio per
    batch, so lesion-free slices in a batch do not give 0/0), with MONAI's
    smoothing 1e-5 in numerator and denominator; the BCE is
    ``BCEWithLogitsLoss`` on the single logit channel.

Loop (:func:`train_net`)
    Mini-batches drawn from a seeded permutation every epoch; after each epoch
    the Dice on the validation slices (mean of the per-slice Dice of the
    thresholded prediction, at the network's input size) is recorded; the
    weights of the epoch with the best validation Dice are kept (checkpoint
    choice on the validation split, never on the test fold). The history holds
    the training loss, validation Dice and learning rate per epoch: the
    validation-Dice curve is what Eqs. 4-5 (SDD) are computed on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from msutils.core.validation import check_choice
from msutils.core.device import resolve_device

__all__ = [
    "RECIPES",
    "TrainConfig",
    "TrainResult",
    "paper_config",
    "make_loss",
    "make_optimizer",
    "warmup_cosine_lr",
    "exponential_lr",
    "learning_rate",
    "train_net",
    "predict_proba",
    "mean_slice_dice",
]

logger = logging.getLogger(__name__)

_LOSSES = ("dice_bce", "dice")
_OPTIMIZERS = ("adamw", "rmsprop")
_SCHEDULES = ("warmup_cosine", "exponential")
_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """One network's training recipe.

    Attributes
    ----------
    loss : {"dice_bce", "dice"}
    gamma : float
        Weight of the Dice term in ``dice_bce`` (the BCE gets ``1 - gamma``).
    optimizer : {"adamw", "rmsprop"}
    lr : float
        Base learning rate.
    weight_decay : float
    schedule : {"warmup_cosine", "exponential"}
    warmup_iters : int
        Linear warm-up iterations (``warmup_cosine``).
    warmup_start_lr : float
        Learning rate at iteration 0 of the warm-up.
    min_lr : float
        End of the cosine annealing.
    lr_decay : float
        Factor applied after every epoch (``exponential``).
    epochs : int
    batch_size : int
    image_size : int
        Slice size the network is trained on.
    flip_prob : float
        Probability of a horizontal flip of a training slice.
    flip_dim : int
        Array axis of a ``(H, W)`` slice that is flipped: 0 flips the first
        axis, which is left-right for slices cut from RAS+ volumes
        (``volume[:, :, k]``), i.e. the horizontal flip of the displayed image.
    threshold : float
        Probability threshold of the binary prediction.
    seed : int
    device : {"auto", "cpu", "cuda"}
    """

    loss: str = "dice_bce"
    gamma: float = 0.5
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-5
    schedule: str = "warmup_cosine"
    warmup_iters: int = 100
    warmup_start_lr: float = 1e-6
    min_lr: float = 5e-6
    lr_decay: float = 0.995
    epochs: int = 50
    batch_size: int = 32
    image_size: int = 256
    flip_prob: float = 0.5
    flip_dim: int = 0
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name, allowed in (("loss", _LOSSES), ("optimizer", _OPTIMIZERS), ("schedule", _SCHEDULES),
                              ("device", _DEVICES)):
            check_choice(name, getattr(self, name), allowed)
        for name in ("epochs", "batch_size", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"'{name}' must be a positive integer; got {v!r}")
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ValueError(f"'warmup_iters' must be an integer >= 0; got {self.warmup_iters!r}")
        for name in ("lr", "warmup_start_lr", "min_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"'{name}' must be a positive number; got {v!r}")
        for name, lo, hi in (("gamma", 0.0, 1.0), ("flip_prob", 0.0, 1.0), ("threshold", 0.0, 1.0),
                             ("lr_decay", 0.0, 1.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"'{name}' must be in [{lo}, {hi}]; got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"'weight_decay' must be a number >= 0; got {self.weight_decay!r}")
        if self.flip_dim not in (0, 1):
            raise ValueError(f"'flip_dim' must be one of [0, 1]; got {self.flip_dim!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every setting."""
        return asdict(self)

    def resolved_device(self) -> str:
        """``"cuda"`` or ``"cpu"`` (``"auto"``: CUDA when torch sees a GPU)."""
        return resolve_device(self.device)


#: The seed's recipes, per network.
RECIPES: dict[str, TrainConfig] = {
    "resnext_unet": TrainConfig(loss="dice_bce", gamma=0.5, optimizer="adamw", lr=1e-4, weight_decay=1e-5,
                                schedule="warmup_cosine", warmup_iters=100, warmup_start_lr=1e-6, min_lr=5e-6,
                                epochs=50, batch_size=32, image_size=256),
    "attention_unet": TrainConfig(loss="dice", optimizer="rmsprop", lr=1e-4, weight_decay=0.0,
                                  schedule="exponential", lr_decay=0.995, epochs=40, batch_size=6, image_size=224),
}


def paper_config(net: str, **changes: Any) -> TrainConfig:
    """The seed's recipe for ``net`` with some settings changed (validated)."""
    if net not in RECIPES:
        raise ValueError(f"'net' must be one of {list(RECIPES)}; got {net!r}")
    return replace(RECIPES[net], **changes)


def make_loss(config: TrainConfig) -> nn.Module:
    """The recipe's loss on logits ``(B, 1, H, W)`` and targets ``(B, 1, H, W)``."""
    from monai.losses import DiceCELoss, DiceLoss

    if config.loss == "dice_bce":
        return DiceCELoss(sigmoid=True, batch=True, lambda_dice=config.gamma, lambda_ce=1.0 - config.gamma)
    return DiceLoss(sigmoid=True, batch=True)


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or RMSprop at the recipe's base learning rate and weight decay."""
    params = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(params, lr=config.lr, weight_decay=config.weight_decay)


def warmup_cosine_lr(iteration: int, *, base_lr: float, warmup_iters: int, warmup_start_lr: float,
                     total_iters: int, min_lr: float) -> float:
    """Learning rate at ``iteration`` (0-based): linear warm-up, then cosine annealing.

    ``iteration < warmup_iters``: ``start + (base - start) * iteration / warmup_iters``;
    afterwards, with ``t = iteration - warmup_iters`` and
    ``T = total_iters - warmup_iters``:
    ``min + (base - min) * (1 + cos(pi * t / T)) / 2`` (``base`` at ``t = 0``,
    ``min`` at ``t = T``; clipped at ``min`` beyond).
    """
    if iteration < 0 or total_iters < 1:
        raise ValueError(f"'iteration' must be >= 0 and 'total_iters' >= 1; got {iteration}, {total_iters}")
    if iteration < warmup_iters:
        return warmup_start_lr + (base_lr - warmup_start_lr) * iteration / warmup_iters
    span = max(total_iters - warmup_iters, 1)
    t = min(iteration - warmup_iters, span)
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / span)) / 2.0


def exponential_lr(epoch: int, *, base_lr: float, gamma: float) -> float:
    """``base_lr * gamma ** epoch`` (``epoch`` 0-based: decayed after every finished epoch)."""
    if epoch < 0:
        raise ValueError(f"'epoch' must be >= 0; got {epoch}")
    return base_lr * gamma**epoch


def learning_rate(config: TrainConfig, iteration: int, epoch: int, total_iters: int) -> float:
    """The recipe's learning rate at a global ``iteration`` within ``epoch`` (both 0-based)."""
    if config.schedule == "warmup_cosine":
        return warmup_cosine_lr(iteration, base_lr=config.lr, warmup_iters=config.warmup_iters,
                                warmup_start_lr=config.warmup_start_lr, total_iters=total_iters,
                                min_lr=config.min_lr)
    return exponential_lr(epoch, base_lr=config.lr, gamma=config.lr_decay)


@dataclass
class TrainResult:
    """What :func:`train_net` returns.

    Attributes
    ----------
    history : dict of str to list
        Per epoch (1-based ``epoch``): ``train_loss``, ``val_dice``, ``lr`` (at
        the epoch's last iteration).
    best_epoch : int
        1-based epoch with the highest validation Dice (first on ties).
    best_val_dice : float
    state_dict : dict
        The weights of ``best_epoch`` (CPU tensors).
    seconds : float
    n_train, n_val : int
        Training / validation slices.
    """

    history: dict[str, list[float]]
    best_epoch: int
    best_val_dice: float
    state_dict: dict[str, torch.Tensor]
    seconds: float
    n_train: int
    n_val: int


def _check_xy(x: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float32)
    ya = np.asarray(y)
    if xa.ndim != 4:
        raise ValueError(f"'{name}_x' must be (n, channels, H, W); got shape {xa.shape}")
    if ya.shape != (xa.shape[0], *xa.shape[2:]):
        raise ValueError(f"'{name}_y' must be (n, H, W) = {(xa.shape[0], *xa.shape[2:])}; got {ya.shape}")
    if xa.shape[0] == 0:
        raise ValueError(f"'{name}_x' holds no slice")
    if not np.all(np.isfinite(xa)):
        raise ValueError(f"'{name}_x' contains NaN or infinite values")
    return xa, (ya > 0).astype(np.float32)


def mean_slice_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over slices of the Dice of binary ``(n, H, W)`` masks (both empty: 1)."""
    p = np.asarray(pred).reshape(len(pred), -1) > 0
    t = np.asarray(truth).reshape(len(truth), -1) > 0
    inter = (p & t).sum(axis=1)
    den = p.sum(axis=1) + t.sum(axis=1)
    return float(np.mean(np.where(den > 0, 2.0 * inter / np.maximum(den, 1), 1.0)))


@torch.no_grad()
def predict_proba(net: nn.Module, x: Any, *, batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """Sigmoid probabilities ``(n, H, W)`` of the first output channel, in eval mode."""
    xa = np.asarray(x, dtype=np.float32)
    if xa.ndim != 4:
        raise ValueError(f"'x' must be (n, channels, H, W); got shape {xa.shape}")
    was_training = net.training
    net.eval()
    out = np.empty((xa.shape[0], *xa.shape[2:]), dtype=np.float32)
    try:
        for i in range(0, xa.shape[0], batch_size):
            logits = net(torch.from_numpy(xa[i:i + batch_size]).to(device))
            out[i:i + batch_size] = torch.sigmoid(logits[:, 0]).cpu().numpy()
    finally:
        net.train(was_training)
    return out


def train_net(
    net: nn.Module,
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    config: TrainConfig,
) -> TrainResult:
    """Train ``net`` with ``config``'s recipe; keep the weights of the best validation epoch.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(B, C, H, W)`` inputs to ``(B, 1, H, W)`` logits.
    train_x, val_x : array-like
        ``(n, C, H, W)`` float inputs.
    train_y, val_y : array-like
        ``(n, H, W)`` binary masks.
    config : TrainConfig

    Returns
    -------
    TrainResult
        ``net`` itself is left with the best epoch's weights loaded.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"'config' must be a TrainConfig; got {type(config).__name__}")
    tx, ty = _check_xy(train_x, train_y, "train")
    vx, vy = _check_xy(val_x, val_y, "val")
    if tx.shape[1:] != vx.shape[1:]:
        raise ValueError(f"training and validation inputs differ in shape: {tx.shape[1:]} vs {vx.shape[1:]}")
    device = config.resolved_device()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net.to(device)
    loss_fn = make_loss(config)
    opt = make_optimizer(net, config)
    n = tx.shape[0]
    per_epoch = math.ceil(n / config.batch_size)
    total = per_epoch * config.epochs
    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_dice": [], "lr": []}
    best = (-1.0, 0)
    best_state: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    it = 0
    flip_axis = 2 + config.flip_dim  # (B, C, H, W)
    for epoch in range(config.epochs):
        net.train()
        order = rng.permutation(n)
        losses = []
        lr = config.lr
        for b in range(per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            xb, yb = tx[idx].copy(), ty[idx].copy()
            flip = rng.random(len(idx)) < config.flip_prob
            xb[flip] = np.flip(xb[flip], axis=flip_axis)
            yb[flip] = np.flip(yb[flip], axis=flip_axis - 1)
            lr = learning_rate(config, it, epoch, total)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = net(torch.from_numpy(xb).to(device))
            loss = loss_fn(logits, torch.from_numpy(yb[:, None]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
        prob = predict_proba(net, vx, batch_size=max(config.batch_size, 8), device=device)
        val_dice = mean_slice_dice(prob >= config.threshold, vy)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(float(np.mean(losses)))
        history["val_dice"].append(val_dice)
        history["lr"].append(lr)
        if val_dice > best[0]:
            best = (val_dice, epoch + 1)
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        logger.debug("epoch %d: loss %.4f, validation Dice %.4f, lr %.2e", epoch + 1, history["train_loss"][-1],
                     val_dice, lr)
    net.load_state_dict(best_state)
    return TrainResult(history=history, best_epoch=best[1], best_val_dice=best[0], state_dict=best_state,
                       seconds=time.perf_counter() - t0, n_train=n, n_val=int(vx.shape[0]))
