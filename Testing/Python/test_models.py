"""Networks: the registry, output shapes, the layout and parameter count of paper 000's Table A1 (computed
here independently from the table), the 3D U-Net with group norm (paper 002), 3D-SepNet (paper 004), and a
few training steps per network on a tiny synthetic batch in which the loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.losses import build_loss
from AutoSegSensitivity.models import available_models, build_model, count_parameters, register
from AutoSegSensitivity.models.sepnet3d import SepBlock
from AutoSegSensitivity.models.unet2d import ConvBlock2d, UpBlock2d


# ------------------------------------------------------------------------------------------------ registry

def test_registry_lists_the_papers_networks() -> None:
    names = available_models()
    assert {"unet2d", "unet3d", "sepnet3d", "monai_unet"} <= set(names)
    assert names == sorted(names)


def test_unknown_model_name_lists_the_known_names() -> None:
    with pytest.raises(InputError) as err:
        build_model("unet4d", 1, 1)
    for name in ("unet2d", "unet3d", "sepnet3d"):
        assert name in str(err.value)
    assert "unet4d" in str(err.value)


@pytest.mark.parametrize("name", ["unet2d", "unet3d", "sepnet3d", "monai_unet"])
def test_bad_arguments_raise_input_error(name: str) -> None:
    with pytest.raises(InputError, match="arguments"):
        build_model(name, 1, 1, no_such_option=3)
    with pytest.raises(InputError, match="in_channels"):
        build_model(name, 0, 1)
    with pytest.raises(InputError, match="out_channels"):
        build_model(name, 1, 2.5)
    with pytest.raises(InputError, match="base_features"):
        build_model(name, 1, 1, base_features=-4)


def test_register_decorator_adds_a_builder_and_refuses_duplicates(monkeypatch) -> None:
    import AutoSegSensitivity.models as models_pkg

    available_models()  # load the built-in networks, then work on a copy of the registry
    monkeypatch.setattr(models_pkg, "_REGISTRY", dict(models_pkg._REGISTRY))
    name = "test-only-identity-net"

    @register(name)
    def _build(in_channels: int, out_channels: int, **kw):
        net = nn.Conv2d(in_channels, out_channels, 1)
        net.spatial_dims, net.final_activation = 2, "sigmoid"
        return net

    assert name in available_models()
    assert build_model(name, 2, 3)(torch.zeros(1, 2, 4, 4)).shape == (1, 3, 4, 4)
    with pytest.raises(InputError, match="not registered yet"):
        register(name)(lambda i, o: None)
    with pytest.raises(InputError, match="not registered yet"):
        register("unet2d")(lambda i, o: None)


# ------------------------------------------------------------------------------------------------ unet2d

def _conv_block(cin: int, cout: int) -> int:
    """Table A1 conv block: Conv2D 3x3 weights + bias, BatchNorm weight + bias (dropout, ReLU: none)."""
    return 3 * 3 * cin * cout + cout + 2 * cout


def table_a1_rows(b: int = 16, in_ch: int = 1, out_ch: int = 1, top_skip: bool = False):
    """Table A1, row by row: (kind, input channels, F, output size at a 128 x 128 input).

    The table's own typos are corrected as documented in models/unet2d.py (level 1's starred conv outputs
    32 = 2b channels as its printed output size says; the last up-sampling outputs 128 x 128)."""
    return [
        ("conv", in_ch, b, (b, 128, 128)),
        ("conv", b, b, (b, 64, 64)), ("conv", b, 2 * b, (2 * b, 64, 64)),
        ("conv", 2 * b, 2 * b, (2 * b, 32, 32)), ("conv", 2 * b, 4 * b, (4 * b, 32, 32)),
        ("conv", 4 * b, 4 * b, (4 * b, 16, 16)), ("conv", 4 * b, 8 * b, (8 * b, 16, 16)),
        ("conv", 8 * b, 8 * b, (8 * b, 8, 8)), ("conv", 8 * b, 8 * b, (8 * b, 8, 8)),
        ("up", 8 * b, 8 * b, (8 * b, 16, 16)),
        ("conv", 16 * b, 8 * b, (8 * b, 16, 16)), ("conv", 8 * b, 4 * b, (4 * b, 16, 16)),
        ("up", 4 * b, 4 * b, (4 * b, 32, 32)),
        ("conv", 8 * b, 4 * b, (4 * b, 32, 32)), ("conv", 4 * b, 2 * b, (2 * b, 32, 32)),
        ("up", 2 * b, 2 * b, (2 * b, 64, 64)),
        ("conv", 4 * b, 2 * b, (2 * b, 64, 64)), ("conv", 2 * b, b, (b, 64, 64)),
        ("up", b, b, (b, 128, 128)),
        ("conv", 2 * b if top_skip else b, b, (b, 128, 128)),
    ]


def table_a1_parameter_count(b: int = 16, in_ch: int = 1, out_ch: int = 1, top_skip: bool = False) -> int:
    total = 0
    for kind, cin, cout, _ in table_a1_rows(b, in_ch, out_ch, top_skip):
        total += _conv_block(cin, cout)  # ConvTranspose2D 3x3 + BN has the same count as Conv2D 3x3 + BN
    total += 3 * 3 * b * out_ch + out_ch  # output Conv2D 3x3, F = out_ch
    return total


def test_table_a1_arithmetic_by_hand() -> None:
    # encoder 1*16 conv ... written out once to make sure the helper adds what the table says
    enc = (_conv_block(1, 16) + _conv_block(16, 16) + _conv_block(16, 32) + _conv_block(32, 32)
           + _conv_block(32, 64) + _conv_block(64, 64) + _conv_block(64, 128) + 2 * _conv_block(128, 128))
    dec = (_conv_block(128, 128) + _conv_block(256, 128) + _conv_block(128, 64) + _conv_block(64, 64)
           + _conv_block(128, 64) + _conv_block(64, 32) + _conv_block(32, 32) + _conv_block(64, 32)
           + _conv_block(32, 16) + _conv_block(16, 16) + _conv_block(16, 16))
    out = 9 * 16 + 1
    assert enc + dec + out == table_a1_parameter_count() == 1_125_937


@pytest.mark.parametrize("b, in_ch, out_ch, top_skip", [(16, 1, 1, False), (16, 3, 2, False), (8, 1, 4, True)])
def test_unet2d_parameter_count_matches_table_a1(b: int, in_ch: int, out_ch: int, top_skip: bool) -> None:
    net = build_model("unet2d", in_ch, out_ch, base_features=b, top_skip=top_skip)
    assert count_parameters(net) == table_a1_parameter_count(b, in_ch, out_ch, top_skip)


def test_unet2d_layers_and_output_sizes_follow_table_a1() -> None:
    net = build_model("unet2d", 1, 1).eval()
    assert net.spatial_dims == 2 and net.final_activation == "sigmoid" and net.size_divisor == 16
    blocks = [m for m in net.modules() if isinstance(m, (ConvBlock2d, UpBlock2d))]
    rows = table_a1_rows()
    assert len(blocks) == len(rows) == 20
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, tuple(out.shape[1:]))))
             for m in blocks]
    with torch.no_grad():
        y = net(torch.randn(2, 1, 128, 128))
    for h in hooks:
        h.remove()
    assert y.shape == (2, 1, 128, 128)
    assert len(seen) == len(rows)
    for (mod, shape), (kind, cin, cout, size) in zip(seen, rows):
        conv = mod[0]
        assert shape == size
        assert (conv.in_channels, conv.out_channels) == (cin, cout)
        assert conv.kernel_size == (3, 3)
        assert conv.stride == ((2, 2) if kind == "up" else (1, 1))
        assert isinstance(conv, nn.ConvTranspose2d if kind == "up" else nn.Conv2d)
        assert isinstance(mod[1], nn.BatchNorm2d)
        assert type(mod[2]) is (nn.ReLU if kind == "up" else nn.LeakyReLU)
        assert isinstance(mod[3], nn.Dropout) and mod[3].p == pytest.approx(0.2)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1  # one module, used 4 times
    assert isinstance(net.output, nn.Conv2d) and net.output.kernel_size == (3, 3)
    assert not any(isinstance(m, (nn.Sigmoid, nn.Softmax)) for m in net.modules())  # logits out


@pytest.mark.parametrize("shape, depth", [((3, 1, 32, 48), 5), ((1, 1, 20, 12), 3), ((2, 1, 2, 6), 2)])
def test_unet2d_output_shape(shape, depth) -> None:
    net = build_model("unet2d", 1, 3, base_features=4, depth=depth).eval()
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 3) + shape[2:]


def test_unet2d_skip_connections_carry_encoder_features() -> None:
    # the starred layers take twice the channels: their input is up-sampled + encoder features
    net = build_model("unet2d", 1, 1, base_features=4).eval()
    assert [d[0][0].in_channels for d in net.decoders] == [64, 32, 16, 4]
    assert build_model("unet2d", 1, 1, base_features=4, top_skip=True).decoders[-1][0][0].in_channels == 8


def test_unet2d_refuses_sizes_not_divisible() -> None:
    net = build_model("unet2d", 1, 1, base_features=4)
    with pytest.raises(InputError, match="multiples of 16"):
        net(torch.randn(1, 1, 40, 48))
    with pytest.raises(InputError, match="multiples of 4"):
        build_model("unet2d", 1, 1, base_features=4, depth=3)(torch.randn(1, 1, 6, 8))
    with pytest.raises(InputError, match="input channels"):
        net(torch.randn(1, 2, 32, 32))
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        net(torch.randn(1, 1, 1, 32, 32))
    with pytest.raises(InputError, match="dropout"):
        build_model("unet2d", 1, 1, dropout=1.5)
    with pytest.raises(InputError, match="depth"):
        build_model("unet2d", 1, 1, depth=1)


# ------------------------------------------------------------------------------------------------ unet3d

def unet3d_parameter_count(widths, in_ch: int, out_ch: int) -> int:
    """Two [Conv 3x3x3 + bias, GroupNorm weight + bias] per level on each side, ConvTranspose 2x2x2 + bias
    up, 1x1x1 output conv."""
    def double(cin, cout):
        return (27 * cin * cout + cout + 2 * cout) + (27 * cout * cout + cout + 2 * cout)

    total = sum(double(in_ch if i == 0 else widths[i - 1], w) for i, w in enumerate(widths))
    for i in range(len(widths) - 1):
        total += 8 * widths[i + 1] * widths[i] + widths[i]  # up-sampling
        total += double(2 * widths[i], widths[i])  # decoder level
    return total + widths[0] * out_ch + out_ch


@pytest.mark.parametrize("kw, widths", [({}, [32, 64, 128, 256]), ({"base_features": 4, "depth": 3}, [4, 8, 16]),
                                        ({"widths": [6, 12, 24, 48, 96]}, [6, 12, 24, 48, 96])])
def test_unet3d_parameter_count(kw, widths) -> None:
    net = build_model("unet3d", 2, 3, **kw)
    assert net.widths == widths
    assert count_parameters(net) == unet3d_parameter_count(widths, 2, 3)


def test_unet3d_uses_group_norm_zero_padding_and_he_init() -> None:
    net = build_model("unet3d", 1, 1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    assert all(c.padding == (1, 1, 1) and c.padding_mode == "zeros" for c in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == len(convs) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert all(n.num_groups == 8 for n in norms)
    big = max(convs, key=lambda c: c.weight.numel())
    fan_in = big.weight[0].numel()
    assert float(big.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)
    assert all(float(c.bias.detach().abs().max()) == 0.0 for c in convs)
    assert net.spatial_dims == 3 and net.final_activation == "sigmoid"
    assert build_model("unet3d", 1, 2, final_activation="softmax").final_activation == "softmax"
    # tiny widths: groups fall back to a divisor of the channel count
    groups = {n.num_channels: n.num_groups for n in build_model("unet3d", 1, 1, widths=[6, 12, 20, 40]).modules()
              if isinstance(n, nn.GroupNorm)}
    assert groups == {6: 6, 12: 6, 20: 5, 40: 8}


@pytest.mark.parametrize("shape", [(1, 1, 8, 16, 16), (2, 1, 7, 13, 10), (1, 1, 1, 5, 3)])
def test_unet3d_output_size_equals_input_size(shape) -> None:
    net = build_model("unet3d", 1, 2, base_features=4).eval()
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 2) + shape[2:]


def test_unet3d_refuses_bad_input() -> None:
    net = build_model("unet3d", 1, 1, base_features=4)
    with pytest.raises(InputError, match=r"\(N, C, D, H, W\)"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(InputError, match="input channels"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(InputError, match="final_activation"):
        build_model("unet3d", 1, 1, final_activation="relu")
    with pytest.raises(InputError, match="widths"):
        build_model("unet3d", 1, 1, widths=[8])


# ------------------------------------------------------------------------------------------------ sepnet3d

def sep_block_count(cin: int, cout: int) -> int:
    """Block(n): three 1x3x3 convs, one 3x1x1 conv, a 1x1x1 residual conv, all with bias; IN has no
    parameters."""
    return (9 * cin * cout + cout) + 2 * (9 * cout * cout + cout) + (3 * cout * cout + cout) + (cin * cout + cout)


def sepnet_parameter_count(b: int, in_ch: int, out_ch: int) -> int:
    w = [b, 2 * b, 4 * b, 8 * b]
    blocks = [(in_ch, w[0]), (w[0], w[1]), (w[1], w[2]),  # encoder
              (w[2], w[3]), (w[3], w[2]),  # bottom
              (2 * w[2], w[2]), (w[2], w[1]), (2 * w[1], w[1]), (w[1], w[0]), (2 * w[0], w[0]), (w[0], w[0])]
    return sum(sep_block_count(ci, co) for ci, co in blocks) + w[0] * out_ch + out_ch


@pytest.mark.parametrize("b, in_ch, out_ch", [(24, 1, 23), (4, 2, 3)])
def test_sepnet3d_parameter_count(b: int, in_ch: int, out_ch: int) -> None:
    net = build_model("sepnet3d", in_ch, out_ch, base_features=b)
    assert count_parameters(net) == sepnet_parameter_count(b, in_ch, out_ch)


def test_sepnet3d_blocks_are_three_intra_then_one_inter_slice_with_residual() -> None:
    net = build_model("sepnet3d", 1, 3, base_features=4)
    assert net.final_activation == "softmax" and net.spatial_dims == 3
    blocks = [m for m in net.modules() if isinstance(m, SepBlock)]
    assert len(blocks) == 11
    for blk in blocks:
        convs = [m for m in blk.body if isinstance(m, nn.Conv3d)]
        assert [c.kernel_size for c in convs] == [(1, 3, 3)] * 3 + [(3, 1, 1)]
        assert [c.padding for c in convs] == [(0, 1, 1)] * 3 + [(1, 0, 0)]
        assert sum(isinstance(m, nn.InstanceNorm3d) for m in blk.body) == 4
        assert sum(isinstance(m, nn.ReLU) for m in blk.body) == 4
        assert blk.skip.kernel_size == (1, 1, 1)
    assert net.output.kernel_size == (1, 1, 1)
    # channels double after each pooling in the encoder
    assert [b.skip.out_channels for b in net.encoders] == [4, 8, 16]


def test_sepnet3d_block_is_body_plus_residual() -> None:
    torch.manual_seed(0)
    blk = SepBlock(2, 3).eval()
    x = torch.randn(1, 2, 4, 6, 6)
    with torch.no_grad():
        assert torch.allclose(blk(x), blk.body(x) + blk.skip(x))
        # the 1x1x1 skip is a per-voxel linear map
        expected = torch.einsum("oi,nidhw->nodhw", blk.skip.weight[:, :, 0, 0, 0], x) + blk.skip.bias[None, :, None, None, None]
        assert torch.allclose(blk.skip(x), expected, atol=1e-6)


def test_sepnet3d_intra_slice_convolutions_do_not_mix_slices() -> None:
    # a block without its inter-slice conv sees one slice only: changing slice 0 leaves slice 3's
    # intra-slice features alone, while the full block (with the 3x1x1 conv) reaches one slice further
    torch.manual_seed(0)
    blk = SepBlock(1, 2).eval()
    x = torch.randn(1, 1, 5, 8, 8)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    intra = blk.body[:9]  # three [conv, IN, ReLU] triples
    with torch.no_grad():
        # instance norm mixes statistics over the volume; compare the conv outputs themselves
        a, b = intra[0](x), intra[0](x2)
        assert torch.equal(a[:, :, 1:], b[:, :, 1:])
        inter = blk.body[9]
        c, d = inter(a), inter(b)
        assert torch.equal(c[:, :, 2:], d[:, :, 2:]) and not torch.equal(c[:, :, 1], d[:, :, 1])


@pytest.mark.parametrize("shape", [(1, 1, 16, 32, 32), (2, 1, 5, 13, 10), (1, 1, 3, 8, 9)])
def test_sepnet3d_output_size_equals_input_size(shape) -> None:
    net = build_model("sepnet3d", 1, 4, base_features=4).eval()
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 4) + shape[2:]


def test_sepnet3d_refuses_bad_input() -> None:
    net = build_model("sepnet3d", 1, 2, base_features=4)
    with pytest.raises(InputError, match="input channels"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(InputError, match="dilation"):
        build_model("sepnet3d", 1, 2, dilation=0)
    assert build_model("sepnet3d", 1, 2, base_features=4, dilation=2).eval()(torch.randn(1, 1, 4, 16, 16)).shape \
        == (1, 2, 4, 16, 16)


# ------------------------------------------------------------------------------------------------ monai

@pytest.mark.parametrize("dims, shape", [(2, (2, 1, 32, 32)), (3, (1, 1, 8, 16, 16))])
def test_monai_unet_beside_ours(dims, shape) -> None:
    net = build_model("monai_unet", 1, 2, spatial_dims=dims, base_features=4, depth=3).eval()
    assert net.spatial_dims == dims and net.final_activation == "sigmoid" and net.size_divisor == 4
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (shape[0], 2) + shape[2:]
    with pytest.raises(InputError, match="multiples of 4"):
        net(torch.randn(*(shape[:-1] + (shape[-1] + 2,))))


# ------------------------------------------------------------------------------------------------ training

def _blob_batch(shape, seed: int) -> tuple:
    """Images with a bright disc/ball (plus noise) and its mask."""
    rng = np.random.default_rng(seed)
    n, spatial = shape[0], shape[2:]
    grids = np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij")
    imgs, masks = [], []
    for _ in range(n):
        centre = [rng.uniform(s * 0.3, s * 0.7) for s in spatial]
        radius = min(spatial[-2:]) * rng.uniform(0.15, 0.3)
        r2 = sum(((g - c) / (1.0 if len(spatial) == 2 or i > 0 else 0.5)) ** 2 for i, (g, c) in enumerate(zip(grids, centre)))
        m = (r2 <= radius ** 2).astype(np.float32)
        imgs.append(m * 1.0 + rng.normal(0, 0.3, m.shape))
        masks.append(m)
    x = torch.tensor(np.stack(imgs)[:, None], dtype=torch.float32)
    y = torch.tensor(np.stack(masks)[:, None], dtype=torch.float32)
    return x, y


@pytest.mark.parametrize("name, loss, shape, kw", [
    ("unet2d", "bce_dice2d", (4, 1, 32, 32), {"base_features": 4}),
    ("unet3d", "dice_ce", (2, 1, 8, 16, 16), {"base_features": 4, "depth": 3}),
    ("sepnet3d", "ath_explog", (2, 1, 8, 16, 16), {"base_features": 4, "depth": 3}),
    ("monai_unet", "bce", (4, 1, 32, 32), {"base_features": 4, "depth": 3}),
])
def test_a_few_training_steps_lower_the_loss(name, loss, shape, kw) -> None:
    torch.manual_seed(0)
    x, y = _blob_batch(shape, seed=1)
    net = build_model(name, 1, 2 if name == "sepnet3d" else 1, **kw)
    if net.final_activation == "softmax":
        y = torch.cat([1 - y, y], dim=1)  # background first, one-hot
    loss_fn = build_loss(loss)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        value = loss_fn(net(x), y)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    net.eval()
    with torch.no_grad():
        final = float(loss_fn(net(x), y))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses
    assert final < losses[0], (final, losses)
