"""initprobe.reproduce: config validation, verdict rules, resume-skip, and one miniature study
run end to end through `initprobe reproduce`."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from mini_profile import MINI_PROFILE, STUDY, write_experiments
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.reproduce import measures
from initprobe.reproduce.config import load_profile, load_studies, load_study
from initprobe.reproduce.rules import FAILS, HOLDS, INCONCLUSIVE, Measured, combine, evaluate
from initprobe.reproduce.runner import run_study, study_dir
from initprobe.reproduce.workspace import StudyRuns, Workspace
from initprobe.schema import COLUMNS

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

# ---- configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["quick", "mnist"])
def test_shipped_configs_are_valid(profile):
    prof = load_profile(EXPERIMENTS, profile, data_path="mnist.npz")
    studies = load_studies(EXPERIMENTS, prof)
    last = 13 if profile == "quick" else 12   # C12, the conditional study: quick only
    assert [s.claim for s in studies] == [f"C{i}" for i in range(1, last)]
    assert [s.labels for s in studies].count(True) == (profile == "quick")
    assert all(len(s.seeds) >= 3 for s in studies)


@pytest.mark.parametrize("edit, key", [
    (('objective = "gan"\n[runs.random-init]', 'objective = "gann"\n[runs.random-init]'),
     "runs.teacher-init"),
    (('init = "random"', 'init = "random"\nlearning = 1'), "runs.random-init.learning"),
    (('type = "less_than"', 'type = "smaller"'), "rules[0].type"),
    (('a = "teacher-init"', 'a = "teacher"'), "rules[0].a"),
    (('metric = "fd_classifier"', 'metric = "fid"'), "rules[0].metric"),
    (('[measure.cka]', '[measure.ckaa]'), "measure.ckaa"),
    (("sigmas = [0.5]", 'sigmas = "0.5"'), "measure.cka.sigmas"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "profiles.mini.seeds"),
    (('claim = "C1"', 'claim = "claim 1"'), "claim"),
])
def test_a_bad_study_config_names_the_file_and_the_key(tmp_path, edit, key):
    old, new = edit
    assert old in STUDY
    folder = write_experiments(tmp_path, STUDY.replace(old, new, 1))
    prof = load_profile(folder, "mini")
    with pytest.raises(UserError) as e:
        load_study(folder / "c1_mini.toml", prof)
    assert str(folder / "c1_mini.toml") in str(e.value) and f"{key}:" in str(e.value)


def test_bad_profiles_and_selections(tmp_path):
    folder = write_experiments(tmp_path)
    with pytest.raises(UserError, match="profiles.toml: quick: no such profile"):
        load_profile(folder, "quick")
    (folder / "profiles.toml").write_text(MINI_PROFILE.replace("data = \"digits\"",
                                                               "data = \"mnist\""))
    with pytest.raises(UserError, match="--data-path"):
        load_profile(folder, "mini")
    with pytest.raises(UserError, match="--only C7: no such claim"):
        load_studies(folder, load_profile(folder, "mini", "x.npz"), ["C7"])


def test_a_teachers_fixed_thread_count_is_checked_keyed_and_used(tmp_path, monkeypatch):
    folder = write_experiments(tmp_path)
    plain = Workspace(load_profile(folder, "mini"), tmp_path / "out", "cpu")
    for bad in ("0", "1.5", '"2"'):
        (folder / "profiles.toml").write_text(MINI_PROFILE.replace(
            'preset = "tiny"', f'preset = "tiny"\nthreads = {bad}'))
        with pytest.raises(UserError, match="mini.teacher.threads: must be an integer >= 1"):
            load_profile(folder, "mini")
    (folder / "profiles.toml").write_text(MINI_PROFILE.replace(
        'preset = "tiny"', 'preset = "tiny"\nthreads = 2'))
    ws = Workspace(load_profile(folder, "mini"), tmp_path / "out", "cpu")
    assert ws.teacher_threads() == 2 and plain.teacher_threads() is None
    assert ws.teacher_config() == plain.teacher_config()      # not a training option ...
    assert ws.teacher_dir() != plain.teacher_dir()            # ... but part of the folder key
    seen = []
    monkeypatch.setattr("initprobe.reproduce.workspace.train_teacher",
                        lambda *a, **k: seen.append(torch.get_num_threads()))
    torch.set_num_threads(1)
    ws.ensure_teacher()
    assert seen == [2] and torch.get_num_threads() == 1      # trained at 2, then restored


# ---- verdict rules -----------------------------------------------------------------------

def measured(groups: dict) -> Measured:
    """{group or (group, x): [values]} -> Measured over metric m."""
    rows = []
    for key, values in groups.items():
        group, x = key if isinstance(key, tuple) else (key, math.nan)
        for i, v in enumerate(values):
            rows += measures.rows(group, i, {"m": v}, x=x)
    return Measured(measures.table(rows))


AB = {"type": "less_than", "metric": "m", "a": "a", "b": "b"}


@pytest.mark.parametrize("rule, groups, verdict", [
    (AB, {"a": [1, 1.2, 0.8], "b": [5, 5.5, 4.5]}, HOLDS),
    (AB, {"a": [5, 5.5, 4.5], "b": [1, 1.2, 0.8]}, FAILS),
    (AB, {"a": [1, 3, 5], "b": [2, 6, 1]}, INCONCLUSIVE),          # paired diffs 1, 3, -4
    (AB, {"a": [1, 3, 5], "b": [2, 4, 6]}, HOLDS),                 # the same shift every seed
    (AB, {"a": [1, 3, 5], "b": [1.01, 3.01, 5.01]}, FAILS),        # consistent but tiny
    (AB, {"a": [1, 1.2, 0.8], "b": []}, INCONCLUSIVE),             # no data
    ({**AB, "type": "greater_than"}, {"a": [5, 5.5, 4.5], "b": [1, 1.2, 0.8]}, HOLDS),
    ({**AB, "type": "greater_than", "b": 2.0}, {"a": [1.0, 1.1]}, FAILS),   # constant b
    ({**AB, "type": "at_most", "rel": 0.1}, {"a": [10.5, 10.5], "b": [10, 10]}, HOLDS),
    ({**AB, "type": "at_most", "rel": 0.1}, {"a": [5, 5], "b": [10, 10]}, HOLDS),
    ({**AB, "type": "at_most", "rel": 0.1}, {"a": [13, 13], "b": [10, 10]}, FAILS),
    ({**AB, "type": "at_most", "rel": 0.1}, {"a": [10, 12], "b": [10, 10]}, INCONCLUSIVE),
    ({**AB, "type": "within", "rel": 0.1}, {"a": [5, 5], "b": [10, 10]}, FAILS),
    ({**AB, "type": "within", "rel": 0.1}, {"a": [10.2, 10.2], "b": [10, 10]}, HOLDS),
    ({"type": "closer", "metric": "m", "a": "a", "near": "t", "far": "r"},
     {"a": [2, 2], "t": [1, 1], "r": [10, 10]}, HOLDS),
    ({"type": "closer", "metric": "m", "a": "a", "near": "t", "far": "r"},
     {"a": [9, 9], "t": [1, 1], "r": [10, 10]}, FAILS),
    ({"type": "closer", "metric": "m", "a": "a", "near": "t", "far": "r"},
     {"a": [5, 6], "t": [1, 1], "r": [10, 10]}, INCONCLUSIVE),
    ({**AB, "a": "k[8]", "b": "k[1]"}, {("k", 1): [10, 10], ("k", 8): [7, 7]}, HOLDS),
    ({"type": "increasing", "metric": "m", "group": "s"},
     {("s", 2): [1, 1], ("s", 4): [2, 2], ("s", 8): [4, 4]}, HOLDS),
    ({"type": "increasing", "metric": "m", "group": "s"},
     {("s", 2): [4, 4], ("s", 4): [2, 2], ("s", 8): [1, 1]}, FAILS),
    ({"type": "increasing", "metric": "m", "group": "s"},             # rise within the spread
     {("s", 2): [1, 3], ("s", 4): [2, 3], ("s", 8): [2.5, 3]}, INCONCLUSIVE),
    ({"type": "flat", "metric": "m", "group": "s", "rel": 0.2},
     {("s", 2): [10], ("s", 4): [11], ("s", 8): [10.5]}, HOLDS),
    ({"type": "flat", "metric": "m", "group": "s", "rel": 0.2},
     {("s", 2): [10], ("s", 4): [20], ("s", 8): [30]}, FAILS),
])
def test_rules_on_synthetic_numbers(rule, groups, verdict):
    assert evaluate(rule, measured(groups)).verdict == verdict


def seeded(groups: dict, seeds=None) -> Measured:
    """{group: values} on seeds 0.. (or `seeds`) over metric m."""
    return Measured(measures.table([r for g, v in groups.items() for i, x in enumerate(v)
                                    for r in measures.rows(g, (seeds or range(len(v)))[i],
                                                           {"m": x})]))


def test_identical_groups_never_hold_and_a_large_shift_holds():
    rng = torch.Generator().manual_seed(0)
    noise = (torch.randn(5, generator=rng) * 10).tolist()
    same = seeded({"a": [100 + e for e in noise], "b": [100 + e for e in noise]})
    for kind in ("less_than", "greater_than"):
        assert evaluate({**AB, "type": kind}, same).verdict == FAILS  # D = 0 < min effect
    shifted = seeded({"a": [100 + e for e in noise], "b": [300 + e for e in noise[::-1]]})
    out = evaluate(AB, shifted)
    assert out.verdict == HOLDS and "paired t, n=5" in out.detail
    assert evaluate({**AB, "type": "greater_than"}, shifted).verdict == FAILS


def test_the_interval_is_students_t_paired_on_matched_seeds_and_welch_otherwise():
    from scipy import stats
    a, b = [1.0, 2.0, 4.0, 3.0, 5.0], [2.0, 2.5, 6.0, 3.5, 6.5]
    out = evaluate({**AB, "effect": 0.0}, seeded({"a": a, "b": b}))
    d = [y - x for x, y in zip(a, b)]
    lo, hi = stats.t.interval(0.95, 4, loc=sum(d) / 5, scale=stats.sem(d))
    assert f"CI [{lo:.3g}, {hi:.3g}]" in out.detail and out.verdict == HOLDS
    # other seeds: Welch's t (scipy's unequal-variance test agrees on the sign of lo)
    m = Measured(pd.concat([seeded({"a": a}).table, seeded({"b": b}, range(10, 15)).table]))
    welch = evaluate({**AB, "effect": 0.0}, m)
    p = stats.ttest_ind(b, a, equal_var=False, alternative="two-sided").pvalue
    assert "Welch t" in welch.detail
    assert welch.verdict == (HOLDS if p < 0.05 else INCONCLUSIVE)


def test_a_verdict_needs_both_significance_and_the_minimum_effect():
    tiny = seeded({"a": [10.0, 10.1, 9.9, 10.0, 10.05], "b": [10.3, 10.4, 10.2, 10.3, 10.35]})
    assert evaluate({**AB, "effect": 0.01}, tiny).verdict == HOLDS       # 3% > 1%
    assert evaluate({**AB, "effect": 0.1}, tiny).verdict == FAILS        # 3% < 10%, surely
    noisy = seeded({"a": [10, 50, 5, 80, 20], "b": [60, 30, 90, 25, 70]})
    assert evaluate(AB, noisy).verdict == INCONCLUSIVE                   # large, not significant


def test_correlation_rule():
    rows = [r for g, cka, fd in [("a", 0.9, 10), ("b", 0.5, 50), ("c", 0.2, 90), ("d", 0.7, 30)]
            for r in measures.rows(g, 0, {"cka": cka, "fd": fd})]
    rule = {"type": "correlation", "groups": ["a", "b", "c", "d"], "x_metric": "cka",
            "y_metric": "fd", "sign": "negative"}
    table = Measured(measures.table(rows))
    assert evaluate(rule, table).verdict == HOLDS
    assert evaluate({**rule, "sign": "positive"}, table).verdict == FAILS


def test_a_correlation_at_exactly_the_threshold_holds():
    rows = [r for g, x, y in zip("abcde", [1, 2, 3, 4, 5], [3, 4, 5, 1, 2])
            for r in measures.rows(g, 0, {"p": x, "fd": y})]   # Spearman -0.5 (-0.4999...)
    rule = {"type": "correlation", "groups": list("abcde"), "x_metric": "p", "y_metric": "fd",
            "sign": "negative", "min_abs": 0.5}
    assert evaluate(rule, Measured(measures.table(rows))).verdict == HOLDS


def test_a_claim_holds_only_if_every_rule_holds():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, INCONCLUSIVE, FAILS]) == FAILS
    assert combine([]) == INCONCLUSIVE


# ---- resume-skip -------------------------------------------------------------------------

def test_a_study_whose_tables_exist_is_skipped_and_missing_ones_are_computed(tmp_path,
                                                                             monkeypatch):
    folder = write_experiments(tmp_path / "exp")
    prof = load_profile(folder, "mini")
    study = load_study(folder / "c1_mini.toml", prof)
    ws = Workspace(prof, tmp_path / "out", "cpu", log=lambda s: None)
    calls = []

    def fake(name):
        def compute(sr, opts):
            calls.append(name)
            return {name: measures.table(measures.rows("teacher-init", 0, {"fd_classifier": 1}))}
        return replace(measures.MEASUREMENTS[name], compute=compute, needs_runs=False)

    for name in ("quality", "cka"):
        monkeypatch.setitem(measures.MEASUREMENTS, name, fake(name))
    folder_ = study_dir(ws, study)
    folder_.mkdir(parents=True)
    cached = measures.table(measures.rows("teacher-init", 0, {"fd_classifier": 3.0}))
    (folder_ / "quality.csv").write_text(cached.to_csv(index=False))
    monkeypatch.setattr("initprobe.reproduce.runner.draw_study", lambda *a, **k: [])
    monkeypatch.setattr("initprobe.reproduce.runner.copy_samples", lambda *a, **k: None)
    first = run_study(ws, study, tmp_path / "fig", log=lambda s: None)
    assert calls == ["cka"] and first.status == "computed"
    again = run_study(ws, study, tmp_path / "fig", log=lambda s: None)
    assert calls == ["cka"] and again.status == "cached"
    assert again.tables["quality"]["value"].tolist() == [3.0]  # the cached table, untouched
    assert not (tmp_path / "out" / "mini" / "teachers").exists()  # nothing was trained


# ---- end to end --------------------------------------------------------------------------

def test_reproduce_runs_a_miniature_study_end_to_end_and_resumes(tmp_path):
    register_commands()
    folder = write_experiments(tmp_path / "exp")
    args = ["reproduce", "--profile", "mini", "--experiments", str(folder), "--out",
            str(tmp_path / "out"), "--figures", str(tmp_path / "fig"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    fig = tmp_path / "fig"
    for name in ("findings.md", "findings.csv", "README.md", "c1_mini-quality.png",
                 "c1_mini-cka.png", "samples/teacher-heun.png",
                 "samples/teacher-init-32.png"):
        assert (fig / name).exists(), name
    findings = pd.read_csv(fig / "findings.csv")
    gate, findings = findings[findings["claim"] == "gate"], findings[findings["claim"] != "gate"]
    assert findings.index.min() > gate.index.max()  # the teacher's gate leads the table
    assert (gate["verdict"] == HOLDS).all() and len(gate) == 4
    row = findings.iloc[0]
    assert row["claim"] == "C1" and row["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
    assert set(findings["group"]) == {"teacher-init", "random-init"}
    assert (findings["n"] == 2).all()
    assert sorted(set(findings["budget_images"])) == [16, 32]  # eval_at 16, full budget 32
    final = findings[findings["final"]]["claim_verdict"].iloc[0]   # the printed verdict is
    assert f"C1: {final}  (" in res.output                       # the full budget's
    md = (fig / "findings.md").read_text()
    assert "| C1 |" in md and "Teacher gate: passed" in md and "real held-out" in md
    assert "--only C1" in (fig / "README.md").read_text()
    for table in (tmp_path / "out" / "mini" / "studies").glob("*/*.csv"):
        assert list(pd.read_csv(table).columns[:len(COLUMNS)]) == COLUMNS, table.name
    runs = list((tmp_path / "out" / "mini" / "runs").glob("*/seed*"))
    assert len(runs) == 4
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "measurements cached" in again.output
    assert "images in" not in again.output  # no run trained again


def test_a_teacher_below_the_gate_stops_the_study_before_any_student(tmp_path):
    register_commands()
    folder = write_experiments(tmp_path / "exp")
    profile = (folder / "profiles.toml").read_text().replace("max_fd_ratio = 1e9",
                                                              "max_fd_ratio = 1.0")
    (folder / "profiles.toml").write_text(profile)
    args = ["reproduce", "--profile", "mini", "--experiments", str(folder), "--out",
            str(tmp_path / "out"), "--figures", str(tmp_path / "fig"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, UserError)
    proc = subprocess.run([sys.executable, "-m", "initprobe", *args, "--jobs", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: teacher gate of profile mini failed: "
                            "fd_classifier / floor = "), error
    assert "needs <= 1" in error and "train the teacher longer" in error
    assert not (tmp_path / "out" / "mini" / "runs").exists()  # no student trained
    assert not (tmp_path / "fig" / "findings.csv").exists()


# ---- verdicts per budget -----------------------------------------------------------------

def test_verdicts_are_judged_at_every_budget_and_the_change_is_reported(tmp_path):
    from initprobe.reproduce.findings import evaluate_study, findings_markdown, transitions
    from initprobe.reproduce.runner import StudyResult
    folder = write_experiments(tmp_path / "exp")
    study = load_study(folder / "c1_mini.toml", load_profile(folder, "mini"))
    study.budgets = [1000, 5000, 20000]
    curve = []
    for seed in range(5):
        for x, teacher, random in ((1024, 50, 900), (5056, 40, 300), (20032, 30, 30)):
            jitter = 0.5 * seed  # the gap closes by the last budget, same seeds both groups
            curve += measures.rows("teacher-init", seed, {"fd_classifier": teacher + jitter},
                                   x=x)
            curve += measures.rows("random-init", seed, {"fd_classifier": random - jitter},
                                   x=x)
    curves = measures.table(curve)
    final = curves[curves["x"] == 20032].assign(x=math.nan)
    cka = measures.table(measures.rows("teacher-init", 0, {"cka_after": 0.9}))
    result = StudyResult(study, tmp_path, "cached",
                         {"quality": final, "curves": curves, "cka": cka}, 0.0)
    findings = evaluate_study(result, "mini", [])
    by_budget = (findings.drop_duplicates(["budget_images", "rule"])
                 .set_index("budget_images")["verdict"].to_dict())
    assert by_budget == {1000: HOLDS, 5000: HOLDS, 20000: FAILS}
    assert set(findings[findings["budget_images"] == 1000]["mean"]) == {51.0, 899.0}
    steps = list(zip([1000, 5000, 20000], [HOLDS, HOLDS, FAILS]))
    assert transitions(steps) == "holds up to 5k; does not hold at 20k"
    assert transitions([(1000, HOLDS), (2000, HOLDS)]) == "holds at every budget (1k-2k)"
    assert transitions([(1000, HOLDS), (2000, FAILS), (5000, FAILS)]) == \
        "holds at 1k; does not hold from 2k"
    assert transitions([(1000, FAILS), (2000, HOLDS), (5000, FAILS)]) == \
        "does not hold at 1k; holds at 2k; does not hold at 5k"
    md = findings_markdown(findings, [result], "header")
    assert "holds up to 5k; does not hold at 20k" in md
    # a study without sample-quality tables is judged at its full budget only
    other = replace(study, measure={"cka": study.measure["cka"]}, rules=[
        {"type": "greater_than", "metric": "cka_after", "a": "teacher-init", "b": 0.5}])
    alone = evaluate_study(StudyResult(other, tmp_path, "cached", {"cka": cka}, 0.0), "mini", [])
    assert set(alone["budget_images"]) == {20000} and set(alone["verdict"]) == {HOLDS}


COND_STUDY = STUDY.replace('method = "two inits"', 'method = "two inits"\nlabels = true').replace(
    "[measure.cka]\nsigmas = [0.5]\n", "").replace('metric = "fd_classifier"',
                                                  'metric = "label_accuracy"')


def test_a_conditional_study_trains_a_labelled_teacher_and_judges_label_accuracy(tmp_path,
                                                                                monkeypatch):
    folder = write_experiments(tmp_path / "exp", COND_STUDY)
    prof = load_profile(folder, "mini")
    study = load_study(folder / "c1_mini.toml", prof)
    assert study.labels and study.key()["labels"] is True
    ws = Workspace(prof, tmp_path / "out", "cpu", log=lambda s: None)
    assert ws.teacher_dir("labels") != ws.teacher_dir()   # never the same folder
    monkeypatch.setattr("initprobe.reproduce.runner.draw_study", lambda *a, **k: [])
    result = run_study(ws, study, tmp_path / "fig", log=lambda s: None)
    q = result.tables["quality"]
    acc = q[q["metric"] == "label_accuracy"]
    assert set(acc["run"]) == {"teacher-init", "random-init"} and len(acc) == 4
    assert acc["value"].between(0, 1).all()
    teacher_cfg = json.loads((ws.teacher_dir("labels") / "config.json").read_text())
    assert teacher_cfg["labels"] is True and teacher_cfg["unet"]["label_dim"] == 10
    assert not ws.teacher_dir().exists()   # the unconditional teacher was not needed
    run_cfg = json.loads((StudyRuns(ws, study).dir("random-init", 0) / "config.json")
                         .read_text())
    assert run_cfg["labels"] is True and run_cfg["teacher"] == str(ws.teacher_dir("labels"))


@pytest.mark.parametrize("edit, key", [
    (("labels = true", 'labels = "yes"'), "labels"),
    (("[measure.quality]", "[measure.quality]\n[measure.cka]"), "measure"),
])
def test_bad_conditional_study_configs(tmp_path, edit, key):
    folder = write_experiments(tmp_path / "exp", COND_STUDY.replace(*edit))
    with pytest.raises(UserError, match=rf"c1_mini.toml.*{key}"):
        load_study(folder / "c1_mini.toml", load_profile(folder, "mini"))
