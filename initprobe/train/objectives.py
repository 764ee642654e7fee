"""The interface every one-step objective implements, and the registry of objectives.

The shared loop (`initprobe.train.onestep`) owns the generator, its optimizer, EMA, data and
checkpoints. An objective owns everything else: its auxiliary networks (discriminator, ratio
estimator, fake-score network) and their optimizers. Each training step the loop

1. draws real images `real`, latents `z` and a step generator `g` (all global-batch slices),
2. computes `fake = sample_fn(gen, z)` (the one- or two-step map) without gradient and calls
   `objective.aux_step(fake, real, g, step, labels)` to update the auxiliary networks,
3. computes `fake = sample_fn(gen, z)` with gradient and back-propagates
   `objective.generator_loss(gen, fake, z, real, g, step, labels)` into the generator.

`labels` is None for an unconditional run; for a class-conditional one (`--labels`) it holds the
one-hot labels of the fake batch (drawn at the data's class frequencies; the generator made the
fake batch with them) and of the real batch (the images' own), and each objective conditions its
auxiliary networks and teacher calls on them (`Labels`).

Configuration: each objective declares its options as one frozen dataclass (`Options`, fields
declared with `options.opt`: one default and help text each, from which the CLI flags are made)
and its auxiliary learning rate's default (`lr_aux`). It is built as
`Objective(teacher, options, setting)`: its own options and the `Setting` the trainer gives
every objective (image shape, device, optimizer, seed, label classes, data).

`generator_loss` returns a scalar *surrogate*: only its gradient with respect to the generator's
parameters is meaningful (auxiliary networks must not accumulate gradients from it).
"""

import importlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..errors import UserError
from ..options import build


class Labels(NamedTuple):
    """One-hot class labels of a step's fake and real batches (a conditional run)."""

    fake: torch.Tensor
    real: torch.Tensor


@dataclass(frozen=True)
class Setting:
    """What the trainer gives every objective besides its options."""

    data_shape: tuple[int, int, int]   # one image (C, H, W)
    device: torch.device | str
    lr_aux: float                      # the auxiliary networks' Adam
    betas: tuple[float, float]
    seed: int = 0
    classes: int = 0                   # label classes of a class-conditional run (0: none)
    data: str = "digits"               # the training data (the gan's classifier features)
    data_path: str | None = None


@dataclass(frozen=True)
class NoOptions:
    """An objective without options."""

    def check(self) -> None:
        pass


class Objective(nn.Module):
    """Base class. Subclasses set `name`, `Options` (their options dataclass, with a `check()`
    raising UserError) and `lr_aux` (their auxiliary learning rate's default), and register
    auxiliary networks as submodules."""

    name = ""
    Options = NoOptions
    lr_aux = 1e-4   # GDD's discriminator and DMD's fake score

    def aux_step(self, fake: torch.Tensor, real: torch.Tensor, g: torch.Generator,
                 step: int, labels: Labels | None = None) -> dict[str, float]:
        """Update the auxiliary networks on a detached fake batch; returns logged scalars."""
        return {}

    def generator_loss(self, gen: nn.Module, fake: torch.Tensor, z: torch.Tensor,
                       real: torch.Tensor, g: torch.Generator, step: int,
                       labels: Labels | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def aux_state(self) -> dict:
        """Everything needed to resume: auxiliary weights and optimizer states."""
        return {"modules": self.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()}}

    def load_aux_state(self, state: dict):
        self.load_state_dict(state["modules"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}


# name -> "module:Class" (imported on use, so each objective stays in its own module)
OBJECTIVES = {
    "gan": "initprobe.train.gan:GAN",
    "ratio": "initprobe.train.ratio:ClassRatio",
    "diffratio": "initprobe.train.ratio:DiffRatio",
    "dmd": "initprobe.train.dmd:DMD",
    "cd": "initprobe.train.cd:ConsistencyDistillation",
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_options(name: str, values: dict | None = None):
    """Objective `name`'s options from option values (UserError for an unknown or bad one)."""
    options = build(objective_class(name).Options, values or {}, f"objective {name}")
    options.check()
    return options
