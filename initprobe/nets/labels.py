"""Class labels for class-conditional networks: one spec language, one helper for every command.

A conditional network (`label_dim > 0`, EDM's class embedding) is called
`net(x, sigma, class_labels)` with one-hot labels [N, label_dim]. Commands name the labels with a
spec (`--labels`):
- `3`: every image gets class 3;
- `0-9`, `1,4,7`, `0-4,9`: a list, cycled over the images (image i gets entry i mod length);
- `uniform`: drawn uniformly, image i's class from its seed alone (`seed_labels`);
- `data`: the images' own labels (analyses of real images).
Without a spec a conditional network gets the images' own labels where there are images
(probes, CKA, spectra), and otherwise labels drawn uniformly per seed (`sample`); an
unconditional network gets none, and giving it a spec is an error.

`bind(net, onehot)` turns a network and its labels into the two-argument denoiser
`D(x, sigma)` that the samplers, losses and feature taps call; analyses that stream images in
batches take the one-hot labels of all images (`cond`) and slice them with `cond_batches`.
"""

import itertools

import torch
import torch.nn.functional as F

from ..errors import UserError

SPECIAL = ("uniform", "data")
LABEL_SEED_OFFSET = 1 << 40  # label draws of seed s use generator seed s + offset (not s: latents)


def label_dim(net) -> int:
    """The network's number of classes; 0 for an unconditional (or foreign) network."""
    cfg = getattr(net, "cfg", None)
    return int(getattr(cfg, "label_dim", 0) or 0)


def parse_labels(spec: str, num_classes: int) -> list[int] | str:
    """A spec -> a list of classes (each checked against `num_classes`) or 'uniform'/'data'."""
    spec = str(spec).strip()
    if spec in SPECIAL:
        return spec
    out = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise UserError(f"bad --labels {spec!r}; write a class like 3, a range like 0-9, a list "
                        f"like 1,4,7, or uniform") from None
    if not out:
        raise UserError(f"--labels {spec!r} names no class; write e.g. 0-{num_classes - 1}")
    bad = sorted({c for c in out if not 0 <= c < num_classes})
    if bad:
        raise UserError(f"--labels {spec!r}: class {bad[0]} is out of range; this network has "
                        f"{num_classes} classes (0-{num_classes - 1})")
    return out


def seed_labels(seeds, probs: torch.Tensor) -> torch.Tensor:
    """One class per seed drawn from `probs` (class frequencies) with that seed's own generator,
    so image i's label, like its latent, depends on its seed alone."""
    probs = probs.double().cpu()
    return torch.tensor([int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(
        int(s) + LABEL_SEED_OFFSET))) for s in seeds], dtype=torch.long)


def class_frequencies(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.long().cpu(), minlength=num_classes).double() / len(labels)


def class_labels(net, spec: str | None, seeds=None, own: torch.Tensor | None = None,
                 what: str = "--labels") -> torch.Tensor | None:
    """Integer labels [N] for the images a network sees (None for an unconditional network).

    `seeds`: the latent seeds of generated images; `own`: the labels of real images (the default
    for a conditional network when given). One-line `UserError`s for a spec given to an
    unconditional network, a class out of range, and `data` without images."""
    dim = label_dim(net)
    if not dim:
        if spec is not None:
            raise UserError(f"{what} {spec}: this network is unconditional (no class "
                            f"embedding); leave {what} out or pass a class-conditional network")
        return None
    n = len(own) if own is not None else len(list(seeds))
    parsed = parse_labels(spec, dim) if spec is not None else ("data" if own is not None
                                                               else "uniform")
    if parsed == "data":
        if own is None:
            raise UserError(f"{what} data: generated images have no labels of their own; give "
                            f"classes like 0-{dim - 1} or uniform")
        if int(own.max()) >= dim:
            raise UserError(f"{what} data: the images' class {int(own.max())} is out of range; "
                            f"this network has {dim} classes")
        return own.long().cpu()
    if parsed == "uniform":
        if seeds is None:
            seeds = range(n)
        return seed_labels(seeds, torch.ones(dim))
    return torch.tensor(parsed, dtype=torch.long).repeat(-(-n // len(parsed)))[:n]


def one_hot(labels: torch.Tensor | None, dim: int, device=None) -> torch.Tensor | None:
    if labels is None:
        return None
    return F.one_hot(labels.long(), dim).float().to(device)


def labels_onehot(net, spec: str | None, seeds=None, own: torch.Tensor | None = None,
                  what: str = "--labels", device=None) -> torch.Tensor | None:
    """`class_labels` as the one-hot tensor the network takes (None when unconditional)."""
    return one_hot(class_labels(net, spec, seeds, own, what), label_dim(net), device)


class Bound:
    """A denoiser called with fixed labels: `Bound(net, y)(x, sigma) = net(x, sigma, y)`.
    Other attributes are the network's (e.g. `cfg`)."""

    def __init__(self, net, onehot: torch.Tensor):
        self.net, self.onehot = net, onehot

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.net(x, sigma, class_labels=self.onehot.to(x.device))

    def __getattr__(self, name):
        return getattr(self.__dict__["net"], name)


def bind(net, onehot: torch.Tensor | None):
    """`net` itself without labels, else the labelled two-argument denoiser."""
    return net if onehot is None else Bound(net, onehot)


def cond_batches(cond: torch.Tensor | None, batch: int):
    """The one-hot labels of consecutive image batches of size `batch` (None for each batch of
    an unconditional network)."""
    return itertools.repeat(None) if cond is None else cond.split(batch)
