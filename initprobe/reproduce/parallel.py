"""Training a reproduction's teachers and runs, and measuring its studies, ahead: `--jobs`
worker processes at a time.

Without it the study loop trains what each study needs, one run after the other, in the main
process, and measures one study after the other. `train_ahead` first trains the unfinished
teachers side by side, then every unfinished run of the studies that still miss a measurement,
each in a worker process with the main process's thread count; `measure_ahead` then computes
each study's missing measurements in a worker (studies side by side), so the study loop finds
its runs finished and its tables cached and only judges and draws. A measurement is the same
seeded computation in any process (bit for bit on the CPU: same thread count). On CUDA
(device `auto` or `cuda`), worker k sees only GPU k mod torch.cuda.device_count() (its
CUDA_VISIBLE_DEVICES), so `--jobs` equal to the GPU count trains one run per GPU; the CPU path
is unchanged.
A run is the same seeded computation whichever process trains it (bit for bit on the CPU:
same thread count), and an interrupted one resumes as usual.
"""

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..train.onestep import OneStepConfig
from .config import LABELS, OTHER, Profile, Study
from .measures import MEASUREMENTS
from .runner import measure, missing_measurements, study_dir
from .workspace import StudyRuns, Workspace, finished, run_job, run_line, teacher_job


def pending(ws: Workspace, studies: list[Study]
            ) -> tuple[list[str], dict[Path, tuple[str, OneStepConfig]]]:
    """(teacher roles the pending runs need, unfinished run folder -> (label, config)) of the
    studies whose missing measurements need their runs; a folder several studies share at
    different budgets is trained once, to the largest."""
    roles, runs = [], {}
    for study in studies:
        todo = missing_measurements(study, study_dir(ws, study))
        if not study.runs or not any(MEASUREMENTS[m].needs_runs for m in todo):
            continue
        roles = roles or ["main"]   # the gate's teacher, always
        if study.labels and LABELS not in roles:
            roles.append(LABELS)
        if OTHER not in roles and any(r.get("transfer_from") == OTHER
                                      for r in study.runs.values()):
            roles.append(OTHER)
        for label, _, cfg in StudyRuns(ws, study).items():
            out = ws.run_dir(cfg)
            if not finished(out, cfg.images) and (out not in runs
                                                  or cfg.images > runs[out][1].images):
                runs[out] = (label, cfg)
    return roles, runs


def worker_gpus(jobs: int, count: int) -> list[int]:
    """The GPU of each of `jobs` workers: round-robin over `count` visible GPUs."""
    return [k % count for k in range(jobs)] if count else []


def _init_worker(threads: int, gpus) -> None:
    """Worker start: the thread count, and one GPU of the queue `gpus` (None on the CPU) made
    the only visible one before CUDA starts in this process."""
    torch.set_num_threads(threads)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def _pool(ws: Workspace, jobs: int, log: Callable[[str], None]) -> ProcessPoolExecutor:
    """`jobs` spawned workers with this process's thread count (and one GPU each on CUDA)."""
    gpus, context = None, multiprocessing.get_context("spawn")
    if ws.device.type == "cuda" and ws.device.index is None:
        gpus = context.Queue()
        for k in worker_gpus(jobs, torch.cuda.device_count()):
            gpus.put(k)
        log(f"  one GPU per worker: {worker_gpus(jobs, torch.cuda.device_count())}")
    return ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                               initargs=(torch.get_num_threads(), gpus))


def train_ahead(ws: Workspace, studies: list[Study], jobs: int,
                log: Callable[[str], None] = print,
                between: Callable[[], None] = lambda: None) -> None:
    """Train the studies' pending teachers, call `between` (the teacher's gate), then train
    their pending runs, `jobs` at a time."""
    roles, runs = pending(ws, studies)
    teachers = [r for r in roles if ws.teacher_pending(r)]
    if not teachers and not runs:
        between()
        return
    log(f"training ahead: {len(teachers)} teachers, then {len(runs)} runs, {jobs} processes "
        f"of {torch.get_num_threads()} threads")
    device = str(ws.device)
    with _pool(ws, jobs, log) as pool:
        started = {pool.submit(teacher_job, ws.teacher_config(r), ws.teacher_dir(r), device): r
                   for r in teachers}
        for future in as_completed(started):
            log(f"  {started[future]} teacher done in {future.result():.0f} s")
        between()
        started = {pool.submit(run_job, cfg, out, device, ws.speed): (label, cfg)
                   for out, (label, cfg) in runs.items()}
        for k, future in enumerate(as_completed(started), 1):
            log(f"  [{k}/{len(runs)}] " + run_line(*started[future], *future.result()))


def measure_job(profile: Profile, root: Path, device: str, study: Study) -> list[str]:
    """A worker's part of `measure_ahead`: one study's missing measurements; its log lines."""
    lines: list[str] = []
    ws = Workspace(profile, root, device, lines.append)
    folder = study_dir(ws, study)
    folder.mkdir(parents=True, exist_ok=True)
    measure(StudyRuns(ws, study), folder, missing_measurements(study, folder), lines.append)
    return lines


def measure_ahead(ws: Workspace, studies: list[Study], jobs: int,
                  log: Callable[[str], None] = print) -> set[str]:
    """Compute the missing measurements of `studies` (their runs trained), `jobs` studies at a
    time in worker processes; returns the stems of the studies measured."""
    todo = [s for s in studies if missing_measurements(s, study_dir(ws, s))]
    if not todo:
        return set()
    log(f"measuring ahead: {len(todo)} studies, {jobs} processes")
    with _pool(ws, jobs, log) as pool:
        started = [pool.submit(measure_job, ws.profile, ws.root, str(ws.device), s)
                   for s in todo]
        for future in as_completed(started):
            for line in future.result():
                log(line)
    return {s.stem for s in todo}
