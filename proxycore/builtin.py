"""The proxy behind ``proxycore reverse-proxy``: any selector over the ``--to`` backends,
connect failures retried on another backend, and passive health (outlier ejection).

Theory of operation: an ordinary :class:`Proxy` subclass — also the smallest complete example of
the filter API. Each request picks a backend with the load balancer (keyed by a header, the URI
or the client address for the hash selectors) and counts itself in that backend's requests in
flight (least_conn, p2c). A retry (after a connect failure, or after a pooled connection died
before answering) asks the selector for a backend this request has not tried, as nginx's
``proxy_next_upstream`` does: a live one first, else an ejected one (better than a 502); with
every backend tried, only a pooled connection's death goes back to its own backend, on a fresh
connection.

Passive health, after nginx's ``max_fails``/``fail_timeout`` and Envoy's outlier detection: a
backend is ejected (skipped by the selector) for ``eject_for`` seconds (default 10) after
``eject_after_connect_failures`` consecutive failed connects (refused, timed out, unreachable,
TLS handshake; default 1: nginx's ``max_fails=1 fail_timeout=10s``), or after ``eject_after``
consecutive failures of any kind (failed connects, errors after connecting, 5xx answers;
default 5, Envoy's ``consecutive_5xx``). An answer below 500 resets both counts (and lifts an
ejection: an ejected backend is tried when no other is left). If every backend is ejected, all
are used (Envoy's panic mode; nginx answers that request 502 and clears every server's
failures). Time is the engine's event time, so replays are exact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any, Final

from mypy_extensions import mypyc_attr

from proxycore.discovery import DnsDiscovery, FileDiscovery
from proxycore.errors import ProxyError
from proxycore.health import HealthCheck, HealthChecker
from proxycore.lb import SELECTORS, Backend, LoadBalancer, parse_backend
from proxycore.peer import Peer
from proxycore.phases import Proxy, nonblocking
from proxycore.session import Session

__all__ = [
    "HASH_KEYS",
    "REDIRECTS",
    "ReverseProxy",
    "Route",
    "RoutedProxy",
    "parse_backend",
    "parse_hash_key",
]

HASH_KEYS = ("header:NAME", "uri", "client_ip")

# How an attempt on a backend ended, for passive health.
_OK: Final = 0  # an answer below 500
_FAILED: Final = 1  # an error after connecting, or a 5xx answer
_CONNECT_FAILED: Final = 2  # refused, timed out, unreachable, TLS handshake failed


def parse_hash_key(text: str) -> tuple[str, str]:
    """``header:NAME``, ``uri`` or ``client_ip``; ValueError names the bad value."""
    if text in ("uri", "client_ip"):
        return text, ""
    kind, sep, name = text.partition(":")
    if kind == "header" and sep and name:
        return "header", name
    raise ValueError(f"unknown hash key {text!r}; expected one of {', '.join(HASH_KEYS)}")


class _Ctx:
    __slots__ = ("backend", "tried")

    def __init__(self) -> None:
        self.tried: list[Backend] = []
        self.backend: Backend | None = None


# ``ctx`` is whatever new_ctx returned (a subclass may return its own object with ``tried``
# and ``backend``); for the usual _Ctx these are direct attribute accesses when compiled.
def _tried(ctx: Any) -> list[Backend]:
    if isinstance(ctx, _Ctx):
        return ctx.tried
    tried: list[Backend] = ctx.tried
    return tried


def _backend(ctx: Any) -> Backend | None:
    if isinstance(ctx, _Ctx):
        return ctx.backend
    b: Backend | None = ctx.backend
    return b


def _set_backend(ctx: Any, b: Backend | None) -> None:
    if isinstance(ctx, _Ctx):
        ctx.backend = b  # the narrowed type: a direct store when compiled
    else:
        ctx.backend = b  # any other object: a generic setattr


@mypyc_attr(allow_interpreted_subclasses=True)
class ReverseProxy(Proxy):
    """Forward every request to one of ``backends`` chosen by ``lb``."""

    def __init__(
        self,
        backends: Sequence[Peer | str | tuple[Peer, int]],
        lb: str = "round_robin",
        hash_key: str | None = None,
        eject_after: int = 5,
        eject_for: float = 10.0,
        health_check: HealthCheck | str | None = None,
        health_interval: float = 5.0,
        backends_file: str | None = None,
        discovery_interval: float = 10.0,
        upstream_tls: dict[str, Any] | None = None,
        eject_after_connect_failures: int = 1,
        peer_options: dict[str, Any] | None = None,
    ) -> None:
        """``upstream_tls`` holds Peer options for ``https://`` backends given as text:
        ``sni``, ``ca``, ``verify``, ``verify_hostname``, ``client_cert``. ``peer_options``
        holds Peer options for every backend given as text (``connect_timeout``,
        ``read_timeout``, ``write_timeout``, ``idle_timeout``), discovered ones too. Passive health
        (module docstring): ``eject_after_connect_failures`` consecutive failed connects or
        ``eject_after`` consecutive failures of any kind eject a backend for ``eject_for``
        seconds (0: never)."""
        if eject_after < 1 or eject_after_connect_failures < 1:
            raise ValueError(
                "eject_after and eject_after_connect_failures must be at least 1, got "
                f"{eject_after} and {eject_after_connect_failures}"
            )
        if eject_for < 0:
            raise ValueError(f"eject_for must be 0 (never eject) or more, got {eject_for}")
        self.upstream_tls = dict(upstream_tls or {})
        if isinstance(self.upstream_tls.get("client_cert"), list):
            self.upstream_tls["client_cert"] = tuple(self.upstream_tls["client_cert"])
        self.peer_options = dict(peer_options or {})
        parsed: list[tuple[Peer, int]] = []
        for b in backends:
            if isinstance(b, Peer):
                parsed.append((b, 1))
            elif isinstance(b, str):
                p, w = parse_backend(b, **self.upstream_tls)
                parsed.append((p.replace(**self.peer_options) if self.peer_options else p, w))
            else:
                parsed.append(b)
        if lb not in SELECTORS:
            raise ValueError(f"unknown selector {lb!r}; choose from {', '.join(SELECTORS)}")
        if lb in ("hash", "consistent") and not hash_key:
            # Without a key every request hashes alike and goes to one backend.
            raise ValueError(f"the {lb} selector needs a hash_key (header:NAME, uri, client_ip)")
        self.lb = LoadBalancer([Backend(p, w) for p, w in parsed], lb)
        # The group's name in metrics and the status page (RoutedProxy: the file's name).
        self.name = "default"
        self.ejections: dict[str, int] = {}  # backend address -> times ejected
        # DNS names among the backends are re-resolved (A and AAAA) every discovery_interval.
        self.dns_names = [(p.host, p.port, w, p) for p, w in parsed if not _is_ip(p.host)]
        self.backends_file = backends_file
        self.discovery_interval = discovery_interval
        self.lb_name = lb
        self.hash_key = hash_key
        self._key = parse_hash_key(hash_key) if hash_key else ("", "")
        self.eject_after = eject_after
        self.eject_for = eject_for
        self.eject_after_connect_failures = eject_after_connect_failures
        # Consecutive failures per backend address: of any kind, and failed connects (an
        # address is in the second only while it is in the first).
        self._failures: dict[str, int] = {}
        self._connect_failures: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        if isinstance(health_check, str):
            health_check = HealthCheck.parse(health_check, health_interval)
        self.health_check = health_check

    def services(self) -> list[Any]:
        """Discovery (DNS names, a watched file) and active health checks, as configured."""
        out: list[Any] = []
        if self.dns_names:
            out.append(DnsDiscovery(self.lb, self.dns_names, self.discovery_interval))
        if self.backends_file:
            out.append(
                FileDiscovery(
                    self.lb,
                    self.backends_file,
                    self.discovery_interval,
                    peer_options=self.peer_options,
                    **self.upstream_tls,
                )
            )
        if self.health_check is not None:
            out.append(HealthChecker(self.lb, self.health_check, on_change=self._health_changed))
        return out

    def trace_init(self) -> dict[str, Any]:
        """Constructor arguments recorded in session traces, so a replay can rebuild us."""
        return {
            "backends": [f"{b.peer.url},weight={b.weight}" for b in self.lb.backends],
            "upstream_tls": self.upstream_tls,
            "lb": self.lb_name,
            "hash_key": self.hash_key,
            "eject_after": self.eject_after,
            "eject_for": self.eject_for,
            "eject_after_connect_failures": self.eject_after_connect_failures,
            "health_check": _describe(self.health_check),
            "health_interval": self.health_check.interval if self.health_check else 5.0,
            "backends_file": self.backends_file,
            "discovery_interval": self.discovery_interval,
            "peer_options": self.peer_options,
        }

    @nonblocking
    def new_ctx(self) -> _Ctx:
        return _Ctx()

    def _request_key(self, session: Session) -> bytes:
        kind, name = self._key
        if kind == "header":
            return (session.req_header.headers.get(name) or "").encode("latin-1")
        if kind == "uri":
            return session.req_header.path.encode("latin-1")
        if kind == "client_ip":
            return session.client_addr[0].encode()
        return b""

    @nonblocking
    def upstream_peer(self, session: Session, ctx: Any) -> Peer | None:
        now = session.engine.now
        ejected = self._ejected_until
        if ejected:  # forget ejections that have run out, so the fast path comes back
            for address in [a for a, until in ejected.items() if until <= now]:
                del ejected[address]
        key = self._request_key(session) if self._key[0] else b""
        tried = _tried(ctx)
        prev = _backend(ctx)
        if prev is not None:
            # A retry after an error past connect (a pooled connection that died before
            # answering): that attempt is over, judged neither a success nor a failure.
            _set_backend(ctx, None)
            prev.inflight -= 1
        if not ejected:  # the common case: the selector's fast path on a first try
            b = self.lb.select(key, exclude=tried)
        else:

            def live(b: Backend) -> bool:
                until = ejected.get(b.address)
                return until is None or until <= now

            b = self.lb.select(key, exclude=tried, predicate=live)
            if b is None:
                # No live backend that this request has not tried: an ejected one rather
                # than a 502 (every backend ejected: Envoy's panic mode).
                b = self.lb.select(key, exclude=tried)
        if b is None and prev is not None and prev.enabled and prev.healthy:
            # Every backend tried, and the last one's pooled connection died before
            # answering: a fresh connection to it (the session asks for one).
            b = prev
        if b is None:
            session.engine.log.warning(
                "no healthy backend for %s %s (%d configured, %d ejected, %d tried)",
                session.req_header.method,
                session.req_header.path,
                len(self.lb.backends),
                sum(1 for t in ejected.values() if t > now),
                len(tried),
            )
            return None
        _set_backend(ctx, b)
        tried.append(b)
        b.inflight += 1
        session.upstream_group = self.name
        return b.peer

    def backend_states(self, now: float) -> list[dict[str, Any]]:
        """Each backend as the metrics and the status page show it: its group, address,
        weight, health (active checks), whether a passive ejection holds it out now and how
        often one did, and its requests in flight."""
        ejected = self._ejected_until
        return [
            {
                "group": self.name,
                "address": b.address,
                "weight": b.weight,
                "healthy": b.healthy,
                "ejected": ejected.get(b.address, 0.0) > now,
                "ejections": self.ejections.get(b.address, 0),
                "in_flight": b.inflight,
            }
            for b in self.lb.backends
        ]

    def _health_changed(self, b: Backend, healthy: bool) -> None:
        """An active check found the backend healthy again: lift a passive ejection too, so it
        rejoins now rather than when the ejection runs out (Envoy's default,
        ``successful_active_health_check_uneject_host``)."""
        if healthy:
            self._ejected_until.pop(b.address, None)
            self._failures.pop(b.address, None)
            self._connect_failures.pop(b.address, None)

    def _done_with(self, session: Session, ctx: Any, outcome: int) -> None:
        """The attempt on ``ctx``'s backend ended (``_OK``, ``_FAILED``, ``_CONNECT_FAILED``):
        release it and count the outcome toward passive health."""
        b = _backend(ctx)
        if b is None:
            return
        _set_backend(ctx, None)
        b.inflight -= 1
        key = b.address
        failures = self._failures
        if outcome == _OK:
            if key in failures:  # (cheaper than pop(): a direct call when compiled)
                del failures[key]
                if key in self._connect_failures:
                    del self._connect_failures[key]
                if key in self._ejected_until:  # it answered while ejected (panic mode)
                    del self._ejected_until[key]
                    session.engine.log.warning("backend %s answered: back in rotation", key)
            return
        n = failures.get(key, 0) + 1
        failures[key] = n
        connects = self._connect_failures
        c = 0
        if outcome == _CONNECT_FAILED:
            c = connects.get(key, 0) + 1
            connects[key] = c
        elif key in connects:  # it connected: failed connects are no longer consecutive
            del connects[key]
        if self.eject_for <= 0:
            return
        if c >= self.eject_after_connect_failures:
            what = "failed connect" if c == 1 else f"{c} consecutive failed connects"
        elif n >= self.eject_after:
            what = f"{n} consecutive failures"
        else:
            return
        self._ejected_until[key] = session.engine.now + self.eject_for
        self.ejections[key] = self.ejections.get(key, 0) + 1
        failures[key] = 0
        if key in connects:
            del connects[key]
        session.engine.log.warning("backend %s ejected for %gs after %s", key, self.eject_for, what)

    @nonblocking
    def fail_to_connect(
        self, session: Session, peer: Peer, ctx: Any, error: ProxyError
    ) -> ProxyError:
        self._done_with(session, ctx, _CONNECT_FAILED)
        # Nothing reached the failed backend, so any method can go to another one.
        error.retry = len(_tried(ctx)) < len(self.lb.backends)
        return error

    @nonblocking
    def logging(self, session: Session, error: ProxyError | None, ctx: Any) -> None:
        if ctx is None or _backend(ctx) is None:
            return
        upstream_failed = error is not None and error.source.value == "upstream"
        failed = upstream_failed or session.response_status >= 500
        self._done_with(session, ctx, _FAILED if failed else _OK)


# ``return:`` statuses whose text is the Location (nginx's ``return code URL``).
REDIRECTS = (301, 302, 303, 307, 308)


class _RouteCtx(_Ctx):
    __slots__ = ("group",)

    def __init__(self) -> None:
        super().__init__()
        self.group: ReverseProxy | None = None


class Route:
    """One entry of a route table: requests whose host matches ``host`` (exact, or
    ``*.example.com`` for any name ending in ``.example.com``; None for any host) and whose
    path starts with ``path`` go to the upstream group ``upstream``, or are answered with
    ``answer`` (nginx's ``return``: ``"403"``, ``"200 some text"``, ``"301 https://..."``;
    for 301/302/303/307/308 the text is the Location). ValueError names a bad value."""

    def __init__(
        self,
        host: str | None = None,
        path: str = "/",
        upstream: str | None = None,
        answer: str | None = None,
    ) -> None:
        if (upstream is None) == (answer is None):
            raise ValueError("a route needs exactly one of upstream and return")
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"a route path is a prefix starting with '/', got {path!r}")
        self.host = host.lower() if host else None
        self.suffix = ""  # ".example.com" for "*.example.com"
        if self.host is not None:
            if self.host.startswith("*."):
                self.suffix = self.host[1:]
                if len(self.suffix) < 2 or "*" in self.suffix:
                    raise ValueError(f"a route host is NAME or *.DOMAIN, got {host!r}")
            elif "*" in self.host or not self.host:
                raise ValueError(f"a route host is NAME or *.DOMAIN, got {host!r}")
        self.path = path
        self.upstream = upstream
        self.answer = answer
        self.status = 0
        self.body = b""
        self.headers: dict[str, str] = {}
        if answer is not None:
            code, _, text = answer.strip().partition(" ")
            text = text.strip()
            if not code.isdigit() or not 200 <= int(code) <= 599:
                raise ValueError(
                    f"return is a status from 200 to 599 with an optional text or URL, "
                    f"got {answer!r}"
                )
            self.status = int(code)
            if self.status in REDIRECTS:
                if not text:
                    raise ValueError(f"return {self.status} needs a URL, got {answer!r}")
                self.headers["Location"] = text
            elif text:
                self.body = (text + "\n").encode()

    def matches(self, host: str, path: str) -> bool:
        """``host``: the request's host, lowercase, without the port."""
        if self.host is not None:
            if self.suffix:
                if not host.endswith(self.suffix) or len(host) == len(self.suffix):
                    return False
            elif host != self.host:
                return False
        return path.startswith(self.path)


def _request_host(session: Session) -> str:
    """The request's host (authority or Host header), lowercase and without the port."""
    host = session.request_host
    if not host:
        return ""
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    return host.lower()


@mypyc_attr(allow_interpreted_subclasses=True)
class RoutedProxy(Proxy):
    """A reverse proxy with a route table: the first route (in order) whose host and path
    prefix match the request sends it to its upstream group (a :class:`ReverseProxy`, with its
    own backends, selector, health checks, discovery, TLS to the origin and passive health), or
    answers it (``return``); a request no route matches is answered 404. Matched in
    ``proxy_upstream_filter``, after ``request_filter``: a subclass may still answer or edit
    there, and without one the engine keeps relaying the received head verbatim.

    ``upstreams``: group name -> :class:`ReverseProxy` keyword arguments; ``routes``: mappings
    with ``host``, ``path``, and ``upstream`` or ``return`` (see :class:`Route`). This is what
    ``proxycore reverse-proxy -c FILE`` serves; ValueError names a bad value."""

    def __init__(self, upstreams: dict[str, dict[str, Any]], routes: Sequence[dict[str, Any]]):
        if not routes:
            raise ValueError("a route table needs at least one route")
        self.upstream_specs = {name: dict(kw) for name, kw in upstreams.items()}
        self.route_specs = [dict(r) for r in routes]
        self.groups: dict[str, ReverseProxy] = {
            name: ReverseProxy(**kw) for name, kw in self.upstream_specs.items()
        }
        self.routes: list[Route] = []
        for n, r in enumerate(self.route_specs):
            route = Route(r.get("host"), r.get("path") or "/", r.get("upstream"), r.get("return"))
            if route.upstream is not None and route.upstream not in self.groups:
                raise ValueError(f"route {n} goes to upstream {route.upstream!r}, not defined")
            self.routes.append(route)
        self._route_groups: list[ReverseProxy | None] = [
            self.groups[r.upstream] if r.upstream is not None else None for r in self.routes
        ]
        for name, group in self.groups.items():
            group.name = name

    def backend_states(self, now: float) -> list[dict[str, Any]]:
        return [state for g in self.groups.values() for state in g.backend_states(now)]

    def services(self) -> list[Any]:
        out: list[Any] = []
        for g in self.groups.values():
            out.extend(g.services())
        return out

    def keep_groups(self, old: RoutedProxy) -> list[ReverseProxy]:
        """A reload: take over ``old``'s upstream groups whose settings did not change (the
        same name and the same arguments), with their state (selector position, health,
        passive ejections, discovered backends) and their running services; return them."""
        kept: list[ReverseProxy] = []
        for name, spec in self.upstream_specs.items():
            if old.upstream_specs.get(name) == spec and name in old.groups:
                group = old.groups[name]
                self.groups[name] = group
                kept.append(group)
        self._route_groups = [
            self.groups[r.upstream] if r.upstream is not None else None for r in self.routes
        ]
        return kept

    def trace_init(self) -> dict[str, Any]:
        return {"upstreams": self.upstream_specs, "routes": self.route_specs}

    @nonblocking
    def new_ctx(self) -> _RouteCtx:
        return _RouteCtx()

    @nonblocking
    def proxy_upstream_filter(self, session: Session, ctx: Any) -> bool:
        # Matched here rather than in request_filter: a proxy without request_filter keeps the
        # verbatim head relay (the engine rebuilds the head when request_filter may edit it).
        host = _request_host(session)
        path = session.req_header.path
        groups = self._route_groups
        for i, route in enumerate(self.routes):
            if route.matches(host, path):
                group = groups[i]
                if group is None:
                    session.respond(route.status, route.body, route.headers)
                    return False
                ctx.group = group
                return True
        session.respond(404, b"no route for this request\n")
        return False

    @nonblocking
    def upstream_peer(self, session: Session, ctx: Any) -> Peer | None:
        group: ReverseProxy | None = ctx.group
        return None if group is None else group.upstream_peer(session, ctx)

    @nonblocking
    def fail_to_connect(
        self, session: Session, peer: Peer, ctx: Any, error: ProxyError
    ) -> ProxyError:
        group: ReverseProxy | None = ctx.group
        return error if group is None else group.fail_to_connect(session, peer, ctx, error)

    @nonblocking
    def logging(self, session: Session, error: ProxyError | None, ctx: Any) -> None:
        group: ReverseProxy | None = None if ctx is None else ctx.group
        if group is not None:
            group.logging(session, error, ctx)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _describe(check: HealthCheck | None) -> str | None:
    if check is None:
        return None
    return "tcp" if check.kind == "tcp" else f"http:{check.path}"
