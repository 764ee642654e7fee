"""Run directories -> tables: collect_runs, learning_curves and the `results` command."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.report.tables import collect_runs, learning_curves
from initprobe.runio import append_jsonl, atomic_write_json


def fake_run(path, evals, **cfg):
    atomic_write_json(path / "config.json", {"kind": "student", "images": 3000, "seed": 0,
                                             "objective": "gan", "init": "teacher",
                                             "sigma_cond": 80.0, "steps": 1, "sigma_mid": 2.0,
                                             "frozen_fraction": 0.0, **cfg})
    for step, fd in evals:
        append_jsonl(path / "metrics.jsonl", {"kind": "train", "step": step,
                                              "images_seen": step * 100, "loss_g": 1.0 / step})
        append_jsonl(path / "metrics.jsonl", {"kind": "eval", "step": step,
                                              "images_seen": step * 100, "fd_classifier": fd,
                                              "precision": 0.5})


def runs(tmp_path):
    fake_run(tmp_path / "a", [(10, 50.0), (20, 30.0)])
    fake_run(tmp_path / "sweep" / "b", [(10, 90.0)], init="random", seed=1, reinit="decoder",
             freeze="gdd", frozen_fraction=0.8, steps=2)
    with open(tmp_path / "sweep" / "b" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "step": 30, "images_se')  # a writer killed mid-line
    append_jsonl(tmp_path / "a" / "metrics.jsonl",  # a's last eval logged again after a resume
                 {"kind": "eval", "step": 20, "images_seen": 2000, "fd_classifier": 31.0,
                  "precision": 0.5})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    return tmp_path


pytestmark = pytest.mark.filterwarnings("ignore:.*damaged config")


def test_collect_runs(tmp_path):
    with pytest.warns(UserWarning, match="broken/config.json: damaged config"):
        df = collect_runs(runs(tmp_path)).set_index("run")
    assert sorted(df.index) == ["a", "sweep/b"]
    a, b = df.loc["a"], df.loc["sweep/b"]
    assert (a["init"], a["objective"], a["ablation"], a["images_seen"]) == \
        ("teacher", "gan", "none", 2000)
    assert a["fd_classifier"] == 31.0 and a["loss_g"] == 1 / 20
    assert b["init"] == "random" and b["seed"] == 1 and b["frozen_fraction"] == 0.8
    assert b["ablation"] == "reinit=decoder; freeze=gdd; two-step sigma_mid=2"
    assert b["fd_classifier"] == 90.0 and b["eval_images_seen"] == 1000


def test_learning_curves(tmp_path):
    df = learning_curves(runs(tmp_path))
    fd = df[df["metric"] == "fd_classifier"].sort_values(["run", "images_seen"])
    assert fd[["run", "images_seen", "value"]].values.tolist() == [
        ["a", 1000, 50.0], ["a", 2000, 31.0], ["sweep/b", 1000, 90.0]]
    assert list(df.columns[:12]) == ["run", "init", "objective", "seed", "layer", "side", "res",
                                     "block", "sublayer", "sigma", "metric", "value"]
    assert set(df["metric"]) == {"fd_classifier", "precision"}


def test_results_command_writes_csv_and_parquet(tmp_path):
    register_commands()
    root = runs(tmp_path / "runs")
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(app, ["results", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sweep/b" in result.output
    csv, parquet = pd.read_csv(out), pd.read_parquet(out.with_suffix(".parquet"))
    assert sorted(csv["run"]) == sorted(parquet["run"]) == ["a", "sweep/b"]
    curves = pd.read_csv(tmp_path / "table-curves.csv")
    assert len(curves) == 6
    empty = CliRunner().invoke(app, ["results", str(tmp_path / "runs" / "a" / "nothing")])
    assert empty.exit_code != 0 and "not a folder" in str(empty.exception)
    assert json.loads((root / "a" / "config.json").read_text())["kind"] == "student"
