import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from initprobe.ablate.select import block_layer_ids
from initprobe.cli import app, register_commands
from initprobe.data import load_dataset
from initprobe.errors import UserError
from initprobe.measure.analyses.linear_probe import (
    best_layer_accuracy,
    best_layers,
    linear_probe,
    pooled_features,
    probe_many,
)
from initprobe.measure.analyses.profiles import (
    DEFAULT_LAYERS,
    ProbeOptions,
    fixed_noise,
    select_layers,
)
from initprobe.measure.features import hooks
from initprobe.nets.io import load_network, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig
from initprobe.schema import COLUMNS
from initprobe.train.teacher import TeacherConfig, train_teacher

torch.set_num_threads(1)
register_commands()
SIGMAS = [0.01, 0.1, 80.0]


def make_net(seed=0):
    torch.manual_seed(seed)
    return Denoiser(UNetConfig()).eval()


def planted():
    """Two classes of noise images, class 1 shifted up by 0.5 everywhere, and a stem whose
    channel 0 is the identity (its pooled output is the image mean: the label, linearly) while
    the other 15 channels are zero."""
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(200) % 2
    images = torch.randn(200, 1, 8, 8, generator=g) * 0.3 + 0.5 * labels[:, None, None, None]
    net = make_net()
    with torch.no_grad():
        conv = net.model.enc["8x8_conv"]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    return net, images, labels


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", split="train", limit=300)
    return ds.images, ds.labels


def accuracy(df, **where):
    d = df[df["metric"] == "accuracy"]
    for k, v in where.items():
        d = d[d[k] == v]
    return d["value"]


def test_a_planted_signal_in_one_channel_is_decoded_and_noise_erases_it():
    net, images, labels = planted()
    df = linear_probe(net, images, labels, ProbeOptions(SIGMAS, "enc.8x8_conv", seed=1))
    acc = df[df["metric"] == "accuracy"].set_index("sigma")["value"]
    assert acc[0.01] >= 0.98 and acc[0.1] >= 0.98
    assert acc[80.0] <= 0.7          # sd of the pooled noise 80/8 = 10 >> the 0.5 shift
    chance = df.loc[df["metric"] == "chance", "value"].item()
    assert chance == pytest.approx(0.5)
    feats = pooled_features(net, images, fixed_noise(images, 1), 0.01, ["enc.8x8_conv"])
    x = feats["enc.8x8_conv"]
    assert x.shape == (200, 16) and not x[:, 1:].any()
    assert np.corrcoef(x[:, 0], labels.numpy())[0, 1] > 0.95


@pytest.mark.parametrize("classifier", ["ridge", "logistic"])
def test_shuffled_labels_give_chance_and_true_labels_do_not(digits, classifier):
    images, labels = digits
    net = make_net()
    probe = ProbeOptions([0.05], "dec.4x4_in1.conv1,dec.8x8_up.conv1")
    true = linear_probe(net, images, labels, probe, classifier)
    shuffled = linear_probe(net, images, labels[torch.randperm(len(labels),
                            generator=torch.Generator().manual_seed(0))], probe, classifier)
    chance = true.loc[true["metric"] == "chance", "value"].item()
    assert chance == pytest.approx(np.bincount(labels).max() / len(labels), abs=0.01)
    assert accuracy(true).min() > 0.5
    assert accuracy(shuffled).max() < chance + 0.1
    balanced = shuffled.loc[shuffled["metric"] == "balanced_accuracy", "value"]
    assert balanced.max() < 0.1 + 0.1


def test_a_briefly_trained_teacher_beats_random_inits_on_digits(tmp_path):
    """100 teacher steps already make the class more decodable than in random networks once
    noise is present (at sigma <= 0.05 random features of 8x8 digits are ~90% decodable
    too)."""
    train_teacher(TeacherConfig(images=6400, batch=64, warmup_images=1000, ema_halflife=2000,
                                ckpt_every=10**6, log_every=10**6, sample_steps=2),
                  tmp_path / "teacher", progress=False)
    ds = load_dataset("digits", split="train", limit=500)
    nets = {"teacher": load_network(tmp_path / "teacher").eval(),
            "random0": make_net(0), "random1": make_net(1)}
    best = best_layer_accuracy(probe_many(nets, ds.images, ds.labels, ProbeOptions([0.6, 1.0])))
    assert best["teacher"] > max(best["random0"], best["random1"]) + 0.04


def test_table_schema_layers_order_and_determinism(digits):
    images, labels = digits
    net = make_net()
    a = probe_many({"x": net, "y": make_net(1)}, images, labels, ProbeOptions([2.0, 0.1], seed=3))
    assert list(a.columns[:len(COLUMNS)]) == COLUMNS
    assert list(dict.fromkeys(a["run"])) == ["x", "y"]
    rows = a[a["metric"] == "accuracy"]
    assert list(dict.fromkeys(rows["layer"])) == block_layer_ids(net)
    assert list(dict.fromkeys(rows["sigma"])) == [0.1, 2.0]
    assert set(a["metric"]) == {"accuracy", "balanced_accuracy", "chance"}
    assert a["seed"].eq(3).all() and a["value"].between(0, 1).all()
    b = probe_many({"x": net, "y": make_net(1)}, images, labels, ProbeOptions([2.0, 0.1], seed=3))
    pd.testing.assert_frame_equal(a, b)
    best = best_layer_accuracy(a)
    for run in ("x", "y"):
        means = accuracy(a, run=run).groupby(rows[rows["run"] == run]["layer"]).mean()
        assert best[run] == pytest.approx(means.max())
        assert best_layers(a)[run] == means.idxmax()


def test_streaming_batches_give_the_same_features_and_hooks_are_removed(digits):
    images, _ = digits
    net = make_net()
    ids = select_layers(net, "decoder")
    noise = fixed_noise(images, 0)
    whole = pooled_features(net, images, noise, 0.5, ids, batch=300)
    parts = pooled_features(net, images, noise, 0.5, ids, batch=7)
    for i in ids:
        np.testing.assert_allclose(parts[i], whole[i], rtol=1e-5, atol=1e-6)
    modules = hooks.modules_by_id(net, ids).values()
    assert all(not m._forward_hooks for m in modules)


def test_selector_language_and_default_layers():
    net = make_net()
    assert select_layers(net, DEFAULT_LAYERS) == block_layer_ids(net)
    assert select_layers(net, "res:4-attention-norm-skip")[0] == "enc.4x4_down.conv0"
    with pytest.raises(UserError, match="matches no layer.*initprobe layers"):
        select_layers(net, "decodr")


@pytest.mark.parametrize("kw, message", [
    (dict(classifier="svm"), "unknown classifier"),
    (dict(test_fraction=1.5), "between 0 and 1"),
    (dict(n=6), "at least 4 images each"),
    (dict(n=299), "299 images but 300 labels"),
])
def test_bad_input_is_a_user_error(digits, kw, message):
    images, labels = digits
    n = kw.pop("n", None)
    if n == 6:
        images, labels = images[:n], labels[:n]
    elif n is not None:
        images = images[:n]
    with pytest.raises(UserError, match=message):
        linear_probe(make_net(), images, labels, ProbeOptions([0.1]), **kw)


def test_cli_writes_table_and_figures(tmp_path):
    ckpt = save_checkpoint(tmp_path / "tiny", make_net())
    r = CliRunner().invoke(app, [str(a) for a in (
        "linear-probe", ckpt, ckpt, "--label", "a", "--label", "b", "--out", tmp_path / "out",
        "--n-images", 120, "--sigmas", "0.1,1", "--layers", "decoder-attention-norm",
        "--device", "cpu")])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "out" / "linear_probe.csv")
    assert list(dict.fromkeys(df["run"])) == ["a", "b"]
    assert sorted(df["sigma"].dropna().unique()) == [0.1, 1.0]
    assert df["layer"].dropna().str.startswith("dec.").all()
    for png in ("linear_probe.png", "linear_probe_best.png"):
        assert Image.open(tmp_path / "out" / png).format == "PNG"
    assert "a: best layer dec." in r.output and "chance" in r.output


@pytest.mark.parametrize("args, message", [
    (["--sigmas", "0.1,x"], "bad --sigmas"),
    (["--layers", "decodr"], "matches no layer"),
    (["--classifier", "svm"], "unknown classifier"),
    (["--label", "a", "--label", "b"], "one label per checkpoint"),
])
def test_cli_bad_options_are_user_errors(tmp_path, args, message):
    ckpt = save_checkpoint(tmp_path / "tiny", make_net())
    r = CliRunner().invoke(app, ["linear-probe", str(ckpt), "--out", str(tmp_path / "o"),
                                 "--n-images", "60", "--device", "cpu", *args])
    assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
    assert not (tmp_path / "o").exists()


def test_help_shows_an_example():
    r = CliRunner().invoke(app, ["linear-probe", "--help"])
    assert r.exit_code == 0 and "Example: initprobe linear-probe" in r.output
