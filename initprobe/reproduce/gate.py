"""The teacher's quality gate: no student trains from a teacher that does not draw clean images.

A profile's `[<profile>.gate]` table states the rule (defaults: `config.GATE_DEFAULTS`).
Before any student trains, `n` Heun samples of the teacher and `n` held-out real images (the
test split: the metric's floor at the same sample count) are both measured against the
training images on the domain classifier; the gate passes when every check holds:

| key | check |
| --- | --- |
| max_fd_ratio | teacher fd_classifier <= max_fd_ratio x the held-out floor |
| max_kid_ratio | teacher kid_classifier <= max_kid_ratio x the held-out floor (optional) |
| min_classes | classes among the samples' labels >= min_classes |
| max_class_kl | KL(samples' class histogram || uniform) <= max_class_kl |
| min_confidence_ratio | classifier's mean confidence on samples >= this x on real images |

The numbers are cached in the teacher's folder (`gate-<hash>.json`, keyed by the gate options)
and lead every findings table. A failed gate stops the study with a one-line error naming the
number that fell short.
"""

import json
from dataclasses import dataclass, field

from ..data import load_dataset
from ..errors import UserError
from ..measure.quality import quality_metrics, summarize, summarize_samples
from ..runio import atomic_write_json
from .config import digest

SHOWN = ("fd_classifier", "kid_classifier", "precision", "recall", "coverage",
         "classes_covered", "class_kl_uniform", "mean_confidence")
TEACHER, FLOOR = "teacher heun", "real held-out (floor)"


@dataclass
class Check:
    name: str
    value: float
    limit: float
    upper: bool                      # the value must stay at most (True) or at least the limit

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.upper else self.value >= self.limit

    @property
    def limit_text(self) -> str:
        return f"{'<=' if self.upper else '>='} {self.limit:g}"


@dataclass
class GateResult:
    n: int
    heun_steps: int
    rows: dict[str, dict[str, float]]          # source -> metric -> value
    checks: list[Check] = field(default_factory=list)
    metrics: tuple[str, ...] = SHOWN

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def checks(rows: dict[str, dict[str, float]], opts: dict) -> list[Check]:
    """The gate's checks on measured numbers (module docstring)."""
    t, f = rows[TEACHER], rows[FLOOR]
    out = [Check("fd_classifier / floor", t["fd_classifier"] / f["fd_classifier"],
                 opts["max_fd_ratio"], True)]
    if opts["max_kid_ratio"] is not None:
        out.append(Check("kid_classifier / floor", t["kid_classifier"] / max(
            f["kid_classifier"], 1e-12), opts["max_kid_ratio"], True))
    out += [Check("classes covered", t["classes_covered"], opts["min_classes"], False),
            Check("class KL to uniform", t["class_kl_uniform"], opts["max_class_kl"], True),
            Check("confidence / real", t["mean_confidence"] / f["mean_confidence"],
                  opts["min_confidence_ratio"], False)]
    return out


def measure_gate(ws, opts: dict) -> GateResult:
    """The gate's numbers for the workspace's teacher (cached in the teacher's folder)."""
    path = ws.teacher_dir() / f"gate-{digest(opts)}.json"
    if path.exists():
        rows = json.loads(path.read_text())
    else:
        extractor, reference = ws.quality_reference
        test = load_dataset(ws.profile.data, ws.profile.data_path, "test", ws.data.shape[-1])
        n = int(opts["n"])
        if len(test.images) < n:
            raise UserError(f"gate.n = {n} but the held-out split of {ws.profile.data} has "
                            f"{len(test.images)} images; lower gate.n in the profile")
        samples = summarize_samples(extractor, ws.teacher_net, n, "heun",
                                    int(opts["heun_steps"]))
        real = summarize(extractor, test.images[:n].split(256))
        rows = {TEACHER: quality_metrics(samples, reference, extractor),
                FLOOR: quality_metrics(real, reference, extractor)}
        atomic_write_json(path, rows)
    return GateResult(int(opts["n"]), int(opts["heun_steps"]), rows, checks(rows, opts))


def enforce(gate: GateResult, profile: str) -> None:
    """UserError naming the first check that fell short."""
    for c in gate.checks:
        if not c.passed:
            t, f = gate.rows[TEACHER], gate.rows[FLOOR]
            raise UserError(
                f"teacher gate of profile {profile} failed: {c.name} = {c.value:.3g}, needs "
                f"{c.limit_text} (teacher fd_classifier {t['fd_classifier']:.3g}, real floor "
                f"{f['fd_classifier']:.3g}, {t['classes_covered']:.0f} classes); train the "
                f"teacher longer or larger ({profile}.teacher in profiles.toml) before any "
                f"student")
