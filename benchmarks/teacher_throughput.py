"""Teacher-training images/s: initprobe's loop vs a bare hand-written loop, same process.

Both train the same tiny network with the same EDM loss, Adam and EMA on digits; the bare loop
has no run directory, logging, seeding scheme or checkpoints. Target ratio >= 0.95.

    python benchmarks/teacher_throughput.py [--steps 150] [--batch 128]
"""

import argparse
import tempfile
import time

import torch

from initprobe.data import load_dataset
from initprobe.diffusion import edm_loss, sample_sigma
from initprobe.nets.io import ema_copy
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig
from initprobe.runio import read_jsonl
from initprobe.train.loop import update_ema
from initprobe.train.teacher import TeacherConfig, train_teacher


def bare(steps: int, batch: int) -> float:
    images = load_dataset("digits").images
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(**PRESETS["tiny"])).train()
    ema = ema_copy(net)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch,))]
        loss = edm_loss(net, x, sample_sigma(batch), torch.randn_like(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, net, batch, 20_000)
    return steps * batch / (time.perf_counter() - t0)


def initprobe_loop(steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = TeacherConfig(images=steps * batch, batch=batch, log_every=steps, ckpt_every=steps,
                            sample_steps=1)
        train_teacher(cfg, d, progress=False)
        return read_jsonl(f"{d}/metrics.jsonl")[-1]["images_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    bare(10, args.batch)  # warm-up
    runs = [(bare(args.steps, args.batch), initprobe_loop(args.steps, args.batch))
            for _ in range(2)]
    b = max(r[0] for r in runs)
    i = max(r[1] for r in runs)
    print(f"bare loop: {b:.0f} images/s; initprobe train-teacher: {i:.0f} images/s")
    print(f"ratio initprobe/bare = {i / b:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
