"""Executing a plan (`plan`) through submitit: Slurm job arrays, or its local executor.

Each stage of the plan is one submitit job array, one task per command line; the next stage is
submitted once every task of this one has succeeded. A task runs its line as a subprocess (the
line's own `python -m initprobe reproduce-one ...`), so what a job does is exactly the line in the
plan, and its log (stdout and stderr) lies in submitit's folder. Results land in the run folders
the lines name. `cluster` is submitit's: `slurm`, `local` (processes on this machine, used by the
tests) or `debug` (in this process).
"""

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .plan import read_plan

CLUSTERS = ("slurm", "local", "debug")


def run_line(line: str) -> int:
    """One plan line as a subprocess; raises if it fails (submitit marks the task failed)."""
    rc = subprocess.run(shlex.split(line)).returncode
    if rc != 0:
        raise RuntimeError(f"exit status {rc}: {line}")
    return rc


def execute(plan: Path, cluster: str, folder: Path, parameters: dict,
            log: Callable[[str], None] = print) -> int:
    """Run every stage of `plan` in order as job arrays; the number of lines run."""
    try:
        import submitit
    except ImportError:
        raise UserError("initprobe submit needs submitit: pip install 'initprobe[cluster]'"
                        ) from None
    if cluster not in CLUSTERS:
        raise UserError(f"unknown --cluster {cluster!r}; choose one of {', '.join(CLUSTERS)}")
    stages = read_plan(plan)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**parameters)
    done = 0
    for name, lines in stages:
        jobs = executor.map_array(run_line, lines)
        log(f"stage {name}: {len(lines)} jobs submitted ({jobs[0].job_id.split('_')[0]} ...), "
            f"logs in {folder}")
        failed = []
        for job, line in zip(jobs, lines):
            try:
                job.result()
            except Exception:  # noqa: BLE001 - submitit re-raises the task's failure
                failed.append((job, line))
        if failed:
            job, line = failed[0]
            raise UserError(f"stage {name}: {len(failed)} of {len(lines)} jobs failed, first "
                            f"job {job.job_id} ({line}); read {job.paths.stderr} and rerun "
                            f"initprobe submit (finished runs are skipped)")
        done += len(lines)
        log(f"stage {name}: {len(lines)} jobs done")
    return done
