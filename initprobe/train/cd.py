"""Consistency distillation (CD): the instance-level baseline that GDD compares a GAN against.

Song et al. 2023, on EDM's discrete grid t_0 = sigma_max > ... > t_{K-1} = sigma_min (Karras,
rho 7, K = option `scales`, default 18). Each step, per image:
    i ~ U{0, ..., K-2};  x_hi = x_real + t_i eps;
    x_lo = one Heun step of the teacher's probability-flow ODE from t_i to t_{i+1};
    loss = distance(f(x_hi, t_i), stopgrad(f(x_lo, t_{i+1}))),
where f is the generator's denoiser. With GDD's `edm-eps` preconditioning f(x, sigma_min) = x,
so the boundary condition holds by construction and the last pair's target is x_lo itself.
The target network is the current student under stop-gradient (mu = 0, as improved consistency
training recommends), not an EMA copy, so the objective keeps no state of its own.
Options (`CDOptions`): `scales`, `distance`: `l2` (squared, mean over pixels; default) or
`huber` (pseudo-Huber sqrt(||d||^2 + c^2) - c with c = 0.00054 sqrt(dim), per image).
A class-conditional run calls the student and the teacher with the real images' own labels.
The one-step sample stays G(z) = D(sigma_max z; sigma_max) = f(80 z, 80); CD never uses it.
"""

import math
from dataclasses import dataclass

import torch

from ..diffusion import heun_step, karras_sigmas, per_image
from ..errors import UserError
from ..nets.labels import bind
from ..options import opt
from .auxnet import global_randn
from .loop import Dist
from .objectives import Objective, Setting

DISTANCES = ("l2", "huber")


@dataclass(frozen=True)
class CDOptions:
    scales: int = opt(18, "cd: levels of the Karras grid", flag="")
    distance: str = opt("l2", "cd: l2 or huber", flag="")

    def check(self) -> None:
        if self.scales < 2:
            raise UserError(f"objective option scales={self.scales} is too small; use at least "
                            f"2 (default 18)")
        if self.distance not in DISTANCES:
            raise UserError(f"objective option distance={self.distance!r} is unknown; choose "
                            f"one of {', '.join(DISTANCES)}")


@torch.no_grad()
def cd_target(student, teacher, x_hi: torch.Tensor, t_hi: torch.Tensor,
              t_lo: torch.Tensor) -> torch.Tensor:
    """stopgrad(f(x_lo, t_lo)) with x_lo the teacher's Heun step from (x_hi, t_hi)."""
    return student(heun_step(teacher, x_hi, t_hi, t_lo), t_lo)


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Per-image distance between two batches."""
    diff = (a - b).float().flatten(1)
    if kind == "l2":
        return diff.square().mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.square().sum(1) + c * c).sqrt() - c


class ConsistencyDistillation(Objective):
    name = "cd"
    Options = CDOptions

    def __init__(self, teacher, options: CDOptions, setting: Setting):
        super().__init__()
        self.distance = options.distance
        # Kept out of the module tree: the frozen teacher is no state of this objective.
        object.__setattr__(self, "teacher", teacher)
        self.sigmas = karras_sigmas(options.scales).float().to(setting.device)
        self.ddp = Dist()

    def generator_loss(self, gen, fake, z, real, g, step, labels=None):
        n = len(real)
        y = None if labels is None else labels.real
        gen, teacher = bind(gen, y), bind(self.teacher, y)
        i = self.ddp.shard(torch.randint(len(self.sigmas) - 1, (n * self.ddp.world,),
                                         generator=g)).to(real.device)
        t_hi, t_lo = self.sigmas[i], self.sigmas[i + 1]
        x_hi = real + per_image(t_hi) * global_randn(g, real.shape, real.device)
        target = cd_target(gen, teacher, x_hi, t_hi, t_lo)
        loss = distance(gen(x_hi, t_hi), target, self.distance).mean()
        return loss, {"loss_g": float(loss.detach())}
