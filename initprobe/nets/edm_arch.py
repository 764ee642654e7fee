"""The architecture of an EDM network record (`initprobe.nets.edm_pickle`), read from the
constructor kwargs that EDM's `torch_utils.persistence` records, and checked before anything is
built from it.

Supported: the preconditioning wrappers EDMPrecond (sigma_data 0.5), VPPrecond (EDM's default
beta_d, beta_min, M) and VEPrecond around either model EDM trains:
- SongUNet: DDPM++ (positional embedding, encoder/decoder 'standard') and NCSN++ (fourier
  embedding, `channel_mult_noise` 2, encoder 'residual' or 'skip', decoder 'standard' or 'skip');
- DhariwalUNet (ADM, `initprobe.nets.adm`);
unconditional or class-conditional (`label_dim > 0`; `label_dropout` is kept in the config).
That covers all nine networks EDM publishes (edm-{cifar10-32x32-{cond,uncond},
ffhq-64x64-uncond, afhqv2-64x64-uncond}-{vp,ve}, edm-imagenet-64x64-cond-adm). Refused with a
UserError naming the option: iDDPMPrecond (EDM's converted ADM baseline), other sigma_data or VP
schedules, unknown model kwargs.

Every kwarg is checked for type and range (a missing required one, `img_resolution=15`,
`channel_mult="ab"`, `attn_resolutions=None`, `embedding_type="foo"`, `model_channels=16.0`, ...):
the UserError names the key, the value and what is expected. Finally the network is built and
run once on the meta device (no memory, no arithmetic), so kwargs that are each valid but do not
fit together (channel counts GroupNorm cannot split, ...) are refused here too, not at sampling.
"""

from collections.abc import Mapping

import torch

from ..errors import UserError
from .precond import SIGMA_DATA, VP_BETA_D, VP_BETA_MIN, VP_M, Denoiser
from .unet import DECODER_TYPES, EMBEDDING_TYPES, ENCODER_TYPES, UNetConfig

PRECOND_KINDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
REQUIRED = ("img_resolution", "in_channels", "out_channels")
# The constructor defaults in EDM's training/networks.py, for kwargs a pickle leaves out.
DEFAULTS = {
    "SongUNet": {"label_dim": 0, "augment_dim": 0, "model_channels": 128,
                 "channel_mult": [1, 2, 2, 2], "channel_mult_emb": 4, "num_blocks": 4,
                 "attn_resolutions": [16], "dropout": 0.10, "label_dropout": 0,
                 "embedding_type": "positional", "channel_mult_noise": 1,
                 "encoder_type": "standard", "decoder_type": "standard",
                 "resample_filter": [1, 1]},
    "DhariwalUNet": {"label_dim": 0, "augment_dim": 0, "model_channels": 192,
                     "channel_mult": [1, 2, 3, 4], "channel_mult_emb": 4, "num_blocks": 3,
                     "attn_resolutions": [32, 16, 8], "dropout": 0.10, "label_dropout": 0},
}


def _int(lo: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ints(lo: int, nonempty: bool):
    return lambda v: (isinstance(v, (list, tuple)) and (len(v) > 0 or not nonempty)
                      and all(map(_int(lo), v)))


def _one_of(options):
    return (lambda v: isinstance(v, str) and v in options,
            " or ".join(repr(o) for o in options))


RULES = {
    "img_resolution": (_int(1), "a positive int (the image size)"),
    "in_channels": (_int(1), "a positive int (the image channels)"),
    "out_channels": (_int(1), "a positive int (the image channels)"),
    "label_dim": (_int(0), "an int >= 0 (the number of classes; 0 = unconditional)"),
    "augment_dim": (_int(0), "an int >= 0"),
    "model_channels": (_int(1), "a positive int"),
    "channel_mult": (_ints(1, True), "a non-empty list of positive ints, e.g. [2, 2, 2]"),
    "channel_mult_emb": (_int(1), "a positive int"),
    "channel_mult_noise": (_int(1), "a positive int (1 for DDPM++, 2 for NCSN++)"),
    "num_blocks": (_int(1), "a positive int"),
    "attn_resolutions": (_ints(1, False), "a list of resolutions (positive ints), e.g. [16]"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "label_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "embedding_type": _one_of(EMBEDDING_TYPES),
    "encoder_type": _one_of(ENCODER_TYPES),
    "decoder_type": _one_of(DECODER_TYPES),
    "resample_filter": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                        and all(_number(f) and f > 0 for f in v),
                        "a non-empty list of positive numbers, e.g. [1, 1] or [1, 3, 3, 1]"),
}


def slot(rec, name: str) -> Mapping:
    """A module record's `_parameters`, `_buffers` or `_modules` (empty if absent); UserError if
    it is not a mapping from names."""
    value = rec.state.get(name) or {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UserError(f"{rec.class_name}'s {name} is a {type(value).__name__} not keyed by "
                        f"names; the file is damaged or crafted")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kwargs(rec) -> dict:
    st = rec.state
    if st.get("_init_args"):
        raise UserError(f"{rec.class_name} was built with positional arguments; cannot read its "
                        f"architecture")
    if not isinstance(st.get("_init_kwargs"), dict):
        raise UserError(f"{rec.class_name} has no recorded constructor kwargs")
    return dict(st["_init_kwargs"])


def model_kwargs(name: str, recorded: dict) -> dict:
    """`recorded` completed with EDM's defaults; UserError naming the first missing, unknown or
    ill-typed kwarg and what it should be."""
    for key in REQUIRED:
        if key not in recorded:
            raise UserError(f"{name} kwargs lack {key!r}: expected {RULES[key][1]}")
    kw = {**DEFAULTS[name], **recorded}
    unknown = sorted(map(str, set(kw) - set(DEFAULTS[name]) - set(REQUIRED)))
    if unknown:
        raise UserError(f"{name} option(s) {unknown} are not supported (known: "
                        f"{sorted([*REQUIRED, *DEFAULTS[name]])})")
    for key, value in kw.items():
        ok, expected = RULES[key]
        if not ok(value):
            raise UserError(f"{name} kwarg {key}={_short(value)}: expected {expected}")
    levels = len(kw["channel_mult"])
    if kw["img_resolution"] % 2 ** (levels - 1):
        raise UserError(f"{name} kwarg img_resolution={kw['img_resolution']}: expected a "
                        f"multiple of {2 ** (levels - 1)} (it is halved {levels - 1} times for "
                        f"channel_mult={kw['channel_mult']})")
    if kw["in_channels"] != kw["out_channels"]:
        raise UserError(f"{name} kwargs in_channels={kw['in_channels']}, out_channels="
                        f"{kw['out_channels']}: expected equal (a denoiser's output is an image)")
    return kw


def _check_wrapper(net, kind: str, label_dim: int):
    st = net.state
    if kind == "edm" and st.get("sigma_data", SIGMA_DATA) != SIGMA_DATA:
        raise UserError(f"sigma_data={st['sigma_data']} is not supported (only {SIGMA_DATA})")
    if kind == "vp":
        for key, value in {"beta_d": VP_BETA_D, "beta_min": VP_BETA_MIN, "M": VP_M}.items():
            if st.get(key, value) != value:
                raise UserError(f"VPPrecond with {key}={st[key]} is not supported (only EDM's "
                                f"default {value})")
    if st.get("label_dim", label_dim) != label_dim:
        raise UserError(f"{net.class_name} label_dim={_short(st['label_dim'])} but its model's "
                        f"label_dim={label_dim}: expected equal")


def _check_runs(cfg: UNetConfig, kind: str):
    """Build the network and run it once on the meta device; UserError if it cannot be."""
    try:
        with torch.device("meta"):
            net = Denoiser(cfg, precond=kind)
            x = torch.zeros(1, cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
            labels = torch.zeros(1, cfg.label_dim) if cfg.label_dim else None
            net.eval()(x, torch.ones(1), labels)
    except (RuntimeError, ValueError) as e:
        why = (str(e).splitlines() or [""])[0]
        raise UserError(f"{cfg.model_type} kwargs model_channels={cfg.model_channels}, "
                        f"channel_mult={cfg.channel_mult} do not make a working network ({why}); "
                        f"expected channel counts C that GroupNorm splits into min(32, C // 4) "
                        f"groups") from None


def architecture(net) -> tuple[UNetConfig, str, dict]:
    """(UNetConfig, preconditioning kind, the model's kwargs) of a network record; UserError
    naming the option when it is not supported or malformed."""
    if net.class_name not in PRECOND_KINDS:
        raise UserError(f"preconditioning {net.class_name} is not supported (supported: "
                        f"{', '.join(PRECOND_KINDS)})")
    kind = PRECOND_KINDS[net.class_name]
    model = slot(net, "_modules").get("model")
    if not hasattr(model, "class_name") or not hasattr(model, "state"):
        raise UserError(f"{net.class_name} has no `model` submodule")
    if model.class_name not in DEFAULTS:
        raise UserError(f"model_type {model.class_name} is not supported (supported: "
                        f"{', '.join(DEFAULTS)})")
    kw = model_kwargs(model.class_name, _kwargs(model))
    _check_wrapper(net, kind, kw["label_dim"])
    fields = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in kw.items()
              if k != "augment_dim"}
    fields.update(dropout=float(kw["dropout"]), label_dropout=float(kw["label_dropout"]),
                  model_type=model.class_name)
    cfg = UNetConfig(**fields)
    _check_runs(cfg, kind)
    return cfg, kind, kw
