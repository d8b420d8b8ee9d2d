"""Which process owns a running run: a lock file per run that its process holds while it runs it.

``<state_dir>/cli-runs/<run_id>.pid`` holds the owner's pid under an exclusive ``flock``. The kernel
drops the lock when the owner exits, however it exits, so a held lock means a live owner and a free one
a dead owner — no pid-reuse guesswork. The CLI's ``run`` and ``resume`` take it before the run is first
recorded (``run`` from the run's ``before_record`` hook), so no recovery ever sees their run unowned; runs
started by other processes (the MCP server) have no lock file. Taking the lock is also how a process
claims a run: ``resume`` takes it before it reads the run, so of two resumes of the same run exactly one
goes ahead (the other gets :class:`OwnedElsewhere`); an engine resuming a run for another caller (the
server's resume tool) holds the lock while it reads and starts the run (:class:`Claim`), so a CLI
``resume`` at the same moment cannot start it too. A sub-run resumed on its own is claimed under its
top-level run's lock as well (taken first): resuming that run would take the sub-run over in place, so
the two resumes exclude each other by the one lock both take. ``cancel`` signals the owner (SIGINT, which the
owner turns into a clean cancellation) and waits for the lock to be released. The store's start-up
marking (``SqliteStore.recover``) leaves alone the runs whose owner is alive.

State owned: the files of ``cli-runs/``; the set of them this process holds (``_held``, under
``_held_lock``: a second ``flock`` of a file from the process that holds it would fail as if another
process held it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codomyrmex_orchestration.core.models import RunRecord

__all__ = [
    "Claim",
    "OwnedElsewhere",
    "Owner",
    "RunOwnership",
    "held_here",
    "owner_alive",
    "owner_of",
    "top_run_id",
    "wait_released",
    "when_released",
    "with_top",
]

_DIR = "cli-runs"

_held_lock = threading.Lock()
_held: set[Path] = set()


def _path(state_dir: Path, run_id: str) -> Path:
    return state_dir / _DIR / f"{run_id}.pid"


@dataclass(frozen=True)
class Owner:
    """What the lock file says about a run: ``alive`` with ``pid``, or a stale/absent file."""

    exists: bool
    alive: bool
    pid: int | None


class OwnedElsewhere(Exception):
    """Another live process holds the run's lock (``pid`` when its file says)."""

    def __init__(self, run_id: str, pid: int | None) -> None:
        super().__init__(f"run {run_id} is held by process {pid if pid is not None else '(unknown)'}")
        self.run_id = run_id
        self.pid = pid


class RunOwnership:
    """Held by the process that runs ``run_id``; a context manager.

    Entering it raises :class:`OwnedElsewhere` when a live process holds the lock. ``keep_file``: leave
    the (unlocked) file behind on exit, so a dead CLI owner's run still reads as one.
    """

    def __init__(self, state_dir: Path, run_id: str, *, keep_file: bool = False) -> None:
        self.path = _path(state_dir, run_id)
        self.run_id = run_id
        self.keep_file = keep_file
        #: the file it locked holds the pid of an earlier owner that let go without removing it: a CLI
        #: process that is gone (read under the lock, so a file another claimant just made reads empty)
        self.left_behind = False
        self._fd: int | None = None

    def __enter__(self) -> RunOwnership:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raw = os.read(fd, 32).decode(errors="replace").strip()
                    raise OwnedElsewhere(self.run_id, int(raw) if raw.isdigit() else None) from None
                if not _still_linked(fd, self.path):
                    # The owner we waited on unlinked this file as it let go; another process may have
                    # created and locked a new one: lock what the path names now.
                    os.close(fd)
                    continue
                self.left_behind = bool(os.read(fd, 32).strip())
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            with _held_lock:
                _held.add(self.path)
            return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with _held_lock:
                _held.discard(self.path)
            if not self.keep_file:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            os.close(self._fd)
            self._fd = None


class Claim:
    """A hold on ``run_id``'s lock taken to start it again (a resume); a context manager.

    Until :meth:`started`, letting go leaves a dead owner's lock file as it was found, so a run that is
    not resumed after all still reads as one whose CLI process is gone. Entering it raises
    :class:`OwnedElsewhere` when a live process holds the lock.
    """

    def __init__(self, state_dir: Path, run_id: str) -> None:
        self._ownership = RunOwnership(state_dir, run_id)

    @property
    def stale(self) -> bool:
        """(Once entered) the lock file was there, left by a CLI owner that is gone."""
        return self._ownership.left_behind

    def __enter__(self) -> Claim:
        self._ownership.__enter__()
        self._ownership.keep_file = self._ownership.left_behind
        return self

    def started(self) -> None:
        """The run is this holder's now: its lock file goes when the hold is let go."""
        self._ownership.keep_file = False

    def __exit__(self, *exc: object) -> None:
        self._ownership.__exit__()


@contextlib.contextmanager
def with_top(state_dir: Path, run_id: str, top: str) -> Iterator[tuple[Claim, Claim | None]]:
    """Hold the claims a resume of ``run_id`` needs: first its top-level run's (``top``; none when it is
    one), since resuming that run takes its sub-runs over in place, then its own. Yields ``(its claim,
    the top-level run's)``.

    Raises:
        OwnedElsewhere: a live process holds one of the two; its ``run_id`` says which.
    """
    with contextlib.ExitStack() as held:
        top_claim = held.enter_context(Claim(state_dir, top)) if top != run_id else None
        yield held.enter_context(Claim(state_dir, run_id)), top_claim


def top_run_id(record: RunRecord, read: Callable[[str], RunRecord | None]) -> str:
    """The id of the top-level run of ``record`` (its own when it is one), following ``parent_run_id``
    through ``read`` (``None``: not recorded). Past a run trimmed by retention, the last one found; a
    loop in damaged records ends at the first run seen again. A run's ancestry never changes, so this may
    be read before any lock is taken."""
    seen = {record.run_id}
    while (up := record.parent_run_id) is not None and up not in seen:
        parent = read(up)
        if parent is None:
            break
        seen.add(up)
        record = parent
    return record.run_id


def held_here(state_dir: Path, run_id: str) -> bool:
    """This process holds ``run_id``'s lock (a CLI ``resume`` calling into its own engine)."""
    with _held_lock:
        return _path(state_dir, run_id) in _held


def _still_linked(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def owner_of(state_dir: Path, run_id: str) -> Owner:
    """Whether a CLI process holds ``run_id`` now (never raises)."""
    path = _path(state_dir, run_id)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return Owner(exists=False, alive=False, pid=None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode(errors="replace").strip()
            return Owner(exists=True, alive=True, pid=int(raw) if raw.isdigit() else None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return Owner(exists=True, alive=False, pid=None)
    finally:
        os.close(fd)


def owner_alive(state_dir: Path, run_id: str) -> bool:
    """A live process holds ``run_id``'s lock (never raises)."""
    return owner_of(state_dir, run_id).alive


def wait_released(state_dir: Path, run_id: str, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (``None``: no limit) for the owner of ``run_id`` to let go; True
    when it did."""
    released = threading.Event()
    when_released(state_dir, run_id, released.set)
    return released.wait(timeout)


def when_released(state_dir: Path, run_id: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once the owner of ``run_id`` lets go (at once, on the caller's thread, if there
    is no lock file): no caller's thread waits.

    A blocking ``flock`` on a helper thread, so the callback runs the moment the owner exits (no polling).
    """
    path = _path(state_dir, run_id)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        callback()
        return

    def block() -> None:
        # The helper closes the descriptor itself: a wait that timed out (a server's cancel) leaves no
        # descriptor behind once the owner lets go.
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass  # the lock cannot be waited on: report the owner as gone rather than wait forever
        finally:
            os.close(fd)
            callback()

    # Daemon: if the owner never lets go, the thread must not keep this process alive.
    waiter = threading.Thread(target=block, name="cli-owner-wait", daemon=True)
    waiter.start()
