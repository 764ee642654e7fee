"""The feature networks sample quality is measured on, behind one interface.

- `classifier`: the domain classifier of `features.py` (128-d penultimate features). It also
  labels samples, so class coverage (mode collapse) can be measured. Its distances are named
  `fd_classifier` and `kid_classifier`: a Frechet distance on a network other than Inception-v3
  is not FID.
- `inception`: the FID Inception-v3 (2048-d pool features) from a local weights file
  (`inception.py`). Its distances are named `fid` and `kid`.

`Extractor.key` is a hash of the network's weights, so statistics cached for one network are
never reused for another.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...data import Dataset
from ...errors import UserError

NETWORKS = ("classifier", "inception")


def weights_hash(module: nn.Module) -> str:
    """16 hex digits of sha256 over the names and bytes of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Extractor:
    """A feature network: `net` maps images [N, C, H, W] in [-1, 1] to features [N, d];
    `head` (classifier only) maps features to class logits."""

    name: str
    net: nn.Module
    key: str
    head: nn.Module | None = None
    num_classes: int | None = None

    @property
    def fd_metric(self) -> str:
        return "fid" if self.name == "inception" else f"fd_{self.name}"

    @property
    def kid_metric(self) -> str:
        return "kid" if self.name == "inception" else f"kid_{self.name}"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Extractor":
        self.net.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(features [N, d] float64 on the CPU, predicted labels [N] or None, the classifier's
        confidence in them (largest softmax probability) [N] or None)."""
        f = self.net(images.to(self.device, torch.float32))
        if self.head is None:
            return f.double().cpu(), None, None
        conf, labels = self.head(f).float().softmax(1).max(1)
        return f.double().cpu(), labels.cpu(), conf.double().cpu()


def classifier_extractor(train: Dataset, test: Dataset | None = None, steps: int | None = None,
                         progress: bool = True) -> Extractor:
    """The cached domain classifier for `train` (trained on first use, for `steps` steps;
    default `classifier.STEPS`), scored on `test`."""
    from .classifier import STEPS, load_or_train
    fnet, meta = load_or_train(train, test, steps=STEPS if steps is None else steps,
                               progress=progress)
    return Extractor("classifier", fnet.body, weights_hash(fnet), fnet.head, meta["num_classes"])


def inception_extractor(weights: str | Path | None) -> Extractor:
    """The FID Inception-v3 from a local file; UserError naming `--inception-weights` without
    one."""
    from .inception import FORMATS, load_inception
    if weights is None:
        raise UserError(f"--network inception needs --inception-weights PATH: a local copy of "
                        f"{FORMATS} (initprobe never downloads weights)")
    net = load_inception(weights)
    return Extractor("inception", net, weights_hash(net))


def make_extractor(network: str, train: Dataset, test: Dataset | None = None,
                   inception_weights: str | Path | None = None) -> Extractor:
    """The feature network `network` (`classifier` or `inception`)."""
    if network == "classifier":
        return classifier_extractor(train, test)
    if network == "inception":
        return inception_extractor(inception_weights)
    raise UserError(f"unknown feature network {network!r}; choose one of {', '.join(NETWORKS)}")
