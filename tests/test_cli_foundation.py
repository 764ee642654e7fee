import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.nets.io import save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

register_commands()


def run(*args):
    return subprocess.run([sys.executable, "-m", "initprobe", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    stem = tmp_path_factory.mktemp("ckpt") / "net"
    save_checkpoint(stem, Denoiser(UNetConfig()))
    return stem


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    r = run("sample", tmp_path / "missing.safetensors", "--out", tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
    r = run("train-teacher", "--data", "imagenet", "--out", tmp_path / "t")
    assert r.returncode == 2 and "choose one of" in r.stderr
    assert not (tmp_path / "t").exists()


def test_sample_writes_png_and_npz(ckpt, tmp_path):
    res = CliRunner().invoke(app, ["sample", str(ckpt), "--out", str(tmp_path), "--sampler",
                                   "heun", "--steps", "3", "--seeds", "0-3,9"])
    assert res.exit_code == 0, res.output
    z = np.load(tmp_path / "heun-3.npz")
    assert z["images"].shape == (5, 1, 8, 8) and z["seeds"].tolist() == [0, 1, 2, 3, 9]
    assert (tmp_path / "heun-3.png").stat().st_size > 0


def test_sample_rejects_bad_seeds(ckpt, tmp_path):
    res = CliRunner().invoke(app, ["sample", str(ckpt), "--out", str(tmp_path), "--seeds", "a-b"])
    assert res.exit_code != 0 and "bad --seeds" in str(res.exception)


def test_layers_table_and_selection(ckpt, tmp_path):
    res = CliRunner().invoke(app, ["layers", str(ckpt), "--csv", str(tmp_path / "t.csv")])
    assert res.exit_code == 0, res.output
    assert "enc.8x8_block0.conv1" in res.output and "100.0%" in res.output
    res = CliRunner().invoke(app, ["layers", str(ckpt), "--select", "decoder"])
    assert res.exit_code == 0, res.output
    assert "dec.8x8_up.conv0" in res.output and "enc.8x8_block0" not in res.output
