import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from initprobe.ablate.select import block_layer_ids
from initprobe.errors import UserError
from initprobe.measure.analyses.attribution import (
    DEFAULT_PROBE,
    AttributionOptions,
    attribute,
    direction,
    layer_attributions,
    target_function,
)
from initprobe.measure.analyses.profiles import ProbeOptions, fixed_noise
from initprobe.measure.features.hooks import capture, modules_by_id
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import UNetConfig

torch.set_num_threads(1)
STEM = "enc.8x8_conv"


def make_net():
    """A tiny denoiser with O(1) weights everywhere (the default init keeps the residual
    branches and the head near zero, which would make every attribution tiny)."""
    torch.manual_seed(0)
    net = Denoiser(UNetConfig()).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
    return net


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    return x, x + 0.7 * torch.randn(x.shape, generator=g)


def test_direction_is_a_seeded_unit_vector():
    u = direction((1, 8, 8), 0)
    assert u.shape == (1, 8, 8) and u.norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(u, direction((1, 8, 8), 0))
    assert not torch.allclose(u, direction((1, 8, 8), 1))


def test_loss_target_is_the_per_example_edm_loss(net, data):
    x, y = data
    per_example = target_function(net, 0.7, "loss")(y, x)
    w = (0.7**2 + 0.25) / (0.7 * 0.5) ** 2
    with torch.no_grad():
        expected = w * ((net(y, 0.7) - x) ** 2).mean((1, 2, 3))
    assert per_example.shape == (4,)
    torch.testing.assert_close(per_example.detach(), expected)


def test_attributions_have_the_layer_shapes_and_ids(net, data):
    x, y = data
    ids = block_layer_ids(net)
    forward = target_function(net, 0.7, "projection", direction((1, 8, 8), 0))
    attrs = layer_attributions(forward, y, x, modules_by_id(net, ids), "grad_x_act")
    with torch.no_grad(), capture(net, ids) as outs:
        net(y, 0.7)
    assert list(attrs) == ids
    assert all(attrs[i].shape == outs[i][0].shape for i in ids)


@pytest.mark.parametrize("target", ["loss", "projection"])
def test_grad_x_act_matches_manual_autograd(net, data, target):
    x, y = data
    layer = "enc.8x8_block0.conv1"
    forward = target_function(net, 0.7, target, direction((1, 8, 8), 0))
    got = layer_attributions(forward, y, x, modules_by_id(net, [layer]), "grad_x_act")[layer]

    kept = {}

    def keep(module, inputs, out):
        out.retain_grad()
        kept["h"] = out
    handle = modules_by_id(net, [layer])[layer].register_forward_hook(keep)
    try:
        forward(y.clone().requires_grad_(), x).sum().backward()
    finally:
        handle.remove()
    net.zero_grad(set_to_none=True)
    expected = kept["h"].grad * kept["h"].detach()
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(got, expected)


def test_conductance_of_the_stem_is_complete(net, data):
    """Everything but D's c_skip y term flows through the stem conv, so the stem's
    conductances sum to target(y) - target(y0) - c_skip <y - y0, u> (mean baseline y0)."""
    x, y = data
    sigma, u = 0.7, direction((1, 8, 8), 0)
    y0 = y.mean(0, keepdim=True).expand_as(y)
    forward = target_function(net, sigma, "projection", u)
    cond = layer_attributions(forward, y, x, modules_by_id(net, [STEM]), "conductance", y0,
                              n_steps=400)[STEM]
    with torch.no_grad():
        c_skip = coefficients(torch.tensor(sigma))[0]
        flow = forward(y, x) - forward(y0, x) - c_skip * ((y - y0) * u).sum((1, 2, 3))
    assert flow.abs().max() > 0.1
    torch.testing.assert_close(cond.sum((1, 2, 3)), flow, rtol=2e-2, atol=3e-3)


def test_table_aggregates_mean_abs_attribution(net, data):
    x, _ = data
    sigmas = [0.2, 3.0]
    layers = ["map_layer0", STEM]
    df = attribute(net, x, ProbeOptions(sigmas, layers, seed=4, batch=3),
                   AttributionOptions("conductance", "loss", "mean", n_steps=8))
    raw = df[df.metric == "attr_conductance"]
    assert list(dict.fromkeys(raw["layer"])) == layers and (df["target"] == "loss").all()
    # the noise embedding does not depend on the image: no conductance flows through it
    assert (raw[raw.layer == "map_layer0"]["value"] == 0).all()
    noisy = x + 3.0 * fixed_noise(x, 4)
    b = noisy.mean(0, keepdim=True).expand_as(noisy)
    forward = target_function(net, 3.0, "loss")
    a = layer_attributions(forward, noisy, x, modules_by_id(net, [STEM]), "conductance", b,
                           n_steps=8)[STEM]
    got = raw[(raw.layer == STEM) & (raw.sigma == 3.0)]["value"].item()
    assert got == pytest.approx(a.abs().mean().item(), rel=1e-4)
    mm = df[(df.metric == "minmax") & (df.layer == STEM)]["value"]
    assert sorted(mm) == [0.0, 1.0]


def test_internal_batch_size_does_not_change_the_result(net, data):
    x, _ = data
    probe = ProbeOptions([1.0], [STEM], batch=DEFAULT_PROBE.batch)
    how = AttributionOptions("conductance", "projection", n_steps=6)
    whole = attribute(net, x, probe, how)
    chunked = attribute(net, x, probe, replace(how, internal_batch_size=4))
    np.testing.assert_allclose(chunked["value"], whole["value"], rtol=1e-4)


def test_grad_x_act_table_covers_blocks_and_sigmas(net, data):
    x, _ = data
    df = attribute(net, x, ProbeOptions([0.1, 1.0, 10.0]),
                   AttributionOptions("grad_x_act", "projection"))
    assert set(df.metric) == {"attr_grad_x_act", "minmax"}
    assert list(dict.fromkeys(df.layer)) == block_layer_ids(net)
    assert df.groupby(["metric", "layer"]).size().eq(3).all()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == 0


@pytest.mark.parametrize("kw, what", [({"method": "saliency"}, "method"),
                                      ({"target": "score"}, "target"),
                                      ({"baseline": "blur"}, "baseline")])
def test_unknown_options_are_user_errors(kw, what):
    with pytest.raises(UserError, match=what):
        AttributionOptions(**kw)
