"""The seam between the exchange and the client side of the wire: :class:`ServerStream`.

Theory of operation: a request is one :class:`proxycore.session.Session` (the exchange: phases,
peer choice, retries, errors, logging, body pumping). Its client side is a ``ServerStream``:
for HTTP/1.1 the connection itself (:class:`proxycore.downstream.Downstream`, one exchange at a
time, pipelined requests waiting their turn); for HTTP/2 it will be one stream of a multiplexed
connection. The session reaches the per-request resources that live on the client side only
through the methods below, so that they can belong to a stream rather than to a connection:

- **Timers** (``arm`` / ``disarm`` / ``armed``): the session names its own timers (``connect``,
  ``read``, ``write``, ``send``, ``body``); the stream maps them onto its connection's timer.
  Deadlines fire back into the session as ``Session.on_timer(name)``.
- **Deferred filter results** (``filter_token``): a phase run by the adapter (``async def``,
  ``@blocking``) leaves as a RunFilter action carrying the connection id and a token the stream
  hands out; the engine gives the FilterDone back to the stream, which finds the exchange by
  that token (on HTTP/2 many exchanges share a connection) and drops a stale one.
- **Pausing the request body** (``request_pause_changed``): the session's wish
  (``Session.wants_request_paused()``) may have changed; the stream re-evaluates and pauses or
  resumes its source (HTTP/1.1: reading the socket).
- **The end of the exchange** (``exchange_done``), **a client gone** (``client_gone``: the
  session gave up on a client that went away) and **aborting a response** whose head already
  went out (``abort_response``: HTTP/1.1 can only close the connection).
- **Writing the response** (``send_informational``, ``send_response_head``,
  ``send_local_response``, ``send_body``, ``takes_trailers``, ``end_response``): the exchange
  decides what the response says (status, fields after the filters, whether the connection
  may be kept alive by RFC 9110's rules); the stream decides how it is framed on its wire
  (HTTP/1.1: Content-Length, chunked or close-delimited, ``Connection`` lines, the verbatim
  relay of an untouched origin head, the HTTP/1.0 rules). Version-neutral rules both sides use
  live in :mod:`proxycore.semantics`.

Calls go through this native base class: in the compiled core they cost what a direct call
costs (a call through a Protocol or ``Any`` would be a generic attribute lookup), and no event
object is allocated per call. This module joins the compiled set together with its subclass
(a compiled class whose base is interpreted silently becomes a slow non-native class).

- **The request body** is pushed: the stream decodes it (HTTP/1.1: Content-Length or chunked
  with trailers) and hands pieces to ``Session.on_request_body(piece, end_of_stream)`` while
  the session takes them (``Session.takes_request_body()``; ``push_request_body`` resumes after
  a pause); it keeps what the session does not take yet in its own bounded buffer (HTTP/1.1:
  the connection's buffer, reading paused over ``read_buffer_limit``). A malformed body is
  ``Session.on_request_body_error``; a trailer section ``Session.on_request_trailers``.
  Discarding an unread body after an early answer is the stream's (``discard_request_body``).
  How a body is delimited is this module's vocabulary (``NO_BODY``, ``SIZED_BODY``,
  ``OPEN_BODY``), not a wire format's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.http import Headers, ResponseHeader
    from proxycore.meta import ResponseMeta
    from proxycore.session import Session
    from proxycore.tls import TlsInfo

__all__ = ["NO_BODY", "OPEN_BODY", "SIZED_BODY", "ServerStream"]

# How a request body is delimited, as the exchange needs to know it (RFC 9110 §6.4, §8.6):
NO_BODY: Final = 0  # none
SIZED_BODY: Final = 1  # its length is announced up front (Content-Length)
OPEN_BODY: Final = 2  # its length is not known: the protocol ends it (chunked; END_STREAM)


class ServerStream:
    """The client side of one exchange (HTTP/1.1: the connection).

    Attributes the session reads: ``engine``, ``id`` (the connection id, for RunFilter),
    ``client_addr``, ``server_addr``, ``scheme``, ``tls``, ``requests`` (exchanges finished on
    this connection before), ``write_paused`` (the client is not taking output), ``peer_eof``
    (the client will send nothing more), ``closed``.
    """

    __slots__ = ()

    engine: Engine
    id: int
    client_addr: tuple[str, int]
    server_addr: tuple[str, int]
    scheme: str
    tls: TlsInfo | None
    requests: int
    write_paused: bool
    peer_eof: bool
    closed: bool

    def peer_name(self) -> str:
        """The client's address as ``host:port`` (``[v6]:port``), for messages."""
        host, port = self.client_addr[0], self.client_addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def forwarded_fields(self) -> bytes:
        """The ``X-Forwarded-For`` / ``X-Forwarded-Proto`` field lines for this client."""
        raise NotImplementedError

    # -- the exchange's timers (names: the session's)

    def arm(self, name: str, deadline: float) -> None:
        """Set the exchange's timer ``name`` to fire at ``deadline`` (replacing it)."""
        raise NotImplementedError

    def disarm(self, name: str) -> None:
        """Cancel the exchange's timer ``name`` (nothing if it is not armed)."""
        raise NotImplementedError

    def disarm_all(self, names: tuple[str, ...]) -> None:
        """Cancel every timer in ``names`` (the end of an exchange)."""
        raise NotImplementedError

    def armed(self, name: str) -> bool:
        raise NotImplementedError

    # -- deferred filter results

    def filter_token(self, s: Session) -> int:
        """A token for a phase of ``s`` that the adapter runs; its FilterDone comes back to
        ``s.on_filter_done`` through :meth:`filter_done`."""
        raise NotImplementedError

    def filter_done(self, token: int, result: object, error: BaseException | None) -> None:
        raise NotImplementedError

    # -- the request body's flow

    def request_pause_changed(self) -> None:
        """The session's wish to pause the request body may have changed: re-evaluate."""
        raise NotImplementedError

    # -- the end of an exchange

    def exchange_done(self, s: Session, keep_alive: bool) -> None:
        """``s`` finished (its logging phase ran): free the stream; ``keep_alive``: the
        connection may carry another exchange."""
        raise NotImplementedError

    def client_gone(self, s: Session) -> None:
        """``s`` gave up on a client that went away: drop what is left of it."""
        raise NotImplementedError

    def abort_response(self, s: Session) -> None:
        """The response of ``s`` was cut short after its head went out: signal the client
        that it is incomplete (HTTP/1.1: close the connection)."""
        raise NotImplementedError

    def active_exchanges(self) -> int:
        """Exchanges in progress on this connection (for the engine's stats)."""
        raise NotImplementedError

    def stop(self, grace: float) -> int:
        """The shutdown's end (the grace period ran out): close at once; every exchange still
        in flight ends as cut (``Session.on_stop``). Returns how many were cut."""
        raise NotImplementedError

    # -- the request body

    def request_body_kind(self) -> int:
        """How the current request's body is delimited: ``NO_BODY``, ``SIZED_BODY`` or
        ``OPEN_BODY``."""
        raise NotImplementedError

    def push_request_body(self, s: Session) -> bool:
        """Hand ``s`` the body pieces it takes now (a resume); False if the body turned out
        malformed or the session failed on a piece (it was told)."""
        raise NotImplementedError

    def request_trailers(self) -> Headers | None:
        """The request's trailer section, once its body ended (None: none)."""
        raise NotImplementedError

    def request_body_left(self) -> int:
        """Bytes of a sized request body not received yet (-1: an open body)."""
        raise NotImplementedError

    def discard_request_body(self) -> int:
        """Drop what arrived of the request body: 1 if it has now ended, 0 if more is to come,
        -1 if it is malformed (the connection cannot be reused)."""
        raise NotImplementedError

    # -- writing the response

    def send_informational(self, s: Session, resp: ResponseHeader, tokens: frozenset[str]) -> None:
        """Relay a 1xx response (not 101) of ``s``; ``tokens``: the fields its Connection field
        named (hop-by-hop). A client that cannot take one gets nothing."""
        raise NotImplementedError

    def send_response_head(
        self, s: Session, resp: ResponseHeader, meta: ResponseMeta, edited: bool, keep: bool
    ) -> int:
        """Send the final head of a proxied response; ``meta``: what the upstream codec parsed
        (for a verbatim relay), ``edited``: a filter may have changed ``resp``, ``keep``: the
        exchange allows the connection to be kept alive. Returns the body framing
        (``proxycore.h1.parse.BODY_*``; ``BODY_CLOSE``: the connection closes after it)."""
        raise NotImplementedError

    def send_local_response(
        self, s: Session, status: int, h: Headers, body: bytes, keep: bool
    ) -> None:
        """Send a response the proxy made itself (``session.respond``)."""
        raise NotImplementedError

    def send_body(self, piece: bytes) -> bool:
        """A piece of the response body; False if it runs past the announced length."""
        raise NotImplementedError

    def takes_trailers(self) -> bool:
        """Whether the current response can carry a trailer section."""
        raise NotImplementedError

    def end_response(self, trailers: Headers | None) -> bool:
        """End the response (with ``trailers`` where it can carry them); False if the body was
        shorter than announced."""
        raise NotImplementedError

    def response_sent(self) -> int:
        """Body bytes of the current response sent so far (for messages)."""
        raise NotImplementedError

    def response_length(self) -> int:
        """The current response's announced length (for messages)."""
        raise NotImplementedError
