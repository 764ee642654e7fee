"""The long-form table schema every analysis returns.

One row is one measured number. Columns that do not apply to an analysis are present and empty
(NA), so tables from different analyses concatenate and share seaborn code. A per-class metric
of a class-conditional run (named `metric[c]` where it is logged, e.g. `precision[3]`) becomes
the row's `metric` plus an extra `label` column holding the class (`split_class`).
"""

import re

import pandas as pd

COLUMNS = ["run", "init", "objective", "seed", "layer", "side", "res", "block", "sublayer",
           "sigma", "metric", "value"]


def split_class(key: str) -> tuple[str, int | None]:
    """'precision[3]' -> ('precision', 3); a metric without a class -> (key, None)."""
    m = re.fullmatch(r"(.+)\[(\d+)\]", key)
    return (m[1], int(m[2])) if m else (key, None)


def frame(records: list[dict], **constants) -> pd.DataFrame:
    """Build a table in the shared schema from row dicts; `constants` fill every row.

    Extra keys are kept as additional columns after the shared ones.
    """
    return conform(pd.DataFrame.from_records([{**constants, **r} for r in records]))


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """`df` in the shared schema: missing shared columns added empty, the shared columns first
    and its other columns after them in their order."""
    df = df.assign(**{col: pd.NA for col in COLUMNS if col not in df.columns})
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]
