"""Class-conditional teachers: labels in the config and checkpoint, samples follow the labels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from initprobe.diffusion import generate, latents
from initprobe.errors import UserError
from initprobe.nets.io import load_network
from initprobe.nets.labels import class_labels, labels_onehot, parse_labels
from initprobe.train.teacher import TeacherConfig, train_teacher

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
