"""Which client addresses may use a local web service (the kiosk, the central's /metrics):
this machine's own loopback addresses always, others only inside the networks listed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The addresses a process on the same machine uses: always let in. Not all of 127.0.0.0/8,
# so a test can show a refused client from 127.0.0.2 without a network.
ALWAYS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def networks(specs: Iterable[str]) -> list[Network]:
    """The networks of an allow-list ("192.168.1.0/24", "10.0.0.7"); ValueError names a bad
    one."""
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip()))
        except ValueError as exc:
            raise ValueError(f"{spec!r}: {exc}") from None
    return out


def allowed(address: str | None, nets: Sequence[Network]) -> bool:
    """Whether a peer address is let in: loopback (127.0.0.1, ::1) or inside one of `nets`."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False  # a unix socket or anything that is not an address: not known
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip in ALWAYS or any(ip in net for net in nets)


__all__ = ["ALWAYS", "Network", "allowed", "networks"]
