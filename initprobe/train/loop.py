"""What every training loop shares: the run directory, resumption, seeding, EMA, devices.

Run directory layout:
    OUT/.lock             the writer's pid and host while a run writes (`runlock`: one writer)
    OUT/config.json       the fully resolved config (written once; a rerun must match it)
    OUT/metrics.jsonl     one line per logged step (a resumed run drops the lines after its
                          checkpoint, which it logs again)
    OUT/checkpoints/      ckpt-0000100.{safetensors,json,state.pt}; the newest complete one resumes
    OUT/samples/          PNG grids
Determinism: every random draw of step k comes from generators seeded by (seed, k), so a run
resumed from the checkpoint at step k continues exactly as the uninterrupted run would.
Divergence: `check_finite` stops a run at the first step whose loss or logged metrics are not
finite, before that step is logged or checkpointed, and `RunDir.save` refuses non-finite
weights, so every checkpoint is finite.
Under torchrun, each step draws the *global* batch and every rank takes its slice, so N processes
with batch B/N compute the same update as one process with batch B.
"""

import hashlib
import json
import math
import os
import pickle
import sys
import zipfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UserError
from ..nets.io import latest_checkpoint, save_checkpoint
from ..runio import atomic_save, atomic_write_json, remove_orphans, truncate_jsonl
from ..runlock import RunLock

KEEP_CHECKPOINTS = 2
LABEL_KEYS = ("labels", "label_dropout")


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
    """A config as JSON values. The label options (`labels`, `label_dropout`) appear only when
    `labels` is on, so unconditional configs (config.json on resume, folder hashes) read as they
    did before labels existed."""
    out = json.loads(json.dumps(asdict(cfg) if is_dataclass(cfg) else cfg, default=str))
    if isinstance(out, dict) and out.get("labels") is False:
        out = {k: v for k, v in out.items() if k not in LABEL_KEYS}
    return out


def diverged(step: int, what: str, run: "RunDir") -> UserError:
    """The one-line error that stops a diverged run: the step, what is not finite, and the
    newest checkpoint (finite: `RunDir.save` writes only finite weights)."""
    last = run.latest()
    kept = f"the last checkpoint, {last.name}, is finite" if last else "no checkpoint was written"
    return UserError(f"training diverged at step {step}: {what} ({kept}); lower --lr and train "
                     f"into a new --out")


def check_finite(step: int, metrics: dict, run: "RunDir"):
    """UserError naming the step and the first non-finite metric. Called every step; the
    weights are checked before each checkpoint instead (`RunDir.save`): checking them every
    step cost 6% of a tiny-net and 1.3% of a small-net training step on the 2-core CPU."""
    bad = next((k for k, v in metrics.items() if not math.isfinite(v)), None)
    if bad is not None:
        raise diverged(step, f"{bad} is {metrics[bad]}", run)


def _finite(*modules: torch.nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p.detach()).all()
                             for m in modules for p in m.parameters()]).all())


RESUME_FIX = "delete that checkpoint to resume from an older one"


def read_state(stem: Path, keys: tuple[str, ...] = (), fix: str = RESUME_FIX) -> dict:
    """The training state of checkpoint `stem` (its `.state.pt`): tensors and plain containers
    only (never code); UserError ending with `fix` if it is unreadable or lacks one of `keys`."""
    p = stem.with_suffix(".state.pt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{p}: refused, it holds objects other than tensors and plain "
                        f"containers; {fix}") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{p}: unreadable training state ({e}); {fix}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{p}: not a training state (missing {', '.join(missing)}); {fix}")
    return state


def checkpoint_stem(run_dir: Path, step: int) -> Path:
    """The path, without suffix, of run `run_dir`'s checkpoint at `step`."""
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:07d}"


class RunDir:
    """A run directory: one writer at a time (`lock`: the main process), fixes the config on
    first use and refuses a rerun with a different one; use it as a context manager, which
    releases the lock. The writer removes the temporary files of a killed predecessor."""

    def __init__(self, out: str | Path, config: dict, resume_ignore: tuple[str, ...] = (),
                 lock: bool = True):
        self.path = Path(out)
        self.config = config
        self.lock = RunLock(self.path).acquire() if lock else None
        try:
            self.previous = self._check_config(resume_ignore)
        except BaseException:
            self.close()
            raise
        if self.lock:
            for p in remove_orphans(self.path):
                print(f"note: removed {p}, left by an interrupted write", file=sys.stderr)

    def _check_config(self, resume_ignore: tuple[str, ...]) -> dict | None:
        """The config of the run found here (None for a new run); UserError if it differs."""
        cfg_path = self.path / "config.json"
        if not cfg_path.exists():
            return None
        try:
            old = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise UserError(f"{cfg_path}: damaged config (not a JSON object); remove the run "
                            f"directory or pick another --out")
        diff = sorted(k for k in set(old) | set(self.config)
                      if k not in resume_ignore and old.get(k) != self.config.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in diff[:4])
            raise UserError(f"{self.path} holds a run with a different config ({shown}); "
                            f"use another --out, or rerun with the same options to resume")
        return old

    def close(self):
        if self.lock:
            self.lock.release()

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def write_config(self):
        if not (self.path / "config.json").exists():
            atomic_write_json(self.path / "config.json", self.config)

    def update_config(self, **changes):
        """Rewrite config.json with `changes` (a resume that records what changed)."""
        self.previous = {**(self.previous or self.config), **changes}
        atomic_write_json(self.path / "config.json", self.previous)

    def resume_metrics(self, step: int):
        """Drop the metrics lines after the checkpoint at `step` (all of them at step 0)."""
        truncate_jsonl(self.metrics, step if step > 0 else None)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.path) if (self.path / "checkpoints").exists() else None

    def save(self, step: int, net, ema, state: dict, keep=(), **meta) -> Path:
        """Write checkpoint `step` (weights, then loop state), then prune old ones but those of
        the steps in `keep`; a diverged UserError instead if the weights are not finite, so
        every checkpoint is."""
        if not _finite(net, ema):
            raise diverged(step, "the weights are not finite", self)
        stem = checkpoint_stem(self.path, step)
        atomic_save(stem.with_suffix(".state.pt"), lambda tmp: torch.save(state, tmp))
        save_checkpoint(stem, net, ema, step=step, **meta)
        stems = sorted(p.with_suffix("") for p in (self.path / "checkpoints").glob("*.json"))
        for old in stems[:-KEEP_CHECKPOINTS]:
            if int(old.name.split("-")[-1]) in keep:
                continue
            for suffix in (".json", ".safetensors", ".state.pt"):
                old.with_suffix(suffix).unlink(missing_ok=True)
        return stem

    def restore(self, stem: Path, loaders: dict) -> int:
        """Load checkpoint `stem`'s loop state: `loaders[key](state[key])` for every key (a
        module's or optimizer's `load_state_dict`); returns its step. UserError if a part does
        not fit this run."""
        state = read_state(stem, (*loaders, "step"))
        p = stem.with_suffix(".state.pt")
        for key, load in loaders.items():
            try:
                load(state[key])
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                raise UserError(f"{p}: its {key} state does not fit this run "
                                f"({' '.join(str(e).split())[:160]}); delete that checkpoint to "
                                f"resume from an older one") from None
        if isinstance(state["step"], bool) or not isinstance(state["step"], int) or \
                state["step"] < 0:
            raise UserError(f"{p}: step {state['step']!r} is not a step count; delete that "
                            f"checkpoint to resume from an older one")
        return state["step"]
