"""The long-form table schema every analysis returns.

One row is one measured number. Columns that do not apply to an analysis are present and empty
(NA), so tables from different analyses concatenate and share seaborn code.
"""

import pandas as pd

COLUMNS = ["run", "init", "objective", "seed", "layer", "side", "res", "block", "sublayer",
           "sigma", "metric", "value"]


def frame(records: list[dict], **constants) -> pd.DataFrame:
    """Build a table in the shared schema from row dicts; `constants` fill every row.

    Extra keys are kept as additional columns after the shared ones.
    """
    df = pd.DataFrame.from_records([{**constants, **r} for r in records])
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra]
