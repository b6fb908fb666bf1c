"""The proxy behind ``proxycore reverse-proxy``: round robin over ``--to`` backends, with
connect failures retried on the next backend (each backend tried at most once per request).

Theory of operation: an ordinary :class:`Proxy` subclass; it is also the smallest complete
example of the filter API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxycore.errors import ProxyError
from proxycore.lb import Backend, LoadBalancer
from proxycore.peer import Peer
from proxycore.phases import Proxy, nonblocking
from proxycore.session import Session

__all__ = ["ReverseProxy"]


class _Ctx:
    __slots__ = ("backend", "tried")

    def __init__(self) -> None:
        self.tried: list[Backend] = []
        self.backend: Backend | None = None


class ReverseProxy(Proxy):
    """Forward every request to one of ``backends`` (round robin)."""

    def __init__(self, backends: Sequence[Peer | str]) -> None:
        peers = [p if isinstance(p, Peer) else Peer.parse(p) for p in backends]
        self.lb = LoadBalancer(Backend(p) for p in peers)

    def trace_init(self) -> dict[str, Any]:
        """Constructor arguments recorded in session traces, so a replay can rebuild us."""
        return {"backends": [b.peer.address for b in self.lb.backends]}

    @nonblocking
    def new_ctx(self) -> _Ctx:
        return _Ctx()

    @nonblocking
    def upstream_peer(self, session: Session, ctx: Any) -> Peer | None:
        b = self.lb.select(exclude=ctx.tried)
        if b is None:
            return None
        ctx.backend = b
        ctx.tried.append(b)
        return b.peer

    @nonblocking
    def fail_to_connect(
        self, session: Session, peer: Peer, ctx: Any, error: ProxyError
    ) -> ProxyError:
        # Nothing reached the failed backend, so any method can go to the next one.
        error.retry = len(ctx.tried) < len(self.lb.backends)
        return error
