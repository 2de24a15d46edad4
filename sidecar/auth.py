"""Who may change the pod's state through the admin port (today: ``/prestop``).

Anyone who can reach ``/prestop`` can take the pod out of rotation, so when a token or an
allow-list is configured, a caller must satisfy every configured rule: a bearer token
compared in constant time, and a client address inside ``admin.allow_from``. Loopback is
always allowed, because an ``exec`` preStop hook (``sidecar prestop``) runs inside the pod.
Probes and ``/metrics`` stay open: the kubelet and Prometheus must not need a secret.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from .addresses import Network, is_loopback, parse_networks, within
from .config import AdminConfig
from .errors import ConfigError


@dataclass(frozen=True)
class Denial:
    """Why a request was refused: the HTTP status and a message for the caller."""

    status: int
    message: str


def load_token(config: AdminConfig) -> str:
    """Return the configured token (``admin.token`` or the file's contents), or ''."""
    if config.token:
        return config.token
    if not config.token_file:
        return ""
    try:
        token = Path(config.token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            [f"admin.token_file: cannot read {config.token_file!r}: {exc.strerror or exc}"]
        ) from exc
    if not token:
        raise ConfigError([f"admin.token_file: {config.token_file!r} is empty"])
    return token


class AdminGuard:
    """Decide whether a caller may use a state-changing admin endpoint."""

    def __init__(self, token: str, allow_from: str) -> None:
        self._token = token.encode("utf-8")
        everyone, networks = parse_networks(allow_from)
        self._networks: tuple[Network, ...] | None = None if everyone or not networks else networks
        self.open = not self._token and self._networks is None

    def check(self, peer: str | None, authorization: str | None) -> Denial | None:
        """Return ``None`` when the caller may proceed, else why not."""
        if self.open or is_loopback(peer):
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
