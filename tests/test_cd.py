"""Consistency distillation: boundary condition, exact Heun steps and a known-answer loss.

Toy model: data N(0, s^2 I). The exact denoiser is D(x; t) = s^2 / (s^2 + t^2) x and the
probability-flow ODE keeps x / sqrt(s^2 + t^2) constant, so the exact consistency function is
f(x, t) = x s / sqrt(s^2 + t^2). With data concentrated on a point mu, D = mu and every Euler or
Heun step is exact: x(t') = mu + (x - mu) t' / t.
"""

import pytest
import torch
from torch import nn

from initprobe.diffusion import SIGMA_MIN, heun_step
from initprobe.errors import UserError
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.train.cd import ConsistencyDistillation, cd_target, distance
from initprobe.train.loop import step_generator
from initprobe.train.objectives import Setting, make_options

S = 0.5
SHAPE = (1, 4, 4)


class Fn(nn.Module):
    """A closed-form 'network' net(x, t) with per-image t."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.fn(x, t)


gaussian_denoiser = Fn(lambda x, t: S**2 / (S**2 + t**2) * x)
consistency_fn = Fn(lambda x, t: x * S / (S**2 + t**2).sqrt())


def cd(**options) -> ConsistencyDistillation:
    return ConsistencyDistillation(gaussian_denoiser, make_options("cd", options),
                                   Setting(SHAPE, "cpu", 1e-4, (0.0, 0.99)))


def test_edm_eps_student_is_the_identity_at_the_boundary_so_the_last_target_is_x_lo():
    torch.manual_seed(0)
    student = Denoiser(UNetConfig(img_resolution=4), precond="edm-eps")
    x = torch.randn(3, *SHAPE)
    assert torch.equal(student(x, SIGMA_MIN), x)
    t_hi, t_lo = torch.full((3,), 0.01), torch.full((3,), SIGMA_MIN)
    expect = heun_step(gaussian_denoiser, x, t_hi, t_lo)
    assert torch.equal(cd_target(student, gaussian_denoiser, x, t_hi, t_lo), expect)


def test_heun_step_is_exact_for_a_point_mass():
    mu = torch.randn(1, *SHAPE)
    point = Fn(lambda x, t: mu.expand_as(x))
    x, t, t_next = torch.randn(4, *SHAPE), torch.tensor([80.0, 5, 1, 0.1]), torch.tensor(
        [40.0, 1, 0.5, SIGMA_MIN])
    expect = mu + (x - mu) * (t_next / t).reshape(-1, 1, 1, 1)
    assert torch.allclose(heun_step(point, x, t, t_next), expect, atol=1e-5)


def test_loss_vanishes_for_the_exact_consistency_function():
    real = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(0)) * S

    def loss(student, scales):
        g = step_generator(0, 0, 2)
        return cd(scales=scales).generator_loss(student, None, None, real, g, 0)[0].item()

    exact, fine = loss(consistency_fn, 18), loss(consistency_fn, 40)
    assert exact < 1e-4 and fine < exact / 100  # only Heun's local O(h^3) error remains
    assert loss(gaussian_denoiser, 18) > 100 * exact  # the denoiser is not consistent


def test_distances():
    a, b = torch.zeros(2, *SHAPE), torch.full((2, *SHAPE), 0.5)
    assert torch.allclose(distance(a, b, "l2"), torch.full((2,), 0.25))
    c = 0.00054 * 4
    huber = (16 * 0.25 + c * c) ** 0.5 - c
    assert torch.allclose(distance(a, b, "huber"), torch.full((2,), huber))


@pytest.mark.parametrize("options", [{"distance": "l1"}, {"scales": 1}, {"sigmas": 18}])
def test_bad_options(options):
    with pytest.raises(UserError):
        cd(**options)
