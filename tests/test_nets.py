import math

import pytest
import torch

from initprobe.errors import UserError
from initprobe.nets.io import load_network, read_meta, save_checkpoint
from initprobe.nets.layers import GROUPS, layer_table, named_blocks, parse
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import PRESETS, UNet, UNetConfig


def test_shapes_for_each_preset_size():
    for cfg in (UNetConfig(), UNetConfig(img_resolution=32, **PRESETS["small"]),
                UNetConfig(img_resolution=16, in_channels=3, out_channels=3,
                           model_channels=8, channel_mult=[1, 2, 2], num_blocks=2,
                           attn_resolutions=[8])):
        net = Denoiser(cfg)
        x = torch.randn(3, cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
        assert net(x, torch.tensor([0.5, 2.0, 80.0])).shape == x.shape


def test_edm_names_and_cifar_size():
    """Names follow EDM's SongUNet; the cifar preset has DDPM++'s ~55.7M parameters."""
    cfg = UNetConfig(img_resolution=32, in_channels=3, out_channels=3, **PRESETS["cifar"])
    net = UNet(cfg)
    names = dict(net.named_parameters())
    for key, shape in [("map_layer0.weight", (512, 128)), ("enc.32x32_conv.weight", (128, 3, 3, 3)),
                       ("enc.16x16_down.conv0.weight", (256, 256, 3, 3)),
                       ("enc.16x16_block0.qkv.weight", (768, 256, 1, 1)),
                       ("dec.8x8_in0.proj.weight", (256, 256, 1, 1)),
                       ("dec.32x32_block4.skip.weight", (256, 384, 1, 1)),
                       ("dec.32x32_aux_conv.weight", (3, 256, 3, 3))]:
        assert tuple(names[key].shape) == shape, key
    assert sum(p.numel() for p in net.parameters()) == 55_732_739


def test_layer_ids_parse_and_groups():
    lid = parse("enc.16x16_block1.conv1", "Conv2d")
    assert (lid.side, lid.res, lid.block, lid.sublayer) == ("enc", 16, "block1", "conv1")
    net = Denoiser(UNetConfig())
    t = layer_table(net)
    assert t.layer.is_unique
    assert t.params.sum() == sum(p.numel() for p in net.parameters())
    groups = {g for gs in t.groups for g in gs.split(",")}
    assert groups == set(GROUPS)
    assert set(t[t.groups.str.contains("bottleneck")].block) == {"in0", "in1"}
    assert t[t.groups.str.startswith("stem")].layer.tolist() == ["enc.8x8_conv"]
    assert list(named_blocks(net))[0] == "enc.8x8_conv"


def test_documented_init():
    net = UNet(UNetConfig())
    # near-zero: last conv of residual branches, attention projections, output head
    for name, p in net.named_parameters():
        if name.endswith(("conv1.weight", "proj.weight", "aux_conv.weight")):
            assert p.abs().max() < 1e-4, name
        if name.endswith("bias") and "norm" not in name:
            assert torch.all(p == 0), name
    w = net.enc["8x8_conv"].weight
    bound = math.sqrt(6 / (1 * 9 + 16 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    # so the untrained denoiser is close to c_skip * x
    d = Denoiser(UNetConfig())
    x = torch.randn(2, 1, 8, 8)
    c_skip = 0.25 / (1 + 0.25)
    assert torch.allclose(d(x, 1.0), c_skip * x, atol=1e-3)


@pytest.mark.parametrize("s", [0.002, 0.5, 2.0, 80.0])
def test_preconditioning_matches_hand_computed_values(s):
    sd, eps = 0.5, 0.002
    sig = torch.tensor(s, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = coefficients(sig, "edm")
    assert math.isclose(c_skip, sd**2 / (s**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_out, s * sd / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_in, 1 / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_noise, math.log(s) / 4, rel_tol=1e-12)
    c_skip, c_out, c_in, _ = coefficients(sig, "edm-eps")
    assert math.isclose(c_skip, sd**2 / ((s - eps)**2 + sd**2), rel_tol=1e-12)
    assert math.isclose(c_out, (s - eps) * sd / math.sqrt(s**2 + sd**2), abs_tol=1e-15)


def test_eps_shift_boundary_is_identity():
    net = Denoiser(UNetConfig(), precond="edm-eps")
    torch.nn.init.normal_(net.model.dec["8x8_aux_conv"].weight)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(net(x, 0.002), x, atol=1e-6)
    assert not torch.allclose(Denoiser(UNetConfig())(x, 0.002), x + 1, atol=1e-3)


def test_hand_computed_value_at_sigma_one():
    # c_skip(1) = 0.2, c_out(1) = 0.5/sqrt(1.25)
    net = Denoiser(UNetConfig())
    torch.nn.init.normal_(net.model.dec["8x8_aux_conv"].weight)
    x = torch.randn(1, 1, 8, 8)
    f = net.model(x / math.sqrt(1.25), torch.tensor([0.0]))
    assert torch.allclose(net(x, 1.0), 0.2 * x + 0.5 / math.sqrt(1.25) * f, atol=1e-6)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    net, ema = Denoiser(UNetConfig()), Denoiser(UNetConfig())
    save_checkpoint(tmp_path / "c", net, ema, step=3)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(load_network(tmp_path / "c.safetensors")(x, 1.0), ema(x, 1.0))
    assert torch.allclose(load_network(tmp_path / "c", which="net")(x, 1.0), net(x, 1.0))
    assert read_meta(tmp_path / "c.json")["step"] == 3
    with pytest.raises(UserError, match="not found"):
        load_network(tmp_path / "nope.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserError, match="unreadable safetensors"):
        load_network(tmp_path / "c")
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_network(tmp_path / "c")
