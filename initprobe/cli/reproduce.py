"""The reproduction command: every study of experiments/ run, measured and judged in one go."""

import time
from pathlib import Path
from typing import Annotated

import typer

from . import app

Opt = typer.Option


@app.command("reproduce")
def reproduce_cmd(
    profile: Annotated[str, Opt(help="quick (bundled digits, < 15 min on 2 CPU cores) or mnist "
                                     "(MNIST 32x32, needs --data-path)")] = "quick",
    data_path: Annotated[str | None, Opt(help="dataset file of the profile (mnist: the "
                                              ".npz or idx folder)")] = None,
    only: Annotated[str | None, Opt(help="claims to run, e.g. C1,C4 (default: all); the "
                                         "findings still list every claim measured before")]
    = None,
    out: Annotated[Path, Opt("--out", help="working folder: teachers, runs and study tables go "
                                           "to OUT/<profile>")] = Path("runs/reproduce"),
    figures: Annotated[Path | None, Opt(help="folder of the figures, findings.csv/.md and "
                                             "README.md (default: figures for quick, "
                                             "figures/<profile> otherwise)")] = None,
    experiments: Annotated[Path, Opt(help="folder of profiles.toml and the study configs")]
    = Path("experiments"),
    device: Annotated[str, Opt(help="auto, cpu, cuda, cuda:N")] = "auto",
    jobs: Annotated[int, Opt(min=1, help="train the teachers and runs in this many worker "
                                         "processes side by side first (up to one per core)")]
    = 1,
    threads: Annotated[int, Opt(min=1, help="torch CPU threads per process; float rounding, and "
                                            "so the numbers, depend on it (figures/: 1)")] = 1,
):
    """Run the whole reproduction: train the teacher and check its quality gate (the profile's
    gate rule; a teacher below it stops the study), train every study's runs, measure, and
    judge each claim (C1-C11) by the verdict rules of its config at every evaluation budget;
    writes one figure per measurement, sample grids, findings.csv and findings.md. Rerunning
    resumes: finished runs and cached measurements are skipped, verdicts are re-evaluated.

    Example: initprobe reproduce --profile quick --out runs/reproduce --figures figures

    MNIST:   initprobe reproduce --profile mnist --data-path ../shared/data/mnist.npz --jobs 2
    """
    import torch

    from ..reproduce.config import load_profile, load_studies
    from ..reproduce.findings import write_findings
    from ..reproduce.gate import enforce, measure_gate
    from ..reproduce.parallel import train_ahead
    from ..reproduce.runner import cached_result, run_study
    from ..reproduce.workspace import Workspace
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    prof = load_profile(experiments, profile, data_path)
    figures = figures or (Path("figures") if profile == "quick" else Path("figures") / profile)
    studies = load_studies(experiments, prof)
    chosen = load_studies(experiments, prof, only.split(",") if only else None)
    selected = {s.stem for s in chosen}
    ws = Workspace(prof, out / profile, device, log=typer.echo)
    gates = []

    def gate():
        t1 = time.perf_counter()
        gates.append(measure_gate(ws, prof.gate))
        typer.echo(f"teacher gate ({time.perf_counter() - t1:.0f} s): " + "; ".join(
            f"{c.name} {c.value:.3g} ({c.limit_text})" for c in gates[-1].checks))
        enforce(gates[-1], profile)

    if jobs > 1:
        train_ahead(ws, chosen, jobs, typer.echo, between=gate)
    else:
        ws.ensure_teacher()
        gate()
    results = []
    for study in studies:
        if study.stem in selected:
            results.append(run_study(ws, study, figures, typer.echo))
        elif (cached := cached_result(ws, study)) is not None:
            results.append(cached)
    command = (f"initprobe reproduce --profile {profile}"
               + (f" --data-path {data_path}" if data_path else "")
               + f" --out {out} --figures {figures}" + (f" --jobs {jobs}" if jobs > 1 else "")
               + (f" --threads {threads}" if threads > 1 else ""))
    header = (f"Findings of `{command}` ({prof.description}); device {ws.device}")
    findings = write_findings(results, figures, profile, ws.notes, header, command, gates[-1])
    typer.echo("")
    for r in findings.drop_duplicates("claim").itertuples():
        typer.echo(f"{r.claim}: {r.claim_verdict}  ({r.statement})")
    typer.echo(f"wrote {figures}/findings.md, findings.csv and README.md in "
               f"{time.perf_counter() - t0:.0f} s")
