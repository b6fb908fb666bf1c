"""The seams between the protocol-neutral exchange and the wire codecs.

Theory of operation: a request is one :class:`proxycore.session.Session` (the exchange: phases,
peer choice, retries, errors, logging, body pumping), which knows RFC 9110 semantics and no wire
format. On each side of it sits a codec:

- downstream, a :class:`ServerStream`: the client side of one exchange. HTTP/1.1
  (:mod:`proxycore.h1.server`): the connection itself, one exchange at a time. HTTP/2
  (:mod:`proxycore.h2.server`): one stream of a multiplexed connection.
- upstream, an :class:`UpstreamCodec` (:mod:`proxycore.upstream`): the origin side. HTTP/1.1
  now (one exchange per connection at a time), HTTP/2 later (streams sharing a connection).

The codecs call typed methods on the session, and the session calls the methods below on its
codecs: direct calls through native base classes (in the compiled core a call through a
Protocol would be a generic attribute lookup), no event objects allocated in between.

Bodies are pushed, with backpressure both ways. A codec hands decoded body pieces to the
session (``Session.on_request_body(piece, eos)`` / ``Session.on_response_body(piece, eos)``)
only while the session has not paused that direction; the session pauses a direction
(``ServerStream.pause_request_body`` / ``UpstreamCodec.pause_response_body``) when the other
side cannot take more or a deferred body filter is running, and the codec then keeps what
arrives in its own bounded buffer (HTTP/1.1: the undecoded bytes, reading paused; HTTP/2: the
DATA it has not yet acknowledged with WINDOW_UPDATE), handing it over on resume.

Per-request resources are the stream's: its timers (``arm``/``disarm``; keys are the session's
timer names, the stream maps them onto its connection's timer), the routing of deferred filter
results (a RunFilter carries ``conn_id`` and a token; the connection finds the stream by token),
aborting (HTTP/1.1: close the connection; HTTP/2: RST_STREAM on that stream only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.errors import ProxyError
    from proxycore.http import Headers, ResponseHeader
    from proxycore.session import Session
    from proxycore.tls import TlsInfo

__all__ = [
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "BODY_STREAM",
    "ServerStream",
]

# How a message body is delimited, as the codecs report it and the session asks for it:
BODY_NONE: Final = 0  # no body
BODY_LENGTH: Final = 1  # exactly `length` bytes (Content-Length)
BODY_STREAM: Final = 2  # length unknown, ended by the protocol (chunked; HTTP/2 END_STREAM)
BODY_CLOSE: Final = 3  # until the connection closes (HTTP/1.x responses only, RFC 9112 §6.3)


class ServerStream:
    """The client side of one exchange (HTTP/1.1: the connection; HTTP/2: a stream).

    Attributes the session reads: ``engine``, ``id`` (the connection id, for RunFilter and
    timers), ``client_addr``, ``server_addr``, ``scheme``, ``tls``, ``requests`` (exchanges this
    connection finished before), ``write_paused`` (the client is not taking output),
    ``http_version`` (``"1.0"``, ``"1.1"``, ``"2"``), ``closed``.
    """

    engine: Engine
    id: int
    client_addr: tuple[str, int]
    server_addr: tuple[str, int]
    scheme: str
    tls: TlsInfo | None
    requests: int
    write_paused: bool
    closed: bool
    http_version: str

    def peer_name(self) -> str:
        """The client's address as ``host:port`` (``[v6]:port``), for messages."""
        host, port = self.client_addr[0], self.client_addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- timers of this exchange (keys: the session's timer names)
    def arm(self, name: str, deadline: float) -> None:
        raise NotImplementedError

    def disarm(self, name: str) -> None:
        raise NotImplementedError

    def armed(self, name: str) -> bool:
        raise NotImplementedError

    # -- request body flow
    def pause_request_body(self, paused: bool) -> None:
        """Stop (True) or resume (False) handing request body pieces to the session."""
        raise NotImplementedError

    def request_body_pending(self) -> bool:
        """Body bytes received but not yet handed to the session (paused)."""
        raise NotImplementedError

    # -- the response
    def send_informational(self, resp: ResponseHeader) -> None:
        """Relay a 1xx response (not 101) with its end-to-end fields."""
        raise NotImplementedError

    def send_response_head(
        self, s: Session, resp: ResponseHeader, edited: bool, meta: Any, local: bool
    ) -> None:
        """Send the final response head. ``edited``: a filter may have changed ``resp``;
        ``meta``: what the upstream codec parsed (for a verbatim relay between like codecs),
        or None; ``local``: a response the proxy made itself (``session.respond``)."""
        raise NotImplementedError

    def send_body(self, s: Session, piece: bytes) -> bool:
        """Send a piece of response body; False if the session must abort (too long)."""
        raise NotImplementedError

    def end_response(self, s: Session, trailers: Headers | None) -> bool:
        """End the response body (with trailers, where the protocol can carry them); False
        if the body did not match its announced length."""
        raise NotImplementedError

    def abort_response(self, s: Session, err: ProxyError) -> None:
        """After the head went out an error can only cut the response short."""
        raise NotImplementedError

    def exchange_done(self, s: Session, keep_alive: bool) -> None:
        """The session finished (and its logging phase ran): free the stream."""
        raise NotImplementedError

    def client_gone(self, s: Session) -> None:
        """The session gave up on a client that went away: drop what is left of it."""
        raise NotImplementedError
