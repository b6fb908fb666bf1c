"""The threads adapter: one selector I/O thread plus a bounded pool for blocking phases."""

from proxycore.adapters.threads.server import ThreadsServer, serve

__all__ = ["ThreadsServer", "serve"]
