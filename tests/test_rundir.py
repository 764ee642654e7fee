"""A run directory you can trust: one writer (two real processes), stale locks, orphaned
temporary files, metrics.jsonl on resume, file modes, and the finite guard."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from initprobe.errors import UserError
from initprobe.nets.io import ema_copy, latest_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.runio import atomic_save, atomic_write_text, read_jsonl
from initprobe.runlock import LOCK_NAME, RunLock
from initprobe.train import teacher as teacher_module
from initprobe.train.loop import RunDir
from initprobe.train.teacher import TeacherConfig, train_teacher

SMALL = dict(preset="tiny", batch=32, log_every=1, ckpt_every=2, warmup_images=500,
             sample_steps=2)


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "initprobe", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for_lock(run, proc, timeout=600.0) -> dict:
    """The lock record once the process `proc` has written it."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            return json.loads((run / LOCK_NAME).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.2)
    raise AssertionError("the first writer never took the lock")


def test_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(tmp_path, capfd):
    run = tmp_path / "run"
    first = cli("train-teacher", "--images", 10**7, "--batch", 32, "--ckpt-every", 2,
                "--out", run)
    try:
        holder = wait_for_lock(run, first)
        assert holder["pid"] == first.pid and holder["host"]
        while latest_checkpoint(run) is None:
            assert first.poll() is None
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)   # still holding the lock, no longer using the CPU
        second = cli("train-teacher", "--images", 10**7, "--batch", 32, "--ckpt-every", 2,
                     "--seed", 1, "--out", run)
        out, err = second.communicate(timeout=600)
        assert second.returncode == 2
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert f"being written by pid {first.pid} on host {holder['host']}" in err
        assert first.poll() is None   # the first writer is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.loads((run / "config.json").read_text())["seed"] == 0
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid   # left behind
    capfd.readouterr()
    step = int(latest_checkpoint(run).name.split("-")[1])
    # the same config as the killed command (the budget may differ): it resumes
    train_teacher(TeacherConfig(images=32 * (step + 2), batch=32, ckpt_every=2), run,
                  progress=False)
    assert f"taking over the lock left by pid {first.pid}" in capfd.readouterr().err
    assert latest_checkpoint(run).name == f"ckpt-{step + 2:07d}"
    assert not (run / LOCK_NAME).exists()   # released


def test_lock_refuses_a_second_holder_in_process_and_cleans_up(tmp_path):
    with RunLock(tmp_path / "new"):
        with pytest.raises(UserError, match=f"being written by pid {os.getpid()}"):
            RunLock(tmp_path / "new").acquire()
    assert not (tmp_path / "new").exists()   # created by the lock, nothing written: removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        RunLock(tmp_path / "file").acquire()


def test_orphan_temp_files_are_removed_on_the_next_start(tmp_path, capsys):
    run = tmp_path / "run"
    train_teacher(TeacherConfig(images=32 * 2, **SMALL), run, progress=False)
    orphan = run / "checkpoints" / ".ckpt-0000004.safetensors.k2j_9x0a.tmp"
    orphan.write_bytes(b"\0" * 1000)   # what a kill during a checkpoint write leaves
    mine = run / "checkpoints" / "notes.tmp"
    mine.write_text("a user's file")
    train_teacher(TeacherConfig(images=32 * 4, **SMALL), run, progress=False)
    assert not orphan.exists() and mine.exists()
    assert f"removed {orphan}" in capsys.readouterr().err


def test_resume_truncates_metrics_to_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    train_teacher(TeacherConfig(images=32 * 6, **SMALL), run, progress=False)
    # killed after logging step 6 but before its checkpoint, mid-way through a line
    for suffix in (".json", ".safetensors", ".state.pt"):
        (run / "checkpoints" / f"ckpt-0000006{suffix}").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    train_teacher(TeacherConfig(images=32 * 6, **SMALL), run, progress=False)
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "metrics.jsonl").read_text().count("\n") == 6


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "text", "x")
    atomic_save(tmp_path / "saved.pt", lambda tmp: torch.save({"a": 1}, tmp))
    mode = (tmp_path / "plain").stat().st_mode & 0o777
    assert mode & 0o044   # readable by others under the usual umask, unlike mkstemp's 0600
    assert (tmp_path / "text").stat().st_mode & 0o777 == mode
    assert (tmp_path / "saved.pt").stat().st_mode & 0o777 == mode


def test_forced_divergence_stops_at_its_step_and_keeps_finite_checkpoints(tmp_path,
                                                                         monkeypatch):
    calls, edm_loss = [], teacher_module.edm_loss

    def diverging_loss(*args):
        calls.append(1)
        return edm_loss(*args) * (float("nan") if len(calls) == 5 else 1.0)

    monkeypatch.setattr(teacher_module, "edm_loss", diverging_loss)
    run = tmp_path / "run"
    cfg = TeacherConfig(images=32 * 8, **{**SMALL, "ckpt_every": 1})
    with pytest.raises(UserError, match=r"diverged at step 5: loss is nan \(the last "
                                        r"checkpoint, ckpt-0000004, is finite\)"):
        train_teacher(cfg, run, progress=False)
    stems = sorted(p.name for p in (run / "checkpoints").glob("*.safetensors"))
    assert stems == ["ckpt-0000003.safetensors", "ckpt-0000004.safetensors"]
    for name in stems:
        assert all(torch.isfinite(t).all() for t in load_file(run / "checkpoints" / name)
                   .values())
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == 4
    assert not (run / LOCK_NAME).exists()   # released on the error too


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    net = Denoiser(UNetConfig())
    ema = ema_copy(net)
    with torch.no_grad():
        next(net.parameters())[0] = float("inf")
    with RunDir(tmp_path / "run", {"kind": "test"}) as run:
        with pytest.raises(UserError, match="diverged at step 3: the weights are not finite "
                                            r"\(no checkpoint was written\)"):
            run.save(3, net, ema, {"step": 3})
        run.save(3, ema, ema_copy(ema), {"step": 3})
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["ckpt-0000003.json", "ckpt-0000003.safetensors", "ckpt-0000003.state.pt"]   # finite


def test_real_divergence_exits_non_zero_with_one_line(tmp_path):
    proc = cli("train-teacher", "--lr", 1e6, "--images", 32 * 20, "--batch", 32,
               "--ckpt-every", 1, "--out", tmp_path / "run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and err.count("\n") == 1
    assert err.startswith("error: training diverged at step ") and "is nan" in err
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name in err
    assert all(torch.isfinite(t).all() for t in load_file(last.with_suffix(".safetensors"))
               .values())
