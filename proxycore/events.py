"""Events: everything that enters the core, each stamped by the adapter with ``now``.

Theory of operation: an adapter turns what its event loop observes into one of these objects
and passes it to :meth:`proxycore.engine.Engine.feed`, the single entry point of the core. Every
event names the connection it concerns by the integer id the core assigned (downstream ids come
from :class:`Accepted` via ``Engine.accept``; upstream ids from the core's :class:`Connect`
action). ``now`` is a monotonic time in seconds; the core never reads a clock. Because every input
passes through here with its time, recording the events of a session is enough to replay it.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Accepted",
    "Closed",
    "ConnectFailed",
    "Connected",
    "DataReceived",
    "Drain",
    "EofReceived",
    "Event",
    "FileRead",
    "FilterDone",
    "Reconfigure",
    "Resolved",
    "Started",
    "Stop",
    "TimerFired",
    "WriteFailed",
    "WritePaused",
    "WriteResumed",
]


class Event:
    """Base class of all events: ``conn`` is the connection id, ``now`` the monotonic time."""

    __slots__ = ("conn", "now")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")
    conn: int
    now: float

    def __init__(self, conn: int, now: float) -> None:
        self.conn = conn
        self.now = now

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self._fields())
        return f"{type(self).__name__}({fields})"

    def _fields(self) -> list[str]:
        # Explicit per class (not read from __slots__, which compiled classes do not expose).
        return list(type(self)._fields_)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self._fields())

    __hash__ = None  # type: ignore[assignment]


class DataReceived(Event):
    """Bytes arrived on a connection (downstream or upstream)."""

    __slots__ = ("data",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "data")

    def __init__(self, conn: int, data: bytes, now: float) -> None:
        self.conn = conn
        self.now = now
        self.data = data


class EofReceived(Event):
    """The peer half-closed the connection: no more bytes will arrive on it."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class Closed(Event):
    """The connection is gone (reset, broken, or closed after a Close action).

    ``error`` says what happened when the peer or the network broke it, in words that follow
    the peer's name ("reset the connection"; :func:`proxycore.errors.socket_error_words`), None
    for a clean close.
    """

    __slots__ = ("error",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "error")

    def __init__(self, conn: int, now: float, error: str | None = None) -> None:
        self.conn = conn
        self.now = now
        self.error = error


class Connected(Event):
    """An upstream connection asked for by a Connect action is established."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class ConnectFailed(Event):
    """An upstream connection could not be established.

    ``reason`` is ``"refused"``, ``"timeout"`` or ``"error"``; ``message`` is for logs, in
    words that follow the peer's name ("is unreachable (no route to host)";
    :func:`proxycore.errors.socket_error_words`).
    """

    __slots__ = ("message", "reason")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "message", "reason")

    def __init__(self, conn: int, now: float, reason: str, message: str = "") -> None:
        self.conn = conn
        self.now = now
        self.reason = reason
        self.message = message


class WritePaused(Event):
    """The connection's outgoing buffer is above its high-water mark (backpressure)."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class WriteResumed(Event):
    """The connection's outgoing buffer drained below its low-water mark."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class WriteFailed(Event):
    """Writing to the connection failed (the peer reset it, or closed it without reading what
    was sent): what was still queued is lost and later Sends are dropped, but what the peer
    sent before may still be waiting to be read — an origin may answer a request before it
    has read the body (RFC 9112 §9.5), then close. The adapter keeps the socket open and keeps
    reading: DataReceived, then EofReceived or Closed as usual; the core decides what to do
    and closes the connection when it is done with it.

    ``error`` is what happened, in words that follow the peer's name ("reset the connection",
    :func:`proxycore.errors.socket_error_words`).
    """

    __slots__ = ("error",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "error")

    def __init__(self, conn: int, now: float, error: str = "closed the connection") -> None:
        self.conn = conn
        self.now = now
        self.error = error


class TimerFired(Event):
    """The timer the core set for ``conn`` (a downstream id, or 0 for the pool) is due."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class FilterDone(Event):
    """A deferred filter phase (RunFilter action) finished with ``result`` or ``error``."""

    __slots__ = ("error", "result", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "error", "result", "token")

    def __init__(
        self,
        conn: int,
        token: int,
        now: float,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.token = token
        self.result = result
        self.error = error


class Accepted(Event):
    """A downstream connection was accepted; ``conn`` was allocated by ``Engine.new_id()``.

    ``client`` and ``server`` are (host, port) pairs; ``scheme`` is ``"http"`` or ``"https"``.
    Adapters feed it with the defaults; for a TLS listener the TLS layer
    (:mod:`proxycore.tls`) holds it back until the handshake is done and then passes it on
    with ``scheme="https"`` and ``tls``, a :class:`proxycore.tls.TlsInfo`.
    """

    __slots__ = ("client", "scheme", "server", "tls")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "client", "scheme", "server", "tls")

    def __init__(
        self,
        conn: int,
        now: float,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: str = "http",
        tls: Any = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.client = client
        self.server = server
        self.scheme = scheme
        self.tls = tls


class Drain(Event):
    """Graceful shutdown began: finish in-flight requests, close idle connections, and answer
    with ``Connection: close`` from now on. ``conn`` is 0."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class Stop(Event):
    """The shutdown ends: the grace period ran out (``grace``: how long it was, seconds), or a
    fast shutdown (``grace`` 0). Every exchange still in flight is cut now (logged, and flagged
    as cut in the access log) and every connection closed; the adapter executes the actions,
    then discards what is left and returns. ``conn`` is 0. Adapters feed it once, last."""

    __slots__ = ("grace",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "grace")

    def __init__(self, conn: int, now: float, grace: float = 0.0) -> None:
        self.conn = conn
        self.now = now
        self.grace = grace


class Started(Event):
    """The adapter is listening; background services (health checks) start now. ``conn`` is
    0. Adapters feed it once, right after binding their listeners."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now")


class Resolved(Event):
    """The answer to a Resolve action: ``addresses`` (IPv4/IPv6 strings) or ``error``."""

    __slots__ = ("addresses", "error", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "addresses", "error", "token")

    def __init__(
        self,
        conn: int,
        token: int,
        now: float,
        addresses: list[str] | None = None,
        error: str | None = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.token = token
        self.addresses = addresses or []
        self.error = error


class FileRead(Event):
    """The answer to a ReadFile action: the file's ``content`` or an ``error``."""

    __slots__ = ("content", "error", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "now", "content", "error", "token")

    def __init__(
        self,
        conn: int,
        token: int,
        now: float,
        content: bytes | None = None,
        error: str | None = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.token = token
        self.content = content
        self.error = error


class Reconfigure(Event):
    """A new configuration (a reload: SIGHUP re-read the configuration file). ``app`` and
    ``conf`` replace the engine's; exchanges in flight finish with the app (the filter phases,
    their ``ctx``) they started with, and every exchange, connection and timer armed from now
    on reads the new ``conf``. ``services``: the background services of the new app (None:
    ``app.services()``); one already running (the same object) keeps running, the others
    stop. ``server_tls`` and ``client_tls``: the listener certificates and the upstream
    client contexts, built outside the core as at start-up (new handshakes use them).
    ``access_log``: what gets the access entries from now on (see ``Engine``). ``conn`` is
    0; it is not recorded in traces. The adapter layer builds it
    (``proxycore.adapters.reload``) and feeds it between two events like any other."""

    __slots__ = ("access_log", "app", "client_tls", "conf", "server_tls", "services")
    _fields_: ClassVar[tuple[str, ...]] = (
        "conn", "now", "app", "conf", "services", "server_tls", "client_tls", "access_log",
    )  # fmt: skip

    def __init__(
        self,
        conn: int,
        now: float,
        app: Any,
        conf: Any,
        services: list[Any] | None = None,
        server_tls: Any = None,
        client_tls: Any = None,
        access_log: Any = None,
    ) -> None:
        self.conn = conn
        self.now = now
        self.app = app
        self.conf = conf
        self.services = services
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.access_log = access_log
