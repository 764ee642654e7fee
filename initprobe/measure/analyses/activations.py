"""GDD's activation-vs-timestep probe: how strongly each layer responds at each noise level.

Real images x are noised, y = x + sigma n (fixed noise, `profiles.fixed_noise`), and passed
through the denoiser D(y; sigma). At each hooked layer the statistic of its output h is taken
per image and averaged over images:
- `mean_abs`: mean |h| over the layer's units;
- `rms`: sqrt(mean h^2) over the layer's units.
The table has one row per (run, layer, sigma) with `metric` = the statistic, plus the same rows
min-max normalized across sigma per layer (`metric="minmax"`), which is what GDD's figure shows.
"""

from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import UserError
from ...nets.labels import bind, cond_batches
from ...schema import frame
from ..features.hooks import capture
from .profiles import ProbeOptions, layer_record, with_minmax

STATS = ("mean_abs", "rms")


def _per_image(stat: str):
    if stat == "mean_abs":
        return lambda h: h.flatten(1).abs().mean(1).double()
    if stat == "rms":
        return lambda h: h.flatten(1).double().square().mean(1).sqrt()
    raise UserError(f"unknown statistic {stat!r}; choose one of {', '.join(STATS)}")


@torch.no_grad()
def probe_activations(net: nn.Module, images: torch.Tensor,
                      options: ProbeOptions = ProbeOptions(), stat: str = "mean_abs",
                      cond: torch.Tensor | None = None) -> pd.DataFrame:
    """The activation statistic of each layer at each sigma of `options`, averaged over
    `images` [N, C, H, W] on the network's device; long-form table (schema columns, `seed`
    filled, `run` empty), layers in network order, sigma ascending. `cond`: one-hot labels of
    the images for a class-conditional network."""
    reduce = _per_image(stat)
    ids = options.layer_ids(net)
    device = next(net.parameters()).device
    images = images.to(device)
    noise = options.noise(images)
    batch = options.batch
    records = []
    for sigma in tqdm(options.grid(), desc="sigma", disable=not options.progress):
        with capture(net, ids, reduce=reduce) as got:
            for x, n, y in zip(images.split(batch), noise.split(batch),
                               cond_batches(cond, batch)):
                bind(net, y)(x + sigma * n, sigma)
        for layer in ids:
            value = torch.cat(got[layer]).mean().item()
            records.append(layer_record(layer, sigma, stat, value))
    return with_minmax(frame(records, seed=options.seed), stat)


def probe_many(nets: Mapping[str, nn.Module], images: torch.Tensor,
               options: ProbeOptions = ProbeOptions(), stat: str = "mean_abs",
               cond: Mapping[str, torch.Tensor | None] | None = None) -> pd.DataFrame:
    """`probe_activations` for each labelled network (same images, sigmas and noise), with
    `run` = label; `cond`: label -> one-hot class labels of a conditional network."""
    tables = []
    for label, net in nets.items():
        df = probe_activations(net, images, options, stat, (cond or {}).get(label))
        df["run"] = label
        tables.append(df)
    return pd.concat(tables, ignore_index=True)
