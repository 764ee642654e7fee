"""The miniature reproduction profile the reproduce tests share: a 640-image tiny digits teacher
with a gate lenient enough for it, tiny student and measurement settings; a two-arm study on it."""

from pathlib import Path

MINI_PROFILE = """
[mini]
description = "test"
data = "digits"
[mini.teacher]
preset = "tiny"
images = 640
batch = 32
sample_steps = 2
[mini.student]
batch = 16
eval_n = 10
eval_every = 64
eval_at = [16]
eval_classifier_steps = 20
[mini.measure]
n = 12
n_images = 12
[mini.gate]                     # a 640-image teacher: only a gate this lenient passes
n = 20
heun_steps = 4
max_fd_ratio = 1e9
min_classes = 1
max_class_kl = 10.0
min_confidence_ratio = 0.0
"""

STUDY = """
claim = "C1"
statement = "teacher init >> random init"
method = "two inits"
[profiles.mini]
images = 32
seeds = [0, 1]
[runs.teacher-init]
objective = "gan"
[runs.random-init]
objective = "gan"
init = "random"
[measure.quality]
[measure.cka]
sigmas = [0.5]
[[rules]]
type = "less_than"
metric = "fd_classifier"
a = "teacher-init"
b = "random-init"
"""


def write_experiments(folder: Path, study: str = STUDY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profiles.toml").write_text(MINI_PROFILE)
    (folder / "c1_mini.toml").write_text(study)
    return folder
