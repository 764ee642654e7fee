"""A reproduction's pending training as command lines, in stages, for an engine to execute.

`initprobe reproduce --plan FILE` writes the plan; `initprobe submit FILE` executes it through
submitit (`cluster`), on Slurm or locally; then `initprobe reproduce` with the same options finds
every run finished and does the study step as usual (measurements, figures, findings).

Format: one shell command per line, in stages; a stage starts with a line `# stage <name>` and
needs the stages above it done; the lines of one stage are independent of each other:
- `teachers`: each pending teacher (`--target teacher:<role>`); absent when none is pending;
- `gate`: the teacher's quality gate (`--target gate`), measured once and cached;
- `runs`: each pending run (`--target <run folder>`).
Every line is `<python> -m initprobe reproduce-one` with the reproduction's own options (paths
made absolute) and one target; `run_target` below is what it does. A student run enforces the
gate first (its cached numbers), so no student trains from a teacher below it.
"""

import shlex
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..runio import atomic_write_text
from .config import Study
from .gate import enforce, measure_gate
from .parallel import pending
from .workspace import StudyRuns, Workspace

STAGE = "# stage "
TEACHER, GATE = "teacher:", "gate"


def plan_stages(ws: Workspace, studies: list[Study], command: list[str]) -> dict[str, list[str]]:
    """Stage name -> command lines of the studies' pending work; `command` is the
    `reproduce-one` call without its `--target`."""
    if ws.checkpoint is not None:
        ws.ensure_teacher()     # a given checkpoint must exist before any line is written
    roles, runs = pending(ws, studies)

    def line(target: str) -> str:
        return shlex.join([*command, "--target", target])

    stages = {"teachers": [line(TEACHER + r) for r in roles if ws.teacher_pending(r)],
              "gate": [line(GATE)] if roles else [],
              "runs": [line(str(out)) for out in runs]}
    return {name: lines for name, lines in stages.items() if lines}


def write_plan(path: Path, stages: dict[str, list[str]]) -> None:
    text = "".join(f"{STAGE}{name}\n" + "".join(f"{ln}\n" for ln in lines)
                   for name, lines in stages.items())
    atomic_write_text(Path(path), text)


def read_plan(path: Path) -> list[tuple[str, list[str]]]:
    """The stages of a plan file, in order: (name, command lines)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such plan; write one with initprobe reproduce --plan "
                        f"{path}") from None
    stages: list[tuple[str, list[str]]] = []
    for k, raw in enumerate(text.splitlines(), 1):
        ln = raw.strip()
        if ln.startswith(STAGE):
            stages.append((ln[len(STAGE):].strip(), []))
        elif ln and not ln.startswith("#"):
            if not stages:
                raise UserError(f"{path}:{k}: a command before the first '{STAGE}<name>' "
                                f"line; write plans with initprobe reproduce --plan")
            stages[-1][1].append(ln)
    return stages


def run_target(ws: Workspace, studies: list[Study], target: str,
               log: Callable[[str], None] = print) -> None:
    """Do one plan line's work: train a teacher, measure the gate, or train one run."""
    if target.startswith(TEACHER):
        role = target[len(TEACHER):]
        if role not in ws.teacher_options:
            raise UserError(f"--target {target}: no such teacher; the profile has "
                            f"{', '.join(TEACHER + r for r in ws.teacher_options)}")
        ws.ensure_teacher(role)
        return
    gate = measure_gate(ws, ws.profile.gate)
    log("teacher gate: " + "; ".join(f"{c.name} {c.value:.3g} ({c.limit_text})"
                                     for c in gate.checks))
    enforce(gate, ws.profile.name)
    if target == GATE:
        return
    folder = Path(target).expanduser().resolve()
    matches = [(cfg.images, label, cfg) for study in studies
               for label, _, cfg in StudyRuns(ws, study).items()
               if ws.run_dir(cfg).resolve() == folder]
    if matches:   # a folder studies share at several budgets: trained to the largest
        _, label, cfg = max(matches, key=lambda m: m[0])
        ws.train(cfg, label)
        return
    raise UserError(f"--target {target}: not a run folder of profile {ws.profile.name} under "
                    f"{ws.root}; give teacher:main, gate, or a run folder from the plan")
