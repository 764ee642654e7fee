"""Quality commands: train-features, quality."""

from pathlib import Path

import typer

from ..errors import UserError
from . import app
from .foundation import DATA_HELP, PATH_HELP


@app.command("train-features")
def train_features_cmd(
    data: str = typer.Option("digits", help=DATA_HELP),
    data_path: str = typer.Option(None, help=PATH_HELP),
    size: int = typer.Option(None, help="image side (default: the dataset's UNet size)"),
    steps: int = typer.Option(1500, help="classifier training steps"),
    seed: int = typer.Option(0, help="random seed"),
):
    """Train (or find in the cache) the domain classifier whose features measure quality.

    Example: initprobe train-features --data mnist --data-path ../shared/data/mnist.npz
    """
    from ..data import load_dataset
    from ..measure.features import cache_dir, load_or_train
    train = load_dataset(data, data_path, "train", size)
    test = load_dataset(data, data_path, "test", size)
    _, meta = load_or_train(train, test, steps=steps, seed=seed)
    typer.echo(f"classifier for {data}: test accuracy {meta['test_accuracy']:.4f} "
               f"(cached under {cache_dir() / 'features'})")


@app.command("quality")
def quality_cmd(
    checkpoint: Path = typer.Argument(..., help="checkpoint file, stem or run directory"),
    out: Path = typer.Option(..., "--out", help="output folder for quality.csv"),
    data: str = typer.Option("digits", help=DATA_HELP),
    data_path: str = typer.Option(None, help=PATH_HELP),
    sampler: str = typer.Option("heun", help="heun, euler, two-step, one-step"),
    steps: int = typer.Option(18, help="sampler steps (heun/euler)"),
    sigma_mid: float = typer.Option(2.0, help="two-step intermediate sigma"),
    n: int = typer.Option(1000, help="number of samples (seeds 0..n-1)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
):
    """Sample quality against the training data on the domain classifier's features.

    Example: initprobe quality runs/teacher-digits --sampler heun --out runs/quality
    """
    from ..data import load_dataset
    from ..diffusion import generate, latents
    from ..measure.features import load_or_train
    from ..measure.quality import sample_quality
    from ..nets.io import load_network
    from ..runio import atomic_write_text
    from ..schema import frame
    from ..train.loop import pick_device
    if n < 2:
        raise UserError(f"--n must be at least 2 (got {n})")
    dev = pick_device(device)
    train = load_dataset(data, data_path, "train")
    fnet, _ = load_or_train(train, load_dataset(data, data_path, "test"))
    net = load_network(checkpoint).to(dev)
    if net.cfg.img_resolution != train.shape[-1] or net.cfg.in_channels != train.shape[0]:
        raise UserError(f"{checkpoint} makes {net.cfg.in_channels}x{net.cfg.img_resolution}^2 "
                        f"images but {data} has shape {train.shape}; pick the matching --data")
    z = latents(range(n), train.shape, dev)
    samples = generate(net, z, sampler, steps, sigma_mid).cpu()
    q = sample_quality(fnet, samples, train.images, train.num_classes)
    df = frame([{"metric": k, "value": v} for k, v in q.items()], run=str(checkpoint),
               sampler=sampler, steps=steps, n=n)
    atomic_write_text(out / "quality.csv", df.to_csv(index=False))
    for k, v in q.items():
        typer.echo(f"{k:>18s} {v:.4f}")
    typer.echo(f"wrote {out / 'quality.csv'}")
