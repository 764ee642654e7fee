"""The one-step trainer end to end on digits with a tiny teacher: run directory, resumption,
init records, generator maps, option errors."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from initprobe.ablate.select import select
from initprobe.cli import app, register_commands
from initprobe.diffusion import GeneratorMap
from initprobe.errors import UserError
from initprobe.nets.io import latest_checkpoint, load_generator, load_network
from initprobe.runio import read_jsonl
from initprobe.train import onestep
from initprobe.train.loop import Dist
from initprobe.train.onestep import OneStepConfig, train_onestep
from initprobe.train.teacher import TeacherConfig, train_teacher

BATCH = 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(TeacherConfig(images=640, batch=32, warmup_images=1, sample_steps=2,
                                log_every=10), str(out), device="cpu", progress=False)
    return str(out)


def config(teacher, n=4, **kw) -> OneStepConfig:
    """A config training `n` steps of batch BATCH without evaluation (`kw`: flat option names,
    as a study file or the CLI gives them)."""
    base = dict(teacher=teacher, images=n * BATCH, batch=BATCH, eval_n=0, log_every=2)
    return OneStepConfig.from_flat({**base, **kw})


def train(cfg, out):
    return train_onestep(cfg, str(out), device="cpu", progress=False)


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(out).with_suffix(".safetensors"))


def test_log_spaced_budgets_are_evaluated_and_a_resumed_run_extends_the_curve(teacher,
                                                                              tmp_path):
    out = tmp_path / "budgets"
    cfg = config(teacher, n=3, eval_n=12, eval_every=0, eval_at=[20, 40, 80],
                 eval_classifier_steps=20)
    train(cfg, out)
    seen = [r["images_seen"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert seen == [0, 2 * BATCH, 3 * BATCH]  # start, first step reaching 20 and 40, end
    train(dataclasses.replace(cfg, images=6 * BATCH), out)   # extend the run: the curve goes on
    seen = [r["images_seen"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert seen == [0, 2 * BATCH, 3 * BATCH, 5 * BATCH, 6 * BATCH]
    with pytest.raises(UserError, match="--eval-at"):
        onestep.resolve_config(config(teacher, eval_at=[0]))
    with pytest.raises(UserError, match="--eval-every"):
        onestep.resolve_config(config(teacher, eval_every=-1))


def test_gan_writes_the_run_directory_with_learning_curve(teacher, tmp_path):
    out = tmp_path / "gan"
    rec = train(config(teacher, n=6, eval_n=20, eval_every=3 * BATCH,
                       eval_classifier_steps=20), out)
    records = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["images_seen"] for r in evals] == [0, 3 * BATCH, 6 * BATCH]
    assert {"fd_classifier", "precision", "recall", "coverage", "classes_covered",
            "class_entropy"} <= set(evals[-1])
    assert rec == evals[-1]
    losses = [r for r in records if r["kind"] == "train"]
    assert losses[-1]["step"] == 6 and {"loss_g", "loss_d", "images_per_s"} <= set(losses[-1])
    assert (out / "samples" / "init.png").exists() and (out / "samples" / "final.png").exists()
    meta = json.loads(latest_checkpoint(out).with_suffix(".json").read_text())
    assert (meta["kind"], meta["objective"], meta["images_seen"], meta["precond"]) == \
        ("student", "gan", 6 * BATCH, "edm-eps")
    assert meta["init"][0]["op"] == "init"
    student = load_network(out)
    assert student.precond == "edm-eps"
    assert not torch.equal(student.model.dec["8x8_aux_conv"].weight,
                           load_network(teacher).model.dec["8x8_aux_conv"].weight)


def test_cd_trains(teacher, tmp_path):
    rec = train(config(teacher, objective="cd", distance="huber"),
                tmp_path / "cd")
    assert rec["kind"] == "train" and rec["loss_g"] > 0
    assert weights(tmp_path / "cd")["net.model.map_layer0.weight"].isfinite().all()


def test_resume_gives_the_weights_of_an_uninterrupted_run(teacher, tmp_path):
    kw = dict(r1_interval=3, ckpt_every=100)
    train(config(teacher, n=6, **kw), tmp_path / "whole")
    train(config(teacher, n=3, **kw), tmp_path / "halves")
    train(config(teacher, n=6, **kw), tmp_path / "halves")  # a longer budget resumes
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "halves")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(latest_checkpoint(tmp_path / "whole").with_suffix(".state.pt"))
    state_b = torch.load(latest_checkpoint(tmp_path / "halves").with_suffix(".state.pt"))
    for k, v in state_a["aux"]["modules"].items():
        assert torch.equal(v, state_b["aux"]["modules"][k]), k
    with pytest.raises(UserError, match="different config"):
        train(config(teacher, n=6, lr=1e-3, **kw), tmp_path / "halves")


def test_a_run_extended_past_a_budget_keeps_its_checkpoint_and_grid_there(teacher, tmp_path):
    kw = dict(eval_at=[2 * BATCH], ckpt_every=1)   # every step saved, old ones pruned
    train(config(teacher, n=2, **kw), tmp_path / "short")
    train(config(teacher, n=6, **kw), tmp_path / "long")
    kept = sorted(p.stem for p in (tmp_path / "long" / "checkpoints").glob("*.json"))
    assert kept == ["ckpt-0000002", "ckpt-0000005", "ckpt-0000006"]   # the budget's is kept
    short = load_file(latest_checkpoint(tmp_path / "short").with_suffix(".safetensors"))
    at = load_file(tmp_path / "long" / "checkpoints" / "ckpt-0000002.safetensors")
    assert short.keys() == at.keys() and all(torch.equal(short[k], at[k]) for k in short)
    assert (tmp_path / "long" / "samples" / onestep.budget_grid(2 * BATCH)).exists()


def test_config_records_init_ops_and_touched_layers(teacher, tmp_path):
    out = tmp_path / "ablate"
    train(config(teacher, n=2, reinit="decoder", freeze="gdd"), out)
    cfg = json.loads((out / "config.json").read_text())
    ops = {r["op"]: r for r in cfg["init_records"]}
    assert list(ops) == ["init", "reinit", "freeze"]
    net = load_network(teacher)
    assert ops["reinit"]["layers"] == select(net, "decoder")
    assert ops["freeze"]["layers"] == select(net, "gdd")
    assert (cfg["reinit"], cfg["freeze"], cfg["kind"]) == ("decoder", "gdd", "student")
    assert cfg["frozen_fraction"] == ops["freeze"]["fraction"] > 0.5
    # frozen layers keep their initial (here: teacher's) weights through training
    w = weights(out)
    conv = "model.enc.8x8_block0.conv0.weight"
    assert torch.equal(w[f"net.{conv}"], net.state_dict()[conv])


@pytest.mark.parametrize("kw", [dict(sigma_cond=2.0), dict(steps=2, sigma_mid=1.0)])
def test_other_generator_maps_run(teacher, tmp_path, kw):
    rec = train(config(teacher, n=2, **kw), tmp_path / "map")
    assert rec["step"] == 2
    assert json.loads((tmp_path / "map" / "config.json").read_text())["sigma_cond"] == \
        kw.get("sigma_cond", 80.0)
    net, gen_map = load_generator(tmp_path / "map")  # the checkpoint's map comes back with it
    assert gen_map == GeneratorMap(**kw) and load_generator(teacher).map == GeneratorMap()
    assert not hasattr(net, "generator_map")


@pytest.mark.parametrize("kw, match", [
    (dict(objective="nope"), "unknown objective 'nope'"),
    (dict(freeze="nosuchgroup"), "'nosuchgroup' matches no layer"),
    (dict(steps=3), "1 or 2"),
    (dict(transfer_layers="encoder"), "go together"),
    (dict(objective="cd", typo=1), "has no option typo"),
    (dict(objective="ratio", r1_gamma=1.0), "objective ratio has no option r1_gamma"),
    (dict(objective="cd", scales="many"), "scales='many' is not a valid int"),
])
def test_bad_options_are_user_errors(teacher, tmp_path, kw, match):
    with pytest.raises(UserError, match=match):
        train(config(teacher, **kw), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_batch_must_split_over_the_processes(teacher, tmp_path, monkeypatch):
    class TwoRanks(Dist):
        def __init__(self):
            super().__init__()
            self.world = 2

    monkeypatch.setattr(onestep, "Dist", TwoRanks)
    with pytest.raises(UserError, match="not divisible by the 2 processes"):
        train(config(teacher, batch=15), tmp_path / "bad")


def test_cli_train_and_ablate(teacher, tmp_path):
    register_commands()
    args = ["--teacher", teacher, "--images", "32", "--batch", "16", "--eval-n", "0",
            "--device", "cpu"]
    res = CliRunner().invoke(app, ["ablate", *args, "--reinit-layers", "head", "--option",
                                   "disc_channels=8", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["reinit"] == "head" and cfg["disc_channels"] == 8
    assert "divergence" not in cfg   # the options of other objectives are not the run's
    res = CliRunner().invoke(app, ["train", *args, "--objective", "ratio", "--r1-gamma", "1",
                                   "--out", str(tmp_path / "d")])
    assert res.exit_code != 0 and "no option r1_gamma" in str(res.exception)
    res = CliRunner().invoke(app, ["train", *args, "--objective", "bogus", "--out",
                                   str(tmp_path / "b")])
    assert res.exit_code != 0 and "unknown objective" in str(res.exception)
    res = CliRunner().invoke(app, ["train", *args, "--option", "novalue", "--out",
                                   str(tmp_path / "c")])
    assert res.exit_code != 0 and "KEY=VALUE" in str(res.exception)


@pytest.mark.parametrize("objective, expected", [("gan", 1e-4), ("ratio", 1e-3),
                                                  ("diffratio", 1e-3), ("dmd", 1e-4)])
def test_auxiliary_learning_rate_defaults_per_objective(teacher, objective, expected):
    cfg = onestep.resolve_config(config(teacher, objective=objective))
    assert cfg.lr_aux == expected
    assert onestep.resolve_config(config(teacher, objective=objective, lr_aux=5e-3)).lr_aux == 5e-3
