"""GDD / D2O's objective: a non-saturating GAN with lazy R1, nothing else (no teacher in the loop).

- D step: softplus(-D(real)) + softplus(D(fake)), batch means;
- every `r1_interval` steps (default 16) the lazy R1 penalty on reals is added:
  (r1_gamma / 2) * E ||grad_x D(x_real)||^2 * r1_interval (scaled by the interval as in
  StyleGAN2's lazy regularization, so its average strength does not depend on the interval);
  it is computed in float32 even under autocast;
- G loss: softplus(-D(G(z))); the discriminator's heads are excluded from its graph.
The discriminator (`initprobe.train.discriminator`) uses `cfg.disc_features` ('teacher': the
teacher's encoder at `cfg.disc_sigma`; 'classifier': a domain classifier) and the objective option
`disc_channels` (width of projections and heads, default 64). Adam with `cfg.lr_aux`,
`cfg.betas` (default (0, 0.99) as in GDD). A class-conditional run (`cfg.labels`) uses the
conditional projection discriminator: reals with their own labels, fakes with the labels they
were generated for. Under torchrun the heads' gradients are averaged
across ranks before each step (`auxnet.sync_gradients`).
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import load_dataset
from ..measure.features.classifier import load_or_train
from ..nets.labels import label_dim
from .auxnet import adam, check_options, option, sync_gradients
from .discriminator import CLASSIFIER_SEED, Discriminator, classifier_tap, teacher_tap
from .objectives import Objective

OPTIONS = ("disc_channels",)


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

    def __init__(self, teacher, cfg, data_shape: tuple, device):
        super().__init__()
        check_options(cfg, OPTIONS, self.name)
        if cfg.disc_features == "teacher":
            tap = teacher_tap(teacher, cfg.disc_sigma)
        else:
            train = load_dataset(cfg.data, cfg.data_path, size=data_shape[-1])
            test = load_dataset(cfg.data, cfg.data_path, "test", size=data_shape[-1])
            classifier, _ = load_or_train(train, test, seed=CLASSIFIER_SEED, progress=False)
            tap = classifier_tap(classifier.to(device))
        channels = option(cfg, "disc_channels", 64, int)
        classes = label_dim(teacher) if getattr(cfg, "labels", False) else 0
        self.disc = Discriminator(tap, data_shape, device, channels=channels, seed=cfg.seed,
                                  num_classes=classes)
        self.r1_gamma, self.r1_interval = cfg.r1_gamma, cfg.r1_interval
        self.opt = adam(self.disc.parameters(), cfg)

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
