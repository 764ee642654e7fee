import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.nets.io import save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.train.onestep import OneStepConfig, train_onestep

register_commands()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "tiny", Denoiser(UNetConfig()),
                           kind="teacher")


@pytest.fixture(scope="module", params=["diffratio", "ratio"])
def run(request, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cfg = OneStepConfig(teacher=str(teacher), objective=request.param, batch=8, images=16,
                        lr_aux=1e-2, eval_n=0)
    train_onestep(cfg, str(out), device="cpu", progress=False)
    return out


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_best_of_keeps_the_smallest_d(run, tmp_path):
    r = invoke("sample-best-of", run, "--k", 3, "--n", 5, "--mode", "best", "--out", tmp_path,
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    npz = np.load(tmp_path / "best-3.npz")
    assert npz["images"].shape == (5, 1, 8, 8) and npz["d"].shape == (5,)
    assert all(3 * i <= s < 3 * (i + 1) for i, s in enumerate(npz["seeds"]))  # one per group
    assert Image.open(tmp_path / "best-3.png").format == "PNG"
    assert (tmp_path / "plain.png").exists() and "mean d" in r.output


def test_resample_draws_from_the_pool(run, tmp_path):
    r = invoke("sample-best-of", run, "--k", 4, "--n", 6, "--mode", "resample", "--seed", 1,
               "--out", tmp_path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    npz = np.load(tmp_path / "resample-4.npz")
    assert npz["images"].shape == (6, 1, 8, 8)
    assert ((24 <= npz["seeds"]) & (npz["seeds"] < 48)).all()
    assert "effective sample size" in r.output


def test_a_run_without_ratio_estimator_is_refused(teacher, tmp_path):
    r = invoke("sample-best-of", teacher, "--out", tmp_path, "--device", "cpu")
    assert isinstance(r.exception, UserError) and "ratio/diffratio" in str(r.exception)
    r = invoke("sample-best-of", teacher, "--mode", "worst", "--out", tmp_path)
    assert isinstance(r.exception, UserError) and "--mode" in str(r.exception)
    assert not any(tmp_path.iterdir())


def test_help_shows_an_example():
    r = invoke("sample-best-of", "--help")
    assert r.exit_code == 0 and "Example: initprobe sample-best-of" in r.output
