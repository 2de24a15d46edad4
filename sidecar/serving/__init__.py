"""The app port: HTTP/1.1 and WebSocket traffic between clients and the ASGI app.

Layers, outermost first: ``server`` binds the port and runs the app per request;
``connection`` parses requests (aiohttp's parser) and keeps connections alive;
``exchange`` carries one request/response, ``response`` serializes heads, ``websocket``
maps aiohttp's WebSocket to ASGI, ``scope`` and ``proxy`` build the scope. Private
aiohttp API is used only in ``_aiohttp``.
"""

from .server import CUT_GRACE, AppServer

__all__ = ["CUT_GRACE", "AppServer"]
