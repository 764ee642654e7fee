"""Score-based baseline: distribution matching distillation (DMD / VSD gradient), objective `dmd`.

Two score functions of the noised distributions, read off denoisers via
s(x_t, sigma) = (D(x_t, sigma) - x_t) / sigma^2:
- real score: the frozen teacher (never updated, never receives gradients);
- fake score: a full copy of the teacher, trained in `aux_step` with the EDM denoising loss on
  detached generator samples, so it tracks the student's distribution.

Generator update. With x = G(z) and x_t = x + sigma n, the reverse-KL gradient direction on x is
the score difference s_fake(x_t) - s_real(x_t) = (D_fake - D_real)(x_t) / sigma^2 (the same
quantity a ratio estimator provides as grad_x d). Weighting (option `weighting`):
- `dmd` (default; DMD, Yin et al. 2024, eq. 8 with alpha_t = 1 for EDM's VE noising):
  grad = (D_fake - D_real) / mean_pixels |x - D_real|, i.e. sigma^2 (s_fake - s_real) divided by
  the teacher's per-example mean absolute denoising error (clamped at 1e-8);
- `score`: grad = s_fake - s_real, unweighted (equals the `ratio` objective's reverse-KL
  gradient when its estimator is exact).
The loss returned is the surrogate 0.5 ||x - stopgrad(x - grad)||^2 / B, whose gradient with
respect to x is grad / B and flows into the generator through x.

Options (`DMDOptions`): `p_mean`, `p_std` (sigma of the fake-score updates, default EDM's
log-normal), `gen_p_mean`, `gen_p_std` (sigma of the generator updates, default the same),
`weighting`.
A class-conditional run calls the teacher and the fake score (a copy of the conditional teacher)
with the labels the fake batch was generated for. Under the loop's bf16 autocast both denoisers
run in bf16; their outputs are cast to float32 before the difference is taken. The teacher is
held outside the module tree, so checkpoints store only the fake-score network.
"""

import copy
from dataclasses import dataclass

import torch

from ..diffusion import edm_loss, per_image
from ..errors import UserError
from ..nets.labels import bind
from ..options import opt
from .auxnet import SigmaOptions, adam, global_randn, sync_gradients
from .objectives import Objective, Setting

WEIGHTINGS = ("dmd", "score")
NORMALIZER_MIN = 1e-8


@dataclass(frozen=True)
class DMDOptions(SigmaOptions):
    weighting: str = opt("dmd", "dmd: weighting of the score difference, dmd or score", flag="")

    def check(self) -> None:
        super().check()
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"objective option weighting={self.weighting!r} is unknown; choose "
                            f"{' or '.join(WEIGHTINGS)}")


def score_difference(d_fake: torch.Tensor, d_real: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
    """s_fake - s_real from the two denoiser outputs at x_t (the x_t terms cancel)."""
    return (d_fake - d_real) / per_image(sigma) ** 2


def dmd_direction(x: torch.Tensor, d_fake: torch.Tensor, d_real: torch.Tensor,
                  sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """The per-example update direction on x (see the module docstring)."""
    diff = score_difference(d_fake, d_real, sigma)
    if weighting == "score":
        return diff
    norm = (x - d_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(NORMALIZER_MIN)
    return diff * per_image(sigma) ** 2 / norm


class DMD(Objective):
    name = "dmd"
    Options = DMDOptions

    def __init__(self, teacher, options: DMDOptions, setting: Setting,
                 fake_score: torch.nn.Module | None = None):
        super().__init__()
        self.weighting = options.weighting
        self.aux_sigma, self.gen_sigma = options.aux_sigma(), options.gen_sigma()
        teacher.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher.eval())  # not a submodule: not checkpointed
        if fake_score is None:
            fake_score = copy.deepcopy(teacher)
        self.fake_score = fake_score.to(setting.device).train().requires_grad_(True)
        self.opt = adam(self.fake_score.parameters(), setting)

    def aux_step(self, fake, real, g, step, labels=None):
        x = fake.detach()
        sigma = self.aux_sigma.sample(len(x), g, x.device)
        y = None if labels is None else labels.fake
        noise = global_randn(g, tuple(x.shape), x.device)
        loss = edm_loss(bind(self.fake_score, y), x, sigma, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.fake_score)
        self.opt.step()
        return {"fake_score_loss": float(loss.detach())}

    def generator_loss(self, gen, fake, z, real, g, step, labels=None):
        x = fake
        y = None if labels is None else labels.fake
        sigma = self.gen_sigma.sample(len(x), g, x.device)
        with torch.no_grad():
            x_t = x.detach() + per_image(sigma) * global_randn(g, tuple(x.shape), x.device)
            d_real = bind(self.teacher, y)(x_t, sigma).float()
            d_fake = bind(self.fake_score, y)(x_t, sigma).float()
            grad = dmd_direction(x.detach(), d_fake, d_real, sigma, self.weighting)
        loss = 0.5 * (x - (x.detach() - grad)).square().sum() / len(x)
        return loss, {"dmd_grad_norm": float(grad.flatten(1).norm(dim=1).mean())}

    def optimizers(self):
        return {"fake_score": self.opt}
