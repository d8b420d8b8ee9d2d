"""The one server of a state directory: ``<state_dir>/server.lock`` under an exclusive ``flock``.

A server's engine recovers the state directory as it starts (runs left running become interrupted) and
then counts every run it did not start as a dead process's; a second server on the same directory would
take the first one's live runs for interrupted ones and run them again. ``serve`` takes this lock before
anything of the directory is opened and holds it until it exits; the kernel releases it however the
process ends (``kill -9`` included), so a lock is never stale. The file holds the holder's pid, for the
refusal's message. CLI ``run``/``resume`` (per-run locks, ``_run_owners``) and the commands that only
read (``runs``, ``show``, ``status``, ``health``) do not take it: they run beside a server.

State owned: the lock file and the descriptor this process holds it by.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from codomyrmex_orchestration.errors import StateStoreError

__all__ = ["LOCK_FILE", "ServingLock", "serving_pid"]

LOCK_FILE = "server.lock"


class ServingLock:
    """Held by the process that serves ``state_dir``; a context manager.

    Raises (on entry):
        StateStoreError: another live process serves the directory (its pid named), or the directory
            or the lock file cannot be created.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> ServingLock:
        where = str(self.state_dir)
        try:
            # Private when we make it, as the store makes it (runs' data lives here).
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateStoreError(where, f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            holder = f"process {raw}" if raw.isdigit() else "another process"
            raise StateStoreError(
                where,
                f"already served by another server ({holder}); a state directory has one server at a "
                "time: stop that one, or give this server another state directory (--state-dir or "
                "CODOMYRMEX_STATE_DIR)",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no pid of a server that is gone left to read
            os.close(self._fd)
            self._fd = None


def serving_pid(state_dir: Path) -> int | None:
    """The pid of the live server of ``state_dir`` (``None``: none serves it, or its pid is unreadable;
    never raises)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode(errors="replace").strip()
            return int(raw) if raw.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
