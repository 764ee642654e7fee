"""initprobe: initialization studies of one-step diffusion generators."""

__version__ = "0.1.0"
