"""Plumbing shared by objectives that train auxiliary networks (ratio estimator, fake score).

- `SigmaOptions`: the options of the noise levels an objective trains at (EDM's log-normal by
  default), one `LogNormalSigma` for the auxiliary updates and one for the generator updates;
- `LogNormalSigma`: noise levels with ln(sigma) ~ N(p_mean, p_std^2) (p_std = 0 gives the fixed
  level exp(p_mean));
- `global_randn`: draws that respect the loop's determinism contract: every rank draws the
  *global* batch from the step generator and keeps its own slice, so N processes draw exactly
  what one process with the whole batch would;
- `adam`: the auxiliary optimizer (the setting's `lr_aux` and `betas`);
- `sync_gradients`: averages auxiliary gradients across ranks under torch.distributed (the
  auxiliary networks are not wrapped in DistributedDataParallel).
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..diffusion import P_MEAN, P_STD
from ..errors import UserError
from ..options import opt


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def global_randn(g: torch.Generator, shape: tuple[int, ...], device) -> torch.Tensor:
    """N(0, 1) draws of local shape `shape`: the global batch is drawn, this rank's slice kept."""
    rank, world = _world()
    n = shape[0]
    full = torch.randn(n * world, *shape[1:], generator=g)
    return full[rank * n:(rank + 1) * n].to(device)


@dataclass(frozen=True)
class LogNormalSigma:
    p_mean: float = P_MEAN
    p_std: float = P_STD

    def sample(self, n: int, g: torch.Generator, device) -> torch.Tensor:
        """`n` noise levels (this rank's slice of the global draw)."""
        return (global_randn(g, (n,), device) * self.p_std + self.p_mean).exp()


@dataclass(frozen=True)
class SigmaOptions:
    """Noise levels of the auxiliary updates (`p_mean`, `p_std`) and of the generator updates
    (`gen_p_mean`, `gen_p_std`; unset: the same as the auxiliary ones)."""

    p_mean: float = opt(P_MEAN, "ln-sigma mean of the auxiliary network's updates", flag="")
    p_std: float = opt(P_STD, "ln-sigma std of the auxiliary network's updates", flag="")
    gen_p_mean: float | None = opt(None, "ln-sigma mean of the generator updates (default "
                                         "p_mean)", flag="")
    gen_p_std: float | None = opt(None, "ln-sigma std of the generator updates (default "
                                        "p_std)", flag="")

    def check(self) -> None:
        for name in ("p_std", "gen_p_std"):
            if (getattr(self, name) or 0) < 0:
                raise UserError(f"objective option {name} must be >= 0, got "
                                f"{getattr(self, name)}")

    def aux_sigma(self) -> LogNormalSigma:
        return LogNormalSigma(self.p_mean, self.p_std)

    def gen_sigma(self) -> LogNormalSigma:
        return LogNormalSigma(self.p_mean if self.gen_p_mean is None else self.gen_p_mean,
                              self.p_std if self.gen_p_std is None else self.gen_p_std)


def adam(params, setting) -> torch.optim.Adam:
    """The auxiliary networks' Adam (`setting`: the objective's `objectives.Setting`)."""
    return torch.optim.Adam(params, lr=setting.lr_aux, betas=setting.betas)


def sync_gradients(module: torch.nn.Module):
    """All-reduce-average the gradients of `module` when several processes train."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.requires_grad:
            if p.grad is None:  # every rank must join every all-reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)
