"""Canonical layer ids: the one vocabulary that selectors, tables and figures share.

A layer is a module that owns parameters (Conv2d, Linear, GroupNorm). Its id is its dotted
module path inside the UNet, exactly EDM's SongUNet names: `map_layer0`, `enc.32x32_conv`,
`enc.16x16_block1.conv1`, `dec.8x8_up.skip`, `dec.4x4_in0.qkv`, `dec.32x32_aux_conv`.
An id parses into side (`map`, `enc`, `dec`), resolution, block (`conv`, `block1`, `down`, `up`,
`in0`, `aux_conv`, ...) and sublayer (`norm0`, `conv0`, `affine`, `norm1`, `conv1`, `skip`,
`norm2`, `qkv`, `proj`, or empty for layers that are not inside a residual block).

Groups (used by the selector language):
- `embedding`: the noise-embedding MLP (`map_*`);
- `stem`: the input conv `enc.RxR_conv`; `head`: the output `dec.RxR_aux_norm` / `_aux_conv`;
- `bottleneck`: the lowest-resolution decoder blocks `dec.RxR_in0`, `dec.RxR_in1`;
- `encoder`: the other `enc.*` layers; `decoder`: the other `dec.*` layers;
- `attention`: `norm2`, `qkv`, `proj`; `norm`: every GroupNorm; `skip`: 1x1 block skips;
- `conv`: the two 3x3 convs of every residual block (`conv0`, `conv1`).

Other networks join the vocabulary by providing `canonical_layers()`, `canonical_blocks()` and
`lowest_resolution`, on the network or on its inner `model`: ADM (`initprobe.nets.adm`, whose
`out_norm`/`out_conv` are the head `dec.RxR_aux_norm`/`_aux_conv`) and a diffusers UNet2DModel
(`initprobe.nets.diffusers_adapter`, whose separate attention projections are the sublayers `q`,
`k`, `v`). NCSN++'s input pyramid (`enc.RxR_aux_skip`, `enc.RxR_aux_residual`) is in `encoder`,
the per-resolution heads of its skip decoder (`dec.RxR_aux_conv` ...) in `head`.
"""

import re
from dataclasses import dataclass

import pandas as pd
from torch import nn

from .unet import Conv2d, GroupNorm, Linear, UNet

GROUPS = ("encoder", "decoder", "bottleneck", "embedding", "stem", "head", "attention", "norm",
          "skip", "conv")
_ID = re.compile(r"^(enc|dec)\.(\d+)x\d+_([a-z_]+\d*)(?:\.(\w+))?$")


@dataclass(frozen=True)
class LayerId:
    layer: str
    side: str
    res: int | None
    block: str
    sublayer: str
    kind: str

    def groups(self, lowest_res: int) -> tuple[str, ...]:
        g = []
        if self.side == "map":
            g.append("embedding")
        elif self.side == "enc" and self.block == "conv":
            g.append("stem")
        elif self.side == "dec" and self.block.startswith("aux"):
            g.append("head")
        elif self.side == "dec" and self.res == lowest_res and self.block.startswith("in"):
            g.append("bottleneck")
        else:
            g.append("encoder" if self.side == "enc" else "decoder")
        if self.sublayer in ("norm2", "qkv", "q", "k", "v", "proj"):
            g.append("attention")
        if self.kind == "GroupNorm":
            g.append("norm")
        if self.sublayer == "skip":
            g.append("skip")
        if self.sublayer in ("conv0", "conv1"):
            g.append("conv")
        return tuple(g)


def parse(layer: str, kind: str = "") -> LayerId:
    """Split a canonical id into its coordinates."""
    m = _ID.match(layer)
    if m is None:
        return LayerId(layer, "map", None, layer, "", kind)
    side, res, block, sub = m.groups()
    return LayerId(layer, side, int(res), block, sub or "", kind)


def _own(net: nn.Module, attr: str):
    """`attr` (canonical_layers, canonical_blocks, lowest_resolution) of the network, or of its
    inner model, for networks that describe themselves; None otherwise."""
    for m in (net, getattr(net, "model", None)):
        if hasattr(m, attr):
            return getattr(m, attr)
    return None


def unet_of(net: nn.Module) -> UNet:
    """The UNet inside a Denoiser (or the UNet itself)."""
    inner = getattr(net, "model", net)
    if not isinstance(inner, UNet):
        raise TypeError(f"expected an initprobe UNet or Denoiser, got {type(net).__name__}")
    return inner


def named_layers(net: nn.Module) -> dict[str, nn.Module]:
    """Canonical id -> parameter-owning module, in network order (embedding, encoder, decoder)."""
    if _own(net, "canonical_layers") is not None:
        return _own(net, "canonical_layers")()
    return {name: m for name, m in unet_of(net).named_modules()
            if isinstance(m, (Conv2d, Linear, GroupNorm)) and any(True for _ in m.parameters())}


def named_blocks(net: nn.Module) -> dict[str, nn.Module]:
    """Block id -> block module (`enc.16x16_block0`, `dec.4x4_in0`, ...), in network order;
    NCSN++'s parameter-free resamplers (`enc.RxR_aux_down`, `dec.RxR_aux_up`) are not blocks."""
    if _own(net, "canonical_blocks") is not None:
        return _own(net, "canonical_blocks")()
    u = unet_of(net)
    return {f"{side}.{name}": m for side in ("enc", "dec")
            for name, m in getattr(u, side).items()
            if not name.endswith("aux_norm") and any(True for _ in m.parameters())}


def last_conv_id(net: nn.Module, block_id: str) -> str | None:
    """Id of the last conv of a block: `B.proj` in attention blocks, else `B.conv1`; the block
    itself for the stem and head convs; None if the block has none of these. Works on ids, so on
    any network that exposes canonical layers (initprobe's UNet, diffusers adapters)."""
    layers = named_layers(net)
    for candidate in (f"{block_id}.proj", f"{block_id}.conv1", block_id):
        if candidate in layers:
            return candidate
    return None


def lowest_res(net: nn.Module) -> int:
    if _own(net, "lowest_resolution") is not None:
        return _own(net, "lowest_resolution")
    cfg = unet_of(net).cfg
    return cfg.img_resolution >> (len(cfg.channel_mult) - 1)


def layer_table(net: nn.Module) -> pd.DataFrame:
    """One row per layer: id, coordinates, groups, parameter count and weight shape."""
    low = lowest_res(net)
    rows = []
    for name, m in named_layers(net).items():
        lid = parse(name, type(m).__name__)
        n = sum(p.numel() for p in m.parameters())
        rows.append(dict(layer=name, side=lid.side, res=lid.res, block=lid.block,
                         sublayer=lid.sublayer, kind=lid.kind, groups=",".join(lid.groups(low)),
                         params=n, shape="x".join(map(str, m.weight.shape))))
    df = pd.DataFrame(rows)
    df["res"] = df["res"].astype("Int64")
    return df
