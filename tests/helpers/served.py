"""The real ``codomyrmex-orchestration serve`` in a subprocess on a free loopback port, with its stderr
captured to a file, and readings of its RSS and thread count from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"

#: The ``initialize`` request a hand-written client sends first (JSON-RPC, one object).
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs and close its pipes (a test's ``finally``)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@dataclass
class Served:
    base: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    state_dir: Path
    transport: str = "streamable-http"

    @property
    def url(self) -> str:
        """The MCP endpoint: ``/mcp``, or the event stream ``/sse`` on SSE."""
        return f"{self.base}/sse" if self.transport == "sse" else f"{self.base}/mcp"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def logs(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def _limit_files(limits: tuple[int, int]) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env["CODOMYRMEX_STATE_DIR"] = str(root / "state")
    env["CODOMYRMEX_CONFIG_DIR"] = str(root / "config")
    env["CODOMYRMEX_PROJECTS_DIR"] = str(root / "projects")
    env.update(extra or {})
    return env


@contextmanager
def served(
    root: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    token: str | None = None,
    startup_timeout: float = 30.0,
    open_files: tuple[int, int] | None = None,
    transport: str = "streamable-http",
) -> Iterator[Served]:
    """Run ``serve --transport <transport>`` on 127.0.0.1 until the block ends (then SIGTERM);
    ``open_files``: the process's (soft, hard) limit on open files from its start."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stderr_path = root / "server.stderr.log"
    command = [str(SCRIPT), "serve", "--transport", transport, "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=root,
            env=server_env(root, env or {}),
            preexec_fn=None if open_files is None else lambda: _limit_files(open_files),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {stderr_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            # Polling a port a subprocess is still opening: there is no event to wait on across processes.
            time.sleep(0.05)
        yield Served(
            base=base, proc=proc, stderr_path=stderr_path, state_dir=root / "state", transport=transport
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
