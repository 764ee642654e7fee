"""The CIFAR-10 profile (a given EDM checkpoint as teacher, --smoke), GPU workers of --jobs, and
a reproduction spread through a plan executed by submitit's local executor."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from edm_records import write_edm_pickle
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.nets.io import latest_checkpoint, read_meta
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.reproduce import smoke
from initprobe.reproduce.config import load_profile, load_studies
from initprobe.reproduce.gate import FLOOR, TEACHER, GateResult, checks
from initprobe.reproduce.parallel import _init_worker, worker_gpus
from initprobe.reproduce.plan import read_plan

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A tiny random EDM-format VP network on 32x32 RGB and a few CIFAR-shaped images."""
    folder = tmp_path_factory.mktemp("cifar")
    cfg = UNetConfig(img_resolution=32, in_channels=3, out_channels=3, model_channels=16,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])
    torch.manual_seed(0)
    write_edm_pickle(folder / "tiny.pkl", Denoiser(cfg, precond="vp").eval())
    g = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 64), ("test", 40)):
        y = np.arange(n) % 10     # class-dependent brightness, so the classifier has a signal
        x = g.integers(0, 40, (n, 32, 32, 3)) + (y * 20)[:, None, None, None]
        arrays.update({f"x_{split}": x.astype(np.uint8), f"y_{split}": y})
    np.savez(folder / "cifar.npz", **arrays)
    return folder / "tiny.pkl", folder / "cifar.npz"


def test_cifar10_profile_takes_a_checkpoint_and_skips_the_claim_it_cannot_test(tmp_path):
    prof = load_profile(EXPERIMENTS, "cifar10", data_path="cifar-10-batches-py")
    assert prof.teacher == {"checkpoint": str(Path("edm-cifar10-32x32-uncond-vp.pkl").resolve())}
    assert prof.features == "inception" and prof.other_teacher is None
    studies = load_studies(EXPERIMENTS, prof)
    assert [s.claim for s in studies] == [f"C{i}" for i in range(1, 11) if i != 8]
    assert all(len(s.seeds) >= 3 for s in studies)
    assert {s.claim: s.images for s in studies}["C1"] == 200_000
    with pytest.raises(UserError, match="does not apply to profile cifar10"):
        load_studies(EXPERIMENTS, prof, ["C8"])
    given = load_profile(EXPERIMENTS, "cifar10", "x", teacher="my.pkl", inception_weights="w.pth")
    assert given.teacher == {"checkpoint": str(Path("my.pkl").resolve())}
    assert given.inception_weights == "w.pth"
    # a checkpoint teacher is never mixed with training options
    (tmp_path / "profiles.toml").write_text(
        '[p]\ndata = "digits"\n[p.teacher]\ncheckpoint = "a.pkl"\npreset = "tiny"\n')
    with pytest.raises(UserError, match=r"p\.teacher\.checkpoint: a given checkpoint"):
        load_profile(tmp_path, "p")
    shrunk = smoke.smoke_profile(prof)
    assert shrunk.features == "classifier" and shrunk.gate["max_fd_ratio"] > 1e6
    assert [smoke.smoke_study(s).images for s in studies if s.runs][0] == smoke.IMAGES


def test_the_gate_on_inception_features_checks_the_distances_only():
    rows = {TEACHER: {"fd_inception": 9.0, "kid_inception": 0.02, "precision": 0.5},
            FLOOR: {"fd_inception": 3.0, "kid_inception": 0.001, "precision": 0.7}}
    opts = {"max_fd_ratio": 2.0, "max_kid_ratio": None}
    (fd,) = checks(rows, opts)
    assert fd.name == "fd_inception / floor" and fd.value == 3.0 and not fd.passed
    gate = GateResult(10, 18, rows, checks(rows, {**opts, "max_fd_ratio": 4.0}), "inception")
    assert gate.passed and gate.metrics == ("fd_inception", "kid_inception", "precision")
    assert [c.name for c in checks(rows, {**opts, "max_kid_ratio": 5.0})][1] == \
        "kid_inception / floor"


def test_each_worker_sees_its_own_gpu(monkeypatch):
    assert worker_gpus(5, 2) == [0, 1, 0, 1, 0] and worker_gpus(3, 0) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    queue = [1]

    class Queue:
        def get(self):
            return queue.pop()

    threads = torch.get_num_threads()
    _init_worker(threads, Queue())
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and not queue
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")
    _init_worker(threads, None)     # the CPU path touches no GPU setting
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "unchanged"


def test_cifar10_smoke_through_a_plan_run_by_submitit_locally(tmp_path, cifar):
    """`reproduce --plan` lists the gate and every run, submitit's local executor runs the lines
    (the same path as on Slurm), and the study step then trains nothing and writes findings."""
    pytest.importorskip("submitit", reason="pip install 'initprobe[cluster]'")
    pkl, npz = cifar
    register_commands()
    runner = CliRunner()
    base = ["--profile", "cifar10", "--teacher", str(pkl), "--data-path", str(npz), "--smoke",
            "--only", "C1", "--out", str(tmp_path / "runs"), "--device", "cpu",
            "--experiments", str(EXPERIMENTS)]
    missing = runner.invoke(app, ["reproduce", *base[:2], "--teacher", str(tmp_path / "no.pkl"),
                                  *base[4:], "--plan", str(tmp_path / "p.txt")])
    assert isinstance(missing.exception, UserError) and "teacher checkpoint" in str(
        missing.exception)
    plan = tmp_path / "plan.txt"
    res = runner.invoke(app, ["reproduce", *base, "--plan", str(plan)])
    assert res.exit_code == 0, res.output
    stages = read_plan(plan)
    assert [name for name, _ in stages] == ["gate", "runs"]      # a checkpoint is not trained
    runs = stages[1][1]
    assert len(runs) == 2 * smoke.SEEDS                         # C1: two inits x seeds
    assert all(ln.startswith(sys.executable) and "reproduce-one" in ln for ln in runs)
    res = runner.invoke(app, ["submit", str(plan), "--cluster", "local", "--logs",
                              str(tmp_path / "logs"), "--gpus-per-node", "0",
                              "--cpus-per-task", "1"])
    assert res.exit_code == 0, res.output
    assert "stage runs: 4 jobs done" in res.output
    folders = [Path(ln.split("--target ")[1]) for ln in runs]
    for folder in folders:
        meta = read_meta(latest_checkpoint(folder))
        assert meta["images_seen"] == smoke.IMAGES
        assert json.loads((folder / "config.json").read_text())["teacher"] == str(pkl.resolve())
    res = runner.invoke(app, ["reproduce", *base, "--figures", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    assert "images in" not in res.output                        # nothing trained again
    findings = (tmp_path / "fig" / "findings.md").read_text()
    assert "Teacher gate: passed" in findings and "--smoke" in findings
    res = runner.invoke(app, ["reproduce", *base, "--plan", str(plan)])
    assert "nothing pending" in res.output


def test_cifar10_smoke_runs_the_whole_profile_on_a_cpu(tmp_path, cifar):
    """`--smoke` runs every claim that applies to the CIFAR-10 profile (gate, runs, measurements,
    verdicts) in one process on the CPU, with the tiny checkpoint as teacher."""
    pkl, npz = cifar
    register_commands()
    res = CliRunner().invoke(app, [
        "reproduce", "--profile", "cifar10", "--teacher", str(pkl), "--data-path", str(npz),
        "--smoke", "--out", str(tmp_path / "runs"), "--device", "cpu",
        "--experiments", str(EXPERIMENTS), "--figures", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    table = __import__("pandas").read_csv(tmp_path / "fig" / "findings.csv")
    claims = set(table["claim"]) - {"gate"}
    assert claims == {f"C{i}" for i in range(1, 11) if i != 8}
    assert table["verdict"].notna().all()
