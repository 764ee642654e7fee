"""Training a reproduction's teachers and runs, and measuring its studies, ahead: `--jobs`
worker processes at a time (`work_ahead`).

Without it the study loop trains what each study needs, one run after the other, in the main
process, and measures one study after the other. `work_ahead` schedules every unfinished
teacher, every unfinished run of the studies that still miss a measurement and each such
study's measurements as tasks in worker processes with the main process's thread count, each
task starting once what it needs is done; the study loop then finds its runs finished and its
tables cached and only judges and draws. A run and a measurement are the same seeded
computation in any process (bit for bit on the CPU: same thread count), and an interrupted run
resumes as usual. On CUDA (device `auto` or `cuda`), worker k sees only GPU k mod
torch.cuda.device_count() (its CUDA_VISIBLE_DEVICES), so `--jobs` equal to the GPU count trains
one run per GPU; the CPU path is unchanged.
"""

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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


def _die_with(parent: int) -> None:
    """On Linux, have the kernel stop this worker when its parent process `parent` ends, so a
    `kill PID` of `reproduce --jobs` does not leave its workers training (Ctrl-C in a terminal
    reaches the whole process group anyway). An interrupted run resumes from its checkpoint."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:   # it ended before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: int, gpus, parent: int | None = None) -> None:
    """Worker start: ended with the process `parent` (when given); the thread count, and one GPU
    of the queue `gpus` (None on the CPU) made the only visible one before CUDA starts."""
    if parent is not None:
        _die_with(parent)
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
                               initargs=(torch.get_num_threads(), gpus, os.getpid()))


def _needs(ws: Workspace, studies: list[Study], runs: dict) -> dict[str, tuple[set, set]]:
    """Study stem -> (teacher roles, pending run folders) its missing measurements wait for, for
    the studies with a missing measurement."""
    out = {}
    for study in studies:
        todo = missing_measurements(study, study_dir(ws, study))
        if not todo:
            continue
        roles = {"main", *([LABELS] if study.labels else []),
                 *([OTHER] if any(r.get("transfer_from") == OTHER
                                  for r in study.runs.values()) else [])}
        uses_runs = study.runs and any(MEASUREMENTS[m].needs_runs for m in todo)
        folders = {ws.run_dir(cfg) for _, _, cfg in StudyRuns(ws, study).items()} \
            if uses_runs else set()
        out[study.stem] = (roles, folders & set(runs))
    return out


def work_ahead(ws: Workspace, studies: list[Study], jobs: int,
               log: Callable[[str], None] = print,
               between: Callable[[], None] = lambda: None) -> set[str]:
    """Train the studies' pending teachers and runs and compute their missing measurements,
    `jobs` worker processes at a time; `between` (the teacher's gate) runs once the main
    teacher is trained, before any run or measurement starts. A task starts as soon as what it
    needs is done: a run its teachers, a study's measurements its runs, so measurements overlap
    the training of other studies; among ready tasks, measurements go first, then teachers (the
    main one first), then runs, the longest budget first. A teacher whose profile fixes its
    thread count takes that many cores' worth of worker slots. Returns the stems of the studies
    measured."""
    roles, runs = pending(ws, studies)
    teachers = [r for r in roles if ws.teacher_pending(r)]
    needs = _needs(ws, studies, runs)
    by_stem = {s.stem: s for s in studies}
    run_roles: dict[Path, set] = {out: set() for out in runs}
    for roles_, folders in needs.values():
        for out in folders:
            run_roles[out] |= roles_
    if "main" not in teachers:   # trained before: the gate now, whatever else is pending
        between()
    if not teachers and not needs:
        return set()
    log(f"working ahead: {len(teachers)} teachers, {len(runs)} runs, {len(needs)} studies to "
        f"measure; {jobs} processes of {torch.get_num_threads()} threads")
    device, done, measured = str(ws.device), set(), set()
    waiting = ([("teacher", r) for r in teachers]
               + sorted((("run", out) for out in runs), key=lambda t: -runs[t[1]][1].images)
               + [("measure", stem) for stem in needs])

    def ready(task) -> bool:
        kind, key = task
        if kind == "teacher":
            return True
        if "main" in teachers and ("teacher", "main") not in done:
            return False    # the gate comes first
        if kind == "run":
            return all(("teacher", r) in done or r not in teachers for r in run_roles[key])
        roles_, folders = needs[key]
        return (all(("teacher", r) in done or r not in teachers for r in roles_)
                and all(("run", out) in done for out in folders))

    def submit(pool, task):
        kind, key = task
        if kind == "teacher":
            return pool.submit(teacher_job, ws.teacher_config(key), ws.teacher_dir(key), device,
                               ws.teacher_threads(key))
        if kind == "run":
            return pool.submit(run_job, runs[key][1], key, device, ws.speed)
        return pool.submit(measure_job, ws.profile, ws.root, device, by_stem[key])

    def slots(task) -> int:   # a teacher with a fixed thread count takes that many cores
        threads = ws.teacher_threads(task[1]) if task[0] == "teacher" else None
        return min(jobs, -(-threads // torch.get_num_threads())) if threads else 1

    with _pool(ws, jobs, log) as pool:
        running: dict = {}
        trained = 0
        while waiting or running:
            free = jobs - sum(slots(t) for t in running.values())
            for task in sorted((t for t in waiting if ready(t)), key=lambda t: t[0] != "measure"):
                if slots(task) > free:
                    break   # in priority order: a wide task is not passed by narrower ones
                free -= slots(task)
                waiting.remove(task)
                running[submit(pool, task)] = task
            finished_, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_:
                kind, key = task = running.pop(future)
                result = future.result()
                done.add(task)
                if kind == "teacher":
                    log(f"  {key} teacher done in {result:.0f} s")
                    if key == "main":
                        between()
                elif kind == "run":
                    trained += 1
                    log(f"  [{trained}/{len(runs)}] " + run_line(*runs[key], *result))
                else:
                    measured.add(key)
                    for line in result:
                        log(line)
    return measured


def measure_job(profile: Profile, root: Path, device: str, study: Study) -> list[str]:
    """A worker's measurement task: one study's missing measurements; its log lines."""
    lines: list[str] = []
    ws = Workspace(profile, root, device, lines.append)
    folder = study_dir(ws, study)
    folder.mkdir(parents=True, exist_ok=True)
    measure(StudyRuns(ws, study), folder, missing_measurements(study, folder), lines.append)
    return lines
