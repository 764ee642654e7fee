"""What every training loop shares: the run directory, resumption, seeding, EMA, devices.

Run directory layout:
    OUT/config.json       the fully resolved config (written once; a rerun must match it)
    OUT/metrics.jsonl     one line per logged step
    OUT/checkpoints/      ckpt-0000100.{safetensors,json,state.pt}; the newest complete one resumes
    OUT/samples/          PNG grids
Determinism: every random draw of step k comes from generators seeded by (seed, k), so a run
resumed from the checkpoint at step k continues exactly as the uninterrupted run would.
Under torchrun, each step draws the *global* batch and every rank takes its slice, so N processes
with batch B/N compute the same update as one process with batch B.
"""

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UserError
from ..nets.io import latest_checkpoint, save_checkpoint
from ..runio import atomic_save, atomic_write_json

KEEP_CHECKPOINTS = 2


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    return dev


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for the draws of one step (stream separates independent draws)."""
    key = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))


class Dist:
    """Rank bookkeeping; a no-op single process unless torchrun started us."""

    def __init__(self):
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch: int) -> int:
        if batch % self.world:
            raise UserError(f"--batch {batch} is not divisible by the {self.world} processes; "
                            f"use a multiple of {self.world}")
        return batch // self.world

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a globally drawn batch."""
        n = len(t) // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def barrier(self):
        if self.on:
            dist.barrier()

    def mean(self, x: float) -> float:
        if not self.on:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world


def update_ema(ema: torch.nn.Module, net: torch.nn.Module, batch: int, halflife_images: float):
    """EMA with a half-life measured in images seen (EDM/GDD convention)."""
    beta = 0.5 ** (batch / max(halflife_images, 1e-8)) if halflife_images > 0 else 0.0
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.copy_(pn.detach().lerp(pe, beta))
        for be, bn in zip(ema.buffers(), net.buffers()):
            be.copy_(bn)


def to_plain(cfg) -> dict:
    return json.loads(json.dumps(asdict(cfg) if is_dataclass(cfg) else cfg, default=str))


class RunDir:
    """A run directory: fixes the config on first use and refuses a rerun with a different one."""

    def __init__(self, out: str | Path, config: dict, resume_ignore: tuple[str, ...] = ()):
        self.path = Path(out)
        self.config = config
        cfg_path = self.path / "config.json"
        if cfg_path.exists():
            try:
                old = json.loads(cfg_path.read_text())
            except json.JSONDecodeError:
                raise UserError(f"{cfg_path}: damaged config; remove the run directory or pick "
                                f"another --out") from None
            diff = sorted(k for k in set(old) | set(config)
                          if k not in resume_ignore and old.get(k) != config.get(k))
            if diff:
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:4])
                raise UserError(f"{self.path} holds a run with a different config ({shown}); "
                                f"use another --out, or rerun with the same options to resume")

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def write_config(self):
        if not (self.path / "config.json").exists():
            atomic_write_json(self.path / "config.json", self.config)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.path) if (self.path / "checkpoints").exists() else None

    def save(self, step: int, net, ema, state: dict, **meta) -> Path:
        """Write checkpoint `step` (weights, then loop state), then prune old ones."""
        stem = self.path / "checkpoints" / f"ckpt-{step:07d}"
        atomic_save(stem.with_suffix(".state.pt"), lambda tmp: torch.save(state, tmp))
        save_checkpoint(stem, net, ema, step=step, **meta)
        stems = sorted(p.with_suffix("") for p in (self.path / "checkpoints").glob("*.json"))
        for old in stems[:-KEEP_CHECKPOINTS]:
            for suffix in (".json", ".safetensors", ".state.pt"):
                old.with_suffix(suffix).unlink(missing_ok=True)
        return stem

    def load_state(self, stem: Path) -> dict:
        p = stem.with_suffix(".state.pt")
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{p}: unreadable training state ({e}); delete that checkpoint to "
                            f"resume from an older one") from None
