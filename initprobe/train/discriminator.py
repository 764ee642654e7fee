"""A projected-GAN-style discriminator on frozen features (the offline analogue of GDD's).

    D(x) = mean over scales s of mean over patches of head_s(P_s f_s(x))

- f_s: feature maps at 2-3 scales of a frozen network (a `FeatureTap`):
  `teacher_tap`: the teacher's UNet encoder on the clean image with its noise level set to
  `disc_sigma` (no noise is added, so D is deterministic as in Projected GAN); the output of the
  last block at each encoder resolution, found with `layers.named_blocks`; the decoder never runs.
  `classifier_tap`: the conv body of a domain classifier (`measure.features.classifier`, the
  activation after each conv). It is trained with seed 1, so it is not the seed-0 classifier that
  measures sample quality (features the generator is trained against would flatter the metric).
- P_s: frozen random 1x1 projections (Projected GAN's cross-channel mixing), stored as buffers;
- head_s: the only trainable part, conv3x3 - LeakyReLU(0.2) - conv1x1, one logit per patch.
Class-conditional (`num_classes > 0`): a projection discriminator (Miyato & Koyama 2018) on each
head: logit_s + <embed_s(y), the head's hidden features averaged over positions>, with embed_s a
bias-free Linear on the one-hot label (a class embedding table). The frozen features stay
label-free (a conditional teacher's tap sees no labels: its unconditional, label-dropout mode).
GDD uses ImageNet-pretrained VGG16-BN and EfficientNet features, which are not available offline.
"""

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.layers import named_blocks, parse

CLASSIFIER_SEED = 1


class _Done(Exception):
    """Raised by the last feature hook: the rest of the forward pass is not needed."""


class FeatureTap:
    """A frozen network and the modules whose outputs are the features.

    Calling it returns those outputs (in forward order) and stops the forward pass after the
    last one. It is deliberately not an `nn.Module`: it holds no trainable state, so a
    discriminator's state_dict (and every checkpoint) leaves the frozen network out.
    """

    def __init__(self, net: nn.Module, taps: list[nn.Module],
                 run: Callable[[nn.Module, torch.Tensor], object]):
        self.net = net.eval().requires_grad_(False)
        self.taps, self.run = taps, run

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            feats.append(output)
            if len(feats) == len(self.taps):
                raise _Done

        handles = [m.register_forward_hook(hook) for m in self.taps]
        try:
            self.run(self.net, x)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()
        return feats


def teacher_tap(teacher: nn.Module, sigma: float) -> FeatureTap:
    """A frozen copy of the teacher; features: the last block of each encoder resolution."""
    net = copy.deepcopy(teacher)
    last_per_res: dict[int, nn.Module] = {}
    for name, block in named_blocks(net).items():
        lid = parse(name)
        if lid.side == "enc":
            last_per_res[lid.res] = block
    return FeatureTap(net, list(last_per_res.values()), lambda n, x: n(x, sigma))


def classifier_tap(classifier: nn.Module) -> FeatureTap:
    """A frozen `FeatureNet`; features: the activation after each conv of its body."""
    body = list(classifier.body)
    taps = [body[i + 1] for i, m in enumerate(body) if isinstance(m, nn.Conv2d)]
    return FeatureTap(classifier, taps, lambda n, x: n.body(x))


class Discriminator(nn.Module):
    """Patch heads on frozen, randomly projected features; `forward` returns one logit per image
    (patch logits averaged over positions, then over scales)."""

    def __init__(self, tap: FeatureTap, data_shape: tuple, device, channels: int = 64,
                 seed: int = 0, num_classes: int = 0):
        super().__init__()
        self.tap = tap
        with torch.no_grad():
            shapes = [f.shape for f in tap(torch.zeros(1, *data_shape, device=device))]
        g = torch.Generator().manual_seed(seed)
        for i, s in enumerate(shapes):
            w = torch.randn(channels, s[1], 1, 1, generator=g) / math.sqrt(s[1])
            self.register_buffer(f"proj{i}", w.to(device))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                          nn.Conv2d(channels, 1, 1))
            for _ in shapes).to(device)
        if num_classes:
            self.embeds = nn.ModuleList(nn.Linear(num_classes, channels, bias=False)
                                        for _ in shapes).to(device)

    def projections(self) -> list[torch.Tensor]:
        return [getattr(self, f"proj{i}") for i in range(len(self.heads))]

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per image; `class_labels` (one-hot) for a conditional discriminator."""
        logits = []
        for i, (f, p, head) in enumerate(zip(self.tap(x), self.projections(), self.heads)):
            hidden = head[1](head[0](F.conv2d(f, p.to(f.dtype))))
            logit = head[2](hidden).float().mean(dim=(1, 2, 3))
            if class_labels is not None:
                embed = self.embeds[i](class_labels.to(hidden.dtype))
                logit = logit + (embed * hidden.mean(dim=(2, 3))).float().sum(1)
            logits.append(logit)
        return torch.stack(logits).mean(0)
