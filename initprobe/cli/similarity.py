"""Similarity command: cka (layer x layer matrix and matched layers across noise levels)."""

from pathlib import Path
from typing import Annotated

import typer

from ..data import DATA_HELP, PATH_HELP
from ..errors import UserError
from ..measure.analyses.profiles import DEFAULT_LAYERS
from . import app
from .common import DEVICE_HELP, LABELS_HELP, LAYERS_HELP, class_inputs, dataset_for

Opt = typer.Option


@app.command("cka")
def cka_cmd(
    a: Annotated[Path, typer.Argument(help="first checkpoint (file, stem, run dir)")],
    b: Annotated[Path, typer.Argument(help="second checkpoint")],
    out: Annotated[Path, Opt("--out", help="output folder")],
    data: Annotated[str, Opt(help=DATA_HELP)] = "digits",
    data_path: Annotated[str | None, Opt(help=PATH_HELP)] = None,
    split: Annotated[str, Opt(help="train or test")] = "train",
    n_images: Annotated[int, Opt(help="number of real images")] = 512,
    batch: Annotated[int, Opt(help="CKA minibatch size (>= 4; memory grows as batch^2)")] = 128,
    kernel: Annotated[str, Opt(help="linear or rbf (median-distance bandwidth)")] = "linear",
    sigma: Annotated[float, Opt(help="noise level of the layer x layer matrix")] = 0.5,
    layers: Annotated[str, Opt(help=LAYERS_HELP)] = DEFAULT_LAYERS,
    seed: Annotated[int, Opt(help="noise seed (both networks see the same noisy images)")] = 0,
    label: Annotated[list[str] | None, Opt(help="two labels, A then B (default: file stems)")]
    = None,
    labels: Annotated[str | None, Opt(help=LABELS_HELP)] = None,
    device: Annotated[str, Opt(help=DEVICE_HELP)] = "auto",
):
    """Minibatch CKA between two checkpoints' layer outputs on the same noised real images:
    the layer x layer matrix at --sigma (cka_matrix.csv/.png) and each layer against the same
    layer of the other network at the 18 EDM noise levels (cka_diagonal.csv/.png).

    Example: initprobe cka runs/teacher-digits runs/gen-digits --label teacher
             --label generator --out runs/cka

    Class-conditional networks see the images' own labels (or --labels, e.g. 3).
    """
    from ..measure.analyses.profiles import ProbeOptions
    from ..measure.analyses.similarity import cka_diagonal, cka_matrix
    from ..nets.io import load_network
    from ..report.figures import cka_diagonal_figure, cka_matrix_heatmap
    from ..runio import atomic_write_text
    from ..train.loop import pick_device
    if label and len(label) != 2:
        raise UserError(f"got {len(label)} --label; give two (A then B) or none (file stems)")
    name_a, name_b = label or (a.stem, b.stem)
    dev = pick_device(device)
    net_a, net_b = load_network(a).to(dev), load_network(b).to(dev)
    ds = dataset_for(net_a, data, data_path, split, n_images)
    cond = class_inputs({"a": net_a, "b": net_b}, labels, ds, dev)
    options, pair = ProbeOptions(layers=layers, seed=seed, batch=batch), (cond["a"], cond["b"])
    run = f"{name_a} vs {name_b}"
    matrix = cka_matrix(net_a, net_b, ds.images, sigma, options, kernel, pair).assign(run=run)
    diagonal = cka_diagonal(net_a, net_b, ds.images, options, kernel, pair).assign(run=run)
    for name, df, draw in (("cka_matrix", matrix, cka_matrix_heatmap),
                           ("cka_diagonal", diagonal, cka_diagonal_figure)):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
        draw(df, out / f"{name}.png")
    matched = matrix[matrix["layer"] == matrix["layer_b"]]["value"]
    if len(matched):
        typer.echo(f"matched layers at sigma {sigma:g}: mean CKA {matched.mean():.3f}, "
                   f"min {matched.min():.3f}")
    by_sigma = diagonal.groupby("sigma")["value"].mean()
    typer.echo("mean matched-layer CKA by sigma: "
               + ", ".join(f"{s:.3g}: {v:.3f}" for s, v in by_sigma.items()))
    typer.echo(f"wrote {out}/cka_matrix.csv, cka_matrix.png, cka_diagonal.csv, cka_diagonal.png")
