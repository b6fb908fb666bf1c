"""The core's record of one upstream connection (the socket is the adapter's).

Theory of operation: an :class:`Upstream` is created when the core emits a Connect action and
lives until the core closes it. While a request uses it, ``session`` points at that request and
every event for the connection is handed to it; while it sits in the pool, ``session`` is None
and any byte or EOF that arrives makes the pool drop it. After a WriteFailed the connection is
still read (the origin may have answered) but carries nothing more and is never pooled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from proxycore.peer import Peer

__all__ = ["Upstream"]

CONNECTING: Final = 0
ACTIVE: Final = 1
IDLE: Final = 2
CLOSED: Final = 3


class Upstream:
    """State of one upstream connection."""

    __slots__ = (
        "buf",
        "eof",
        "id",
        "key",
        "last_read",
        "peer",
        "read_paused",
        "received",
        "requests",
        "session",
        "state",
        "wbuf",
        "write_failed",
        "write_paused",
    )

    def __init__(self, conn_id: int, peer: Peer, now: float) -> None:
        self.id = conn_id
        self.peer = peer
        self.key = peer.key
        self.state = CONNECTING
        self.buf = bytearray()
        self.wbuf: list[bytes] = []
        # The request using this connection (a Session), a health probe, or None while idle.
        self.session: Any = None
        self.last_read = now
        self.read_paused = False
        self.write_paused = False
        self.write_failed = False  # a WriteFailed came: still readable, never reusable
        self.eof = False
        self.received = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"Upstream(id={self.id}, peer={self.peer!r}, state={self.state})"
