"""Training a reproduction's teachers and runs ahead, `--jobs` worker processes at a time.

Without it the study loop trains what each study needs, one run after the other, in the main
process. `train_ahead` first trains the unfinished teachers side by side, then every unfinished
run of the studies that still miss a measurement, each in a worker process with the main
process's thread count, so the study loop finds them finished. A run is the same seeded
computation whichever process trains it (bit for bit on the CPU: same thread count), and an
interrupted one resumes as usual.
"""

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..train.onestep import OneStepConfig
from .config import OTHER, Study
from .measures import MEASUREMENTS
from .runner import missing_measurements, study_dir
from .workspace import StudyRuns, Workspace, finished, run_job, run_line, teacher_job


def pending(ws: Workspace, studies: list[Study]
            ) -> tuple[list[str], dict[Path, tuple[str, OneStepConfig]]]:
    """(teacher roles the pending runs need, unfinished run folder -> (label, config)) of the
    studies whose missing measurements need their runs."""
    roles, runs = [], {}
    for study in studies:
        todo = missing_measurements(study, study_dir(ws, study))
        if not study.runs or not any(MEASUREMENTS[m].needs_runs for m in todo):
            continue
        roles = roles or ["main"]
        if OTHER not in roles and any(r.get("transfer_from") == OTHER
                                      for r in study.runs.values()):
            roles.append(OTHER)
        for label, _, cfg in StudyRuns(ws, study).items():
            out = ws.run_dir(cfg)
            if out not in runs and not finished(out, cfg.images):
                runs[out] = (label, cfg)
    return roles, runs


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def train_ahead(ws: Workspace, studies: list[Study], jobs: int,
                log: Callable[[str], None] = print,
                between: Callable[[], None] = lambda: None) -> None:
    """Train the studies' pending teachers, call `between` (the teacher's gate), then train
    their pending runs, `jobs` at a time."""
    roles, runs = pending(ws, studies)
    teachers = [r for r in roles if not finished(ws.teacher_dir(r), ws.teacher_config(r).images)]
    if not teachers and not runs:
        between()
        return
    threads = torch.get_num_threads()
    log(f"training ahead: {len(teachers)} teachers, then {len(runs)} runs, {jobs} processes "
        f"of {threads} threads")
    device = str(ws.device)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        started = {pool.submit(teacher_job, ws.teacher_config(r), ws.teacher_dir(r), device): r
                   for r in teachers}
        for future in as_completed(started):
            log(f"  {started[future]} teacher done in {future.result():.0f} s")
        between()
        started = {pool.submit(run_job, cfg, out, device): (label, cfg)
                   for out, (label, cfg) in runs.items()}
        for k, future in enumerate(as_completed(started), 1):
            log(f"  [{k}/{len(runs)}] " + run_line(*started[future], *future.result()))
