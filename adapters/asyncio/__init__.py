"""The asyncio adapter (also runs on uvloop): Protocol/Transport callbacks, no streams."""

from proxycore.adapters.asyncio.server import AsyncioServer, serve

__all__ = ["AsyncioServer", "serve"]
