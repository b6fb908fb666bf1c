"""Actions: everything the core asks an adapter to do.

Theory of operation: :meth:`Engine.feed` returns a list of these, in the order they must be
carried out. Each names a connection by id. The adapter executes them exactly and makes no
protocol decision of its own; the result of an action that takes time (connecting, running a
deferred filter, a timer) comes back later as an event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from proxycore.peer import Peer

__all__ = [
    "Action",
    "Close",
    "Connect",
    "PauseReading",
    "ReadFile",
    "Resolve",
    "ResumeReading",
    "RunFilter",
    "Send",
    "SetTimer",
    "ShutdownWrite",
]


class Action:
    """Base class of all actions. ``conn`` is the connection (or timer owner) it concerns."""

    __slots__ = ("conn",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn",)
    conn: int

    def __repr__(self) -> str:
        fields = [f"{s}={getattr(self, s)!r}" for s in type(self)._fields_]
        return f"{type(self).__name__}({', '.join(fields)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in type(self)._fields_)

    __hash__ = None  # type: ignore[assignment]


class Send(Action):
    """Write ``data`` to the connection (in order, after earlier Sends)."""

    __slots__ = ("data",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "data")

    def __init__(self, conn: int, data: bytes) -> None:
        self.conn = conn
        self.data = data


class Close(Action):
    """Close the connection: after flushing pending writes, or at once (RST) if ``abort``.

    The adapter reports the end with a Closed event; the core ignores events for ids it closed.
    """

    __slots__ = ("abort",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "abort")

    def __init__(self, conn: int, abort: bool = False) -> None:
        self.conn = conn
        self.abort = abort


class ShutdownWrite(Action):
    """Half-close: flush pending writes, then send FIN; keep reading (lingering close)."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn",)

    def __init__(self, conn: int) -> None:
        self.conn = conn


class Connect(Action):
    """Open a new upstream connection with id ``conn`` to ``peer``.

    The adapter answers Connected or ConnectFailed(reason="refused"|"timeout"|"error"). The
    connect timeout is enforced by the core's timer, so the adapter needs none of its own.

    ``bind``: local source addresses (``client_bind_to_ipv4/ipv6``, chosen by
    :mod:`proxycore.bind`), at most one per address family. The adapter binds the socket (port
    0) to the one of the family it connects with, before connecting; none of that family, or
    an empty tuple (the setting off): no bind. A bind that fails is a ConnectFailed("error")
    whose message names the address.
    """

    __slots__ = ("bind", "peer")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "peer", "bind")

    def __init__(self, conn: int, peer: Peer, bind: tuple[str, ...] = ()) -> None:
        self.conn = conn
        self.peer = peer
        self.bind = bind


class PauseReading(Action):
    """Stop delivering DataReceived for this connection until ResumeReading (backpressure)."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn",)

    def __init__(self, conn: int) -> None:
        self.conn = conn


class ResumeReading(Action):
    """Deliver DataReceived again."""

    __slots__ = ()
    _fields_: ClassVar[tuple[str, ...]] = ("conn",)

    def __init__(self, conn: int) -> None:
        self.conn = conn


class SetTimer(Action):
    """Arrange for TimerFired(conn) at monotonic time ``deadline`` (None cancels).

    Each timer owner (a downstream connection, or 0 for the pool) has one timer; a new SetTimer
    replaces the previous one. Firing early is harmless (the core re-arms); firing late only
    delays a timeout.
    """

    __slots__ = ("deadline",)
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "deadline")

    def __init__(self, conn: int, deadline: float | None) -> None:
        self.conn = conn
        self.deadline = deadline


class RunFilter(Action):
    """Run a filter phase that may wait, then feed FilterDone(conn, token, result|error).

    ``call`` is a zero-argument callable. ``kind`` is ``"async"`` when ``call()`` returns an
    awaitable to await on the adapter's loop, or ``"blocking"`` when ``call()`` may block and
    must run off the I/O thread (a worker thread or greenlet). The core does not wait: other
    connections keep being served while it runs.
    """

    __slots__ = ("call", "kind", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "call", "kind", "token")

    def __init__(self, conn: int, token: int, call: Callable[[], Any], kind: str) -> None:
        self.conn = conn
        self.token = token
        self.call = call
        self.kind = kind


class Resolve(Action):
    """Resolve ``host`` (A and AAAA) for service ``conn``; answer ``Resolved(conn, token,
    addresses=[ip, ...])`` or ``Resolved(conn, token, error="...")``. Never block the loop."""

    __slots__ = ("host", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "host", "token")

    def __init__(self, conn: int, token: int, host: str) -> None:
        self.conn = conn
        self.token = token
        self.host = host


class ReadFile(Action):
    """Read the file at ``path`` for service ``conn`` (discovery); answer ``FileRead(conn, token,
    content=bytes)`` or ``FileRead(conn, token, error="...")``. Small files only; off the loop
    if your runtime offers that."""

    __slots__ = ("path", "token")
    _fields_: ClassVar[tuple[str, ...]] = ("conn", "path", "token")

    def __init__(self, conn: int, token: int, path: str) -> None:
        self.conn = conn
        self.token = token
        self.path = path
