"""Who may change the pod's state through the admin port (today: ``/prestop``).

Anyone who can reach ``/prestop`` can take the pod out of rotation. When a token is
configured, every caller presents it (``Authorization: Bearer <token>``, compared in
constant time), from any address; when ``admin.allow_from`` is set, the caller's address
must be in it. Loopback gets no exception unless ``admin.trust_loopback`` says so: in a
service mesh the pod's proxy delivers every inbound connection from loopback (Istio's
Envoy from 127.0.0.6). The ``exec`` preStop hook, ``sidecar prestop``, reads the token
from the same sources as ``sidecar run``. Probes and ``/metrics`` stay open: the kubelet
and Prometheus must not need a secret.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .addresses import Network, is_loopback, parse_networks, within
from .config import AdminConfig, read_token_file


@dataclass(frozen=True)
class Denial:
    """Why a request was refused: the HTTP status and a message for the caller."""

    status: int
    message: str


def load_token(config: AdminConfig) -> str:
    """Return the configured token (``admin.token`` or the file's contents), or ''.

    Raises ``ConfigError`` for a file that cannot be read or a weak token.
    """
    if config.token:
        return config.token
    if not config.token_file:
        return ""
    return read_token_file(config.token_file)


class AdminGuard:
    """Decide whether a caller may use a state-changing admin endpoint."""

    def __init__(self, token: str, allow_from: str, *, trust_loopback: bool = False) -> None:
        self._token = token.encode("utf-8")
        everyone, networks = parse_networks(allow_from)
        self._networks: tuple[Network, ...] | None = None if everyone or not networks else networks
        self._trust_loopback = trust_loopback
        #: Nothing is required of a caller: neither a token nor an allowed address.
        self.open = not self._token and self._networks is None

    @classmethod
    def from_config(cls, config: AdminConfig) -> AdminGuard:
        """The guard ``admin`` configures: its token (from any source), ``allow_from``
        and ``trust_loopback``."""
        return cls(load_token(config), config.allow_from, trust_loopback=config.trust_loopback)

    def check(self, peer: str | None, authorization: str | None) -> Denial | None:
        """Return ``None`` when the caller may proceed, else why not."""
        if self.open or (self._trust_loopback and is_loopback(peer)):
            return None
        if self._networks is not None and not within(peer, self._networks):
            return Denial(403, f"client {peer} is not in admin.allow_from")
        if self._token:
            scheme, _, presented = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode("utf-8"), self._token
            ):
                return Denial(401, "a valid 'Authorization: Bearer <admin token>' is required")
        return None
