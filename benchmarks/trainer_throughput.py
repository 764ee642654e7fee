"""One-step trainer images/s per objective: `train_onestep` vs a bare loop, same process.

The bare loop performs the same computation — the same objective's `aux_step` and
`generator_loss`, the generator's Adam step and EMA — with none of the trainer's machinery (run
directory, seeded per-step generators, logging, checkpoints). Evaluation is off in both.
Target ratio >= 0.9.

    python benchmarks/trainer_throughput.py [--steps 30] [--batch 64] [--objectives gan,cd]
"""

import argparse
import tempfile
import time

import torch

from initprobe.data import load_dataset
from initprobe.diffusion import one_step
from initprobe.nets.io import ema_copy, load_network, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig
from initprobe.runio import read_jsonl
from initprobe.train.loop import update_ema
from initprobe.train.objectives import OBJECTIVES, Setting, objective_class
from initprobe.train.onestep import OneStepConfig, resolve_config, train_onestep


def bare(cfg: OneStepConfig, steps: int) -> float:
    cfg = resolve_config(cfg)
    teacher = load_network(cfg.teacher).requires_grad_(False)
    images = load_dataset("digits").images
    gen = Denoiser(teacher.cfg, "edm-eps")
    gen.load_state_dict(teacher.state_dict())
    ema = ema_copy(gen)
    setting = Setting(tuple(images.shape[1:]), "cpu", cfg.lr_aux, cfg.betas, cfg.seed)
    objective = objective_class(cfg.objective)(teacher, cfg.options, setting)
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=cfg.betas)
    t0 = time.perf_counter()
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        real = images[torch.randint(len(images), (cfg.batch,), generator=g)]
        z = torch.randn(cfg.batch, *images.shape[1:], generator=g)
        with torch.no_grad():
            fake = one_step(gen, z)
        objective.aux_step(fake, real, g, step)
        loss, _ = objective.generator_loss(gen, one_step(gen, z), z, real, g, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, gen, cfg.batch, 5_000)
    return steps * cfg.batch / (time.perf_counter() - t0)


def trainer(cfg: OneStepConfig, steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        train_onestep(cfg, d, progress=False)
        return [r for r in read_jsonl(f"{d}/metrics.jsonl") if "images_per_s" in r][-1][
            "images_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        save_checkpoint(f"{d}/teacher", Denoiser(UNetConfig(**PRESETS["tiny"])))
        for name in args.objectives.split(","):
            cfg = OneStepConfig(teacher=f"{d}/teacher", objective=name, batch=args.batch,
                                images=args.steps * args.batch, eval_n=0,
                                log_every=args.steps, ckpt_every=args.steps)
            b, t = bare(cfg, args.steps), trainer(cfg, args.steps)
            print(f"{name:>10s}: bare {b:7.0f} images/s, trainer {t:7.0f} images/s, "
                  f"ratio {t / b:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
