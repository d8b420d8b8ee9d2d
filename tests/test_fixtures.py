"""The shared fixtures of ``tests/conftest.py`` do what they promise: a test that leaves a thread behind
fails, daemon or not, and every test starts with no process-wide engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from codomyrmex_orchestration import compose

HERE = Path(__file__).parent

SUITE = """
import threading

stop = threading.Event()


def test_a_daemon_left_running() -> None:
    threading.Thread(target=stop.wait, name="sneaky-daemon", daemon=True).start()


def test_a_thread_that_is_stopped() -> None:
    done = threading.Event()
    worker = threading.Thread(target=done.wait, name="tidy", daemon=True)
    worker.start()
    done.set()
"""


def test_a_test_that_leaves_a_daemon_thread_running_fails_naming_it(tmp_path: Path) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout
    assert "test leaked threads: ['sneaky-daemon']" in proc.stdout
    assert "2 passed, 1 error" in proc.stdout  # the error is the leak, at the first test's teardown


def test_the_process_wide_engine_is_reset_after_each_test_part_one(tmp_path: Path) -> None:
    from codomyrmex_orchestration.config import Settings

    compose.configure_engine(
        Settings(state_dir=tmp_path / "s", config_dir=tmp_path / "c", projects_dir=tmp_path / "p")
    )
    assert compose._engine is not None


def test_the_process_wide_engine_is_reset_after_each_test_part_two() -> None:
    assert compose._engine is None  # whatever ran before (pytest-randomly may reorder), none is left
