import json

import pytest
import torch
from safetensors.torch import load_file

from initprobe.errors import UserError
from initprobe.runio import read_jsonl
from initprobe.train.teacher import TeacherConfig, train_teacher

SMALL = dict(preset="tiny", batch=32, log_every=10, ckpt_every=20, warmup_images=500,
             sample_steps=2)


def test_training_lowers_the_loss(tmp_path):
    given = TeacherConfig(images=32 * 120, **SMALL)
    train_teacher(given, tmp_path / "run", progress=False)
    assert given == TeacherConfig(images=32 * 120, **SMALL)  # the caller's config is untouched
    assert given.unet == {} and given.size is None
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["kind"] == "teacher" and cfg["unet"]["img_resolution"] == 8
    assert (tmp_path / "run" / "samples" / "heun.png").exists()
    # only the newest two checkpoints are kept
    assert len(list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))) == 2


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    full = tmp_path / "full"
    train_teacher(TeacherConfig(images=32 * 40, **SMALL), full, progress=False)
    part = tmp_path / "part"
    # "interrupted" after 20 steps: the same run directory, then rerun with the full budget
    train_teacher(TeacherConfig(images=32 * 20, **SMALL), part, progress=False)
    train_teacher(TeacherConfig(images=32 * 40, **SMALL), part, progress=False)
    a = load_file(full / "checkpoints" / "ckpt-0000040.safetensors")
    b = load_file(part / "checkpoints" / "ckpt-0000040.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_rerun_with_a_different_config_is_refused(tmp_path):
    train_teacher(TeacherConfig(images=32 * 2, **SMALL), tmp_path, progress=False)
    with pytest.raises(UserError, match="different config.*lr"):
        train_teacher(TeacherConfig(images=32 * 2, lr=1e-4, **SMALL), tmp_path, progress=False)


def test_torn_metrics_line_is_skipped(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl(p) == [{"a": 1}]


@pytest.mark.parametrize("field, value", [("preset", "huge"), ("batch", 0), ("images", -1)])
def test_bad_options(tmp_path, field, value):
    with pytest.raises(UserError):
        train_teacher(TeacherConfig(**{**SMALL, field: value}), tmp_path, progress=False)
