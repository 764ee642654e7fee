"""Known answers for the class-ratio objectives on Gaussians, and the tiny-teacher plumbing.

Toy model: p_data = N(0, I), student G(z) = z + mu so p_student = N(mu, I); noised at sigma both
are Gaussians with variance v = 1 + sigma^2 and the exact log ratio is linear:
d*(x) = (x . mu - |mu|^2 / 2) / v, grad_x d* = mu / v.
"""

import copy
import io
import math
import re

import pytest
import torch
from torch import nn

from initprobe.diffusion import one_step
from initprobe.errors import UserError
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.train.objectives import Setting, make_options
from initprobe.train.ratio import ClassRatio, DiffRatio, load_estimator, logistic_loss
from initprobe.train.verifier import best_of_k, importance_resample

SIGMA = 0.5
V = 1 + SIGMA**2


def config(shape, divergence="kl", lr_aux=1e-3, betas=(0.0, 0.99), **options):
    """(options, setting) of a ratio objective for images of `shape` (the diffratio options,
    a superset of the ratio objective's)."""
    return (make_options("diffratio", {"divergence": divergence, **options}),
            Setting(shape, "cpu", lr_aux, betas))


def fixed_sigma(shape, **kw):
    """Options that make every noise level exactly SIGMA (log-normal with zero spread)."""
    return config(shape, p_mean=math.log(SIGMA), p_std=0.0, **kw)


class AnalyticRatio(nn.Module):
    """d*(x) for N(mu, v I) against N(0, v I), with v = 1 + sigma^2 from the noise label."""

    def __init__(self, mu):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32))

    def forward(self, x, sigma):
        v = 1 + torch.as_tensor(sigma, dtype=torch.float32).reshape(-1) ** 2
        return (x.flatten(1) @ self.mu - self.mu.square().sum() / 2) / v

    def spec(self):
        return {"kind": "analytic"}


class LinearRatio(nn.Module):
    """A trainable linear logit w . x + b (the family that contains d* at a fixed sigma)."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma):
        return x.flatten(1) @ self.w + self.b


class Shift(nn.Module):
    """G(z) = z + mu."""

    def __init__(self, mu):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, z):
        return z + self.mu


def gen_grad(obj, mu, n, seed=0):
    """Gradient of the objective's generator surrogate w.r.t. the shift mu of G(z) = z + mu."""
    gen = Shift(mu)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mu), 1, 1, generator=g)
    loss, logs = obj.generator_loss(gen, gen(z), z, None, g, 0)
    loss.backward()
    return gen.mu.grad.flatten(), logs


def test_logistic_loss_is_minimized_by_the_analytic_log_ratio():
    mu = torch.tensor([1.0, -0.5])
    g = torch.Generator().manual_seed(1)
    n = 200_000
    fake = torch.randn(n, 2, generator=g) * math.sqrt(V) + mu
    real = torch.randn(n, 2, generator=g) * math.sqrt(V)

    def loss(w, b):
        return float(logistic_loss(fake @ w + b, real @ w + b))

    w, b = mu / V, -mu.square().sum() / (2 * V)
    best = loss(w, b)
    for dw, db in [(0.2, 0.0), (-0.2, 0.0), (0.0, 0.2), (0.0, -0.2)]:
        assert loss(w * (1 + dw), b + db) > best + 1e-4


def test_estimator_trained_with_aux_step_approaches_the_analytic_ratio():
    mu = torch.tensor([1.0, -0.5])
    est = LinearRatio(2)
    obj = ClassRatio(nn.Linear(1, 1), *fixed_sigma((2, 1, 1), lr_aux=0.02, betas=(0.9, 0.999)),
                     estimator=est)
    g = torch.Generator().manual_seed(2)
    for step in range(400):
        fake = torch.randn(1024, 2, 1, 1, generator=g) + mu.reshape(1, 2, 1, 1)
        real = torch.randn(1024, 2, 1, 1, generator=g)
        logs = obj.aux_step(fake, real, g, step)
    assert torch.allclose(est.w.detach(), mu / V, atol=0.06)
    assert abs(float(est.b.detach()) + float(mu.square().sum()) / (2 * V)) < 0.06
    assert logs["d_fake"] > 0 > logs["d_real"]


def test_kl_generator_gradient_equals_analytic_reverse_kl_gradient():
    # KL(N(mu, v) || N(0, v)) = |mu|^2 / (2 v): gradient mu / v, for every sample exactly.
    mu = [0.8, -0.3]
    est = AnalyticRatio(mu)
    obj = ClassRatio(nn.Linear(1, 1), *fixed_sigma((2, 1, 1)), estimator=est)
    grad, logs = gen_grad(obj, mu, 64)
    assert torch.allclose(grad, torch.tensor(mu) / V, rtol=1e-5)
    assert logs["h_mean"] == 1.0
    assert est.mu.grad is None  # the estimator is held fixed by the generator loss


def js_divergence(mu: float) -> float:
    """D_f(N(mu, v) || N(0, v)) with f(u) = u log u - (1 + u) log((1 + u) / 2), by quadrature."""
    x = torch.linspace(-15, 15, 60_001, dtype=torch.float64)
    sd = math.sqrt(V)
    p = torch.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    q = torch.exp(-0.5 * (x / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    integrand = p * torch.log(p / q) - (p + q) * torch.log((p + q) / (2 * q))
    return float(torch.trapezoid(integrand, x))


def test_js_generator_gradient_matches_the_js_divergence_derivative():
    mu, eps = 1.2, 1e-3
    analytic = (js_divergence(mu + eps) - js_divergence(mu - eps)) / (2 * eps)
    obj_js = ClassRatio(nn.Linear(1, 1), *fixed_sigma((1, 1, 1), divergence="js"),
                        estimator=AnalyticRatio([mu]))
    grad_js, logs = gen_grad(obj_js, [mu], 200_000)
    assert float(grad_js) == pytest.approx(analytic, rel=0.01)
    # JS down-weights samples the estimator finds unlike data (h = sigmoid(-d) < 1): a smaller
    # step than reverse KL's mu / v.
    assert 0 < float(grad_js) < mu / V
    assert 0 < logs["h_mean"] < 1


def test_best_of_k_keeps_the_smallest_logit_per_group():
    class SumLogit(nn.Module):
        def forward(self, x, sigma):
            assert sigma == 0.05
            return x.flatten(1).sum(1)

    z = torch.randn(6, 4, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    chosen, d = best_of_k(lambda zb: 2 * zb, SumLogit(), z, 0.05, batch=5)
    assert d.shape == (6, 4)
    expect = 2 * z[torch.arange(6), (2 * z).flatten(2).sum(2).argmin(1)]
    assert torch.equal(chosen, expect)
    assert torch.allclose(d.min(1).values, chosen.flatten(1).sum(1))


def test_importance_resampling_follows_exp_minus_d():
    samples = torch.arange(5.0).reshape(5, 1, 1, 1)
    logit = AnalyticRatio([1.0])  # at sigma 0: d = x - 1/2, so P(i) ∝ exp(-i)
    out, idx, p = importance_resample(samples, logit, 0.0, 40_000,
                                      torch.Generator().manual_seed(3))
    expect = torch.softmax(-torch.arange(5.0, dtype=torch.float64), 0)
    assert torch.allclose(p, expect)
    freq = torch.bincount(idx, minlength=5).double() / 40_000
    assert torch.allclose(freq, expect, atol=0.01)
    assert torch.equal(out.flatten(), idx.float())
    assert out.mean() < samples.mean()


def tiny_teacher():
    torch.manual_seed(0)
    teacher = Denoiser(UNetConfig())
    with torch.no_grad():  # move every weight off its (partly zero) default init
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return teacher.eval().requires_grad_(False)


@pytest.mark.parametrize("cls", [ClassRatio, DiffRatio])
def test_tiny_teacher_gradients_reach_only_their_intended_parameters(cls):
    teacher = tiny_teacher()
    before = copy.deepcopy(teacher.state_dict())
    obj = cls(teacher, *config((1, 8, 8), lr_aux=1e-2))
    est0 = copy.deepcopy(obj.estimator.state_dict())
    gen = copy.deepcopy(teacher).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    z, real = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g).tanh()
    with torch.no_grad():
        fake = one_step(gen, z)
    logs = obj.aux_step(fake, real, g, 0)
    assert math.isfinite(logs["ratio_loss"])
    changed = [k for k, v in obj.estimator.state_dict().items() if not torch.equal(v, est0[k])]
    assert "head.out.weight" in changed
    obj.estimator.zero_grad(set_to_none=True)

    loss, logs = obj.generator_loss(gen, one_step(gen, z), z, real, g, 0)
    loss.backward()
    assert all(p.grad is None for p in obj.estimator.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gen.parameters() if p.grad is not None) > 0
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_class_ratio_estimator_starts_from_the_teacher_encoder():
    teacher = tiny_teacher()
    est = ClassRatio(teacher, *config((1, 8, 8))).estimator
    t = teacher.model.state_dict()
    mine = est.state_dict()
    assert any(k.startswith("dec.4x4_in") for k in mine)
    assert not any(k.startswith("dec.8x8") for k in mine)
    for k, v in mine.items():
        if not k.startswith("head."):
            assert torch.equal(v, t[k]), k
    assert torch.equal(est(torch.randn(3, 1, 8, 8), 1.0), torch.zeros(3))  # zero head: d = 0


def test_diffratio_network_is_much_smaller_than_class_ratio():
    teacher = tiny_teacher()
    small = DiffRatio(teacher, *config((1, 8, 8))).param_ratio()
    large = ClassRatio(teacher, *config((1, 8, 8))).param_ratio()
    assert small < 0.06 and small < large / 5


def test_estimator_round_trips_through_the_objective_state():
    teacher = tiny_teacher()
    for cls in (ClassRatio, DiffRatio):
        obj = cls(teacher, *config((1, 8, 8), lr_aux=1e-2))
        g = torch.Generator().manual_seed(0)
        obj.aux_step(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), g, 0)
        buf = io.BytesIO()
        torch.save(obj.aux_state(), buf)
        buf.seek(0)
        net = load_estimator(torch.load(buf, weights_only=True))
        x = torch.randn(2, 1, 8, 8)
        assert torch.allclose(net(x, 0.3), obj.estimator(x, 0.3))


def test_bad_options_are_user_errors():
    teacher = tiny_teacher()
    with pytest.raises(UserError, match="divergence"):
        ClassRatio(teacher, *config((1, 8, 8), divergence="tv"))
    with pytest.raises(UserError, match="no option p_meen"):
        DiffRatio(teacher, *config((1, 8, 8), p_meen=1.0))
    with pytest.raises(UserError, match="ratio_channels"):
        DiffRatio(teacher, *config((1, 8, 8), ratio_channels="wide"))
    with pytest.raises(UserError, match="no ratio estimator"):
        load_estimator({"modules": {}})


@pytest.mark.parametrize("arch,named", [
    (dict(model_type="DhariwalUNet", model_channels=32, attn_resolutions=[]), "teacher is ADM"),
    (dict(encoder_type="residual"), "teacher is NCSN++ (encoder_type 'residual')"),
])
def test_ratio_refuses_a_teacher_without_a_ddpmpp_encoder(arch, named):
    teacher = Denoiser(UNetConfig(**arch))
    with pytest.raises(UserError, match=re.escape(named)):
        ClassRatio(teacher, *config((1, 8, 8)))
    assert DiffRatio(teacher, *config((1, 8, 8))).param_ratio() > 0
