import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from initprobe.ablate.select import select
from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.measure.features import classifier
from initprobe.nets.io import load_network, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

register_commands()


@pytest.fixture(autouse=True)
def quick_classifier(monkeypatch):
    """The feature classifier trains for 30 s by default; 20 steps suffice for plumbing tests."""
    real = classifier.load_or_train
    monkeypatch.setattr(classifier, "load_or_train",
                        lambda train, test=None, **kw: real(train, test, steps=20,
                                                            progress=False))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    a = save_checkpoint(d / "a", Denoiser(UNetConfig()))
    torch.manual_seed(1)
    b = Denoiser(UNetConfig())
    with torch.no_grad():  # a visible output head: b's samples differ from a's near-zero ones
        b.model.dec["8x8_aux_conv"].weight.normal_()
    return a, save_checkpoint(d / "b", b)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args] + ["--device", "cpu"])


def read(path):
    assert path.exists(), path
    return pd.read_csv(path)


def is_png(path):
    return Image.open(path).format == "PNG"


def test_quality_two_checkpoints_against_data(ckpts, tmp_path):
    r = invoke("quality", *ckpts, "--label", "x", "--label", "y", "--n", 16, "--steps", 2,
               "--out", tmp_path)
    assert r.exit_code == 0, r.output
    df = read(tmp_path / "quality.csv")
    assert list(dict.fromkeys(df["run"])) == ["x", "y"]
    assert {"fd_classifier", "kid_classifier", "precision", "coverage",
            "classes_covered"} <= set(df["metric"])
    assert set(df["network"]) == {"classifier"} and set(df["reference"]) == {"data"}
    assert (df[df["metric"] == "fd_classifier"]["value"] > 0).all()


def test_quality_relative_to_a_checkpoint(ckpts, tmp_path):
    a, b = ckpts
    r = invoke("quality", a, b, "--reference", a, "--sampler", "one-step", "--n", 12,
               "--out", tmp_path)
    assert r.exit_code == 0, r.output
    fd = read(tmp_path / "quality.csv").query("metric == 'fd_classifier'").set_index("run")
    assert abs(fd.loc["a", "value"]) < 1e-6  # its own samples, same seeds
    assert fd.loc["b", "value"] > 1e-4


def test_relfid_writes_table_and_figure(ckpts, tmp_path):
    a, b = ckpts
    r = invoke("relfid", "--teacher", a, "--student", b, "--steps", "2,3", "--sigma-mid",
               "0.5,2", "--n", 8, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    df = read(tmp_path / "relfid.csv")
    assert set(df["metric"]) == {"abs_fd", "rel_fd"}
    assert sorted(df[df["sweep"] == "steps"]["steps"].unique()) == [2, 3]
    assert sorted(df[df["sweep"] == "sigma_mid"]["sigma_mid"].unique()) == [0.5, 2]
    assert is_png(tmp_path / "relfid.png") and "heun-3" in r.output


def test_cka_writes_matrix_and_diagonal(ckpts, tmp_path):
    a, _ = ckpts
    r = invoke("cka", a, a, "--n-images", 16, "--batch", 8, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    matrix, diag = read(tmp_path / "cka_matrix.csv"), read(tmp_path / "cka_diagonal.csv")
    n_layers = matrix["layer"].nunique()
    assert len(matrix) == n_layers ** 2 and set(matrix["run"]) == {"a vs a"}
    assert diag["sigma"].nunique() == 18 and len(diag) == 18 * n_layers
    assert diag["value"].sub(1).abs().max() < 1e-6
    assert is_png(tmp_path / "cka_matrix.png") and is_png(tmp_path / "cka_diagonal.png")


def test_cka_takes_a_layer_selector(ckpts, tmp_path):
    a, b = ckpts
    r = invoke("cka", a, b, "--n-images", 8, "--batch", 8, "--layers", "decoder", "--out",
               tmp_path)
    assert r.exit_code == 0, r.output
    expected = select(load_network(a), "decoder")
    for name in ("cka_matrix", "cka_diagonal"):
        df = read(tmp_path / f"{name}.csv")
        assert list(dict.fromkeys(df["layer"])) == expected
    assert all(i.startswith("dec.") for i in expected)


def test_spectrum_writes_spectra_and_bands(ckpts, tmp_path):
    r = invoke("spectrum", *ckpts, "--n", 8, "--n-images", 16, "--heun-steps", 2,
               "--out", tmp_path)
    assert r.exit_code == 0, r.output
    spectra, bands = read(tmp_path / "spectra.csv"), read(tmp_path / "bands.csv")
    assert set(spectra["metric"]) == {"power"} and set(spectra["run"]) == {"data", "a", "b"}
    assert set(bands["metric"]) == {"rel_error", "band_mismatch"}
    assert bands[bands["metric"] == "rel_error"]["sigma"].nunique() == 18
    assert is_png(tmp_path / "spectra.png") and is_png(tmp_path / "bands.png")


@pytest.mark.parametrize("args, message", [
    (["quality", "{a}", "--network", "inception"], "--inception-weights"),
    (["relfid", "--teacher", "{a}", "--student", "{a}", "--network", "inception"],
     "--inception-weights"),
    (["quality", "{a}", "--network", "inception", "--inception-weights", "{missing}"],
     "no such file"),
    (["quality", "{a}", "--sampler", "ddim"], "unknown sampler"),
    (["quality", "{a}", "--data", "nope"], "unknown dataset"),
    (["relfid", "--teacher", "{a}", "--student", "{a}", "--steps", "2,x"], "--steps"),
    (["cka", "{a}", "{missing}"], "not found"),
    (["cka", "{a}", "{a}", "--kernel", "cosine"], "unknown CKA kernel"),
    (["cka", "{a}", "{a}", "--layers", "dec.3x3*"], "'dec.3x3*' matches no layer"),
    (["spectrum", "{missing}"], "not found"),
])
def test_bad_input_is_a_user_error(ckpts, tmp_path, args, message):
    args = [s.format(a=ckpts[0], missing=tmp_path / "missing") for s in args]
    r = invoke(*args, "--out", tmp_path / "out")
    assert isinstance(r.exception, UserError), r.output
    assert message in str(r.exception)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["quality", "relfid", "cka", "spectrum"])
def test_help_shows_an_example(command):
    r = CliRunner().invoke(app, [command, "--help"])
    assert r.exit_code == 0 and "Example: initprobe " + command in r.output
