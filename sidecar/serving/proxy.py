"""Proxy headers: who the client is and which scheme it used, when a trusted proxy says so.

``X-Forwarded-For``/``-Proto``/``-Host`` and RFC 7239 ``Forwarded`` are only believed when
the direct peer is a trusted proxy (``server.trusted_proxies``; none by default), since
anyone else could forge them. The hop list is walked from the nearest proxy outwards,
skipping hops that are themselves trusted proxies; the first untrusted hop is the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..addresses import parse_networks, within


@dataclass(frozen=True)
class Hop:
    """One proxy hop as a forwarding header describes it."""

    address: str
    port: int = 0
    proto: str | None = None
    host: str | None = None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _split_node(node: str) -> tuple[str, int]:
    """Split an RFC 7239 node (``1.2.3.4:80``, ``"[::1]:80"``, ``unknown``) into host, port."""
    node = _unquote(node)
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        host, port = node, ""
    return host, int(port) if port.isdigit() else 0


def parse_forwarded(values: Sequence[str]) -> list[Hop]:
    """Parse RFC 7239 ``Forwarded`` header values into hops, nearest proxy last."""
    hops = []
    for value in values:
        for element in value.split(","):
            params: dict[str, str] = {}
            for pair in element.split(";"):
                key, sep, raw = pair.partition("=")
                if sep:
                    params[key.strip().lower()] = _unquote(raw)
            if "for" in params:
                host, port = _split_node(params["for"])
                hops.append(Hop(host, port, params.get("proto"), params.get("host")))
    return hops


def parse_x_forwarded(
    forwarded_for: Sequence[str], proto: Sequence[str], host: Sequence[str]
) -> list[Hop]:
    """Turn ``X-Forwarded-*`` values into hops; proto and host belong to the client hop."""
    addresses = [a.strip() for value in forwarded_for for a in value.split(",") if a.strip()]
    protos = [p.strip() for value in proto for p in value.split(",") if p.strip()]
    hosts = [h.strip() for value in host for h in value.split(",") if h.strip()]
    hops = [Hop(*_split_node(address)) for address in addresses]
    if hops:
        # Proxies usually set one proto/host for the original request: the leftmost.
        first = hops[0]
        hops[0] = Hop(first.address, first.port, protos[0] if protos else None,
                      hosts[0] if hosts else None)  # fmt: skip
    elif protos or hosts:
        hops = [Hop("", 0, protos[0] if protos else None, hosts[0] if hosts else None)]
    return hops


class TrustedProxies:
    """Decide whether a peer is a trusted proxy, and resolve the real client through it."""

    def __init__(self, spec: str) -> None:
        self._everyone, self._networks = parse_networks(spec)
        self.enabled = self._everyone or bool(self._networks)

    def trusts(self, address: str) -> bool:
        return self._everyone or within(address, self._networks)

    def resolve(self, hops: Sequence[Hop]) -> Hop | None:
        """Return the client: the nearest hop that is not itself a trusted proxy.

        Its ``proto``/``host`` fall back to those given for the original request.
        """
        if not hops:
            return None
        client = hops[0]
        for hop in reversed(hops):
            if not self.trusts(hop.address):
                client = hop
                break
        first = hops[0]
        return Hop(
            client.address,
            client.port,
            client.proto if client.proto is not None else first.proto,
            client.host if client.host is not None else first.host,
        )
