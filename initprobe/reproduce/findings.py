"""The findings table: every study's verdict rules evaluated on its measured tables, written as
`findings.csv` (long form: one row per budget, rule and compared group), `findings.md` (the
teacher's gate, a claim summary with the verdict at every budget, one row per rule, and the
per-group tables a study asks for with `report`) and the figures' `README.md` (caption and
regenerating command of each figure).

Budgets. A study's runs are evaluated at the profile's `student.eval_at` images (log-spaced), so
one run yields the whole learning curve. Rules that read only sample-quality numbers of the runs
(`quality`) and the teacher's baselines (`baseline`) are judged at every budget of the study
(the evaluation at the first step reaching it); the others only at the study's full budget. A
claim's verdict at an intermediate budget combines the rules judged there.
"""

import math
from pathlib import Path

import pandas as pd

from ..runio import atomic_write_text
from .figures import figure_files, short
from .gate import GateResult
from .measures import MEASUREMENTS, QUALITY
from .rules import Measured, combine, evaluate, fmt
from .runner import StudyResult

NETWORK_NAMES = {"classifier": "domain classifier", "inception": "FID Inception-v3 features"}
PER_BUDGET = ("quality", "baseline")   # measurements whose rules are judged at every budget


def main_table(result: StudyResult) -> pd.DataFrame:
    """The study's rule-readable tables (one per measurement) stacked."""
    return pd.concat([result.tables[m] for m in result.study.measure], ignore_index=True)


def _budget(result: StudyResult) -> str:
    s = result.study
    seeds = ",".join(map(str, s.seeds))
    if not s.runs:
        return f"teacher only; noise seeds {seeds}"
    return f"{s.images:,} images/run; seeds {seeds}"


def per_budget(rule: dict, study) -> bool:
    """Whether a rule reads only numbers that exist at every budget (module docstring)."""
    groups = set()
    for name in PER_BUDGET:
        if name in study.measure:
            groups |= MEASUREMENTS[name].groups(study, study.measure[name])
    refs = []
    for k in ("a", "b", "near", "far", "group", "groups"):
        v = rule.get(k)
        refs += v if isinstance(v, list) else [] if v is None else [v]
    names = {r.split("[")[0] for r in refs if isinstance(r, str)}
    metrics = [rule.get("metric"), rule.get("x_metric"), rule.get("y_metric")]
    return ("quality" in study.measure and names <= groups
            and all(m is None or m in QUALITY for m in metrics)
            and rule["type"] not in ("increasing", "flat"))


def at_budget(result: StudyResult, images: int) -> pd.DataFrame:
    """The quality rows of the evaluation at the first step reaching `images` (x emptied) and
    the baselines: what per-budget rules read."""
    curves = result.tables["curves"]
    later = curves[curves["x"] >= images]
    first = later.groupby(["run", "seed"])["x"].transform("min")
    rows = later[later["x"] == first].assign(x=math.nan)
    extra = [result.tables["baseline"]] if "baseline" in result.tables else []
    return pd.concat([rows, *extra], ignore_index=True)


def _rule_name(rule: dict) -> str:
    kind = rule["type"]
    if kind == "correlation":
        return f"{rule['sign']} correlation over {len(rule['groups'])} groups"
    if kind in ("increasing", "flat"):
        return f"{rule['group']} {kind}"
    if kind == "closer":
        return f"{rule['a']} closer to {rule['near']} than to {rule['far']}"
    word = {"less_than": "<", "greater_than": ">", "at_most": "<= (1+rel) x",
            "within": "~"}[kind]
    rel = f" (rel {rule['rel']:g})" if "rel" in rule else ""
    return f"{rule['a']} {word} {rule['b']}{rel}"


def evaluate_study(result: StudyResult, profile: str, notes: list[str]) -> pd.DataFrame:
    """Long-form findings of one study: a row per (budget, rule, compared group)."""
    study = result.study
    final = Measured(main_table(result))
    budgets = study.budgets or [study.images]
    records = []
    for images in budgets:
        if images == budgets[-1]:
            measured, chosen = final, list(enumerate(study.rules))
        else:
            chosen = [(i, r) for i, r in enumerate(study.rules) if per_budget(r, study)]
            if not chosen:
                continue
            measured = Measured(at_budget(result, images))
        outcomes = [(i, rule, evaluate(rule, measured)) for i, rule in chosen]
        claim_verdict = combine([o.verdict for _, _, o in outcomes])
        for i, rule, out in outcomes:
            base = {"profile": profile, "claim": study.claim, "study": study.stem,
                    "statement": study.statement, "budget_images": images if study.runs else 0,
                    "final": images == budgets[-1], "rule": i, "rule_name": _rule_name(rule),
                    "what": rule.get("what", ""), "type": rule["type"],
                    "metric": rule.get("metric",
                                       f"{rule.get('x_metric')} vs {rule.get('y_metric')}"),
                    "verdict": out.verdict, "detail": out.detail,
                    "claim_verdict": claim_verdict, "budget": _budget(result),
                    "notes": "; ".join(notes)}
            for st in out.stats or [None]:
                records.append({**base, "group": st.ref if st else "", "n": st.n if st else 0,
                                "mean": st.mean if st else float("nan"),
                                "std": st.std if st else float("nan"),
                                "values": " ".join(f"{v:.6g}" for v in st.values) if st else ""})
    return pd.DataFrame.from_records(records)


def transitions(by_budget: list[tuple[int, str]]) -> str:
    """'holds up to 20k; inconclusive from 50k' from (budget, verdict) pairs, budget ascending."""
    parts, start, last = [], 0, len(by_budget) - 1
    for k in range(1, len(by_budget) + 1):
        if k <= last and by_budget[k][1] == by_budget[start][1]:
            continue
        verdict, end = by_budget[start][1], k - 1
        lo, hi = short(by_budget[start][0]), short(by_budget[end][0])
        if start == end:
            parts.append(f"{verdict} at {lo}")
        elif start == 0 and end == last:
            parts.append(f"{verdict} at every budget ({lo}-{hi})")
        elif start == 0:
            parts.append(f"{verdict} up to {hi}")
        elif end == last:
            parts.append(f"{verdict} from {lo}")
        else:
            parts.append(f"{verdict} from {lo} to {hi}")
        start = k
    return "; ".join(parts)


def gate_markdown(gate: GateResult) -> list[str]:
    """The teacher's row and the real-data floor: the first rows of the findings."""
    lines = [f"**Teacher gate: {'passed' if gate.passed else 'FAILED'}** ({gate.n} Heun-"
             f"{gate.heun_steps} samples vs {gate.n} held-out real images, both against the "
             f"training images on the {NETWORK_NAMES[gate.network]})", "",
             "| source | " + " | ".join(gate.metrics) + " |", "|---" * (len(gate.metrics) + 1)
             + "|"]
    for source, values in gate.rows.items():
        lines.append(f"| {source} | " + " | ".join(fmt(values[m]) for m in gate.metrics) + " |")
    lines += ["", "| gate rule | measured | limit | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {fmt(c.value)} | {c.limit_text} | "
              f"{'pass' if c.passed else 'FAIL'} |" for c in gate.checks]
    return lines + [""]


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _report_table(result: StudyResult) -> list[str]:
    """Markdown table: group x report metric, mean ± sd over seeds."""
    metrics = result.study.report
    d = main_table(result)
    d = d[d["metric"].isin(metrics) & d["x"].isna()]
    lines = [f"**{result.study.claim} per group** ({_budget(result)}; mean ± sd over seeds)", "",
             "| group | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for group, g in d.groupby("run", sort=False):
        cells = []
        for m in metrics:
            v = g[g["metric"] == m]["value"]
            cells.append("" if v.empty else fmt(v.mean()) +
                         (f" ± {fmt(v.std())}" if len(v) > 1 else ""))
        lines.append(f"| {_md(group)} | " + " | ".join(cells) + " |")
    return lines + [""]


def claim_budgets(findings: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """claim -> [(budget, claim verdict)], budget ascending."""
    d = findings.drop_duplicates(["claim", "budget_images"]).sort_values("budget_images")
    return {c: list(zip(g["budget_images"], g["claim_verdict"]))
            for c, g in d.groupby("claim", sort=False)}


def findings_markdown(findings: pd.DataFrame, results: list[StudyResult], header: str,
                      gate: GateResult | None = None) -> str:
    final = findings[findings["final"]]
    rules = final.drop_duplicates(["claim", "rule"])
    claims = rules.drop_duplicates("claim")
    by_budget = claim_budgets(findings)
    lines = [header, ""] + (gate_markdown(gate) if gate is not None else [])
    lines += ["| claim | statement | verdict (full budget) | verdict by budget | budget |",
              "|---|---|---|---|---|"]
    lines += [f"| {r.claim} | {_md(r.statement)} | **{r.claim_verdict}** | "
              f"{_md(transitions(by_budget[r.claim]) if r.budget_images else '')} | "
              f"{_md(r.budget)} |" for r in claims.itertuples()]
    lines += ["", "Rules: a comparison holds when the confidence interval of the difference "
              "(paired t over seeds, else Welch; alpha 0.05) excludes 0 and the difference "
              "reaches the rule's minimum effect; it does not hold when the interval lies below "
              "the minimum effect (initprobe/reproduce/rules.py).", "",
              "| claim | rule | metric | measured (mean ± sd over seeds, n) | verdict |",
              "|---|---|---|---|---|"]
    lines += [f"| {r.claim} | {_md(r.rule_name)} | {_md(r.metric)} | {_md(r.detail)} | "
              f"{r.verdict} |" for r in rules.itertuples()]
    lines.append("")
    budgeted = findings[~findings["final"]].drop_duplicates(["claim", "budget_images", "rule"])
    if not budgeted.empty:
        lines += ["**Rules by budget** (rules on sample quality, judged at every evaluation "
                  "budget)", "", "| claim | budget | rule | measured | verdict |",
                  "|---|---|---|---|---|"]
        both = pd.concat([budgeted, rules[rules.apply(
            lambda r: ((budgeted["claim"] == r.claim) & (budgeted["rule"] == r.rule)).any(),
            axis=1)]]).sort_values(["claim", "rule", "budget_images"], kind="stable")
        lines += [f"| {r.claim} | {short(r.budget_images)} | {_md(r.rule_name)} | "
                  f"{_md(r.detail)} | {r.verdict} |" for r in both.itertuples()]
        lines.append("")
    for result in results:
        if result.study.report:
            lines += _report_table(result)
    notes = sorted({n for n in findings["notes"] if n})
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def figures_readme(results: list[StudyResult], command: str) -> str:
    lines = ["# Figures of the reproduction", "",
             f"Regenerate all of them: `{command}`. Finished runs and measurements are reused "
             f"from the --out folder; a study whose measurements are cached redraws only its "
             f"missing figures, so delete a PNG to redraw it.", ""]
    for r in results:
        lines += [f"## {r.study.claim}: {r.study.statement}", "", r.study.method, "",
                  f"Command: `{command} --only {r.study.claim}`", ""]
        lines += [f"- `{name}`: {caption}" for name, caption in figure_files(r.study)]
        lines.append("")
    lines += ["Sample grids (`samples/`): the teacher's Heun and one-step outputs "
              "(`teacher-heun.png`, `teacher-one-step.png`; `teacher-labels-*` for the labelled "
              "teacher) and the final one-step samples of each run (first seed) at its full "
              "budget (`<run>-<budget>.png`, `cond-` in front for a labelled study), seeds 0-63.",
              ""]
    return "\n".join(lines)


def gate_findings(gate: GateResult, profile: str) -> pd.DataFrame:
    """The gate as findings rows (claim `gate`): one per gate rule, ahead of the claims."""
    return pd.DataFrame.from_records([
        {"profile": profile, "claim": "gate", "study": "teacher gate",
         "statement": "the teacher's Heun samples are close to held-out real images",
         "budget_images": 0, "final": True, "rule": i, "rule_name": c.name, "what": c.name,
         "type": "gate", "metric": c.name, "verdict": "holds" if c.passed else "does not hold",
         "detail": f"{fmt(c.value)} (limit {c.limit_text})",
         "claim_verdict": "holds" if gate.passed else "does not hold", "budget": "",
         "notes": "", "group": "teacher heun", "n": gate.n, "mean": c.value, "std": math.nan,
         "values": f"{c.value:.6g}"} for i, c in enumerate(gate.checks)])


def write_findings(results: list[StudyResult], folder: Path, profile: str, notes: list[str],
                   header: str, command: str, gate: GateResult | None = None) -> pd.DataFrame:
    """Write findings.csv, findings.md and README.md into `folder`; returns the findings (the
    claims' rows; the gate's rows lead findings.csv)."""
    findings = pd.concat([evaluate_study(r, profile, notes) for r in results],
                         ignore_index=True)
    head = [gate_findings(gate, profile)] if gate is not None else []
    atomic_write_text(folder / "findings.csv",
                      pd.concat(head + [findings], ignore_index=True).to_csv(index=False))
    atomic_write_text(folder / "findings.md", findings_markdown(findings, results, header,
                                                                gate))
    atomic_write_text(folder / "README.md", figures_readme(results, command))
    return findings
