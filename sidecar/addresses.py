"""IP address lists from the config, the membership test proxies and auth need, and URLs."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[bool, tuple[Network, ...]]:
    """Parse ``"*"`` or comma-separated addresses/CIDRs; raise ``ValueError`` naming the bad one.

    Returns ``(everyone, networks)``.
    """
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if items == ["*"]:
        return True, ()
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(item) from None
    return False, tuple(networks)


def peer_address(text: str | None) -> Address | None:
    """Parse a peer address; an IPv4 peer seen on a dual-stack socket is unmapped.

    (``::ffff:10.1.2.3`` is the IPv4 client ``10.1.2.3``: lists and loopback checks written
    for IPv4 must match it.)
    """
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(text: str | None, networks: tuple[Network, ...]) -> bool:
    """Tell whether the address ``text`` lies in one of ``networks``."""
    address = peer_address(text)
    return address is not None and any(address in network for network in networks)


def is_loopback(text: str | None) -> bool:
    address = peer_address(text)
    return address is not None and address.is_loopback


def http_url(address: tuple[str, int] | None) -> str:
    """The ``http://`` URL of a bound ``(host, port)`` (IPv6 hosts in brackets), for logs."""
    if address is None:
        return "http://?"
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
