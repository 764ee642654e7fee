"""Plumbing shared by objectives that train auxiliary networks (ratio estimator, fake score).

- `option`: one objective-specific option from `cfg.objective_options` (values may arrive as
  strings from the command line), with a `UserError` for a bad value;
- `LogNormalSigma`: noise levels with ln(sigma) ~ N(p_mean, p_std^2) (EDM's training
  distribution by default; p_std = 0 gives the fixed level exp(p_mean));
- `global_randn`: draws that respect the loop's determinism contract: every rank draws the
  *global* batch from the step generator and keeps its own slice, so N processes draw exactly
  what one process with the whole batch would;
- `adam`: the auxiliary optimizer (`cfg.lr_aux`, `cfg.betas`);
- `sync_gradients`: averages auxiliary gradients across ranks under torch.distributed (the
  auxiliary networks are not wrapped in DistributedDataParallel).
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..diffusion import P_MEAN, P_STD
from ..errors import UserError

DEFAULT_LR_AUX = 1e-4
DEFAULT_BETAS = (0.0, 0.99)
SIGMA_OPTIONS = ("p_mean", "p_std", "gen_p_mean", "gen_p_std")  # read by LogNormalSigma


def option(cfg, key: str, default, cast=float):
    """`cfg.objective_options[key]` cast to `cast`, or `default` when absent."""
    value = (getattr(cfg, "objective_options", None) or {}).get(key, default)
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise UserError(f"objective option {key}={value!r} is not a valid "
                        f"{cast.__name__}; pass e.g. {key}={default}") from None


def check_options(cfg, known: tuple[str, ...], objective: str):
    """Reject objective options this objective does not read (typos would pass silently)."""
    unknown = sorted(set(getattr(cfg, "objective_options", None) or {}) - set(known))
    if unknown:
        raise UserError(f"objective {objective} has no option {', '.join(unknown)}; "
                        f"its options are {', '.join(known) or 'none'}")


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

    @classmethod
    def from_options(cls, cfg, prefix: str = "") -> "LogNormalSigma":
        """Read `{prefix}p_mean` / `{prefix}p_std`; a prefixed key falls back to the plain one."""
        mean = option(cfg, "p_mean", P_MEAN)
        std = option(cfg, "p_std", P_STD)
        dist_ = cls(option(cfg, f"{prefix}p_mean", mean), option(cfg, f"{prefix}p_std", std))
        if dist_.p_std < 0:
            raise UserError(f"objective option {prefix}p_std must be >= 0, got {dist_.p_std}")
        return dist_


def adam(params, cfg) -> torch.optim.Adam:
    lr = float(getattr(cfg, "lr_aux", DEFAULT_LR_AUX))
    betas = tuple(getattr(cfg, "betas", DEFAULT_BETAS))
    return torch.optim.Adam(params, lr=lr, betas=betas)


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
