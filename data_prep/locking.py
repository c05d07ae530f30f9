"""One writer per directory: an advisory lock that ``mmhsa prepare`` and ``mmhsa index`` hold while they write.

The lock is ``<directory>/.lock``, held with ``fcntl.flock`` for the life of the run, and holds who has it
(pid, host, command, start time) so that a second run can say whom it waits for. The kernel releases a
flock when its process dies, however it dies: a lock file left by a killed run is taken over (with a note
naming the old holder), never waited on. A run of several DDP processes is one writer: only its first
process (``LOCAL_RANK`` and ``NODE_RANK`` 0 or unset) takes the lock. On network file systems without
flock support the lock cannot be taken and the run says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["DirectoryLock", "LockHeld", "first_process"]

LOCK_FILE = ".lock"


class LockHeld(ValueError):
    """Another run is writing the directory (named, with its holder)."""


def first_process() -> bool:
    """Whether this is the first process of its run (DDP ranks share their run's lock)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class DirectoryLock:
    """``with DirectoryLock(directory, "mmhsa index"):`` the one writer of ``directory`` (created).

    Attributes:
        took_over: the previous holder's record when its lock file was left by a run that died, else None.

    Raises:
        LockHeld: another live run holds the lock (its pid, host, command and start time named).
    """

    def __init__(self, directory: str | Path, command: str):
        self.directory, self.command = Path(directory), command
        self.path = self.directory / LOCK_FILE
        self.took_over: dict | None = None
        self._file = None

    def __enter__(self) -> DirectoryLock:
        if not first_process():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(handle)
            handle.close()
            raise LockHeld(
                f"{self.directory} is being written by another run (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, `{holder.get('command', '?')}`, since {holder.get('started', '?')}); "
                "wait for it to finish, or stop it"
            ) from None
        except OSError as err:
            handle.close()
            raise LockHeld(
                f"{self.directory}: cannot take its lock ({err}); is it on a file system without locks?"
            ) from None
        self.took_over = _read(handle) or None
        if self.took_over:
            print(
                f"note: {self.directory}: taking over the lock of a run that ended without releasing it "
                f"(pid {self.took_over.get('pid', '?')} on {self.took_over.get('host', '?')})",
                file=sys.stderr,
            )
        handle.seek(0)
        handle.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        handle.write(json.dumps(record))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()  # an empty lock file: released cleanly
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _read(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {"pid": "unknown"}
