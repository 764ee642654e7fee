"""The findings table: every study's verdict rules evaluated on its measured tables, written as
`findings.csv` (long form: one row per rule and compared group), `findings.md` (one row per rule
plus a claim summary and the per-group tables a study asks for with `report`) and the figures'
`README.md` (caption and regenerating command of each figure)."""

from pathlib import Path

import pandas as pd

from ..runio import atomic_write_text
from .figures import figure_files
from .rules import Measured, combine, evaluate, fmt
from .runner import StudyResult


def main_table(result: StudyResult) -> pd.DataFrame:
    """The study's rule-readable tables (one per measurement) stacked."""
    return pd.concat([result.tables[m] for m in result.study.measure], ignore_index=True)


def _budget(result: StudyResult) -> str:
    s = result.study
    seeds = ",".join(map(str, s.seeds))
    if not s.runs:
        return f"teacher only; noise seeds {seeds}"
    return f"{s.images:,} images/run; seeds {seeds}"


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
    """Long-form findings of one study: a row per (rule, compared group)."""
    measured = Measured(main_table(result))
    outcomes = [(i, rule, evaluate(rule, measured)) for i, rule in enumerate(result.study.rules)]
    claim_verdict = combine([o.verdict for _, _, o in outcomes])
    records = []
    for i, rule, out in outcomes:
        base = {"profile": profile, "claim": result.study.claim, "study": result.study.stem,
                "statement": result.study.statement, "rule": i, "rule_name": _rule_name(rule),
                "what": rule.get("what", ""), "type": rule["type"],
                "metric": rule.get("metric", f"{rule.get('x_metric')} vs {rule.get('y_metric')}"),
                "verdict": out.verdict, "detail": out.detail, "claim_verdict": claim_verdict,
                "budget": _budget(result), "notes": "; ".join(notes)}
        for st in out.stats or [None]:
            records.append({**base, "group": st.ref if st else "", "n": st.n if st else 0,
                            "mean": st.mean if st else float("nan"),
                            "std": st.std if st else float("nan"),
                            "values": " ".join(f"{v:.6g}" for v in st.values) if st else ""})
    return pd.DataFrame.from_records(records)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _report_table(result: StudyResult) -> list[str]:
    """Markdown table: group x report metric, mean ± sd over seeds."""
    metrics = result.study.report
    d = main_table(result)
    d = d[d["metric"].isin(metrics) & d["x"].isna()]
    lines = [f"**{result.study.claim} per group** ({_budget(result)}; mean ± sd over seeds)", "",
             "| group | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for group, g in d.groupby("group", sort=False):
        cells = []
        for m in metrics:
            v = g[g["metric"] == m]["value"]
            cells.append("" if v.empty else fmt(v.mean()) +
                         (f" ± {fmt(v.std())}" if len(v) > 1 else ""))
        lines.append(f"| {_md(group)} | " + " | ".join(cells) + " |")
    return lines + [""]


def findings_markdown(findings: pd.DataFrame, results: list[StudyResult], header: str) -> str:
    rules = findings.drop_duplicates(["claim", "rule"])
    claims = rules.drop_duplicates("claim")
    lines = [header, "", "| claim | statement | verdict | budget |", "|---|---|---|---|"]
    lines += [f"| {r.claim} | {_md(r.statement)} | **{r.claim_verdict}** | {_md(r.budget)} |"
              for r in claims.itertuples()]
    lines += ["", "| claim | rule | metric | measured (mean ± sd over seeds, n) | verdict |",
              "|---|---|---|---|---|"]
    lines += [f"| {r.claim} | {_md(r.rule_name)} | {_md(r.metric)} | {_md(r.detail)} | "
              f"{r.verdict} |" for r in rules.itertuples()]
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
    lines += ["Sample grids (`samples/`): the teacher's Heun and one-step outputs and the final "
              "one-step samples of each run (first seed), seeds 0-63.", ""]
    return "\n".join(lines)


def write_findings(results: list[StudyResult], folder: Path, profile: str, notes: list[str],
                   header: str, command: str) -> pd.DataFrame:
    """Write findings.csv, findings.md and README.md into `folder`; returns the findings."""
    findings = pd.concat([evaluate_study(r, profile, notes) for r in results],
                         ignore_index=True)
    atomic_write_text(folder / "findings.csv", findings.to_csv(index=False))
    atomic_write_text(folder / "findings.md", findings_markdown(findings, results, header))
    atomic_write_text(folder / "README.md", figures_readme(results, command))
    return findings
