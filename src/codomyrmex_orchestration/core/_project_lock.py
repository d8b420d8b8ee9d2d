"""The writers of one projects root, in this process and in others: ``<root>/.projects.lock`` under an
exclusive ``flock``, held around each read-modify-write of a manifest and of the index.

A script beside the server (the Python API on the same folders) or a second server's start-up
updates the same ``project.json`` files; each re-reads the manifest under this lock and writes it back
before letting go, so neither writes over a change it did not see. A script that edits a manifest by
hand can take the same ``flock`` to join in.

State owned: the descriptor this manager holds the lock by and how deep its holder has re-entered
(both under the manager's ``threading.RLock``, which is taken first: a second ``flock`` of the file from
the same process would wait for itself).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE", "ProjectsLock"]

LOCK_FILE = ".projects.lock"


class ProjectsLock:
    """Re-entrant exclusion of the writers of ``root``; a context manager.

    Args:
        root: the projects root (the lock file is created in it).
        thread_lock: the manager's lock, taken first, so threads of one manager queue on it and only
            its outermost holder takes the ``flock``.
    """

    def __init__(self, root: Path, thread_lock: threading.RLock) -> None:
        self.path = root / LOCK_FILE
        self._thread_lock = thread_lock
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> ProjectsLock:
        self._thread_lock.acquire()
        if self._depth == 0:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except BaseException:
                self._thread_lock.release()
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # held for one update or one creation
            except BaseException:
                os.close(fd)
                self._thread_lock.release()
                raise
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)  # closing the only descriptor releases the flock
        finally:
            self._thread_lock.release()
