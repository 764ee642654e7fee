"""The shared one-step trainer: generator, init spec, EMA, data, evaluation, checkpoints.

The generator is G(z) = D_theta(sigma_cond z; sigma_cond) (GDD: sigma_cond = sigma_max = 80), or
with `steps=2` GDD's two-step map through `sigma_mid` (`initprobe.diffusion.two_step`). D_theta
starts from the teacher's EMA weights transformed by the init spec (`ablate.ops.build_init`) and
uses GDD's `edm-eps` preconditioning by default. Each step follows `objectives.Objective`'s
contract; the generator's Adam uses `lr` and `betas` (default (0, 0.99) as in GDD).

EMA: with `ema_halflife=None` (default) the half-life is 5% of the images seen so far (GDD/EDM's
ramp-up ratio 0.05), so the state after N images does not depend on the budget and learning
curves from runs of different budgets agree; a number fixes the half-life in images; 0 disables
the EMA (it then equals the generator).

Evaluation (rank 0): at the start, every `eval_every` images, at the first step reaching each of
`eval_at` (log-spaced budgets: one run yields the whole learning curve) and at the end, quality of
`eval_n` EMA samples from latent seeds 0..eval_n-1 against the training images, on the cached
domain classifier (`measure.features.classifier`, `eval_classifier_steps`). metrics.jsonl holds
`kind: "train"` lines (losses, images/s) and `kind: "eval"` lines (fd_classifier, precision, ...).

Class-conditional (`labels`, a conditional teacher): the generator is the teacher's network, so
G(z, y) = D(s z; s, y), with its label dropout off. Each step draws the fake batch's labels at the
data's class frequencies (the labels of random training images, from the step's own generator
stream 3, so an unconditional run draws exactly what it drew before); the objective gets them and
the real batch's own labels (`objectives.Labels`). Evaluation sample i gets a label drawn at the
class frequencies from its seed alone (`nets.labels.seed_labels`); sample grids cycle the classes,
one per column.

Distributed (torchrun): the generator is wrapped in DistributedDataParallel, and objectives get
the wrapped module as `gen`, so any generator evaluation they make is synchronized; every step
draws the global batch and each rank keeps its slice (`loop.Dist`); objectives draw their own
randomness the same way (`auxnet.global_randn`) and average their auxiliary gradients with
`auxnet.sync_gradients` before stepping, so N processes with batch B/N compute the update of one
process with batch B. On CUDA the forward
passes run under bf16 autocast.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..ablate.ops import build_init
from ..diffusion import SIGMA_MAX, one_step, two_step
from ..errors import UserError
from ..measure.features.extractors import weights_hash
from ..nets.diffusers_adapter import DiffusersDenoiser, describe
from ..nets.io import dataset_for_network, ema_copy, load_network
from ..nets.labels import bind, class_labels, label_dim, one_hot
from ..nets.precond import Denoiser
from ..report.images import save_grid
from ..runio import append_jsonl, read_jsonl
from .evaluation import Evaluator, NonFiniteSamples, autocast, evaluates, samples
from .loop import (
    Dist,
    RunDir,
    check_finite,
    diverged,
    pick_device,
    step_generator,
    to_plain,
    update_ema,
)
from .objectives import Labels, objective_class
from .speed import Speed, apply_speed

GEN_PRECONDS = ("edm", "edm-eps")
DIVERGENCES = ("kl", "js")
DISC_FEATURES = ("teacher", "classifier")
EMA_RAMPUP = 0.05
# Auxiliary learning rates: GDD's 1e-4 for the discriminator and DMD's fake score; the class-ratio
# estimators stay at chance with 1e-4 on digits (the generator then drifts on noise) and train
# well with 1e-3 (measured in 400-step digits runs; see initprobe/train/ratio.py).
LR_AUX = 1e-4
LR_AUX_BY_OBJECTIVE = {"ratio": 1e-3, "diffratio": 1e-3}
GRID = 64  # latents of the sample grids
TRAINING = "initprobe.training"   # profiler range of the training proper (reproduce/memory.py)


@dataclass
class OneStepConfig:
    teacher: str = ""               # teacher checkpoint (its EMA weights are used)
    objective: str = "gan"          # a key of objectives.OBJECTIVES
    data: str = "digits"
    data_path: str | None = None
    images: int = 50_000            # budget in images seen
    batch: int = 64                 # global batch
    lr: float = 1e-4                # generator Adam (GDD: 1e-4)
    lr_aux: float | None = None     # auxiliary networks' Adam; None: the objective's default
    betas: tuple[float, float] = (0.0, 0.99)
    seed: int = 0
    # init spec (ablate.ops.build_init)
    init: str = "teacher"
    reinit: str | None = None
    shuffle: str | None = None
    transfer_from: str | None = None
    transfer_layers: str | None = None
    interpolate: float | None = None
    freeze: str | None = None       # selector spec, or the preset `gdd` (GDD-I / D2O-F)
    precond: str = "edm-eps"        # the generator's preconditioning
    # the generator's map
    sigma_cond: float = SIGMA_MAX
    steps: int = 1                  # 1: one-step map; 2: GDD's two-step map
    sigma_mid: float = 2.0
    # objective options
    divergence: str = "kl"          # ratio objectives: kl | js
    r1_gamma: float = 1e-4
    r1_interval: int = 16
    disc_sigma: float = 0.5
    disc_features: str = "teacher"
    objective_options: dict = field(default_factory=dict)
    # bookkeeping
    ema_halflife: float | None = None
    eval_every: int = 10_000        # images (0: only at eval_at and the end)
    eval_at: list[int] = field(default_factory=list)   # and at these images seen (budgets)
    eval_n: int = 500               # 0 disables evaluation
    eval_classifier_steps: int = 1500
    ckpt_every: int = 500           # steps
    log_every: int = 25             # steps
    labels: bool = False            # class-conditional G(z, y): needs a conditional teacher
    unet: dict = field(default_factory=dict)   # the teacher's architecture (filled in)


def _check(cond: bool, message: str):
    if not cond:
        raise UserError(message)


def resolve_config(cfg: OneStepConfig) -> OneStepConfig:
    """Validate the options (UserError naming the fix) and fill in the architecture."""
    _check(bool(cfg.teacher), "no teacher given; pass --teacher CHECKPOINT (a run directory or "
                              ".safetensors file)")
    objective_class(cfg.objective)
    for name in ("images", "batch", "ckpt_every", "log_every", "r1_interval",
                 "eval_classifier_steps"):
        _check(getattr(cfg, name) > 0, f"--{name.replace('_', '-')} must be positive, got "
                                       f"{getattr(cfg, name)}")
    _check(cfg.eval_every >= 0, f"--eval-every must be >= 0 (0: only --eval-at and the end), "
                                f"got {cfg.eval_every}")
    _check(all(isinstance(b, int) and b > 0 for b in cfg.eval_at),
           f"--eval-at {cfg.eval_at}: give positive image counts")
    cfg.eval_at = sorted(set(cfg.eval_at))
    _check(cfg.eval_n == 0 or cfg.eval_n >= 10,
           f"--eval-n {cfg.eval_n} is too small for the k-NN metrics; use 0 (off) or >= 10")
    if cfg.lr_aux is None:
        cfg.lr_aux = LR_AUX_BY_OBJECTIVE.get(cfg.objective, LR_AUX)
    for name in ("lr", "lr_aux", "sigma_cond", "sigma_mid", "disc_sigma", "r1_gamma",
                 "ema_halflife"):
        value = getattr(cfg, name)
        _check(value is None or math.isfinite(value),
               f"--{name.replace('_', '-')} must be a finite number, got {value}")
    _check(cfg.lr > 0 and cfg.lr_aux > 0, "learning rates must be positive")
    _check(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas),
           f"betas {cfg.betas} must be two numbers in [0, 1)")
    _check(cfg.r1_gamma >= 0, f"--r1-gamma must be >= 0, got {cfg.r1_gamma}")
    _check(cfg.precond in GEN_PRECONDS, f"unknown generator preconditioning {cfg.precond!r}; "
                                        f"choose one of {', '.join(GEN_PRECONDS)}")
    _check(cfg.sigma_cond > 0, f"--sigma-cond must be positive, got {cfg.sigma_cond}")
    _check(cfg.steps in (1, 2), f"--steps {cfg.steps}: the generator map has 1 or 2 steps")
    _check(cfg.steps == 1 or 0 < cfg.sigma_mid < cfg.sigma_cond,
           f"--sigma-mid {cfg.sigma_mid} must lie in (0, {cfg.sigma_cond}) (--sigma-cond)")
    _check(cfg.divergence in DIVERGENCES, f"unknown divergence {cfg.divergence!r}; choose one "
                                          f"of {', '.join(DIVERGENCES)}")
    _check(cfg.disc_features in DISC_FEATURES, f"unknown --disc-features {cfg.disc_features!r}; "
                                               f"choose one of {', '.join(DISC_FEATURES)}")
    _check(cfg.disc_sigma > 0, f"--disc-sigma must be positive, got {cfg.disc_sigma}")
    _check(cfg.ema_halflife is None or cfg.ema_halflife >= 0,
           f"--ema-halflife must be >= 0 (0 disables the EMA), got {cfg.ema_halflife}")
    _check((cfg.transfer_from is None) == (cfg.transfer_layers is None),
           "--transfer-from and --transfer-layers go together; give both or neither")
    cfg.betas = tuple(cfg.betas)
    return cfg


def _load_teacher(cfg: OneStepConfig, dev) -> Denoiser | DiffusersDenoiser:
    """The frozen teacher; a diffusers teacher keeps its own noise convention, so the generator
    copied from it does too (`precond` is recorded as `diffusers`)."""
    teacher = load_network(cfg.teacher, "ema")
    if isinstance(teacher, DiffusersDenoiser):
        cfg.unet, cfg.precond = describe(teacher)["unet"], "diffusers"
    else:
        cfg.unet = teacher.cfg.to_dict()
    _check(not cfg.labels or label_dim(teacher) > 0,
           f"--labels: the teacher {cfg.teacher} is unconditional (no class embedding); train "
           f"one with train-teacher --labels, or leave --labels out")
    return teacher.to(dev).eval().requires_grad_(False)


def build_generator(cfg: OneStepConfig, teacher: Denoiser | DiffusersDenoiser) -> tuple[
        Denoiser | DiffusersDenoiser, list[dict]]:
    """The generator before training and the records of every init op (layers touched)."""
    transfer = None
    if cfg.transfer_from is not None:
        source = load_network(cfg.transfer_from, "ema").to(next(teacher.parameters()).device)
        transfer = (source, cfg.transfer_layers)
    gen, records = build_init(teacher, cfg.init, cfg.seed, reinit=cfg.reinit,
                              shuffle=cfg.shuffle, transfer=transfer,
                              interpolate=cfg.interpolate, freeze=cfg.freeze)
    if isinstance(gen, Denoiser):
        gen.precond = cfg.precond
        if gen.cfg.label_dim:   # G(z, y) always sees its label
            gen.model.cfg = dataclasses.replace(gen.cfg, label_dropout=0.0)
    return gen.train(), records


def generator_map(cfg: OneStepConfig):
    """z -> image with the configured one- or two-step map, as a function of the network."""
    if cfg.steps == 1:
        return lambda net, z: one_step(net, z, cfg.sigma_cond)
    return lambda net, z: two_step(net, z, cfg.sigma_mid, cfg.sigma_cond)


def _ema_halflife(cfg: OneStepConfig, images_seen: int) -> float:
    return EMA_RAMPUP * images_seen if cfg.ema_halflife is None else cfg.ema_halflife


def _state(step: int, gen, ema, opt, objective) -> dict:
    """Everything a resumed run needs (the `.state.pt` of a checkpoint)."""
    return {"net": gen.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "aux": objective.aux_state(), "step": step}


def _restore(run: RunDir, gen, ema, opt, objective) -> int:
    """Load the newest checkpoint's state, if any; returns the step to continue from."""
    if (stem := run.latest()) is None:
        return 0
    return run.restore(stem, {"net": gen.load_state_dict, "ema": ema.load_state_dict,
                              "opt": opt.load_state_dict, "aux": objective.load_aux_state})


def train_onestep(cfg: OneStepConfig, out: str, device: str = "auto", progress: bool = True,
                  allow_teacher_change: bool = False, speed: Speed = Speed()) -> dict:
    """Train (or resume) a one-step generator in run directory `out`; returns the last record
    (the final evaluation when there is one). config.json records the teacher's weights hash;
    resuming against a teacher whose weights changed is refused unless `allow_teacher_change`,
    which records the change (`teacher_changes`: step, old and new hash). `speed`: GPU
    switches (`speed.py`), not part of the run's config."""
    cfg = resolve_config(cfg)
    ddp = Dist()
    ddp.local_batch(cfg.batch)  # batch must split evenly across ranks
    dev = pick_device(device)
    teacher = _load_teacher(cfg, dev)
    data = dataset_for_network(teacher, cfg.teacher, cfg.data, cfg.data_path)
    gen, records = build_generator(cfg, teacher)
    _check(any(p.requires_grad for p in gen.parameters()),
           f"--freeze {cfg.freeze} leaves no trainable parameter; freeze fewer layers (e.g. gdd)")
    frozen = next((r["fraction"] for r in records if r["op"] == "freeze"), 0.0)
    config = {"kind": "student", **to_plain(cfg), "init_records": records,
              "frozen_fraction": frozen, "teacher_hash": weights_hash(teacher)}
    with RunDir(out, config, resume_ignore=("images", "teacher_hash", "teacher_changes"),
                lock=ddp.main) as run, torch.profiler.record_function(TRAINING):
        return _train(cfg, run, ddp, dev, teacher, data, gen, records, progress,
                      allow_teacher_change, speed)


def _teacher_check(run: RunDir, step: int, allow_change: bool) -> dict | None:
    """The config.json changes that record the teacher of a resumed run (None: unchanged);
    UserError when its weights changed and that is not allowed."""
    new = run.config["teacher_hash"]
    if run.previous is None or run.previous.get("teacher_hash") == new:
        return None
    old = run.previous.get("teacher_hash")
    if old is None:   # a run from before teachers were hashed: record the hash from now on
        return {"teacher_hash": new}
    _check(allow_change, f"the teacher {run.config['teacher']} changed since {run.path} was "
                         f"trained from it (weights hash {old} -> {new}); restore that teacher, "
                         f"use another --out, or pass --allow-teacher-change to continue and "
                         f"record the change")
    changes = run.previous.get("teacher_changes", []) + [{"step": step, "from": old, "to": new}]
    return {"teacher_hash": new, "teacher_changes": changes}


def _train(cfg: OneStepConfig, run: RunDir, ddp: Dist, dev: torch.device, teacher, data, gen,
           records: list[dict], progress: bool, allow_teacher_change: bool,
           speed: Speed) -> dict:
    images = data.images.to(dev)
    torch.manual_seed(cfg.seed)
    objective = objective_class(cfg.objective)(teacher, cfg, data.shape, dev)
    ema = ema_copy(gen)
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=cfg.lr,
                           betas=cfg.betas)
    step = _restore(run, gen, ema, opt, objective)
    apply_speed(speed, dev, gen, teacher)
    teacher_changes = _teacher_check(run, step, allow_teacher_change)
    classes = label_dim(gen) if cfg.labels else 0
    onehot = one_hot(data.labels, classes, dev) if classes else None
    evaluate = Evaluator(cfg, data, dev, classes) if ddp.main and cfg.eval_n else None
    sample = generator_map(cfg)

    def grid(name: str):   # a conditional generator's grid: one class per column
        y = one_hot(class_labels(gen, f"0-{classes - 1}", range(GRID)), classes) if classes \
            else None
        save_grid(samples(sample, ema, range(GRID), data.shape, dev, y), run.samples / name,
                  classes or None)

    if ddp.main:
        run.write_config()
        if teacher_changes:
            run.update_config(**teacher_changes)
        run.resume_metrics(step)
        if step == 0:
            grid("init.png")
    model = torch.nn.parallel.DistributedDataParallel(gen) if ddp.on else gen
    total = -(-cfg.images // cfg.batch)
    meta = dict(kind="student", objective=cfg.objective, init=records, data=cfg.data,
                seed=cfg.seed, sigma_cond=cfg.sigma_cond, steps=cfg.steps,
                sigma_mid=cfg.sigma_mid)

    def log_eval(step: int) -> dict:
        try:
            metrics = evaluate(sample, ema)
        except NonFiniteSamples:
            raise diverged(step, "the EMA generator's samples are not finite", run) from None
        rec = {"kind": "eval", "step": step, "images_seen": step * cfg.batch, **metrics}
        append_jsonl(run.metrics, rec)
        return rec

    record = log_eval(0) if evaluate and step == 0 else {}
    bar = tqdm(total=total, initial=step, disable=None if (progress and ddp.main) else True,
               desc=cfg.objective, unit="step", dynamic_ncols=True)
    t0, step0 = time.perf_counter(), step
    while step < total:
        g = step_generator(cfg.seed, step)
        idx = ddp.shard(torch.randint(len(images), (cfg.batch,), generator=g))
        z = ddp.shard(torch.randn(cfg.batch, *data.shape, generator=g)).to(dev)
        real = images[idx.to(dev)]
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)) + ddp.rank)  # dropout
        labels = None
        if onehot is not None:   # the fake batch's labels: those of random training images
            pick = torch.randint(len(images), (cfg.batch,), generator=step_generator(
                cfg.seed, step, 3))
            labels = Labels(fake=onehot[ddp.shard(pick).to(dev)], real=onehot[idx.to(dev)])
        net = model if labels is None else bind(model, labels.fake)
        with autocast(dev):
            with torch.no_grad():
                fake = sample(net, z)
            logs = objective.aux_step(fake, real, step_generator(cfg.seed, step, 1), step,
                                      labels)
            fake = sample(net, z)
            loss, gen_logs = objective.generator_loss(model, fake, z, real,
                                                      step_generator(cfg.seed, step, 2), step,
                                                      labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        update_ema(ema, gen, cfg.batch, _ema_halflife(cfg, step * cfg.batch))
        bar.update(1)
        logs.update(gen_logs)
        check_finite(step, logs, run)
        if step % cfg.log_every == 0 or step == total:
            rate = (step - step0) * cfg.batch / max(time.perf_counter() - t0, 1e-9)
            record = {"kind": "train", "step": step, "images_seen": step * cfg.batch,
                      **{k: ddp.mean(v) for k, v in sorted(logs.items())}, "images_per_s": rate}
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in logs.items() if "loss" in k},
                             "img_s": f"{rate:.0f}"})
            if ddp.main:
                append_jsonl(run.metrics, record)
        if evaluate and evaluates(cfg, step, total):
            record = log_eval(step)
        if ddp.main and (step % cfg.ckpt_every == 0 or step == total):
            run.save(step, gen, ema, _state(step, gen, ema, opt, objective),
                     images_seen=step * cfg.batch, **meta)
        ddp.barrier()
    bar.close()
    if ddp.main:
        grid("final.png")
    return record or (read_jsonl(run.metrics) or [{}])[-1]
