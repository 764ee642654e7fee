"""Test helpers: EDM network pickles written in EDM's snapshot format, and closed-form weights.

A pickle is written as EDM's `training_loop` saves a snapshot, `dict(ema=net, loss_fn=...,
augment_pipe=..., dataset_kwargs=...)`, where every persistent object reduces to a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type, version,
module_src, class_name, state}, the state being the module's `__dict__` (torch's own `_parameters`,
`_buffers`, `_modules` ..., EDM's attributes, `_init_args`/`_init_kwargs`); `enc`/`dec` are plain
`torch.nn.ModuleDict`s. A throwaway in-memory `torch_utils.persistence` module exists only while
writing, so that pickle can name the global. EDM's code is not needed (nor importable here).

`fill` gives every parameter (and the Fourier frequencies) a closed-form value keyed by its name,
so a network built by EDM's own `training/networks.py` can be filled identically: that is how the
known answers in `tests/data/edm_known_answers.json` were computed (see its `about`).
"""

import math
import pickle
import sys
import types
import zlib
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from initprobe.nets.adm import ADMBlock
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetBlock

WRAPPERS = {"vp": "VPPrecond", "ve": "VEPrecond", "edm": "EDMPrecond"}
EDM_CLASS = {"UNet": "SongUNet", "ADMBlock": "UNetBlock"}  # initprobe's name -> EDM's


@contextmanager
def fake_persistence():
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the writer's stand-in is never called")

    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg = types.ModuleType("torch_utils")
    pkg.persistence = mod
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})
    try:
        yield
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


class Persistent:
    """Pickles exactly like an EDM persistent object."""

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.module_src,
                "class_name": self.class_name, "state": self.state}
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def record(m: nn.Module, src: str):
    """An EDM-style record of `m`: torch's module internals plus plain attributes."""
    if isinstance(m, nn.ModuleDict):
        md = nn.ModuleDict()
        md._modules = OrderedDict((k, record(c, src)) for k, c in m.items())
        md.training = False
        return md
    state = {k: v for k, v in vars(m).items()
             if k != "_modules" and (k.startswith("_") or isinstance(v, (bool, int, float, str)))}
    state.update(training=False, _init_args=(), _init_kwargs={})
    state["_modules"] = OrderedDict((k, None if c is None else record(c, src))
                                    for k, c in m._modules.items())
    if isinstance(m, UNetBlock):  # EDM stores numpy scalars here
        state["skip_scale"] = np.sqrt(0.5)
        state["_init_kwargs"] = {"init_attn": {"init_mode": "xavier_uniform",
                                               "init_weight": np.sqrt(0.2)}}
    if isinstance(m, ADMBlock):
        state.update(skip_scale=1, adaptive_scale=True)
    name = type(m).__name__
    return Persistent(EDM_CLASS.get(name, name), state, src)


def model_kwargs(cfg) -> dict:
    """The kwargs EDM's wrapper passes to its model for this config (as persistence records)."""
    keys = ["img_resolution", "in_channels", "out_channels", "label_dim", "model_channels",
            "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout",
            "label_dropout"]
    if cfg.model_type == "SongUNet":
        keys += ["embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
                 "resample_filter"]
    return {k: getattr(cfg, k) for k in keys}


def write_edm_pickle(path, net: Denoiser, wrapper="VPPrecond", song=None, augment_dim=0,
                     src="", wrapper_attrs=None, omit=()):
    """Write `net` as EDM's `training_loop` does: dict(ema=..., loss_fn=..., ...). `song`
    overrides recorded model kwargs (`model_class` its class name), `omit` drops some."""
    cfg = net.cfg
    kwargs = {**model_kwargs(cfg), "augment_dim": augment_dim, **(song or {})}
    for k in omit:
        del kwargs[k]
    with fake_persistence():
        unet = record(net.model, src)
        mods = list(unet.state["_modules"].items())
        aug = None
        if augment_dim:
            width = cfg.model_channels * (cfg.channel_mult_noise
                                          if cfg.model_type == "SongUNet" else 1)
            aug = record(nn.Linear(augment_dim, width, bias=False), src)
        extra = [("map_augment", aug)] + ([] if cfg.label_dim else [("map_label", None)])
        unet.state["_modules"] = OrderedDict(mods[:1] + extra + mods[1:])
        unet.class_name = kwargs.pop("model_class", unet.class_name)
        unet.state.update(label_dropout=cfg.label_dropout, _init_kwargs=kwargs)
        top = record(nn.Module(), src)
        top.class_name = wrapper
        top.state["_modules"] = OrderedDict(model=unet)
        top.state.update(img_resolution=cfg.img_resolution, img_channels=cfg.in_channels,
                         label_dim=cfg.label_dim, use_fp16=False, sigma_min=0.002,
                         sigma_max=80.0, sigma_data=0.5, beta_d=19.9, beta_min=0.1, M=1000,
                         epsilon_t=1e-5, _init_kwargs=dict(kwargs, model_type=unet.class_name))
        top.state.update(wrapper_attrs or {})
        loss = Persistent("VPLoss", {"beta_d": 19.9, "beta_min": 0.1, "epsilon_t": 1e-5}, src)
        data = {"ema": top, "loss_fn": loss, "augment_pipe": None,
                "dataset_kwargs": {"path": "cifar10-32x32.zip", "use_labels": bool(cfg.label_dim)}}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    return path


def closed_form(name: str, shape) -> torch.Tensor:
    """The value `fill` gives the tensor `name` (a state-dict key of EDM's wrapper) of `shape`."""
    n = math.prod(shape)
    v = torch.cos(0.7 * torch.arange(n, dtype=torch.float64) + zlib.crc32(name.encode()) % 997)
    module = name.rsplit(".", 2)[-2]
    if len(shape) > 1:
        v = v * 1.5 / math.sqrt(n // shape[0])
    elif name.endswith("freqs"):
        v = v * 4
    elif "norm" in module:
        v = 1 + 0.2 * v
    else:
        v = 0.2 * v
    return v.float().reshape(shape)


def fill(net: nn.Module) -> nn.Module:
    """Every parameter and buffer but the fixed resampling filters set by `closed_form`."""
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if not name.endswith("resample_filter"):
                t.copy_(closed_form(name, tuple(t.shape)))
    return net


def known_inputs(cfg, sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form noisy images (one per sigma, scale sqrt(0.25 + sigma^2)) and one-hot labels
    (class 3n mod label_dim for image n; None when unconditional)."""
    n, shape = len(sigmas), (cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
    x = torch.sin(0.31 * torch.arange(n * math.prod(shape), dtype=torch.float64) + 0.5)
    scale = torch.tensor([math.sqrt(0.25 + s * s) for s in sigmas], dtype=torch.float64)
    x = (x.reshape(n, *shape) * scale.reshape(-1, 1, 1, 1)).float()
    labels = None
    if cfg.label_dim:
        labels = torch.eye(cfg.label_dim)[[3 * i % cfg.label_dim for i in range(n)]]
    return x, labels


# The known-answer networks: EDM's three layouts (NCSN++ twice: the published residual encoder,
# and the skip encoder/decoder variant) at 8x8, one channel, unconditional and with 10 classes.
KNOWN_ARCHS = {
    "ddpmpp": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]),
    "ncsnpp": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                   embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                   resample_filter=[1, 3, 3, 1]),
    "ncsnpp-skip": dict(model_channels=16, channel_mult=[1, 2], num_blocks=1,
                        attn_resolutions=[4], embedding_type="fourier", channel_mult_noise=2,
                        encoder_type="skip", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
    "adm": dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[2, 4], num_blocks=1,
                attn_resolutions=[8, 4]),  # 64 channels (1 head) at 8x8, 128 (2 heads) at 4x4
}
KNOWN_SIGMAS = {"vp": [0.002, 1.0, 80.0], "ve": [0.02, 1.0, 100.0], "edm": [0.002, 1.0, 80.0]}
KNOWN_LABEL_DIMS = (0, 10)
KNOWN_IMAGE = dict(img_resolution=8, in_channels=1, out_channels=1)
