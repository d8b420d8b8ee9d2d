"""Runs of the state directory that another process owns, as an engine that did not start them sees them.

A CLI ``run`` or ``resume`` holds its run's owner lock (``_run_owners``) for as long as it runs it, and
its sub-runs belong to it too. An engine asked to resume such a run (the server's resume tool) refuses,
naming the process; asked to cancel it, it asks that process to cancel the run, as
``codomyrmex-orchestration cancel`` does (SIGINT, which the CLI handles like Ctrl-C), and waits for it to
let go. A resume holds the run's lock while it reads and starts the run, so of a server's and a CLI's
resume of one run at the same moment exactly one starts it; a sub-run's resume holds its top-level run's
lock first, as the CLI's does, so it and a resume of that run (which takes the sub-run over in place)
never both run it.

State owned: none (the lock files are ``_run_owners``'; the records the store's).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from codomyrmex_orchestration.core._run_owners import (
    OwnedElsewhere,
    Owner,
    held_here,
    owner_of,
    top_run_id,
    wait_released,
    when_released,
    with_top,
)
from codomyrmex_orchestration.core.models import ItemWindow, RunRecord
from codomyrmex_orchestration.core.store import SqliteStore, StateStore
from codomyrmex_orchestration.errors import InvalidStateError

__all__ = ["ForeignRuns"]

_CANCEL = "codomyrmex-orchestration cancel"


def _process(pid: int | None) -> str:
    return f"CLI process {pid}" if pid is not None else "a CLI process (its pid is unreadable)"


class ForeignRuns:
    """What an engine may do with runs another process owns.

    Args:
        store: the runs' store; the ``cli-runs/`` locks are beside an SQLite store's file (a store in
            memory is this process's alone: no other process can own its runs).
        flush: commits what was saved to the store (a resume's first record, before its lock goes).
    """

    def __init__(self, store: StateStore, flush: Callable[[], None]) -> None:
        self.owners_dir: Path | None = store.path.parent if isinstance(store, SqliteStore) else None
        self._read = store.get_run
        # A run's ancestry (``parent_run_id``) is on its own row: read with no map item built (a restart
        # continuing a waiting run built all of its items for this read, then threw them away).
        self._ancestry = partial(store.get_run, items=ItemWindow(limit=0))
        self._flush = flush

    @contextmanager
    def resuming(self, run_id: str) -> Iterator[Callable[[], None]]:
        """Hold ``run_id``'s owner lock while the body reads and starts the run again (nothing to hold
        when this process holds it already: a CLI ``resume``). Yields ``started``, to call once the run
        has started: the run's lock file goes, and its record is committed first, so a CLI ``resume``
        that takes the lock next reads the run as running (and refuses it).

        Raises:
            InvalidStateError: a live CLI process runs ``run_id``, or the top-level run of it (the pid
                named, and what to do).
        """
        if self.owners_dir is None or held_here(self.owners_dir, run_id):
            yield lambda: None
            return
        record = self._ancestry(run_id)  # its ancestry only: that never changes
        top = top_run_id(record, self._ancestry) if record is not None else run_id
        # The top-level run's claim is held while the sub-run starts and let go as found: not its run.
        with ExitStack() as held:
            try:
                claim, _ = held.enter_context(with_top(self.owners_dir, run_id, top))
            except OwnedElsewhere as exc:
                if exc.run_id != run_id:
                    raise InvalidStateError(
                        "run",
                        run_id,
                        f"part of run {top}, which {_process(exc.pid)} runs",
                        f"wait for that run to end, or cancel it first ({_CANCEL} {top})",
                    ) from None
                raise InvalidStateError(
                    "run",
                    run_id,
                    f"running in {_process(exc.pid)}",
                    f"wait for it to end, or cancel it first ({_CANCEL} {run_id}, or cancel_workflow_run)",
                ) from None

            def started() -> None:
                claim.started()
                self._flush()

            yield started

    def cancel(self, record: RunRecord, timeout: float) -> RunRecord:
        """Cancel a run that no run of this engine is, as ``codomyrmex-orchestration cancel`` does: ask
        the CLI process that owns it (SIGINT, :meth:`ask_to_cancel`), wait up to ``timeout`` seconds for
        it to let go.

        Returns:
            The run's record once its owner let go (or as it stands after ``timeout``).
        """
        self.ask_to_cancel(record)
        assert self.owners_dir is not None  # asked: there is a lock file
        wait_released(self.owners_dir, record.run_id, timeout)
        return self._read(record.run_id) or record

    def on_let_go(self, record: RunRecord, callback: Callable[[RunRecord], None]) -> None:
        """Call ``callback(record)`` with the run's record once no process owns it any more (at once if
        none does); no thread of the caller waits for it."""
        run_id = record.run_id

        def released() -> None:
            callback(self._read(run_id) or record)

        if self.owners_dir is None:
            released()
        else:
            when_released(self.owners_dir, run_id, released)

    def ask_to_cancel(self, record: RunRecord) -> None:
        """Ask the CLI process that owns ``record``'s run to cancel it (SIGINT); :meth:`on_let_go` says
        when it has.

        Raises:
            InvalidStateError: the run ended, or no live process here or elsewhere runs it (resume it),
                or it is a sub-run of a CLI run (cancel that run), or the owner cannot be signalled.
        """
        run_id = record.run_id
        if record.status.is_terminal:
            raise InvalidStateError("run", run_id, record.status.value, "only a running run can be cancelled")
        top, owner = self._top_owner(record)
        if not owner.alive:
            gone = "by a CLI process that is gone" if owner.exists else "by a process that is gone"
            raise InvalidStateError(
                "run",
                run_id,
                f"marked {record.status.value} {gone}",
                "nothing runs it any more, so there is nothing to cancel; resume it to finish it",
            )
        if top != run_id:
            raise InvalidStateError(
                "run",
                run_id,
                f"part of run {top}, which {_process(owner.pid)} runs",
                f"cancel that run: {_CANCEL} {top} (or cancel_workflow_run on {top})",
            )
        if owner.pid is None:
            raise InvalidStateError(
                "run", run_id, f"running in {_process(None)}", f"cancel it there: {_CANCEL} {run_id}"
            )
        if owner.pid == os.getpid():  # this process holds the lock of a run it has not started yet
            raise InvalidStateError("run", run_id, "being started by this process", "cancel it once it runs")
        try:
            os.kill(owner.pid, signal.SIGINT)  # the CLI's Ctrl-C: it cancels the run cleanly, then exits
        except OSError as exc:
            raise InvalidStateError(
                "run",
                run_id,
                f"running in {_process(owner.pid)}",
                f"that process cannot be asked to cancel it from here ({exc.strerror or exc}); "
                f"cancel it as its user: {_CANCEL} {run_id}",
            ) from None

    def _top_owner(self, record: RunRecord) -> tuple[str, Owner]:
        """The top-level run of ``record`` (itself when it is one) and who holds its lock."""
        if self.owners_dir is None:
            return record.run_id, Owner(exists=False, alive=False, pid=None)
        top = top_run_id(record, self._ancestry)
        return top, owner_of(self.owners_dir, top)
