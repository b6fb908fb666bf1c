"""Active health checks: a background service in the core, driven by its own timer.

Theory of operation: a :class:`HealthChecker` is registered with the engine as a service (it
gets an id and a timer like a client connection does). Every ``interval`` seconds it opens one
probe connection per backend through the ordinary Connect action — the adapter cannot tell a
probe from a proxied request — and judges the result: ``tcp`` succeeds when the connection is
established; ``http`` sends ``method path`` (GET by default) with the configured Host and
succeeds when the status is in ``expect`` (and the optional ``validator(status, headers)``
agrees) before ``timeout``. ``rise`` consecutive successes mark a backend healthy, ``fall``
consecutive failures unhealthy; each change is logged and passed to ``on_change(backend,
healthy)``. Selectors skip unhealthy backends. The checker holds no clock: time is the
engine's event time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from proxycore.http import Headers, RequestHeader
from proxycore.lb import Backend, LoadBalancer
from proxycore.upcodec import UpstreamOwner

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.errors import HTTPParseError
    from proxycore.http import ResponseHeader
    from proxycore.meta import ResponseMeta
    from proxycore.upcodec import OriginStream
    from proxycore.upstream import Upstream

__all__ = ["HealthCheck", "HealthChecker"]

_INF = float("inf")


class HealthCheck:
    """What to probe and how often (seconds). ``kind`` is ``"tcp"`` or ``"http"``."""

    def __init__(
        self,
        kind: str = "http",
        path: str = "/",
        *,
        method: str = "GET",
        host: str | None = None,
        expect: Iterable[int] = (200,),
        validator: Callable[[int, Headers], bool] | None = None,
        interval: float = 5.0,
        timeout: float = 2.0,
        rise: int = 1,
        fall: int = 1,
    ) -> None:
        if kind not in ("tcp", "http"):
            raise ValueError(f"health check kind must be tcp or http, not {kind!r}")
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError(f"invalid health check path {path!r}")
        if interval <= 0 or timeout <= 0 or rise < 1 or fall < 1:
            raise ValueError("interval and timeout must be positive, rise and fall at least 1")
        if not method.isalpha() or not method.isupper():
            raise ValueError(f"invalid health check method {method!r}")
        self.kind = kind
        self.method = method
        self.path = path
        self.host = host
        self.expect = frozenset(expect)
        self.validator = validator
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall

    @classmethod
    def parse(cls, text: str, interval: float = 5.0) -> HealthCheck:
        """``tcp`` or ``http:/path`` (the CLI's ``--health-check``); ValueError names it."""
        if text == "tcp":
            return cls("tcp", interval=interval)
        kind, sep, path = text.partition(":")
        if kind == "http" and sep and path.startswith("/"):
            return cls("http", path, interval=interval)
        raise ValueError(f"expected tcp or http:/PATH for a health check, got {text!r}")


class _Probe(UpstreamOwner):
    """One probe connection: its owner, as an exchange owns its upstream connection. The
    connection's codec (:class:`proxycore.upstream.Upstream`) writes the request and parses
    the answer; the probe judges the final head and closes the connection."""

    __slots__ = ("backend", "checker", "deadline", "done", "up")

    def __init__(self, checker: HealthChecker, backend: Backend, up: Upstream, deadline: float):
        self.checker = checker
        self.backend = backend
        self.up = up
        self.deadline = deadline
        self.done = False

    @property
    def down(self) -> HealthChecker:  # what the recorder asks of an upstream's owner
        return self.checker

    def on_upstream_connected(self, up: OriginStream) -> None:
        c = self.checker
        if c.check.kind == "tcp":
            self.finish(True, "connected")
            return
        e = c.engine
        up.begin(self, False, e.now)
        host = c.check.host or up.peer.address
        h = Headers()
        h.add("Host", host)
        h.add("User-Agent", "proxycore-health")
        h.add("Connection", "close")
        up.send_request_head(
            e, c.check.method, RequestHeader(c.check.method, c.check.path, h), False, False
        )

    def on_upstream_connect_failed(self, up: OriginStream, reason: str, message: str) -> None:
        why = "refused the connection" if reason == "refused" else message or f"connect {reason}"
        self.finish(False, why, close=False)

    def on_informational(self, resp: ResponseHeader, meta: ResponseMeta) -> bool:
        return True  # wait for the final answer

    def on_response_head(self, resp: ResponseHeader, meta: ResponseMeta) -> None:
        c = self.checker
        ok = resp.status in c.check.expect
        if ok and c.check.validator is not None:
            ok = bool(c.check.validator(resp.status, resp.headers))
        self.finish(ok, f"status {resp.status}")

    def on_invalid_response(self, err: HTTPParseError, words: str) -> None:
        self.finish(False, f"invalid response: {err}")

    # (the probe judges the head alone and closes the connection: no body reaches it)

    def takes_response_data(self) -> bool:
        return False

    def takes_response_body(self) -> bool:
        return False

    def on_response_body(self, piece: bytes, eos: bool) -> None:
        pass

    def response_data_buffered(self) -> None:
        pass

    def wants_response_paused(self) -> bool:
        return False

    def on_upstream_eof(self, error: str | None) -> None:
        self.finish(False, f"{error or 'closed the connection'} before answering")

    def on_upstream_write_paused(self, paused: bool) -> None:
        pass

    def on_upstream_write_failed(self, error: str) -> None:
        pass  # an answer may still come; EOF or Closed follows otherwise

    def finish(self, ok: bool, why: str, close: bool = True) -> None:
        if self.done:
            return
        self.done = True
        c = self.checker
        c.probes.pop(self.backend.address, None)
        if close:
            c.engine.close_upstream(self.up)
        c.result(self.backend, ok, why)


class HealthChecker:
    """Probes every backend of ``lb`` with ``check``; a core service with its own timer."""

    def __init__(
        self,
        lb: LoadBalancer,
        check: HealthCheck,
        on_change: Callable[[Backend, bool], None] | None = None,
    ) -> None:
        self.lb = lb
        self.check = check
        self.on_change = on_change
        self.engine: Engine = None  # type: ignore[assignment]  # set by Engine.add_service
        self.id = 0
        self.timers: dict[str, float] = {}
        self.scheduled = _INF
        self.probes: dict[str, _Probe] = {}
        self._ok: dict[str, int] = {}
        self._bad: dict[str, int] = {}

    @property
    def closed(self) -> bool:
        return False

    # -- driven by the engine --------------------------------------------------------------
    def start(self) -> None:
        e = self.engine
        e.arm(self, "round", e.now)

    def stop(self) -> None:
        """Removed from the engine (a reload): the probes in progress are dropped."""
        e = self.engine
        for p in list(self.probes.values()):
            p.done = True
            e.close_upstream(p.up, abort=True)
        self.probes.clear()

    def on_timer(self, name: str) -> None:
        e = self.engine
        if name == "round":
            self._round()
            e.arm(self, "round", e.now + self.check.interval)
        elif name == "timeout":
            now = e.now
            for p in list(self.probes.values()):
                if p.deadline <= now:
                    p.finish(False, f"no answer within {self.check.timeout:g}s")
            self._arm_timeout()

    def _round(self) -> None:
        e = self.engine
        for b in self.lb.backends:
            if b.address in self.probes:
                continue  # the previous probe is still running (its timeout will end it)
            up = e.open_upstream(b.peer, counted=False)
            p = _Probe(self, b, up, e.now + self.check.timeout)
            up.bind(p)
            self.probes[b.address] = p
        self._arm_timeout()

    def _arm_timeout(self) -> None:
        e = self.engine
        if self.probes:
            e.arm(self, "timeout", min(p.deadline for p in self.probes.values()))

    def result(self, b: Backend, ok: bool, why: str) -> None:
        key = b.address
        if ok:
            self._bad.pop(key, None)
            n = self._ok[key] = self._ok.get(key, 0) + 1
            change = not b.healthy and n >= self.check.rise
        else:
            self._ok.pop(key, None)
            n = self._bad[key] = self._bad.get(key, 0) + 1
            change = b.healthy and n >= self.check.fall
        if not change:
            return
        b.healthy = ok
        e = self.engine
        if e is not None:  # (a checker may be used on its own in tests)
            e.log.warning(
                "health check: backend %s is now %s (%s)",
                key,
                "healthy" if ok else "unhealthy",
                why,
            )
        if self.on_change is not None:
            self.on_change(b, ok)
