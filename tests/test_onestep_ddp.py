"""torchrun equivalence: 2 CPU processes (gloo) with global batch 2B train the same generator as
1 process with batch 2B (GAN with R1 and CD, dropout off). The reduction order of floats
differs, so weights agree to 5e-5; without the discriminator's gradient sync they differ by
~8e-3."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from initprobe.nets.io import latest_checkpoint, save_checkpoint
from initprobe.nets.precond import Denoiser
from initprobe.nets.unet import UNetConfig

SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from initprobe.train.onestep import OneStepConfig, train_onestep
teacher, out = sys.argv[1:3]
for objective in ("gan", "cd"):
    extra = {"r1_interval": 2} if objective == "gan" else {}
    cfg = OneStepConfig.from_flat(dict(teacher=teacher, objective=objective, images=24, batch=8,
                                       eval_n=0, lr=1e-3, lr_aux=1e-3, log_every=1, **extra))
    train_onestep(cfg, f"{out}/{objective}", device="cpu", progress=False)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A teacher with non-trivial weights everywhere (a fresh UNet has near-zero output
    layers, which would make most gradients vanish), and the training script."""
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(0)
    net = Denoiser(UNetConfig())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(root / "teacher", net)
    script = root / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(setup, out, nproc) -> dict[str, dict[str, torch.Tensor]]:
    """Train both objectives with `nproc` processes; their final checkpoints' tensors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}"] if nproc > 1 else [sys.executable]
    cmd = [*launcher, str(setup / "train.py"), str(setup / "teacher.safetensors"), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return {o: load_file(latest_checkpoint(out / o).with_suffix(".safetensors"))
            for o in ("gan", "cd")}


def test_two_processes_match_one(setup, tmp_path):
    one, two = run(setup, tmp_path / "one", 1), run(setup, tmp_path / "two", 2)
    teacher = load_file(setup / "teacher.safetensors")
    for objective in ("gan", "cd"):
        a, b = one[objective], two[objective]
        moved = max((a[k] - teacher[k]).abs().max().item() for k in teacher)
        assert moved > 1e-3, objective  # training moved the weights: the test means something
        for k in a:
            assert torch.allclose(a[k], b[k], atol=5e-5, rtol=0), (objective, k)
