"""File helpers shared by the project registry and the documentation generator."""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the process umask away


def atomic_write(path: Path, text: str, *, private: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old content or the new, never a half-written file.

    Args:
        path: the file to write.
        text: its new content, written as UTF-8.
        private: mode 0600 (state: the registry, manifests). ``False`` is for the person's project
            files: a file being replaced keeps its mode, a new one gets ``0o666`` less the umask, like
            any file an editor creates.

    Raises:
        UnicodeEncodeError: ``text`` is not valid UTF-8 (a lone surrogate); the reason names ``path``.
        OSError: the folder refuses the write.
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        exc.reason = f"{exc.reason} (writing {path})"
        raise
    if private:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        keep_mode = None
    else:
        try:
            current = path.stat()
        except FileNotFoundError:
            keep_mode = None
        else:
            keep_mode = stat.S_IMODE(current.st_mode) if stat.S_ISREG(current.st_mode) else None
        fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if keep_mode is not None:
                os.fchmod(handle.fileno(), keep_mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` created with mode 0666, so the umask applies (reading the
    umask would mean setting it, which races with every other thread creating files)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _NEW_FILE_MODE), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name next to {path}")
