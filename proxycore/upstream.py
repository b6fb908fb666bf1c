"""The core's record of one upstream connection (the socket is the adapter's).

Theory of operation: an :class:`Upstream` is created when the core emits a Connect action and
lives until the core closes it. While a request uses it, ``session`` points at that request and
every event for the connection is handed to it; while it sits in the pool, ``session`` is None
and any byte or EOF that arrives makes the pool drop it. After a WriteFailed the connection is
still read (the origin may have answered) but carries nothing more and is never pooled.

The connection writes the request in HTTP/1.1's wire format (``send_request_head``,
``send_body``, ``end_body``): the exchange decides what the request says and whether its body
is chunked, this frames it (the first piece of the HTTP/1.1 upstream codec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from proxycore.h1.write import encode_chunk, serialize_request_fields, serialize_trailers

if TYPE_CHECKING:
    from proxycore.engine import Engine
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

    def send_request_head(
        self, e: Engine, method: str, path: str, items: list[tuple[str, str, str]]
    ) -> None:
        e.send(self, serialize_request_fields(method, path, items, "HTTP/1.1"))

    def send_body(self, e: Engine, piece: bytes, chunked: bool) -> None:
        e.send(self, encode_chunk(piece) if chunked else piece)

    def end_body(self, e: Engine, trailer_fields: list[tuple[str, str]]) -> None:
        """The last chunk and the trailer section of a chunked request body."""
        e.send(self, serialize_trailers(trailer_fields))
