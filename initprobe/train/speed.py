"""GPU efficiency switches of the one-step trainer. None changes a run's config (run folders and
their hashes are the same with or without them); each changes float rounding on CUDA only.

- (bf16 autocast of the trainer's forward passes on CUDA is always on, in the trainer;)
- TF32 matmuls and convolutions for what stays in float32 on CUDA (`Speed.tf32`, on);
- channels_last memory layout of the networks' weights (`Speed.channels_last`, opt-in): cuDNN's
  fast NHWC convolution kernels under bf16;
- `torch.compile` of the generator and the frozen teacher (`Speed.compile`, opt-in):
  `nn.Module.compile` in place, so state dicts and checkpoints keep their keys; it pays on long
  runs on a GPU (compilation takes a minute or more), not in short CPU runs.
`benchmarks/gpu_efficiency.py` measures images/s and achieved TFLOP/s of each combination.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Speed:
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False


def apply_speed(speed: Speed, dev: torch.device, *nets: torch.nn.Module) -> None:
    """Set the switches for `dev` and prepare `nets` in place (module docstring)."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = speed.tf32
        torch.backends.cudnn.allow_tf32 = speed.tf32
    for net in nets:
        if speed.channels_last:
            net.to(memory_format=torch.channels_last)
        if speed.compile:
            net.compile()
