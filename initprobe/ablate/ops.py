"""Initialization operations on a `Denoiser`: reinit, shuffle, transfer, interpolate, freeze.

Each op works in place on the layers a selector spec names (`initprobe.ablate.select`) and
returns a record `{op, spec, layers, params, fraction, ...}` (`params`: the parameters of the
touched layers; `fraction`: their share of all parameters) for the run's config.json.

Randomness. One seed defines one random network: layer L of it is drawn by the layer's own
default init (`reset_parameters()`) with the global RNG seeded from (seed, L), inside a forked
RNG so that callers' random streams are left alone. A layer's random values therefore do not
depend on which other layers are selected: `reinit(net, "decoder", s)` gives the decoder exactly
the values of `build_init(teacher, "random", seed=s)`, and `interpolate(net, 1, s)` is that
random network. `shuffle` draws its permutations from another stream derived from (seed, L).

`build_init` applies an `InitSpec` (the ordered list of ops, one option each) to a copy of the
teacher in the order of its fields:
1. init: `teacher` (the copy as is) or `random` (every layer re-initialized with the seed);
2. interpolate (teacher towards the random network; needs init `teacher`);
3. transfer; 4. reinit; 5. shuffle; 6. freeze.
Where two ops touch the same layer the later one wins (reinit overwrites transferred weights;
shuffle permutes whatever the layer holds after steps 1-4).
"""

import copy
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..errors import UserError
from ..nets.layers import named_layers
from ..nets.unet import Conv2d, GroupNorm, Linear
from ..options import opt
from .select import count_params, select

UNET_INIT = ("xavier_uniform, biases zero; conv1/proj/aux_conv near-zero (1e-5); qkv sqrt(0.2); "
             "GroupNorm 1/0 — initprobe.nets.unet")
FOREIGN_INIT = "each layer's own reset_parameters() (its library's default init)"
INITS = ("teacher", "random")
PANEL = "Initialization / ablation (applied in this order: interpolate, transfer, reinit, " \
        "shuffle, freeze)"
SELECTOR = "layer selector (initprobe layers CKPT --select SPEC previews it)"


@dataclass(frozen=True)
class InitSpec:
    """How a student's network is made from the teacher: the starting point and the ops applied
    after it, declared in the order `build_init` applies them. `transfer_from` is the source
    checkpoint of `transfer_layers` (the two go together)."""

    init: str = opt("teacher", "teacher or random", panel=PANEL)
    interpolate: float | None = opt(None, "blend teacher and random init: 0 teacher, 1 random",
                                    panel=PANEL)
    transfer_from: str | None = opt(None, "checkpoint to copy --transfer-layers from",
                                    panel=PANEL)
    transfer_layers: str | None = opt(None, f"layers to copy: {SELECTOR}", panel=PANEL)
    reinit: str | None = opt(None, f"re-initialize these layers: {SELECTOR}",
                             flag="reinit-layers", panel=PANEL)
    shuffle: str | None = opt(None, f"permute the weights of these layers: {SELECTOR}",
                              flag="shuffle-layers", panel=PANEL)
    freeze: str | None = opt(None, f"freeze these layers ('gdd' = GDD-I): {SELECTOR}",
                             panel=PANEL)

    def check(self) -> None:
        if self.init not in INITS:
            raise UserError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.interpolate is not None and self.init != "teacher":
            raise UserError("interpolate blends the teacher with a random network; use init "
                            "'teacher' with it")
        if (self.transfer_from is None) != (self.transfer_layers is None):
            raise UserError("--transfer-from and --transfer-layers go together; give both or "
                            "neither")

    def ops(self) -> list[tuple[str, object]]:
        """The ops after the starting point, in order: (op, its option's value), given ones only
        (`transfer`'s value is its layer spec)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("init", "transfer_from")}
        return [(name.removesuffix("_layers"), v) for name, v in values.items() if v is not None]


def _record(net: nn.Module, op: str, spec: str, layers: list[str], **extra) -> dict:
    return {"op": op, "spec": spec, "layers": layers, **count_params(net, layers), **extra}


def _layer_seed(seed: int, layer: str, stream: str) -> int:
    """A 63-bit seed for one layer and one stream, stable across processes and platforms."""
    digest = hashlib.sha256(f"{stream}/{seed}/{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def _forked_rng(modules):
    """Fork the CPU RNG and the RNGs of the CUDA devices holding `modules`; yields a function
    that seeds all of them."""
    devices = sorted({p.device.index for m in modules for p in m.parameters() if p.is_cuda})

    def seed_all(seed: int) -> None:
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)

    with torch.random.fork_rng(devices=devices):
        yield seed_all


def _default_init(layers: dict[str, nn.Module], seed: int) -> str:
    """Re-initialize each layer by its own default init, seeded per layer; returns which init."""
    for name, m in layers.items():
        if not callable(getattr(m, "reset_parameters", None)):
            raise UserError(f"layer {name} ({type(m).__name__}) has no reset_parameters(), so its "
                            f"default init cannot be restored; leave it out of the selection")
    with _forked_rng(layers.values()) as seed_all:
        for name, m in layers.items():
            seed_all(_layer_seed(seed, name, "init"))
            m.reset_parameters()
    ours = all(isinstance(m, (Linear, Conv2d, GroupNorm)) for m in layers.values())
    return UNET_INIT if ours else FOREIGN_INIT


def reinit(net: nn.Module, spec: str, seed: int) -> dict:
    """Restore the default init on the selected layers (deterministic for a given seed)."""
    ids = select(net, spec)
    layers = named_layers(net)
    restored = _default_init({i: layers[i] for i in ids}, seed)
    return _record(net, "reinit", spec, ids, seed=seed, restored=restored)


def shuffle(net: nn.Module, spec: str, seed: int) -> dict:
    """Permute the entries of every parameter tensor (weights and biases) of the selected layers:
    each tensor keeps its multiset of values (hence mean and std), its features are destroyed."""
    ids = select(net, spec)
    layers = named_layers(net)
    with torch.no_grad():
        for i in ids:
            gen = torch.Generator().manual_seed(_layer_seed(seed, i, "shuffle"))
            for p in layers[i].parameters():
                perm = torch.randperm(p.numel(), generator=gen).to(p.device)
                p.copy_(p.flatten()[perm].view_as(p))
    return _record(net, "shuffle", spec, ids, seed=seed)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape))


def transfer(net: nn.Module, source_net: nn.Module, spec: str) -> dict:
    """Copy the selected layers' parameters from `source_net` (e.g. a teacher trained on other
    data). Everything is checked before anything is copied: a layer absent from the source or a
    parameter of another shape raises UserError and leaves `net` unchanged."""
    ids = select(net, spec)
    ours, theirs = named_layers(net), named_layers(source_net)
    pairs = []
    for i in ids:
        if i not in theirs:
            raise UserError(f"transfer: layer {i} is not in the source network; select only "
                            f"layers that both networks have")
        dst, src = dict(ours[i].named_parameters()), dict(theirs[i].named_parameters())
        for name, p in dst.items():
            q = src.get(name)
            if q is None or q.shape != p.shape:
                there = "absent" if q is None else _shape(q)
                raise UserError(f"transfer: {i}.{name} is {_shape(p)} here but {there} in the "
                                f"source network; transfer from a network of the same "
                                f"architecture or select only layers whose shapes agree")
            pairs.append((p, q))
    with torch.no_grad():
        for p, q in pairs:
            p.copy_(q)
    return _record(net, "transfer", spec, ids)


def interpolate(net: nn.Module, alpha: float, seed: int) -> dict:
    """theta = (1 - alpha) theta_net + alpha theta_random on every layer, theta_random being the
    default init with `seed`: alpha 0 leaves `net` as is, alpha 1 makes it the random network."""
    if not 0 <= alpha <= 1:
        raise UserError(f"interpolate: alpha {alpha} is outside [0, 1]; 0 keeps the teacher, "
                        f"1 is a random init")
    layers = named_layers(net)
    random = {i: copy.deepcopy(m) for i, m in layers.items()}
    restored = _default_init(random, seed)
    with torch.no_grad():
        for i, m in layers.items():
            for p, q in zip(m.parameters(), random[i].parameters()):
                p.lerp_(q, alpha)
    return _record(net, "interpolate", "all", list(layers), alpha=alpha, seed=seed,
                   restored=restored)


def freeze(net: nn.Module, spec: str) -> dict:
    """Stop gradients to the selected layers' parameters; the record's `params` and `fraction`
    are the frozen parameter count and its share of all parameters."""
    ids = select(net, spec)
    layers = named_layers(net)
    for i in ids:
        layers[i].requires_grad_(False)
    return _record(net, "freeze", spec, ids)


def _start(net: nn.Module, init: str, seed: int) -> dict:
    """Step 1 of build_init: the record of the starting point (randomizing it for `random`)."""
    if init == "random":
        return {**reinit(net, "all", seed), "op": "init", "init": init}
    return _record(net, "init", "all", list(named_layers(net)), init=init)


def build_init(teacher_net: nn.Module, spec: InitSpec = InitSpec(), seed: int = 0,
               source: nn.Module | None = None) -> tuple[nn.Module, list[dict]]:
    """A fresh network to train, and the records of how it was made (module docstring order).

    `spec.init`: `teacher` (a copy of `teacher_net`) or `random` (the teacher's architecture
    with every layer re-initialized from `seed`; buffers such as Fourier frequencies are the
    teacher's). `source`: the network `spec.transfer_from` names (needed for a transfer). Every
    parameter of the copy requires grad except those `spec.freeze` selects. `teacher_net` is
    never modified.
    """
    spec.check()
    if spec.transfer_layers is not None and source is None:
        raise UserError("a transfer needs its source network; load --transfer-from first")
    net = copy.deepcopy(teacher_net).requires_grad_(True)
    records = [_start(net, spec.init, seed)]
    apply = {"interpolate": lambda value: interpolate(net, value, seed),
             "transfer": lambda value: transfer(net, source, value),
             "reinit": lambda value: reinit(net, value, seed),
             "shuffle": lambda value: shuffle(net, value, seed),
             "freeze": lambda value: freeze(net, value)}
    for op, value in spec.ops():
        records.append(apply[op](value))
    return net, records
