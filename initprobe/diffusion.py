"""Noise levels, the EDM denoising loss, and samplers as a flat list of functions.

All samplers take a denoiser `net(x, sigma)` and latents `z ~ N(0, I)` and are deterministic
given `z`. Defaults follow EDM: sigma_min 0.002, sigma_max 80, rho 7.
"""

import torch

from .nets.labels import bind

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
    s = sigma.reshape(-1, 1, 1, 1)
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


def _ode(net, z, sigmas, second_order):
    sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    x = z.to(torch.float64) * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - net(x.float(), float(s)).double()) / s
        x_next = x + (s_next - s) * d
        if second_order and s_next > 0:
            d2 = (x_next - net(x_next.float(), float(s_next)).double()) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
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


SAMPLERS = ("heun", "euler", "two-step", "one-step", "generator")


def generator(net, z: torch.Tensor) -> torch.Tensor:
    """The map a student checkpoint was trained as (`net.generator_map`, set by `load_network`
    from the checkpoint: sigma_cond, steps, sigma_mid); D(80 z; 80) for any other network."""
    g = getattr(net, "generator_map", {})
    sigma = g.get("sigma_cond", SIGMA_MAX)
    if g.get("steps", 1) == 2:
        return two_step(net, z, g["sigma_mid"], sigma)
    return one_step(net, z, sigma)


@torch.no_grad()
def generate(net, z: torch.Tensor, sampler: str = "heun", steps: int = 18,
             sigma_mid: float = 2.0, batch: int = 256,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Run a sampler by name over `z` in batches; returns images on z's device. `labels`:
    one-hot class labels [N, label_dim] of a conditional network, one per latent."""
    out = []
    for i, zb in enumerate(z.split(batch)):
        net_b = bind(net, None if labels is None else labels[i * batch:i * batch + len(zb)])
        if sampler == "heun":
            out.append(heun(net_b, zb, steps))
        elif sampler == "euler":
            out.append(euler(net_b, zb, steps))
        elif sampler == "two-step":
            out.append(two_step(net_b, zb, sigma_mid))
        elif sampler == "one-step":
            out.append(one_step(net_b, zb))
        elif sampler == "generator":
            out.append(generator(net_b, zb))
        else:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return torch.cat(out)


def latents(seeds, shape, device=None) -> torch.Tensor:
    """One latent per seed, each drawn from its own generator: image i depends only on seed i."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds]).to(device)
