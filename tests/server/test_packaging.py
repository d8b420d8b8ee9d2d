"""server.json against the published registry schema (vendored, see tests/data/SOURCES.md), its install
instructions against the README's, the Makefile's run targets, and the Dockerfile's shape."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import codomyrmex_orchestration
from codomyrmex_orchestration.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"


def _server_json() -> dict[str, Any]:
    return dict(json.loads((ROOT / "server.json").read_text()))


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads((ROOT / "tests" / "data" / "server.schema.2025-12-11.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_the_vendored_schema_is_the_2025_12_11_revision_server_json_names() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "server.schema.2025-12-11.json").read_text())
    assert schema["$id"] == SCHEMA_URL == _server_json()["$schema"]


def test_server_json_satisfies_the_published_registry_schema() -> None:
    errors = sorted(_validator().iter_errors(_server_json()), key=str)
    assert not errors, [e.message for e in errors]


def test_the_schema_rejects_what_the_registry_rejects() -> None:
    bad = _server_json()
    bad["name"] = "no-namespace"
    bad["description"] = "x" * 101
    bad["packages"][0]["version"] = "latest"
    del bad["packages"][0]["transport"]
    failed = {(tuple(e.absolute_path), e.validator) for e in _validator().iter_errors(bad)}
    assert {(("name",), "pattern"), (("description",), "maxLength")} <= failed
    assert (("packages", 0, "version"), "not") in failed
    assert (("packages", 0), "required") in failed


def test_server_json_installs_the_way_the_readme_says_works() -> None:
    data = _server_json()
    assert data["version"] == codomyrmex_orchestration.__version__
    package = data["packages"][0]
    assert package["identifier"] == "codomyrmex-orchestration"
    assert package["transport"] == {"type": "stdio"}
    # The command a client builds: runtimeHint, runtimeArguments, identifier, packageArguments.
    (from_arg,) = package["runtimeArguments"]
    command = [package["runtimeHint"], from_arg["name"], "/path/to/codomyrmex-orchestration"]
    command += [package["identifier"], *(a["value"] for a in package["packageArguments"])]
    readme = (ROOT / "README.md").read_text()
    assert " ".join(command) in readme
    assert re.search(rf"^<!-- mcp-name: {re.escape(str(data['name']))} -->$", readme, re.MULTILINE)
    for variable in package["environmentVariables"]:
        field = variable["name"].removeprefix(ENV_PREFIX).lower()
        assert field in Settings.model_fields, variable["name"]


def _make_n(*args: str, env: dict[str, str] | None = None) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CODOMYRMEX_")}
    result = subprocess.run(
        [make, "-n", "-B", "--no-print-directory", *args],
        cwd=ROOT,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_make_run_serves_from_a_venv_without_the_dev_or_dask_extras() -> None:
    commands = _make_n("run")
    install = [
        line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line
    ]
    assert install == [".venv-run/bin/python -m pip install --quiet -e ."]
    assert ".venv-run/bin/codomyrmex-orchestration serve --transport streamable-http" in commands
    assert "--port 8765" in commands


@pytest.mark.parametrize(("args", "env"), [(["PORT=9000"], {}), ([], {"CODOMYRMEX_PORT": "9000"})])
def test_make_run_takes_the_port_from_port_or_codomyrmex_port(args: list[str], env: dict[str, str]) -> None:
    serve = [line for line in _make_n("run", *args, env=env).splitlines() if " serve " in line]
    assert serve and serve[0].endswith("--port 9000")


def test_the_dockerfile_serves_http_as_a_non_root_user_with_state_in_a_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r"^USER (?!root|0\b)\S+$", text, re.MULTILINE)
    assert "EXPOSE 8765" in text and 'VOLUME ["/data"]' in text
    assert "CODOMYRMEX_DATA_DIR=/data " in text
    assert '"--transport", "streamable-http", "--host", "0.0.0.0"' in text


def test_the_docker_build_context_is_what_the_dockerfile_copies_and_the_build_needs() -> None:
    # Without a .dockerignore the context held .venv, .tools (236 MB) and .git.
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            copied |= {source.rstrip("/") for source in sources}
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything out, then only what is copied back in
    assert {p.removeprefix("!").rstrip("/") for p in ignore if p.startswith("!")} == copied
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {project["readme"], *project["license-files"], "pyproject.toml", "src"} <= copied
    assert all((ROOT / path).exists() for path in copied)


def test_the_wheel_and_the_sdist_ship_the_licence_and_the_py_typed_marker(tmp_path: Path) -> None:
    # METADATA said MIT with no licence text anywhere, and downstream mypy found no py.typed marker.
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed (pip install -e '.[dev]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    done = subprocess.run(
        [uv, "build", "--quiet", "--python", sys.executable, "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    (sdist,) = tmp_path.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        headers = archive.read(metadata).decode()
        licence = archive.read(next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))).decode()
    assert "codomyrmex_orchestration/py.typed" in names
    assert "License-Expression: MIT" in headers and "License-File: LICENSE" in headers
    assert licence == (ROOT / "LICENSE").read_text() and licence.startswith("MIT License")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        shipped = {name.removeprefix(top + "/") for name in archive.getnames()}
    assert {"LICENSE", "src/codomyrmex_orchestration/py.typed"} <= shipped


def test_the_package_says_it_runs_on_linux_and_macos_only_as_its_code_requires() -> None:
    # The README gave a %LOCALAPPDATA% path and pyproject kept uvloop off win32, yet fcntl and resource
    # (POSIX only) are imported at module top: Windows could never start it.
    posix_only = [
        path.name
        for path in (ROOT / "src").rglob("*.py")
        if re.search(r"^import (fcntl|resource)$", path.read_text(), re.MULTILINE)
    ]
    assert posix_only
    readme = (ROOT / "README.md").read_text()
    assert "It runs on Linux and macOS (POSIX only" in readme and "%LOCALAPPDATA%" not in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"Operating System :: POSIX :: Linux", "Operating System :: MacOS"} <= set(project["classifiers"])
    assert not [c for c in project["classifiers"] if "Windows" in c]
    assert not [d for d in project["dependencies"] if "win32" in d]
