"""A real HTTP server on a free loopback port, in a daemon thread (the per-test leak check does not
count it; it is joined when the context ends)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

ServerT = TypeVar("ServerT", bound=ThreadingHTTPServer)


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    *,
    name: str,
    server_class: type[ServerT] = ThreadingHTTPServer,  # type: ignore[assignment]
) -> Iterator[ServerT]:
    """Serve ``handler`` on ``127.0.0.1`` (port ``server.server_address[1]``) until the block ends."""
    httpd = server_class(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
