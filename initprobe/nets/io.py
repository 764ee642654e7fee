"""Self-describing checkpoints: safetensors weights plus a json file with the config that built
them.

A checkpoint `STEM` is two files:
- `STEM.safetensors`: tensors `net.<param>` (the trained weights) and optionally `ema.<param>`
  (the exponential moving average), parameter names as in EDM's `EDMPrecond` (`model.enc...`);
- `STEM.json`: `{"format": FORMAT, "unet": UNetConfig fields, "precond": ..., ...metadata}`.
Training runs add `STEM.state.pt` (optimizer and loop state, loaded with `weights_only=True`).
Anything that takes a checkpoint accepts the `.safetensors` file, the `.json` file, the stem, or
a run directory (its latest checkpoint). `load_network` also takes foreign teachers: an official
EDM `.pkl` (`edm_pickle`) or a diffusers UNet2DModel folder (`diffusers_adapter`).
"""

import copy
import dataclasses
import json
import typing
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..diffusion import Generator, GeneratorMap
from ..errors import UserError
from ..runio import atomic_save, atomic_write_json
from .diffusers_adapter import (
    DiffusersDenoiser,
    describe,
    diffusers_dir,
    from_description,
    load_diffusers_unet,
)
from .edm_pickle import load_edm_pickle
from .precond import PRECONDS, Denoiser
from .unet import UNetConfig

FORMAT = "initprobe-checkpoint-v1"


def save_checkpoint(stem: str | Path, net: Denoiser, ema: Denoiser | None = None,
                    **meta) -> Path:
    """Write `stem.safetensors` then `stem.json` atomically; returns the safetensors path."""
    stem = Path(stem)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous()
                        for k, v in ema.state_dict().items()})
    st = stem.with_suffix(".safetensors")
    atomic_save(st, lambda tmp: save_file(tensors, tmp))
    arch = ({"diffusers": describe(net)} if isinstance(net, DiffusersDenoiser)
            else {"unet": net.cfg.to_dict(), "precond": net.precond})
    atomic_write_json(stem.with_suffix(".json"), {"format": FORMAT, **arch, **meta})
    return st


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint stem in `run_dir/checkpoints`, or None."""
    stems = sorted(p.with_suffix("") for p in (run_dir / "checkpoints").glob("*.json")
                   if p.with_suffix(".safetensors").exists())
    return stems[-1] if stems else None


def resolve(path: str | Path) -> Path:
    """Map any accepted spelling of a checkpoint to its stem; UserError if there is none."""
    p = Path(path)
    if p.is_dir():
        stem = latest_checkpoint(p)
        if stem is None:
            raise UserError(f"{p}: no checkpoint in {p / 'checkpoints'}; train first or pass a "
                            f".safetensors checkpoint file")
        return stem
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    for suffix in (".safetensors", ".json"):
        if not stem.with_suffix(suffix).exists():
            raise UserError(f"{stem.with_suffix(suffix)}: not found; a checkpoint is a "
                            f".safetensors file with a .json file beside it (or a run directory)")
    return stem


def read_meta(path: str | Path) -> dict:
    stem = resolve(path)
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{stem.with_suffix('.json')}: not valid JSON ({e}); the checkpoint's "
                        f"config file is damaged") from None
    if not isinstance(meta, dict):
        raise UserError(f"{stem.with_suffix('.json')}: not an initprobe checkpoint config (a "
                        f"JSON {type(meta).__name__}, expected an object); the checkpoint's "
                        f"config file is damaged")
    if meta.get("format") != FORMAT:
        raise UserError(f"{stem.with_suffix('.json')}: not an initprobe checkpoint config "
                        f"(format is {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    stem = resolve(path)
    try:
        return load_file(stem.with_suffix(".safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{stem.with_suffix('.safetensors')}: unreadable safetensors file ({e}); "
                        f"re-create the checkpoint") from None


def _field_ok(value, kind) -> bool:
    """Whether a JSON value fits a UNetConfig field: a positive int, a float in [0, 1) (the
    dropout), a str, or a list of positive ints."""
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_field_ok(v, int) for v in value)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and 0 <= value < 1
    return isinstance(value, kind) and (kind is not int or value >= 1)


def unet_config(arch, where: str) -> UNetConfig:
    """The UNetConfig recorded as `arch` (a checkpoint's `unet` entry); UserError naming the
    first unknown, missing or mistyped field."""
    if not isinstance(arch, dict):
        raise UserError(f"{where}: 'unet' is {type(arch).__name__}, expected an object of "
                        f"UNetConfig fields; the checkpoint's config file is damaged")
    fields = {f.name: f for f in dataclasses.fields(UNetConfig)}
    hints = typing.get_type_hints(UNetConfig)
    for key, value in arch.items():
        if key not in fields:
            raise UserError(f"{where}: unknown architecture field unet.{key}; expected only "
                            f"{', '.join(fields)}")
        if not _field_ok(value, hints[key]):
            raise UserError(f"{where}: unet.{key} is {value!r}, which is not a valid "
                            f"{key} (like {getattr(UNetConfig(), key)!r}); the checkpoint's "
                            f"config file is damaged")
    return UNetConfig(**arch)


def build(meta: dict, where: str = "checkpoint") -> Denoiser | DiffusersDenoiser:
    """A freshly initialized network with the architecture recorded in `meta`."""
    if "diffusers" in meta:
        return from_description(meta["diffusers"])
    if "unet" not in meta:
        raise UserError(f"{where}: no 'unet' architecture recorded; the checkpoint's config file "
                        f"is damaged")
    precond = meta.get("precond", "edm")
    if precond not in PRECONDS:
        raise UserError(f"{where}: unknown preconditioning {precond!r}; expected one of "
                        f"{', '.join(PRECONDS)}")
    return Denoiser(unet_config(meta["unet"], where), precond=precond)


def load_network(path: str | Path, which: str = "ema",
                 precond: str | None = None) -> Denoiser | DiffusersDenoiser:
    """Load a network from a checkpoint; `which` is `ema` (default, falls back to `net` when the
    checkpoint has no EMA) or `net`. `precond` overrides the recorded preconditioning.
    An EDM `.pkl` loads its entry `which`; a diffusers folder has one network and no `precond`."""
    return _load(path, which, precond)[0]


def load_generator(path: str | Path, which: str = "ema") -> Generator:
    """`load_network` with the generator map the checkpoint records (a student's; the default
    one-step map for any other network), to sample it as trained."""
    net, meta = _load(path, which)
    return Generator(net, GeneratorMap.of_meta(meta))


def _load(path: str | Path, which: str = "ema", precond: str | None = None) -> tuple[
        Denoiser | DiffusersDenoiser, dict]:
    """The network and the metadata it was saved with (empty for a foreign network)."""
    if Path(path).suffix == ".pkl":
        return load_edm_pickle(path, key=which, precond=precond)[0], {}
    if diffusers_dir(path) is not None:
        if precond is not None:
            raise UserError(f"{path}: a diffusers model keeps its own noise convention; drop "
                            f"the preconditioning override {precond!r}")
        return load_diffusers_unet(path), {}
    meta = read_meta(path)
    if precond is not None:
        meta = {**meta, "precond": precond}
    tensors = read_tensors(path)
    prefix = f"{which}." if any(k.startswith(f"{which}.") for k in tensors) else "net."
    if which not in ("ema", "net"):
        raise UserError(f"unknown weights {which!r}; choose 'ema' or 'net'")
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    net = build(meta, str(resolve(path).with_suffix(".json")))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{resolve(path)}: weights do not match the recorded architecture "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval(), meta


def ema_copy(net: Denoiser) -> Denoiser:
    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


def dataset_for_network(net, checkpoint, name: str, path: str | None, split: str = "train"):
    """The dataset `name` at the network's image side; UserError for another channel count, or
    for images larger than the network's unless it was trained on this dataset (then it saw them
    resized the same way)."""
    from ..data import load_dataset
    side, channels = net.cfg.img_resolution, net.cfg.in_channels
    data = load_dataset(name, path, split)
    if data.shape[0] != channels:
        raise UserError(f"{name} has {data.shape[0]} channels but {checkpoint} takes "
                        f"{channels}; pick its dataset")
    if data.shape[-1] > side:
        try:
            trained_on = read_meta(checkpoint).get("data")
        except UserError:
            trained_on = None   # a foreign network (EDM pickle, diffusers) records no data
        if trained_on != name:
            raise UserError(f"{name} images are {data.shape[-1]}x{data.shape[-1]} but "
                            f"{checkpoint} makes {side}x{side} images; use its dataset, or "
                            f"train a teacher on {name} first (train-teacher --data {name})")
    return data if data.shape[-1] == side else load_dataset(name, path, split, size=side)
