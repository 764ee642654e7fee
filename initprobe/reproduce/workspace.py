"""A profile's working folder: its teachers, its student runs and the inputs measurements share.

Layout under the root (`--out`/<profile>):
    teachers/<data>-<preset>-<hash>/   the teacher (and the other-data teacher, and the labelled
        teacher of class-conditional studies: its hash covers `labels`), train_teacher runs;
        a given checkpoint teacher (`teacher.checkpoint`) is read where it lies and its folder
        teachers/checkpoint-<name>-<hash>/ holds only its gate numbers
    runs/<objective>-<init>-<hash>/seed<N>/   one-step students, train_onestep runs
    studies/<study>-<hash>/            a study's measurement CSVs (see `runner`)
A folder's hash covers its complete resolved config, so runs with the same options are shared
between studies and trained once, and a changed option never reuses a stale run; the budget is
left out when it is one of `eval_at`, so studies that differ only in budget share one run,
trained to the largest, and each reads the checkpoint and evaluation at its own. Training goes
through the library (`train_teacher`, `train_onestep`); a run whose newest checkpoint has seen
its budget is not touched again, an interrupted one resumes.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..data import Dataset, load_dataset
from ..diffusion import Generator
from ..errors import UserError
from ..measure.analyses.quality import FeatureSummary, summarize_data
from ..measure.features.extractors import Extractor, classifier_extractor
from ..nets.io import latest_checkpoint, load_generator, load_network, read_meta
from ..train.loop import checkpoint_stem, pick_device, to_plain
from ..train.onestep import OneStepConfig, build_generator, resolve_config, train_onestep
from ..train.speed import Speed
from ..train.teacher import TeacherConfig, train_teacher
from .config import CHECKPOINT, LABELS, OTHER, THREADS, Profile, Study, digest


def finished(run_dir: Path, images: int) -> bool:
    """Whether the run's newest checkpoint has seen at least `images` images."""
    stem = latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
    return stem is not None and read_meta(stem).get("images_seen", 0) >= images


def teacher_job(cfg: TeacherConfig, out: Path, device: str, threads: int | None = None
                ) -> float:
    """Train (or resume) a teacher, with `threads` torch threads if given; the seconds it took.
    A worker-process entry point too."""
    t0, before = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        train_teacher(cfg, str(out), device=device, progress=False)
    finally:
        torch.set_num_threads(before)
    return time.perf_counter() - t0


def run_job(cfg: OneStepConfig, out: Path, device: str, speed: Speed = Speed()
            ) -> tuple[float, float | None]:
    """Train (or resume) a student run; (seconds, final fd_classifier or None)."""
    t0 = time.perf_counter()
    rec = train_onestep(cfg, str(out), device=device, progress=False, speed=speed)
    return time.perf_counter() - t0, rec.get("fd_classifier")


def run_line(label: str, cfg: OneStepConfig, seconds: float, fd: float | None) -> str:
    return (f"{label} seed {cfg.seed}: {cfg.images} images in {seconds:.0f} s"
            + (f", fd_classifier {fd:.4g}" if fd else ""))


class Workspace:
    """Teachers, runs and shared measurement inputs of one profile (module docstring)."""

    def __init__(self, profile: Profile, root: Path, device: str = "auto",
                 log: Callable[[str], None] = print, speed: Speed = Speed()):
        self.profile, self.root, self.log, self.speed = profile, Path(root), log, speed
        self.device = pick_device(device)

    @property
    def notes(self) -> list[str]:
        """What the findings must say about the setup (e.g. a fallback teacher)."""
        return list(self._teachers[1])

    @property
    def teacher_options(self) -> dict[str, dict]:
        """TeacherConfig options of the `main` and (if the profile has one) `other` teacher."""
        return self._teachers[0]

    @cached_property
    def _teachers(self) -> tuple[dict[str, dict], list[str]]:
        """(teacher options by role, notes): the other teacher's fallback replaces its data
        when its data file is missing, and a note says so."""
        p, notes = self.profile, []
        out = {"main": {"data": p.data, "data_path": p.data_path, **p.teacher}}
        if p.other_teacher is not None:
            options = dict(p.other_teacher)
            fallback = options.pop("fallback", {})
            path = options.get("data_path")
            if path is not None and not Path(path).expanduser().exists():
                notes.append(f"other-data teacher: {path} not found, so it was trained on "
                             f"{', '.join(f'{k}={v}' for k, v in fallback.items())} instead")
                self.log(f"  note: {notes[-1]}")
                options = {**options, "data_path": None, **fallback}
            out[OTHER] = options
        if CHECKPOINT not in p.teacher:   # conditional studies: the same teacher with labels
            out[LABELS] = {**out["main"], "labels": True}
        return out, notes

    @property
    def checkpoint(self) -> Path | None:
        """The given teacher network file (`teacher.checkpoint`), or None: trained here."""
        path = self.profile.teacher.get(CHECKPOINT)
        return None if path is None else Path(path).expanduser().resolve()

    def teacher_config(self, role: str = "main") -> TeacherConfig:
        return TeacherConfig(**{k: v for k, v in self.teacher_options[role].items()
                                if k != THREADS})

    def teacher_threads(self, role: str = "main") -> int | None:
        """The torch threads the profile fixes for this teacher (None: the process's)."""
        return self.teacher_options[role].get(THREADS)

    def teacher_dir(self, role: str = "main") -> Path:
        if role == "main" and self.checkpoint is not None:
            return self.root / "teachers" / (f"checkpoint-{self.checkpoint.stem}-"
                                              f"{digest(str(self.checkpoint))}")
        cfg, threads = self.teacher_config(role), self.teacher_threads(role)
        key = {**to_plain(cfg), THREADS: threads} if threads else to_plain(cfg)
        return self.root / "teachers" / f"{cfg.data}-{cfg.preset}-{digest(key)}"

    def teacher_source(self, role: str = "main") -> str:
        """What the students load: the checkpoint, or the trained teacher's run folder."""
        if role == "main" and self.checkpoint is not None:
            return str(self.checkpoint)
        return str(self.teacher_dir(role))

    def teacher_pending(self, role: str = "main") -> bool:
        """Whether the teacher still has to be trained (never for a given checkpoint)."""
        if role == "main" and self.checkpoint is not None:
            return False
        return not finished(self.teacher_dir(role), self.teacher_config(role).images)

    def ensure_teacher(self, role: str = "main") -> str:
        """The teacher's network (`teacher_source`), trained first if its budget is not done."""
        if role == "main" and self.checkpoint is not None:
            if not self.checkpoint.is_file() and not self.checkpoint.is_dir():
                raise UserError(f"teacher checkpoint {self.checkpoint} not found; pass --teacher "
                                f"PATH (e.g. edm-cifar10-32x32-uncond-vp.pkl)")
            self.teacher_dir().mkdir(parents=True, exist_ok=True)
            return str(self.checkpoint)
        cfg, out = self.teacher_config(role), self.teacher_dir(role)
        if not finished(out, cfg.images):
            self.log(f"  training the {role} teacher on {cfg.data} ({cfg.images} images) -> "
                     f"{out}")
            seconds = teacher_job(cfg, out, str(self.device), self.teacher_threads(role))
            self.log(f"  {role} teacher done in {seconds:.0f} s")
        return str(out)

    def student_config(self, run: dict, images: int, seed: int,
                       labels: bool = False) -> OneStepConfig:
        """A run's config; `labels`: a class-conditional student of the labelled teacher."""
        options = dict(run)
        if options.get("transfer_from") == OTHER:
            options["transfer_from"] = self.teacher_source(OTHER)
        if labels:
            options["labels"] = True
        p = self.profile
        teacher = self.teacher_source(LABELS if labels else "main")
        # resolved (defaults such as lr_aux filled in) so the run folder's hash is final
        return resolve_config(OneStepConfig.from_flat(
            {"teacher": teacher, "data": p.data, "data_path": p.data_path, "images": images,
             "seed": seed, **p.student, **options}))

    def run_dir(self, cfg: OneStepConfig) -> Path:
        """A run's folder; runs that differ only in a budget of `eval_at` share it (a run
        trained to the larger budget keeps the checkpoint of each, `budget_steps`)."""
        shared = ("seed", "images") if cfg.images in cfg.eval_at else ("seed",)
        key = {k: v for k, v in to_plain(cfg.to_flat()).items() if k not in shared}
        name = f"{cfg.objective}-{cfg.init_spec.init}-{digest(key)}"
        return self.root / "runs" / name / f"seed{cfg.seed}"

    def train(self, cfg: OneStepConfig, label: str) -> Path:
        out = self.run_dir(cfg)
        if not finished(out, cfg.images):
            self.log("  " + run_line(label, cfg, *run_job(cfg, out, str(self.device),
                                                          self.speed)))
        return out

    @cached_property
    def data(self) -> Dataset:
        """The training images at the teacher's resolution (the quality reference)."""
        size = self.teacher_net.cfg.img_resolution
        return load_dataset(self.profile.data, self.profile.data_path, "train", size)

    def real_images(self) -> torch.Tensor:
        """The first `measure.n_images` training images, on the device (probes, CKA, spectra)."""
        return self.data.images[:self.profile.measure["n_images"]].to(self.device)

    @cached_property
    def quality_reference(self) -> tuple[Extractor, FeatureSummary]:
        """The evaluation classifier of the runs (same cache key) and the data's summary."""
        test = load_dataset(self.profile.data, self.profile.data_path, "test",
                            self.data.shape[-1])
        steps = self.profile.student.get("eval_classifier_steps",
                                         OneStepConfig.eval_classifier_steps)
        extractor = classifier_extractor(self.data, test, steps, progress=False).to(self.device)
        return extractor, summarize_data(extractor, self.data)

    def network(self, path: str | Path):
        return load_network(path).to(self.device).eval()

    @cached_property
    def teacher_net(self):
        return self.network(self.ensure_teacher())

    def init_network(self, cfg: OneStepConfig):
        """The generator network a run starts from (rebuilt deterministically from its config);
        `cfg.gen_map` is the map that samples it as trained."""
        net, _ = build_generator(cfg, self.teacher_net)
        return net.eval().requires_grad_(False)

    def generator(self, path: str | Path) -> Generator:
        """A trained run's generator network and map (`load_generator`) on the device."""
        return load_generator(path).to(self.device)


@dataclass
class StudyRuns:
    """A study's runs: label -> seed -> config and run folder, trained on demand."""

    ws: Workspace
    study: Study

    @cached_property
    def configs(self) -> dict[str, dict[int, OneStepConfig]]:
        return {label: {s: self.ws.student_config(run, self.study.images, s, self.study.labels)
                        for s in self.study.seeds} for label, run in self.study.runs.items()}

    def items(self):
        """(label, seed, config) of every run, labels in config order."""
        for label, by_seed in self.configs.items():
            for seed, cfg in by_seed.items():
                yield label, seed, cfg

    def dir(self, label: str, seed: int) -> Path:
        return self.ws.run_dir(self.configs[label][seed])

    def checkpoint(self, label: str, seed: int) -> Path:
        """The run's checkpoint at the study's budget (its folder may hold a longer run)."""
        cfg = self.configs[label][seed]
        stem = checkpoint_stem(self.dir(label, seed), -(-cfg.images // cfg.batch))
        if not stem.with_suffix(".json").exists():
            raise UserError(f"{stem.parent.parent}: no checkpoint at {cfg.images} images; "
                            f"retrain it (delete the folder) or set the study's budget to one "
                            f"of the profile's student.eval_at")
        return stem

    def network(self, label: str, seed: int):
        """The run's generator network at the study's budget, on the device, in eval mode."""
        return self.ws.network(self.checkpoint(label, seed))

    def generator(self, label: str, seed: int) -> Generator:
        """The run's generator network and map at the study's budget, on the device."""
        return self.ws.generator(self.checkpoint(label, seed))

    def train_all(self) -> None:
        """Train the teachers the runs need, then every run (finished runs are skipped)."""
        self.ws.ensure_teacher(LABELS if self.study.labels else "main")
        if any(run.get("transfer_from") == OTHER for run in self.study.runs.values()):
            self.ws.ensure_teacher(OTHER)
        for label, _, cfg in self.items():
            self.ws.train(cfg, label)
