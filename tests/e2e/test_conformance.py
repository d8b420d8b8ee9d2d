"""The MCP conformance suite (``@modelcontextprotocol/conformance``, Node 22) against the installed console
script serving streamable HTTP on a free loopback port.

``make test`` installs the suite and Node 22 into ``.tools/`` first (``make conformance-tools``); run alone,
this test is skipped when they are missing, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "node_modules" / ".bin"
SUITE = TOOLS_BIN / "conformance"
SCRIPT = Path(sys.executable).parent / "codomyrmex-orchestration"

# The server scenarios this server must pass.
APPLY = {
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
    "logging-set-level",
    "completion-complete",
    "resources-subscribe",
    "resources-unsubscribe",
}

# The others call the suite's own fixture tools, resources and prompts (test_simple_text,
# test://static-text, test_simple_prompt, ...), which a real server does not have; their features are
# covered against this server's own tools and resources in tests/server/.
_FIXTURE_TOOLS = "calls the suite's fixture tool {!r}, which this server does not define"
_FIXTURE_RESOURCE = "reads the suite's fixture resource {!r}, which this server does not serve"
_FIXTURE_PROMPT = "gets the suite's fixture prompt {!r}, which this server does not define"
NOT_APPLICABLE = {
    "tools-call-simple-text": _FIXTURE_TOOLS.format("test_simple_text"),
    "tools-call-image": _FIXTURE_TOOLS.format("test_image_content") + " (and it returns no images)",
    "tools-call-audio": _FIXTURE_TOOLS.format("test_audio_content") + " (and it returns no audio)",
    "tools-call-embedded-resource": _FIXTURE_TOOLS.format("test_embedded_resource"),
    "tools-call-mixed-content": _FIXTURE_TOOLS.format("test_multiple_content_types"),
    "tools-call-with-logging": _FIXTURE_TOOLS.format("test_tool_with_logging")
    + "; run and step log messages: tests/server/test_protocol.py",
    "tools-call-error": _FIXTURE_TOOLS.format("test_error_handling")
    + "; isError results: tests/server/test_app_inprocess.py",
    "tools-call-with-progress": _FIXTURE_TOOLS.format("test_tool_with_progress")
    + "; progress of runs: tests/server/test_tools_core.py",
    "tools-call-sampling": _FIXTURE_TOOLS.format("test_sampling") + " (the server never samples)",
    "tools-call-elicitation": _FIXTURE_TOOLS.format("test_elicitation") + " (the server never elicits)",
    "elicitation-sep1034-defaults": _FIXTURE_TOOLS.format("test_elicitation_sep1034_defaults"),
    "elicitation-sep1330-enums": _FIXTURE_TOOLS.format("test_elicitation_sep1330_enums"),
    "resources-read-text": _FIXTURE_RESOURCE.format("test://static-text"),
    "resources-read-binary": _FIXTURE_RESOURCE.format("test://static-binary") + " (all of ours are JSON)",
    "resources-templates-read": _FIXTURE_RESOURCE.format("test://template/123/data"),
    "prompts-get-simple": _FIXTURE_PROMPT.format("test_simple_prompt"),
    "prompts-get-with-args": _FIXTURE_PROMPT.format("test_prompt_with_arguments"),
    "prompts-get-embedded-resource": _FIXTURE_PROMPT.format("test_prompt_with_embedded_resource"),
    "prompts-get-with-image": _FIXTURE_PROMPT.format("test_prompt_with_image"),
}


def _suite_env() -> dict[str, str]:
    # Node 22 (the .bin/node link to the node-<platform> package) first on PATH: the suite needs >= 22.
    return {**os.environ, "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def suite() -> Path:
    if not SUITE.exists():
        message = f"the conformance suite is not installed in {SUITE.parent}: run `make conformance-tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SUITE


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``serve --transport streamable-http`` on a free loopback port; its URL once it accepts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    env |= {
        "CODOMYRMEX_STATE_DIR": str(tmp_path / "state"),
        "CODOMYRMEX_CONFIG_DIR": str(tmp_path / "config"),
        "CODOMYRMEX_PROJECTS_DIR": str(tmp_path / "projects"),
    }
    args = [str(SCRIPT), "serve", "--transport", "streamable-http", "--host", "127.0.0.1"]
    args += ["--port", str(port)]
    with subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=tmp_path, env=env, text=True
    ) as proc:
        assert proc.stderr is not None
        log: list[str] = []
        for line in proc.stderr:
            log.append(line)
            if "Application startup complete" in line:
                break
        else:
            pytest.fail("the server exited before serving:\n" + "".join(log))
        # Keep reading its log so a chatty server never blocks on a full pipe.
        drain = threading.Thread(target=log.extend, args=(proc.stderr,), daemon=True)
        drain.start()
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, "".join(log)
            drain.join(timeout=30)


def _run_suite(url: str, out: Path) -> dict[str, list[dict[str, object]]]:
    """Run the active server scenarios once; the checks of each, by scenario name."""
    done = subprocess.run(
        [str(SUITE), "server", "--url", url, "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env=_suite_env(),
        timeout=300,
        check=False,
    )
    results: dict[str, list[dict[str, object]]] = {}
    for checks in out.glob("server-*/checks.json"):
        # Directories are server-<scenario>-<ISO timestamp>: the timestamp starts at the year.
        name = checks.parent.name.removeprefix("server-").rsplit("-", 6)[0]
        results[name] = json.loads(checks.read_text(encoding="utf-8"))
    assert results, f"the suite ran no scenario:\n{done.stdout}\n{done.stderr}"
    return results


def test_the_conformance_scenarios_that_apply_to_this_server_pass(
    suite: Path, served: str, tmp_path: Path
) -> None:
    results = _run_suite(served, tmp_path / "results")
    failed = {
        name: [c.get("errorMessage") for c in checks if c.get("status") != "SUCCESS"]
        for name, checks in results.items()
        if name in APPLY
    }
    assert {name: errors for name, errors in failed.items() if errors} == {}
    assert set(results) >= APPLY
    # Every scenario the suite runs is either one we pass or one listed here with its reason: a new
    # scenario in a later suite version needs a decision.
    assert set(results) - APPLY == set(NOT_APPLICABLE)
