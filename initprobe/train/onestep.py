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
import time

import torch
from tqdm.auto import tqdm

from ..ablate.ops import build_init
from ..errors import UserError
from ..measure.features.extractors import weights_hash
from ..nets.diffusers_adapter import DiffusersDenoiser, describe
from ..nets.io import dataset_for_network, ema_copy, load_network
from ..nets.labels import bind, class_labels, label_dim, one_hot
from ..nets.precond import Denoiser
from ..report.images import save_grid
from ..runio import append_jsonl, read_jsonl
from .config import OneStepConfig, resolve_config
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
from .objectives import Labels, Setting, objective_class
from .speed import Speed, apply_speed

EMA_RAMPUP = 0.05
GRID = 64  # latents of the sample grids
TRAINING = "initprobe.training"   # profiler range of the training proper (reproduce/memory.py)


def _check(cond: bool, message: str):
    if not cond:
        raise UserError(message)


def _load_teacher(cfg: OneStepConfig, dev) -> tuple[Denoiser | DiffusersDenoiser, dict]:
    """The frozen teacher and its architecture as config.json records it (`unet`, `precond`):
    a diffusers teacher keeps its own noise convention, so the generator copied from it does
    too (`precond` is recorded as `diffusers`)."""
    teacher = load_network(cfg.teacher, "ema")
    if isinstance(teacher, DiffusersDenoiser):
        arch = {"unet": describe(teacher)["unet"], "precond": "diffusers"}
    else:
        arch = {"unet": teacher.cfg.to_dict(), "precond": cfg.precond}
    _check(not cfg.labels or label_dim(teacher) > 0,
           f"--labels: the teacher {cfg.teacher} is unconditional (no class embedding); train "
           f"one with train-teacher --labels, or leave --labels out")
    return teacher.to(dev).eval().requires_grad_(False), arch


def build_generator(cfg: OneStepConfig, teacher: Denoiser | DiffusersDenoiser) -> tuple[
        Denoiser | DiffusersDenoiser, list[dict]]:
    """The generator before training and the records of every init op (layers touched)."""
    spec = cfg.init_spec
    source = None
    if spec.transfer_from is not None:
        source = load_network(spec.transfer_from, "ema").to(next(teacher.parameters()).device)
    gen, records = build_init(teacher, spec, cfg.seed, source)
    if isinstance(gen, Denoiser):
        gen.precond = cfg.precond
        if gen.cfg.label_dim:   # G(z, y) always sees its label
            gen.model.cfg = dataclasses.replace(gen.cfg, label_dropout=0.0)
    return gen.train(), records


def budget_steps(cfg: OneStepConfig) -> dict[int, int]:
    """Step -> budget of each `eval_at` budget: the first step at or past it. Its checkpoint is
    kept (never pruned) and its sample grid saved, so a run extended to a larger budget still
    answers for the smaller ones (`checkpoint_at`)."""
    return {-(-b // cfg.batch): b for b in sorted(cfg.eval_at, reverse=True)}


def budget_grid(images: int) -> str:
    """The sample grid saved at budget `images`."""
    return f"images-{images}.png"


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
    teacher, arch = _load_teacher(cfg, dev)
    data = dataset_for_network(teacher, cfg.teacher, cfg.data, cfg.data_path)
    gen, records = build_generator(cfg, teacher)
    _check(any(p.requires_grad for p in gen.parameters()),
           f"--freeze {cfg.init_spec.freeze} leaves no trainable parameter; freeze fewer layers "
           f"(e.g. gdd)")
    frozen = next((r["fraction"] for r in records if r["op"] == "freeze"), 0.0)
    config = {"kind": "student", **to_plain(cfg.to_flat()), **arch, "init_records": records,
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
    classes = label_dim(gen) if cfg.labels else 0
    setting = Setting(data.shape, dev, cfg.lr_aux, cfg.betas, cfg.seed, classes, cfg.data,
                      cfg.data_path)
    objective = objective_class(cfg.objective)(teacher, cfg.options, setting)
    ema = ema_copy(gen)
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=cfg.lr,
                           betas=cfg.betas)
    step = _restore(run, gen, ema, opt, objective)
    apply_speed(speed, dev, gen, teacher)
    teacher_changes = _teacher_check(run, step, allow_teacher_change)
    onehot = one_hot(data.labels, classes, dev) if classes else None
    evaluate = Evaluator(cfg, data, dev, classes) if ddp.main and cfg.eval_n else None
    sample = cfg.gen_map

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
    budgets = budget_steps(cfg)
    meta = dict(kind="student", objective=cfg.objective, init=records, data=cfg.data,
                seed=cfg.seed, **cfg.gen_map.to_meta())

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
        budget = budgets.get(step)
        if ddp.main and budget is not None:
            grid(budget_grid(budget))
        if ddp.main and (step % cfg.ckpt_every == 0 or step == total or budget is not None):
            run.save(step, gen, ema, _state(step, gen, ema, opt, objective),
                     keep=budgets, images_seen=step * cfg.batch, **meta)
        ddp.barrier()
    bar.close()
    if ddp.main:
        grid("final.png")
    return record or (read_jsonl(run.metrics) or [{}])[-1]
