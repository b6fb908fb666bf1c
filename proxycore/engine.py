"""The engine: the single entry point of the core, one per worker.

Theory of operation: an adapter calls :meth:`Engine.feed` with one event at a time and executes
the actions it returns, in order. The engine routes the event by connection id to the downstream
connection (:class:`proxycore.downstream.Downstream`), or to the upstream connection's codec
(:class:`proxycore.upstream.Upstream`), which tells the connection's owner (the request's
:class:`proxycore.session.Session`, or a health probe, through
:class:`proxycore.upcodec.UpstreamOwner`) or drops an idle pooled connection that spoke out of
turn. Output to a connection is corked during one ``feed``: every piece written to the same
connection becomes a single Send action at the end (or just before a Close of that
connection), so one request costs one write per direction. Timers are one per owner
(downstream connection id, or 0 for the pool); each owner keeps named deadlines and the engine
only asks the adapter to move the timer earlier, so refreshing a read timeout costs an
attribute store, not a timer operation.

TLS sits in front: ``feed`` is :meth:`proxycore.tls.TlsLayer.feed`, which decrypts and
encrypts for TLS connections and passes everything else straight on, so the engine below (and
a recorder attached to it) only sees plaintext.

The engine holds no sockets, no clock and no randomness: ``now`` comes with every event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import TYPE_CHECKING, Any, Final

from proxycore.actions import Action, Close, Connect, PauseReading, ResumeReading, Send, SetTimer
from proxycore.bind import SourceAddresses
from proxycore.config import ServerConf
from proxycore.downstream import Downstream
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    DataReceived,
    Drain,
    EofReceived,
    Event,
    FileRead,
    FilterDone,
    Reconfigure,
    Resolved,
    Started,
    Stop,
    TimerFired,
    WriteFailed,
    WritePaused,
    WriteResumed,
)
from proxycore.metrics import Metrics
from proxycore.peer import Peer
from proxycore.phases import PHASES, Proxy, is_marked
from proxycore.pool import ConnectionPool
from proxycore.tls import ClientContexts, ServerTls, TlsLayer
from proxycore.upstream import CLOSED, IDLE, Upstream

if TYPE_CHECKING:
    from proxycore.trace import Recorder

__all__ = ["Engine", "NullLog", "PhaseTable"]

_INF: Final = float("inf")


def _source_addresses(sc: ServerConf) -> SourceAddresses | None:
    if sc.client_bind_to_ipv4 or sc.client_bind_to_ipv6:
        return SourceAddresses(sc.client_bind_to_ipv4, sc.client_bind_to_ipv6)
    return None


class PhaseTable:
    """For each phase: the bound method if the app overrides it, else None; plus which
    overridden phases are marked blocking or are coroutine functions."""

    new_ctx: Callable[..., Any] | None
    early_request_filter: Callable[..., Any] | None
    request_filter: Callable[..., Any] | None
    proxy_upstream_filter: Callable[..., Any] | None
    connected_to_upstream: Callable[..., Any] | None
    upstream_request_filter: Callable[..., Any] | None
    request_body_filter: Callable[..., Any] | None
    upstream_response_filter: Callable[..., Any] | None
    response_filter: Callable[..., Any] | None
    upstream_response_body_filter: Callable[..., Any] | None
    response_body_filter: Callable[..., Any] | None
    response_trailer_filter: Callable[..., Any] | None
    logging: Callable[..., Any] | None
    fail_to_connect: Callable[..., Any] | None
    error_while_proxy: Callable[..., Any] | None
    fail_to_proxy: Callable[..., Any] | None
    upstream_peer: Callable[..., Any]

    def __init__(self, app: Proxy, blocking_phases: str = "marked") -> None:
        if blocking_phases not in ("marked", "all"):
            raise ValueError(f"blocking_phases must be 'marked' or 'all', not {blocking_phases!r}")
        self.blocking: set[str] = set()
        self.is_async: set[str] = set()
        cls = type(app)
        for name in PHASES:
            fn = getattr(app, name)
            defined = getattr(cls, name, None)
            overridden = defined is not getattr(Proxy, name)
            setattr(self, name, fn if overridden else None)
            if not overridden:
                continue
            if iscoroutinefunction(fn):
                self.is_async.add(name)
            elif is_marked(defined, "blocking") or (
                blocking_phases == "all" and not is_marked(defined, "nonblocking")
            ):
                self.blocking.add(name)
        if self.upstream_peer is None:
            raise TypeError(f"{cls.__name__} must implement upstream_peer()")
        # fail_to_proxy and fail_to_connect have meaningful defaults: always callable.
        self.fail_to_proxy_fn: Callable[..., Any] = app.fail_to_proxy


class NullLog:
    """A logger that drops everything (tests, replays, benchmarks)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _PoolTimer:
    """Timer bookkeeping for the pool (owner id 0)."""

    __slots__ = ("id", "scheduled")

    def __init__(self) -> None:
        self.id = 0
        self.scheduled = _INF


class Engine:
    """One worker's proxy state: downstream connections, upstream connections, the pool."""

    def __init__(
        self,
        app: Proxy,
        conf: ServerConf | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | Any = None,
        *,
        blocking_phases: str = "marked",
        server_tls: ServerTls | None = None,
        client_tls: ClientContexts | None = None,
        tls: bool = True,
        access_log: logging.Logger | Any = None,
        metrics: bool = False,
    ) -> None:
        """``blocking_phases="all"`` hands every overridden plain-function phase to the adapter
        as a blocking RunFilter (gevent and threads adapters, where user code may block), except
        phases marked ``@proxycore.nonblocking``; ``"marked"`` (the default) defers only phases
        marked ``@proxycore.blocking``. ``async def`` phases are always deferred.

        ``server_tls`` holds the listener certificates, ``client_tls`` builds contexts for
        ``Peer(tls=True)`` (both from :mod:`proxycore.tlsconfig`, which the adapters call).
        ``tls=False`` removes the TLS layer (replays: traces hold plaintext).

        ``access_log``: the logger that gets one record per request, or an ``AccessBuffer``
        that queues the entries for a writer (:mod:`proxycore.accesslog`), or None (the
        default) for no access log. ``metrics``: count every exchange for the admin listener
        (:mod:`proxycore.metrics`; ``Engine.metrics``, None when off)."""
        self.app = app
        self.conf = conf or ServerConf()
        self.conf.check()
        self.log = logger or logging.getLogger("proxycore")
        self.access_log: logging.Logger | Any = access_log
        self.metrics: Metrics | None = Metrics() if metrics else None
        self._blocking_phases = blocking_phases
        self.phases = PhaseTable(app, blocking_phases)
        # Source addresses for connections to origins (None: the setting is off).
        self._bind: SourceAddresses | None = _source_addresses(self.conf)
        self.pool = ConnectionPool(
            self.conf.upstream_keepalive_pool_size, self.conf.upstream_keepalive_per_peer
        )
        self.downstreams: dict[int, Downstream] = {}
        self.upstreams: dict[int, Upstream] = {}
        self.out: list[Action] = []
        self.now = 0.0
        self.draining = False
        self._next_id = 1
        self._next_token = 1
        self._dirty: list[Downstream | Upstream] = []
        # Connections whose output is produced once at the end of the event (HTTP/2: one
        # data_to_send() per input); _flush calls their end_event() first.
        self._late: list[Downstream] = []
        self._recorder: Recorder | None = None
        self.tls: TlsLayer | None = TlsLayer(self, server_tls, client_tls) if tls else None
        self._bind_feed()
        self._pool_timer = _PoolTimer()
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            EofReceived: self._on_eof,
            Closed: self._on_closed,
            Connected: self._on_connected,
            ConnectFailed: self._on_connect_failed,
            WritePaused: self._on_write_paused,
            WriteResumed: self._on_write_resumed,
            WriteFailed: self._on_write_failed,
            TimerFired: self._on_timer,
            FilterDone: self._on_filter_done,
            Accepted: self._on_accepted,
            Drain: self._on_drain,
            Stop: self._on_stop,
            Started: self._on_started,
            Resolved: self._on_service_answer,
            FileRead: self._on_service_answer,
            Reconfigure: self._on_reconfigure,
        }
        # Background services (health checks): each has an id, named timers and on_timer().
        self.services: dict[int, Any] = {}
        self._services_started = False
        for svc in app.services():
            self.add_service(svc)

    # ------------------------------------------------------------------ entry point

    def new_id(self) -> int:
        """Allocate a connection id (for an Accepted event)."""
        i = self._next_id
        self._next_id = i + 1
        return i

    def new_id_upstream(self) -> int:
        """Allocate the id of a new upstream connection (overridden by replay)."""
        return self.new_id()

    def new_token(self) -> int:
        t = self._next_token
        self._next_token = t + 1
        return t

    def feed(self, event: Event) -> list[Action]:
        """Process one event and return the actions to carry out, in order.

        (Normally shadowed by an instance attribute: the TLS layer's ``feed``, or ``_feed``
        itself; this method is what runs where that is impossible.)"""
        tls = self.tls
        if tls is not None:
            return tls.feed(event)
        return self._recorded_feed(event)

    @property
    def recorder(self) -> Recorder | None:
        """The attached :class:`proxycore.trace.Recorder`, if any."""
        return self._recorder

    @recorder.setter
    def recorder(self, rec: Recorder | None) -> None:
        self._recorder = rec
        self._bind_feed()

    def _recorded_feed(self, event: Event) -> list[Action]:
        rec = self._recorder
        if rec is not None:
            return rec.feed(self, event)
        return self._feed(event)

    def _bind_feed(self) -> None:
        """``feed`` is the TLS layer's feed, which calls ``_feed`` (or the recorder) for what
        reaches the engine; without TLS and without a recorder, ``feed`` is ``_feed`` itself
        (one call less per event). Where instances cannot take attributes (the core compiled
        with mypyc), ``feed`` stays the method, which checks for a recorder."""
        tls = self.tls
        try:
            if tls is not None:
                self.feed = tls.feed  # type: ignore[method-assign,assignment]
            elif self._recorder is None:
                self.feed = self._feed  # type: ignore[method-assign]
            else:
                self.__dict__.pop("feed", None)
        except (AttributeError, TypeError):
            pass

    def data(self, conn: int, data: bytes, now: float) -> list[Action]:
        """``feed(DataReceived(conn, data, now))``, the adapters' most frequent call, without
        the event object when neither a recorder nor a TLS connection needs one."""
        tls = self.tls
        if self._recorder is not None or (tls is not None and tls.conns):
            return self.feed(DataReceived(conn, data, now))
        return self._received(conn, data, now)

    def _feed(self, event: Event) -> list[Action]:
        if isinstance(event, DataReceived):  # the common case: a direct call
            return self._received(event.conn, event.data, event.now)
        self._tick(event.now)
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not an event: {event!r}")
        try:
            handler(event)
        except Exception:
            self._internal_error(event.conn, repr(event))
        return self._flush()

    def _received(self, conn: int, data: bytes, now: float) -> list[Action]:
        self._tick(now)
        try:
            self._on_data(conn, data)
        except Exception:
            self._internal_error(conn, f"{len(data)} bytes received")
        return self._flush()

    def _tick(self, now: float) -> None:
        self.now = now
        if not self._services_started and self.services:
            self._start_services()

    def _internal_error(self, conn: int, what: str) -> None:
        """A bug must cost one connection, never the worker: log it and drop what the event
        concerned (its downstream connection and that connection's upstream)."""
        self.log.exception("internal error while handling %s (connection %d)", what, conn)
        self._contain(conn)

    def _flush(self) -> list[Action]:
        """The actions of one event, with every connection's queued bytes as one Send each."""
        out = self.out
        if self._late:
            late = self._late
            self._late = []
            for c in late:
                c.end_event()
        dirty = self._dirty
        if dirty:
            for conn in dirty:
                wbuf = conn.wbuf
                if wbuf:
                    out.append(Send(conn.id, wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)))
                    wbuf.clear()
            dirty.clear()
        self.out = []
        return out

    def _contain(self, conn: int) -> None:
        down = self.downstreams.get(conn)
        if down is None:
            up = self.upstreams.get(conn)
            if up is not None:
                if up.session is not None and isinstance(up.session.down, Downstream):
                    down = up.session.down
                self.close_upstream(up, abort=True)
        if down is not None:
            s = down.current
            if s is not None and s.upstream is not None:
                s.upstream.abort(self)
            down.current = None
            down.close(abort=True)

    def stats(self) -> dict[str, int | float]:
        """A snapshot for monitoring: open connections, pool counters, requests in flight."""
        active = sum(d.active_exchanges() for d in self.downstreams.values())
        out: dict[str, int | float] = {
            "downstreams": len(self.downstreams),
            "requests_in_flight": active,
            "upstreams": len(self.upstreams),
            "pool_idle": len(self.pool),
        }
        out.update(self.pool.stats.as_dict())
        return out

    def upstreams_in_use(self) -> int:
        """Upstream connections not idle in the pool: connecting, carrying a request, awaiting
        or streaming an answer, or tunnelling. O(1); adapters' busy polling asks it whether an
        origin's answer may be due."""
        return len(self.upstreams) - len(self.pool)

    @property
    def idle(self) -> bool:
        """True when no downstream connection is open (used to finish a graceful drain)."""
        return not self.downstreams

    # ------------------------------------------------------------------ output helpers

    def send(self, conn: Downstream | Upstream, data: bytes) -> None:
        if not data:
            return
        wbuf = conn.wbuf
        if not wbuf:
            self._dirty.append(conn)
        wbuf.append(data)

    def flush(self, conn: Downstream | Upstream) -> None:
        wbuf = conn.wbuf
        if wbuf:
            self.out.append(Send(conn.id, wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)))
            wbuf.clear()

    def emit(self, action: Action) -> None:
        self.out.append(action)

    # ------------------------------------------------------------------ timers

    def arm(self, owner: Any, name: str, deadline: float) -> None:
        """Set owner's named deadline; ask the adapter only if it is earlier than scheduled."""
        owner.timers[name] = deadline
        if deadline < owner.scheduled:
            owner.scheduled = deadline
            self.out.append(SetTimer(owner.id, deadline))

    def _rearm(self, owner: Any, deadline: float | None) -> None:
        if deadline is None:
            if owner.scheduled != _INF:
                owner.scheduled = _INF
                self.out.append(SetTimer(owner.id, None))
            return
        if deadline != owner.scheduled:
            owner.scheduled = deadline
            self.out.append(SetTimer(owner.id, deadline))

    # ------------------------------------------------------------------ upstream helpers

    def acquire_upstream(self, peer: Peer) -> Upstream | None:
        """An idle pooled connection for ``peer`` (None if none). Overridden by replay."""
        up = self.pool.acquire(peer.key)
        rec = self.recorder
        if rec is not None:
            rec.pool_answer(up.id if up is not None else 0)
        return up

    def add_service(self, svc: Any) -> None:
        """Register a background service (it gets an id and a timer of its own)."""
        svc.engine = self
        svc.id = self.new_id()
        self.services[svc.id] = svc

    def remove_service(self, svc: Any) -> None:
        """Stop a background service: its timer is cancelled, its pending answers (Resolved,
        FileRead) and probe connections are dropped (``svc.stop()``, if it has one)."""
        if self.services.pop(svc.id, None) is None:
            return
        stop = getattr(svc, "stop", None)
        if stop is not None:
            stop()
        svc.timers.clear()
        self._rearm(svc, None)

    def _start_services(self) -> None:
        self._services_started = True
        for svc in self.services.values():
            svc.start()

    def _on_service_answer(self, ev: Resolved | FileRead) -> None:
        svc = self.services.get(ev.conn)
        if svc is not None:
            svc.on_answer(ev)

    def _on_started(self, ev: Started) -> None:
        if not self._services_started:
            self._start_services()

    def open_upstream(self, peer: Peer, counted: bool = True) -> Upstream:
        up = Upstream(self.new_id_upstream(), peer, self.now)
        self.upstreams[up.id] = up
        if counted:
            self.pool.stats.opened += 1
        if peer.tls and self.tls is not None:
            self.tls.client_open(up.id, peer)
        bind = self._bind
        if peer.bind_to is not None:  # the peer's own source address (Pingora's bind_to)
            self.out.append(Connect(up.id, peer, (peer.bind_to,)))
        elif bind is None:
            self.out.append(Connect(up.id, peer))
        else:
            self.out.append(Connect(up.id, peer, bind.choose(up.id, peer.host)))
        return up

    def close_upstream(self, up: Upstream, abort: bool = False) -> None:
        if up.state == CLOSED:
            return
        if up.state == IDLE:
            self.pool.discard(up)
        up.state = CLOSED
        up.session = None
        self.upstreams.pop(up.id, None)
        if abort:
            up.wbuf.clear()
        else:
            self.flush(up)
        self.out.append(Close(up.id, abort))

    def release_upstream(self, up: Upstream) -> None:
        """Return a healthy connection to the pool (or close it if pooling is off)."""
        timeout = up.peer.idle_timeout
        if timeout is None:
            timeout = self.conf.upstream_idle_timeout
        if timeout <= 0 or self.draining:
            self.close_upstream(up)
            return
        up.session = None
        up.state = IDLE
        up.received = 0
        if up.read_paused:
            up.read_paused = False
            self.out.append(ResumeReading(up.id))
        evicted = self.pool.release(up, self.now + timeout)
        if evicted is not None:
            for old in evicted:
                self.close_upstream(old)
        if up.state == IDLE and self.now + timeout < self._pool_timer.scheduled:
            self._rearm(self._pool_timer, self.now + timeout)

    def pause_upstream(self, up: Upstream, pause: bool) -> None:
        if up.read_paused != pause and up.state != CLOSED:
            up.read_paused = pause
            self.out.append(PauseReading(up.id) if pause else ResumeReading(up.id))

    # ------------------------------------------------------------------ event handlers

    def _on_accepted(self, ev: Accepted) -> None:
        if ev.conn >= self._next_id:
            self._next_id = ev.conn + 1
        tls = ev.tls
        if tls is not None and tls.alpn == "h2" and self.conf.h2:
            # HTTP/2 negotiated by ALPN (RFC 9113 §3.2)
            from proxycore.h2.server import H2Conn

            down: Downstream = H2Conn(self, ev.conn, ev.client, ev.server, ev.scheme, tls)
            if self._recorder is not None:
                self._recorder.http2(ev.conn)
        else:
            down = Downstream(self, ev.conn, ev.client, ev.server, ev.scheme, tls)
        self.downstreams[ev.conn] = down
        if self.draining:
            down.close()
            return
        down.start()

    def _on_data(self, conn: int, data: bytes) -> None:
        down = self.downstreams.get(conn)
        if down is not None:
            down.on_data(data)
            return
        up = self.upstreams.get(conn)
        if up is None:
            return
        up.on_data(self, data)

    def _on_eof(self, ev: EofReceived) -> None:
        down = self.downstreams.get(ev.conn)
        if down is not None:
            down.on_eof()
            return
        up = self.upstreams.get(ev.conn)
        if up is not None:
            up.on_eof(self, None)

    def _on_closed(self, ev: Closed) -> None:
        down = self.downstreams.get(ev.conn)
        if down is not None:
            down.on_closed(ev.error)
            return
        up = self.upstreams.get(ev.conn)
        if up is not None:
            up.on_eof(self, ev.error or "connection closed")

    def _on_connected(self, ev: Connected) -> None:
        up = self.upstreams.get(ev.conn)
        if up is not None:
            up.on_connected(self)

    def _on_connect_failed(self, ev: ConnectFailed) -> None:
        up = self.upstreams.pop(ev.conn, None)
        if up is not None:
            up.on_connect_failed(ev.reason, ev.message)

    def _on_write_paused(self, ev: WritePaused) -> None:
        self._write_pause(ev.conn, True)

    def _on_write_resumed(self, ev: WriteResumed) -> None:
        self._write_pause(ev.conn, False)

    def _on_write_failed(self, ev: WriteFailed) -> None:
        """The connection cannot be written to any more, but may still be read (see the event).
        A client that cannot take a response is gone; an upstream is handed to its request,
        which keeps reading it for an early answer (RFC 9112 §9.5)."""
        down = self.downstreams.get(ev.conn)
        if down is not None:
            down.on_write_failed(ev.error)
            return
        up = self.upstreams.get(ev.conn)
        if up is not None:
            up.on_write_failed(self, ev.error)

    def _write_pause(self, conn: int, paused: bool) -> None:
        down = self.downstreams.get(conn)
        if down is not None:
            down.on_write_paused(paused)
            return
        up = self.upstreams.get(conn)
        if up is not None:
            up.on_write_paused(paused)

    def _on_timer(self, ev: TimerFired) -> None:
        if ev.conn == 0:
            self._pool_timer.scheduled = _INF
            for up in self.pool.expire(self.now):
                self.close_upstream(up)
            self._rearm(self._pool_timer, self.pool.next_deadline())
            return
        down: Any = self.downstreams.get(ev.conn)
        if down is None:
            down = self.services.get(ev.conn)
            if down is None:
                return
        down.scheduled = _INF
        now = self.now
        timers = down.timers
        due = [name for name, d in timers.items() if d <= now]
        for name in due:
            if timers.pop(name, None) is not None:
                down.on_timer(name)
                if down.closed:
                    return
        self._rearm(down, min(timers.values()) if timers else None)

    def _on_filter_done(self, ev: FilterDone) -> None:
        down = self.downstreams.get(ev.conn)
        if down is not None:
            down.filter_done(ev.token, ev.result, ev.error)

    def _on_reconfigure(self, ev: Reconfigure) -> None:
        """A reload (see :class:`proxycore.events.Reconfigure`): new exchanges use the new app
        and everything reads the new conf; each exchange in flight keeps the phase table it
        started with (``Session.phases``). Services not in the new list stop, new ones start
        (now, if the services already run), the ones in both keep their state."""
        conf = ev.conf
        conf.check()
        app = ev.app
        phases = PhaseTable(app, self._blocking_phases)
        self.app = app
        self.phases = phases
        self.conf = conf
        self._bind = _source_addresses(conf)
        self.pool.max_idle = conf.upstream_keepalive_pool_size
        self.pool.max_idle_per_key = conf.upstream_keepalive_per_peer
        self.access_log = ev.access_log
        tls = self.tls
        if tls is not None:
            tls.set_app(app)
            tls.set_server(ev.server_tls)
            if ev.client_tls is not None:
                tls.client = ev.client_tls
            tls.sessions.clear()
        rec = self._recorder
        if rec is not None:
            rec.describe(self)
        services = ev.services if ev.services is not None else list(app.services())
        keep = {id(svc) for svc in services}
        for svc in list(self.services.values()):
            if id(svc) not in keep:
                self.remove_service(svc)
        running = {id(svc) for svc in self.services.values()}
        for svc in services:
            if id(svc) not in running:
                self.add_service(svc)
                if self._services_started:
                    svc.start()

    def _on_drain(self, ev: Drain) -> None:
        self.draining = True
        for up in [self.upstreams[i] for i in self.pool.idle_ids()]:
            self.close_upstream(up)
        for down in list(self.downstreams.values()):
            down.on_drain()

    def _on_stop(self, ev: Stop) -> None:
        """The shutdown's end: every connection is closed at once (reset), and each exchange
        still in flight is ended as cut (its access-log entry written, flagged as cut; the
        ``logging`` phase gets a SHUTDOWN error), with one error line saying how many."""
        self.draining = True
        cut = 0
        for down in list(self.downstreams.values()):
            cut += down.stop(ev.grace)
        for up in list(self.upstreams.values()):
            self.close_upstream(up, abort=True)
        if cut:
            self.log.error(
                "%s: %d exchange%s still in flight cut (logged as cut in the access log)",
                f"grace period of {ev.grace:g} s over" if ev.grace > 0 else "fast shutdown",
                cut,
                "" if cut == 1 else "s",
            )
