"""Run directories and atomic file writes.

Every file initprobe writes goes through `atomic_write_*`: the content is written to a temporary
file `.NAME.XXXX.tmp` in the same directory and renamed over the target, so an interrupted
process never leaves a half-written file (a run directory removes the orphaned temporary files
of a killed writer on its next start, `remove_orphans`). Written files get the mode an ordinary
`open` would give them (0666 less the umask). `metrics.jsonl` lines are appended with a single
`write` of a whole line. A target that cannot be written (a folder, a read-only place) raises a
`UserError` naming it.
"""

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")   # tempfile.mkstemp's names, as made below
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def write_errors(path: Path, not_folder: str, fix: str):
    """Writing at `path` inside this block: an OSError becomes a one-line UserError naming
    `path`, `not_folder` when a file stands where a folder is needed, otherwise the system's
    reason followed by `fix`."""
    try:
        yield
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{path}: {not_folder}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot write there ({e.strerror}); {fix}") from None


def _temp_for(path: Path) -> tuple[int, str]:
    """An open temporary file beside `path`, with the mode a plain `open` would create."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file path to write to")
    with write_errors(path, "a parent of it is a file, not a folder; give another path",
                      "give a writable location"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def _replace(tmp: str, path: Path):
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror}); give another path") from None


def writable_dir(path: str | os.PathLike) -> Path:
    """Check, before expensive work, that output folder `path` is, or can be created as, a
    writable folder (nothing is created); UserError naming the problem."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "exists and is not a folder" if probe == path else f"{probe} is a file"
        raise UserError(f"{path}: {what}; give --out a folder path")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UserError(f"{path}: cannot write in {probe} ({e.strerror}); give --out a "
                        f"writable location") from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save(path: str | os.PathLike, writer) -> None:
    """Atomically create `path` with `writer(tmp_path)`, for libraries that write by filename."""
    path = Path(path)
    fd, tmp = _temp_for(path)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)   # writers that re-create the file get the mode too
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; O_APPEND makes concurrent single-line writes safe."""
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a jsonl file, skipping a torn line left by a killed process; a line that is JSON
    but not an object is foreign content, a `UserError`."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    if not p.is_file():
        raise UserError(f"{p}: not a file; move it away (it should hold one JSON record per "
                        f"line)")
    for number, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            raise UserError(f"{p}: line {number} is not a JSON object; remove that line (every "
                            f"line is one record)")
        out.append(record)
    return out


def truncate_jsonl(path: str | os.PathLike, last_step: int | None) -> None:
    """Keep the records with `step <= last_step` (none when None): a run resumed from the
    checkpoint at `last_step` logs the later steps again."""
    p = Path(path)
    if not p.exists():
        return
    kept = [r for r in read_jsonl(p) if last_step is not None and r.get("step", 0) <= last_step]
    text = p.read_text(errors="replace")
    if len(kept) != len(text.splitlines()) or not text.endswith("\n"):  # dropped or torn lines
        atomic_write_text(p, "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                     for r in kept))


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes under `folder` (only safe while
    holding the folder's lock: another writer's are not orphans); returns what was removed."""
    removed = sorted(p for p in Path(folder).rglob(f".*{TMP_SUFFIX}")
                     if _TMP_NAME.fullmatch(p.name) and p.is_file())
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def atomic_save_npz(path: str | os.PathLike, **arrays) -> None:
    """Atomically write an uncompressed .npz (numpy would rename a temp file by name)."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_save(path, write)
