"""Foundation commands: train-teacher, sample, layers."""

from pathlib import Path

import numpy as np
import pandas as pd
import typer

from ..data import DATA_HELP, PATH_HELP
from ..errors import UserError
from ..train.teacher import DEFAULT_LABEL_DROPOUT
from . import app
from .common import LABELS_HELP, parse_ints


def parse_seeds(spec: str) -> list[int]:
    """'0-63' or '0,5,9' or '0-3,10' -> list of ints."""
    seeds = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise UserError(f"bad --seeds {spec!r}; write a range like 0-63 or a list like "
                        f"0,5,9") from None
    if not seeds:
        raise UserError("--seeds is empty; write a range like 0-63")
    return seeds


@app.command("train-teacher")
def train_teacher_cmd(
    out: Path = typer.Option(..., "--out", help="run directory (rerun the same to resume)"),
    data: str = typer.Option("digits", help=DATA_HELP),
    data_path: str = typer.Option(None, help=PATH_HELP),
    size: int = typer.Option(None, help="image side (default: digits 8, mnist/cifar10 32)"),
    preset: str = typer.Option("tiny", help="network size: tiny, small, cifar"),
    model_channels: int = typer.Option(None, help="base channel count (default: the preset's)"),
    channel_mult: str = typer.Option(None, help="channel multiplier per resolution, e.g. 1,2,2 "
                                     "(default: the preset's)"),
    attn_res: str = typer.Option(None, help="resolutions with self-attention, e.g. 8 or 16,8; "
                                 "'none' for none (default: the preset's)"),
    images: int = typer.Option(400_000, help="training budget in images seen"),
    batch: int = typer.Option(128, help="global batch size"),
    lr: float = typer.Option(2e-3, help="Adam learning rate"),
    ema_halflife: float = typer.Option(20_000, help="EMA half-life in images"),
    seed: int = typer.Option(0, help="random seed (runs are deterministic on CPU)"),
    ckpt_every: int = typer.Option(1000, help="checkpoint every N steps"),
    labels: bool = typer.Option(False, "--labels", help="class-conditional: one class "
                                "embedding input per class of the data, fed each image's label"),
    label_dropout: float = typer.Option(DEFAULT_LABEL_DROPOUT, help="with --labels: probability "
                                        "that a training image is shown without its label "
                                        "(classifier-free guidance; EDM itself uses 0)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
):
    """Train an EDM teacher (EDM loss, log-normal sigma, Adam, EMA); resumable.

    Example: initprobe train-teacher --data digits --preset tiny --out runs/teacher-digits

    MNIST:   initprobe train-teacher --data mnist --data-path ../shared/data/mnist.npz
             --size 16 --preset small --images 200000 --out runs/teacher-mnist16

    Wider:   ... --preset small --model-channels 32 --channel-mult 1,2 --attn-res none

    Class-conditional: initprobe train-teacher --data digits --labels --out runs/teacher-cond
    """
    from ..train.teacher import TeacherConfig, train_teacher
    cfg = TeacherConfig(data=data, data_path=data_path, size=size, preset=preset,
                        model_channels=model_channels,
                        channel_mult=parse_ints(channel_mult, "--channel-mult"),
                        attn_res=parse_ints(attn_res, "--attn-res"), images=images,
                        batch=batch, lr=lr, ema_halflife=ema_halflife, seed=seed,
                        ckpt_every=ckpt_every, labels=labels, label_dropout=label_dropout)
    rec = train_teacher(cfg, str(out), device=device)
    typer.echo(f"done: {out} (loss {rec.get('loss', float('nan')):.4f}); samples in "
               f"{out / 'samples'}")


@app.command("sample")
def sample_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint file, stem or run directory"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    sampler: str = typer.Option("heun", help="heun, euler, two-step, one-step (D(80 z; 80)), "
                                "generator (a student's trained one- or two-step map)"),
    steps: int = typer.Option(18, help="steps of heun/euler (Karras grid, rho 7)"),
    sigma_mid: float = typer.Option(2.0, help="intermediate sigma of the two-step map"),
    seeds: str = typer.Option("0-63", help="latent seeds: 0-63 or 0,5,9"),
    weights: str = typer.Option("ema", help="ema or net"),
    labels: str = typer.Option(None, help=LABELS_HELP),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
):
    """Draw samples: a PNG grid and an .npz (images in [-1, 1], seeds, and a conditional
    network's labels).

    Example: initprobe sample runs/teacher-digits --sampler heun --steps 18 --out runs/samples

    Class-conditional: initprobe sample runs/teacher-cond --labels 0-9 --seeds 0-99 --out
    runs/cond-samples (seed i gets class i mod 10; --labels 3: all class 3; --labels uniform)
    """
    from ..diffusion import generate, latents, sampler_for
    from ..nets.io import load_generator
    from ..nets.labels import class_labels, label_dim, one_hot
    from ..report.images import save_grid
    from ..runio import atomic_save_npz
    from ..train.loop import pick_device
    if steps < 1 or sigma_mid <= 0:
        raise UserError("--steps must be >= 1 and --sigma-mid > 0")
    dev = pick_device(device)
    net, gen_map = load_generator(checkpoint, which=weights).to(dev)
    how = sampler_for(sampler, gen_map)
    seed_list = parse_seeds(seeds)
    z = latents(seed_list, (net.cfg.in_channels, net.cfg.img_resolution, net.cfg.img_resolution),
                dev)
    y = class_labels(net, labels, seed_list)
    if y is not None and labels is None:
        typer.echo("note: a class-conditional network without --labels: each seed's class is "
                   "drawn uniformly (as --labels uniform)", err=True)
    x = generate(net, z, how, steps, sigma_mid, labels=one_hot(y, label_dim(net), dev)).cpu()
    name = f"{sampler}-{steps}" if sampler in ("heun", "euler") else sampler
    png = save_grid(x, out / f"{name}.png")
    npz = out / f"{name}.npz"
    extra = {} if y is None else {"labels": y.numpy()}
    atomic_save_npz(npz, images=x.numpy(), seeds=np.array(seed_list), **extra)
    typer.echo(f"wrote {png} and {npz} ({len(seed_list)} images)")


@app.command("layers")
def layers_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint file, stem or run directory"),
    select: str = typer.Option(None, help="selector spec, e.g. decoder, res:16, '*.conv1', gdd"),
    csv: Path = typer.Option(None, help="also write the table as CSV"),
):
    """Print the layer table (id, side, resolution, block, sublayer, parameters, shape).

    Example: initprobe layers runs/teacher-digits --select 'decoder-attention'
    """
    from ..nets.io import load_network
    from ..nets.layers import layer_table
    from ..runio import atomic_write_text
    net = load_network(checkpoint)
    if select:
        from ..ablate.select import selection_table
        table = selection_table(net, select)
    else:
        table = layer_table(net)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        typer.echo(table.to_string(index=False))
    total = sum(p.numel() for p in net.parameters())
    chosen = int(table["params"].sum())
    typer.echo(f"\n{len(table)} layers, {chosen:,} of {total:,} parameters "
               f"({chosen / total:.1%})")
    if csv:
        atomic_write_text(csv, table.to_csv(index=False))
