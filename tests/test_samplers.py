import math

import pytest
import torch

from initprobe.diffusion import (
    GeneratorMap,
    euler,
    generate,
    heun,
    karras_sigmas,
    latents,
    one_step,
    sampler_for,
    two_step,
)
from initprobe.errors import UserError


class Gaussian(torch.nn.Module):
    """The exact denoiser of data ~ N(0, v I): D(x; s) = v / (v + s^2) x."""

    def __init__(self, v=0.25):
        super().__init__()
        self.v = v

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.v / (self.v + s**2) * x


def test_karras_grid():
    s = karras_sigmas(18)
    assert len(s) == 18 and math.isclose(s[0], 80) and math.isclose(s[-1], 0.002)
    assert torch.all(s[1:] < s[:-1])


def test_heun_and_euler_converge_at_their_orders_on_the_gaussian_ode():
    """For N(0, v) data the probability-flow ODE is solved exactly by
    x(s) = x(80) sqrt(v + s^2) / sqrt(v + 80^2); Heun's error shrinks ~4x per step doubling
    (second order), Euler's ~2x (first order)."""
    z = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = 80 * z * math.sqrt(0.25) / math.sqrt(0.25 + 80**2)
    err = {(f.__name__, n): float((f(Gaussian(), z, steps=n) - exact).abs().max())
           for f in (heun, euler) for n in (20, 40, 80)}
    assert err["heun", 40] / err["heun", 80] > 3.5
    assert 1.7 < err["euler", 40] / err["euler", 80] < 2.3
    assert err["heun", 80] < 5e-3 < err["euler", 80]


def test_one_and_two_step_maps():
    net = Gaussian()
    z = torch.randn(4, 1, 4, 4)
    assert torch.allclose(one_step(net, z), 0.25 / (0.25 + 6400) * 80 * z)
    x1 = 0.25 / (0.25 + 6400) * 80 * z
    x_mid = x1 + (2.0 / 80) * (80 * z - x1)
    assert torch.allclose(two_step(net, z, 2.0), 0.25 / (0.25 + 4) * x_mid, atol=1e-6)


def test_generate_dispatch_and_latent_seeds():
    net = Gaussian()
    z = latents([3, 1, 2], (1, 4, 4))
    assert torch.equal(z[0], latents([3], (1, 4, 4))[0])  # image i depends only on seed i
    for sampler in ("heun", "euler", "two-step", "one-step"):
        out = generate(net, z, sampler, steps=5, batch=2)
        assert out.shape == z.shape and torch.isfinite(out).all()


def test_a_generator_map_is_a_sampler_and_the_generator_name_resolves_to_it():
    net = Gaussian()
    z = torch.randn(3, 1, 4, 4)
    assert torch.allclose(generate(net, z, GeneratorMap()), one_step(net, z))
    assert torch.allclose(generate(net, z, GeneratorMap(sigma_cond=20.0)), one_step(net, z, 20.0))
    two = GeneratorMap(steps=2, sigma_mid=0.5)
    assert torch.allclose(generate(net, z, two), two_step(net, z, 0.5))
    assert sampler_for("generator", two) is two and sampler_for("heun", two) == "heun"
    with pytest.raises(UserError, match="unknown sampler 'ddim'"):
        sampler_for("ddim", two)
    with pytest.raises(ValueError, match="GeneratorMap"):  # the name alone carries no map
        generate(net, z, "generator")
