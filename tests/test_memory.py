"""Peak tensor memory (reproduce/memory.py): known answers, and the trainer's TRAINING range
that keeps the teacher, the generator's weights and the data out of C3's comparison."""

import pytest
import torch
from torch.profiler import record_function

from initprobe.data import load_dataset
from initprobe.reproduce.memory import peak_bytes
from initprobe.train.onestep import TRAINING, OneStepConfig, train_onestep
from initprobe.train.teacher import TeacherConfig, train_teacher

MB = 1_000_000


def _work():
    outside = torch.ones(MB // 4)            # 1 MB, alive through the range
    with record_function("window"):
        a = torch.ones(MB // 4)              # 1 MB
        b = a * 2                            # 1 MB more: 2 MB inside at the peak
        del a, b
    return outside


def test_peak_counts_only_the_allocations_inside_the_window():
    whole = peak_bytes(_work)
    inside = peak_bytes(_work, window="window")
    assert 2 * MB <= inside < 2 * MB + 4096
    assert whole >= 3 * MB and whole - inside >= MB - 4096
    with pytest.raises(ValueError, match="never entered"):
        peak_bytes(_work, window="elsewhere")


def test_the_trainers_range_leaves_out_the_teacher_generator_and_data(tmp_path):
    teacher = tmp_path / "teacher"
    train_teacher(TeacherConfig(images=64, batch=32, warmup_images=1, sample_steps=2,
                                log_every=10), str(teacher), device="cpu", progress=False)
    cfg = OneStepConfig(teacher=str(teacher), objective="dmd", images=32, batch=16, eval_n=0)
    runs = iter(range(2))

    def train():
        train_onestep(cfg, str(tmp_path / f"run{next(runs)}"), "cpu", progress=False)

    whole = peak_bytes(train)
    training = peak_bytes(train, window=TRAINING)
    params = sum(p.numel() * 4 for p in torch.load(
        next((tmp_path / "run1" / "checkpoints").glob("*.state.pt")),
        weights_only=True)["net"].values())
    data = load_dataset("digits").images.numel() * 4
    # the whole call also holds the data, the teacher and the generator (two copies of the net)
    assert whole - training >= data + 2 * params
    # the training itself holds at least the EMA copy and Adam's two moments
    assert training >= 3 * params
