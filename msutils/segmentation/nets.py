"""The two 2D segmentation networks of seed 002, in plain torch (no torchvision / timm).

ResNeXt-50 (32 x 4d) U-Net (:class:`ResNeXtUNet`)
    As the seed describes it (and as in the ResNeXt-UNet for brain tumours it
    cites): a ResNeXt-50 encoder, four up-sampling decoder blocks, skip
    connections, and a head of a 3 x 3 convolution 256 -> 128 channels and a
    3 x 3 convolution to the classes; ReLU after every convolution except the
    last one (also after the transposed convolution of each decoder block).

    - Encoder (:class:`ResNeXtEncoder`): the ResNeXt-50 stem (7 x 7 convolution,
      stride 2, 64 channels, batch norm, ReLU) and the four stages of
      bottleneck blocks ``(3, 4, 6, 3)`` with grouped 3 x 3 convolutions
      (cardinality 32, base width 4: 128 / 256 / 512 / 1024 grouped channels,
      outputs 256 / 512 / 1024 / 2048). The stem's max-pooling is not used, so
      the stages run at 1/2, 1/4, 1/8 and 1/16 of the input size and four
      decoder blocks bring the features back to full size. Module and
      parameter names follow torchvision's ``resnext50_32x4d``, so its
      ImageNet weights load from a **local** file (:func:`load_encoder_weights`);
      none can be downloaded here, and the default is training from scratch.
    - Decoder block (:class:`DecoderBlock`): 1 x 1 convolution to a quarter of
      the channels, 4 x 4 transposed convolution with stride 2, 1 x 1
      convolution to the output channels, each followed by ReLU. The skips are
      added: ``d4 = dec4(e4) + e3``, ``d3 = dec3(d4) + e2``,
      ``d2 = dec2(d3) + e1``, ``d1 = dec1(d2)``.
    - The input size must be a multiple of 16.

Attention-augmented U-Net (:class:`FCDenseNetSA`)
    A Tiramisu-style fully convolutional DenseNet (Jégou et al. 2017): a 3 x 3
    first convolution, five dense blocks each followed by a transition down
    (batch norm, ReLU, 1 x 1 convolution, dropout, 2 x 2 max pooling), a dense
    bottleneck, five transitions up (3 x 3 transposed convolution, stride 2,
    centre-cropped to the skip and concatenated with it) each followed by a
    dense block (the up blocks pass on only their new feature maps, the last
    one its input too), and a 1 x 1 convolution to the classes. A dense layer
    is batch norm, ReLU, 3 x 3 convolution (``growth_rate`` maps) and dropout
    0.2. A **Squeeze-and-Attention** block (Zhong et al. 2020,
    :class:`SqueezeAttention`) follows every dense block of the encoder and
    of the decoder; the ConvLSTM bottleneck of the original attention U-Net
    (Rondinella et al. 2023) is left out, as in the seed. The default sizes are
    those of that model's public code (FC-DenseNet67 layout: five layers per
    block, bottleneck of five, growth rate 12, 48 first maps); its code omits
    the attention block after the last up-sampling dense block, which the
    seed's description includes (``sa_after_last_block``).

Both networks return raw logits (``out_channels`` maps, default 1 for a
binary lesion mask: apply a sigmoid). Widths and depths are parameters so the
``quick`` / ``smoke`` profiles can shrink them (:func:`build_net`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from msutils.core.validation import check_int

__all__ = [
    "NETS",
    "PAPER_CONFIGS",
    "ResNeXtBottleneck",
    "ResNeXtEncoder",
    "DecoderBlock",
    "ResNeXtUNet",
    "SqueezeAttention",
    "DenseBlock",
    "FCDenseNetSA",
    "build_net",
    "count_parameters",
    "load_encoder_weights",
]

logger = logging.getLogger(__name__)

#: Network names accepted by :func:`build_net`.
NETS: tuple[str, ...] = ("resnext_unet", "attention_unet")
#: The seed's configurations (keyword arguments of the two classes besides the channels).
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "resnext_unet": {"stem_channels": 64, "layers": (3, 4, 6, 3), "cardinality": 32, "base_width": 4},
    "attention_unet": {"down_blocks": (5, 5, 5, 5, 5), "up_blocks": (5, 5, 5, 5, 5), "bottleneck_layers": 5,
                       "growth_rate": 12, "first_channels": 48, "dropout": 0.2, "sa_after_last_block": True},
}


def _int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"'{name}' must be a sequence of positive integers; got {value!r}") from None
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"'{name}' must be a sequence of positive integers; got {value!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"'{name}' must have {length} entries; got {len(out)} ({list(out)})")
    return out


# --------------------------------------------------------------------------------------
# ResNeXt-50 U-Net
# --------------------------------------------------------------------------------------
class ResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (stride) -> 1x1 (x4), batch norm, residual, ReLU.

    Parameters
    ----------
    in_channels : int
    planes : int
        Output channels are ``4 * planes``.
    stride : int
        Stride of the grouped 3 x 3 convolution.
    cardinality : int
        Number of groups.
    base_width : int
        Channels per group at ``planes = 64``: the grouped width is
        ``max(1, planes * base_width // 64) * cardinality``.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, cardinality: int = 32,
                 base_width: int = 4) -> None:
        super().__init__()
        width = max(1, planes * base_width // 64) * cardinality
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNeXtEncoder(nn.Module):
    """ResNeXt encoder (torchvision parameter names): stem + four stages, no max pooling.

    Parameters
    ----------
    in_channels : int
        Input channels (1: FLAIR; 3: FLAIR + CR + RE).
    stem_channels : int
        Stem output channels and ``planes`` of the first stage (ResNeXt-50: 64).
    layers : sequence of 4 int
        Bottleneck blocks per stage (ResNeXt-50: 3, 4, 6, 3).
    cardinality, base_width : int
        Grouped-convolution settings (32 x 4d).

    Attributes
    ----------
    channels : tuple of int
        Output channels of the four stages (``4 * stem_channels * 2^i``).
    """

    def __init__(self, in_channels: int = 3, stem_channels: int = 64, layers: Sequence[int] = (3, 4, 6, 3),
                 cardinality: int = 32, base_width: int = 4) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        stem_channels = check_int("stem_channels", stem_channels, 1)
        layers = _int_tuple("layers", layers, 4)
        cardinality = check_int("cardinality", cardinality, 1)
        base_width = check_int("base_width", base_width, 1)
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        channels = []
        current = stem_channels
        for i, n_blocks in enumerate(layers):
            planes = stem_channels * 2**i
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(ResNeXtBottleneck(current, planes, stride, cardinality, base_width))
                current = planes * ResNeXtBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels.append(current)
        self.channels: tuple[int, ...] = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the four stage outputs (strides 2, 4, 8, 16)."""
        x = self.relu(self.bn1(self.conv1(x)))
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats


class DecoderBlock(nn.Module):
    """1x1 conv (in/4) -> 4x4 transposed conv, stride 2 -> 1x1 conv (out), ReLU after each."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(1, in_channels // 4)
        self.conv1 = nn.Conv2d(in_channels, mid, 1)
        self.deconv = nn.ConvTranspose2d(mid, mid, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(mid, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.deconv(x))
        return self.relu(self.conv2(x))


class ResNeXtUNet(nn.Module):
    """ResNeXt-50 (32 x 4d) U-Net of seed 002 (see the module docstring).

    Parameters
    ----------
    in_channels : int
        1 (FLAIR) or 3 (FLAIR + CR + RE), or any other count.
    out_channels : int
        Output logit maps (1: binary lesion mask).
    stem_channels, layers, cardinality, base_width
        Encoder size (:class:`ResNeXtEncoder`); the paper: 64, (3, 4, 6, 3), 32, 4.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, *, stem_channels: int = 64,
                 layers: Sequence[int] = (3, 4, 6, 3), cardinality: int = 32, base_width: int = 4) -> None:
        super().__init__()
        out_channels = check_int("out_channels", out_channels, 1)
        self.encoder = ResNeXtEncoder(in_channels, stem_channels, layers, cardinality, base_width)
        c1, c2, c3, c4 = self.encoder.channels
        self.decoder4 = DecoderBlock(c4, c3)
        self.decoder3 = DecoderBlock(c3, c2)
        self.decoder2 = DecoderBlock(c2, c1)
        self.decoder1 = DecoderBlock(c1, c1)
        self.head_conv = nn.Conv2d(c1, max(1, c1 // 2), 3, padding=1)
        self.head_relu = nn.ReLU(inplace=True)
        self.out_conv = nn.Conv2d(max(1, c1 // 2), out_channels, 3, padding=1)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"ResNeXtUNet needs an input size that is a multiple of 16; got {tuple(x.shape[-2:])}")
        e1, e2, e3, e4 = self.encoder(x)
        d4 = self.decoder4(e4) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        d1 = self.decoder1(d2)
        return self.out_conv(self.head_relu(self.head_conv(d1)))


def load_encoder_weights(net: ResNeXtUNet, path: str | os.PathLike) -> list[str]:
    """Load ResNeXt-50 weights (torchvision ``resnext50_32x4d`` format) from a local file into the encoder.

    Parameters
    ----------
    net : ResNeXtUNet
    path : str or path-like
        A ``torch.save``-d state dict (or a dict holding one under
        ``"state_dict"``). Keys of the classifier (``fc.*``) are ignored. When
        the file's first convolution has 3 input channels (ImageNet RGB) and the
        network another number, its kernel is adapted: summed over RGB for 1
        channel, else the RGB kernels are cycled and scaled by ``3 / in_channels``.

    Returns
    -------
    list of str
        The ignored keys.
    """
    if not isinstance(net, ResNeXtUNet):
        raise TypeError(f"'net' must be a ResNeXtUNet; got {type(net).__name__}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"encoder weights {file} do not exist (no weights can be downloaded here: give a "
                                "local file, or leave weights=None to train from scratch)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"encoder weights {file} do not hold a state dict; got {type(state).__name__}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith("fc."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    n_in = net.encoder.in_channels
    if isinstance(w, torch.Tensor) and w.ndim == 4 and w.shape[1] != n_in:
        if w.shape[1] != 3:
            raise ValueError(f"encoder weights {file}: conv1 has {w.shape[1]} input channels, the network "
                             f"{n_in}; only 3-channel (RGB) kernels are adapted")
        if n_in == 1:
            state["conv1.weight"] = w.sum(dim=1, keepdim=True)
        else:
            idx = torch.arange(n_in) % 3
            state["conv1.weight"] = w[:, idx] * (3.0 / n_in)
    own = net.encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(f"encoder weights {file} do not match the encoder: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, other shapes {shapes[:8]}")
    net.encoder.load_state_dict(state)
    logger.info("loaded encoder weights from %s (%d tensors)", file, len(state))
    return ignored


# --------------------------------------------------------------------------------------
# FC-DenseNet with Squeeze-and-Attention blocks
# --------------------------------------------------------------------------------------
class _ConvBNReLU2(nn.Sequential):
    """Two (3x3 conv, batch norm, ReLU) layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class SqueezeAttention(nn.Module):
    """Squeeze-and-Attention block (Zhong et al. 2020).

    ``out = up(att) * res + up(att)`` with ``res = conv(x)`` and
    ``att = conv(avgpool_2(x))`` up-sampled (nearest) back to the size of ``x``;
    each ``conv`` is two 3 x 3 convolution + batch norm + ReLU layers. The
    attention branch re-weights the residual features with a coarser, pooled
    view of the same maps (a spatial, not only channel-wise, attention).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        self.conv = _ConvBNReLU2(channels, channels)
        self.conv_att = _ConvBNReLU2(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.conv(x)
        att = self.conv_att(F.avg_pool2d(x, 2, ceil_mode=True))
        att = F.interpolate(att, size=x.shape[-2:], mode="nearest")
        return att * res + att


class _DenseLayer(nn.Sequential):
    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, growth_rate, 3, padding=1), nn.Dropout2d(dropout))


class DenseBlock(nn.Module):
    """Tiramisu dense block: each layer sees the concatenation of the input and every earlier layer.

    Parameters
    ----------
    in_channels, growth_rate, n_layers : int
    dropout : float
    new_only : bool
        Return only the ``n_layers * growth_rate`` new maps (up-sampling path)
        instead of the input concatenated with them.
    """

    def __init__(self, in_channels: int, growth_rate: int, n_layers: int, dropout: float = 0.2,
                 new_only: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_DenseLayer(in_channels + i * growth_rate, growth_rate, dropout)
                                    for i in range(n_layers))
        self.new_only = new_only
        self.out_channels = n_layers * growth_rate + (0 if new_only else in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], 1)
            new.append(out)
        return torch.cat(new, 1) if self.new_only else x


class _TransitionDown(nn.Sequential):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1),
                         nn.Dropout2d(dropout), nn.MaxPool2d(2))


class _TransitionUp(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        h, w = skip.shape[-2:]
        top = (out.shape[-2] - h) // 2
        left = (out.shape[-1] - w) // 2
        return torch.cat([out[..., top:top + h, left:left + w], skip], 1)


class FCDenseNetSA(nn.Module):
    """Tiramisu FC-DenseNet with Squeeze-and-Attention blocks, no LSTM (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
    down_blocks, up_blocks : sequence of int
        Dense layers per block, one entry per stage (same length; the paper: 5 x 5).
    bottleneck_layers : int
    growth_rate : int
    first_channels : int
        Maps of the first 3 x 3 convolution.
    dropout : float
        Dropout of the dense layers and transitions down (0.2).
    use_sa : bool
        Squeeze-and-Attention blocks after the dense blocks (False: plain FC-DenseNet).
    sa_after_last_block : bool
        Also after the last up-sampling dense block (the seed: every block).

    Notes
    -----
    The input size must be a multiple of ``2 ** len(down_blocks)`` (32 for five stages).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, *, down_blocks: Sequence[int] = (5, 5, 5, 5, 5),
                 up_blocks: Sequence[int] = (5, 5, 5, 5, 5), bottleneck_layers: int = 5, growth_rate: int = 12,
                 first_channels: int = 48, dropout: float = 0.2, use_sa: bool = True,
                 sa_after_last_block: bool = True) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, 1)
        out_channels = check_int("out_channels", out_channels, 1)
        down_blocks = _int_tuple("down_blocks", down_blocks)
        up_blocks = _int_tuple("up_blocks", up_blocks, len(down_blocks))
        bottleneck_layers = check_int("bottleneck_layers", bottleneck_layers, 1)
        growth_rate = check_int("growth_rate", growth_rate, 1)
        first_channels = check_int("first_channels", first_channels, 1)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1); got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_stages = len(down_blocks)
        self.first_conv = nn.Conv2d(in_channels, first_channels, 3, padding=1)
        channels = first_channels
        skips = []
        self.down = nn.ModuleList()
        self.down_sa = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        for n in down_blocks:
            block = DenseBlock(channels, growth_rate, n, dropout)
            channels = block.out_channels
            self.down.append(block)
            self.down_sa.append(SqueezeAttention(channels) if use_sa else nn.Identity())
            skips.append(channels)
            self.trans_down.append(_TransitionDown(channels, dropout))
        self.bottleneck = DenseBlock(channels, growth_rate, bottleneck_layers, dropout, new_only=True)
        prev = self.bottleneck.out_channels
        self.trans_up = nn.ModuleList()
        self.up = nn.ModuleList()
        self.up_sa = nn.ModuleList()
        for i, n in enumerate(up_blocks):
            last = i == len(up_blocks) - 1
            self.trans_up.append(_TransitionUp(prev))
            block = DenseBlock(prev + skips[-1 - i], growth_rate, n, dropout, new_only=not last)
            self.up.append(block)
            prev = block.out_channels
            self.up_sa.append(SqueezeAttention(prev) if use_sa and (not last or sa_after_last_block) else nn.Identity())
        self.final_conv = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.n_stages
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"FCDenseNetSA with {self.n_stages} stages needs an input size that is a multiple of "
                             f"{m}; got {tuple(x.shape[-2:])}")
        out = self.first_conv(x)
        skips = []
        for block, sa, down in zip(self.down, self.down_sa, self.trans_down):
            out = sa(block(out))
            skips.append(out)
            out = down(out)
        out = self.bottleneck(out)
        for up, block, sa in zip(self.trans_up, self.up, self.up_sa):
            out = sa(block(up(out, skips.pop())))
        return self.final_conv(out)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def build_net(name: str, in_channels: int, out_channels: int = 1, *, weights: str | os.PathLike | None = None,
              **size: Any) -> nn.Module:
    """Build one of the two networks.

    Parameters
    ----------
    name : {"resnext_unet", "attention_unet"}
    in_channels, out_channels : int
    weights : str or path-like, optional
        ``resnext_unet`` only: local ResNeXt-50 weights for the encoder
        (:func:`load_encoder_weights`); None trains from scratch.
    **size
        Keyword arguments of :class:`ResNeXtUNet` / :class:`FCDenseNetSA`
        overriding :data:`PAPER_CONFIGS` (e.g. ``stem_channels=16``).

    Returns
    -------
    torch.nn.Module
    """
    if name not in NETS:
        raise ValueError(f"'name' must be one of {list(NETS)}; got {name!r}")
    unknown = sorted(set(size) - set(PAPER_CONFIGS[name]))
    if unknown:
        raise ValueError(f"unknown size parameters {unknown} for {name!r}; choose from {sorted(PAPER_CONFIGS[name])}")
    kwargs = {**PAPER_CONFIGS[name], **size}
    if name == "resnext_unet":
        net: nn.Module = ResNeXtUNet(in_channels, out_channels, **kwargs)
        if weights is not None:
            load_encoder_weights(net, weights)  # type: ignore[arg-type]
        return net
    if weights is not None:
        raise ValueError("'weights' (a pretrained encoder) only applies to 'resnext_unet'")
    return FCDenseNetSA(in_channels, out_channels, **kwargs)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``net``."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only))
