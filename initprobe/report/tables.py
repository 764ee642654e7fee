"""Run directories -> pandas tables: one row per run, and learning curves in long form.

A run directory is any folder under the root holding a `config.json` (students of
`initprobe.train.onestep` and teachers). Files are read as they are on disk: every writer is
atomic and `read_jsonl` skips a torn last line, so runs still in progress (or written
concurrently) are collected as far as they got. A `config.json` that is not valid JSON is
skipped with a warning rather than failing the whole table.
"""

import json
import warnings
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..runio import read_jsonl
from ..schema import COLUMNS, frame, split_class

ABLATION_KEYS = ("interpolate", "transfer_layers", "reinit", "shuffle", "freeze")  # build order
BOOKKEEPING = ("kind", "step", "images_seen")


def ablation_summary(cfg: dict) -> str:
    """A short label of everything that departs from the plain teacher/random init and map."""
    parts = [f"{k.split('_')[0]}={cfg[k]}" for k in ABLATION_KEYS if cfg.get(k) is not None]
    if cfg.get("sigma_cond") is not None and cfg["sigma_cond"] != 80:
        parts.append(f"sigma_cond={cfg['sigma_cond']:g}")
    if cfg.get("steps", 1) == 2:
        parts.append(f"two-step sigma_mid={cfg['sigma_mid']:g}")
    return "; ".join(parts) or "none"


def _runs(root: Path):
    """(name, run dir, config) for every readable run under `root`, in path order."""
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; pass the folder that holds the run directories")
    for cfg_path in sorted(root.rglob("config.json")):
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            cfg = None
        if not isinstance(cfg, dict):
            warnings.warn(f"{cfg_path}: damaged config (not a JSON object), run skipped",
                          stacklevel=3)
            continue
        name = cfg_path.parent.relative_to(root).as_posix()
        yield (root.name if name == "." else name), cfg_path.parent, cfg


def _last(records: list[dict], kind: str) -> dict:
    """The last record of `kind` (teacher lines carry no kind and count as `train`)."""
    hits = [r for r in records if r.get("kind", "train") == kind]
    return hits[-1] if hits else {}


def _values(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in BOOKKEEPING}


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per run: identity (run, kind, data, init, objective, ablation, seed), budget,
    images seen, frozen fraction, then the last evaluation's metrics and the last training
    record's losses."""
    rows = []
    for name, path, cfg in _runs(Path(root)):
        records = read_jsonl(path / "metrics.jsonl")
        last_eval, last_train = _last(records, "eval"), _last(records, "train")
        rows.append({
            "run": name, "kind": cfg.get("kind"), "data": cfg.get("data"),
            "init": cfg.get("init"), "objective": cfg.get("objective"),
            "ablation": ablation_summary(cfg) if cfg.get("kind") == "student" else None,
            "seed": cfg.get("seed"), "budget": cfg.get("images"),
            "images_seen": max((r.get("images_seen", 0) for r in records), default=0),
            "eval_images_seen": last_eval.get("images_seen"),
            "frozen_fraction": cfg.get("frozen_fraction"),
            **_values(last_eval), **_values(last_train)})
    return pd.DataFrame(rows)


def learning_curves(root: str | Path) -> pd.DataFrame:
    """Every evaluation of every run in the shared long-form schema (`initprobe.schema`), plus
    `images_seen`, `step` and `label` columns (the class of a conditional run's per-class
    metric, else empty); a point logged twice (a run resumed after a crash between its
    evaluation and its checkpoint) keeps its last value."""
    rows = []
    for name, path, cfg in _runs(Path(root)):
        ident = {"run": name, "init": cfg.get("init"), "objective": cfg.get("objective"),
                 "seed": cfg.get("seed")}
        for r in read_jsonl(path / "metrics.jsonl"):
            if r.get("kind") == "eval":
                rows += [{**ident, "images_seen": r["images_seen"], "step": r["step"],
                          "metric": split_class(k)[0], "value": v, "label": split_class(k)[1]}
                         for k, v in _values(r).items()]
    if not rows:
        return pd.DataFrame(columns=[*COLUMNS, "images_seen", "step", "label"])
    df = frame(rows)
    df["label"] = df["label"].astype("Int64")
    return df.drop_duplicates(["run", "images_seen", "metric", "label"],
                              keep="last").reset_index(drop=True)
