"""Request bodies: read the next piece within the configured limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ._aiohttp import HttpProcessingError, RequestPayloadError, StreamReader


@dataclass(frozen=True)
class BodyLimits:
    """Request body limits from ``server.max_body_size`` and ``server.body_timeout``."""

    max_size: int  # bytes; 0: no limit
    read_timeout: float  # seconds between pieces of body; 0: no limit


NO_LIMITS = BodyLimits(0, 0.0)


class BodyRefused(Exception):
    """The body broke a limit or its framing: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_piece(content: StreamReader, limits: BodyLimits, received: int) -> bytes:
    """The next piece of a body of which ``received`` bytes were read before.

    Raises ``BodyRefused`` for a body that is too slow, too large or badly framed, and
    ``OSError`` (or what the connection saw) when the client left mid-body.
    """
    try:
        # Most bodies are already buffered when the app asks: take them without waiting
        # (and without arming the body timeout).
        chunk = content.read_nowait()  # raises what broke the body, if anything
        if not chunk and not content.at_eof():
            if limits.read_timeout:
                async with asyncio.timeout(limits.read_timeout):
                    chunk = await content.readany()
            else:
                chunk = await content.readany()
    except TimeoutError:
        raise BodyRefused(
            408, f"no request body data for {limits.read_timeout:g}s (server.body_timeout)"
        ) from None
    except (HttpProcessingError, RequestPayloadError) as exc:  # broken body framing
        raise BodyRefused(400, f"invalid request body: {exc}") from None
    if limits.max_size and received + len(chunk) > limits.max_size:
        raise BodyRefused(
            413, f"request body passed server.max_body_size ({limits.max_size} bytes)"
        )
    return chunk
