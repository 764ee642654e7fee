"""Representation similarity (CKA) of two denoisers on the same noised real images (claim C8).

Both networks see the same inputs y = x + sigma n, with one fixed noise draw per image
(`profiles.fixed_noise`), at the layers a selector names (`profiles.select_layers`; default
`blocks`: the last conv of every block, as the activation probe). Images are processed in
minibatches of nearly equal size; each layer's output is flattened per image and enters
`MinibatchCKA` (unbiased HSIC summed over minibatches), so the number of images is not limited
by memory: memory is O(L b^2) for L layers and minibatch size b.

- `cka_matrix(net_a, net_b, images, sigma, options)`: layer x layer matrix at one noise level,
  rows A's layers, columns B's (the two networks may differ in architecture).
- `cka_diagonal(net_a, net_b, images, options)`: CKA of each layer with the same layer of the
  other network, at every sigma of `options` (default: the 18-level grid of
  `profiles.default_sigmas`).

Long-form tables: run (left empty for the caller to name the pair, e.g. `"A vs B"`), layer (A's
layer, with side/res/block/sublayer), layer_b (B's layer), sigma, metric (`cka_linear` or
`cka_rbf`), value, seed.
"""

import pandas as pd
import torch
from torch import nn

from ...errors import UserError
from ...nets.labels import bind
from ...schema import frame
from ..features.hooks import capture
from ..metrics.cka import MinibatchCKA
from .profiles import ProbeOptions, layer_record, select_layers


def _activations(net: nn.Module, ids: list[str], y: torch.Tensor, sigma: float,
                 cond: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each layer's output on `y` (class labels `cond` for a conditional network), flattened
    per image: [b, features] per layer id."""
    with capture(net, ids) as got:
        bind(net, cond)(y, sigma)
    return [torch.cat([t.flatten(1) for t in got[i]], 1) for i in ids]


def _minibatches(images: torch.Tensor, batch: int) -> list[tuple[int, int]]:
    """(start, stop) of minibatches of nearly equal size <= batch, each of at least 4 images
    (the unbiased HSIC needs n >= 4)."""
    n = len(images)
    if n < 4 or batch < 4:
        raise UserError(f"CKA needs at least 4 images and batch >= 4, got {n} images and batch "
                        f"{batch}; raise --n-images / --batch")
    count = -(-n // batch)
    bounds = [round(i * n / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def _accumulate(net_a, ids_a, net_b, ids_b, images, noise, sigma, batch, kernel,
                cond=(None, None)) -> torch.Tensor:
    mb = MinibatchCKA(kernel)
    for start, stop in _minibatches(images, batch):
        y = images[start:stop] + sigma * noise[start:stop]
        ca, cb = (None if c is None else c[start:stop] for c in cond)
        mb.update(_activations(net_a, ids_a, y, sigma, ca), _activations(net_b, ids_b, y, sigma,
                                                                          cb))
    return mb.compute()


def _inputs(net_a, images, options: ProbeOptions):
    device = next(net_a.parameters()).device
    images = images.to(device)
    return images, options.noise(images)


def cka_matrix(net_a: nn.Module, net_b: nn.Module, images: torch.Tensor, sigma: float = 0.5,
               options: ProbeOptions = ProbeOptions(), kernel: str = "linear",
               cond=(None, None)) -> pd.DataFrame:
    """Layer x layer minibatch CKA at noise level `sigma` (the sigmas of `options` are not
    used); rows in network order (A's layers outer, B's inner); `run` left empty. Both networks
    must be on the same device. `cond`: the one-hot class labels A and B see (None for an
    unconditional network)."""
    ids_a, ids_b = options.layer_ids(net_a), options.layer_ids(net_b)
    images, noise = _inputs(net_a, images, options)
    m = _accumulate(net_a, ids_a, net_b, ids_b, images, noise, float(sigma), options.batch,
                    kernel, cond)
    records = [{**layer_record(a, float(sigma), f"cka_{kernel}", float(m[i, j])), "layer_b": b}
               for i, a in enumerate(ids_a) for j, b in enumerate(ids_b)]
    return frame(records, seed=options.seed)


def cka_diagonal(net_a: nn.Module, net_b: nn.Module, images: torch.Tensor,
                 options: ProbeOptions = ProbeOptions(), kernel: str = "linear",
                 cond=(None, None)) -> pd.DataFrame:
    """CKA of each layer of A with the same layer of B at each sigma of `options` (ascending);
    the layer ids must exist in both networks; `run` left empty. `cond` as in `cka_matrix`."""
    ids = options.layer_ids(net_a)
    missing = [i for i in ids if i not in select_layers(net_b, "all")]
    if missing:
        raise UserError(f"layers {missing[:3]} of the first network are not in the second; "
                        f"matched-layer CKA needs the same architecture (use the CKA matrix)")
    images, noise = _inputs(net_a, images, options)
    records = []
    for sigma in options.grid():
        m = _accumulate(net_a, ids, net_b, ids, images, noise, sigma, options.batch, kernel,
                        cond)
        records += [{**layer_record(i, sigma, f"cka_{kernel}", float(m[k, k])), "layer_b": i}
                    for k, i in enumerate(ids)]
    return frame(records, seed=options.seed)
