"""The `--smoke` override: a whole profile run on a CPU in minutes, to check that it runs.

Every study of the profile keeps its runs, measurements and rules, with a tiny budget and its
first two seeds; students train on small batches with a few evaluation samples, measurements use
a dozen samples, the gate's feature network is the domain classifier (trained for a few steps)
and its limits are relaxed so that any teacher passes, yet it is still measured and enforced.
The teacher is the profile's own (a tiny random network in the tests, through `--teacher`).
The numbers say nothing about the claims; the findings' header says `--smoke`.
"""

from dataclasses import replace

from .config import Profile, Study

STUDENT = {"batch": 8, "eval_n": 10, "eval_every": 0, "eval_at": [],
           "eval_classifier_steps": 10}
MEASURE = {"n": 12, "n_images": 12}
GATE = {"n": 20, "heun_steps": 2, "max_fd_ratio": 1e9, "max_kid_ratio": None, "min_classes": 1,
        "max_class_kl": 1e9, "min_confidence_ratio": 0.0}
IMAGES = 16            # per run: two generator steps at batch 8
SEEDS = 2


def smoke_profile(profile: Profile) -> Profile:
    """The profile shrunk to the smoke settings (module docstring)."""
    return replace(profile, description=f"--smoke of {profile.name}: {profile.description}",
                   student={**profile.student, **STUDENT}, measure=dict(MEASURE),
                   gate={**profile.gate, **GATE}, features="classifier",
                   inception_weights=None)


def smoke_study(study: Study) -> Study:
    """The study at the smoke budget: its first seeds, one budget."""
    images = IMAGES if study.runs else 0
    return replace(study, images=images, seeds=study.seeds[:SEEDS],
                   budgets=[images] if study.runs else [])
