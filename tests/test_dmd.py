"""Known answers for the DMD baseline with exact Gaussian denoisers, and tiny-teacher plumbing.

For data N(m, I) noised at sigma the exact denoiser is D(x_t) = m + (x_t - m) / v, v = 1 + sigma^2,
so with teacher m = 0 and fake score m = mu: s_fake - s_real = mu / v for every x_t.
"""

import copy
import math

import pytest
import torch
from torch import nn

from initprobe.diffusion import one_step
from initprobe.errors import UserError
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.train.dmd import DMD
from initprobe.train.objectives import Setting, make_options

SIGMA = 0.7
V = 1 + SIGMA**2


def config(shape, lr_aux=1e-3, betas=(0.0, 0.99), **options):
    """(options, setting) of the dmd objective for images of `shape`."""
    return make_options("dmd", options), Setting(shape, "cpu", lr_aux, betas)


def fixed_sigma(shape, **kw):
    return config(shape, p_mean=math.log(SIGMA), p_std=0.0, **kw)


class GaussianDenoiser(nn.Module):
    """The exact denoiser of N(m, I)."""

    def __init__(self, m):
        super().__init__()
        self.m = nn.Parameter(torch.as_tensor(m, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x, sigma):
        v = 1 + torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1) ** 2
        return self.m + (x - self.m) / v


def shift_gradient(obj, mu, z, g):
    shift = nn.Parameter(torch.tensor(mu).reshape(1, -1, 1, 1))
    loss, _ = obj.generator_loss(None, z + shift, z, None, g, 0)
    loss.backward()
    return shift.grad.flatten()


def test_score_weighting_gives_the_exact_score_difference():
    mu = [0.9, -0.4]
    teacher = GaussianDenoiser([0.0, 0.0]).requires_grad_(False)
    obj = DMD(teacher, *fixed_sigma((2, 1, 1), weighting="score"),
              fake_score=GaussianDenoiser(mu))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 2, 1, 1, generator=g)
    grad = shift_gradient(obj, mu, z, g)
    assert torch.allclose(grad, torch.tensor(mu) / V, rtol=1e-5)  # = d/dmu KL = mu / v
    assert obj.fake_score.m.grad is None and teacher.m.grad is None


def test_dmd_weighting_divides_by_the_teacher_denoising_error():
    mu = [0.9, -0.4]
    obj = DMD(GaussianDenoiser([0.0, 0.0]), *fixed_sigma((2, 1, 1)),
              fake_score=GaussianDenoiser(mu))
    n = 16
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 2, 1, 1, generator=g)
    state = g.get_state()
    grad = shift_gradient(obj, mu, z, g)
    # Replay the objective's draws: n noise levels (all SIGMA), then the noise.
    g.set_state(state)
    torch.randn(n, generator=g)
    noise = torch.randn(n, 2, 1, 1, generator=g)
    x = z + torch.tensor(mu).reshape(1, 2, 1, 1)
    d_real = (x + SIGMA * noise) / V
    norm = (x - d_real).abs().mean(dim=(1, 2, 3))
    expect = (SIGMA**2 * torch.tensor(mu) / V) * (1 / norm).mean()
    assert torch.allclose(grad, expect, rtol=1e-4)


def test_fake_score_learns_the_student_distribution():
    # EDM's denoising loss on student samples N(mu, I) is minimized by the fake score's m = mu.
    mu = torch.tensor([1.0, -0.5])
    obj = DMD(GaussianDenoiser([0.0, 0.0]), *config((2, 1, 1), lr_aux=0.02, betas=(0.9, 0.999)),
              fake_score=GaussianDenoiser([0.0, 0.0]))
    g = torch.Generator().manual_seed(2)
    for step in range(300):
        fake = torch.randn(512, 2, 1, 1, generator=g) + mu.reshape(1, 2, 1, 1)
        obj.aux_step(fake, None, g, step)
    assert torch.allclose(obj.fake_score.m.detach().flatten(), mu, atol=0.08)


def test_tiny_teacher_only_the_intended_parameters_change():
    torch.manual_seed(0)
    teacher = Denoiser(UNetConfig()).eval().requires_grad_(False)
    before = copy.deepcopy(teacher.state_dict())
    obj = DMD(teacher, *config((1, 8, 8), lr_aux=1e-2))
    assert not any(k.startswith("teacher") for k in obj.state_dict())  # not checkpointed
    fake0 = copy.deepcopy(obj.fake_score.state_dict())
    gen = copy.deepcopy(teacher).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 8, 8, generator=g)
    with torch.no_grad():
        fake = one_step(gen, z)
    logs = obj.aux_step(fake, None, g, 0)
    assert math.isfinite(logs["fake_score_loss"])
    assert any(not torch.equal(v, fake0[k]) for k, v in obj.fake_score.state_dict().items())
    obj.fake_score.zero_grad(set_to_none=True)

    loss, logs = obj.generator_loss(gen, one_step(gen, z), z, None, g, 0)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and logs["dmd_grad_norm"] > 0
    assert all(p.grad is None for p in obj.fake_score.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gen.parameters() if p.grad is not None) > 0
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_unknown_weighting_is_a_user_error():
    with pytest.raises(UserError, match="weighting"):
        DMD(GaussianDenoiser([0.0]), *config((1, 1, 1), weighting="vsd"),
            fake_score=GaussianDenoiser([0.0]))
