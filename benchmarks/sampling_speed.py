"""Sampling throughput: the one-step map D(80 z; 80) vs EDM Heun with 18 steps (35 network
evaluations), same network and batch, same process. Expected speedup about 35x.

    python benchmarks/sampling_speed.py [--n 512] [--preset tiny]
"""

import argparse
import time

import torch

from initprobe.diffusion import generate, latents
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig


def rate(net, z, sampler, steps=18) -> float:
    t0 = time.perf_counter()
    generate(net, z, sampler, steps)
    return len(z) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--resolution", type=int, default=8)
    args = ap.parse_args()
    net = Denoiser(UNetConfig(img_resolution=args.resolution, **PRESETS[args.preset])).eval()
    z = latents(range(args.n), (1, args.resolution, args.resolution))
    with torch.no_grad():
        rate(net, z[:32], "one-step")  # warm-up
        one = max(rate(net, z, "one-step") for _ in range(3))
        heun = max(rate(net, z, "heun") for _ in range(2))
    print(f"one-step: {one:.0f} images/s; heun-18: {heun:.1f} images/s")
    print(f"speedup one-step/heun-18 = {one / heun:.1f}x (expected about 35x)")


if __name__ == "__main__":
    main()
