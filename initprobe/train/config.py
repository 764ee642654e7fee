"""The one-step trainer's config: data, budget, optimizer and bookkeeping options, composed with
the configs each concern owns:
- `init_spec`: the ablation ops that make the generator from the teacher (`ablate.ops.InitSpec`);
- `gen_map`: the one- or two-step map z -> image (`diffusion.GeneratorMap`);
- `options`: the objective's own options (`Objective.Options` of `objectives.OBJECTIVES`).

Every option is a field declared with `options.opt` (its default and help text, once); the CLI
flags of `train`/`ablate` and the reproduction's key lists are generated from the fields. A config
is read and written as one flat mapping of option names (`from_flat`, `to_flat`): the keys of
study TOML files, of the CLI and of config.json; `from_flat` routes each key to its concern.
`resolve_config` validates a config and returns it with the defaults that depend on other options
filled in (the objective's `lr_aux`), never changing its argument.
"""

import dataclasses
import math
from dataclasses import dataclass, field

from ..ablate.ops import InitSpec
from ..data import DATA_HELP, PATH_HELP
from ..diffusion import GeneratorMap
from ..errors import UserError
from ..measure.features.classifier import STEPS
from ..options import build, flat_fields, opt, option_fields
from .objectives import OBJECTIVES, make_options, objective_class

GEN_PRECONDS = ("edm", "edm-eps")
OBJ = "Objective"
MAP = "Generator map"
POSITIVE = ("images", "batch", "ckpt_every", "log_every", "eval_classifier_steps")


@dataclass(frozen=True)
class OneStepConfig:
    teacher: str = opt("", "teacher checkpoint or run directory (EMA weights)")
    objective: str = opt("gan", "gan, ratio, diffratio, dmd, cd", panel=OBJ)
    data: str = opt("digits", DATA_HELP)
    data_path: str | None = opt(None, PATH_HELP)
    images: int = opt(50_000, "training budget in images seen")
    batch: int = opt(64, "global batch size (split over torchrun processes)")
    seed: int = opt(0, "random seed (runs are deterministic on CPU)")
    lr: float = opt(1e-4, "generator Adam learning rate")
    lr_aux: float | None = opt(None, "auxiliary networks' learning rate (default: 1e-4; 1e-3 "
                                     "for ratio and diffratio)", panel=OBJ)
    betas: tuple[float, float] = opt((0.0, 0.99), "Adam betas of the generator and the "
                                                  "auxiliary networks (GDD)", flag="")
    init_spec: InitSpec = field(default_factory=InitSpec)
    precond: str = opt("edm-eps", "generator preconditioning: edm-eps (GDD) or edm", panel=MAP)
    gen_map: GeneratorMap = field(default_factory=GeneratorMap)
    options: object = None   # the objective's Options (None: its defaults)
    labels: bool = opt(False, "class-conditional generator G(z, y) from a conditional teacher: "
                              "labels drawn at the data's class frequencies; objectives condition "
                              "on them", panel=OBJ)
    ema_halflife: float | None = opt(None, "EMA half-life in images (default: 5% of images "
                                           "seen; 0 disables)")
    eval_every: int = opt(10_000, "evaluate sample quality every N images")
    eval_at: list[int] = opt([], "also evaluate at these images seen, e.g. 1000,2000,5000,10000 "
                                 "(log-spaced budgets: one run, whole curve)")
    eval_n: int = opt(500, "samples per evaluation (0 disables)")
    eval_classifier_steps: int = opt(STEPS, "training steps of the evaluation classifier",
                                     flag="")
    ckpt_every: int = opt(500, "checkpoint every N steps")
    log_every: int = opt(25, "log the losses every N steps", flag="")

    @classmethod
    def from_flat(cls, values: dict) -> "OneStepConfig":
        """A config from flat option names; UserError naming a key no concern has."""
        rest = dict(values)
        parts = {}
        for name, part in (("init_spec", InitSpec), ("gen_map", GeneratorMap)):
            names = {f.name for f in option_fields(part)}
            parts[name] = build(part, {k: rest.pop(k) for k in list(rest) if k in names}, name)
        own = {f.name for f in option_fields(cls)}
        top = {k: rest.pop(k) for k in list(rest) if k in own}
        objective = top.get("objective", cls.objective)
        return cls(**top, **parts, options=make_options(objective, rest))

    def to_flat(self) -> dict:
        """The flat option mapping (`from_flat(cfg.to_flat())` equals a resolved `cfg`)."""
        return flat_fields(self)


def _check(cond: bool, message: str):
    if not cond:
        raise UserError(message)


def resolve_config(cfg: OneStepConfig) -> OneStepConfig:
    """Validate the options (UserError naming the fix); returns the config with the objective's
    options and its default `lr_aux` filled in, `eval_at` sorted and `betas` a tuple."""
    _check(bool(cfg.teacher), "no teacher given; pass --teacher CHECKPOINT (a run directory or "
                              ".safetensors file)")
    objective = objective_class(cfg.objective)
    options = make_options(cfg.objective) if cfg.options is None else cfg.options
    _check(isinstance(options, objective.Options),
           f"objective {cfg.objective} takes {objective.Options.__name__}, not "
           f"{type(options).__name__}")
    options.check()
    cfg.init_spec.check()
    cfg.gen_map.check()
    for name in POSITIVE:
        _check(getattr(cfg, name) > 0, f"--{name.replace('_', '-')} must be positive, got "
                                       f"{getattr(cfg, name)}")
    _check(cfg.eval_every >= 0, f"--eval-every must be >= 0 (0: only --eval-at and the end), "
                                f"got {cfg.eval_every}")
    _check(all(isinstance(b, int) and b > 0 for b in cfg.eval_at),
           f"--eval-at {cfg.eval_at}: give positive image counts")
    _check(cfg.eval_n == 0 or cfg.eval_n >= 10,
           f"--eval-n {cfg.eval_n} is too small for the k-NN metrics; use 0 (off) or >= 10")
    lr_aux = objective.lr_aux if cfg.lr_aux is None else cfg.lr_aux
    for name, value in (("lr", cfg.lr), ("lr_aux", lr_aux), ("ema_halflife", cfg.ema_halflife)):
        _check(value is None or math.isfinite(value),
               f"--{name.replace('_', '-')} must be a finite number, got {value}")
    _check(cfg.lr > 0 and lr_aux > 0, "learning rates must be positive")
    _check(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
           f"betas {cfg.betas} must be two numbers in [0, 1)")
    _check(cfg.precond in GEN_PRECONDS, f"unknown generator preconditioning {cfg.precond!r}; "
                                        f"choose one of {', '.join(GEN_PRECONDS)}")
    _check(cfg.ema_halflife is None or cfg.ema_halflife >= 0,
           f"--ema-halflife must be >= 0 (0 disables the EMA), got {cfg.ema_halflife}")
    return dataclasses.replace(cfg, options=options, lr_aux=lr_aux, betas=tuple(cfg.betas),
                               eval_at=sorted(set(cfg.eval_at)))


# How a reproduction study sets the options (`reproduce/config.py`): the profile, the study's
# budget and seeds set these; each run sets the init spec, the map, the objective's options and
# these; the profile's `student` table sets the rest (optimizer, evaluation, checkpoints).
SET_BY_STUDY = ("teacher", "data", "data_path", "images", "seed", "labels")
PER_RUN = ("objective", "precond")


def objective_option_names() -> tuple[str, ...]:
    """Every objective's option names (each once, in registry order)."""
    names = {}
    for name in OBJECTIVES:
        names.update(dict.fromkeys(f.name for f in option_fields(objective_class(name).Options)))
    return tuple(names)


def run_keys() -> tuple[str, ...]:
    """The keys a study's `[runs.<label>]` table may set."""
    return (PER_RUN + tuple(f.name for f in option_fields(InitSpec))
            + tuple(f.name for f in option_fields(GeneratorMap)) + objective_option_names())


def student_keys() -> tuple[str, ...]:
    """The keys of a profile's `[<profile>.student]` table."""
    return tuple(f.name for f in option_fields(OneStepConfig)
                 if f.name not in SET_BY_STUDY + PER_RUN)
