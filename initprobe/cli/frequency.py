"""Frequency command: spectrum (power spectra of data, samples and denoiser outputs)."""

from pathlib import Path
from typing import Annotated

import typer

from ..data import DATA_HELP, PATH_HELP
from . import app
from .common import DEVICE_HELP, LABELS_HELP, class_inputs, dataset_for, run_labels

Opt = typer.Option


@app.command("spectrum")
def spectrum_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoints (file, stem, run dir)")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    split: Annotated[str, Opt(help="train or test")] = "train",
    n_images: Annotated[int, Opt(help="real images (data spectrum and denoiser inputs)")] = 512,
    n: Annotated[int, Opt(help="samples per sampler (seeds 0..n-1)")] = 512,
    heun_steps: Annotated[int, Opt(help="Heun grid steps of the multi-step samples")] = 18,
    seed: Annotated[int, Opt(help="noise seed of the denoiser inputs")] = 0,
    label: Annotated[list[str] | None, Opt(help="one per checkpoint (default: file stem)")] = None,
    batch: Annotated[int, Opt(help="images per forward pass")] = 256,
    labels: Annotated[str | None, Opt(help=LABELS_HELP)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """Radially averaged power spectra of the data, of each checkpoint's one-step and Heun
    samples, and of its denoiser output and error at the 18 EDM noise levels; the denoiser's
    relative error per frequency band vs sigma. Writes spectra.csv/.png and bands.csv/.png.

    Example: initprobe spectrum runs/teacher-digits runs/gen-digits --label teacher
             --label generator --out runs/spectrum

    Class-conditional networks: the denoiser sees the images' own labels (or --labels); the
    samples' classes are drawn uniformly per seed.
    """
    from ..measure.analyses.frequency import spectrum_analysis
    from ..measure.analyses.profiles import ProbeOptions
    from ..nets.io import load_generator
    from ..report.figures import band_error_figure, spectra_figure
    from ..runio import atomic_write_text
    from ..train.loop import pick_device
    names = run_labels(checkpoints, label)
    dev = pick_device(device)
    gens = {name: load_generator(c).to(dev) for name, c in zip(names, checkpoints)}
    nets = {name: g.net for name, g in gens.items()}
    ds = dataset_for(next(iter(nets.values())), data, data_path, split, n_images)
    df = spectrum_analysis(gens, ds.images.to(dev), ProbeOptions(seed=seed, batch=batch), n,
                           heun_steps, class_inputs(nets, labels, ds, dev))
    spectra, bands = df[df["metric"] == "power"], df[df["metric"] != "power"]
    for name, table, draw in (("spectra", spectra, spectra_figure),
                              ("bands", bands, band_error_figure)):
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
        draw(table, out / f"{name}.png")
    for (run, source, metric), d in bands.groupby(["run", "source", "metric"], sort=False):
        if metric == "band_mismatch":
            values = ", ".join(f"{b} {v:.3f}" for b, v in zip(d["band"], d["value"]))
            typer.echo(f"{run} {source} samples, band mismatch: {values}")
        else:
            worst = d.loc[d["value"].idxmax()]
            typer.echo(f"{run} denoiser rel_error: max {worst['value']:.3f} ({worst['band']} band "
                       f"at sigma {worst['sigma']:.3g})")
    typer.echo(f"wrote {out}/spectra.csv, spectra.png, bands.csv, bands.png")
