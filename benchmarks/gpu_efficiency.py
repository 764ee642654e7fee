"""One-step trainer efficiency on the CIFAR-10 network: images/s, achieved TFLOP/s against the
device's dense bf16 peak, and peak memory, per objective (GAN, frozen-gdd) and per GPU switch.

One step is the trainer's (`train_onestep`): the objective's `aux_step` on a no-grad sample, the
generator's sample and `generator_loss`, backward and Adam, under the trainer's autocast (bf16
on CUDA, float32 on the CPU); EMA and logging are left out. FLOPs are counted, not estimated:
`torch.utils.flop_counter.FlopCounterMode` over one eager step (matmuls, convolutions and
attention, forward and backward; elementwise work and the lazy R1 penalty of every 16th step are
not counted, so the TFLOP/s is a lower bound of the arithmetic done). Achieved TFLOP/s = counted
FLOPs per step x steps / seconds. The GPU switches (`initprobe.train.speed`) are tried one on
top of the other: bf16+tf32, then channels_last, then torch.compile (the warm-up steps absorb
the compilation). Peak memory is `initprobe.reproduce.memory.peak_bytes` of one step after the
warm-up.

The network is a random-init EDM DDPM++ CIFAR-10 network (preset `cifar`, 32x32 RGB, ~56M
parameters) as teacher and generator, or `--teacher edm-cifar10-32x32-uncond-vp.pkl`. On a CPU
(CI) use the small preset:

    python benchmarks/gpu_efficiency.py                               # GPU: cifar, batch 256
    python benchmarks/gpu_efficiency.py --preset tiny --size 16 --batch 8 --steps 2 --warmup 1
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from initprobe.nets.io import load_network
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig
from initprobe.reproduce.memory import peak_bytes
from initprobe.train.loop import pick_device
from initprobe.train.objectives import Setting, objective_class
from initprobe.train.onestep import OneStepConfig, build_generator, resolve_config
from initprobe.train.speed import Speed, apply_speed

# dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first
# name contained in torch.cuda.get_device_name() wins
PEAK_BF16 = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
             ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
             ("L40S", 362.05), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2))
OBJECTIVES = {"gan": {"objective": "gan"}, "frozen-gdd": {"objective": "gan", "freeze": "gdd"}}
SWITCHES = {"bf16+tf32": Speed(), "+channels_last": Speed(channels_last=True),
            "+compile": Speed(channels_last=True, compile=True)}


def device_peak(dev: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    if dev.type != "cuda":
        return None, "no bf16 peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(dev)
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{name}, datasheet dense bf16"
    return None, f"{name} is not in the table (give --peak-tflops)"


def trainer_step(teacher, options: dict, batch: int, speed: Speed, dev: torch.device):
    """A function doing step k of the one-step trainer (module docstring)."""
    cfg = resolve_config(OneStepConfig.from_flat({"teacher": "(benchmark)", "batch": batch,
                                                  "lr": 1e-4, **options}))
    gen, _ = build_generator(cfg, teacher)
    shape = (teacher.cfg.in_channels, teacher.cfg.img_resolution, teacher.cfg.img_resolution)
    setting = Setting(shape, dev, cfg.lr_aux, cfg.betas, cfg.seed)
    objective = objective_class(cfg.objective)(teacher, cfg.options, setting)
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=cfg.lr,
                           betas=cfg.betas)
    apply_speed(speed, dev, gen, teacher)
    sample = cfg.gen_map
    real_images = torch.rand(1024, *shape, device=dev) * 2 - 1

    def step(k: int):
        g = torch.Generator().manual_seed(k)
        z = torch.randn(batch, *shape, generator=g).to(dev)
        real = real_images[torch.randint(len(real_images), (batch,), generator=g).to(dev)]
        # the trainer's autocast: bf16 on CUDA, float32 on the CPU
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            with torch.no_grad():
                fake = sample(gen, z)
            objective.aux_step(fake, real, g, k)
            loss, _ = objective.generator_loss(gen, sample(gen, z), z, real, g, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(make_teacher, options, args, speed, dev) -> dict:
    step = trainer_step(make_teacher(), options, args.batch, Speed(tf32=speed.tf32), dev)
    with FlopCounterMode(display=False) as counter:
        step(1)     # not a lazy-R1 step (step % r1_interval == 0): the counter cannot follow
                    # its double backward, so the 1-in-16 R1 penalty is left out of the count
    flops = counter.get_total_flops()
    step = trainer_step(make_teacher(), options, args.batch, speed, dev)
    for k in range(args.warmup):
        step(k)
    sync(dev)
    t0 = time.perf_counter()
    for k in range(args.steps):
        step(args.warmup + k)
    sync(dev)
    seconds = time.perf_counter() - t0
    peak = peak_bytes(lambda: step(args.warmup + args.steps), dev)
    return {"images_s": args.steps * args.batch / seconds,
            "tflops": flops * args.steps / seconds / 1e12, "gflop_step": flops / 1e9,
            "mem_gib": peak / 2**30}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cifar", choices=sorted(PRESETS))
    ap.add_argument("--size", type=int, default=32, help="image size (32: CIFAR-10)")
    ap.add_argument("--teacher", help="a network file instead of the random-init preset")
    ap.add_argument("--batch", type=int, default=256, help="GDD's CIFAR-10 batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--switches", default=None, help=f"of {','.join(SWITCHES)} (default: all "
                                                     f"on CUDA, none on the CPU)")
    args = ap.parse_args()
    dev = pick_device(args.device)
    peak, source = device_peak(dev, args.peak_tflops)

    def make_teacher():
        torch.manual_seed(0)
        if args.teacher:
            net = load_network(args.teacher)
        else:
            net = Denoiser(UNetConfig(img_resolution=args.size, in_channels=3, out_channels=3,
                                      **PRESETS[args.preset]), precond="vp")
        return net.to(dev).eval().requires_grad_(False)

    switches = (args.switches.split(",") if args.switches else
                list(SWITCHES) if dev.type == "cuda" else ["bf16+tf32"])
    print(f"device {dev} ({source}); network {args.teacher or args.preset} at {args.size}x"
          f"{args.size}, batch {args.batch}, {args.steps} timed steps after {args.warmup}")
    print(f"{'objective':>11s} {'switches':>15s} {'images/s':>9s} {'GFLOP/step':>10s} "
          f"{'TFLOP/s':>8s} {'% peak':>7s} {'peak GiB':>8s}")
    for name in args.objectives.split(","):
        for switch in switches:
            r = measure(make_teacher, OBJECTIVES[name], args, SWITCHES[switch], dev)
            share = f"{100 * r['tflops'] / peak:6.1f}%" if peak else "    n/a"
            label = switch if dev.type == "cuda" else "float32 (CPU)"
            print(f"{name:>11s} {label:>15s} {r['images_s']:9.1f} {r['gflop_step']:10.1f} "
                  f"{r['tflops']:8.3f} {share:>7s} {r['mem_gib']:8.3f}")


if __name__ == "__main__":
    main()
