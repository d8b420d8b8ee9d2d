"""server.json against the registry schema rules, the README's mcp-name line, and the Dockerfile's shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

import codomyrmex_orchestration
from codomyrmex_orchestration.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _server_json() -> dict[str, object]:
    return dict(json.loads((ROOT / "server.json").read_text()))


def test_server_json_satisfies_the_registry_schema() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "server.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(_server_json()), key=str)
    assert not errors, [e.message for e in errors]


def test_the_schema_rejects_what_the_registry_rejects() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "server.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    bad = _server_json()
    bad["name"] = "no-namespace"
    bad["description"] = "x" * 101
    assert {e.validator for e in validator.iter_errors(bad)} >= {"pattern", "maxLength"}


def test_server_json_matches_the_package_and_the_readme() -> None:
    data = _server_json()
    assert data["version"] == codomyrmex_orchestration.__version__
    package = data["packages"][0]  # type: ignore[index]
    assert package["identifier"] == "codomyrmex-orchestration"
    assert package["transport"] == {"type": "stdio"}
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^<!-- mcp-name: {re.escape(str(data['name']))} -->$", readme, re.MULTILINE)
    for variable in package["environmentVariables"]:
        field = variable["name"].removeprefix(ENV_PREFIX).lower()
        assert field in Settings.model_fields, variable["name"]


def test_the_dockerfile_serves_http_as_a_non_root_user_with_state_in_a_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.MULTILINE)
    assert re.search(r"^USER (?!root|0\b)\S+$", text, re.MULTILINE)
    assert "EXPOSE 8765" in text and 'VOLUME ["/data"]' in text
    assert "CODOMYRMEX_STATE_DIR=/data/" in text
    assert '"--transport", "streamable-http", "--host", "0.0.0.0"' in text
