"""The synchronous orchestration core. Never imports mcp or anyio (ruff TID251 enforces it)."""
