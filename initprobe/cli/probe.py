"""Probe commands: probe-activations, attribute (per-layer profiles across noise levels)."""

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ..data import DATA_HELP, PATH_HELP
from ..measure.analyses.profiles import DEFAULT_LAYERS
from . import app
from .common import DEVICE_HELP, LABELS_HELP, LAYERS_HELP, class_inputs, dataset_for, run_labels

Opt = typer.Option

def _summary(df: pd.DataFrame, metric: str) -> list[str]:
    """Per run: layers x sigmas, and the median over layers of the sigma where each layer
    peaks, per side."""
    d = df[df["metric"] == metric]
    lines = []
    for run, r in d.groupby("run", sort=False):
        peaks = r.loc[r.groupby("layer", sort=False)["value"].idxmax()]
        by_side = peaks.groupby("side", sort=False)["sigma"].median()
        sides = ", ".join(f"{s} {v:.3g}" for s, v in by_side.items())
        lines.append(f"{run}: {r['layer'].nunique()} layers x {r['sigma'].nunique()} sigmas; "
                     f"median peak sigma: {sides}")
    return lines


def _write(df: pd.DataFrame, out: Path, name: str, metric: str, title: str) -> None:
    from ..report.figures import layer_sigma_heatmap
    from ..runio import atomic_write_text
    csv = out / f"{name}.csv"
    atomic_write_text(csv, df.to_csv(index=False))
    png = layer_sigma_heatmap(df, out / f"{name}.png", "minmax", title)
    for line in _summary(df, metric):
        typer.echo(line)
    typer.echo(f"wrote {csv} and {png}")


@app.command("probe-activations")
def probe_activations_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoints (file, stem, run dir)")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    split: Annotated[str, Opt(help="train or test")] = "train",
    n_images: Annotated[int, Opt(help="number of real images")] = 256,
    layers: Annotated[str, Opt(help=LAYERS_HELP)] = DEFAULT_LAYERS,
    stat: Annotated[str, Opt(help="mean_abs or rms")] = "mean_abs",
    seed: Annotated[int, Opt(help="noise seed (the same noise for every checkpoint)")] = 0,
    label: Annotated[list[str] | None, Opt(help="one per checkpoint (default: file stem)")] = None,
    batch: Annotated[int, Opt(help="images per forward pass")] = 256,
    labels: Annotated[str | None, Opt(help=LABELS_HELP)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """GDD's activation-vs-timestep probe: each layer's mean |activation| (or RMS) on noised
    real images at the 18 EDM noise levels; writes activations.csv and activations.png (a
    layers x sigma heatmap, min-max normalized per layer, one panel per checkpoint).

    Example: initprobe probe-activations runs/teacher-digits runs/gen-digits
             --label teacher --label generator --out runs/probe

    Class-conditional networks see the images' own labels (or --labels, e.g. 3).
    """
    from ..measure.analyses.activations import probe_many
    from ..measure.analyses.profiles import ProbeOptions
    from ..nets.io import load_network
    from ..train.loop import pick_device
    names = run_labels(checkpoints, label)
    dev = pick_device(device)
    nets = {n: load_network(c).to(dev) for n, c in zip(names, checkpoints)}
    ds = dataset_for(next(iter(nets.values())), data, data_path, split, n_images)
    options = ProbeOptions(layers=layers, seed=seed, batch=batch, progress=True)
    df = probe_many(nets, ds.images, options, stat, class_inputs(nets, labels, ds, dev))
    _write(df, out, "activations", stat, f"{stat} of layer outputs, min-max per layer")


@app.command("attribute")
def attribute_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint file, stem or run directory")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    split: Annotated[str, Opt(help="train or test")] = "train",
    n_images: Annotated[int, Opt(help="number of real images")] = 64,
    layers: Annotated[str, Opt(help=LAYERS_HELP)] = DEFAULT_LAYERS,
    method: Annotated[str, Opt(help="conductance or grad_x_act")] = "conductance",
    target: Annotated[str, Opt(help="loss (per-example EDM loss) or projection")] = "loss",
    baseline: Annotated[str, Opt(help="conductance baseline: mean (noisy input) or zero")] = "mean",
    n_steps: Annotated[int, Opt(help="conductance path points")] = 50,
    internal_batch_size: Annotated[int | None, Opt(help="captum's inputs per pass")] = None,
    seed: Annotated[int, Opt(help="noise and projection-direction seed")] = 0,
    label: Annotated[str | None, Opt(help="run label (default: file stem)")] = None,
    labels: Annotated[str | None, Opt(help=LABELS_HELP)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """Captum layer attributions per layer and noise level: mean |attribution| of each layer's
    output to a per-example target; writes attribution.csv and attribution.png (layers x sigma
    heatmap, min-max normalized per layer).

    Example: initprobe attribute runs/teacher-digits --method conductance --target loss
             --n-images 64 --internal-batch-size 32 --out runs/attr
    """
    from dataclasses import replace

    from ..measure.analyses.attribution import DEFAULT_PROBE, AttributionOptions, attribute
    from ..nets.io import load_network
    from ..train.loop import pick_device
    how = AttributionOptions(method, target, baseline, n_steps, internal_batch_size)
    dev = pick_device(device)
    net = load_network(checkpoint).to(dev)
    ds = dataset_for(net, data, data_path, split, n_images)
    options = replace(DEFAULT_PROBE, layers=layers, seed=seed, progress=True)
    df = attribute(net, ds.images, options, how, class_inputs({"": net}, labels, ds, dev)[""])
    df["run"] = label or Path(checkpoint).stem
    _write(df, out, "attribution", f"attr_{method}", f"{method} attribution to the {target}, "
           f"min-max per layer")
