"""What the per-layer, per-noise-level probes share: the sigma grid, the layer selection, the
fixed noise, and the min-max normalization across sigma; `ProbeOptions` carries the first three
(with the batch size and a progress bar) to every analysis.

- Sigma grid: EDM's 18-level Karras grid plus sigma_max = 80 (already its first level, so the
  union is 18 levels), ascending.
- Layer selection: a selector spec in the language of `initprobe.ablate.select` (the default
  `"blocks"` is the last conv of every block; `decoder`, `enc.*`, `res:4-attention`, ...), or
  an explicit list of canonical ids. Always in network order (encoder, bottleneck, decoder).
- Noise: one standard-normal draw per image from a generator seeded with `seed`, reused at every
  sigma (common random numbers: profiles across sigma are smooth and every checkpoint compared
  sees the same noisy inputs).
- Min-max: per run and layer, (v - min) / (max - min) across sigma; NaN for a layer whose value
  does not change with sigma (the normalization is undefined).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ...ablate.select import BLOCKS, select
from ...diffusion import SIGMA_MAX, karras_sigmas
from ...errors import UserError
from ...nets.layers import named_layers, parse
from ..features.hooks import modules_by_id

DEFAULT_LAYERS = BLOCKS


def default_sigmas() -> list[float]:
    """`karras_sigmas(18)` and 80, deduplicated, ascending."""
    grid = [float(s) for s in karras_sigmas(18)]
    if not any(abs(s - SIGMA_MAX) < 1e-9 * SIGMA_MAX for s in grid):
        grid.append(SIGMA_MAX)
    return sorted(grid)


def select_layers(net: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Resolve a selector spec (`initprobe.ablate.select`) or a list of ids (validated,
    deduplicated) into canonical ids in network order."""
    if isinstance(layers, str):
        return select(net, layers)
    if not layers:
        raise UserError(f"no layers selected; give a selector such as {DEFAULT_LAYERS} or "
                        f"decoder, or at least one layer id")
    wanted = modules_by_id(net, layers)
    return [i for i in named_layers(net) if i in wanted]


@dataclass(frozen=True)
class ProbeOptions:
    """Where and how an analysis probes a network: the noise levels (`None`: `default_sigmas()`),
    the layers (a selector spec or a list of ids, `select_layers`), the noise seed, the images
    per forward pass and whether to show a progress bar over sigma."""

    sigmas: Sequence[float] | None = None
    layers: str | Sequence[str] = DEFAULT_LAYERS
    seed: int = 0
    batch: int = 256
    progress: bool = False

    def __post_init__(self):
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(self.sigmas))
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(self.layers))

    def grid(self) -> list[float]:
        """The noise levels, ascending."""
        return default_sigmas() if self.sigmas is None else sorted(float(s) for s in self.sigmas)

    def layer_ids(self, net: nn.Module) -> list[str]:
        """The selected layers of `net`, canonical ids in network order."""
        return select_layers(net, self.layers)

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """`fixed_noise(images, seed)`."""
        return fixed_noise(images, self.seed)


def fixed_noise(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard-normal noise shaped like `images`, drawn on the CPU from `seed` (so the same on
    every device), returned on the images' device."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(images.shape, generator=g).to(images.device, images.dtype)


def layer_record(layer: str, sigma: float, metric: str, value: float) -> dict:
    """One table row: a layer's value at a noise level, with the id's coordinates."""
    lid = parse(layer)
    return {"layer": layer, "side": lid.side, "res": lid.res, "block": lid.block,
            "sublayer": lid.sublayer, "sigma": sigma, "metric": metric, "value": value}


def with_minmax(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Append rows `metric="minmax"`: the `metric` rows min-max normalized across sigma within
    each (run, layer)."""
    rows = df[df["metric"] == metric].copy()
    values = rows.groupby(["run", "layer"], dropna=False, sort=False)["value"]
    lo, hi = values.transform("min"), values.transform("max")
    span = (hi - lo).where(hi > lo)
    rows["value"] = (rows["value"] - lo) / span
    rows["metric"] = "minmax"
    return pd.concat([df, rows], ignore_index=True)
