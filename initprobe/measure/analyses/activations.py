"""GDD's activation-vs-timestep probe: how strongly each layer responds at each noise level.

Real images x are noised, y = x + sigma n (fixed noise, `profiles.fixed_noise`), and passed
through the denoiser D(y; sigma). At each hooked layer the statistic of its output h is taken
per image and averaged over images:
- `mean_abs`: mean |h| over the layer's units;
- `rms`: sqrt(mean h^2) over the layer's units.
The table has one row per (run, layer, sigma) with `metric` = the statistic, plus the same rows
min-max normalized across sigma per layer (`metric="minmax"`), which is what GDD's figure shows.
"""

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...nets.labels import bind, cond_batches
from ...schema import frame
from ..features.hooks import capture
from .profiles import (
    DEFAULT_LAYERS,
    default_sigmas,
    fixed_noise,
    layer_record,
    select_layers,
    with_minmax,
)

STATS = ("mean_abs", "rms")


def _per_image(stat: str):
    if stat == "mean_abs":
        return lambda h: h.flatten(1).abs().mean(1).double()
    if stat == "rms":
        return lambda h: h.flatten(1).double().square().mean(1).sqrt()
    raise UserError(f"unknown statistic {stat!r}; choose one of {', '.join(STATS)}")


@torch.no_grad()
def probe_activations(net: nn.Module, images: torch.Tensor, sigmas: Sequence[float] | None = None,
                      layers: str | Sequence[str] = DEFAULT_LAYERS, stat: str = "mean_abs",
                      seed: int = 0, batch: int = 256, progress: bool = False,
                      cond: torch.Tensor | None = None) -> pd.DataFrame:
    """The activation statistic of each layer at each sigma (default `default_sigmas()`),
    averaged over `images` [N, C, H, W] on the network's device; long-form table (schema
    columns, `seed` filled, `run` empty), layers in network order, sigma ascending. `cond`:
    one-hot labels of the images for a class-conditional network."""
    reduce = _per_image(stat)
    ids = select_layers(net, layers)
    sigmas = default_sigmas() if sigmas is None else sorted(float(s) for s in sigmas)
    device = next(net.parameters()).device
    images = images.to(device)
    noise = fixed_noise(images, seed)
    records = []
    for sigma in tqdm(sigmas, desc="sigma", disable=not progress):
        with capture(net, ids, reduce=reduce) as got:
            for x, n, y in zip(images.split(batch), noise.split(batch),
                               cond_batches(cond, batch)):
                bind(net, y)(x + sigma * n, sigma)
        for layer in ids:
            value = torch.cat(got[layer]).mean().item()
            records.append(layer_record(layer, sigma, stat, value))
    return with_minmax(frame(records, seed=seed), stat)


def probe_many(nets: Mapping[str, nn.Module], images: torch.Tensor,
               cond: Mapping[str, torch.Tensor | None] | None = None, **kwargs) -> pd.DataFrame:
    """`probe_activations` for each labelled network (same images, sigmas and noise), with
    `run` = label; `cond`: label -> one-hot class labels of a conditional network."""
    tables = []
    for label, net in nets.items():
        df = probe_activations(net, images, cond=(cond or {}).get(label), **kwargs)
        df["run"] = label
        tables.append(df)
    return pd.concat(tables, ignore_index=True)
