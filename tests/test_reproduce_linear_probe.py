"""The `linear_probe` measurement of `initprobe reproduce`: a miniature C11 study end to end."""

from pathlib import Path

import pandas as pd
from mini_profile import MINI_PROFILE
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.reproduce.measures import LAYOUT
from initprobe.schema import COLUMNS

STUDY = """
claim = "C11"
statement = "decodable features"
method = "linear probes"
report = ["probe_acc_init", "probe_acc_after", "probe_acc_kept"]
[profiles.mini]
images = 32
seeds = [0]
[runs.teacher-init]
objective = "gan"
[runs.random-init]
objective = "gan"
init = "random"
[runs.new-io]
objective = "gan"
reinit = "stem,head,embedding"
[measure.quality]
[measure.linear_probe]
sigmas = [0.1, 1.0]
n_images = 80
[[rules]]
type = "greater_than"
metric = "probe_acc_init"
a = "teacher-init"
b = "random-init"
[[rules]]
type = "greater_than"
metric = "probe_acc_kept"
a = "teacher-init"
b = 0.9
[[rules]]
type = "correlation"
groups = ["teacher-init", "random-init", "new-io"]
x_metric = "probe_acc_init"
y_metric = "fd_classifier"
sign = "negative"
"""


def test_a_miniature_linear_probe_study_runs_end_to_end(tmp_path: Path):
    register_commands()
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "profiles.toml").write_text(MINI_PROFILE)
    (exp / "c11_mini.toml").write_text(STUDY)
    fig = tmp_path / "fig"
    res = CliRunner().invoke(app, ["reproduce", "--profile", "mini", "--experiments", str(exp),
                                   "--out", str(tmp_path / "out"), "--figures", str(fig),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    study = next((tmp_path / "out" / "mini" / "studies").glob("c11_mini-*"))
    main = pd.read_csv(study / "linear_probe.csv")
    assert set(main["run"]) == {"teacher-init", "random-init", "new-io"}
    assert set(main["metric"]) == {"probe_acc_init", "probe_acc_after", "probe_acc_kept"}
    assert len(main) == 3 * 3 and main["value"].gt(0).all()
    wide = main.pivot_table(index=["run", "seed"], columns="metric", values="value")
    assert (wide["probe_acc_kept"] - wide["probe_acc_after"] / wide["probe_acc_init"]).abs().max() \
        < 1e-9
    for table in study.glob("*.csv"):   # every table in the shared schema, main ones + x
        columns = list(pd.read_csv(table).columns)
        assert columns[:len(COLUMNS)] == COLUMNS, table.name
        if table.stem in ("quality", "curves", "linear_probe"):
            assert columns == LAYOUT, table.name
    layers = pd.read_csv(study / "linear-probe-layers.csv")
    assert set(layers["run"]) == {"teacher-init", "teacher-init@init", "random-init",
                                  "random-init@init", "new-io", "new-io@init"}
    assert sorted(layers["sigma"].dropna().unique()) == [0.1, 1.0]
    for name in ("c11_mini-linear_probe.png", "c11_mini-linear_probe_layers.png"):
        assert (fig / name).exists(), name
    findings = pd.read_csv(fig / "findings.csv")
    findings = findings[findings["claim"] != "gate"]
    assert list(findings.drop_duplicates("rule")["claim"]) == ["C11"] * 3
    assert "probe_acc_kept" in (fig / "findings.md").read_text()
