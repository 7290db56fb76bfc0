"""Tests for msutils.segmentation.nets (seed 002's ResNeXt-50 U-Net and FC-DenseNet with Squeeze-and-Attention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msutils.segmentation import nets as N
from msutils.segmentation.training import paper_config, train_net

TINY_RESNEXT = dict(stem_channels=8, layers=(1, 1, 1, 1), cardinality=4)
TINY_ATTENTION = dict(down_blocks=(1,) * 5, up_blocks=(1,) * 5, bottleneck_layers=1, growth_rate=4, first_channels=8)


# --------------------------------------------------------------------------------------
# independent parameter counts (closed forms from the architecture description)
# --------------------------------------------------------------------------------------
def _conv(cin, cout, k, bias=True, groups=1):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def _bn(c):
    return 2 * c


def _resnext_unet_count(in_ch, out_ch, stem=64, layers=(3, 4, 6, 3), card=32, bw=4):
    total = _conv(in_ch, stem, 7, bias=False) + _bn(stem)
    cur = stem
    outs = []
    for i, n in enumerate(layers):
        planes = stem * 2**i
        width = max(1, planes * bw // 64) * card
        for b in range(n):
            out = 4 * planes
            total += _conv(cur, width, 1, False) + _bn(width) + _conv(width, width, 3, False, card) + _bn(width)
            total += _conv(width, out, 1, False) + _bn(out)
            if b == 0:  # projection shortcut (channels or stride change)
                total += _conv(cur, out, 1, False) + _bn(out)
            cur = out
        outs.append(cur)

    def dec(cin, cout):
        mid = cin // 4
        return _conv(cin, mid, 1) + (mid * mid * 16 + mid) + _conv(mid, cout, 1)

    c1, c2, c3, c4 = outs
    total += dec(c4, c3) + dec(c3, c2) + dec(c2, c1) + dec(c1, c1)
    total += _conv(c1, c1 // 2, 3) + _conv(c1 // 2, out_ch, 3)
    return total


def _sa(c):
    return 2 * 2 * (_conv(c, c, 3) + _bn(c))


def _dense_block(cin, k, n):
    return sum(_bn(cin + i * k) + _conv(cin + i * k, k, 3) for i in range(n))


def _fcdensenet_count(in_ch, out_ch, down=(5,) * 5, up=(5,) * 5, bott=5, k=12, first=48, sa_last=True):
    total = _conv(in_ch, first, 3)
    c = first
    skips = []
    for n in down:
        total += _dense_block(c, k, n)
        c += n * k
        total += _sa(c) + _bn(c) + _conv(c, c, 1)  # attention, transition down
        skips.append(c)
    total += _dense_block(c, k, bott)
    prev = bott * k
    for i, n in enumerate(up):
        last = i == len(up) - 1
        total += prev * prev * 9 + prev  # transposed 3x3 conv
        cin = prev + skips[-1 - i]
        total += _dense_block(cin, k, n)
        prev = n * k + (cin if last else 0)
        if not last or sa_last:
            total += _sa(prev)
    return total + _conv(prev, out_ch, 1)


def test_resnext50_encoder_matches_published_count():
    # torchvision's resnext50_32x4d has 25,028,904 parameters, 2,049,000 of them in the 1000-class fc layer
    enc = N.ResNeXtEncoder(in_channels=3)
    assert N.count_parameters(enc) == 25_028_904 - 2_049_000
    assert enc.channels == (256, 512, 1024, 2048)


@pytest.mark.parametrize("in_ch", [1, 3])
def test_paper_configuration_parameter_counts(in_ch):
    u = N.build_net("resnext_unet", in_ch)
    assert N.count_parameters(u) == _resnext_unet_count(in_ch, 1)
    a = N.build_net("attention_unet", in_ch)
    assert N.count_parameters(a) == _fcdensenet_count(in_ch, 1)
    plain = N.FCDenseNetSA(in_ch, sa_after_last_block=False)
    assert N.count_parameters(plain) == _fcdensenet_count(in_ch, 1, sa_last=False)
    # the two arms differ only in the first convolution
    if in_ch == 3:
        assert N.count_parameters(u) - N.count_parameters(N.build_net("resnext_unet", 1)) == 2 * 64 * 49
        assert N.count_parameters(a) - N.count_parameters(N.build_net("attention_unet", 1)) == 2 * 48 * 9


def test_scaled_configurations_parameter_counts():
    u = N.build_net("resnext_unet", 3, **TINY_RESNEXT)
    assert N.count_parameters(u) == _resnext_unet_count(3, 1, stem=8, layers=(1, 1, 1, 1), card=4)
    a = N.build_net("attention_unet", 2, **TINY_ATTENTION)
    assert N.count_parameters(a) == _fcdensenet_count(2, 1, (1,) * 5, (1,) * 5, 1, 4, 8)


# --------------------------------------------------------------------------------------
# shapes and input checks
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_ch", [1, 2, 3])
def test_output_shapes(in_ch):
    u = N.build_net("resnext_unet", in_ch, **TINY_RESNEXT).eval()
    a = N.build_net("attention_unet", in_ch, **TINY_ATTENTION).eval()
    with torch.no_grad():
        for size in (32, 64):
            x = torch.rand(2, in_ch, size, size)
            assert u(x).shape == (2, 1, size, size)
            assert a(x).shape == (2, 1, size, size)
        assert u(torch.rand(1, in_ch, 48, 80)).shape == (1, 1, 48, 80)
        assert a(torch.rand(1, in_ch, 96, 64)).shape == (1, 1, 96, 64)


def test_paper_nets_run_at_small_size():
    with torch.no_grad():
        assert N.build_net("resnext_unet", 3).eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
        assert N.build_net("attention_unet", 1).eval()(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_input_size_errors():
    u = N.build_net("resnext_unet", 1, **TINY_RESNEXT)
    with pytest.raises(ValueError, match=r"^ResNeXtUNet needs an input size that is a multiple of 16; got \(40, 32\)$"):
        u(torch.rand(1, 1, 40, 32))
    a = N.build_net("attention_unet", 1, **TINY_ATTENTION)
    with pytest.raises(ValueError, match=r"^FCDenseNetSA with 5 stages needs an input size that is a multiple of 32; "
                                         r"got \(48, 32\)$"):
        a(torch.rand(1, 1, 48, 32))


def test_build_net_errors():
    with pytest.raises(ValueError, match=r"^'name' must be one of \['resnext_unet', 'attention_unet'\]; got 'unet'$"):
        N.build_net("unet", 1)
    with pytest.raises(ValueError, match=r"^unknown size parameters \['growth_rate'\] for 'resnext_unet'; choose from "):
        N.build_net("resnext_unet", 1, growth_rate=4)
    with pytest.raises(ValueError, match=r"^'up_blocks' must have 5 entries; got 4 \(\[1, 1, 1, 1\]\)$"):
        N.build_net("attention_unet", 1, up_blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"^'layers' must be a sequence of positive integers; got \(3, 0, 6, 3\)$"):
        N.build_net("resnext_unet", 1, layers=(3, 0, 6, 3))
    with pytest.raises(ValueError, match=r"^'weights' \(a pretrained encoder\) only applies to 'resnext_unet'$"):
        N.build_net("attention_unet", 1, weights="x.pth")


def test_squeeze_attention_formula():
    torch.manual_seed(0)
    sa = N.SqueezeAttention(3).eval()
    x = torch.rand(2, 3, 6, 5)  # odd width: pooled with ceil, up-sampled back to 6 x 5
    with torch.no_grad():
        res = sa.conv(x)
        att = sa.conv_att(torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True))
        up = att.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[..., :6, :5]
        torch.testing.assert_close(sa(x), up * res + up)


# --------------------------------------------------------------------------------------
# local encoder weights
# --------------------------------------------------------------------------------------
def test_load_encoder_weights_torchvision_layout(tmp_path):
    torch.manual_seed(1)
    src = N.ResNeXtEncoder(3, **TINY_RESNEXT)
    state = {**src.state_dict(), "fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)}
    path = tmp_path / "resnext.pth"
    torch.save(state, path)
    for in_ch in (3, 1, 2):
        net = N.build_net("resnext_unet", in_ch, **TINY_RESNEXT)
        assert N.load_encoder_weights(net, path) == ["fc.bias", "fc.weight"]
        got = net.encoder.state_dict()
        for k, v in src.state_dict().items():
            if k != "conv1.weight":
                torch.testing.assert_close(got[k], v)
        w = src.conv1.weight.detach()
        expected = {3: w, 1: w.sum(dim=1, keepdim=True), 2: w[:, [0, 1]] * 1.5}[in_ch]
        torch.testing.assert_close(got["conv1.weight"], expected)
    # through build_net, nested under "state_dict"
    torch.save({"state_dict": state}, tmp_path / "nested.pth")
    net = N.build_net("resnext_unet", 3, weights=tmp_path / "nested.pth", **TINY_RESNEXT)
    torch.testing.assert_close(net.encoder.layer4[0].conv3.weight, src.layer4[0].conv3.weight)
    with pytest.raises(FileNotFoundError, match=r"encoder weights .*missing.pth do not exist \(no weights can be "
                                                r"downloaded here"):
        N.load_encoder_weights(net, tmp_path / "missing.pth")
    torch.save(N.ResNeXtEncoder(3, stem_channels=16, layers=(1, 1, 1, 1), cardinality=4).state_dict(),
               tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"do not match the encoder"):
        N.load_encoder_weights(net, tmp_path / "other.pth")


# --------------------------------------------------------------------------------------
# tiny overfit: the networks can learn
# --------------------------------------------------------------------------------------
def _disks(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = rng.normal(0.3, 0.05, (n, 1, size, size)).astype(np.float32)
    y = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(3, 6) ** 2
        y[i] = disk
        x[i, 0][disk] += 0.5
    return x, y


@pytest.mark.parametrize("name,size", [("resnext_unet", TINY_RESNEXT), ("attention_unet", TINY_ATTENTION)])
def test_tiny_overfit(name, size):
    x, y = _disks(8)
    torch.manual_seed(0)
    net = N.build_net(name, 1, **size)
    cfg = paper_config(name, epochs=40, batch_size=4, image_size=32, lr=3e-3, warmup_iters=5, min_lr=1e-4,
                       flip_prob=0.0, device="cpu")
    res = train_net(net, x, y, x, y, cfg)
    assert res.best_val_dice > 0.9, res.history["val_dice"][-5:]  # 0.96-0.98 measured over seeds 0, 1
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
