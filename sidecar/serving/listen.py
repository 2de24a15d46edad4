"""Bind the app port: a TCP address, a Unix domain socket, or a socket handed down.

``server.host``/``server.port`` is the default; ``server.uds`` listens on a Unix domain
socket instead and ``server.fd`` on a socket its parent bound (a supervisor of workers,
systemd, a process manager). TLS wraps any of them when ``server.tls_certfile`` is set.
Every failure is a ``BindError`` (or a ``ConfigError`` for the certificate) that names
the key and what the operating system said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Callable
from typing import NamedTuple

from ..addresses import http_url
from ..config import ServerConfig
from ..errors import BindError, ConfigError

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class Listener(NamedTuple):
    server: asyncio.AbstractServer
    #: The bound TCP ``(host, port)``; ``None`` on a Unix domain socket.
    address: tuple[str, int] | None
    #: Where it listens, for people: ``http://host:port`` or ``unix:path``.
    url: str


async def listen(config: ServerConfig, factory: ProtocolFactory) -> Listener:
    """Listen on the configured app port; raise ``BindError`` when that is impossible."""
    tls = tls_context(config)
    if config.uds:
        return await _unix(config, factory, tls)
    if config.fd >= 0:
        return await _inherited(config, factory, tls)
    return await _tcp(config, factory, tls)


def remove_socket_file(path: str) -> None:
    """Remove the Unix domain socket file ``listen`` bound (asyncio leaves it behind)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` without ``server.tls_certfile``."""
    if not config.tls_certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            [
                f"cannot load the TLS certificate {config.tls_certfile!r} with key "
                f"{config.tls_keyfile!r} (server.tls_certfile/tls_keyfile): {exc}"
            ]
        ) from exc
    return context


def _tcp_listener(server: asyncio.AbstractServer, sock: socket.socket, note: str) -> Listener:
    host, port = sock.getsockname()[:2]
    return Listener(server, (host, port), http_url((host, port)) + note)


async def _tcp(
    config: ServerConfig, factory: ProtocolFactory, tls: ssl.SSLContext | None
) -> Listener:
    host, port = config.host, config.port
    try:
        server = await asyncio.get_running_loop().create_server(
            factory, host, port, backlog=config.backlog, reuse_address=True, ssl=tls
        )
    except OSError as exc:
        raise BindError(
            f"cannot bind the app port {host}:{port} (server.host/server.port): "
            f"{exc.strerror or exc}"
        ) from exc
    return _tcp_listener(server, server.sockets[0], "")


async def _unix(
    config: ServerConfig, factory: ProtocolFactory, tls: ssl.SSLContext | None
) -> Listener:
    path = config.uds
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise BindError(
                f"cannot bind the app socket {path!r} (server.uds): the path exists and "
                "is not a socket"
            )
    try:
        # asyncio replaces a stale socket file left by an earlier process.
        server = await asyncio.get_running_loop().create_unix_server(
            factory, path, backlog=config.backlog, ssl=tls
        )
    except OSError as exc:
        raise BindError(
            f"cannot bind the app socket {path!r} (server.uds): {exc.strerror or exc}"
        ) from exc
    return Listener(server, None, f"unix:{path}")


async def _inherited(
    config: ServerConfig, factory: ProtocolFactory, tls: ssl.SSLContext | None
) -> Listener:
    fd = config.fd
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(
            f"cannot use file descriptor {fd} as the app port (server.fd): {exc.strerror or exc}"
        ) from exc
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise BindError(
            f"cannot use file descriptor {fd} as the app port (server.fd): not a stream "
            "socket; expected a bound TCP or Unix socket"
        )
    try:
        # Listens if the parent only bound it; on a listening socket it sets the backlog.
        sock.listen(config.backlog)
        server = await asyncio.get_running_loop().create_server(
            factory, sock=sock, backlog=config.backlog, ssl=tls
        )
    except OSError as exc:
        raise BindError(
            f"cannot serve on file descriptor {fd} (server.fd): {exc.strerror or exc}"
        ) from exc
    if sock.family == socket.AF_UNIX:
        return Listener(server, None, f"unix:{sock.getsockname()} (fd {fd})")
    return _tcp_listener(server, sock, f" (fd {fd})")
