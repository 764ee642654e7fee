"""Linear-probe command: what class information each layer's features hold at each noise level."""

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from ..data import DATA_HELP, PATH_HELP
from ..measure.analyses.profiles import DEFAULT_LAYERS
from . import app
from .common import DEVICE_HELP, LAYERS_HELP, dataset_for, numbers, run_labels

Opt = typer.Option


def _summary(df: pd.DataFrame) -> list[str]:
    """Per run: its best layer, that layer's accuracy averaged over sigma and at its best
    sigma, and the chance level."""
    from ..measure.analyses.linear_probe import best_layer_curves
    from ..report.probe_figures import chance_level
    lines = []
    for run, c in best_layer_curves(df).groupby("run", sort=False):
        top = c.loc[c["value"].idxmax()]
        lines.append(f"{run}: best layer {top['layer']}, accuracy {c['value'].mean():.3f} "
                     f"averaged over {len(c)} sigmas, {top['value']:.3f} at sigma "
                     f"{top['sigma']:.3g} (chance {chance_level(df):.3f})")
    return lines


@app.command("linear-probe")
def linear_probe_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoints (file, stem, run dir)")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    layers: Annotated[str, Opt(help=LAYERS_HELP)] = DEFAULT_LAYERS,
    sigmas: Annotated[str | None, Opt(help="comma-separated noise levels (default: the 18 EDM "
                                           "levels, 0.002 to 80)")] = None,
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    split: Annotated[str, Opt(help="dataset split the probe images come from: train or test")]
    = "train",
    n_images: Annotated[int, Opt(help="labelled real images, split into probe train and test")]
    = 1000,
    test_fraction: Annotated[float, Opt(help="share of the images held out to score the probe")]
    = 0.5,
    classifier: Annotated[str, Opt(help="ridge (RidgeClassifierCV, leave-one-out CV) or logistic "
                                        "(LogisticRegressionCV, 3-fold CV; slower)")] = "ridge",
    seed: Annotated[int, Opt(help="train/test split and noise seed (the same for every "
                                  "checkpoint)")] = 0,
    label: Annotated[list[str] | None, Opt(help="one per checkpoint (default: file stem)")] = None,
    batch: Annotated[int, Opt(help="images per forward pass")] = 256,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """Linear classifier probes: for each checkpoint, layer and sigma, a linear classifier on
    the standardized, spatially pooled layer outputs of noised real images predicts the class
    label; writes linear_probe.csv (test accuracy and balanced accuracy per layer and sigma, the
    chance level), linear_probe.png (accuracy heatmap, layers x sigma, one panel per
    checkpoint) and linear_probe_best.png (each checkpoint's best layer's accuracy vs sigma).

    Example: initprobe linear-probe runs/teacher-digits runs/random-digits --label teacher
             --label random --sigmas 0.05,0.2,0.5,1,2,5 --out runs/linear-probe
    """
    from ..measure.analyses.linear_probe import probe_many
    from ..measure.analyses.profiles import ProbeOptions
    from ..nets.io import load_network
    from ..report.probe_figures import accuracy_heatmaps, best_layer_figure
    from ..runio import atomic_write_text
    from ..train.loop import pick_device
    names = run_labels(checkpoints, label)
    grid = numbers(sigmas, float, "--sigmas") if sigmas is not None else None
    dev = pick_device(device)
    nets = {n: load_network(c).to(dev).eval() for n, c in zip(names, checkpoints)}
    ds = dataset_for(next(iter(nets.values())), data, data_path, split, n_images)
    options = ProbeOptions(grid, layers, seed, batch, progress=True)
    df = probe_many(nets, ds.images, ds.labels, options, classifier, test_fraction)
    csv = out / "linear_probe.csv"
    atomic_write_text(csv, df.to_csv(index=False))
    heat = accuracy_heatmaps(df, out / "linear_probe.png",
                             f"linear probe test accuracy ({classifier}, {len(ds)} images)")
    lines = best_layer_figure(df, out / "linear_probe_best.png",
                              "best layer per checkpoint (dashed: chance)")
    for line in _summary(df):
        typer.echo(line)
    typer.echo(f"wrote {csv}, {heat} and {lines}")
