"""http.request against a real local HTTP server running in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    StepCancelledError,
    StepFailedError,
    StepTimeoutError,
)
from tests.helpers.loopback_http import serving

REQUEST = create_registry(load_plugins=False).get("http", "request").func


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event
    slow_started: threading.Event


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length).decode() if length else ""
        if parts.path == "/json":
            payload = {
                "method": self.command,
                "query": parse_qs(parts.query),
                "body": received,
                "x_test": self.headers.get("X-Test"),
                "content_type": self.headers.get("Content-Type"),
            }
            self._send(200, json.dumps(payload).encode(), "application/json", {"X-Served-By": "test"})
        elif parts.path == "/text":
            self._send(200, "plain text é".encode(), "text/plain; charset=utf-8")
        elif parts.path == "/missing":
            self._send(404, b"not here", "text/plain")
        elif parts.path == "/problem":
            self._send(500, b'{"error": "exploded"}', "application/json")
        elif parts.path == "/big":
            self._send(200, b"a" * 5000, "text/plain")
        elif parts.path == "/redirect":
            self._send(302, b"", "text/plain", {"Location": "/text"})
        elif parts.path == "/slow":
            self.server.slow_started.set()
            self.server.release.wait(10)
            self._send(200, b"late", "text/plain")
        else:
            self._send(400, b"unknown path", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _route


@pytest.fixture(scope="module")
def httpd() -> Iterator[Server]:
    # One server for the module (shutdown costs a poll interval).
    with serving(Handler, name="test-http-server", server_class=Server) as httpd:
        httpd.release = threading.Event()
        httpd.slow_started = threading.Event()
        try:
            yield httpd
        finally:
            httpd.release.set()


@pytest.fixture
def server(httpd: Server) -> Iterator[str]:
    httpd.release.clear()
    httpd.slow_started.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()  # let a request a test abandoned finish


def request(params: dict[str, Any], ctx: ActionContext | None = None) -> Any:
    return REQUEST(params, ctx or ActionContext("call"))


def test_a_json_response_is_returned_parsed_with_status_and_headers(server: str) -> None:
    out = request({"url": f"{server}/json", "params": {"q": "x", "n": [1, 2]}, "headers": {"X-Test": "yes"}})
    assert out["status"] == 200
    assert out["headers"]["x-served-by"] == "test"
    assert out["json"]["query"] == {"q": ["x"], "n": ["1", "2"]}
    assert out["json"]["x_test"] == "yes"
    assert "text" not in out


def test_a_json_body_is_sent_as_json(server: str) -> None:
    out = request({"method": "post", "url": f"{server}/json", "json": {"a": [1, 2]}})
    assert out["json"]["method"] == "POST"
    assert json.loads(out["json"]["body"]) == {"a": [1, 2]}
    assert out["json"]["content_type"] == "application/json"


def test_a_string_body_is_sent_as_is(server: str) -> None:
    out = request({"method": "PUT", "url": f"{server}/json", "body": "raw text"})
    assert out["json"]["body"] == "raw text"


def test_a_text_response_is_returned_as_text(server: str) -> None:
    out = request({"url": f"{server}/text"})
    assert out["status"] == 200
    assert out["text"] == "plain text é"
    assert "json" not in out


def test_non_2xx_fails_the_step_naming_the_status(server: str) -> None:
    with pytest.raises(StepFailedError) as info:
        request({"url": f"{server}/missing"})
    assert "404" in str(info.value)
    assert "not here" in str(info.value)


def test_non_2xx_with_check_false_is_returned_as_output(server: str) -> None:
    assert request({"url": f"{server}/missing", "check": False})["status"] == 404
    problem = request({"url": f"{server}/problem", "check": False})
    assert problem["status"] == 500
    assert problem["json"] == {"error": "exploded"}


def test_redirects_are_followed_only_when_asked(server: str) -> None:
    assert request({"url": f"{server}/redirect", "check": False})["status"] == 302
    followed = request({"url": f"{server}/redirect", "follow_redirects": True})
    assert followed["status"] == 200
    assert followed["text"] == "plain text é"


def test_a_body_beyond_max_output_bytes_is_cut_and_marked(server: str) -> None:
    out = request({"url": f"{server}/big", "max_output_bytes": 100})
    assert out["text"].startswith("a" * 100 + "\n…[truncated")


def test_a_refused_connection_fails_the_step_with_the_error_type() -> None:
    with pytest.raises(StepFailedError) as info:
        request({"url": "http://127.0.0.1:9/", "timeout": 2})
    assert info.value.error_type == "ConnectError"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_internal_addresses_are_refused_when_block_private_addresses_is_set(server: str, host: str) -> None:
    port = server.rsplit(":", 1)[1]
    ctx = ActionContext("call", extras={"block_private_addresses": True})
    with pytest.raises(ActionRefusedError, match="internal addresses are blocked"):
        request({"url": f"http://{host}:{port}/json"}, ctx)


@pytest.mark.timeout(15)
def test_cancellation_ends_a_blocked_request_promptly(httpd: Server, server: str) -> None:
    ctx = ActionContext("call")
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            request({"url": f"{server}/slow"}, ctx)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt)
    worker.start()
    assert httpd.slow_started.wait(5)
    started = time.monotonic()
    ctx.cancel_event.set()
    worker.join(5)
    assert time.monotonic() - started < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], StepCancelledError)


def test_the_timeout_is_bounded_by_the_step_deadline(server: str) -> None:
    ctx = ActionContext("call", deadline=time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(StepTimeoutError):
        request({"url": f"{server}/slow", "timeout": 30}, ctx)
    assert time.monotonic() - started < 1.3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "parameters.url"),
        ({"url": "ftp://example.com/x"}, "parameters.url"),
        ({"url": "file:///etc/passwd"}, "parameters.url"),
        ({"url": "http://x", "method": "BREW"}, "parameters.method"),
        ({"url": "http://x", "json": {}, "body": "b"}, "parameters.body"),
        ({"url": "http://x", "headers": {"A": {"nested": 1}}}, "parameters.headers.A"),
        ({"url": "http://x", "params": {"q": {"nested": 1}}}, "parameters.params"),
        ({"url": "http://x", "timeout": 0}, "parameters.timeout"),
        ({"url": "http://x", "verb": "GET"}, "parameters.verb"),
    ],
)
def test_malformed_parameters_name_the_field(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        request(params)
    assert info.value.field == field
