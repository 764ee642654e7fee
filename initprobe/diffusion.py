"""Noise levels, the EDM denoising loss, and samplers as a flat list of functions.

All samplers take a denoiser `net(x, sigma)` and latents `z ~ N(0, I)` and are deterministic
given `z`. Defaults follow EDM: sigma_min 0.002, sigma_max 80, rho 7.
"""

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from .errors import UserError
from .nets.labels import bind
from .nets.precond import per_image
from .options import opt

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
P_MEAN, P_STD = -1.2, 1.2


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> torch.Tensor:
    """The EDM time grid: n levels from sigma_max down to sigma_min (float64)."""
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (n - 1) * (lo - hi)) ** rho


def sample_sigma(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2)."""
    return (torch.randn(n, generator=generator) * P_STD + P_MEAN).exp().to(device)


def edm_loss(net, images: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's weighted denoising loss, averaged over the batch (per-pixel mean)."""
    s = per_image(sigma)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    denoised = net(images + noise * s, sigma)
    return (weight * (denoised - images) ** 2).mean()


@torch.no_grad()
def heun(net, z: torch.Tensor, steps: int = 18, sigma_min: float = SIGMA_MIN,
         sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """EDM's deterministic 2nd-order sampler (Heun, no churn): 2*steps - 1 evaluations."""
    return _ode(net, z, karras_sigmas(steps, sigma_min, sigma_max, rho), second_order=True)


@torch.no_grad()
def euler(net, z: torch.Tensor, steps: int = 18, sigma_min: float = SIGMA_MIN,
          sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """First-order probability-flow ODE steps on the Karras grid: `steps` evaluations."""
    return _ode(net, z, karras_sigmas(steps, sigma_min, sigma_max, rho), second_order=False)


def heun_step(net, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
              second_order: bool = True) -> torch.Tensor:
    """One step of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from `t` to
    `t_next` (per-image levels, or one level as a 0-d tensor): Euler, plus Heun's correction
    when `second_order` (it needs `t_next` > 0)."""
    t4, n4 = per_image(t), per_image(t_next)
    d = (x - net(x, t)) / t4
    x_next = x + (n4 - t4) * d
    if not second_order:
        return x_next
    d_next = (x_next - net(x_next, t_next)) / n4
    return x + (n4 - t4) * (d + d_next) / 2


def _ode(net, z, sigmas, second_order):
    """The ODE in float64 over `sigmas` and a final 0 (the last step is Euler)."""
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    x = z.to(torch.float64) * sigmas[0]

    def denoise(x, s):
        return net(x.float(), float(s)).double()

    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = heun_step(denoise, x, s, s_next, second_order and bool(s_next > 0))
    return x.float()


def one_step(net, z: torch.Tensor, sigma: float = SIGMA_MAX) -> torch.Tensor:
    """The one-step map G(z) = D(sigma z; sigma) (differentiable: generators train through it)."""
    return net(z * sigma, sigma)


def two_step(net, z: torch.Tensor, sigma_mid: float, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """GDD's two-step map: x1 = D(80 z; 80); x_mid = x1 + (s_mid/80)(80 z - x1);
    out = D(x_mid; s_mid)."""
    x1 = net(z * sigma_max, sigma_max)
    x_mid = x1 + (sigma_mid / sigma_max) * (z * sigma_max - x1)
    return net(x_mid, sigma_mid)


MAP = "Generator map"


@dataclass(frozen=True)
class GeneratorMap:
    """How a student maps latents to images: G(z) = D(s z; s) at s = `sigma_cond`, or with
    `steps=2` GDD's two-step map through `sigma_mid`. A student checkpoint records it
    (`to_meta`) and `nets.io.load_generator` returns it with the network; any other network is
    the default one-step map at sigma 80 (`of_meta`). A map is itself a sampler (`generate`)."""

    sigma_cond: float = opt(SIGMA_MAX, "noise level the generator runs at (G(z) = D(s z; s))",
                            panel=MAP)
    steps: int = opt(1, "1: one-step map; 2: GDD's two-step map", panel=MAP)
    sigma_mid: float = opt(2.0, "intermediate sigma of the two-step map", panel=MAP)

    def __call__(self, net, z: torch.Tensor) -> torch.Tensor:
        if self.steps == 1:
            return one_step(net, z, self.sigma_cond)
        return two_step(net, z, self.sigma_mid, self.sigma_cond)

    def check(self) -> None:
        """UserError naming the option to fix."""
        for name in ("sigma_cond", "sigma_mid"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got "
                                f"{value}")
        if self.sigma_cond <= 0:
            raise UserError(f"--sigma-cond must be positive, got {self.sigma_cond}")
        if self.steps not in (1, 2):
            raise UserError(f"--steps {self.steps}: the generator map has 1 or 2 steps")
        if self.steps == 2 and not 0 < self.sigma_mid < self.sigma_cond:
            raise UserError(f"--sigma-mid {self.sigma_mid} must lie in (0, {self.sigma_cond}) "
                            f"(--sigma-cond)")

    def to_meta(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of_meta(cls, meta: dict) -> "GeneratorMap":
        """The map a checkpoint's metadata records (the default map where it records none)."""
        if meta.get("kind") != "student":
            return cls()
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})


class Generator(NamedTuple):
    """A network and the map it generates with (`nets.io.load_generator`)."""

    net: torch.nn.Module
    map: GeneratorMap = GeneratorMap()

    def to(self, device) -> "Generator":
        return self._replace(net=self.net.to(device))


NAMED_SAMPLERS = ("heun", "euler", "two-step", "one-step")   # what `generate` runs by name
GENERATOR = "generator"   # the command line's name of a checkpoint's own generator map
SAMPLERS = NAMED_SAMPLERS + (GENERATOR,)


def sampler_for(name: str, gen_map: GeneratorMap) -> str | GeneratorMap:
    """The sampler a command-line name stands for: `generator` is the checkpoint's own map
    `gen_map` (`nets.io.load_generator`), any other name itself; UserError for an unknown
    name."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return gen_map if name == GENERATOR else name


@torch.no_grad()
def generate(net, z: torch.Tensor, sampler: str | GeneratorMap = "heun", steps: int = 18,
             sigma_mid: float = 2.0, batch: int = 256,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Run a sampler over `z` in batches: one of `NAMED_SAMPLERS`, or a
    `GeneratorMap` (a student's map z -> image, see `sampler_for`); returns images on z's
    device. `labels`: one-hot class labels [N, label_dim] of a conditional network, one per
    latent."""
    out = []
    for i, zb in enumerate(z.split(batch)):
        net_b = bind(net, None if labels is None else labels[i * batch:i * batch + len(zb)])
        if isinstance(sampler, GeneratorMap):
            out.append(sampler(net_b, zb))
        elif sampler == "heun":
            out.append(heun(net_b, zb, steps))
        elif sampler == "euler":
            out.append(euler(net_b, zb, steps))
        elif sampler == "two-step":
            out.append(two_step(net_b, zb, sigma_mid))
        elif sampler == "one-step":
            out.append(one_step(net_b, zb))
        else:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {NAMED_SAMPLERS} or "
                             f"pass a GeneratorMap (`sampler_for`)")
    return torch.cat(out)


def latents(seeds, shape, device=None) -> torch.Tensor:
    """One latent per seed, each drawn from its own generator: image i depends only on seed i."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device)
