"""Secret redaction: which values are secrets and how they are replaced."""

from __future__ import annotations

import pytest

from codomyrmex_orchestration._redact import REDACTED, is_secret_name, redact, redact_text, register_secret


def test_secret_looking_environment_values_are_redacted_in_nested_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_API_KEY", "k-123456789")
    monkeypatch.setenv("HOME_DIR_NAME", "k-123456789x-not-secret")
    monkeypatch.setenv("DB_PASSWORD", "short")
    value = {"out": "key=k-123456789 end", "list": ["k-123456789", 3, None], "short": "short"}
    assert redact(value) == {"out": f"key={REDACTED} end", "list": [REDACTED, 3, None], "short": "short"}
    # a longer secret containing a shorter one is replaced whole, not left half-visible
    assert redact_text("k-123456789x-not-secret") == "k-123456789x-not-secret".replace(
        "k-123456789", REDACTED
    )


def test_a_registered_secret_is_redacted_and_names_are_classified() -> None:
    register_secret("tok-from-a-file-42")
    register_secret("")  # ignored, as are values too short to be secrets
    assert redact_text("Bearer tok-from-a-file-42") == f"Bearer {REDACTED}"
    assert all(is_secret_name(n) for n in ("CODOMYRMEX_AUTH_TOKEN", "aws_secret_access_key", "PGPASSWORD"))
    assert not any(is_secret_name(n) for n in ("PATH", "HOME", "LANG"))
    unchanged = {"a": [1, "b"]}
    assert redact(unchanged) == unchanged


def test_a_secret_variable_changed_between_calls_is_redacted_with_its_new_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVICE_PASSWORD", "short")
    assert redact_text("pw=longer-password-1") == "pw=longer-password-1"  # caches the current state
    monkeypatch.setenv("SERVICE_PASSWORD", "longer-password-1")  # same number of variables
    assert redact_text("pw=longer-password-1") == f"pw={REDACTED}"
    monkeypatch.delenv("SERVICE_PASSWORD")
    assert redact_text("pw=longer-password-1") == "pw=longer-password-1"
