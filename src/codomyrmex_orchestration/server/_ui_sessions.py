"""The run view's sign-ins: each one's cookie names a session of its own, signed with a key derived from
the token, and a sign-out revokes that session (its cookie is refused from then on, after a restart too)."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from codomyrmex_orchestration.logs import get_logger

__all__ = ["MAX_REVOKED", "SESSION_MAX_AGE", "UiSessions"]

#: A sign-in's cookie is refused this long (seconds) after it was issued: 30 days.
SESSION_MAX_AGE = 30 * 24 * 3600
#: Sign-outs remembered at once (each until its cookie would have expired anyway). Past it, every cookie
#: issued so far is refused (everyone signs in again): memory stays bounded and no sign-out is forgotten.
MAX_REVOKED = 1000
log = get_logger("codomyrmex_orchestration.server")


class UiSessions:
    """Cookie values ``<issued>.<session id>.<HMAC>``: any server holding the token checks one without
    state; a signed-out session's id is kept (``_revoked``: id -> when its cookie expires anyway) with
    ``_not_before`` (cookies issued earlier are refused), both guarded by ``_lock`` and, with ``path``,
    written there whole on each sign-out.

    Args:
        key: the signing key (derived from the token: a new token refuses every cookie).
        path: where sign-outs are kept across restarts (None: in memory only).
        clock: wall-clock seconds (a seam for tests).
    """

    def __init__(
        self, key: bytes, *, path: Path | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._not_before = 0.0
        self._revoked: dict[str, float] = {}
        if path is not None:
            self._load(path)

    def issue(self) -> str:
        """A new session's cookie value."""
        with self._lock:
            issued = max(int(self._clock()), int(self._not_before))
        body = f"{issued}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac(body)}"

    def valid(self, value: str) -> bool:
        """True for a cookie this key signed, not expired, not signed out."""
        session = self._read(value)
        if session is None:
            return False
        issued, sid = session
        now = self._clock()
        with self._lock:
            return (
                self._not_before <= issued <= now + 60
                and now - issued < SESSION_MAX_AGE
                and (sid not in self._revoked)
            )

    def revoke(self, value: str) -> bool:
        """Sign ``value``'s session out; False when it was no valid cookie (nothing to revoke)."""
        session = self._read(value)
        if session is None:
            return False
        issued, sid = session
        now = self._clock()
        with self._lock:
            self._revoked = {s: until for s, until in self._revoked.items() if until > now}
            self._revoked[sid] = issued + SESSION_MAX_AGE
            if len(self._revoked) > MAX_REVOKED:
                self._not_before, self._revoked = float(int(now) + 1), {}
            self._save()
        return True

    def _read(self, value: str) -> tuple[int, str] | None:
        body, _, mac = value.rpartition(".")
        issued, _, sid = body.partition(".")
        if not (issued.isdigit() and sid and hmac.compare_digest(mac.encode(), self._mac(body).encode())):
            return None
        return int(issued), sid

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), sha256).hexdigest()

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._not_before = float(data["not_before"])
            self._revoked = {str(s): float(until) for s, until in dict(data["revoked"]).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # Which sessions were signed out is unknown: refuse every cookie issued before now.
            log.warning("ui.sign_outs_unreadable", path=str(path), error=str(exc))
            self._not_before, self._revoked = float(int(self._clock()) + 1), {}

    def _save(self) -> None:
        if self._path is None:
            return
        data = json.dumps({"not_before": self._not_before, "revoked": self._revoked})
        part = self._path.with_name(f".{self._path.name}.{os.getpid()}.part")
        try:
            part.write_text(data, encoding="utf-8")
            part.replace(self._path)
        except OSError as exc:  # still revoked in memory: say the restart would forget it
            log.warning("ui.sign_out_not_saved", path=str(self._path), error=str(exc))
            with contextlib.suppress(OSError):
                part.unlink()
