"""GDD / D2O's objective: a non-saturating GAN with lazy R1, nothing else (no teacher in the loop).

- D step: softplus(-D(real)) + softplus(D(fake)), batch means;
- every `r1_interval` steps (default 16) the lazy R1 penalty on reals is added:
  (r1_gamma / 2) * E ||grad_x D(x_real)||^2 * r1_interval (scaled by the interval as in
  StyleGAN2's lazy regularization, so its average strength does not depend on the interval);
  it is computed in float32 even under autocast;
- G loss: softplus(-D(G(z))); the discriminator's heads are excluded from its graph.
The discriminator (`initprobe.train.discriminator`) uses `disc_features` ('teacher': the
teacher's encoder at `disc_sigma`; 'classifier': a domain classifier) and `disc_channels` (width
of projections and heads, default 64): `GANOptions`. Adam with the setting's `lr_aux` and
`betas` (default (0, 0.99) as in GDD). A class-conditional run uses the
conditional projection discriminator: reals with their own labels, fakes with the labels they
were generated for. Under torchrun the heads' gradients are averaged
across ranks before each step (`auxnet.sync_gradients`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import load_dataset
from ..errors import UserError
from ..measure.features.classifier import load_or_train
from ..options import opt
from .auxnet import adam, sync_gradients
from .discriminator import CLASSIFIER_SEED, Discriminator, classifier_tap, teacher_tap
from .objectives import Objective, Setting

DISC_FEATURES = ("teacher", "classifier")


@dataclass(frozen=True)
class GANOptions:
    r1_gamma: float = opt(1e-4, "gan: R1 weight")
    r1_interval: int = opt(16, "gan: lazy R1 every N steps")
    disc_sigma: float = opt(0.5, "gan: noise level of the teacher's encoder features")
    disc_features: str = opt("teacher", "gan: teacher or classifier")
    disc_channels: int = opt(64, "gan: width of the discriminator's projections and heads", flag="")

    def check(self) -> None:
        for name in ("r1_gamma", "disc_sigma"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got "
                                f"{getattr(self, name)}")
        if self.r1_gamma < 0:
            raise UserError(f"--r1-gamma must be >= 0, got {self.r1_gamma}")
        if self.r1_interval <= 0:
            raise UserError(f"--r1-interval must be positive, got {self.r1_interval}")
        if self.disc_sigma <= 0:
            raise UserError(f"--disc-sigma must be positive, got {self.disc_sigma}")
        if self.disc_features not in DISC_FEATURES:
            raise UserError(f"unknown --disc-features {self.disc_features!r}; choose one of "
                            f"{', '.join(DISC_FEATURES)}")
        if self.disc_channels < 1:
            raise UserError(f"objective option disc_channels must be positive, got "
                            f"{self.disc_channels}")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's non-saturating loss."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over the batch; `real` must require grad and `real_logits` depend on
    it. The graph is kept, so the penalty can be back-propagated into D."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


class GAN(Objective):
    name = "gan"
    Options = GANOptions

    def __init__(self, teacher, options: GANOptions, setting: Setting):
        super().__init__()
        size = setting.data_shape[-1]
        if options.disc_features == "teacher":
            tap = teacher_tap(teacher, options.disc_sigma)
        else:
            train = load_dataset(setting.data, setting.data_path, size=size)
            test = load_dataset(setting.data, setting.data_path, "test", size=size)
            classifier, _ = load_or_train(train, test, seed=CLASSIFIER_SEED, progress=False)
            tap = classifier_tap(classifier.to(setting.device))
        self.disc = Discriminator(tap, setting.data_shape, setting.device,
                                  channels=options.disc_channels, seed=setting.seed,
                                  num_classes=setting.classes)
        self.r1_gamma, self.r1_interval = options.r1_gamma, options.r1_interval
        self.opt = adam(self.disc.parameters(), setting)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"disc": self.opt}

    def aux_step(self, fake, real, g, step, labels=None):
        y_fake, y_real = labels if labels is not None else (None, None)
        regularize = self.r1_gamma > 0 and step % self.r1_interval == 0
        logs = {}
        if regularize:
            real = real.detach().float().requires_grad_(True)
            # R1 differentiates twice; fused attention kernels (diffusers feature networks) have
            # no second derivative, so this pass uses the plain math implementation.
            with torch.autocast(real.device.type, enabled=False), sdpa_kernel(SDPBackend.MATH):
                real_logits = self.disc(real, y_real)
                r1 = r1_penalty(real_logits, real)
            logs["r1"] = float(r1.detach())
        else:
            real_logits = self.disc(real, y_real)
        fake_logits = self.disc(fake.detach(), y_fake)
        loss = d_loss(real_logits, fake_logits)
        logs.update(loss_d=float(loss.detach()), d_real=float(real_logits.detach().mean()),
                    d_fake=float(fake_logits.detach().mean()))
        if regularize:
            loss = loss + (self.r1_gamma / 2) * self.r1_interval * r1
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(self.disc)
        self.opt.step()
        return logs

    def generator_loss(self, gen, fake, z, real, g, step, labels=None):
        self.disc.requires_grad_(False)
        try:
            loss = g_loss(self.disc(fake, None if labels is None else labels.fake))
        finally:
            self.disc.requires_grad_(True)
        return loss, {"loss_g": float(loss.detach())}
