"""Service discovery: the backend set from DNS names or a watched file, refreshed on a timer.

Theory of operation: a discovery object is a core service (like the health checker) with its
own timer. Every ``interval`` seconds it asks the adapter for what it cannot do itself — a
Resolve action per DNS name (A and AAAA), or a ReadFile action — and when the answers are in it
builds the new backend list and swaps it into the load balancer with ``set_backends``, which
keeps the health and load state of backends that remain; requests in flight keep the backend
they chose. A failed lookup or an unreadable/invalid file keeps the previous set (and logs it):
discovery never empties a working pool because of one bad answer.

The watched file holds one backend per line, ``HOST:PORT`` or ``HOST:PORT,weight=N``; blank
lines and ``#`` comments are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from proxycore.actions import ReadFile, Resolve
from proxycore.events import FileRead, Resolved
from proxycore.lb import Backend, LoadBalancer, parse_backend
from proxycore.peer import Peer

if TYPE_CHECKING:
    from proxycore.engine import Engine

__all__ = ["DnsDiscovery", "FileDiscovery", "parse_backend_lines"]

_INF = float("inf")


class _Service:
    """Timer plumbing shared by discovery services (the engine drives on_timer/on_answer)."""

    def __init__(self, lb: LoadBalancer, interval: float) -> None:
        if interval <= 0:
            raise ValueError("discovery interval must be positive")
        self.lb = lb
        self.interval = interval
        self.engine: Engine = None  # type: ignore[assignment]  # set by Engine.add_service
        self.id = 0
        self.timers: dict[str, float] = {}
        self.scheduled = _INF
        self.closed = False
        self.on_change: Callable[[list[Backend]], None] | None = None

    def start(self) -> None:
        self.engine.arm(self, "refresh", self.engine.now)

    def stop(self) -> None:
        """Removed from the engine (a reload): a pending answer is dropped with its id."""
        self.closed = True

    def on_timer(self, name: str) -> None:
        if name == "refresh":
            self.refresh()
            self.engine.arm(self, "refresh", self.engine.now + self.interval)

    def refresh(self) -> None:
        raise NotImplementedError

    def on_answer(self, ev: Any) -> None:
        raise NotImplementedError

    def _swap(self, backends: list[Backend], source: str) -> None:
        old = sorted((b.address, b.weight) for b in self.lb.backends)
        new = sorted((b.address, b.weight) for b in backends)
        if not backends or old == new:
            return
        self.lb.set_backends(backends)
        self.engine.log.warning(
            "discovery (%s): backends now %s", source, ", ".join(a for a, _ in new)
        )
        if self.on_change is not None:
            self.on_change(self.lb.backends)


class DnsDiscovery(_Service):
    """Backends from DNS names: each ``(host, port, weight)`` becomes one backend per address
    (A and AAAA) it resolves to; re-resolved every ``interval`` seconds (default 30). A name
    given as ``(host, port, weight, template)`` copies the template Peer's options (TLS,
    timeouts) to each address; the name stays the SNI and the verified TLS name."""

    def __init__(
        self,
        lb: LoadBalancer,
        names: Sequence[tuple[str, int, int] | tuple[str, int, int, Peer]],
        interval: float = 30.0,
    ) -> None:
        super().__init__(lb, interval)
        self.names = [n if len(n) == 4 else (n[0], n[1], n[2], Peer(n[0], n[1])) for n in names]
        self._pending: dict[int, str] = {}
        self._answers: dict[str, list[str]] = {}

    def refresh(self) -> None:
        if self._pending:
            return  # the previous round is still waiting for the resolver
        e = self.engine
        for host, _, _, _ in self.names:
            token = e.new_token()
            self._pending[token] = host
            e.emit(Resolve(self.id, token, host))

    def on_answer(self, ev: Any) -> None:
        if not isinstance(ev, Resolved):
            return
        host = self._pending.pop(ev.token, None)
        if host is None:
            return
        if ev.error or not ev.addresses:
            self.engine.log.warning(
                "discovery: cannot resolve %s (%s); keeping its previous addresses",
                host,
                ev.error or "no addresses",
            )
        else:
            self._answers[host] = sorted(set(ev.addresses))
        if self._pending:
            return
        backends = [
            Backend(tpl.replace(host=ip, port=port, sni=tpl.sni or host), weight, {"name": host})
            for host, port, weight, tpl in self.names
            for ip in self._answers.get(host, [])
        ]
        self._swap(backends, "dns")


def parse_backend_lines(text: str, **tls_options: object) -> list[tuple[Peer, int]]:
    """Parse a backends file; ValueError names the line that is wrong."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            out.append(parse_backend(line, **tls_options))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
    return out


class FileDiscovery(_Service):
    """Backends listed in a file, re-read every ``interval`` seconds (default 5)."""

    def __init__(
        self,
        lb: LoadBalancer,
        path: str,
        interval: float = 5.0,
        *,
        peer_options: dict[str, Any] | None = None,
        **tls_options: object,
    ) -> None:
        """``tls_options`` apply to the ``https://`` lines, ``peer_options`` (timeouts) to
        every line."""
        super().__init__(lb, interval)
        self.path = path
        self.tls_options = tls_options
        self.peer_options = peer_options or {}
        self._token = 0
        self._last: bytes | None = None

    def refresh(self) -> None:
        if self._token:
            return
        self._token = self.engine.new_token()
        self.engine.emit(ReadFile(self.id, self._token, self.path))

    def on_answer(self, ev: Any) -> None:
        if not isinstance(ev, FileRead) or ev.token != self._token:
            return
        self._token = 0
        if ev.error is not None or ev.content is None:
            self.engine.log.warning(
                "discovery: cannot read %s (%s); keeping the current backends", self.path, ev.error
            )
            return
        if ev.content == self._last:
            return
        try:
            parsed = parse_backend_lines(ev.content.decode("utf-8", "replace"), **self.tls_options)
        except ValueError as e:
            self.engine.log.error("discovery: %s: %s; keeping the current backends", self.path, e)
            return
        self._last = ev.content
        if self.peer_options:
            parsed = [(p.replace(**self.peer_options), w) for p, w in parsed]
        self._swap([Backend(p, w) for p, w in parsed], f"file {self.path}")
