"""Verdict rules: a named comparison of measured numbers that yields holds / does not hold /
inconclusive. No expression is ever evaluated; a rule is a type from `RULES` and its arguments.

Numbers come from a measurement table (`Measured`): the per-seed values of one metric for one
group. A group reference is a group name (`teacher-init`, `teacher-init@init`) or a group at one
sweep position, `name[x]` (`best-of-K[8]`); comparison rules also accept a plain number for `b`.

Spread. s = k x the largest sample standard deviation (ddof 1; 0 for a single value) of the
groups a rule compares (`k` defaults to 1). A rule holds when its claim is true even after moving
the measured difference by s against the claim, does not hold when the opposite is true even
after moving it by s in the claim's favour, and is inconclusive in between:

| type | arguments | holds | does not hold |
| --- | --- | --- | --- |
| less_than | a, b | mean a < mean b - s | mean a > mean b + s |
| greater_than | a, b | mean a > mean b + s | mean a < mean b - s |
| at_most | a, b, rel | d + s <= rel abs(mean b) | d - s > rel abs(mean b); d = mean a - mean b |
| within | a, b, rel | abs(d) + s <= rel abs(mean b) | abs(d) - s > rel abs(mean b) |
| closer | a, near, far | dist(a, near) + s < dist(a, far) | dist(a, near) > dist(a, far) + s |
| increasing | group | Spearman(x, mean) >= min_rho and last - first > s | Spearman <= 0 |
| flat | group, rel | range + s <= rel mean | range - s > rel mean (range over x) |
| correlation | groups, x_metric, y_metric, sign | sign x rho >= min_abs | sign x rho <= 0 |

(`dist` is the distance of the group means; `increasing` and `flat` run over the sweep positions
x of one group, `correlation` (rho: Spearman) over the group means of several groups. A claim's
verdict combines its rules: holds if all hold, does not hold if any does not hold, inconclusive
otherwise.)
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
_REF = re.compile(r"^(?P<group>.+?)\[(?P<x>[-+0-9.eE]+)\]$")


@dataclass
class Stats:
    """The per-seed values of one metric for one group reference."""

    ref: str
    values: list[float]
    constant: bool = False           # a number given in the rule, not a measurement

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    def text(self) -> str:
        if self.constant:
            return self.ref
        if self.n == 0:
            return f"{self.ref}: no data"
        spread = f" ± {fmt(self.std)}" if self.n > 1 else ""
        return f"{self.ref} {fmt(self.mean)}{spread} (n={self.n})"


@dataclass
class Outcome:
    verdict: str
    detail: str                      # the measured numbers and the deciding comparison, one line
    stats: list[Stats] = field(default_factory=list)


def fmt(v: float) -> str:
    """A measured number for tables: 3 significant digits, integers from 1000 on."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


class Measured:
    """Lookup of per-seed values in a long table with columns group, x, metric, value."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def _rows(self, group: str, metric: str) -> pd.DataFrame:
        t = self.table
        return t[(t["group"] == group) & (t["metric"] == metric)]

    def stats(self, ref: str | float, metric: str) -> Stats:
        """Values of a group reference (`name` rows with no x, or `name[x]`); a number is a
        constant with no spread."""
        if isinstance(ref, (int, float)):
            return Stats(f"{ref:g}", [float(ref)], constant=True)
        m = _REF.match(ref)
        if m:
            rows = self._rows(m["group"], metric)
            rows = rows[np.isclose(rows["x"].astype(float), float(m["x"]))]
        else:
            rows = self._rows(ref, metric)
            rows = rows[rows["x"].isna()]
        return Stats(ref, [float(v) for v in rows["value"].dropna()])

    def sweep(self, group: str, metric: str) -> list[tuple[float, Stats]]:
        """(x, values) of a group at each of its sweep positions, x ascending."""
        rows = self._rows(group, metric).dropna(subset=["x"])
        return [(float(x), Stats(f"{group}[{x:g}]", [float(v) for v in d["value"].dropna()]))
                for x, d in rows.groupby("x", sort=True)]


def _verdict(holds: bool, fails: bool) -> str:
    return HOLDS if holds else FAILS if fails else INCONCLUSIVE


def _spread(rule: dict, *stats: Stats) -> float:
    return rule.get("k", 1.0) * max(s.std for s in stats)


def _missing(*stats: Stats) -> Outcome | None:
    empty = [s.ref for s in stats if s.n == 0]
    if empty:
        return Outcome(INCONCLUSIVE, f"no data for {', '.join(empty)}", list(stats))
    return None


def _pair(rule: dict, m: Measured, metric: str) -> tuple[Stats, Stats]:
    return m.stats(rule["a"], metric), m.stats(rule["b"], metric)


def _less(rule, m, metric, sign: float) -> Outcome:
    a, b = _pair(rule, m, metric)
    if (out := _missing(a, b)) is not None:
        return out
    s = _spread(rule, a, b)
    d = sign * (b.mean - a.mean)  # > 0 when the claim's direction is measured
    return Outcome(_verdict(d > s, -d > s), f"{a.text()} vs {b.text()}; margin s={fmt(s)}",
                   [a, b])


def _tolerance(rule, m, metric, absolute: bool) -> Outcome:
    a, b = _pair(rule, m, metric)
    if (out := _missing(a, b)) is not None:
        return out
    s = _spread(rule, a, b)
    d = a.mean - b.mean
    d = abs(d) if absolute else d
    tol = rule["rel"] * abs(b.mean)
    word = "within" if absolute else "at most"
    return Outcome(_verdict(d + s <= tol, d - s > tol),
                   f"{a.text()} {word} {rule['rel']:.0%} of {b.text()}; margin s={fmt(s)}",
                   [a, b])


def _closer(rule, m, metric) -> Outcome:
    a, near, far = (m.stats(rule[key], metric) for key in ("a", "near", "far"))
    if (out := _missing(a, near, far)) is not None:
        return out
    s = _spread(rule, a, near, far)
    dn, df = abs(a.mean - near.mean), abs(a.mean - far.mean)
    return Outcome(_verdict(df - dn > s, dn - df > s),
                   f"{a.text()}: distance {fmt(dn)} to {near.text()} vs {fmt(df)} to "
                   f"{far.text()}; margin s={fmt(s)}", [a, near, far])


def _spearman(x, y) -> float:
    return float(pd.Series(x, dtype=float).corr(pd.Series(y, dtype=float), method="spearman"))


def _increasing(rule, m, metric) -> Outcome:
    points = m.sweep(rule["group"], metric)
    if len(points) < 3:
        return Outcome(INCONCLUSIVE, f"{rule['group']}: {len(points)} sweep positions, need >= 3")
    stats = [s for _, s in points]
    rho = _spearman([x for x, _ in points], [s.mean for s in stats])
    s = _spread(rule, *stats)
    rise = stats[-1].mean - stats[0].mean
    verdict = _verdict(rho >= rule.get("min_rho", 0.8) and rise > s, rho <= 0)
    path = " -> ".join(f"{x:g}: {fmt(st.mean)}" for x, st in points)
    return Outcome(verdict, f"{rule['group']} {path}; Spearman {rho:.2f}, rise {fmt(rise)} vs "
                            f"s={fmt(s)}", stats)


def _flat(rule, m, metric) -> Outcome:
    points = m.sweep(rule["group"], metric)
    if len(points) < 2:
        return Outcome(INCONCLUSIVE, f"{rule['group']}: {len(points)} sweep positions, need >= 2")
    stats = [s for _, s in points]
    means = [st.mean for st in stats]
    s = _spread(rule, *stats)
    span, tol = max(means) - min(means), rule["rel"] * abs(float(np.mean(means)))
    path = ", ".join(f"{x:g}: {fmt(st.mean)}" for x, st in points)
    return Outcome(_verdict(span + s <= tol, span - s > tol),
                   f"{rule['group']} {path}; range {fmt(span)} vs {rule['rel']:.0%} of mean "
                   f"= {fmt(tol)}; margin s={fmt(s)}", stats)


def _correlation(rule, m, metric) -> Outcome:
    xs = [m.stats(g, rule["x_metric"]) for g in rule["groups"]]
    ys = [m.stats(g, rule["y_metric"]) for g in rule["groups"]]
    if (out := _missing(*xs, *ys)) is not None:
        return out
    rho = _spearman([s.mean for s in xs], [s.mean for s in ys])
    signed = rho * (1 if rule["sign"] == "positive" else -1)
    return Outcome(_verdict(signed >= rule.get("min_abs", 0.5), signed <= 0),
                   f"Spearman({rule['x_metric']}, {rule['y_metric']}) = {rho:.2f} over "
                   f"{len(xs)} groups (claim: {rule['sign']}, |rho| >= "
                   f"{rule.get('min_abs', 0.5)})", xs + ys)


@dataclass(frozen=True)
class RuleType:
    evaluate: Callable[[dict, Measured, str], Outcome]
    required: tuple[str, ...]          # besides `type` (and `metric`, unless `correlation`)
    optional: tuple[str, ...] = ("k",)
    refs: tuple[str, ...] = ()          # arguments naming groups


RULES = {
    "less_than": RuleType(lambda r, m, k: _less(r, m, k, 1.0), ("a", "b"), refs=("a", "b")),
    "greater_than": RuleType(lambda r, m, k: _less(r, m, k, -1.0), ("a", "b"), refs=("a", "b")),
    "at_most": RuleType(lambda r, m, k: _tolerance(r, m, k, False), ("a", "b", "rel"),
                        refs=("a", "b")),
    "within": RuleType(lambda r, m, k: _tolerance(r, m, k, True), ("a", "b", "rel"),
                       refs=("a", "b")),
    "closer": RuleType(_closer, ("a", "near", "far"), refs=("a", "near", "far")),
    "increasing": RuleType(_increasing, ("group",), ("k", "min_rho"), refs=("group",)),
    "flat": RuleType(_flat, ("group", "rel"), refs=("group",)),
    "correlation": RuleType(_correlation, ("groups", "x_metric", "y_metric", "sign"),
                            ("min_abs",), refs=("groups",)),
}
SIGNS = ("positive", "negative")


def rule_metrics(rule: dict) -> list[str]:
    """The metrics a rule reads."""
    if rule["type"] == "correlation":
        return [rule["x_metric"], rule["y_metric"]]
    return [rule["metric"]]


def evaluate(rule: dict, measured: Measured) -> Outcome:
    """The outcome of one (validated) rule on the measured table."""
    return RULES[rule["type"]].evaluate(rule, measured, rule.get("metric", ""))


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its rules' verdicts."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if FAILS in verdicts:
        return FAILS
    return INCONCLUSIVE
