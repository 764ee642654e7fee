"""GPU switches of the one-step trainer: they change memory layout or compilation, not the math,
and never the run's config."""

import copy
from dataclasses import fields

import torch

from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import PRESETS, UNetConfig
from initprobe.train.onestep import OneStepConfig
from initprobe.train.speed import Speed, apply_speed


def test_channels_last_changes_the_layout_not_the_outputs():
    torch.manual_seed(0)
    net = Denoiser(UNetConfig(img_resolution=8, in_channels=3, out_channels=3,
                              **PRESETS["tiny"])).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)    # every layer matters
    fast = copy.deepcopy(net)
    apply_speed(Speed(channels_last=True), torch.device("cpu"), fast)
    convs = [w for w in fast.parameters() if w.ndim == 4 and w.shape[-1] > 1]  # 3x3 kernels
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert fast.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(x, torch.full((4,), 2.0)), net(x, torch.full((4,), 2.0)),
                                   rtol=1e-4, atol=1e-5)


def test_the_switches_are_not_part_of_a_run_config():
    names = {f.name for f in fields(OneStepConfig)}
    assert not names & {f.name for f in fields(Speed)}
