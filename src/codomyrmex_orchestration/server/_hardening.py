"""Start-up refusals and warnings for weak network configuration: short or blank bearer tokens, and
code execution exposed beyond loopback. Owns no state."""

from __future__ import annotations

import ipaddress

from codomyrmex_orchestration.errors import InvalidInputError

__all__ = ["MIN_TOKEN_LENGTH", "check_token", "exposure_warning", "is_loopback"]

#: Fewest characters a bearer token may have (after stripping surrounding whitespace).
MIN_TOKEN_LENGTH = 16


def check_token(token: str, source: str) -> str:
    """``token`` stripped, when it is strong enough to guard a network server.

    Raises:
        InvalidInputError: the token is only whitespace or shorter than :data:`MIN_TOKEN_LENGTH`
            characters; the message names where it came from (``source``).
    """
    stripped = token.strip()
    if len(stripped) < MIN_TOKEN_LENGTH:
        what = "only whitespace" if not stripped else f"{len(stripped)} characters long"
        raise InvalidInputError(
            source,
            f"the bearer token is {what}; use at least {MIN_TOKEN_LENGTH} characters (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) in CODOMYRMEX_AUTH_TOKEN "
            "or the file given by --auth-token-file / CODOMYRMEX_AUTH_TOKEN_FILE",
        )
    return stripped


def exposure_warning(transport: str, host: str, code_execution: bool, loopback: bool) -> str | None:
    """The warning to print when code execution (shell.run, python.call) is enabled on a network
    transport bound beyond loopback, else ``None``."""
    if transport == "stdio" or not code_execution or loopback:
        return None
    return (
        f"CODE EXECUTION IS ENABLED ON A NETWORK ADDRESS ({host}): any client holding the bearer token can "
        "run shell commands and Python callables as this user (shell.run, python.call). Bind to 127.0.0.1, "
        "drop --allow-shell, or restrict python.call with CODOMYRMEX_PYTHON_CALL_ALLOW."
    )


def is_loopback(host: str) -> bool:
    """True for loopback hosts and bind addresses (127.0.0.0/8, ::1, localhost, bracketed or not)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
