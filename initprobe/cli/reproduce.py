"""The reproduction command: every study of experiments/ run, measured and judged in one go."""

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import CHANNELS_LAST_HELP, COMPILE_HELP

Opt = typer.Option

# the options that choose a reproduction (shared by reproduce and reproduce-one)
Profile = Annotated[str, Opt(help="quick (bundled digits, 15 min on 2 CPU cores with --jobs "
                                  "2), mnist (MNIST 16x16, needs --data-path) or cifar10 (EDM's "
                                  "checkpoint: --teacher, --data-path, --inception-weights)")]
DataPath = Annotated[str | None, Opt(help="dataset file of the profile (mnist: the .npz or idx "
                                          "folder; cifar10: cifar-10-batches-py or .npz)")]
Teacher = Annotated[str | None, Opt(help="the teacher as a given network file, not trained: an "
                                         "EDM .pkl (edm-cifar10-32x32-uncond-vp.pkl), a run "
                                         "folder or .safetensors; overrides the profile's")]
Inception = Annotated[str | None, Opt(help="FID Inception weights (pytorch-fid's pt_inception-"
                                           "2015-12-05-*.pth) for a profile whose gate uses "
                                           "Inception features (cifar10)")]
Smoke = Annotated[bool, Opt(help="check the profile runs: tiny budgets, 2 seeds, a dozen "
                                 "samples, relaxed gate, on the classifier (numbers mean "
                                 "nothing); results go to OUT/<profile>-smoke")]
Out = Annotated[Path, Opt("--out", help="working folder: teachers, runs and study tables go to "
                                        "OUT/<profile>")]
Experiments = Annotated[Path, Opt(help="folder of profiles.toml and the study configs")]
Device = Annotated[str, Opt(help="auto, cpu, cuda, cuda:N")]
Threads = Annotated[int, Opt(min=1, help="torch CPU threads per process; float rounding, and so "
                                         "the numbers, depend on it (figures/: 1)")]
ChannelsLast = Annotated[bool, Opt(help=CHANNELS_LAST_HELP)]
Compile = Annotated[bool, Opt(help=COMPILE_HELP)]
OUT, EXPERIMENTS = Path("runs/reproduce"), Path("experiments")


def prepare(profile: str, data_path, teacher, inception_weights, smoke: bool, experiments: Path,
            out: Path, device: str, speed, only: str | None = None):
    """(profile, every study, the chosen studies, workspace) of the options above; `speed`: the
    GPU switches of the students (`initprobe.train.speed.Speed`)."""
    from ..reproduce.config import load_profile, load_studies
    from ..reproduce.smoke import smoke_profile, smoke_study
    from ..reproduce.workspace import Workspace
    prof = load_profile(experiments, profile, data_path, teacher, inception_weights)
    studies = load_studies(experiments, prof)
    chosen = load_studies(experiments, prof, only.split(",") if only else None)
    if smoke:
        prof = smoke_profile(prof)
        studies, chosen = [smoke_study(s) for s in studies], [smoke_study(s) for s in chosen]
    folder = out / (f"{profile}-smoke" if smoke else profile)
    return prof, studies, chosen, Workspace(prof, folder, device, typer.echo, speed)


def one_command(profile: str, data_path, teacher, inception_weights, smoke: bool,
                experiments: Path, out: Path, device: str, threads: int, speed) -> list[str]:
    """The `reproduce-one` call of these options, paths absolute (a plan line, less --target)."""
    def path(p) -> str:
        return str(Path(p).expanduser().resolve())

    args = [sys.executable, "-m", "initprobe", "reproduce-one", "--profile", profile,
            "--experiments", path(experiments), "--out", path(out), "--device", device,
            "--threads", str(threads)]
    for option, value in (("--data-path", data_path), ("--teacher", teacher),
                          ("--inception-weights", inception_weights)):
        if value:
            args += [option, path(value)]
    flags = (("--smoke", smoke), ("--channels-last", speed.channels_last),
             ("--compile", speed.compile))
    return args + [flag for flag, on in flags if on]


@app.command("reproduce")
def reproduce_cmd(
    profile: Profile = "quick",
    data_path: DataPath = None,
    teacher: Teacher = None,
    inception_weights: Inception = None,
    only: Annotated[str | None, Opt(help="claims to run, e.g. C1,C4 (default: all); the "
                                         "findings still list every claim measured before")]
    = None,
    out: Out = OUT,
    figures: Annotated[Path | None, Opt(help="folder of the figures, findings.csv/.md and "
                                             "README.md (default: figures for quick, "
                                             "figures/<profile> otherwise)")] = None,
    experiments: Experiments = EXPERIMENTS,
    device: Device = "auto",
    jobs: Annotated[int, Opt(min=1, help="train the teachers and runs and measure the studies "
                                         "as tasks in this many worker processes, each task "
                                         "starting once what it needs is done (up to one per "
                                         "core; on CUDA one GPU per worker, round-robin)")] = 1,
    threads: Threads = 1,
    smoke: Smoke = False,
    channels_last: ChannelsLast = False,
    compile: Compile = False,
    plan: Annotated[Path | None, Opt(help="write the pending teachers, gate and runs to this "
                                          "file as command lines (run them with initprobe "
                                          "submit), train nothing")] = None,
):
    """Run the whole reproduction: train the teacher and check its quality gate (the profile's
    gate rule; a teacher below it stops the study), train every study's runs, measure, and
    judge each claim (C1-C12) by the verdict rules of its config at every evaluation budget;
    writes one figure per measurement, sample grids, findings.csv and findings.md. Rerunning
    resumes: finished runs and cached measurements are skipped, verdicts are re-evaluated.

    Example: initprobe reproduce --profile quick --out runs/reproduce --figures figures

    MNIST:   initprobe reproduce --profile mnist --data-path ../shared/data/mnist.npz --jobs 2

    CIFAR-10 on a Slurm cluster: initprobe reproduce --profile cifar10 --teacher
    edm-cifar10-32x32-uncond-vp.pkl --data-path cifar-10-batches-py --inception-weights
    pt_inception-2015-12-05-6726825d.pth --plan plan.txt; initprobe submit plan.txt; then the
    same reproduce command without --plan
    """
    import torch

    from ..reproduce.findings import write_findings
    from ..reproduce.gate import enforce, measure_gate
    from ..reproduce.parallel import work_ahead
    from ..reproduce.plan import plan_stages, write_plan
    from ..reproduce.runner import cached_result, run_study
    from ..train.speed import Speed
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    speed = Speed(channels_last=channels_last, compile=compile)
    prof, studies, chosen, ws = prepare(profile, data_path, teacher, inception_weights, smoke,
                                        experiments, out, device, speed, only)
    if plan is not None:
        stages = plan_stages(ws, chosen, one_command(profile, data_path, teacher,
                                                     inception_weights, smoke, experiments, out,
                                                     device, threads, speed))
        write_plan(plan, stages)
        typer.echo(f"wrote {plan}: " + (", ".join(f"{len(v)} {k}" for k, v in stages.items())
                                        or "nothing pending"))
        return
    figures = figures or (Path("figures") if profile == "quick" and not smoke
                          else Path("figures") / ws.root.name)
    selected = {s.stem for s in chosen}
    gates = []

    def gate():
        t1 = time.perf_counter()
        gates.append(measure_gate(ws, prof.gate))
        typer.echo(f"teacher gate ({time.perf_counter() - t1:.0f} s): " + "; ".join(
            f"{c.name} {c.value:.3g} ({c.limit_text})" for c in gates[-1].checks))
        enforce(gates[-1], profile)

    if jobs > 1:
        fresh = work_ahead(ws, chosen, jobs, typer.echo, between=gate)
    else:
        ws.ensure_teacher()
        gate()
        fresh = set()
    results = []
    for study in studies:
        if study.stem in selected:
            results.append(run_study(ws, study, figures, typer.echo, study.stem in fresh))
        elif (cached := cached_result(ws, study)) is not None:
            results.append(cached)
    command = (f"initprobe reproduce --profile {profile}"
               + (f" --data-path {data_path}" if data_path else "")
               + (f" --teacher {teacher}" if teacher else "")
               + (f" --inception-weights {inception_weights}" if inception_weights else "")
               + f" --out {out} --figures {figures}" + (f" --jobs {jobs}" if jobs > 1 else "")
               + (f" --threads {threads}" if threads > 1 else "") + (" --smoke" if smoke else ""))
    header = (f"Findings of `{command}` ({prof.description}); device {ws.device}")
    findings = write_findings(results, figures, profile, ws.notes, header, command, gates[-1])
    typer.echo("")
    for r in findings[findings.final].drop_duplicates("claim").itertuples():
        typer.echo(f"{r.claim}: {r.claim_verdict}  ({r.statement})")
    typer.echo(f"wrote {figures}/findings.md, findings.csv and README.md in "
               f"{time.perf_counter() - t0:.0f} s")
