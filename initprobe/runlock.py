"""One writer per run directory: `OUT/.lock`, held with `flock` and naming its holder.

The lock file holds `{"pid", "host", "started"}` of the process that writes the run. The kernel
releases a `flock` when its process dies, however it dies, so a lock file left by a killed
process is stale exactly when its `flock` can be taken: the next writer takes it over and says
so on stderr. A second live writer gets a `UserError` naming the holder. `release` removes the
file (and the folder, if the lock created it and nothing else was written); a writer that locked
a file another process removed meanwhile retries on the new one. `flock` is per host on network
file systems that do not forward it, which the recorded host lets a user see.
"""

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError
from .runio import write_errors

LOCK_NAME = ".lock"


def _holder(text: str) -> str:
    try:
        rec = json.loads(text)
        return f"pid {rec['pid']} on host {rec['host']} (since {rec['started']})"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "an unknown process (unreadable lock file)"


class RunLock:
    """An exclusive lock on run directory `path`; creates the directory if needed."""

    def __init__(self, path: str | os.PathLike):
        self.dir = Path(path)
        self.file = self.dir / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> "RunLock":
        with write_errors(self.dir, "exists and is not a folder; give --out a new or run "
                          "directory path", "give --out a writable location"):
            self.created = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    text = os.pread(fd, 4096, 0).decode(errors="replace")
                    os.close(fd)
                    raise UserError(f"{self.dir} is being written by {_holder(text)}; wait for "
                                    f"it to finish or stop it, or use another --out") from None
                if self._same_file(fd):
                    break
                os.close(fd)   # the holder we waited out removed this file: lock the new one
        previous = os.pread(fd, 4096, 0).decode(errors="replace")
        if previous.strip():
            print(f"note: {self.dir}: taking over the lock left by {_holder(previous)}, which "
                  f"is no longer running", file=sys.stderr)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.file))
        except FileNotFoundError:
            return False

    def release(self):
        if self.fd is None:
            return
        self.file.unlink(missing_ok=True)   # unlink while still holding, then unlock
        os.close(self.fd)
        self.fd = None
        if self.created and not any(self.dir.iterdir()):
            self.dir.rmdir()   # a run that failed before writing anything leaves nothing

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
