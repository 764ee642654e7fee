"""The reproduction's tables: the shared long-form schema (`initprobe.schema`) plus `x`, and a
study folder's cache key that covers that layout."""

import math
from pathlib import Path

import pandas as pd
from mini_profile import STUDY, write_experiments

from initprobe.reproduce import measures
from initprobe.reproduce.config import digest, load_profile, load_study
from initprobe.reproduce.runner import cached_result, missing_measurements, study_dir
from initprobe.reproduce.workspace import Workspace
from initprobe.schema import COLUMNS

QUALITY_ONLY = STUDY.replace("[measure.cka]\nsigmas = [0.5]\n", "")


def test_a_main_table_has_the_shared_columns_then_x():
    t = measures.table(measures.rows("teacher-init", 1, {"fd_classifier": 2.5, "recall": 0.25})
                       + measures.rows("best-of-K", 0, {"fd_classifier": 7.0}, x=8))
    assert list(t.columns) == COLUMNS + ["x"] == measures.LAYOUT
    assert t["run"].tolist() == ["teacher-init", "teacher-init", "best-of-K"]
    assert t["metric"].tolist() == ["fd_classifier", "recall", "fd_classifier"]
    assert t["value"].tolist() == [2.5, 0.25, 7.0] and t["seed"].tolist() == [1, 1, 0]
    assert math.isnan(t["x"][0]) and t["x"][2] == 8
    assert t[["layer", "sigma", "init"]].isna().all().all()   # columns that do not apply
    empty = measures.table([])                                # a measurement with no rows
    assert list(empty.columns) == measures.LAYOUT and empty.empty


def _study(tmp_path: Path):
    folder = write_experiments(tmp_path / "exp", QUALITY_ONLY)
    profile = load_profile(folder, "mini")
    return Workspace(profile, tmp_path / "out", "cpu", log=lambda s: None), \
        load_study(folder / "c1_mini.toml", profile)


def test_the_study_folder_changes_with_the_table_layout(tmp_path, monkeypatch):
    ws, study = _study(tmp_path)
    current = study_dir(ws, study)
    assert study_dir(ws, study) == current                   # stable for one layout
    monkeypatch.setattr("initprobe.reproduce.runner.LAYOUT", ["group", "seed", "x", "metric",
                                                              "value"])
    assert study_dir(ws, study) != current


def test_tables_cached_in_the_layout_before_the_shared_schema_are_remeasured(tmp_path):
    ws, study = _study(tmp_path)
    # the folder the key without the layout named, holding a table in that layout
    old_key = {"study": study.key(), "profile": ws.profile.key()}
    old = ws.root / "studies" / f"{study.stem}-{digest(old_key)}"
    old.mkdir(parents=True)
    (old / "quality.csv").write_text("group,seed,x,metric,value\nteacher-init,0,,"
                                     "fd_classifier,3.0\n")
    assert study_dir(ws, study) != old
    assert missing_measurements(study, study_dir(ws, study)) == ["quality"]
    assert cached_result(ws, study) is None
    # a table in the current layout in the current folder is what a cached study reads
    new = study_dir(ws, study)
    new.mkdir(parents=True)
    table = measures.table(measures.rows("teacher-init", 0, {"fd_classifier": 3.0}))
    (new / "quality.csv").write_text(table.to_csv(index=False))
    result = cached_result(ws, study)
    assert list(result.tables["quality"].columns) == measures.LAYOUT
    pd.testing.assert_series_equal(result.tables["quality"]["value"], table["value"])
