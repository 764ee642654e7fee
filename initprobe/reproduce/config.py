"""Reproduction configs: `experiments/profiles.toml` and one TOML file per study, validated.

profiles.toml has one table per profile (`quick`, `mnist`, ...):
- `data`, `data_path` (the CLI's `--data-path` overrides it);
- `teacher`: `TeacherConfig` options of the teacher every student starts from (and `threads`:
  the torch threads it trains with whatever `--threads` says, part of its folder key; with
  `--jobs` it takes that many of the worker slots), or
  `checkpoint` alone: a given network file (an EDM `.pkl`, a run folder, ...), not trained (the
  CLI's `--teacher` sets it);
- `other_teacher` (optional): the transfer source, a teacher trained on other data with the same
  architecture and image shape; it inherits the `teacher` options it does not set, and
  `fallback` (a table of `data`, `data_path`, `seed`, `size`) replaces its data when its
  `data_path` does not exist (the findings say so);
- `student`: `OneStepConfig` options shared by every run (batch, learning rates, evaluation);
- `measure`: `n` (samples per quality / spectrum measurement), `n_images` (real images for
  probes, CKA and spectra);
- `gate`: the teacher's quality gate (`GATE_DEFAULTS`, checked by `gate.py`);
- `features` (optional): the gate's feature network, `classifier` (default: the domain classifier
  trained on the data) or `inception` (FID Inception-v3 from the CLI's `--inception-weights`).

A study file (`c1_teacher_vs_random.toml`) states `claim` (`C1`), `statement`, `method`,
`[profiles.<name>]` with `images` (budget in images seen per run) and `seeds`, `[runs.<label>]`
(each a one-step run: objective, init and ablation options of `OneStepConfig`; `transfer_from =
"other"` names the profile's other teacher), `[measure.<name>]` (the measurements of
`measures.MEASUREMENTS` with their options), `[[rules]]` (verdict rules, `rules.RULES`) and
optionally `report` (metrics tabulated per group in findings.md). `labels = true` makes a
class-conditional study: its students are G(z, y) (`OneStepConfig.labels`) from the profile's
teacher options trained with labels (the workspace's `labels` teacher, its own folder; no gate);
it measures `quality` only (the other measurements read the profile's unconditional teacher),
and a profile whose teacher is a given checkpoint cannot run it.

Every mistake raises `UserError` naming the file and the key.
"""

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from ..train.config import OneStepConfig, resolve_config, run_keys, student_keys
from ..train.teacher import TeacherConfig
from .measures import MEASUREMENTS
from .rules import RULES, SIGNS, rule_metrics

PROFILES_FILE = "profiles.toml"
RUN_KEYS = run_keys()
STUDENT_KEYS = student_keys()
THREADS = "threads"    # a teacher's torch threads, whatever --threads says (its folder key)
TEACHER_KEYS = tuple(f.name for f in fields(TeacherConfig) if f.name not in ("unet",)) + (THREADS,)
FALLBACK_KEYS = ("data", "data_path", "seed", "size")
PROFILE_KEYS = ("description", "data", "data_path", "teacher", "other_teacher", "student",
                "measure", "gate", "features")
CHECKPOINT = "checkpoint"           # a profile's teacher given as a network file
FEATURES = ("classifier", "inception")
# the teacher's quality gate (`gate.py`); max_kid_ratio None: not checked
GATE_DEFAULTS = {"n": 1000, "heun_steps": 18, "max_fd_ratio": 3.0, "max_kid_ratio": None,
                 "min_classes": 10, "max_class_kl": 0.05, "min_confidence_ratio": 0.95}
MEASURE_DEFAULTS = {"n": 500, "n_images": 256}
STUDY_KEYS = ("claim", "statement", "method", "profiles", "runs", "measure", "rules", "report",
              "labels")
LABELLED_MEASURES = ("quality",)    # what a class-conditional study may measure
OTHER = "other"
LABELS = "labels"                   # the teacher role of class-conditional studies
NOT_APPLICABLE = "not_applicable"   # [profiles.<name>] of a study the profile cannot test
_CLAIM = re.compile(r"^C\d+$")
_LABEL = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


class _Where:
    """Error messages that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.path}: {key}: {problem}")

    def check(self, cond: bool, key: str, problem: str) -> None:
        if not cond:
            raise self.error(key, problem)

    def table(self, value, key: str) -> dict:
        self.check(isinstance(value, dict), key, "must be a table ([section] or {...})")
        return value

    def known(self, table: dict, allowed, key: str) -> None:
        for k in table:
            self.check(k in allowed, f"{key}.{k}" if key else k,
                       f"unknown key; allowed: {', '.join(allowed)}")

    def number(self, value, key: str, positive: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        self.check(ok and (not positive or value > 0), key,
                   f"must be a {'positive ' if positive else ''}number, got {value!r}")
        return value


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass --experiments with the folder that holds "
                        f"the study configs") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None


@dataclass
class Profile:
    name: str
    description: str
    data: str
    data_path: str | None
    teacher: dict
    other_teacher: dict | None
    student: dict
    measure: dict
    gate: dict = field(default_factory=lambda: dict(GATE_DEFAULTS))
    features: str = FEATURES[0]
    inception_weights: str | None = None

    def key(self) -> dict:
        return {k: getattr(self, k) for k in ("data", "data_path", "teacher", "other_teacher",
                                               "student", "measure")}


def load_profile(folder: Path, name: str, data_path: str | None = None,
                 teacher: str | None = None, inception_weights: str | None = None) -> Profile:
    """Profile `name` of `folder/profiles.toml`; `data_path`, `teacher` (a checkpoint) and
    `inception_weights` (from the CLI) override its own; the weights are checked where used."""
    path = folder / PROFILES_FILE
    where = _Where(path)
    doc = _read(path)
    where.check(name in doc, name, f"no such profile; choose one of {', '.join(doc)}")
    p = where.table(doc[name], name)
    where.known(p, PROFILE_KEYS, name)
    where.check(isinstance(p.get("data"), str), f"{name}.data", "must name a dataset")
    given = where.table(p.get("teacher", {}), f"{name}.teacher")
    where.known(given, TEACHER_KEYS + (CHECKPOINT,), f"{name}.teacher")
    where.check(CHECKPOINT not in given or len(given) == 1, f"{name}.teacher.{CHECKPOINT}",
                "a given checkpoint is not trained: drop the other teacher options")
    teacher = {CHECKPOINT: teacher} if teacher else given
    if CHECKPOINT in teacher:   # one absolute path: the same file gives the same hashes
        teacher = {CHECKPOINT: str(Path(teacher[CHECKPOINT]).expanduser().resolve())}
    where.check(CHECKPOINT not in teacher or "other_teacher" not in p, f"{name}.other_teacher",
                "needs a trained teacher (same options, other data), not a checkpoint")
    features = p.get("features", FEATURES[0])
    where.check(features in FEATURES, f"{name}.features", f"choose {' or '.join(FEATURES)}")
    other = None
    if "other_teacher" in p:
        other = dict(where.table(p["other_teacher"], f"{name}.other_teacher"))
        where.known(other, TEACHER_KEYS + ("fallback",), f"{name}.other_teacher")
        fallback = where.table(other.get("fallback", {}), f"{name}.other_teacher.fallback")
        where.known(fallback, FALLBACK_KEYS, f"{name}.other_teacher.fallback")
        other = {**teacher, **other}
    for key, table in (("teacher", teacher), ("other_teacher", other or {})):
        threads = table.get(THREADS, 1)
        where.check(isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1,
                    f"{name}.{key}.{THREADS}", f"must be an integer >= 1, got {threads!r}")
    student = where.table(p.get("student", {}), f"{name}.student")
    where.known(student, STUDENT_KEYS, f"{name}.student")
    measure = {**MEASURE_DEFAULTS, **where.table(p.get("measure", {}), f"{name}.measure")}
    where.known(measure, tuple(MEASURE_DEFAULTS), f"{name}.measure")
    for k, v in measure.items():
        where.check(isinstance(v, int) and v >= 10, f"{name}.measure.{k}",
                    f"must be an integer >= 10, got {v!r}")
    gate = {**GATE_DEFAULTS, **where.table(p.get("gate", {}), f"{name}.gate")}
    where.known(gate, tuple(GATE_DEFAULTS), f"{name}.gate")
    for k, v in gate.items():
        if v is not None or k != "max_kid_ratio":
            where.number(v, f"{name}.gate.{k}", positive=k in ("n", "heun_steps"))
    where.check(gate["n"] >= 10 and gate["n"] == int(gate["n"]), f"{name}.gate.n",
                f"must be an integer >= 10, got {gate['n']!r}")
    path_ = data_path or p.get("data_path")
    if p["data"] != "digits" and not path_:
        raise UserError(f"profile {name} trains on {p['data']}: pass --data-path PATH (or set "
                        f"{name}.data_path in {path})")
    return Profile(name, p.get("description", ""), p["data"], path_, teacher, other, student,
                   measure, gate, features, inception_weights if features == "inception" else None)


@dataclass
class Study:
    path: Path
    profile: str
    claim: str
    statement: str
    method: str
    images: int
    seeds: list[int]
    runs: dict[str, dict]
    measure: dict[str, dict]
    rules: list[dict]
    report: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)   # verdicts at these images seen
    labels: bool = False            # class-conditional students from a labelled teacher


    @property
    def stem(self) -> str:
        return self.path.stem

    def groups(self) -> set[str]:
        """Every group name the study's measurements produce."""
        out = set()
        for name, opts in self.measure.items():
            out |= MEASUREMENTS[name].groups(self, opts)
        return out

    def metrics(self) -> set[str]:
        return {m for name in self.measure for m in MEASUREMENTS[name].metrics}

    def key(self) -> dict:
        key = {k: getattr(self, k) for k in ("claim", "images", "seeds", "runs", "measure")}
        return {**key, "labels": True} if self.labels else key


def _check_run(where: _Where, label: str, run: dict, student: dict) -> None:
    key = f"runs.{label}"
    where.check(bool(_LABEL.match(label)), key, "labels are letters, digits and - _ . + only")
    where.known(run, RUN_KEYS, key)
    where.check(run.get("transfer_from") in (None, OTHER), f"{key}.transfer_from",
                f"must be \"{OTHER}\" (the profile's other_teacher)")
    options = {k: v for k, v in run.items() if k != "transfer_from"}
    try:
        resolve_config(OneStepConfig.from_flat({"teacher": "(checked later)", **student,
                                                **options,
                                                "transfer_from": run.get("transfer_from")}))
    except (UserError, TypeError, ValueError) as e:
        raise where.error(key, str(e)) from None


def _check_measure(where: _Where, name: str, opts: dict, runs: dict) -> dict:
    key = f"measure.{name}"
    where.check(name in MEASUREMENTS, key, f"unknown measurement; choose from "
                                           f"{', '.join(MEASUREMENTS)}")
    spec = MEASUREMENTS[name]
    where.known(where.table(opts, key), tuple(spec.options), key)
    out = {**spec.options, **opts}
    for k, default in spec.options.items():
        v = out[k]
        if isinstance(default, list):
            where.check(isinstance(v, list) and v and all(
                isinstance(e, (int, float)) and not isinstance(e, bool) for e in v),
                f"{key}.{k}", f"must be a non-empty list of numbers, got {v!r}")
        elif isinstance(default, str):
            where.check(isinstance(v, str), f"{key}.{k}", f"must be a string, got {v!r}")
        else:
            where.number(v, f"{key}.{k}", positive=True)
    if "arm" in out:
        out["arm"] = out["arm"] or next(iter(runs), "")
        where.check(out["arm"] in runs, f"{key}.arm", f"{out['arm']!r} is not a run of this "
                                                      f"study; choose from {', '.join(runs)}")
    return out


def _check_rule(where: _Where, i: int, rule: dict, study: Study) -> None:
    key = f"rules[{i}]"
    where.table(rule, key)
    kind = rule.get("type")
    where.check(kind in RULES, f"{key}.type", f"unknown rule type {kind!r}; choose from "
                                              f"{', '.join(RULES)}")
    spec = RULES[kind]
    needed = spec.required + (() if kind == "correlation" else ("metric",))
    where.known(rule, ("type", "what") + needed + spec.optional, key)
    for k in needed:
        where.check(k in rule, f"{key}.{k}", f"missing; a {kind} rule needs "
                                             f"{', '.join(needed)}")
    groups, metrics = study.groups(), study.metrics()
    for k in spec.refs:
        refs = rule[k] if isinstance(rule[k], list) else [rule[k]]
        for ref in refs:
            if k == "b" and isinstance(ref, (int, float)):
                continue
            base = re.sub(r"\[[^\]]*\]$", "", ref) if isinstance(ref, str) else ref
            where.check(base in groups, f"{key}.{k}", f"unknown group {ref!r}; the study's "
                                                      f"measurements give {sorted(groups)}")
    for m in rule_metrics(rule):
        where.check(m in metrics, f"{key}.metric", f"unknown metric {m!r}; the study's "
                                                   f"measurements give {sorted(metrics)}")
    for k in ("rel", "k", "min_rho", "min_abs", "effect"):
        if k in rule:
            where.number(rule[k], f"{key}.{k}", positive=k in ("rel",))
    if "alpha" in rule:
        where.check(where.number(rule["alpha"], f"{key}.alpha") > 0 and rule["alpha"] < 0.5,
                    f"{key}.alpha", f"must lie in (0, 0.5), got {rule['alpha']!r}")
    if kind == "correlation":
        where.check(rule["sign"] in SIGNS, f"{key}.sign", f"choose {' or '.join(SIGNS)}")
        where.check(isinstance(rule["groups"], list) and len(rule["groups"]) >= 3,
                    f"{key}.groups", "a correlation needs a list of at least 3 groups")


def load_study(path: Path, profile: Profile) -> Study | None:
    """One study file, validated against the profile (its budget and seeds for that profile);
    None if it says the profile does not apply (`not_applicable = "reason"`)."""
    where = _Where(path)
    doc = _read(path)
    where.known(doc, STUDY_KEYS, "")
    for k in ("claim", "statement", "method"):
        where.check(isinstance(doc.get(k), str), k, "missing; give a string")
    where.check(bool(_CLAIM.match(doc["claim"])), "claim", "write the claim id as C1 ... C10")
    profiles = where.table(doc.get("profiles", {}), "profiles")
    where.check(profile.name in profiles, f"profiles.{profile.name}",
                f"missing; give [profiles.{profile.name}] with images and seeds")
    budget = where.table(profiles[profile.name], f"profiles.{profile.name}")
    where.known(budget, ("images", "seeds", NOT_APPLICABLE), f"profiles.{profile.name}")
    if NOT_APPLICABLE in budget:
        where.check(isinstance(budget[NOT_APPLICABLE], str) and len(budget) == 1,
                    f"profiles.{profile.name}.{NOT_APPLICABLE}", "give the reason alone")
        return None
    runs = where.table(doc.get("runs", {}), "runs")
    images = budget.get("images", 0)
    if runs:  # a study without runs (the teacher alone) has no budget
        where.number(images, f"profiles.{profile.name}.images", True)
    seeds = budget.get("seeds")
    where.check(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
                and len(set(seeds)) == len(seeds), f"profiles.{profile.name}.seeds",
                "must be a list of distinct integers")
    labels = doc.get("labels", False)
    where.check(isinstance(labels, bool), "labels", f"must be true or false, got {labels!r}")
    where.check(not labels or CHECKPOINT not in profile.teacher, "labels",
                f"profile {profile.name} starts from a given checkpoint; a conditional study "
                f"needs a teacher trained here (mark the profile not_applicable)")
    for label, run in runs.items():
        _check_run(where, label, where.table(run, f"runs.{label}"),
                   {**profile.student, "labels": True} if labels else profile.student)
        if run.get("transfer_from") == OTHER:
            where.check(profile.other_teacher is not None, f"runs.{label}.transfer_from",
                        f"profile {profile.name} has no other_teacher")
    measure = where.table(doc.get("measure", {}), "measure")
    where.check(bool(measure), "measure", "missing; give at least one [measure.<name>]")
    measure = {name: _check_measure(where, name, opts, runs) for name, opts in measure.items()}
    where.check(not labels or set(measure) <= set(LABELLED_MEASURES), "measure",
                f"a conditional study (labels = true) measures {', '.join(LABELLED_MEASURES)} "
                f"only")
    budgets = sorted({b for b in profile.student.get("eval_at", []) if b < images}
                     | ({int(images)} if runs else set()))
    study = Study(path, profile.name, doc["claim"], doc["statement"], doc["method"], int(images),
                  seeds, runs, measure, [], list(doc.get("report", [])), budgets, labels)
    rules = doc.get("rules", [])
    where.check(isinstance(rules, list) and rules, "rules", "missing; give at least one "
                                                            "[[rules]]")
    for i, rule in enumerate(rules):
        _check_rule(where, i, rule, study)
    study.rules = rules
    for m in study.report:
        where.check(m in study.metrics(), "report", f"unknown metric {m!r}")
    return study


def load_studies(folder: Path, profile: Profile, only: list[str] | None = None) -> list[Study]:
    """Every study file in `folder` (ordered by claim number), or those of the claims `only`."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; pass --experiments with the folder of study "
                        f"configs (experiments/ in the repository)")
    paths = [p for p in sorted(folder.glob("*.toml")) if p.name != PROFILES_FILE]
    loaded = [(p, load_study(p, profile)) for p in paths]
    studies = sorted((s for _, s in loaded if s), key=lambda s: int(s.claim[1:]))
    if only:
        wanted = {c.strip().upper() for c in only if c.strip()}
        unknown = wanted - {s.claim for s in studies}
        for p, s in loaded:
            doc = _read(p) if s is None else {}
            if doc.get("claim") in unknown:
                raise UserError(f"--only {doc['claim']}: {p.name} does not apply to profile "
                                f"{profile.name}: {doc['profiles'][profile.name][NOT_APPLICABLE]}")
        if unknown:
            raise UserError(f"--only {','.join(sorted(unknown))}: no such claim; the studies "
                            f"in {folder} test {', '.join(s.claim for s in studies)}")
        studies = [s for s in studies if s.claim in wanted]
    return studies


def digest(obj) -> str:
    """8 hex digits naming a configuration (sorted JSON)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
