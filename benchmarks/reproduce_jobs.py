"""`initprobe reproduce --jobs N`: wall time of training a study's runs in N worker processes vs
one after the other in the main process (what reproduce does without --jobs), same process,
same teacher, same runs, same `--threads` per process (reproduce's default: 1). Prints the
speedup; with N <= cores expect up to N x.

    python benchmarks/reproduce_jobs.py [--jobs 2] [--runs 8] [--images 2000]
    python benchmarks/reproduce_jobs.py --preset small --size 32 --runs 4 --images 1000  # 32x32
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from initprobe.reproduce.config import load_profile, load_studies
from initprobe.reproduce.parallel import work_ahead
from initprobe.reproduce.workspace import StudyRuns, Workspace

PROFILE = """
[bench]
description = "benchmark"
data = "digits"
[bench.teacher]
preset = "{preset}"
size = {size}
images = 2000
[bench.student]
batch = 64
eval_n = 0
[bench.measure]
n = 10
n_images = 10
"""


def study(runs: int, images: int) -> str:
    arms = "".join(f'[runs.arm{i}]\nobjective = "gan"\nsigma_cond = {80 - i}\n'
                   for i in range(runs // 2))
    return (f'claim = "C1"\nstatement = "bench"\nmethod = "bench"\n[profiles.bench]\n'
            f'images = {images}\nseeds = [0, 1]\n{arms}[measure.quality]\n'
            f'[[rules]]\ntype = "less_than"\nmetric = "fd_classifier"\na = "arm0"\nb = "arm1"\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8, help="even; arms x 2 seeds")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--preset", default="tiny", help="teacher preset: tiny, small")
    ap.add_argument("--size", type=int, default=8, help="image size (digits padded)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "exp"
        folder.mkdir()
        (folder / "profiles.toml").write_text(PROFILE.format(preset=args.preset, size=args.size))
        (folder / "c1_bench.toml").write_text(study(args.runs, args.images))
        prof = load_profile(folder, "bench")
        studies = load_studies(folder, prof)
        serial = Workspace(prof, Path(tmp) / "serial", "cpu", log=lambda s: None)
        ahead = Workspace(prof, Path(tmp) / "ahead", "cpu", log=lambda s: None)
        serial.ensure_teacher()
        shutil.copytree(serial.teacher_dir(), ahead.teacher_dir())
        t0 = time.perf_counter()
        for s in studies:
            StudyRuns(serial, s).train_all()
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        work_ahead(ahead, studies, args.jobs, log=lambda s: None)
        t_jobs = time.perf_counter() - t0
    print(f"{args.runs} runs of {args.images} images ({args.preset}, {args.size}x{args.size}, "
          f"{args.threads} threads per process): "
          f"serial {t_serial:.1f} s, --jobs {args.jobs} {t_jobs:.1f} s")
    print(f"speedup serial/jobs = {t_serial / t_jobs:.2f}x (at most {args.jobs}x)")


if __name__ == "__main__":
    main()
