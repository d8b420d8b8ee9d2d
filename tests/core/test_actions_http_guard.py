"""http.request under the internal-address guard, against real loopback listeners and HTTP servers:
DNS rebinding, non-global ranges and their IPv6 forms, redirect hops, the allow-list."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from codomyrmex_orchestration.core.actions import ActionContext, create_registry
from codomyrmex_orchestration.errors import (
    ActionRefusedError,
    InvalidInputError,
    StepFailedError,
    StepTimeoutError,
)
from tests.helpers.loopback_http import serving

REQUEST = create_registry(load_plugins=False).get("http", "request").func
PUBLIC = "8.8.8.8"  # globally routable; in a sandbox the connection is refused at once


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _route(self) -> None:
        parts = urlsplit(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts.path == "/to":
            target = parse_qs(parts.query)["url"][0]
            status = int(parse_qs(parts.query).get("status", ["302"])[0])
            self.send_response(status)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = f"{self.command} host={self.headers.get('Host')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _route


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serving(Handler, name="test-http-origin") as httpd:
        yield f"127.0.0.1:{httpd.server_address[1]}"


class Listener:
    """A socket that listens but never accepts: any connection attempt lands in its backlog, where
    ``connections()`` finds it afterwards (no thread, no timing)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def loopback() -> Iterator[Listener]:
    listener = Listener("127.0.0.1")
    yield listener
    listener.sock.close()


def guarded(allow: tuple[str, ...] = ()) -> ActionContext:
    return ActionContext("call", extras={"block_private_addresses": True, "http_allow": allow})


def rebinding(name: str, answers: list[str]) -> Any:
    """A ``getaddrinfo`` that answers ``name`` with ``answers`` one look-up after another (the last one
    repeating) and every other name as the system does: a DNS server rebinding one name."""
    real = socket.getaddrinfo
    left = list(answers)

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        address = left.pop(0) if len(left) > 1 else left[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    return resolve


def test_a_name_rebinding_from_public_to_loopback_never_reaches_loopback(
    loopback: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _attempt in range(3):
        # The system resolver itself rebinds: whoever resolves the name a second time gets loopback.
        monkeypatch.setattr(socket, "getaddrinfo", rebinding("rebind.test", [PUBLIC, "127.0.0.1"]))
        with pytest.raises(
            (StepFailedError, StepTimeoutError)
        ):  # the public address refuses or is unreachable
            REQUEST({"url": f"http://rebind.test:{loopback.port}/latest/meta-data", "timeout": 2}, guarded())
    assert loopback.connections() == 0, "the request resolved the name again and connected to loopback"


def test_a_name_answering_public_and_loopback_at_once_is_refused(
    loopback: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def both(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "both.test":
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    with pytest.raises(ActionRefusedError, match=r"127\.0\.0\.1"):
        REQUEST({"url": f"http://both.test:{loopback.port}/", "timeout": 2}, guarded())
    assert loopback.connections() == 0


@pytest.mark.parametrize(
    "host",
    [
        "100.100.100.200",  # cloud metadata in the shared 100.64.0.0/10
        "100.64.0.1",
        "[2002:7f00:1::1]",  # 6to4 of 127.0.0.1
        "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
        "192.0.0.8",
        "198.18.0.1",
        "240.0.0.1",
        "224.0.1.1",  # multicast, though "global"
        "[fc00::1]",
        # Ranges Python 3.11's is_global calls global:
        "[::7f00:1]",  # IPv4-compatible form of 127.0.0.1 (::/96)
        "[::a9fe:a9fe]",  # IPv4-compatible form of 169.254.169.254
        "[::ffff:0:7f00:1]",  # IPv4-translated form of 127.0.0.1 (::ffff:0:0:0/96)
        "[64:ff9b:1::7f00:1]",  # local-use NAT64 (64:ff9b:1::/48), whatever it embeds
        "[64:ff9b:1::808:808]",
        "[3fff::1]",  # documentation (3fff::/20)
        "[5f00::1]",  # SRv6 SIDs (5f00::/16)
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused(host: str) -> None:
    with pytest.raises(ActionRefusedError, match="not a globally routable address"):
        REQUEST({"url": f"http://{host}:9/", "timeout": 2}, guarded())


@pytest.mark.parametrize(
    "host", [PUBLIC, "[2002:808:808::1]", "[64:ff9b::808:808]", "[::808:808]", "[::ffff:0:808:808]"]
)
def test_globally_routable_addresses_and_their_ipv6_forms_pass_the_guard(host: str) -> None:
    # Passing the guard means a connection is tried: refused or unreachable here, never ActionRefused.
    with pytest.raises((StepFailedError, StepTimeoutError)) as info:
        REQUEST({"url": f"http://{host}:9/", "timeout": 1}, guarded())
    assert not isinstance(info.value, ActionRefusedError)


def test_a_redirect_hop_to_an_internal_address_is_refused_before_connecting(origin: str) -> None:
    inner = Listener("127.0.0.2")
    try:
        target = f"http://127.0.0.2:{inner.port}/secret"
        with pytest.raises(ActionRefusedError, match=r"127\.0\.0\.2"):
            REQUEST(
                {"url": f"http://{origin}/to", "params": {"url": target}, "follow_redirects": True},
                guarded(allow=("127.0.0.1/32",)),
            )
        assert inner.connections() == 0
    finally:
        inner.sock.close()


def test_a_redirect_hop_that_rebinds_to_loopback_never_reaches_it(
    origin: str, loopback: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first hop is an allowed origin; its redirect names a host that rebinds public -> loopback.
    monkeypatch.setattr(socket, "getaddrinfo", rebinding("rebind.test", [PUBLIC, "127.0.0.1"]))
    target = f"http://rebind.test:{loopback.port}/"
    with pytest.raises((StepFailedError, StepTimeoutError)):
        REQUEST(
            {"url": f"http://{origin}/to", "params": {"url": target}, "follow_redirects": True, "timeout": 2},
            guarded(allow=("127.0.0.1/32",)),
        )
    assert loopback.connections() == 0


def test_the_allow_list_opens_chosen_internal_hosts_keeping_the_host_header(origin: str) -> None:
    port = origin.rsplit(":", 1)[1]
    by_name = REQUEST({"url": f"http://localhost:{port}/"}, guarded(allow=("LOCALHOST",)))
    assert by_name["text"].endswith(f"host=localhost:{port}")
    by_network = REQUEST({"url": f"http://{origin}/"}, guarded(allow=("127.0.0.0/8",)))
    assert by_network["text"] == f"GET host={origin}"
    with pytest.raises(ActionRefusedError):
        REQUEST({"url": f"http://{origin}/"}, guarded(allow=("10.0.0.0/8", "example.org")))


def test_guarded_redirects_follow_httpx_rules_hop_by_hop(origin: str) -> None:
    hop = f"http://{origin}/to?url=/landed&status=303"
    out = REQUEST(
        {"method": "POST", "url": hop, "json": {"a": 1}, "follow_redirects": True},
        guarded(allow=("127.0.0.1",)),
    )
    assert out["text"] == f"GET host={origin}"
    assert REQUEST({"url": hop, "check": False}, guarded(allow=("127.0.0.1",)))["status"] == 303


def test_a_malformed_allow_list_entry_is_named() -> None:
    with pytest.raises(InvalidInputError, match="http_allow"):
        REQUEST({"url": "http://example.org/"}, guarded(allow=("10.0.0.0/99",)))


def test_https_names_the_host_in_sni_while_connecting_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A TLS listener without a certificate: the handshake fails, but only after the ClientHello showed
    # which server name the client asks for (and so verifies the certificate against).
    import ssl

    seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sni_callback = lambda _sock, name, _ctx: seen.append(name)  # None: go on with the handshake
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(conn, server_side=True)
        conn.close()

    thread = threading.Thread(target=answer, name="test-tls-listener")
    thread.start()
    monkeypatch.setattr(socket, "getaddrinfo", rebinding("public.test", ["127.0.0.1"]))
    try:
        with pytest.raises(StepFailedError, match=r"https://public\.test"):
            REQUEST({"url": f"https://public.test:{port}/", "timeout": 5}, guarded(allow=("127.0.0.1/32",)))
    finally:
        thread.join(10)
        listener.close()
    assert seen == ["public.test"]
