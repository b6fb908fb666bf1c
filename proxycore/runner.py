"""``proxycore.run``: pick an adapter by name and serve a Proxy with it.

Theory of operation: this module only parses listen addresses and dispatches; the adapter
module is imported lazily so the core stays free of event-loop imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = ["BACKENDS", "parse_listen", "run"]

# backend name -> (module, extra options)
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("proxycore.adapters.asyncio", {"uvloop": False}),
    "uvloop": ("proxycore.adapters.asyncio", {"uvloop": True}),
}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port); raises ValueError naming the value."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_s)


def run(
    app: Proxy,
    listen: Sequence[str] = ("127.0.0.1:8080",),
    backend: str = "asyncio",
    conf: ServerConf | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` on every ``listen`` address until SIGTERM (graceful) or SIGINT (fast).

    ``backend`` is one of :data:`BACKENDS`. ``conf`` holds timeouts and limits.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    addrs = [parse_listen(a) for a in listen]
    module_name, extra = BACKENDS[backend]
    module = importlib.import_module(module_name)
    module.serve(app, addrs, conf or ServerConf(), **extra, **options)
