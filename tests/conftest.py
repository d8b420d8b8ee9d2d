"""Shared fixtures: a fresh state directory and a check that tests leave no threads behind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Unset paths default to the per-user data directory: point it (and XDG's, for subprocesses that
    drop CODOMYRMEX_* variables) at a temporary folder, so no test reads or writes the real one."""
    root = tmp_path_factory.mktemp("user-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(root / "xdg"))
        patch.setenv("CODOMYRMEX_DATA_DIR", str(root / "codomyrmex"))
        yield


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running (daemon workers are shut down by owners)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads: {still}"


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
