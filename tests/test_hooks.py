import pytest
import torch

from initprobe.errors import UserError
from initprobe.measure.features.hooks import capture
from initprobe.nets.precond import Denoiser, coefficients
from initprobe.nets.unet import UNetConfig

torch.set_num_threads(1)
STEM = "enc.8x8_conv"


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Denoiser(UNetConfig()).eval()


def n_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


def stem_output(net, x, sigma):
    c_in = coefficients(torch.tensor(sigma))[2]
    return net.model.enc["8x8_conv"](c_in * x)


@torch.no_grad()
def test_captured_output_equals_manual_and_hooks_are_removed(net):
    x = torch.randn(3, 1, 8, 8)
    with capture(net, [STEM, "dec.8x8_aux_conv"]) as got:
        assert n_hooks(net) == 2
        out = net(x, 2.0)
    assert n_hooks(net) == 0
    assert len(got[STEM]) == 1
    torch.testing.assert_close(got[STEM][0], stem_output(net, x, 2.0))
    # the head conv's output is F, so D = c_skip x + c_out F
    c_skip, c_out, _, _ = coefficients(torch.tensor(2.0))
    torch.testing.assert_close(c_skip * x + c_out * got["dec.8x8_aux_conv"][0], out)


@torch.no_grad()
def test_hooks_are_removed_after_an_exception(net):
    with pytest.raises(RuntimeError, match="boom"), capture(net, [STEM]):
        net(torch.randn(2, 1, 8, 8), 1.0)
        raise RuntimeError("boom")
    assert n_hooks(net) == 0


@torch.no_grad()
def test_reduce_runs_per_call_and_keeps_only_the_reduction(net):
    xs = [torch.randn(2, 1, 8, 8), torch.randn(5, 1, 8, 8)]
    with capture(net, [STEM], reduce=lambda h: h.abs().flatten(1).mean(1)) as got:
        for x in xs:
            net(x, 0.5)
    assert [v.shape for v in got[STEM]] == [(2,), (5,)]
    for x, v in zip(xs, got[STEM]):
        torch.testing.assert_close(v, stem_output(net, x, 0.5).abs().flatten(1).mean(1))


@torch.no_grad()
def test_clone_protects_against_in_place_modification(net):
    x = torch.randn(2, 1, 8, 8)
    stem = net.model.enc["8x8_conv"]
    with capture(net, [STEM]) as cloned, capture(net, [STEM], reduce=lambda h: h) as viewed:
        vandal = stem.register_forward_hook(lambda m, i, out: out.zero_())
        try:
            net(x, 1.0)
        finally:
            vandal.remove()
    assert viewed[STEM][0].abs().max() == 0  # an uncloned view sees the in-place change
    torch.testing.assert_close(cloned[STEM][0], stem_output(net, x, 1.0))


def test_unknown_layer_id_is_a_user_error(net):
    with pytest.raises(UserError, match="enc.nope"), capture(net, ["enc.nope"]):
        pass
    assert n_hooks(net) == 0
