"""Peak memory of one-step training per objective, each objective in its own process.

    python benchmarks/objective_memory.py [--preset small] [--resolution 32] [--batch 64]
                                          [--steps 3] [--device cpu] [--objectives gan,ratio,...]

A randomly initialized teacher of the given preset is written to a temporary checkpoint (memory
does not depend on the weights). For each objective a child process runs `train_onestep` for
--steps steps on digits padded to --resolution (no evaluation) and reports its peak tensor
memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the peak of the running sum of all
tensor allocations and frees that `torch.profiler` (profile_memory) records during the call.
The process's peak resident set size (`ru_maxrss`, which adds the Python/torch runtime and
allocator slack) is shown beside it on CPU. A `baseline` child runs the same loop with a null
objective (no auxiliary network; the generator trains on mean(G(z)^2)).
The table shows each peak, the peak above the baseline (the objective's own cost: auxiliary
networks, their optimizer states and activations) and both as ratios against `gan`.
Numbers are printed, not asserted.
"""

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from initprobe.reproduce.memory import peak_bytes

OBJECTIVES = ("gan", "ratio", "diffratio", "dmd", "cd")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def write_teacher(folder: Path, preset: str, resolution: int) -> Path:
    import torch

    from initprobe.nets.io import save_checkpoint
    from initprobe.nets.precond import Denoiser
    from initprobe.nets.unet import PRESETS, UNetConfig
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(img_resolution=resolution, **PRESETS[preset]))
    stem = folder / "teacher"
    save_checkpoint(stem, net, kind="teacher")
    return stem


class NullObjective:
    """The baseline: no auxiliary network; the generator trains on mean(G(z)^2)."""

    lr_aux = 1e-4

    def __init__(self, teacher=None, options=None, setting=None):
        pass

    @dataclasses.dataclass(frozen=True)
    class Options:
        def check(self):
            pass

    def aux_step(self, fake, real, g, step):
        return {}

    def generator_loss(self, gen, fake, z, real, g, step):
        return fake.square().mean(), {}

    def aux_state(self):
        return {}


def run_objective(args, objective: str):
    from initprobe.train.objectives import OBJECTIVES
    from initprobe.train.onestep import OneStepConfig, train_onestep
    OBJECTIVES["baseline"] = "__main__:NullObjective"  # this script, in the child process
    cfg = OneStepConfig(teacher=args.teacher, objective=objective, batch=args.batch,
                        images=args.batch * args.steps, eval_n=0, ckpt_every=10**9,
                        log_every=10**9)
    with tempfile.TemporaryDirectory() as out:
        train_onestep(cfg, out, device=args.device, progress=False)


def child(args):
    import torch
    torch.set_num_threads(1)
    peak = peak_bytes(lambda: run_objective(args, args.child), args.device)
    print(json.dumps({"objective": args.child, "peak": peak, "rss": rss_peak()}))


def measure(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--teacher", args.teacher,
           "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="teacher size: tiny, small, cifar")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    names = [o for o in args.objectives.split(",") if o]
    with tempfile.TemporaryDirectory() as tmp:
        args.teacher = str(write_teacher(Path(tmp), args.preset, args.resolution))
        base = measure(args, "baseline")
        peaks = {name: measure(args, name) for name in names}
    mib = 2**20
    what = "CUDA max allocated" if args.device.startswith("cuda") else "torch.profiler"
    print(f"peak tensor memory ({what}); preset {args.preset} {args.resolution}x"
          f"{args.resolution}, batch {args.batch}, {args.steps} steps; baseline (no objective) "
          f"{base['peak'] / mib:.1f} MiB, RSS {base['rss'] / mib:.0f} MiB")
    ref = peaks["gan"]["peak"] if "gan" in peaks else None
    print(f"{'objective':<10} {'peak MiB':>9} {'above base':>11} {'peak/gan':>9} "
          f"{'above/gan':>10} {'RSS MiB':>8}")
    for name, m in peaks.items():
        above = m["peak"] - base["peak"]
        rel = f"{m['peak'] / ref:9.2f}" if ref else f"{'-':>9}"
        rel_above = (f"{above / (ref - base['peak']):10.2f}" if ref and ref != base["peak"]
                     else f"{'-':>10}")
        print(f"{name:<10} {m['peak'] / mib:9.1f} {above / mib:11.1f} {rel} {rel_above} "
              f"{m['rss'] / mib:8.0f}")


if __name__ == "__main__":
    main()
