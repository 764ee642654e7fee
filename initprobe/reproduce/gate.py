"""The teacher's quality gate: no student trains from a teacher that does not draw clean images.

A profile's `[<profile>.gate]` table states the rule (defaults: `config.GATE_DEFAULTS`).
Before any student trains, `n` Heun samples of the teacher and `n` held-out real images (the
test split: the metric's floor at the same sample count) are both measured against the
training images on the profile's feature network (`features`: the domain classifier, or FID's
Inception-v3 whose metrics are fd_inception / kid_inception); the gate passes when every check
holds:

| key | check |
| --- | --- |
| max_fd_ratio | teacher fd_<network> <= max_fd_ratio x the held-out floor |
| max_kid_ratio | teacher kid_<network> <= max_kid_ratio x the held-out floor (optional) |
| min_classes | classes among the samples' labels >= min_classes (classifier only) |
| max_class_kl | KL(samples' class histogram || uniform) <= max_class_kl (classifier only) |
| min_confidence_ratio | classifier's mean confidence on samples >= this x on real images
  (classifier only) |

The numbers are cached in the teacher's folder (`gate-<hash>.json`, keyed by the gate options
and, when not the classifier, the feature network) and lead every findings table. A failed
gate stops the study with a one-line error naming the number that fell short.
"""

import json
from dataclasses import dataclass, field

from ..data import load_dataset
from ..errors import UserError
from ..measure.analyses.quality import quality_metrics, summarize, summarize_data, summarize_samples
from ..measure.features.extractors import make_extractor
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


def _named(rows: dict[str, dict[str, float]], prefix: str) -> str:
    """The measured metric `fd_<network>` / `kid_<network>`."""
    return next(k for k in rows[TEACHER] if k.startswith(prefix))


@dataclass
class GateResult:
    n: int
    heun_steps: int
    rows: dict[str, dict[str, float]]          # source -> metric -> value
    checks: list[Check] = field(default_factory=list)
    network: str = "classifier"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The shown metrics the feature network gives (no class metrics on Inception)."""
        fd, kid = _named(self.rows, "fd_"), _named(self.rows, "kid_")
        shown = [m.replace("_classifier", f"_{self.network}") for m in SHOWN]
        return tuple(m for m in shown if m in self.rows[TEACHER] or m in (fd, kid))


def checks(rows: dict[str, dict[str, float]], opts: dict) -> list[Check]:
    """The gate's checks on measured numbers (module docstring)."""
    t, f = rows[TEACHER], rows[FLOOR]
    fd, kid = _named(rows, "fd_"), _named(rows, "kid_")
    out = [Check(f"{fd} / floor", t[fd] / f[fd], opts["max_fd_ratio"], True)]
    if opts["max_kid_ratio"] is not None:
        out.append(Check(f"{kid} / floor", t[kid] / max(f[kid], 1e-12),
                         opts["max_kid_ratio"], True))
    if "classes_covered" in t:
        out += [Check("classes covered", t["classes_covered"], opts["min_classes"], False),
                Check("class KL to uniform", t["class_kl_uniform"], opts["max_class_kl"], True),
                Check("confidence / real", t["mean_confidence"] / f["mean_confidence"],
                      opts["min_confidence_ratio"], False)]
    return out


def _reference(ws):
    """(extractor, summary of the training images) on the profile's feature network."""
    if ws.profile.features == "classifier":
        return ws.quality_reference
    extractor = make_extractor(ws.profile.features, ws.data, None,
                               ws.profile.inception_weights).to(ws.device)
    return extractor, summarize_data(extractor, ws.data)


def measure_gate(ws, opts: dict) -> GateResult:
    """The gate's numbers for the workspace's teacher (cached in the teacher's folder)."""
    network = ws.profile.features
    key = opts if network == "classifier" else {**opts, "features": network}
    path = ws.teacher_dir() / f"gate-{digest(key)}.json"
    if path.exists():
        rows = json.loads(path.read_text())
    else:
        extractor, reference = _reference(ws)
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
    return GateResult(int(opts["n"]), int(opts["heun_steps"]), rows, checks(rows, opts),
                      network)


def enforce(gate: GateResult, profile: str) -> None:
    """UserError naming the first check that fell short."""
    for c in gate.checks:
        if not c.passed:
            t, f, fd = gate.rows[TEACHER], gate.rows[FLOOR], _named(gate.rows, "fd_")
            classes = (f", {t['classes_covered']:.0f} classes" if "classes_covered" in t
                       else "")
            raise UserError(
                f"teacher gate of profile {profile} failed: {c.name} = {c.value:.3g}, needs "
                f"{c.limit_text} (teacher {fd} {t[fd]:.3g}, real floor {f[fd]:.3g}{classes}); "
                f"train the "
                f"teacher longer or larger ({profile}.teacher in profiles.toml) before any "
                f"student")
