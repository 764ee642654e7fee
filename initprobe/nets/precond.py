"""EDM preconditioning: the denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).

Two variants for networks trained here (sigma_data = 0.5):
- `edm`: Karras et al. 2022. c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
  c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4.
- `edm-eps`: the epsilon-shifted variant of GDD/D2O (eps = 0.002) with D(x; eps) = x:
  c_skip = sd^2 / ((s - eps)^2 + sd^2), c_out = (s - eps) sd / sqrt(s^2 + sd^2); c_in and c_noise
  as in `edm`.
Two more, only so that official EDM checkpoints trained with them evaluate faithfully (EDM's
VPPrecond/VEPrecond with their default schedules; `initprobe.nets.edm_pickle`):
- `vp`: c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) t(s) with
  t(s) = (sqrt(beta_min^2 + 2 beta_d ln(1 + s^2)) - beta_min) / beta_d, beta_d = 19.9,
  beta_min = 0.1, M = 1000;
- `ve`: c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2).

A class-conditional network (`label_dim > 0`) is called as EDM's are: `net(x, sigma,
class_labels)` with one-hot labels [N, label_dim] (or [1, label_dim], shared); without labels it
sees all-zero labels, as EDM's preconditioning wrappers pass.
"""

import torch
from torch import nn

from .adm import DhariwalUNet
from .unet import UNet, UNetConfig

SIGMA_DATA = 0.5
EPS_SHIFT = 0.002
VP_BETA_D, VP_BETA_MIN, VP_M = 19.9, 0.1, 1000
PRECONDS = ("edm", "edm-eps", "vp", "ve")


def per_image(sigma: torch.Tensor) -> torch.Tensor:
    """Per-image noise levels [N] as [N, 1, 1, 1], to broadcast over images."""
    return sigma.reshape(-1, 1, 1, 1)


def levels(sigma, x: torch.Tensor) -> torch.Tensor:
    """`sigma` (a number, or one level per image) as float32 [N, 1, 1, 1] for the images `x`."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return per_image(sigma).expand(x.shape[0], 1, 1, 1)


def coefficients(sigma: torch.Tensor, kind: str = "edm", sigma_data: float = SIGMA_DATA,
                 eps: float = EPS_SHIFT):
    """Return (c_skip, c_out, c_in, c_noise) for a tensor of noise levels."""
    s, sd = sigma, sigma_data
    if kind == "vp":
        t = ((VP_BETA_MIN**2 + 2 * VP_BETA_D * (1 + s**2).log()).sqrt() - VP_BETA_MIN) / VP_BETA_D
        return torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt(), (VP_M - 1) * t
    if kind == "ve":
        return torch.ones_like(s), s, torch.ones_like(s), (0.5 * s).log()
    if kind == "edm":
        shifted = s
        c_skip = sd**2 / (s**2 + sd**2)
    elif kind == "edm-eps":
        shifted = s - eps
        c_skip = sd**2 / (shifted**2 + sd**2)
    else:
        raise ValueError(f"unknown preconditioning {kind!r}; choose one of {PRECONDS}")
    c_out = shifted * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + s**2).sqrt()
    c_noise = s.log() / 4
    return c_skip, c_out, c_in, c_noise


class Denoiser(nn.Module):
    """D(x; sigma) around a UNet `model` (attribute name as in EDM's EDMPrecond)."""

    def __init__(self, cfg: UNetConfig, precond: str = "edm", sigma_data: float = SIGMA_DATA):
        super().__init__()
        if precond not in PRECONDS:
            raise ValueError(f"unknown preconditioning {precond!r}; choose one of {PRECONDS}")
        self.precond, self.sigma_data = precond, sigma_data
        self.model = DhariwalUNet(cfg) if cfg.model_type == "DhariwalUNet" else UNet(cfg)

    @property
    def cfg(self) -> UNetConfig:
        return self.model.cfg

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        c_skip, c_out, c_in, c_noise = coefficients(levels(sigma, x), self.precond,
                                                    self.sigma_data)
        labels, dim = None, self.cfg.label_dim
        if dim:
            labels = (torch.zeros(1, dim, device=x.device) if class_labels is None
                      else class_labels.to(device=x.device, dtype=torch.float32).reshape(-1, dim))
        f = self.model((c_in * x).to(x.dtype), c_noise.flatten(), labels)
        return c_skip * x + c_out * f.to(x.dtype)

