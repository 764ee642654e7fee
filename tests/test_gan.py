"""GAN objective: known-answer losses, the R1 penalty, and which parts of D train."""

import math

import pytest
import torch

from initprobe.measure.features.classifier import FeatureNet
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.train.discriminator import classifier_tap, teacher_tap
from initprobe.train.gan import GAN, d_loss, g_loss, r1_penalty
from initprobe.train.loop import step_generator
from initprobe.train.objectives import Setting, make_options

SHAPE = (1, 8, 8)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_non_saturating_losses_match_hand_computed_values():
    real = torch.tensor([0.0, 2.0])
    fake = torch.tensor([-1.0, 1.0, 3.0])
    expect_d = (softplus(-0.0) + softplus(-2.0)) / 2 + (softplus(-1.0) + softplus(1.0)
                                                        + softplus(3.0)) / 3
    expect_g = (softplus(1.0) + softplus(-1.0) + softplus(-3.0)) / 3
    assert d_loss(real, fake).item() == pytest.approx(expect_d, rel=1e-6)
    assert g_loss(fake).item() == pytest.approx(expect_g, rel=1e-6)


def test_r1_is_the_squared_gradient_norm():
    w = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    real = torch.randn(5, *SHAPE).requires_grad_(True)
    linear = (real * w).sum(dim=(1, 2, 3)) + 0.3
    assert r1_penalty(linear, real).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
    # D(x) = |x|^2 / 2 has gradient x: the penalty is the mean squared norm of the batch.
    quadratic = real.square().sum(dim=(1, 2, 3)) / 2
    expect = real.detach().square().sum(dim=(1, 2, 3)).mean().item()
    assert r1_penalty(quadratic, real).item() == pytest.approx(expect, rel=1e-5)


def teacher() -> Denoiser:
    torch.manual_seed(0)
    return Denoiser(UNetConfig()).eval().requires_grad_(False)


def test_teacher_features_are_the_encoder_levels_and_skip_the_decoder():
    net = teacher()
    tap = teacher_tap(net, 0.5)
    calls = []
    tap.net.model.dec["4x4_in0"].register_forward_hook(lambda *a: calls.append(1))
    feats = tap(torch.randn(3, *SHAPE))
    assert [tuple(f.shape) for f in feats] == [(3, 16, 8, 8), (3, 32, 4, 4)]
    assert calls == []
    assert tap.net is not net  # a private copy: hooks never touch the caller's teacher


def test_classifier_features_have_three_scales():
    feats = classifier_tap(FeatureNet(1, 10))(torch.randn(2, *SHAPE))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]


def test_only_the_heads_train_and_generator_loss_leaves_them_alone():
    net = teacher()
    gan = GAN(net, make_options("gan", {"r1_interval": 2}),
              Setting(SHAPE, "cpu", 1e-2, (0.0, 0.99)))
    frozen = {k: v.clone() for k, v in gan.disc.tap.net.state_dict().items()}
    projections = [p.clone() for p in gan.disc.projections()]
    heads = [p.detach().clone() for p in gan.disc.heads.parameters()]
    real, fake = torch.randn(4, *SHAPE), torch.randn(4, *SHAPE)
    for step in range(3):
        logs = gan.aux_step(fake, real, step_generator(0, step, 1), step)
        assert ("r1" in logs) == (step % 2 == 0)
    gan.opt.zero_grad(set_to_none=True)
    fake_g = fake.clone().requires_grad_(True)
    loss, _ = gan.generator_loss(None, fake_g, None, real, step_generator(0, 3, 2), 3)
    loss.backward()
    assert fake_g.grad is not None and fake_g.grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.disc.heads.parameters())
    assert all(p.requires_grad for p in gan.disc.heads.parameters())
    for k, v in gan.disc.tap.net.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert all(torch.equal(a, b) for a, b in zip(gan.disc.projections(), projections))
    assert all(not torch.equal(a, b) for a, b in zip(gan.disc.heads.parameters(), heads))
    # the checkpointed state holds heads and projections, not the frozen feature network
    assert not any("tap" in k or "model." in k for k in gan.aux_state()["modules"])
