"""Shared fixtures: a fresh state directory, fresh singletons and logging after each test, and a check
that tests leave no threads behind."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Unset paths default to the per-user data directory: point it (and XDG's, for subprocesses that
    drop CODOMYRMEX_* variables) at a temporary folder, so no test reads or writes the real one; the same
    for the per-user cache directory (the server's cached tool definitions)."""
    root = tmp_path_factory.mktemp("user-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(root / "xdg"))
        patch.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        patch.setenv("CODOMYRMEX_DATA_DIR", str(root / "codomyrmex"))
        yield


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


#: Threads that are shared on purpose across tests and outlive any one of them, by a part of their name:
#: the session-scoped Dask LocalCluster (``dask_client`` below) starts its event loop, profiler, comm
#: and worker threads in whichever test first asks for it (worker threads are named like
#: ``0-Dask-Default-Threads-8738-0``).
SHARED_THREAD_NAMES = (
    "Dask-",  # the cluster's in-process worker, offload and callback threads
    "IO loop",  # distributed's event loop thread (LoopRunner)
    "Profile",  # distributed's profiler
    "TCP-Executor",  # distributed's comm executor
)


def _shared(thread: threading.Thread) -> bool:
    return any(part in thread.name for part in SHARED_THREAD_NAMES)


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves threads running, daemon or not (every thread the package starts is a
    daemon, so checking only non-daemon threads checked nothing). Threads get 5 s to finish."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not _shared(t)]
    deadline = time.monotonic() + 5
    for t in leaked:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    still = sorted(t.name for t in leaked if t.is_alive())
    assert not still, f"test leaked threads: {still}"


@pytest.fixture(autouse=True)
def _fresh_singletons(_no_thread_leaks: None) -> Iterator[None]:
    """After each test: shut the process-wide engine down and put logging back as the package left it
    at import (structlog to stderr, stdlib root handlers as they were). Torn down before the leak
    check, so the engine's threads are gone when it looks."""
    root = logging.getLogger()
    handlers, level = set(root.handlers), root.level
    yield
    from codomyrmex_orchestration.compose import reset_engine
    from codomyrmex_orchestration.logs import ensure_stderr_default

    reset_engine()
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    ensure_stderr_default()
    # configure_logging() replaces the root handlers with its own: drop those it added (pytest's
    # capture handlers come and go with each phase and are pytest's to manage) and restore the level.
    for handler in [h for h in root.handlers if h not in handlers and type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    root.setLevel(level)


# --------------------------------------------------------------------------- execution backends
# The scheduler's and workflows' contract tests run once per backend (as CPython's concurrent.futures
# tests run once per executor): request ``make_backend`` and build each orchestrator with it.

BACKENDS = ("local", "dask")
DASK_MISSING = "the dask extra is not installed (pip install -e '.[dev,dask]'; make test installs it)"


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """One in-process LocalCluster (2 workers x 2 threads) shared by every dask-backend test."""
    distributed = pytest.importorskip("distributed", reason=DASK_MISSING)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=False,
        dashboard_address="127.0.0.1:0",  # Dask serves HTTP anyway; never the shared 8787
        resources={"GPU": 1},
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(params=BACKENDS)
def make_backend(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """A factory of fresh backends of one kind; a DaskBackend shares the session's cluster.

    Actions of the ``test`` module close over test state, which cannot travel to a worker: they stay on
    local threads (``local_actions``), while every built-in action goes to the cluster.
    """
    from codomyrmex_orchestration.core.backends import LocalBackend

    if request.param == "local":
        return lambda **kwargs: LocalBackend()
    client = request.getfixturevalue("dask_client")
    from codomyrmex_orchestration.core.backends.dask import DaskBackend

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("local_actions", {"workflow.run", "test.*"})
        return DaskBackend(client=client, **kwargs)

    return make
