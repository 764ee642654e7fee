"""Running a study: train its runs, compute its measurements, draw its figures; resumable.

A study's measurement tables live in `<root>/studies/<study>-<hash>/<table>.csv`, the hash
covering the study's runs, budget, seeds and measurement options, the profile and the main
tables' columns (`measures.LAYOUT`), so a changed config or table layout gets a fresh folder and
never reads stale numbers or tables of another layout. A measurement whose main table exists
is skipped; a study whose every main table exists is skipped whole (nothing is trained or
loaded) and only its missing figures are drawn. Verdicts are not cached: they are re-evaluated
from the tables every time (`findings`), so editing a rule costs no measurement.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..runio import atomic_write_text
from ..train.onestep import budget_grid
from .config import LABELS, Study, digest
from .figures import copy_samples, draw_study, short
from .measures import LAYOUT, MEASUREMENTS
from .workspace import StudyRuns, Workspace


def study_dir(ws: Workspace, study: Study) -> Path:
    key = {"study": study.key(), "profile": ws.profile.key(), "columns": LAYOUT}
    return ws.root / "studies" / f"{study.stem}-{digest(key)}"


def read_tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every table of a study folder, by name."""
    return {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}


def missing_measurements(study: Study, folder: Path) -> list[str]:
    return [m for m in study.measure if not (folder / f"{m}.csv").exists()]


@dataclass
class StudyResult:
    study: Study
    folder: Path
    status: str                     # "cached" or "computed"
    tables: dict[str, pd.DataFrame]
    seconds: float


def _sample_grids(ws: Workspace, sr: StudyRuns) -> dict[str, Path]:
    """Sample grids to show: the teacher's, and the first seed's final grid of each run, named
    by run and budget (studies share a figures folder; the same run name at another budget, or
    with labels, is another run)."""
    role, cond = (LABELS, "cond-") if sr.study.labels else ("main", "")
    teacher = "teacher-labels" if sr.study.labels else "teacher"
    grids = {f"{teacher}-{name}": ws.teacher_dir(role) / "samples" / f"{name}.png"
             for name in ("heun", "one-step")}
    seed, budget = sr.study.seeds[0], short(sr.study.images)
    for label, by_seed in sr.configs.items():
        cfg = by_seed[seed]   # a run extended past the study's budget kept its grid there
        name = budget_grid(cfg.images) if cfg.images in cfg.eval_at else "final.png"
        grids[f"{cond}{label}-{budget}"] = sr.dir(label, seed) / "samples" / name
    return grids


def measure(sr: StudyRuns, folder: Path, todo: list[str],
            log: Callable[[str], None] = print) -> None:
    """Compute the measurements `todo` of a study whose runs are trained; write their tables."""
    for name in todo:
        t1 = time.perf_counter()
        out = MEASUREMENTS[name].compute(sr, sr.study.measure[name])
        for table_name in sorted(out, key=lambda k: k == name):  # main table last
            atomic_write_text(folder / f"{table_name}.csv", out[table_name].to_csv(index=False))
        log(f"  {sr.study.claim}: measured {name} in {time.perf_counter() - t1:.0f} s")


def run_study(ws: Workspace, study: Study, figures: Path,
              log: Callable[[str], None] = print, fresh: bool = False) -> StudyResult:
    """Bring one study up to date (module docstring) and return its tables; `fresh`: its
    tables were just measured ahead (`parallel.work_ahead`), so every figure is redrawn."""
    t0 = time.perf_counter()
    folder = study_dir(ws, study)
    todo = missing_measurements(study, folder)
    sr = StudyRuns(ws, study)
    log(f"{study.claim} ({study.stem}): {study.statement}")
    if not todo:
        log(f"  measurements cached in {folder}")
    else:
        if any(MEASUREMENTS[m].needs_runs for m in todo) and study.runs:
            log(f"  {len(study.runs)} runs x {len(study.seeds)} seeds, {study.images} images "
                f"each")
            sr.train_all()
        measure(sr, folder, todo, log)
    tables = read_tables(folder)
    drawn = draw_study(study, tables, figures, only_missing=not (todo or fresh))
    if study.runs:
        copy_samples(_sample_grids(ws, sr), figures)
    if drawn:
        log(f"  figures: {', '.join(str(p) for p in drawn)}")
    return StudyResult(study, folder, "computed" if todo or fresh else "cached", tables,
                       time.perf_counter() - t0)


def cached_result(ws: Workspace, study: Study) -> StudyResult | None:
    """The tables of a study measured earlier (all main tables present), without running it."""
    folder = study_dir(ws, study)
    if missing_measurements(study, folder):
        return None
    return StudyResult(study, folder, "cached", read_tables(folder), 0.0)
