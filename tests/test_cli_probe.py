import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from initprobe.ablate.select import select
from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.nets.io import load_network, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

torch.set_num_threads(1)
register_commands()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", Denoiser(UNetConfig()))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_probe_activations_writes_table_and_heatmap(ckpt, tmp_path):
    r = invoke("probe-activations", ckpt, ckpt, "--label", "a", "--label", "b", "--out", tmp_path,
               "--n-images", 16, "--stat", "rms", "--device", "cpu")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "activations.csv")
    assert list(dict.fromkeys(df["run"])) == ["a", "b"]
    assert set(df["metric"]) == {"rms", "minmax"} and df["sigma"].nunique() == 18
    assert Image.open(tmp_path / "activations.png").format == "PNG"
    assert "activations.csv" in r.output and "median peak sigma" in r.output


def test_probe_activations_takes_a_layer_selector(ckpt, tmp_path):
    r = invoke("probe-activations", ckpt, "--out", tmp_path, "--n-images", 8, "--layers",
               "enc.*", "--device", "cpu")
    assert r.exit_code == 0, r.output
    layers = list(dict.fromkeys(pd.read_csv(tmp_path / "activations.csv")["layer"]))
    expected = select(load_network(ckpt), "enc.*")
    assert layers == expected and all(i.startswith("enc.") for i in layers)
    assert len(expected) > len(select(load_network(ckpt), "blocks-decoder"))


def test_attribute_writes_table_and_heatmap(ckpt, tmp_path):
    r = invoke("attribute", ckpt, "--out", tmp_path, "--n-images", 4, "--n-steps", 3,
               "--layers", "dec.8x8_aux_conv,enc.8x8_conv", "--internal-batch-size", 8,
               "--target", "projection", "--device", "cpu")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "attribution.csv")
    assert list(dict.fromkeys(df["layer"])) == ["enc.8x8_conv", "dec.8x8_aux_conv"]
    assert set(df["run"]) == {"tiny"} and set(df["metric"]) == {"attr_conductance", "minmax"}
    assert Image.open(tmp_path / "attribution.png").format == "PNG"


@pytest.mark.parametrize("args", [
    ["probe-activations", "{missing}"],
    ["probe-activations", "{ckpt}", "--data", "nope"],
    ["probe-activations", "{ckpt}", "{ckpt}", "--label", "one"],
    ["attribute", "{missing}"],
    ["attribute", "{ckpt}", "--method", "saliency", "--n-images", "2"],
    ["probe-activations", "{ckpt}", "--layers", "enc.99x99*"],
    ["attribute", "{ckpt}", "--layers", "decodr", "--n-images", "2"],
])
def test_bad_input_is_a_user_error(ckpt, tmp_path, args):
    args = [a.format(ckpt=ckpt, missing=tmp_path / "missing") for a in args]
    r = invoke(*args, "--out", tmp_path / "out", "--device", "cpu")
    assert isinstance(r.exception, UserError), r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["probe-activations", "attribute"])
def test_help_shows_an_example(command):
    r = invoke(command, "--help")
    assert r.exit_code == 0 and "Example: initprobe " + command in r.output
