"""One-step training commands: train, ablate (the same command, ablation options first), results."""

import inspect
import json
from pathlib import Path

import typer

from ..ablate.ops import InitSpec
from ..diffusion import GeneratorMap
from ..errors import UserError
from ..train.config import OBJ, OneStepConfig, objective_option_names
from ..train.objectives import OBJECTIVES, objective_class
from . import app
from .common import CHANNELS_LAST_HELP, COMPILE_HELP, DEVICE_HELP, parse_ints
from .options import field_options, given, with_options

OBJECTIVE_FLAGS = objective_option_names()

TRAIN_HELP = (
    "Train a one-step generator G(z) = D(80 z; 80) initialized from a teacher.\n\n"
    "The run directory holds config.json (with the init spec and every layer each init op "
    "touched), metrics.jsonl (losses, and sample quality every --eval-every images), "
    "checkpoints/ and samples/. Rerun the same command to resume.\n\n"
    "Examples:\n\n"
    "initprobe train --teacher runs/teacher-digits --objective gan --out runs/gan-teacher\n\n"
    "initprobe train --teacher runs/teacher-digits --objective gan --init random "
    "--out runs/gan-random\n\n"
    "initprobe train --teacher runs/teacher-digits --objective gan --freeze gdd --out runs/gdd-i"
    "\n\n"
    "initprobe train --teacher runs/teacher-digits --objective cd --out runs/cd\n\n"
    "initprobe train --teacher runs/teacher-cond --labels --objective gan --out runs/gan-cond "
    "(class-conditional G(z, y); teacher from train-teacher --labels)\n\n"
    "torchrun --nproc_per_node 2 -m initprobe train --teacher runs/teacher-digits --batch 128 "
    "--out runs/gan-ddp")

ABLATE_HELP = (
    "Train a one-step generator from an ablated teacher init (the options of train).\n\n"
    "The options of the 'Initialization / ablation' panel pick layers with the selector "
    "language of `initprobe layers --select`: groups (encoder, decoder, bottleneck, embedding, "
    "stem, head, attention, norm, skip, conv), the preset gdd, res:R, globs over layer ids, "
    "re:REGEX, joined with , or + (union) and - (difference). config.json records the exact "
    "layers each op touched.\n\n"
    "Examples:\n\n"
    "initprobe ablate --teacher runs/teacher-digits --reinit-layers decoder "
    "--out runs/reinit-decoder\n\n"
    "initprobe ablate --teacher runs/teacher-digits --shuffle-layers conv "
    "--out runs/shuffle-conv\n\n"
    "initprobe ablate --teacher runs/teacher-digits --reinit-layers head,stem,embedding "
    "--out runs/new-io\n\n"
    "initprobe ablate --teacher runs/teacher-digits --sigma-cond 2 --out runs/sigma2\n\n"
    "initprobe ablate --teacher runs/teacher-digits --interpolate 0.5 --out runs/half-random"
    "\n\n"
    "initprobe ablate --teacher runs/teacher-digits --init random --transfer-from "
    "runs/teacher-other --transfer-layers encoder --out runs/transfer-encoder")


def parse_options(pairs: list[str] | None) -> dict:
    """['k=v', ...] -> {k: v}, values read as JSON when they parse (numbers, booleans)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --option {pair!r}; write KEY=VALUE, e.g. --option scales=18")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _train_options() -> list[inspect.Parameter]:
    """The options of train/ablate: the trainer config's fields (init spec and generator map
    included), every objective's options that have a flag (None unless given), and the
    command's own."""
    objective_flags = {}
    for name in OBJECTIVES:
        for p in field_options(objective_class(name).Options, panel=OBJ):
            objective_flags.setdefault(p.name, p)
    own = {
        "out": (Path, typer.Option(..., "--out", help="run directory (rerun the same to "
                                                      "resume)")),
        "option": (list[str], typer.Option(None, "--option", help="objective-specific "
                                           "KEY=VALUE (repeatable), e.g. cd: scales=18, "
                                           "distance=huber", rich_help_panel=OBJ)),
        "device": (str, typer.Option("auto", help=DEVICE_HELP)),
        "allow_teacher_change": (bool, typer.Option(False, help="resume although the teacher's "
                                 "weights changed since the run started (recorded in "
                                 "config.json as teacher_changes)")),
        "channels_last": (bool, typer.Option(False, help=CHANNELS_LAST_HELP)),
        "compile": (bool, typer.Option(False, help=COMPILE_HELP)),
    }
    first, *rest = field_options(OneStepConfig, required=("teacher",))
    return ([first, _param("out", *own.pop("out"))] + rest + field_options(InitSpec)
            + field_options(GeneratorMap) + list(objective_flags.values())
            + [_param(k, *v) for k, v in own.items()])


def _param(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=annotation)


@with_options(_train_options())
def train_cmd(**values):
    from ..train.onestep import train_onestep
    from ..train.speed import Speed
    out, option, device, allow_change, channels_last, compile_ = (
        values.pop(k) for k in ("out", "option", "device", "allow_teacher_change",
                                "channels_last", "compile"))
    values["eval_at"] = parse_ints(values["eval_at"], "--eval-at") or []
    # an objective's options reach the config only when given (another objective has none)
    left = set(OBJECTIVE_FLAGS) - given(OBJECTIVE_FLAGS)
    cfg = OneStepConfig.from_flat({**{k: v for k, v in values.items() if k not in left},
                                   **parse_options(option)})
    rec = train_onestep(cfg, str(out), device=device, allow_teacher_change=allow_change,
                        speed=Speed(channels_last=channels_last, compile=compile_))
    shown = {k: rec[k] for k in ("fd_classifier", "precision", "recall", "coverage",
                                 "label_accuracy") if k in rec}
    typer.echo(f"done: {out} ({rec.get('images_seen', 0)} images) "
               + " ".join(f"{k} {v:.4g}" for k, v in shown.items()))


app.command("train", help=TRAIN_HELP)(train_cmd)
app.command("ablate", help=ABLATE_HELP)(train_cmd)


@app.command("results")
def results_cmd(
    runs: Path = typer.Argument(..., help="folder holding run directories (searched recursively)"),
    out: Path = typer.Option(None, "--out", help="CSV to write (default RUNS/results.csv); a "
                                                 ".parquet is written beside it"),
    curves: bool = typer.Option(True, help="also write the learning curves (long form) as "
                                           "OUT-curves.csv"),
):
    """Collect every run under RUNS into one table (config + last metrics + last evaluation).

    Example: initprobe results runs --out runs/results.csv
    """
    import pandas as pd

    from ..report.tables import collect_runs, learning_curves
    from ..runio import atomic_save, atomic_write_text
    table = collect_runs(runs)
    if table.empty:
        raise UserError(f"{runs}: no run directories (folders with a config.json) found; pass "
                        f"the folder your --out runs were written to")
    out = out or runs / "results.csv"
    atomic_write_text(out, table.to_csv(index=False))
    atomic_save(out.with_suffix(".parquet"), lambda tmp: table.to_parquet(tmp, index=False))
    written = [out, out.with_suffix(".parquet")]
    if curves:
        path = out.with_name(f"{out.stem}-curves.csv")
        atomic_write_text(path, learning_curves(runs).to_csv(index=False))
        written.append(path)
    cols = [c for c in ("run", "init", "objective", "ablation", "seed", "images_seen",
                        "fd_classifier", "precision", "recall", "coverage", "classes_covered")
            if c in table.columns]
    with pd.option_context("display.max_rows", None, "display.width", 200,
                           "display.max_colwidth", 40):
        typer.echo(table[cols].to_string(index=False))
    typer.echo("wrote " + ", ".join(map(str, written)))
