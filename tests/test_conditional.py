"""Class-conditional teachers: labels in the config and checkpoint, samples follow the labels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from initprobe.cli import app, register_commands
from initprobe.diffusion import generate, latents
from initprobe.errors import UserError
from initprobe.nets.io import load_network
from initprobe.nets.labels import class_labels, labels_onehot, parse_labels
from initprobe.train.teacher import TeacherConfig, train_teacher

register_commands()
SMALL = dict(preset="tiny", batch=32, log_every=50, ckpt_every=1000, warmup_images=500,
             sample_steps=2, lr=4e-3, ema_halflife=0)   # no EMA: the EMA lags at 150 steps


def two_class_folder(root, n=40):
    """8x8 grey images: class 0 bright on the left half, class 1 bright on the right half."""
    rng = np.random.default_rng(0)
    for c in (0, 1):
        (root / str(c)).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((8, 8), np.uint8)
            half = (slice(None), slice(0, 4) if c == 0 else slice(4, 8))
            img[half] = 200 + rng.integers(0, 55, (8, 4))
            Image.fromarray(img).convert("RGB").save(root / str(c) / f"{i}.png")
    return root


def side(x: torch.Tensor) -> torch.Tensor:
    """The toy classifier: 1 where the right half is brighter than the left, else 0."""
    return (x[:, 0, :, 4:].mean((1, 2)) > x[:, 0, :, :4].mean((1, 2))).long()


@pytest.fixture(scope="module")
def cond_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    data = two_class_folder(root / "data")
    out = root / "teacher"
    train_teacher(TeacherConfig(data="folder", data_path=str(data), images=32 * 150,
                                labels=True, **SMALL), out, progress=False)
    return out


def test_conditional_teacher_follows_its_labels(cond_teacher):
    cfg = json.loads((cond_teacher / "config.json").read_text())
    assert cfg["labels"] is True and cfg["label_dropout"] == 0.1
    assert cfg["unet"]["label_dim"] == 2 and cfg["unet"]["label_dropout"] == 0.1
    net = load_network(cond_teacher).eval()
    assert net.cfg.label_dim == 2      # the checkpoint loads back as a conditional network
    z = latents(range(64), (1, 8, 8))
    for c in (0, 1):
        y = labels_onehot(net, str(c), range(64))
        x = generate(net, z, "heun", 8, labels=y)
        hit = float((side(x) == c).float().mean())
        assert hit > 0.85, (c, hit)    # chance is 0.5
    # the same latents with the other label give other images
    x0 = generate(net, z, "heun", 8, labels=labels_onehot(net, "0", range(64)))
    x1 = generate(net, z, "heun", 8, labels=labels_onehot(net, "1", range(64)))
    assert (x0 - x1).abs().mean() > 0.3


def test_unconditional_teacher_config_has_no_label_keys(tmp_path):
    train_teacher(TeacherConfig(images=32 * 2, **SMALL), tmp_path, progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "labels" not in cfg and "label_dropout" not in cfg and "label_dim" not in cfg["unet"]


def test_label_specs(cond_teacher):
    net = load_network(cond_teacher)
    assert parse_labels("0-2,5", 10) == [0, 1, 2, 5]
    assert class_labels(net, "0-1", range(5)).tolist() == [0, 1, 0, 1, 0]
    assert class_labels(net, "1", range(3)).tolist() == [1, 1, 1]
    u = class_labels(net, "uniform", range(200))
    assert set(u.tolist()) == {0, 1} and class_labels(net, "uniform", [7]) == u[7]
    own = torch.tensor([1, 0, 1])
    assert torch.equal(class_labels(net, None, own=own), own)   # real images: their own labels
    assert class_labels(net, None, range(4)).tolist() == class_labels(net, "uniform",
                                                                      range(4)).tolist()


@pytest.mark.parametrize("spec, match", [("5", "class 5 is out of range.*2 classes"),
                                         ("a-b", "bad --labels"), ("data", "no labels")])
def test_label_errors_are_one_line(cond_teacher, spec, match):
    net = load_network(cond_teacher)
    with pytest.raises(UserError, match=match) as e:
        class_labels(net, spec, range(4))
    assert "\n" not in str(e.value)


def test_labels_for_an_unconditional_network_are_refused():
    from initprobe.nets.precond import Denoiser
    from initprobe.nets.unet import UNetConfig
    net = Denoiser(UNetConfig(img_resolution=8))
    assert class_labels(net, None, range(3)) is None
    with pytest.raises(UserError, match="unconditional"):
        class_labels(net, "3", range(3))


def test_bad_label_dropout(tmp_path):
    with pytest.raises(UserError, match="label-dropout"):
        train_teacher(TeacherConfig(labels=True, label_dropout=1.0, **SMALL), tmp_path,
                      progress=False)


def test_sample_cli_labels(cond_teacher, tmp_path):
    from typer.testing import CliRunner
    runner = CliRunner()
    r = runner.invoke(app, ["sample", str(cond_teacher), "--labels", "1", "--seeds", "0-31",
                            "--steps", "8", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    z = np.load(tmp_path / "s" / "heun-8.npz")
    assert z["labels"].tolist() == [1] * 32
    assert float((side(torch.from_numpy(z["images"])) == 1).float().mean()) > 0.85
    r = runner.invoke(app, ["sample", str(cond_teacher), "--labels", "7", "--out",
                            str(tmp_path / "t")])
    assert r.exit_code != 0 and "class 7 is out of range" in str(r.exception)
    r = runner.invoke(app, ["sample", str(cond_teacher), "--seeds", "0-3", "--steps", "2",
                            "--out", str(tmp_path / "u")])
    assert r.exit_code == 0 and "drawn uniformly" in r.output


@pytest.mark.parametrize("objective", ["gan", "ratio", "diffratio", "dmd", "cd"])
def test_conditional_students_train_and_use_their_labels(cond_teacher, tmp_path, objective):
    from initprobe.train.onestep import OneStepConfig, train_onestep
    data = str(cond_teacher.parent / "data")
    cfg = dict(teacher=str(cond_teacher), objective=objective, data="folder", data_path=data,
               images=3 * 16, batch=16, eval_n=0, log_every=1, ckpt_every=1, labels=True)
    rec = train_onestep(OneStepConfig(**cfg), str(tmp_path / "run"), progress=False)
    assert rec["kind"] == "train" and all(np.isfinite(v) for v in rec.values()
                                          if isinstance(v, float))
    run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_cfg["labels"] is True
    gen = load_network(tmp_path / "run", "net").eval()
    assert gen.cfg.label_dim == 2 and gen.cfg.label_dropout == 0.0   # G(z, y) sees its label
    z = latents(range(8), (1, 8, 8))
    y0, y1 = (labels_onehot(gen, c, range(8)) for c in ("0", "1"))
    assert (gen(80 * z, 80.0, y0) - gen(80 * z, 80.0, y1)).abs().mean() > 0.05
    # resuming continues bit-exactly (the labels come from the step's own generator stream)
    part = tmp_path / "part"
    train_onestep(OneStepConfig(**{**cfg, "images": 2 * 16}), str(part), progress=False)
    train_onestep(OneStepConfig(**cfg), str(part), progress=False)
    a = load_network(tmp_path / "run", "net").state_dict()
    b = load_network(part, "net").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_labels_need_a_conditional_teacher(tmp_path):
    from initprobe.train.onestep import OneStepConfig, train_onestep
    teacher = tmp_path / "t"
    train_teacher(TeacherConfig(images=32 * 2, **SMALL), teacher, progress=False)
    with pytest.raises(UserError, match="unconditional.*train-teacher --labels"):
        train_onestep(OneStepConfig(teacher=str(teacher), images=16, batch=16, eval_n=0,
                                    labels=True), str(tmp_path / "r"), progress=False)


def test_label_accuracy_and_per_class_quality_count_what_the_classifier_says():
    from torch import nn

    from initprobe.data import Dataset
    from initprobe.measure.analyses.quality import (
        class_metrics,
        quality_metrics,
        summarize,
        summarize_classes,
    )
    from initprobe.measure.features.extractors import Extractor
    from initprobe.schema import split_class
    body, head = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():   # features = the pixels; class = the larger of the two
        body.weight.copy_(torch.eye(2))
        head.weight.copy_(torch.eye(2))
    ex = Extractor("classifier", nn.Sequential(nn.Flatten(), body), "toy", head, 2)
    g = torch.Generator().manual_seed(0)
    real_y = torch.arange(40) % 2
    real = torch.randn(40, 2, 1, 1, generator=g) * 0.1 + torch.eye(2)[real_y][:, :, None, None]
    # 30 samples: class 0 ones all right, class 1 ones right 5 times out of 15
    y = torch.arange(30) % 2
    predicted = y.clone()
    predicted[torch.nonzero(y == 1).flatten()[5:]] = 0
    x = torch.eye(2)[predicted][:, :, None, None] + 0.1 * torch.randn(30, 2, 1, 1, generator=g)
    s = summarize(ex, x.split(7), keep=100, labels=y)
    data = Dataset("toy", real, real_y, 2)
    ref = summarize(ex, real.split(8), keep=100)
    q = quality_metrics(s, ref, ex)
    assert q["label_accuracy"] == pytest.approx(20 / 30)
    c = class_metrics(s, summarize_classes(ex, data), ex)
    assert c["label_accuracy[0]"] == 1.0 and c["label_accuracy[1]"] == pytest.approx(5 / 15)
    # class 1's samples are mostly class-0 images: far from the real class-1 images
    assert c["fd_classifier[1]"] > 10 * c["fd_classifier[0]"]
    assert c["precision[1]"] < c["precision[0]"]
    assert split_class("fd_classifier[1]") == ("fd_classifier", 1)
    assert split_class("recall") == ("recall", None)
    unlabelled = quality_metrics(summarize(ex, x.split(7), keep=100), ref, ex)
    assert "label_accuracy" not in unlabelled


def test_conditional_evaluation_and_learning_curves(cond_teacher, tmp_path):
    from initprobe.report.tables import learning_curves
    from initprobe.train.onestep import OneStepConfig, train_onestep
    data = str(cond_teacher.parent / "data")
    rec = train_onestep(OneStepConfig(teacher=str(cond_teacher), data="folder", data_path=data,
                                      images=16, batch=16, eval_n=20, eval_classifier_steps=30,
                                      labels=True), str(tmp_path / "runs" / "r"), progress=False)
    assert 0 <= rec["label_accuracy"] <= 1
    assert {"fd_classifier[0]", "precision[1]", "recall[0]", "label_accuracy[1]"} <= set(rec)
    df = learning_curves(tmp_path / "runs")
    per_class = df[df["metric"] == "label_accuracy"].dropna(subset=["label"])
    assert sorted(per_class["label"].unique().tolist()) == [0, 1]
    assert df[(df["metric"] == "label_accuracy") & df["label"].isna()]["value"].notna().all()


@pytest.mark.parametrize("command", ["probe-activations", "cka", "spectrum", "attribute"])
def test_analyses_feed_labels_to_a_conditional_network(cond_teacher, tmp_path, command):
    import pandas as pd
    from typer.testing import CliRunner
    data = ["--data", "folder", "--data-path", str(cond_teacher.parent / "data"),
            "--n-images", "8"]
    extra = {"probe-activations": [], "cka": [str(cond_teacher)], "attribute":
             ["--method", "grad_x_act"], "spectrum": ["--n", "4", "--heun-steps", "2"]}[command]
    csv = {"probe-activations": "activations.csv", "cka": "cka_diagonal.csv",
           "attribute": "attribution.csv", "spectrum": "bands.csv"}[command]
    tables = {}
    for spec in (None, "0", "1"):
        out = tmp_path / str(spec)
        args = [command, str(cond_teacher), *extra, *data, "--out", str(out)]
        r = CliRunner().invoke(app, args + ([] if spec is None else ["--labels", spec]))
        assert r.exit_code == 0, (r.output, r.exception)
        tables[spec] = pd.read_csv(out / csv)["value"].to_numpy()
    if command != "cka":   # CKA of a network with itself is 1 whatever the labels
        assert not np.allclose(tables["0"], tables["1"])
    r = CliRunner().invoke(app, [command, str(cond_teacher), *extra, *data, "--labels", "9",
                                 "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "out of range" in str(r.exception)
