"""The address guard of ``http.request``: which addresses a request may connect to, decided once per hop.

A host name is resolved here, once; the request then connects to the very address that was checked
(see ``http._pin``), so a name that answers a public address to the check and a loopback one to the
connection (DNS rebinding) never reaches the loopback one. Owns no state beyond its allow-list.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from codomyrmex_orchestration.errors import ActionRefusedError, InvalidInputError, StepFailedError

__all__ = ["AddressGuard", "embedded_ipv4", "is_forbidden"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IPv4-compatible (::a.b.c.d in ::/96, deprecated but still tunnelled by a kernel's sit0) and
# IPv4-translated (::ffff:0:a.b.c.d in ::ffff:0:0:0/96, RFC 2765): the low 32 bits are the IPv4 host.
# ``::`` and ``::1`` fall in the first and are judged as 0.0.0.0 and 0.0.0.1, both refused.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
# Special-purpose ranges (RFC 6890 and successors) refused whatever this Python's ``is_global`` says:
# older releases miss some (3.11 calls 192.0.0.8, 3fff::/20 and 5f00::/16 global). The local-use NAT64
# prefix 64:ff9b:1::/48 (RFC 8215) is refused whole: it is not globally reachable, and where its IPv4
# address sits depends on the prefix length each network chose inside it (RFC 6052).
_SPECIAL: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/127", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form carries (IPv4-mapped, IPv4-compatible, IPv4-translated,
    6to4, Teredo client, NAT64), else ``None``: such an address reaches that IPv4 host, so it is judged
    by it."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    if ip in _TEREDO and ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden(ip: IPAddress) -> bool:
    """True unless ``ip`` is globally routable unicast (``100.64.0.0/10``, private, loopback, link-local,
    reserved, multicast and their IPv6 transition forms are all forbidden)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_forbidden(inner)
    return (
        not ip.is_global or ip.is_multicast or any(ip in net for net in _SPECIAL if net.version == ip.version)
    )


def _address(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])


class AddressGuard:
    """Resolves a host once and says which address a request may connect to.

    Args:
        allow: host names (exact, case-insensitive) and IP addresses or CIDR networks that are let through
            although internal (the ``http_allow`` setting).
        resolver: ``getaddrinfo``-like; ``None`` looks up ``socket.getaddrinfo`` at each call.
    """

    def __init__(self, allow: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
        self._hosts: set[str] = set()
        self._networks: list[Network] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if "/" in entry:
                    raise InvalidInputError(
                        "http_allow", f"{entry!r} is neither a host name nor an IP network such as 10.0.0.0/8"
                    ) from None
                self._hosts.add(entry.lower().rstrip("."))
        self._resolver = resolver

    def allowed(self, ip: IPAddress) -> bool:
        return not is_forbidden(ip) or any(ip in net for net in self._networks if net.version == ip.version)

    def address_for(self, host: str, port: int) -> str:
        """The one address to connect to for ``host``: every address it resolves to must be allowed.

        Raises:
            ActionRefusedError: ``host`` is or resolves to an address that is not globally routable and
                not in the allow-list.
            StepFailedError: ``host`` cannot be resolved.
        """
        bare = host.strip("[]")
        try:
            literal: IPAddress | None = _address(bare)
        except ValueError:
            literal = None
        if literal is not None:
            self._check(host, literal)
            return str(literal)
        named = bare.lower().rstrip(".") in self._hosts
        resolver = self._resolver or socket.getaddrinfo
        try:
            infos = resolver(bare, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise StepFailedError(
                "http.request", f"cannot resolve host {host!r}: {exc}", error_type="ConnectError"
            ) from None
        addresses = [_address(str(info[4][0])) for info in infos]
        if not addresses:
            raise StepFailedError(
                "http.request", f"host {host!r} resolves to nothing", error_type="ConnectError"
            )
        if not named:
            for ip in addresses:
                self._check(host, ip)
        return str(addresses[0])

    def _check(self, host: str, ip: IPAddress) -> None:
        if self.allowed(ip):
            return
        raise ActionRefusedError(
            "http",
            "request",
            f"host {host!r} resolves to {ip}, which is not a globally routable address (loopback, private, "
            "link-local, shared 100.64.0.0/10, reserved, or a 6to4/Teredo/NAT64/IPv4-mapped, -compatible or "
            "-translated form of one), "
            "and requests to internal addresses are blocked on this server; an operator can open chosen "
            "targets with CODOMYRMEX_HTTP_ALLOW (host names or CIDRs)",
        )
