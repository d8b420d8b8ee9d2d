"""Secret redaction: which values are secrets and how they are replaced."""

from __future__ import annotations

import base64
import io
import json
import logging
from urllib.parse import quote, quote_plus

import httpx
import pytest

from codomyrmex_orchestration._redact import REDACTED, is_secret_name, redact, redact_text, register_secret
from codomyrmex_orchestration.core.actions._params import CappedBuffer
from codomyrmex_orchestration.logs import MAX_LIBRARY_MESSAGE, configure_logging


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


def test_a_secret_is_redacted_in_any_case_percent_encoded_and_escaped() -> None:
    secret = 'Pa55 w0rd/"é|Xy'
    register_secret(secret, "ODD")
    forms = [
        secret.lower(),  # a URL's host, as httpx shows it
        secret.upper(),
        quote(secret, safe=""),
        quote(secret),  # '/' kept
        quote_plus(secret),  # '+' for the space
        quote(secret, safe="").lower(),  # hex digits in lower case
        httpx.URL(f"http://h/{secret}").raw_path.decode()[1:],  # httpx's own choice of characters to encode
        json.dumps(secret)[1:-1],  # \" and \u00e9
        repr(secret)[1:-1],
    ]
    for form in forms:
        assert redact_text(f"<{form}>") == "<[secret:ODD]>", form


def test_a_secret_is_redacted_base64_encoded_at_any_offset_in_either_alphabet() -> None:
    secret = "b64-secret-value?>~"
    register_secret(secret, "B64")
    for prefix in (b"", b"u:", b"user:", b"users:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(prefix + secret.encode()).decode()
            shown = redact_text(encoded)
            assert "[secret:B64]" in shown, (prefix, encoded)
            # what is left are the few characters that also encode the neighbouring bytes
            assert len(shown) - len("[secret:B64]") <= len(encode(prefix).decode()) + 4


def test_a_part_of_a_secret_is_not_redacted_so_redaction_cannot_be_probed_a_prefix_at_a_time() -> None:
    # If "...Sup3" came back redacted and "...Sup4" did not, core.echo would disclose a secret one
    # guessed character after another; cuts redact before they cut instead (next test).
    secret = "prefix-probe-secret-1"
    register_secret(secret, "PROBE")
    for part in (secret[:-1], secret[1:], secret[:8], secret[5:12]):
        assert redact_text(f"x {part}") == f"x {part}"


def test_a_text_cut_to_a_size_never_shows_the_start_or_end_of_a_secret_across_the_cut() -> None:
    secret = "Xq9-Across-Value-42"
    register_secret(secret, "CUT")
    body = ('{"path": "/k/' + secret + '"}').encode()
    for limit in range(len(body)):
        for size in (1, 7, len(body)):  # however the stream arrives
            buffer = CappedBuffer(limit)
            for start in range(0, len(body), size):
                buffer.add(body[start : start + size])
            shown = buffer.text()
            assert len(buffer.head().encode()) <= limit
            assert buffer.dropped == len(body) - limit
            assert not any(secret[i : i + 4].lower() in shown.lower() for i in range(len(secret) - 3)), (
                limit,
                shown,
            )


def test_a_long_library_log_message_is_cut_after_redaction_so_no_part_of_a_secret_shows() -> None:
    # Library messages are cut (the SDK quotes refused headers whole); cutting first would leave the
    # start of a secret across the cut unrecognised, and shown.
    secret = "Qz7-Kw9-Pv3-Mn5-Xr1"
    register_secret(secret, "LOGCUT")
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    library = logging.getLogger("mcp.server.transport_security")
    for offset in range(MAX_LIBRARY_MESSAGE - 25, MAX_LIBRARY_MESSAGE + 5):  # the secret across the cut
        library.warning("Invalid Origin header: %s", "x" * offset + secret + "y" * 15000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 30
    for line in lines:
        assert line.endswith(" more characters)") and len(line) < MAX_LIBRARY_MESSAGE + 200, line[-80:]
        assert not any(secret[i : i + 4] in line for i in range(len(secret) - 3)), line[-80:]
