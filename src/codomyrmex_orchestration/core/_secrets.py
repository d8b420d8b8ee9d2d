"""Workflow secrets: where ``{{secrets.NAME}}`` finds its value when a step starts, the environment
(``CODOMYRMEX_SECRET_NAME``) first, then the secrets file, a JSON object readable by its owner alone.

:class:`SecretSource` owns the last read of the file (re-read when the file changes), guarded by
``_lock``. Every value it hands out is registered with :mod:`codomyrmex_orchestration._redact` first, so
it is replaced by ``[secret:NAME]`` wherever it would be recorded, logged or returned.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from codomyrmex_orchestration._redact import MIN_NAMED_SECRET_LENGTH, SECRET_ENV_PREFIX, register_secret
from codomyrmex_orchestration.core.templating import SECRET_NAME_PATTERN, Reference
from codomyrmex_orchestration.errors import SecretsFileError, TemplateError

__all__ = ["SecretSource", "secret_names"]

_NAME_RE = re.compile(SECRET_NAME_PATTERN)
#: Secrets files larger than this are refused (a secrets file is a few lines).
_MAX_FILE_BYTES = 1 << 20


class SecretSource:
    """Secret values by name, from ``environ`` then ``file``.

    Args:
        file: the secrets file, ``{"NAME": "value", ...}`` (``None``: the environment alone). It need not
            exist; when it does, its permissions must give no access to group or others (``chmod 600``).
        environ: where ``CODOMYRMEX_SECRET_<NAME>`` is looked up at each step start (default: the
            process environment, read live).
    """

    def __init__(self, file: Path | str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.file = Path(file) if file is not None else None
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()  # guards _read
        # (the file's stat signature, its values) as last read; None before the first read.
        self._read: tuple[tuple[int, int, int, int], dict[str, str]] | None = None

    def get(self, name: str) -> str:
        """The value of secret ``name``, registered for redaction.

        Raises:
            TemplateError: the secret is set nowhere, or is too short to be redacted reliably (the
                message names where to set it, never a value).
            SecretsFileError: the secrets file is needed and refused (its mode, its content).
        """
        value = self._environ.get(SECRET_ENV_PREFIX + name)
        if value is None:
            value = self._file_values().get(name)
        if value is None:
            raise TemplateError(f"secrets.{name}", f"the secret is not set; {self._where(name)}")
        if len(value) < MIN_NAMED_SECRET_LENGTH:
            raise TemplateError(
                f"secrets.{name}",
                f"the secret is shorter than {MIN_NAMED_SECRET_LENGTH} characters, too short to be "
                "told apart from ordinary text when it is redacted from outputs and logs",
            )
        register_secret(value, name)
        return value

    def missing(self, names: Iterable[str]) -> list[str]:
        """The names among ``names`` set neither in the environment nor in the file (a file that is
        refused counts as empty here; a step that needs it fails with the reason). Values are not read
        out of the file into anything but this check."""
        wanted = sorted({n for n in names if SECRET_ENV_PREFIX + n not in self._environ})
        if not wanted:
            return []
        try:
            in_file = self._file_values()
        except SecretsFileError:
            in_file = {}
        return [n for n in wanted if n not in in_file]

    def _where(self, name: str) -> str:
        where = f"set the environment variable {SECRET_ENV_PREFIX}{name}"
        if self.file is None:
            return where + " (no secrets file is configured)"
        state = "" if self.file.is_file() else ", which does not exist yet"
        return f"{where} or add {json.dumps(name)} to the secrets file {self.file}{state} (mode 0600)"

    def _file_values(self) -> dict[str, str]:
        path = self.file
        if path is None:
            return {}
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SecretsFileError(str(path), f"cannot be read: {exc.strerror or exc}") from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)
        with self._lock:
            if self._read is not None and self._read[0] == signature:
                return self._read[1]
        values = _load(path, st)
        with self._lock:
            self._read = (signature, values)
        return values


def _load(path: Path, st: os.stat_result) -> dict[str, str]:
    where = str(path)
    if not stat.S_ISREG(st.st_mode):
        raise SecretsFileError(where, "is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecretsFileError(
            where,
            f"has mode {mode:04o}, readable by others than its owner; it must be 0600 "
            f"(run: chmod 600 {path}). Refused",
        )
    if st.st_size > _MAX_FILE_BYTES:
        raise SecretsFileError(where, f"is {st.st_size} bytes, more than the {_MAX_FILE_BYTES} accepted")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SecretsFileError(where, f"cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The position only: the text around it may be a secret.
        at = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise SecretsFileError(
            where, f'is not valid UTF-8 JSON{at}; write an object: {{"NAME": "value"}}'
        ) from None
    if not isinstance(data, dict):
        raise SecretsFileError(where, 'must hold a JSON object: {"NAME": "value", ...}')
    values: dict[str, str] = {}
    for key, value in data.items():
        if not _NAME_RE.fullmatch(key):
            raise SecretsFileError(
                where, f"the name {key[:40]!r} is not a secret name (letters, digits, '_'; not a digit first)"
            )
        if not isinstance(value, str):
            raise SecretsFileError(where, f"the value of {key!r} must be a string")
        values[key] = value
    return values


def secret_names(references: Iterable[Reference]) -> set[str]:
    """The secret names among template references."""
    return {str(r.attr) for r in references if r.root == "secrets"}
