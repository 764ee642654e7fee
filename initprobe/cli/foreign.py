"""Foreign teachers: `convert` an official EDM network pickle into an initprobe checkpoint."""

from pathlib import Path
from typing import Annotated

import typer

from ..nets.edm_pickle import load_edm_pickle
from ..nets.io import save_checkpoint
from . import app


@app.command()
def convert(
    edm_pkl: Annotated[Path, typer.Argument(help="EDM network pickle, e.g. edm-cifar10-32x32-"
                                            "uncond-vp.pkl (read without executing it).")],
    out: Annotated[Path, typer.Argument(help="Output checkpoint: a stem or STEM.safetensors; "
                                        "STEM.json is written beside it.")],
    key: Annotated[str, typer.Option(help="Which network of the pickle: 'ema' (what EDM samples "
                                     "with) or another entry holding a network.")] = "ema",
):
    """Convert an EDM pickle (DDPM++ SongUNet; EDM, VP or VE preconditioning) into initprobe's
    safetensors + json checkpoint format, usable wherever a teacher checkpoint is expected."""
    net, info = load_edm_pickle(edm_pkl, key=key)
    stem = out.with_suffix("") if out.suffix in (".safetensors", ".json") else out
    written = save_checkpoint(stem, net, **info)
    params = sum(p.numel() for p in net.parameters())
    typer.echo(f"{written}: {info['edm_precond']} -> precond {net.precond!r}, "
               f"{params / 1e6:.2f}M parameters")
