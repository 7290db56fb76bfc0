"""3D U-Net (MONAI) for the ten ROIs of seed 000: deep-GM nuclei, whole WM, whole GM.

Classes (:data:`ROI_NAMES`, class ``k`` = ``ROI_NAMES[k - 1]``, 0 = background):
left/right thalamus, caudate, putamen, pallidum, the whole white matter and the
whole grey matter. :func:`class_map` turns a cohort label map into this class
map through the cohort's ``roi_sets`` (``whole_gm`` is the union of the
cortical parcels), so the network predicts exactly the regions radiomics is
extracted from.

Training (:func:`train_roi_unet`)
    MONAI :class:`~monai.networks.nets.UNet` (3D, residual units, instance
    norm), Dice + cross-entropy loss (:class:`~monai.losses.DiceCELoss`), Adam
    with a polynomial learning-rate decay.
    Random cubic patches of ``patch_size`` voxels; a fraction ``fg_fraction``
    of the patches is centred on a deep-GM voxel (the small nuclei would
    otherwise be rare); patches get random intensity changes (gamma, contrast,
    blur) so that the network carries over to another scanner, and a left-right
    mirror with left and right labels swapped (``flip_lr``; the first array axis
    is left-right). Every ``val_every`` steps the whole validation volumes
    are segmented and the mean Dice over the ten classes is computed; the
    weights of the best validation are kept and training stops after
    ``patience`` validations without improvement (or ``max_steps``).
    Intensities are z-scored over each volume's non-zero voxels (:func:`zscore_foreground`).
    Deterministic for a seed on CPU (torch and numpy generators seeded).

Inference (:meth:`RoiSegmenter.predict`)
    The whole volume, zero-padded to a multiple of the network's stride, one
    forward pass (with ``tta_flip``, the mean of the class probabilities of the
    volume and of its mirror image, mirrored back with left and right swapped),
    arg-max over the classes; with ``largest_component`` (default)
    each deep-GM nucleus keeps only its largest connected component (a nucleus is
    one structure; stray islands become background), the post-processing nnU-Net
    applies when it helps on validation. Validation Dice is computed on the
    post-processed maps too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from msutils.core.device import resolve_device

__all__ = [
    "ROI_NAMES",
    "DEEP_GM_CLASSES",
    "RoiUNetConfig",
    "RoiSegmenter",
    "class_map",
    "class_rois",
    "dice_per_roi",
    "keep_largest_components",
    "zscore_foreground",
    "train_roi_unet",
]

logger = logging.getLogger(__name__)

ROI_NAMES: tuple[str, ...] = (
    "thalamus_L", "thalamus_R", "caudate_L", "caudate_R", "putamen_L", "putamen_R",
    "pallidum_L", "pallidum_R", "whole_wm", "whole_gm",
)
"""The ten ROIs of seed 000; class value = position + 1."""

DEEP_GM_CLASSES: tuple[int, ...] = tuple(range(1, 9))
"""Class values of the eight deep-GM nuclei."""

MIRROR_CLASSES: np.ndarray = np.array([0, 2, 1, 4, 3, 6, 5, 8, 7, 9, 10], dtype=np.int64)
"""Class of every class value in the left-right mirror image (left and right nuclei swap)."""


def class_rois() -> dict[str, list[int]]:
    """``{roi name: [class value]}`` for radiomics on a class map."""
    return {name: [k] for k, name in enumerate(ROI_NAMES, start=1)}


def class_map(labels: np.ndarray, roi_sets: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Cohort label map -> class map (uint8, 0..10) through the named ROI sets.

    Raises
    ------
    ValueError
        A ROI of :data:`ROI_NAMES` is missing from ``roi_sets``, or two ROIs share a label.
    """
    missing = [r for r in ROI_NAMES if r not in roi_sets]
    if missing:
        raise ValueError(f"'roi_sets' lacks the ROIs {missing}; seed 000 needs {list(ROI_NAMES)}")
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, dtype=np.uint8)
    seen: dict[int, str] = {}
    for k, name in enumerate(ROI_NAMES, start=1):
        for v in roi_sets[name]:
            if int(v) in seen:
                raise ValueError(f"label {v} belongs to both {seen[int(v)]!r} and {name!r}")
            seen[int(v)] = name
        out[np.isin(lab, list(roi_sets[name]))] = k
    return out


def dice_per_roi(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of every ROI between two class maps (1.0 when both are empty)."""
    from msutils.segmentation.metrics import dice

    return {name: dice(pred == k, truth == k) for k, name in enumerate(ROI_NAMES, start=1)}


@dataclass(frozen=True)
class RoiUNetConfig:
    """Network and training settings (profile-scaled).

    Attributes
    ----------
    channels : tuple of int
        Feature maps per level (the stride between levels is 2).
    num_res_units : int
        Residual units per block.
    patch_size : int
        Edge of the cubic training patches (voxels; a multiple of 2 ** (levels - 1)).
    batch_size : int
    lr : float
        Initial Adam learning rate, decayed as ``lr * (1 - step / max_steps) ** 0.9``
        (nnU-Net's polynomial schedule).
    max_steps : int
        Upper bound of optimiser steps.
    val_every : int
        Steps between validations.
    patience : int
        Validations without improvement before stopping.
    fg_fraction : float
        Share of patches centred on a deep-GM voxel.
    largest_component : bool
        Keep only the largest 26-connected component of each deep-GM class in
        predictions (:func:`keep_largest_components`).
    flip_lr : float
        Probability of mirroring a training patch left-right (labels swapped).
    tta_flip : bool
        Average the prediction of the volume and of its left-right mirror.
    intensity_aug : float
        Probability of each intensity augmentation of a training patch (gamma
        0.7-1.5 on the min-max-scaled patch, contrast x0.75-1.25, Gaussian blur
        of 0.5-1 voxel): the held-out center has another scanner, so the network
        must not rely on one contrast. 0 disables it.
    seed : int
    device : str
        ``cpu``, ``cuda`` or ``auto``.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    patch_size: int = 48
    batch_size: int = 2
    lr: float = 3e-3
    max_steps: int = 600
    val_every: int = 50
    patience: int = 4
    fg_fraction: float = 0.6
    largest_component: bool = True
    flip_lr: float = 0.5
    tta_flip: bool = True
    intensity_aug: float = 0.3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"'channels' must hold >= 2 positive integers; got {self.channels!r}")
        div = 2 ** (len(self.channels) - 1)
        if self.patch_size % div:
            raise ValueError(f"'patch_size' must be a multiple of {div} for {len(self.channels)} levels; "
                             f"got {self.patch_size!r}")
        for name in ("batch_size", "max_steps", "val_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"'{name}' must be >= 1; got {getattr(self, name)!r}")
        for name in ("fg_fraction", "intensity_aug", "flip_lr"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"'{name}' must be in [0, 1]; got {getattr(self, name)!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"'device' must be one of ['cpu', 'cuda', 'auto']; got {self.device!r}")


def _network(config: RoiUNetConfig) -> Any:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=len(ROI_NAMES) + 1, channels=tuple(config.channels),
                strides=(2,) * (len(config.channels) - 1), num_res_units=config.num_res_units, norm="instance")


def zscore_foreground(image: np.ndarray) -> np.ndarray:
    """The network's intensity normalisation: z-score over the non-zero voxels, background stays 0.

    Parameters
    ----------
    image : ndarray
        A volume (skull-stripped: background exactly 0).

    Returns
    -------
    ndarray of float32, same shape
        ``(v - mean) / sd`` of the non-zero voxels (``sd`` 1 when they are
        constant); an all-zero volume is returned unchanged.
    """
    img = np.asarray(image, dtype=np.float32)
    fg = img != 0
    if not fg.any():
        return img
    mean, sd = float(img[fg].mean()), float(img[fg].std()) or 1.0
    return np.where(fg, (img - mean) / sd, 0.0).astype(np.float32)


def _device(name: str) -> Any:
    import torch

    return torch.device(resolve_device(name))


@dataclass
class RoiSegmenter:
    """A trained ROI U-Net (picklable: weights as tensors) and its training record.

    Attributes
    ----------
    config : RoiUNetConfig
    state : dict
        ``state_dict`` of the network.
    history : dict
        ``step``, ``train_loss`` (mean since the last validation), ``val_dice``.
    best_step : int
        Step of the kept weights.
    subjects : list of str
        Subjects whose volumes trained the network (validation subjects apart).
    val_subjects : list of str
        Subjects of the early-stopping validation.
    seconds : float
    """

    config: RoiUNetConfig
    state: dict[str, Any]
    history: dict[str, list[float]]
    best_step: int
    subjects: list[str]
    val_subjects: list[str]
    seconds: float
    _net: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_net"] = None
        return d

    def network(self) -> Any:
        """The network with the kept weights (built once, eval mode, on the config's device)."""
        if self._net is None:
            net = _network(self.config)
            net.load_state_dict(self.state)
            self._net = net.to(_device(self.config.device)).eval()
        return self._net

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class map (uint8, same shape) of one volume."""
        return _predict(self.network(), image, self.config)

    def network_input(self, image: np.ndarray) -> np.ndarray:
        """What the network sees of one volume: :func:`zscore_foreground`, zero-padded at the end of
        every axis to a multiple of the network's total stride (float32, 3-D)."""
        return _network_input(image, self.config)


def _network_input(image: np.ndarray, config: RoiUNetConfig) -> np.ndarray:
    img = zscore_foreground(image)
    div = 2 ** (len(config.channels) - 1)
    return np.pad(img, [(0, (-s) % div) for s in img.shape])


def _predict(net: Any, image: np.ndarray, config: RoiUNetConfig) -> np.ndarray:
    import torch

    shape = np.shape(image)
    x = torch.from_numpy(_network_input(image, config))[None, None].to(_device(config.device))
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(x), dim=1)
        if config.tta_flip:
            mirrored = torch.softmax(net(torch.flip(x, dims=(2,))), dim=1)
            index = torch.from_numpy(MIRROR_CLASSES).to(prob.device)
            prob = 0.5 * (prob + torch.flip(mirrored, dims=(2,))[:, index])
        out = prob.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
    out = out[tuple(slice(0, s) for s in shape)]
    return keep_largest_components(out, DEEP_GM_CLASSES) if config.largest_component else out


def keep_largest_components(classes: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Class map with every class of ``values`` reduced to its largest 26-connected component.

    Voxels of the smaller components become background (0); other classes are
    untouched. Ties keep the component found first in C order. The input is not
    modified.
    """
    from msutils.segmentation.lesions import largest_component

    out = np.array(classes, copy=True)
    for k in values:
        region = out == k
        out[region & ~largest_component(region)] = 0
    return out


def _patch(vol: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    half = size // 2
    starts = [int(c) - half for c in centre]
    out = np.zeros((size,) * 3, dtype=vol.dtype)
    src = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(starts, vol.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, starts))
    out[dst] = vol[src]
    return out


def _intensity_augment(patch: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Random gamma, contrast and blur of one normalized patch (background stays 0)."""
    from scipy import ndimage

    fg = patch != 0
    if not fg.any() or p == 0:
        return patch
    out = patch.copy()
    if rng.random() < p:
        lo, hi = float(out[fg].min()), float(out[fg].max())
        if hi > lo:
            u = (out[fg] - lo) / (hi - lo)
            out[fg] = u ** rng.uniform(0.7, 1.5) * (hi - lo) + lo
    if rng.random() < p:
        m = float(out[fg].mean())
        out[fg] = (out[fg] - m) * rng.uniform(0.75, 1.25) + m
    if rng.random() < p:
        out = np.where(fg, ndimage.gaussian_filter(out, rng.uniform(0.5, 1.0)), 0.0).astype(np.float32)
    return out


def train_roi_unet(
    images: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_classes: Sequence[np.ndarray],
    config: RoiUNetConfig = RoiUNetConfig(),
    *,
    subjects: Sequence[str] = (),
    val_subjects: Sequence[str] = (),
    fit_log: Any = None,
    progress: bool = True,
) -> RoiSegmenter:
    """Train the ROI U-Net on ``images`` / ``classes``, early-stopped on the validation volumes.

    Parameters
    ----------
    images, classes : sequences of 3D arrays
        Training T1 volumes and their class maps (:func:`class_map`).
    val_images, val_classes : sequences of 3D arrays
        Validation volumes (at least one).
    config : RoiUNetConfig
    subjects, val_subjects : sequences of str
        Subject ids (recorded in the result and, for ``subjects``, in ``fit_log``
        under ``"roi_unet"``; the validation subjects under ``"roi_unet.early_stopping"``).
    progress : bool
        tqdm bar over the steps.
    """
    import torch
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    if not images or len(images) != len(classes):
        raise ValueError(f"need >= 1 training volume with a class map each; got {len(images)} and {len(classes)}")
    if not val_images or len(val_images) != len(val_classes):
        raise ValueError("need >= 1 validation volume with a class map each")
    if fit_log is not None:
        fit_log.record("roi_unet", list(subjects))
        fit_log.record("roi_unet.early_stopping", list(val_subjects))
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    dev = _device(config.device)
    vols = [zscore_foreground(v) for v in images]
    labs = [np.asarray(c, dtype=np.int64) for c in classes]
    fg_points = [np.argwhere(np.isin(c, DEEP_GM_CLASSES)) for c in labs]
    brain_points = [np.argwhere(v != 0) for v in vols]
    net = _network(config).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1.0 - s / config.max_steps) ** 0.9)
    hist: dict[str, list[float]] = {"step": [], "train_loss": [], "val_dice": []}
    best, best_step, best_state, stale, running = -1.0, 0, None, 0, []
    bar = tqdm(total=config.max_steps, desc="ROI U-Net", unit="step", disable=not progress)
    for step in range(1, config.max_steps + 1):
        xb, yb = [], []
        for _ in range(config.batch_size):
            i = int(rng.integers(len(vols)))
            pts = fg_points[i] if (rng.random() < config.fg_fraction and len(fg_points[i])) else brain_points[i]
            centre = pts[int(rng.integers(len(pts)))] if len(pts) else np.array(vols[i].shape) // 2
            xp = _intensity_augment(_patch(vols[i], centre, config.patch_size), rng, config.intensity_aug)
            yp = _patch(labs[i], centre, config.patch_size)
            if config.flip_lr and rng.random() < config.flip_lr:
                xp, yp = np.ascontiguousarray(xp[::-1]), np.ascontiguousarray(MIRROR_CLASSES[yp[::-1]])
            xb.append(xp)
            yb.append(yp)
        x = torch.from_numpy(np.stack(xb))[:, None].to(dev)
        y = torch.from_numpy(np.stack(yb))[:, None].to(dev)
        net.train()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        bar.update(1)
        if step % config.val_every == 0 or step == config.max_steps:
            dices = [np.mean(list(dice_per_roi(_predict(net, v, config), np.asarray(c)).values()))
                     for v, c in zip(val_images, val_classes)]
            score = float(np.mean(dices))
            hist["step"].append(step)
            hist["train_loss"].append(float(np.mean(running)))
            hist["val_dice"].append(score)
            running = []
            bar.set_postfix(val_dice=f"{score:.3f}")
            if score > best:
                best, best_step, stale = score, step, 0
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    logger.info("ROI U-Net: early stop at step %d (best %d, val Dice %.3f)", step, best_step, best)
                    break
    bar.close()
    seconds = time.perf_counter() - t0
    logger.info("ROI U-Net: %d steps in %.0f s, best validation mean Dice %.3f at step %d",
                hist["step"][-1], seconds, best, best_step)
    return RoiSegmenter(config, best_state, hist, best_step, [str(s) for s in subjects],
                        [str(s) for s in val_subjects], seconds)
