"""Score-free one-step training with a learned density ratio: objectives `ratio` and `diffratio`.

Estimator. A noise-conditional network d(x_t, sigma) is trained with the logistic loss to tell
noised student samples (label 1, logit d) from noised real data (label 0):

    L = E[softplus(-d(x_fake + sigma n, sigma))] + E[softplus(d(x_real + sigma n', sigma))],

sigma drawn per example (default EDM's log-normal, ln sigma ~ N(-1.2, 1.2^2)). The minimizer
satisfies sigmoid(d) = p_s / (p_s + p_d) at every sigma, i.e. d = log p_student_t - log p_data_t,
so grad_x d = score_student - score_data: the score difference that DMD/VSD obtain from two
score networks, here without a teacher score.

Generator update (f-divergence family, seed paper 2502.08005; weights *reconstructed*). For
D_f(p_s || p_d) = E_{p_d}[f(p_s / p_d)] and x = G_theta(z), the pathwise gradient is

    grad_theta D_f = E_z[ f''(u) u * grad_x d(x_t) * dx_t/dtheta ],   u = p_s / p_d = exp(d),

(the term from the student's own score vanishes in expectation). Writing r = exp(-d) = 1/u:
- reverse KL, f(u) = u log u: f''(u) u = 1, so h = 1;
- Jensen-Shannon, f(u) = u log u - (1+u) log((1+u)/2): f''(u) u = 1/(1+u) = r/(1+r), so
  h = sigmoid(-d) (the seed's DiJS; the usual JS factor 1/2 is dropped).
The surrogate is mean_i h_i d(x_t,i) with h and the estimator held fixed: g = grad_{x_t} of
sum_i h_i d_i / B is computed by `autograd.grad` with respect to a detached copy of x_t (the
estimator's parameters never accumulate gradients), and the loss returned to the loop is
(stopgrad(g) * x_t).sum(), whose gradient reaches the generator through x_t = G(z) + sigma n.

Objectives (see `initprobe.nets.ratio_estimators` for the networks):
- `ratio` (`ClassRatio`): the estimator is the teacher's encoder + bottleneck with a new head,
  initialized from the teacher's weights;
- `diffratio` (`DiffRatio`): the same training with a lightweight, randomly initialized ratio
  network (default width max(8, teacher width / 4); a few percent of the teacher's parameters);
  the DiffRatio paper uses reverse KL (`--divergence kl`, the default).

Class-conditional runs (the setting's `classes`): the estimator is d(x_t, sigma, y), trained on
noised fakes with the labels they were generated for and noised reals with their own labels, so
it estimates log p_student(x_t | y) - log p_data(x_t | y); the generator update uses the fakes'
labels.

Learning rate: on digits the other objectives' `--lr-aux 1e-4` leaves the estimator near chance
for hundreds of steps while Adam still moves the generator at full step size along its small,
noisy gradient; `--lr-aux 1e-3` (these objectives' default) trained both objectives well in
400-step digits runs.

Options (`RatioOptions`, `DiffRatioOptions`): `divergence`; `p_mean`, `p_std` (sigma of the
estimator updates), `gen_p_mean`, `gen_p_std` (sigma of the generator updates, default the same);
`diffratio` also `ratio_channels` (base width of the lightweight network).
Under the loop's bf16 autocast the estimator runs in bf16; logits are cast to float32 before
the loss and the weights. The estimator's architecture is stored in the objective state
(`aux_state()["estimator_spec"]`), so a checkpoint's ratio network can be rebuilt without the
teacher (`load_estimator`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..diffusion import per_image
from ..errors import UserError
from ..nets.precond import Denoiser
from ..nets.ratio_estimators import (
    EncoderRatio,
    LiteRatio,
    RatioEstimator,
    build_estimator,
    count_parameters,
)
from ..options import opt
from .auxnet import LogNormalSigma, SigmaOptions, adam, global_randn, sync_gradients
from .loop import read_state
from .objectives import Objective, Setting

DIVERGENCES = ("kl", "js")


@dataclass(frozen=True)
class RatioOptions(SigmaOptions):
    divergence: str = opt("kl", "ratio objectives: kl or js")

    def check(self) -> None:
        super().check()
        if self.divergence not in DIVERGENCES:
            raise UserError(f"unknown --divergence {self.divergence!r}; choose "
                            f"{' or '.join(DIVERGENCES)}")


@dataclass(frozen=True)
class DiffRatioOptions(RatioOptions):
    ratio_channels: int | None = opt(None, "diffratio: base width of the ratio network "
                                           "(default max(8, teacher width / 4))", flag="")

    def check(self) -> None:
        super().check()
        if self.ratio_channels is not None and self.ratio_channels < 4:
            raise UserError(f"objective option ratio_channels must be >= 4, got "
                            f"{self.ratio_channels}")


def logistic_loss(d_fake: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """Fake is class 1 with logit d, real is class 0; minimized by d = log p_fake - log p_real."""
    return F.softplus(-d_fake).mean() + F.softplus(d_real).mean()


def divergence_weight(d: torch.Tensor, divergence: str) -> torch.Tensor:
    """h(r) with r = exp(-d): 1 for reverse KL, sigmoid(-d) = r / (1 + r) for Jensen-Shannon."""
    if divergence == "kl":
        return torch.ones_like(d)
    if divergence == "js":
        return torch.sigmoid(-d)
    raise ValueError(f"unknown divergence {divergence!r}")


class RatioObjective(Objective):
    """Estimator training and the f-divergence generator update; subclasses pick the network."""

    Options = RatioOptions
    lr_aux = 1e-3

    def __init__(self, estimator: RatioEstimator, teacher, options: RatioOptions,
                 setting: Setting):
        super().__init__()
        self.teacher_params = count_parameters(teacher)
        self.divergence = options.divergence
        self.aux_sigma, self.gen_sigma = options.aux_sigma(), options.gen_sigma()
        self.estimator = estimator.to(setting.device).train()
        self.opt = adam(self.estimator.parameters(), setting)

    def noised(self, x: torch.Tensor, dist: LogNormalSigma, g: torch.Generator):
        sigma = dist.sample(len(x), g, x.device)
        return x + per_image(sigma) * global_randn(g, tuple(x.shape), x.device), sigma

    def aux_step(self, fake, real, g, step, labels=None):
        y_fake, y_real = labels if labels is not None else (None, None)
        fake_t, sigma_f = self.noised(fake.detach(), self.aux_sigma, g)
        real_t, sigma_r = self.noised(real, self.aux_sigma, g)
        d_fake = self.logit(fake_t, sigma_f, y_fake).float()
        d_real = self.logit(real_t, sigma_r, y_real).float()
        loss = logistic_loss(d_fake, d_real)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.estimator)
        self.opt.step()
        acc = 0.5 * ((d_fake > 0).float().mean() + (d_real < 0).float().mean())
        return {"ratio_loss": float(loss.detach()), "d_fake": float(d_fake.detach().mean()),
                "d_real": float(d_real.detach().mean()), "ratio_acc": float(acc)}

    def generator_loss(self, gen, fake, z, real, g, step, labels=None):
        x_t, sigma = self.noised(fake, self.gen_sigma, g)
        grad, d, h = self.weighted_grad(x_t.detach(), sigma,
                                        None if labels is None else labels.fake)
        surrogate = (grad * x_t).sum()
        return surrogate, {"d_gen": float(d.mean()), "h_mean": float(h.mean()),
                           "grad_norm": float(grad.flatten(1).norm(dim=1).mean() * len(x_t))}

    def weighted_grad(self, x_t: torch.Tensor, sigma: torch.Tensor,
                      class_labels: torch.Tensor | None = None):
        """grad_x of mean_i h_i d(x_t,i) with h held fixed, plus d and h (all detached)."""
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            d = self.logit(x, sigma, class_labels).float()
            h = divergence_weight(d.detach(), self.divergence)
            (grad,) = torch.autograd.grad((h * d).sum() / len(x), x)
        return grad, d.detach(), h

    def logit(self, x_t: torch.Tensor, sigma: torch.Tensor,
              class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """d(x_t, sigma), or d(x_t, sigma, y) in a class-conditional run."""
        if class_labels is None:
            return self.estimator(x_t, sigma)
        return self.estimator(x_t, sigma, class_labels)

    def optimizers(self):
        return {"estimator": self.opt}

    def param_ratio(self) -> float:
        """Estimator parameters as a fraction of the teacher's."""
        return count_parameters(self.estimator) / self.teacher_params

    def aux_state(self) -> dict:
        return {**super().aux_state(), "estimator_spec": self.estimator.spec()}


def _needs_unet(teacher, name: str):
    if not isinstance(teacher, Denoiser):
        raise UserError(f"objective {name} builds its estimator from initprobe's UNet layout; use "
                        f"an initprobe or EDM teacher, or the objective gan, dmd or cd")


class ClassRatio(RatioObjective):
    """Objective `ratio`: estimator = teacher encoder + bottleneck (teacher weights) + new head."""

    name = "ratio"

    def __init__(self, teacher, options: RatioOptions, setting: Setting,
                 estimator: RatioEstimator | None = None):
        if estimator is None:
            _needs_unet(teacher, self.name)
            cfg_t = teacher.cfg
            if (cfg_t.model_type, cfg_t.encoder_type) != ("SongUNet", "standard"):
                what = ("ADM" if cfg_t.model_type == "DhariwalUNet"
                        else f"NCSN++ (encoder_type {cfg_t.encoder_type!r})")
                raise UserError(f"objective ratio copies a DDPM++ encoder, and this teacher is "
                                f"{what}; use the objective diffratio, gan, dmd or cd")
            estimator = EncoderRatio.from_denoiser(teacher)
        super().__init__(estimator, teacher, options, setting)


class DiffRatio(RatioObjective):
    """Objective `diffratio`: a lightweight, randomly initialized ratio network."""

    name = "diffratio"
    Options = DiffRatioOptions

    def __init__(self, teacher, options: DiffRatioOptions, setting: Setting,
                 estimator: RatioEstimator | None = None):
        if estimator is None:
            _needs_unet(teacher, self.name)
            channels = options.ratio_channels
            if channels is None:
                channels = max(8, teacher.cfg.model_channels // 4)
            c, res, _ = setting.data_shape
            estimator = LiteRatio(c, res, channels, teacher.cfg.channel_mult, setting.classes)
        super().__init__(estimator, teacher, options, setting)


def load_estimator(aux_state: dict) -> RatioEstimator:
    """Rebuild a trained estimator from a `ratio`/`diffratio` objective state."""
    if "estimator_spec" not in aux_state:
        raise UserError("this checkpoint's objective state holds no ratio estimator; pass a run "
                        "trained with --objective ratio or diffratio")
    net = build_estimator(aux_state["estimator_spec"])
    prefix = "estimator."
    net.load_state_dict({k[len(prefix):]: v for k, v in aux_state["modules"].items()
                         if k.startswith(prefix)})
    return net.eval()


def run_estimator(stem: Path) -> RatioEstimator:
    """The trained estimator of a `ratio`/`diffratio` checkpoint `stem` (its `.state.pt`'s
    objective state)."""
    state = read_state(stem, ("aux",), "use a checkpoint with its .state.pt beside it")
    return load_estimator(state["aux"])
