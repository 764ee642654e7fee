"""Commands that spread a reproduction beyond one process: reproduce-one (one plan line) and
submit (a plan executed through submitit on Slurm or locally)."""

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .reproduce import (
    EXPERIMENTS,
    OUT,
    ChannelsLast,
    Compile,
    DataPath,
    Device,
    Experiments,
    Inception,
    Out,
    Profile,
    Smoke,
    Teacher,
    Threads,
    prepare,
)

Opt = typer.Option


@app.command("reproduce-one")
def reproduce_one_cmd(
    target: Annotated[str, Opt(help="teacher:<role> (train that teacher), gate (measure and "
                                    "enforce the teacher gate) or a run folder of the plan "
                                    "(enforce the gate, train that run)")],
    profile: Profile = "quick",
    data_path: DataPath = None,
    teacher: Teacher = None,
    inception_weights: Inception = None,
    out: Out = OUT,
    experiments: Experiments = EXPERIMENTS,
    device: Device = "auto",
    threads: Threads = 1,
    smoke: Smoke = False,
    channels_last: ChannelsLast = False,
    compile: Compile = False,
):
    """Do the work of one line of a plan (initprobe reproduce --plan), with the same options as
    the reproduce command that wrote it; a finished teacher or run is not touched again.

    Example: initprobe reproduce-one --profile quick --target gate
    """
    import torch

    from ..reproduce.plan import run_target
    from ..train.speed import Speed
    torch.set_num_threads(threads)
    _, studies, _, ws = prepare(profile, data_path, teacher, inception_weights, smoke,
                                experiments, out, device,
                                Speed(channels_last=channels_last, compile=compile))
    run_target(ws, studies, target, typer.echo)


@app.command("submit")
def submit_cmd(
    plan: Annotated[Path, typer.Argument(help="plan file of initprobe reproduce --plan")],
    cluster: Annotated[str, Opt(help="submitit's executor: slurm, local (processes on this "
                                     "machine) or debug (in this process)")] = "slurm",
    logs: Annotated[Path, Opt(help="submitit's folder: job scripts, stdout and stderr")]
    = Path("runs/submitit"),
    partition: Annotated[str | None, Opt(help="Slurm partition")] = None,
    gpus_per_node: Annotated[int, Opt(min=0, help="GPUs per job (one run per GPU)")] = 1,
    cpus_per_task: Annotated[int, Opt(min=1, help="CPU cores per job")] = 8,
    timeout_min: Annotated[int, Opt(min=1, help="time limit of each job in minutes")] = 240,
    array_parallelism: Annotated[int, Opt(min=1, help="jobs of a stage running at once")] = 64,
):
    """Execute a plan through submitit: one job array per stage (teachers, gate, runs), each
    stage after the previous one succeeded. Results land in the run folders; afterwards the
    reproduce command that wrote the plan (without --plan) does the study step.

    Example: initprobe submit plan.txt --cluster slurm --partition gpu --gpus-per-node 1
    """
    from ..reproduce.cluster import execute
    parameters = {"gpus_per_node": gpus_per_node, "cpus_per_task": cpus_per_task,
                  "timeout_min": timeout_min, "name": "initprobe"}
    if cluster == "slurm":
        parameters.update(slurm_array_parallelism=array_parallelism,
                          **({"slurm_partition": partition} if partition else {}))
    n = execute(plan, cluster, logs, parameters, typer.echo)
    typer.echo(f"ran {n} plan lines; now run the reproduce command of the plan without --plan")
