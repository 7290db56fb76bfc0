"""Instance-level SmoothGrad saliency of a segmentation network (seed 004, Eq. 1).

For one predicted lesion ``Omega`` (a set of output voxels) the map is

``M[v] = 1/N sum_n D^n_{argmax_{v' in Omega} |D^n_{v'}[v]|}[v]``, with
``D^n_{v'}[v] = d y(x_n)[v'] / d x_n[v]``,

where ``x_n = x + noise_n`` is the n-th of ``N`` noisy copies of the input
(``N = 50``), ``y`` is the **pre-softmax logit of the lesion class** (the raw
network output, as in the seed authors' public code), and the derivative is
taken with respect to the FLAIR channel (``input_channel``). At every input
voxel ``v`` the value of largest magnitude over the lesion voxels ``v'`` is
kept *with its sign*, then the ``N`` maps are averaged. Ties in magnitude keep
the first ``v'`` in raster (C) order.

Noise
    Gaussian, i.i.d. per voxel and channel. ``noise="range"`` (default): the
    standard deviation is ``sigma * (max - min)`` of the FLAIR channel of the
    (unpadded) input, added to every input channel -- the seed authors' public
    code and SmoothGrad's own convention (noise relative to the input range);
    with ``sigma = 0.05`` on z-scored FLAIR this is about 0.3-0.5 z-units.
    ``noise="absolute"``: ``sigma`` itself, in input units (the paper's text
    says ``sigma = 0.05`` on z-scored images without naming a reference). The
    noise is *block-seeded*: the (padded) volume is tiled into 16^3 blocks and
    the values of block ``b`` of sample ``n`` come from
    ``numpy.random.default_rng([seed, n, *b])``, so the noise of any crop is
    exactly the corresponding part of the whole-volume noise (a crop and the
    whole volume see the same noisy input), deterministic by seed.
Forward pass
    One forward pass of the *whole* (zero-padded to a multiple of the network's
    total stride) volume per noise sample, as the seed's code does (not the
    sliding window used to predict the lesions); all lesion voxels of a sample
    reuse it. The network must be in ``eval()`` mode (batch norm with running
    statistics), so copies stacked along the batch axis do not interact.
Fast path (:func:`instance_smoothgrad`)
    1. The ``N`` noisy copies are stacked on the batch axis (``sample_batch``
       at a time): one batched forward pass serves all of them, and one
       backward pass of ``sum_n y(x_n)[v']`` gives every sample's own gradient
       for voxel ``v'`` (samples are independent in eval mode). With
       ``voxel_batch > 1`` several voxels go through one backward call
       (``torch.autograd.grad(..., is_grads_batched=True)``; helps on a GPU,
       not on a CPU).
    2. Each lesion is computed on a **crop** of the padded volume that contains
       the lesion's bounding box (grown to whole blocks of the total stride)
       grown by the network's receptive field (:func:`receptive_field`,
       measured structurally per block) and aligned to the total stride, so
       every strided layer samples the same positions as on the whole volume. An output
       voxel depends only on input voxels inside its receptive field, so the
       logits at the lesion voxels, their gradients and therefore the map are
       unchanged (outside the crop the map is exactly 0). The tests compare
       the crop with the whole volume and show that a crop smaller than the
       receptive field changes the map.
Reference (:func:`smoothgrad_reference`)
    The straightforward loop: whole volume, one sample at a time, one forward
    per sample and one ``autograd.grad`` per output voxel, the running signed
    maximum updated voxel by voxel. The fast path equals it to 1e-5
    (``tests/test_saliency.py``, ``bench/saliency_bench.py``).
Sum variant (``method="sum"``)
    The gradient of ``sum_{v' in Omega} y[v']`` (what captum's NoiseTunnel or a
    single backward pass per sample gives) is a *different* map: signed
    contributions of the lesion voxels cancel instead of the strongest one
    being kept. It is offered only as a labelled comparison.

Progress is logged per lesion (:class:`msutils.core.progress.Progress` lines on the
``msutils.progress`` logger, with ``progress=`` a name), never printed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from msutils.core.progress import Progress
from msutils.core.validation import check_choice, check_int

__all__ = [
    "METHODS",
    "NOISE_MODES",
    "NOISE_BLOCK",
    "ReceptiveField",
    "SaliencyMap",
    "NoiseField",
    "network_multiple",
    "receptive_field",
    "pad_to_multiple",
    "instance_smoothgrad",
    "smoothgrad_reference",
]

logger = logging.getLogger(__name__)

#: ``"max"``: Eq. 1 of seed 004 (signed maximum over the lesion voxels); ``"sum"``: gradient of the summed logits.
METHODS: tuple[str, ...] = ("max", "sum")
#: Noise standard deviation: ``sigma * (FLAIR max - min)`` or ``sigma`` itself.
NOISE_MODES: tuple[str, ...] = ("range", "absolute")
#: Edge of the cubic blocks that seed the noise (voxels).
NOISE_BLOCK: int = 16

# Layers whose output at a voxel depends on statistics of the whole input (a crop would change them).
_NONLOCAL = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
             nn.LocalResponseNorm, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d, nn.MultiheadAttention)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------- checks
def _check_eval(net: nn.Module) -> None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"'net' must be a torch.nn.Module; got {type(net).__name__}")
    if any(m.training for m in net.modules()):
        raise ValueError("'net' must be in eval mode (call net.eval()): in training mode batch normalisation "
                         "would mix the noise samples stacked on the batch axis")


def _check_local(net: nn.Module) -> None:
    bad = sorted({type(m).__name__ for m in net.modules() if isinstance(m, _NONLOCAL)})
    if bad:
        raise ValueError(f"'net' contains layers whose output depends on the whole input ({bad}); crop=True "
                         "would change the map: use crop=False")


def network_multiple(net: nn.Module) -> int:
    """Total stride of a network: the product of a MONAI ``UNet``'s ``strides``.

    Parameters
    ----------
    net : torch.nn.Module
        A network with a ``strides`` attribute (MONAI ``UNet``, ``BasicUNet`` has none).

    Returns
    -------
    int
        Input sizes must be multiples of it; crops are aligned to it.
    """
    strides = getattr(net, "strides", None)
    if strides is None:
        raise ValueError(f"cannot read the total stride of {type(net).__name__} (no 'strides' attribute); "
                         "pass 'multiple' explicitly")
    out = 1
    for s in strides:
        out *= int(np.prod(np.atleast_1d(s)))
    return out


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad the spatial axes of ``(C, *spatial)`` at their high end to multiples of ``multiple``."""
    arr = np.asarray(image)
    m = check_int("multiple", multiple, 1)
    pads = [(0, 0)] + [(0, (-s) % m) for s in arr.shape[1:]]
    return np.pad(arr, pads) if any(p[1] for p in pads) else arr


# --------------------------------------------------------------------------- receptive field
@dataclass(frozen=True)
class ReceptiveField:
    """Input voxels an output voxel can depend on, as offsets per spatial axis.

    Attributes
    ----------
    lo, hi : tuple of int
        An output voxel at ``p`` depends only on inputs in ``[p - lo, p + hi]``
        (per axis, maximum over the positions modulo ``multiple``).
    multiple : int
        Total stride the crops are aligned to.
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    multiple: int

    @property
    def size(self) -> tuple[int, ...]:
        """Extent ``lo + hi + 1`` per axis (voxels)."""
        return tuple(a + b + 1 for a, b in zip(self.lo, self.hi))

    def window(self, bbox_lo: Sequence[int], bbox_hi: Sequence[int], shape: Sequence[int],
               margin: int | None = None) -> tuple[slice, ...]:
        """Aligned crop of a volume of ``shape`` covering the field of the voxels in ``[bbox_lo, bbox_hi]``.

        Parameters
        ----------
        bbox_lo, bbox_hi : sequence of int
            Inclusive bounding box of the output voxels.
        shape : sequence of int
            Shape of the (padded) volume; multiples of ``multiple``.
        margin : int, optional
            Extra voxels on each side (default 0).

        Returns
        -------
        tuple of slice
            Start and stop are multiples of ``multiple`` (or the volume's edges).
        """
        m = self.multiple
        extra = 0 if margin is None else check_int("margin", margin, 0)
        out = []
        for a, b, lo, hi, n in zip(bbox_lo, bbox_hi, self.lo, self.hi, shape):
            block_lo = (int(a) // m) * m  # the field is measured per block of m voxels
            block_hi = (int(b) // m) * m + m - 1
            start = max(0, ((block_lo - lo - extra) // m) * m)
            stop = min(int(n), -((-(block_hi + 1 + hi + extra)) // m) * m)
            out.append(slice(start, stop))
        return tuple(out)


def _probe_network(net: nn.Module) -> nn.Module:
    """Copy of ``net`` whose every path carries a positive weight (for the structural receptive field)."""
    probe = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, _CONVS):
                kvol = int(np.prod(m.kernel_size))
                fan = (m.weight.shape[0] if isinstance(m, _TRANSPOSED) else m.weight.shape[1]) * kvol
                m.weight.fill_(1.0 / fan)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, _BNORMS):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            elif isinstance(m, nn.PReLU):
                m.weight.fill_(1.0)
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe


def receptive_field(
    net: nn.Module,
    in_channels: int,
    *,
    spatial_dims: int = 3,
    multiple: int | None = None,
    target_channel: int = 1,
    max_size: int = 512,
) -> ReceptiveField:
    """Measure the structural receptive field of a convolutional network.

    A copy of the network gets positive weights on every path (convolutions
    ``1 / fan-in``, batch norm the identity, zero biases, PReLU slope 1) and a
    constant positive input, so every activation is positive and the
    gradient of the output at a voxel is non-zero exactly at the input voxels
    that have a path to it. The gradient of the sum over one block of
    ``multiple``^d output voxels (every position modulo the total stride) at
    the centre of a probe volume gives the support; the probe grows until the
    support stays clear of its edges.

    Parameters
    ----------
    net : torch.nn.Module
        Convolutional network (MONAI ``UNet``); only local layers are allowed.
    in_channels : int
        Input channels of ``net``.
    spatial_dims : int, default 3
    multiple : int, optional
        Total stride (default :func:`network_multiple`).
    target_channel : int, default 1
        Output channel.
    max_size : int, default 512
        Largest probe edge tried.

    Returns
    -------
    ReceptiveField
    """
    _check_local(net)
    in_channels = check_int("in_channels", in_channels, 1)
    m = network_multiple(net) if multiple is None else check_int("multiple", multiple, 1)
    probe = _probe_network(net)
    size = 4 * m
    while size <= max_size:
        x = torch.ones((1, in_channels) + (size,) * spatial_dims, dtype=torch.float64, requires_grad=True)
        out = probe(x)
        c = (size // 2 // m) * m
        block = (0, target_channel) + (slice(c, c + m),) * spatial_dims
        (grad,) = torch.autograd.grad(out[block].sum(), x)
        support = grad[0].abs().sum(0) > 0
        idx = [np.flatnonzero(support.any(dim=tuple(d for d in range(spatial_dims) if d != ax)).numpy())
               for ax in range(spatial_dims)]
        if all(ix[0] > 0 and ix[-1] < size - 1 for ix in idx):
            lo = tuple(int(c - ix[0]) for ix in idx)
            hi = tuple(int(ix[-1] - (c + m - 1)) for ix in idx)
            rf = ReceptiveField(lo=lo, hi=hi, multiple=m)
            logger.debug("receptive field of %s: lo %s hi %s (multiple %d)", type(net).__name__, lo, hi, m)
            return rf
        size *= 2
    raise ValueError(f"the receptive field of {type(net).__name__} exceeds a probe of {max_size} voxels per axis")


# --------------------------------------------------------------------------- noise
class NoiseField:
    """Block-seeded Gaussian noise over a padded volume (see the module docstring).

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the (padded) volume.
    std : sequence of float
        Standard deviation per input channel.
    seed : int
        Seed; block ``b`` of sample ``n`` uses ``default_rng([seed, n, *b])``.
    block : int, default :data:`NOISE_BLOCK`
    """

    def __init__(self, shape: Sequence[int], std: Sequence[float], seed: int, *, block: int = NOISE_BLOCK) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.std = np.asarray(std, dtype=np.float32)
        self.seed = check_int("seed", seed, 0)
        self.block = check_int("block", block, 1)

    def crop(self, sample: int, window: Sequence[slice]) -> np.ndarray:
        """Noise of one sample on ``window``: array ``(C, *window shape)``, float32."""
        b = self.block
        starts = [w.start for w in window]
        stops = [w.stop for w in window]
        b_lo = [s // b for s in starts]
        b_hi = [-(-e // b) for e in stops]
        big = np.empty((len(self.std),) + tuple((h - lo_) * b for lo_, h in zip(b_lo, b_hi)), dtype=np.float32)
        for idx in np.ndindex(*[h - lo_ for lo_, h in zip(b_lo, b_hi)]):
            key = [self.seed, int(sample)] + [int(lo_ + i) for lo_, i in zip(b_lo, idx)]
            vals = np.random.default_rng(key).standard_normal((len(self.std),) + (b,) * len(idx), dtype=np.float32)
            big[(slice(None),) + tuple(slice(i * b, (i + 1) * b) for i in idx)] = vals
        local = tuple(slice(s - lo_ * b, e - lo_ * b) for s, e, lo_ in zip(starts, stops, b_lo))
        return big[(slice(None),) + local] * self.std.reshape((-1,) + (1,) * len(window))


def _noise_std(image: np.ndarray, sigma: float, noise: str, input_channel: int) -> np.ndarray:
    if noise == "range":
        ref = image[input_channel]
        scale = float(ref.max() - ref.min())
    else:
        scale = 1.0
    return np.full(image.shape[0], sigma * scale, dtype=np.float32)


# --------------------------------------------------------------------------- maps
@dataclass
class SaliencyMap:
    """One lesion's saliency map, stored on the window where it can be non-zero.

    Attributes
    ----------
    label : int
        Lesion id in the instance map.
    values : ndarray, float32
        Map on ``window`` (zero outside it).
    window : tuple of slice
        Window in the coordinates of the (unpadded) input volume.
    n_voxels : int
        ``|Omega|``.
    n_samples : int
    method : str
        ``"max"`` (Eq. 1) or ``"sum"``.
    seconds : float
        Compute time of this lesion.
    """

    label: int
    values: np.ndarray = field(repr=False)
    window: tuple[slice, ...]
    n_voxels: int
    n_samples: int
    method: str
    seconds: float = 0.0

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """The map on a whole volume of ``shape`` (zeros outside the window)."""
        out = np.zeros(tuple(shape), dtype=np.float32)
        out[self.window] = self.values
        return out


def _prepare(image: Any, labels: Any, lesion_ids: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim < 2 or not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"'image' must be a float array (C, *spatial); got dtype {img.dtype} shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("'image' has non-finite values")
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"'labels' must be an integer instance map; got dtype {lab.dtype}")
    if lab.shape != img.shape[1:]:
        raise ValueError(f"'labels' must have the image's spatial shape {img.shape[1:]}; got {lab.shape}")
    present = [int(i) for i in np.unique(lab) if i > 0]
    if lesion_ids is None:
        ids = present
    else:
        ids = [int(i) for i in lesion_ids]
        missing = sorted(set(ids) - set(present))
        if missing:
            raise ValueError(f"'lesion_ids' {missing[:10]} are not labels of 'labels' (present: {present[:10]}...)")
    return img.astype(np.float32, copy=False), lab, ids


def _check_common(n_samples: int, sigma: float, noise: str, method: str, input_channel: int, target_channel: int,
                  n_channels: int, seed: int) -> None:
    check_int("n_samples", n_samples, 1)
    check_int("seed", seed, 0)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"'sigma' must be a finite number >= 0; got {sigma!r}")
    check_choice("noise", noise, NOISE_MODES)
    check_choice("method", method, METHODS)
    if not 0 <= check_int("input_channel", input_channel, 0) < n_channels:
        raise ValueError(f"'input_channel' must be in [0, {n_channels - 1}]; got {input_channel}")
    check_int("target_channel", target_channel, 0)


def _split_input(x: torch.Tensor, input_channel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The differentiated channel as a leaf, and the full input built from it."""
    leaf = x[:, input_channel:input_channel + 1].detach().clone().requires_grad_(True)
    parts = [x[:, :input_channel].detach(), leaf, x[:, input_channel + 1:].detach()]
    return leaf, torch.cat(parts, dim=1)


def _signed_max_update(best: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.where(grad.abs() > best.abs(), grad, best)


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def instance_smoothgrad(
    net: nn.Module,
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    lesion_ids: Sequence[int] | None = None,
    n_samples: int = 50,
    sigma: float = 0.05,
    noise: str = "range",
    seed: int = 0,
    method: str = "max",
    input_channel: int = 0,
    target_channel: int = 1,
    crop: bool = True,
    multiple: int | None = None,
    receptive: ReceptiveField | None = None,
    sample_batch: int = 10,
    voxel_batch: int = 1,
    progress: str | None = None,
) -> dict[int, SaliencyMap]:
    """Instance-level SmoothGrad maps of every lesion of an instance map (fast, exact).

    Parameters
    ----------
    net : torch.nn.Module
        Segmentation network in eval mode; input ``(B, C, *spatial)``, output
        ``(B, K, *spatial)`` logits. Its device is used.
    image : ndarray or Tensor, shape (C, *spatial)
        The (z-scored) network input of one scan, unpadded.
    labels : ndarray of int, shape spatial
        Instance map: 0 background, ``1..n`` lesions (e.g. predicted lesions).
    lesion_ids : sequence of int, optional
        Lesions to map (default: all labels present).
    n_samples : int, default 50
        ``N`` noisy copies.
    sigma : float, default 0.05
        Noise level (see ``noise``).
    noise : {"range", "absolute"}, default "range"
        ``std = sigma * (max - min)`` of the FLAIR channel, or ``sigma``.
    seed : int
        Noise seed (same seed, same maps).
    method : {"max", "sum"}, default "max"
        Eq. 1, or the summed-logit comparison.
    input_channel : int, default 0
        Channel differentiated against (FLAIR).
    target_channel : int, default 1
        Output channel whose logit is differentiated (the lesion class).
    crop : bool, default True
        Compute each lesion on its receptive-field crop (exact; see the module docstring).
    multiple : int, optional
        Total stride of ``net`` (default :func:`network_multiple`).
    receptive : ReceptiveField, optional
        Precomputed :func:`receptive_field` (measured here otherwise).
    sample_batch : int, default 10
        Noisy copies per forward pass.
    voxel_batch : int, default 1
        Lesion voxels per backward call (``is_grads_batched``) for ``method="max"``.
    progress : str, optional
        Name of the progress lines (one per lesion, ``msutils.progress`` logger);
        None logs nothing but debug records.

    Returns
    -------
    dict of int to SaliencyMap
        One map per lesion id (input coordinates; windows clipped to the unpadded volume).
    """
    _check_eval(net)
    img, lab, ids = _prepare(image, labels, lesion_ids)
    _check_common(n_samples, sigma, noise, method, input_channel, target_channel, img.shape[0], seed)
    sample_batch = check_int("sample_batch", sample_batch, 1)
    voxel_batch = check_int("voxel_batch", voxel_batch, 1)
    m = network_multiple(net) if multiple is None else check_int("multiple", multiple, 1)
    if crop:
        _check_local(net)
        if receptive is None:
            receptive = receptive_field(net, img.shape[0], spatial_dims=img.ndim - 1, multiple=m,
                                        target_channel=target_channel)
        elif receptive.multiple != m:
            raise ValueError(f"'receptive' was measured for multiple {receptive.multiple}; the network's is {m}")
    padded = pad_to_multiple(img, m)
    pshape = padded.shape[1:]
    noise_field = NoiseField(pshape, _noise_std(img, sigma, noise, input_channel), seed)
    device = next(net.parameters()).device
    whole = tuple(slice(0, s) for s in pshape)
    out: dict[int, SaliencyMap] = {}
    from scipy import ndimage

    objects = ndimage.find_objects(lab)
    bar = Progress(f"saliency {progress}", total=len(ids), unit="lesions", interval=0.0,
                   enabled=progress is not None)
    for i, lid in enumerate(ids, 1):
        t0 = time.perf_counter()
        sl = objects[lid - 1]
        bbox_lo = [s.start for s in sl]
        bbox_hi = [s.stop - 1 for s in sl]
        win = receptive.window(bbox_lo, bbox_hi, pshape) if crop else whole
        offset = np.array([w.start for w in win])
        voxels = np.argwhere(lab[sl] == lid) + np.array(bbox_lo) - offset  # raster order, crop coordinates
        base = padded[(slice(None),) + win]
        total = torch.zeros(tuple(w.stop - w.start for w in win), dtype=torch.float32, device=device)
        for chunk in _chunks(n_samples, sample_batch):
            noisy = np.stack([base + noise_field.crop(n, win) for n in chunk])
            leaf, x = _split_input(torch.from_numpy(noisy).to(device), input_channel)
            y = net(x)[:, target_channel]  # (B, *window) pre-softmax lesion logits
            if method == "sum":
                idx = (slice(None),) + tuple(torch.from_numpy(voxels[:, d]).to(device) for d in range(voxels.shape[1]))
                (g,) = torch.autograd.grad(y[idx].sum(), leaf)
                total += g[:, 0].sum(0)
                continue
            best = torch.zeros_like(leaf[:, 0])
            for vchunk in _chunks(len(voxels), voxel_batch):
                if len(vchunk) == 1:
                    v = tuple(int(c) for c in voxels[vchunk[0]])
                    (g,) = torch.autograd.grad(y[(slice(None),) + v].sum(), leaf, retain_graph=True)
                    best = _signed_max_update(best, g[:, 0])
                else:
                    go = torch.zeros((len(vchunk),) + tuple(y.shape), dtype=y.dtype, device=device)
                    for j, k in enumerate(vchunk):
                        go[(j, slice(None)) + tuple(int(c) for c in voxels[k])] = 1.0
                    (g,) = torch.autograd.grad(y, leaf, go, retain_graph=True, is_grads_batched=True)
                    g = g[:, :, 0]  # (V, B, *window)
                    pick = g.abs().argmax(0, keepdim=True)  # first maximum: the earliest voxel wins ties
                    best = _signed_max_update(best, torch.gather(g, 0, pick)[0])
            total += best.sum(0)
            del y, leaf, x
        mean = (total / n_samples).cpu().numpy()
        clip = tuple(slice(w.start, min(w.stop, s)) for w, s in zip(win, img.shape[1:]))
        values = mean[tuple(slice(0, c.stop - c.start) for c in clip)]
        out[lid] = SaliencyMap(label=lid, values=np.ascontiguousarray(values), window=clip, n_voxels=len(voxels),
                               n_samples=n_samples, method=method, seconds=time.perf_counter() - t0)
        logger.debug("saliency lesion %d/%d (id %d, %d voxels, window %s): %.2f s", i, len(ids), lid, len(voxels),
                     "x".join(str(w.stop - w.start) for w in win), out[lid].seconds)
        bar.update()
    return out


def smoothgrad_reference(
    net: nn.Module,
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    lesion_ids: Sequence[int] | None = None,
    n_samples: int = 50,
    sigma: float = 0.05,
    noise: str = "range",
    seed: int = 0,
    method: str = "max",
    input_channel: int = 0,
    target_channel: int = 1,
    multiple: int | None = None,
) -> dict[int, np.ndarray]:
    """The straightforward loop: whole volume, one forward per sample, one backward per output voxel.

    Same noise and parameters as :func:`instance_smoothgrad`; slow, for tests
    and ``bench/saliency_bench.py``.

    Returns
    -------
    dict of int to ndarray
        Full-volume map (unpadded shape) per lesion id.
    """
    _check_eval(net)
    img, lab, ids = _prepare(image, labels, lesion_ids)
    _check_common(n_samples, sigma, noise, method, input_channel, target_channel, img.shape[0], seed)
    m = network_multiple(net) if multiple is None else check_int("multiple", multiple, 1)
    padded = pad_to_multiple(img, m)
    pshape = padded.shape[1:]
    noise_field = NoiseField(pshape, _noise_std(img, sigma, noise, input_channel), seed)
    whole = tuple(slice(0, s) for s in pshape)
    device = next(net.parameters()).device
    voxels = {lid: [tuple(int(c) for c in v) for v in np.argwhere(lab == lid)] for lid in ids}
    sums = {lid: torch.zeros(pshape, dtype=torch.float32, device=device) for lid in ids}
    for n in range(n_samples):
        noisy = torch.from_numpy((padded + noise_field.crop(n, whole))[None]).to(device)
        noisy.requires_grad_(True)
        y = net(noisy)
        for lid in ids:
            if method == "sum":
                (g,) = torch.autograd.grad(sum(y[(0, target_channel) + v] for v in voxels[lid]), noisy,
                                           retain_graph=True)
                sums[lid] += g[0, input_channel]
                continue
            best = torch.zeros(pshape, dtype=torch.float32, device=device)
            for v in voxels[lid]:
                (g,) = torch.autograd.grad(y[(0, target_channel) + v], noisy, retain_graph=True)
                best = torch.where(g[0, input_channel].abs() > best.abs(), g[0, input_channel], best)
            sums[lid] += best
    crop = tuple(slice(0, s) for s in img.shape[1:])
    return {lid: (sums[lid] / n_samples).cpu().numpy()[crop] for lid in ids}
