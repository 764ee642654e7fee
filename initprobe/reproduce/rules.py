"""Verdict rules: a named comparison of measured numbers that yields holds / does not hold /
inconclusive. No expression is ever evaluated; a rule is a type from `RULES` and its arguments.

Numbers come from a measurement table (`Measured`): the per-seed values of one metric for one
group, a value of the table's `run` column. A group reference is a group name (`teacher-init`,
`teacher-init@init`) or a group at one sweep position (column `x`), `name[x]` (`best-of-K[8]`);
comparison rules also accept a plain number for `b`.

Comparisons of groups (less_than, greater_than, at_most, within, closer) are decided by a test
AND a minimum effect size, so that neither float rounding nor a tiny but consistent gap decides a
verdict. D is the difference the claim is about (below); [lo, hi] its two-sided (1 - alpha)
confidence interval (`alpha` defaults to 0.05), from Student's t on the seed-matched
differences when both sides were measured on the same seeds (paired), else Welch's t (a single
value or a constant counts as exact). m is the minimum effect: `effect` (default 0.1) times the
larger of the compared means' magnitudes (closer: times the near-far gap).

| type | arguments | D | holds | does not hold |
| --- | --- | --- | --- | --- |
| less_than | a, b, effect | b - a | lo > 0 and D >= m | hi < m |
| greater_than | a, b, effect | a - b | lo > 0 and D >= m | hi < m |
| at_most | a, b, rel | a - b | hi <= rel abs(mean b) | lo > rel abs(mean b) |
| within | a, b, rel | a - b | -tol <= lo, hi <= tol; tol = rel abs(mean b) | lo > tol, hi < -tol |
| closer | a, near, far, effect | abs(a - far) - abs(a - near) | lo > 0 and D >= m | hi < m |

(closer: per seed when all three groups share their seeds, else on the means with the summed
variances, a counted twice.) Sweeps and correlations keep a spread margin, s = k x the largest
sample standard deviation of the groups compared (`k` defaults to 1):

| type | arguments | holds | does not hold |
| --- | --- | --- | --- |
| increasing | group | Spearman(x, mean) >= min_rho and last - first > s | Spearman <= 0 |
| flat | group, rel | range + s <= rel mean | range - s > rel mean (range over x) |
| correlation | groups, x_metric, y_metric, sign | sign x rho >= min_abs | sign x rho <= 0 |

(`increasing` and `flat` run over the sweep positions x of one group, `correlation` (rho:
Spearman) over the group means of several groups. A claim's verdict combines its rules: holds if
all hold, does not hold if any does not hold, inconclusive otherwise.)
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
_REF = re.compile(r"^(?P<group>.+?)\[(?P<x>[-+0-9.eE]+)\]$")


@dataclass
class Stats:
    """The per-seed values of one metric for one group reference."""

    ref: str
    values: list[float]
    constant: bool = False           # a number given in the rule, not a measurement
    seeds: list[float] = field(default_factory=list)   # the seed of each value (NaN: none)

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
    """Lookup of per-seed values in a main table (`measures.LAYOUT`: run, seed, x, metric,
    value are read)."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def _rows(self, group: str, metric: str) -> pd.DataFrame:
        t = self.table
        return t[(t["run"] == group) & (t["metric"] == metric)]

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
        rows = rows.dropna(subset=["value"])
        return Stats(ref, [float(v) for v in rows["value"]], seeds=[float(s) for s in rows["seed"]])

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


@dataclass
class Interval:
    """A difference of means with its (1 - alpha) confidence interval."""

    d: float
    lo: float
    hi: float
    test: str                        # "paired t (n=5)", "Welch t", "exact"

    def text(self) -> str:
        if self.test == "exact":
            return f"D={fmt(self.d)} (exact)"
        return f"D={fmt(self.d)}, CI [{fmt(self.lo)}, {fmt(self.hi)}] ({self.test})"


def _paired(*stats: Stats) -> bool:
    """Whether the groups were measured on the same seeds (each seed once)."""
    keys = [s.seeds for s in stats]
    return (all(len(k) == len(set(k)) >= 2 and not any(map(math.isnan, k)) for k in keys)
            and all(set(k) == set(keys[0]) for k in keys))


def _by_seed(s: Stats) -> dict[float, float]:
    return dict(zip(s.seeds, s.values))


def _interval(diffs: np.ndarray | None, parts: list[tuple[float, Stats]], d: float,
              alpha: float) -> Interval:
    """CI of d: from per-seed differences `diffs` (paired), or Welch over `parts`, a list of
    (coefficient, Stats) whose weighted means make d."""
    if diffs is not None:
        n = len(diffs)
        se, df = float(np.std(diffs, ddof=1)) / math.sqrt(n), n - 1
        test = f"paired t, n={n}"
    else:
        terms = [(c * c * st.std ** 2 / st.n, st.n) for c, st in parts
                 if not st.constant and st.n > 1]
        var = sum(v for v, _ in terms)
        se = math.sqrt(var)
        df = var ** 2 / sum(v ** 2 / (n - 1) for v, n in terms) if var > 0 else math.inf
        test = "Welch t"
    if se == 0:
        return Interval(d, d, d, "exact")
    half = float(scipy_stats.t.ppf(1 - alpha / 2, df)) * se
    return Interval(d, d - half, d + half, test)


def _difference(a: Stats, b: Stats, alpha: float) -> Interval:
    """mean(a) - mean(b) with its CI."""
    if _paired(a, b):
        ba = _by_seed(b)
        diffs = np.array([v - ba[k] for k, v in _by_seed(a).items()])
        return _interval(diffs, [], float(diffs.mean()), alpha)
    return _interval(None, [(1.0, a), (-1.0, b)], a.mean - b.mean, alpha)


def _alpha(rule: dict) -> float:
    return rule.get("alpha", 0.05)


def _effect(rule: dict, scale: float) -> float:
    return rule.get("effect", 0.1) * abs(scale)


def _decide(ci: Interval, m: float) -> str:
    """holds: D is positive (CI above 0) and at least m; does not hold: D below m (CI)."""
    return _verdict(ci.lo > 0 and ci.d >= m, ci.hi < m)


def _pair(rule: dict, m: Measured, metric: str) -> tuple[Stats, Stats]:
    return m.stats(rule["a"], metric), m.stats(rule["b"], metric)


def _less(rule, m, metric, sign: float) -> Outcome:
    a, b = _pair(rule, m, metric)
    if (out := _missing(a, b)) is not None:
        return out
    ci = _difference(b, a, _alpha(rule)) if sign > 0 else _difference(a, b, _alpha(rule))
    need = _effect(rule, max(abs(a.mean), abs(b.mean)))
    return Outcome(_decide(ci, need), f"{a.text()} vs {b.text()}; {ci.text()}, min effect "
                                      f"{fmt(need)}", [a, b])


def _tolerance(rule, m, metric, absolute: bool) -> Outcome:
    a, b = _pair(rule, m, metric)
    if (out := _missing(a, b)) is not None:
        return out
    ci = _difference(a, b, _alpha(rule))
    tol = rule["rel"] * abs(b.mean)
    if absolute:
        verdict = _verdict(-tol <= ci.lo and ci.hi <= tol, ci.lo > tol or ci.hi < -tol)
    else:
        verdict = _verdict(ci.hi <= tol, ci.lo > tol)
    word = "within" if absolute else "at most"
    return Outcome(verdict, f"{a.text()} {word} {rule['rel']:.0%} of {b.text()} (tol "
                            f"{fmt(tol)}); {ci.text()}", [a, b])


def _closer(rule, m, metric) -> Outcome:
    a, near, far = (m.stats(rule[key], metric) for key in ("a", "near", "far"))
    if (out := _missing(a, near, far)) is not None:
        return out
    dn, df = abs(a.mean - near.mean), abs(a.mean - far.mean)
    if _paired(a, near, far):
        va, vn, vf = _by_seed(a), _by_seed(near), _by_seed(far)
        diffs = np.array([abs(va[k] - vf[k]) - abs(va[k] - vn[k]) for k in va])
        ci = _interval(diffs, [], float(diffs.mean()), _alpha(rule))
    else:
        ci = _interval(None, [(2.0, a), (1.0, near), (1.0, far)], df - dn, _alpha(rule))
    need = _effect(rule, far.mean - near.mean)
    return Outcome(_decide(ci, need),
                   f"{a.text()}: distance {fmt(dn)} to {near.text()} vs {fmt(df)} to "
                   f"{far.text()}; {ci.text()}, min effect {fmt(need)}", [a, near, far])


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
    rho = round(_spearman([s.mean for s in xs], [s.mean for s in ys]), 12)  # -0.4999... is -0.5
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


TESTED = ("alpha", "effect")
RULES = {
    "less_than": RuleType(lambda r, m, k: _less(r, m, k, 1.0), ("a", "b"), TESTED,
                          refs=("a", "b")),
    "greater_than": RuleType(lambda r, m, k: _less(r, m, k, -1.0), ("a", "b"), TESTED,
                             refs=("a", "b")),
    "at_most": RuleType(lambda r, m, k: _tolerance(r, m, k, False), ("a", "b", "rel"),
                        ("alpha",), refs=("a", "b")),
    "within": RuleType(lambda r, m, k: _tolerance(r, m, k, True), ("a", "b", "rel"),
                       ("alpha",), refs=("a", "b")),
    "closer": RuleType(_closer, ("a", "near", "far"), TESTED, refs=("a", "near", "far")),
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
