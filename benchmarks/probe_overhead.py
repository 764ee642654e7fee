"""Activation-probe overhead: forward passes with the probe's hooks (`hooks.capture` on the
last conv of every block, reducing each output to a per-image mean |activation| inside the
hook, as `activations.probe_activations` does) vs the same forward passes without hooks.
Target: time ratio <= 1.15x.

Usage: OMP_NUM_THREADS=1 python benchmarks/probe_overhead.py [--preset small] [--batch 64]
"""

import argparse
import statistics
import time

import torch

from initprobe.data import NATIVE_SIZE
from initprobe.measure.analyses.profiles import DEFAULT_LAYERS, select_layers
from initprobe.measure.features.hooks import capture
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig


def mean_abs(h):
    return h.flatten(1).abs().mean(1).double()


@torch.no_grad()
def timed(fn, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="forwards per timing")
    ap.add_argument("--rounds", type=int, default=7, help="alternating timings (median taken)")
    args = ap.parse_args()
    size = NATIVE_SIZE["mnist"] if args.preset != "tiny" else NATIVE_SIZE["digits"]
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(img_resolution=size, **PRESETS[args.preset])).eval()
    x = torch.randn(args.batch, 1, size, size)
    ids = select_layers(net, DEFAULT_LAYERS)

    def plain():
        net(x, 1.0)

    def probed():
        with capture(net, ids, reduce=mean_abs):
            net(x, 1.0)

    plain(), probed()  # warm-up
    ratios, base = [], []
    for _ in range(args.rounds):  # alternate, so drifting machine load hits both alike
        t_plain, t_probe = timed(plain, args.repeats), timed(probed, args.repeats)
        ratios.append(t_probe / t_plain)
        base.append(t_plain)
    print(f"preset {args.preset} ({size}x{size}), batch {args.batch}, {len(ids)} hooked layers, "
          f"{torch.get_num_threads()} thread(s); plain forward {statistics.median(base) * 1e3:.1f}"
          f" ms")
    print(f"probe overhead: {statistics.median(ratios):.3f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()
