"""`reproduce --jobs`: the scheduler (`parallel.work_ahead`) and runs shared between studies at
several budgets."""

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mini_profile import STUDY, write_experiments
from pandas.testing import assert_frame_equal

from initprobe.nets.io import load_network
from initprobe.reproduce import measures
from initprobe.reproduce.config import load_profile, load_studies
from initprobe.reproduce.parallel import pending, work_ahead
from initprobe.reproduce.runner import measure, missing_measurements, run_study, study_dir
from initprobe.reproduce.workspace import StudyRuns, Workspace
from initprobe.runio import read_jsonl


def test_runs_trained_ahead_in_worker_processes_equal_the_serial_ones(tmp_path):
    folder = write_experiments(tmp_path / "exp")
    prof = load_profile(folder, "mini")
    studies = load_studies(folder, prof)
    serial = Workspace(prof, tmp_path / "serial", "cpu", log=lambda s: None)
    for study in studies:
        StudyRuns(serial, study).train_all()
    ahead, lines = Workspace(prof, tmp_path / "ahead", "cpu", log=lambda s: None), []
    assert len(pending(ahead, studies)[1]) == 4
    assert work_ahead(ahead, studies, jobs=2, log=lines.append) == {s.stem for s in studies}
    assert pending(ahead, studies) == ([], {})  # nothing left to train or measure
    assert any(line.startswith("  [4/4] ") for line in lines), lines
    assert sum("measured" in line for line in lines) >= len(studies)
    pairs = [(serial.teacher_dir(), ahead.teacher_dir())]
    for study in studies:  # run folders differ by their teacher's path, so pair them by config
        theirs, ours = StudyRuns(serial, study), StudyRuns(ahead, study)
        pairs += [(theirs.dir(label, seed), ours.dir(label, seed))
                  for label, seed, _ in theirs.items()]
    assert len(pairs) == 5
    for serial_dir, ahead_dir in pairs:
        mine = load_network(ahead_dir).state_dict()
        for name, value in load_network(serial_dir).state_dict().items():
            assert torch.equal(mine[name], value), name  # same thread count: bit for bit
    lines.clear()
    assert work_ahead(ahead, studies, jobs=2, log=lines.append) == set()
    assert lines == []  # everything finished: no pool is started
    # measurements in workers equal the serial ones, table for table
    for study in studies:
        folder = study_dir(serial, study)
        folder.mkdir(parents=True)
        measure(StudyRuns(serial, study), folder, missing_measurements(study, folder))
        ours = study_dir(ahead, study)
        assert missing_measurements(study, ours) == []
        tables = sorted(p.name for p in folder.glob("*.csv"))
        assert tables == sorted(p.name for p in ours.glob("*.csv")) and tables
        for name in tables:
            # run folders differ by their teacher's path: compare the numbers, not the paths
            assert_frame_equal(pd.read_csv(folder / name), pd.read_csv(ours / name))
    # tables measured ahead are new: the study loop redraws figures drawn from older ones
    stale = tmp_path / "fig" / f"{studies[0].stem}-quality.png"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    run_study(ahead, studies[0], stale.parent, lambda s: None, fresh=True)
    assert stale.read_bytes()[:4] == b"\x89PNG"


def test_studies_sharing_a_run_at_two_budgets_train_it_once_and_read_their_budget(tmp_path):
    long = STUDY.replace("images = 32", "images = 48").replace('"C1"', '"C2"')
    folder = write_experiments(tmp_path / "exp")
    (folder / "c2_mini.toml").write_text(long)
    prof = load_profile(folder, "mini")
    prof.student["eval_at"] = [32, 48]
    short, longer = load_studies(folder, prof)
    ws = Workspace(prof, tmp_path / "out", "cpu", log=lambda s: None)
    assert StudyRuns(ws, short).dir("random-init", 0) == StudyRuns(ws, longer).dir("random-init", 0)
    runs = pending(ws, [short, longer])[1]
    assert len(runs) == 4 and {cfg.images for _, cfg in runs.values()} == {48}
    work_ahead(ws, [short, longer], jobs=1, log=lambda s: None)
    sr = StudyRuns(ws, short)
    assert sr.checkpoint("random-init", 0).name == "ckpt-0000002"   # 32 images at batch 16
    table = measures.quality(sr, {})
    assert set(table["curves"]["x"]) == {0, 32}  # not the longer run's evaluation at 48
    evals = {r["images_seen"]: r["fd_classifier"] for r in read_jsonl(
        sr.dir("random-init", 0) / "metrics.jsonl") if r["kind"] == "eval"}
    final = table["quality"].query("run == 'random-init' and seed == 0 and "
                                   "metric == 'fd_classifier'")["value"]
    assert final.tolist() == [evals[32]] and 48 in evals


def test_work_ahead_runs_the_longest_budget_first_and_measures_a_study_once_its_runs_end(
        tmp_path):
    one_seed = STUDY.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "[measure.cka]\nsigmas = [0.5]\n", "")
    folder = write_experiments(tmp_path / "exp", one_seed)
    longer = one_seed.replace('"C1"', '"C2"').replace("images = 32", "images = 64")
    (folder / "c2_mini.toml").write_text(   # other runs: another R1 weight
        longer.replace('objective = "gan"', 'objective = "gan"\nr1_gamma = 0.01'))
    prof = load_profile(folder, "mini")
    studies = load_studies(folder, prof)
    lines = []
    work_ahead(Workspace(prof, tmp_path / "out", "cpu", log=lambda s: None), studies, jobs=1,
               log=lines.append)
    events = [m[1] or m[2] for ln in lines
              if (m := re.search(r"(C\d): measured|(\d+) images in", ln))]
    # the 64-image runs of C2 first, C2 measured before C1's 32-image runs start
    assert events == ["64", "64", "C2", "32", "32", "C1"], lines


def test_the_gate_is_checked_when_only_the_other_teacher_is_pending(tmp_path):
    study = STUDY.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "[measure.cka]\nsigmas = [0.5]\n", "").replace(
        '[runs.random-init]\nobjective = "gan"\ninit = "random"',
        '[runs.random-init]\nobjective = "gan"\ntransfer_from = "other"\n'
        'transfer_layers = "all"')
    folder = write_experiments(tmp_path / "exp", study)
    profile = (folder / "profiles.toml").read_text() + (
        '[mini.other_teacher]\ndata = "digits"\nseed = 1\n')
    (folder / "profiles.toml").write_text(profile)
    prof = load_profile(folder, "mini")
    ws = Workspace(prof, tmp_path / "out", "cpu", log=lambda s: None)
    ws.ensure_teacher()   # the main teacher trained before; the other one pending
    gates = []
    work_ahead(ws, load_studies(folder, prof), jobs=1, log=lambda s: None,
               between=lambda: gates.append(ws.teacher_pending("other")))
    assert gates == [True]   # checked once, before the other teacher and any run
    assert not ws.teacher_pending("other")



def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")   # ended, not reaped
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_workers_end_when_the_main_process_is_killed(tmp_path):
    """`kill -9` of the main process (no chance to clean up) still stops its worker processes."""
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from mini_profile import write_experiments
        from initprobe.reproduce.config import load_profile
        from initprobe.reproduce.parallel import _pool
        from initprobe.reproduce.workspace import Workspace

        if __name__ == "__main__":
            prof = load_profile(write_experiments(Path({str(tmp_path / "exp")!r})), "mini")
            ws = Workspace(prof, Path({str(tmp_path / "ws")!r}), "cpu", log=lambda s: None)
            pool = _pool(ws, 1, print)
            print(pool.submit(os.getpid).result(), flush=True)
            time.sleep(600)
    """))
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(main.stdout.readline())
    assert not _gone(worker)
    main.kill()
    main.wait()
    deadline = time.monotonic() + 30
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker)
