"""The asyncio adapter (also runs on uvloop): non-blocking sockets on the loop's reader and
writer callbacks, driven by the socket driver shared with gevent and threads."""

from proxycore.adapters.asyncio.server import AsyncioServer, serve

__all__ = ["AsyncioServer", "serve"]
