"""The synchronous orchestration core. Never imports mcp or anyio (ruff TID251 enforces it)."""

from codomyrmex_orchestration.logs import ensure_stderr_default

# The core's modules log through structlog directly: an unconfigured structlog writes to stdout (the
# stdio wire), so it points at stderr before any of them is imported.
ensure_stderr_default()
