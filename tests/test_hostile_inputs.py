"""Hostile inputs: every damaged file, impossible option or unwritable path is a one-line
`UserError` naming the problem, found before expensive work; a changed teacher is caught."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from initprobe.cli import app, register_commands
from initprobe.errors import UserError
from initprobe.measure.features import extractors
from initprobe.measure.features.extractors import weights_hash
from initprobe.nets.io import latest_checkpoint, load_network
from initprobe.train.onestep import OneStepConfig, train_onestep
from initprobe.train.teacher import TeacherConfig, train_teacher

register_commands()
TEACHER = dict(batch=32, warmup_images=1, sample_steps=2, log_every=1, ckpt_every=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(TeacherConfig(images=64, **TEACHER), out, progress=False)
    return out


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def copy_checkpoint(teacher: Path, tmp_path: Path, edit) -> Path:
    """A copy of the teacher's newest checkpoint whose json is `edit(meta)`."""
    src = latest_checkpoint(teacher)
    for suffix in (".safetensors", ".json"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"ckpt{suffix}")
    meta = json.loads(src.with_suffix(".json").read_text())
    (tmp_path / "ckpt.json").write_text(json.dumps(edit(meta)))
    return tmp_path / "ckpt.safetensors"


def fake_mnist(path: Path) -> Path:
    x = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def readonly_dir(tmp_path: Path) -> Path:
    """A folder nothing can be created in, or skip (root ignores permission bits)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    candidates = [ro] if os.geteuid() != 0 else [Path("/sys")]
    for c in candidates:
        try:
            (c / "initprobe-probe").mkdir()
        except OSError:
            return c
        (c / "initprobe-probe").rmdir()
    pytest.skip("no read-only folder available")


CHECKPOINT_EDITS = [
    (lambda m: [m], "a JSON list, expected an object"),
    (lambda m: {**m, "unet": None}, "'unet' is NoneType"),
    (lambda m: {**m, "unet": {**m["unet"], "model_channels": "sixteen"}},
     "unet.model_channels is 'sixteen'"),
    (lambda m: {**m, "unet": {**m["unet"], "width": 3}}, "unknown architecture field unet.width"),
    (lambda m: {**m, "precond": "magic"}, "unknown preconditioning 'magic'"),
    (lambda m: {k: v for k, v in m.items() if k != "unet"}, "no 'unet' architecture"),
]


@pytest.mark.parametrize("edit, message", CHECKPOINT_EDITS)
def test_damaged_checkpoint_json(teacher, tmp_path, edit, message):
    r = invoke("layers", copy_checkpoint(teacher, tmp_path, edit))
    assert isinstance(r.exception, UserError) and message in str(r.exception), r.output


def test_results_skips_a_config_that_is_not_an_object(teacher, tmp_path):
    shutil.copytree(teacher, tmp_path / "runs" / "good")
    (tmp_path / "runs" / "bad").mkdir()
    (tmp_path / "runs" / "bad" / "config.json").write_text('"a string"')
    with pytest.warns(UserWarning, match="bad/config.json: damaged config"):
        r = invoke("results", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    assert "good" in r.output and "bad" not in r.output.split("wrote")[0]


def test_damaged_run_files(teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(teacher, run)
    (run / "config.json").write_text("[1, 2]")
    r = invoke("train-teacher", "--images", 64, "--batch", 32, "--out", run)
    assert isinstance(r.exception, UserError) and "damaged config" in str(r.exception)
    shutil.copytree(teacher, tmp_path / "runs" / "t")
    with open(tmp_path / "runs" / "t" / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    r = invoke("results", tmp_path / "runs")
    assert isinstance(r.exception, UserError) and "is not a JSON object" in str(r.exception)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_training_state_is_refused_without_running_it(teacher, tmp_path,
                                                                monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(teacher, run)
    torch.save({"net": Payload()}, latest_checkpoint(run).with_suffix(".state.pt"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refused, it holds objects other than tensors") as e:
        train_teacher(TeacherConfig(images=32 * 4, **TEACHER), run, progress=False)
    assert "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned").exists()
    torch.save({"net": {}}, latest_checkpoint(run).with_suffix(".state.pt"))
    with pytest.raises(UserError, match="not a training state.*missing ema, opt, step"):
        train_teacher(TeacherConfig(images=32 * 4, **TEACHER), run, progress=False)


def test_training_state_of_another_network_or_a_folder_for_metrics(teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(teacher, run)
    state = latest_checkpoint(run).with_suffix(".state.pt")
    torch.save({"net": {"x": torch.zeros(1)}, "ema": {}, "opt": {}, "step": 2}, state)
    with pytest.raises(UserError, match="its net state does not fit this run"):
        train_teacher(TeacherConfig(images=32 * 4, **TEACHER), run, progress=False)
    state.unlink()
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    r = invoke("results", tmp_path)
    assert isinstance(r.exception, UserError) and "metrics.jsonl: not a file" in str(r.exception)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), "not a readable .npz file"),
    (lambda p: np.savez(p, x_train=np.array([object()] * 3), y_train=np.zeros(3),
                        x_test=np.zeros(1), y_test=np.zeros(1)), "unreadable arrays"),
    (lambda p: np.savez(p, x_train=np.array(["a"] * 3), y_train=np.zeros(3),
                        x_test=np.zeros(1), y_test=np.zeros(1)), "not numbers"),
    (lambda p: np.save(p.open("wb"), np.zeros(3)), "not an .npz archive"),
])
def test_damaged_npz(tmp_path, write, message):
    write(tmp_path / "d.npz")
    r = invoke("train-teacher", "--data", "mnist", "--data-path", tmp_path / "d.npz",
               "--out", tmp_path / "run")
    assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train-teacher", "train"])
def test_out_that_is_a_file_or_read_only(teacher, tmp_path, command):
    (tmp_path / "file").write_text("x")
    base = [command] + (["--teacher", teacher] if command == "train" else [])
    r = invoke(*base, "--images", 32, "--out", tmp_path / "file")
    assert isinstance(r.exception, UserError) and "is not a folder" in str(r.exception)
    assert (tmp_path / "file").read_text() == "x"
    r = invoke(*base, "--images", 32, "--out", readonly_dir(tmp_path) / "run")
    assert isinstance(r.exception, UserError) and "cannot write there" in str(r.exception)


def test_table_outputs_that_cannot_be_written(teacher, tmp_path):
    (tmp_path / "file").write_text("x")
    r = invoke("layers", teacher, "--csv", tmp_path / "file" / "t.csv")
    assert isinstance(r.exception, UserError) and "a parent of it is a file" in str(r.exception)
    r = invoke("layers", teacher, "--csv", readonly_dir(tmp_path) / "t.csv")
    assert isinstance(r.exception, UserError) and "cannot write there" in str(r.exception)
    runs = tmp_path / "runs"
    shutil.copytree(teacher, runs / "t")
    r = invoke("results", runs, "--out", tmp_path)
    assert isinstance(r.exception, UserError) and "is a folder" in str(r.exception)


@pytest.mark.parametrize("args, message", [
    (["train-teacher", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["train-teacher", "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["train-teacher", "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["train-teacher", "--size", "0"], "image side 0 must be positive"),
    (["train-teacher", "--size", "7"], "image side 7 is not divisible by 2^1"),
    (["train", "--teacher", "{t}", "--lr", "inf"], "--lr must be a finite number, got inf"),
    (["train", "--teacher", "{t}", "--sigma-cond", "inf"], "--sigma-cond must be a finite"),
    (["ablate", "--teacher", "{t}", "--freeze", "all"], "--freeze all leaves no trainable"),
    (["probe-activations", "{t}", "--n-images", "0"], "--n-images 0: give at least 1"),
])
def test_impossible_options(teacher, tmp_path, args, message):
    r = invoke(*[a.format(t=teacher) for a in args], "--out", tmp_path / "out")
    assert isinstance(r.exception, UserError) and message in str(r.exception), r.output
    assert not (tmp_path / "out").exists()


def test_larger_data_than_the_teacher_is_refused_before_any_work(teacher, tmp_path,
                                                                 monkeypatch):
    mnist = fake_mnist(tmp_path / "mnist.npz")
    r = invoke("train", "--teacher", teacher, "--data", "mnist", "--data-path", mnist,
               "--out", tmp_path / "run")
    assert isinstance(r.exception, UserError), r.output
    assert "mnist images are 32x32 but" in str(r.exception)
    assert "makes 8x8 images; use its dataset" in str(r.exception)
    assert not (tmp_path / "run").exists()

    def no_extractor(*a, **kw):
        raise AssertionError("the feature network was built before the shapes were checked")

    monkeypatch.setattr(extractors, "make_extractor", no_extractor)
    r = invoke("quality", teacher, "--data", "mnist", "--data-path", mnist, "--out",
               tmp_path / "q")
    assert isinstance(r.exception, UserError) and "use its dataset" in str(r.exception)


def test_profiles_toml_with_a_word_for_a_number(tmp_path):
    with pytest.raises(UserError, match="--images must be a finite number > 0, got 'lots'"):
        train_teacher(TeacherConfig(images="lots", **TEACHER), tmp_path / "run",
                      progress=False)


def main(capsys, *args) -> tuple[int, str]:
    """Run the command line as `python -m initprobe` does, in process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        app(args=[str(a) for a in args], prog_name="initprobe")
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["train-teacher", "--images", "abc", "--out", "x"], "Invalid value for '--images'"),
    (["train-teacher", "--no-such-option"], "No such option: --no-such-option"),
    (["layers"], "Missing argument 'checkpoint'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_parse_errors_are_one_line_exit_2(capsys, args, message):
    status, err = main(capsys, *args)
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "--help" in err


def test_the_entry_point_prints_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "initprobe", "train-teacher", "--images", "abc",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: Invalid value for '--images'")


def test_student_refuses_a_changed_teacher_unless_allowed(tmp_path):
    teacher = tmp_path / "teacher"
    train_teacher(TeacherConfig(images=64, **TEACHER), teacher, progress=False)
    student = tmp_path / "student"
    cfg = dict(teacher=str(teacher), images=2 * 16, batch=16, eval_n=0, log_every=1,
               ckpt_every=1)
    train_onestep(OneStepConfig(**cfg), str(student), progress=False)
    first = json.loads((student / "config.json").read_text())["teacher_hash"]
    assert first == weights_hash(load_network(teacher))
    train_teacher(TeacherConfig(images=96, **TEACHER), teacher, progress=False)   # extended
    second = weights_hash(load_network(teacher))
    assert second != first
    with pytest.raises(UserError, match=f"changed since .* trained from it .*{first} -> "
                                        f"{second}.*--allow-teacher-change"):
        train_onestep(OneStepConfig(**{**cfg, "images": 3 * 16}), str(student), progress=False)
    assert latest_checkpoint(student).name == "ckpt-0000002"   # nothing trained
    train_onestep(OneStepConfig(**{**cfg, "images": 3 * 16}), str(student), progress=False,
                  allow_teacher_change=True)
    recorded = json.loads((student / "config.json").read_text())
    assert recorded["teacher_hash"] == second
    assert recorded["teacher_changes"] == [{"step": 2, "from": first, "to": second}]
    assert latest_checkpoint(student).name == "ckpt-0000003"
    train_onestep(OneStepConfig(**{**cfg, "images": 4 * 16}), str(student), progress=False)
    assert latest_checkpoint(student).name == "ckpt-0000004"   # the recorded teacher resumes


def test_student_divergence_is_one_line_with_step_and_metric(teacher, tmp_path, capsys):
    status, err = main(capsys, "train", "--teacher", teacher, "--lr", "1e6", "--images", 16 * 10,
                       "--batch", 16, "--eval-n", 0, "--ckpt-every", 1, "--out", tmp_path / "s")
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("error: training diverged at step ")
    assert " is nan " in err or "weights are not finite" in err
    last = latest_checkpoint(tmp_path / "s")
    assert last is None or last.name in err


def test_divergence_with_evaluation_on_is_an_error_not_a_linalg_traceback(teacher, tmp_path):
    cfg = OneStepConfig(teacher=str(teacher), lr=1e3, images=32 * 8, batch=32, eval_n=20,
                        eval_every=64, eval_classifier_steps=20, ckpt_every=1, log_every=1)
    with pytest.raises(UserError, match=r"diverged at step [1-8]: (the EMA generator's samples "
                                        r"are not finite|\w+ is nan|\w+ is inf|the weights)"):
        train_onestep(cfg, str(tmp_path / "s"), progress=False)
