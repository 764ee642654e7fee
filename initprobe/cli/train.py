"""One-step training commands: train, ablate (the same command, ablation options first), results."""

import json
from pathlib import Path

import typer

from ..errors import UserError
from . import app
from .common import CHANNELS_LAST_HELP, COMPILE_HELP, DATA_HELP, PATH_HELP, parse_ints

INIT = "Initialization / ablation (applied in this order: interpolate, transfer, reinit, " \
       "shuffle, freeze)"
MAP = "Generator map"
OBJ = "Objective"
SELECTOR = "layer selector (initprobe layers CKPT --select SPEC previews it)"

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


def train_cmd(
    teacher: Path = typer.Option(..., help="teacher checkpoint or run directory (EMA weights)"),
    out: Path = typer.Option(..., "--out", help="run directory (rerun the same to resume)"),
    objective: str = typer.Option("gan", help="gan, ratio, diffratio, dmd, cd",
                                  rich_help_panel=OBJ),
    data: str = typer.Option("digits", help=DATA_HELP),
    data_path: str = typer.Option(None, help=PATH_HELP),
    images: int = typer.Option(50_000, help="training budget in images seen"),
    batch: int = typer.Option(64, help="global batch size (split over torchrun processes)"),
    seed: int = typer.Option(0, help="random seed (runs are deterministic on CPU)"),
    lr: float = typer.Option(1e-4, help="generator Adam learning rate"),
    lr_aux: float = typer.Option(None, help="auxiliary networks' learning rate (default: 1e-4; "
                                 "1e-3 for ratio and diffratio)",
                                 rich_help_panel=OBJ),
    init: str = typer.Option("teacher", help="teacher or random", rich_help_panel=INIT),
    reinit_layers: str = typer.Option(None, help=f"re-initialize these layers: {SELECTOR}",
                                      rich_help_panel=INIT),
    shuffle_layers: str = typer.Option(None, help=f"permute the weights of these layers: "
                                                  f"{SELECTOR}", rich_help_panel=INIT),
    transfer_from: Path = typer.Option(None, help="checkpoint to copy --transfer-layers from",
                                       rich_help_panel=INIT),
    transfer_layers: str = typer.Option(None, help=f"layers to copy: {SELECTOR}",
                                        rich_help_panel=INIT),
    interpolate: float = typer.Option(None, help="blend teacher and random init: 0 teacher, "
                                                 "1 random", rich_help_panel=INIT),
    freeze: str = typer.Option(None, help=f"freeze these layers ('gdd' = GDD-I): {SELECTOR}",
                               rich_help_panel=INIT),
    precond: str = typer.Option("edm-eps", help="generator preconditioning: edm-eps (GDD) or edm",
                                rich_help_panel=MAP),
    sigma_cond: float = typer.Option(80.0, help="noise level the generator runs at "
                                                "(G(z) = D(s z; s))", rich_help_panel=MAP),
    steps: int = typer.Option(1, help="1: one-step map; 2: GDD's two-step map",
                              rich_help_panel=MAP),
    sigma_mid: float = typer.Option(2.0, help="intermediate sigma of the two-step map",
                                    rich_help_panel=MAP),
    divergence: str = typer.Option("kl", help="ratio objectives: kl or js", rich_help_panel=OBJ),
    r1_gamma: float = typer.Option(1e-4, help="gan: R1 weight", rich_help_panel=OBJ),
    r1_interval: int = typer.Option(16, help="gan: lazy R1 every N steps", rich_help_panel=OBJ),
    disc_sigma: float = typer.Option(0.5, help="gan: noise level of the teacher's encoder "
                                               "features", rich_help_panel=OBJ),
    disc_features: str = typer.Option("teacher", help="gan: teacher or classifier",
                                      rich_help_panel=OBJ),
    labels: bool = typer.Option(False, "--labels", help="class-conditional generator G(z, y) "
                                "from a conditional teacher: labels drawn at the data's class "
                                "frequencies; objectives condition on them", rich_help_panel=OBJ),
    option: list[str] = typer.Option(None, "--option", help="objective-specific KEY=VALUE "
                                     "(repeatable), e.g. cd: scales=18, distance=huber",
                                     rich_help_panel=OBJ),
    ema_halflife: float = typer.Option(None, help="EMA half-life in images (default: 5% of "
                                                  "images seen; 0 disables)"),
    eval_every: int = typer.Option(10_000, help="evaluate sample quality every N images"),
    eval_at: str = typer.Option(None, help="also evaluate at these images seen, e.g. "
                                "1000,2000,5000,10000 (log-spaced budgets: one run, whole curve)"),
    eval_n: int = typer.Option(500, help="samples per evaluation (0 disables)"),
    ckpt_every: int = typer.Option(500, help="checkpoint every N steps"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N"),
    allow_teacher_change: bool = typer.Option(False, help="resume although the teacher's "
                                              "weights changed since the run started (recorded "
                                              "in config.json as teacher_changes)"),
    channels_last: bool = typer.Option(False, help=CHANNELS_LAST_HELP),
    compile: bool = typer.Option(False, help=COMPILE_HELP),
):
    from ..train.onestep import OneStepConfig, train_onestep
    from ..train.speed import Speed
    cfg = OneStepConfig(
        teacher=str(teacher), objective=objective, data=data, data_path=data_path,
        images=images, batch=batch, seed=seed, lr=lr, lr_aux=lr_aux, init=init,
        reinit=reinit_layers, shuffle=shuffle_layers,
        transfer_from=None if transfer_from is None else str(transfer_from),
        transfer_layers=transfer_layers, interpolate=interpolate, freeze=freeze, precond=precond,
        sigma_cond=sigma_cond, steps=steps, sigma_mid=sigma_mid, divergence=divergence,
        r1_gamma=r1_gamma, r1_interval=r1_interval, disc_sigma=disc_sigma,
        disc_features=disc_features, objective_options=parse_options(option),
        labels=labels, ema_halflife=ema_halflife, eval_every=eval_every,
        eval_at=parse_ints(eval_at, "--eval-at") or [], eval_n=eval_n, ckpt_every=ckpt_every)
    rec = train_onestep(cfg, str(out), device=device, allow_teacher_change=allow_teacher_change,
                        speed=Speed(channels_last=channels_last, compile=compile))
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
