"""The seam between the exchange and the origin side of the wire: :class:`OriginStream` and
:class:`UpstreamOwner`.

Theory of operation: this module holds two small native base classes and the vocabulary they
share; it holds no protocol code. It is the origin-side counterpart of
:mod:`proxycore.codec` (whose ``ServerStream`` is the client side of an exchange).

- An :class:`OriginStream` is an exchange's handle on its upstream: what the exchange
  (:class:`proxycore.session.Session`) calls to write the request and to be handed the
  response. For HTTP/1.1 it is the connection itself (:class:`proxycore.upstream.Upstream`,
  one exchange at a time, so nothing is allocated per request); an HTTP/2 upstream codec will
  hand out one per stream of a shared pooled connection. The codec decides everything about
  the wire: how the request is framed (Content-Length or chunked, the trailer section, the
  verbatim head with ``X-Forwarded-*`` spliced in), how the response head and its 1xx are
  parsed, how the response body is delimited and decoded, and whether the connection can
  carry another exchange afterwards. The exchange decides what the request says, which
  response it relays and when it takes body pieces.
- An :class:`UpstreamOwner` is what uses an upstream connection and is told what happens on
  it: an exchange, or a health probe (:mod:`proxycore.health`). The engine hands every event
  of an upstream connection to its codec (``Upstream.on_data``, ``on_eof`` …), which calls
  the owner through this base class: in the compiled core that costs what a direct call
  costs, whichever kind of owner it is, and no event object is allocated per call.

The response body is pushed, as the request body is on the client side: the codec hands
pieces to ``UpstreamOwner.on_response_body(piece, end_of_stream)`` while the owner takes them
(``takes_response_body()``), and keeps the rest in its own buffer (reading paused over
``read_buffer_limit``, or while ``wants_response_paused()``); ``OriginStream.push_response_body``
resumes after a pause. How a response body is delimited (``BODY_*``) is this module's
vocabulary, defined with the parse records in :mod:`proxycore.meta`; every parser uses the
same values.

This module joins the compiled set with its subclasses (a compiled class whose base is
interpreted silently becomes a slow non-native class). ``UpstreamOwner`` allows interpreted
subclasses (the health probe is one); calls on compiled owners still go through the vtable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from proxycore.meta import BODY_CHUNKED, BODY_CLOSE, BODY_LENGTH, BODY_NONE

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.errors import HTTPParseError
    from proxycore.http import Headers, RequestHeader, ResponseHeader
    from proxycore.meta import ResponseMeta
    from proxycore.peer import Peer

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "OriginStream",
    "UpstreamOwner",
]

# How a message body is delimited (BODY_*): defined with the parse records (proxycore.meta),
# re-exported here as the codec's vocabulary.


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamOwner:
    """What uses an upstream connection: an exchange or a health probe. Its codec calls
    these; every one of them the owner must answer (the base raises NotImplementedError)."""

    __slots__ = ()

    def client_conn(self) -> int:
        """The id of the client connection this owner serves (0: none, a probe)."""
        return 0

    # -- the connection

    def on_upstream_connected(self, up: OriginStream) -> None:
        raise NotImplementedError

    def on_upstream_connect_failed(self, up: OriginStream, reason: str, message: str) -> None:
        raise NotImplementedError

    def on_upstream_eof(self, error: str | None) -> None:
        """The origin closed (``error``: how it broke, None for a clean EOF)."""
        raise NotImplementedError

    def on_upstream_write_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def on_upstream_write_failed(self, error: str) -> None:
        """The origin stopped taking the request; it may still answer."""
        raise NotImplementedError

    # -- the response

    def on_informational(self, resp: ResponseHeader, meta: ResponseMeta) -> bool:
        """A 1xx response head; False if the owner failed on it (the codec stops)."""
        raise NotImplementedError

    def on_response_head(self, resp: ResponseHeader, meta: ResponseMeta) -> None:
        """The final response head; ``meta.body`` says how its body is delimited."""
        raise NotImplementedError

    def on_invalid_response(self, err: HTTPParseError, words: str) -> None:
        """The origin sent a malformed head or body: ``err``, and what it did in words
        ("sent an invalid head: ...")."""
        raise NotImplementedError

    def takes_response_data(self) -> bool:
        """Whether a piece of a sized body may go straight through now, with nothing
        buffered and nothing to re-evaluate after it (the fast path)."""
        raise NotImplementedError

    def takes_response_body(self) -> bool:
        """Whether the codec may hand over a response body piece now (the codec hands over
        nothing after the last piece)."""
        raise NotImplementedError

    def on_response_body(self, piece: bytes, eos: bool) -> None:
        """A piece of the response body (``eos``: the last one)."""
        raise NotImplementedError

    def response_data_buffered(self) -> None:
        """The codec buffered response bytes it did not hand over."""
        raise NotImplementedError

    def wants_response_paused(self) -> bool:
        """Whether the owner wants the response paused (its client is not taking output)."""
        raise NotImplementedError


class OriginStream:
    """An exchange's handle on its upstream (HTTP/1.1: the connection).

    Attributes the exchange reads: ``id``, ``peer``, ``last_read`` (when the response last
    made progress, for the read timeout).
    """

    __slots__ = ()

    id: int
    peer: Peer
    last_read: float

    # -- taking the connection

    def bind(self, owner: UpstreamOwner) -> None:
        """``owner`` waits for this connection to be established."""
        raise NotImplementedError

    def begin(self, owner: UpstreamOwner, reused: bool, now: float) -> None:
        """``owner`` starts an exchange on this (established) connection."""
        raise NotImplementedError

    def in_use(self) -> bool:
        """Established and carrying an exchange (not connecting, idle or closed)."""
        raise NotImplementedError

    # -- writing the request

    def send_received_head(
        self,
        e: Engine,
        method: str,
        raw: bytes,
        fields: bytes | None,
        host: str | None,
        length: int,
    ) -> None:
        """Forward a request head as it was received (``raw``), with the ``X-Forwarded-*``
        field lines ``fields`` and ``host`` (for X-Forwarded-Host) spliced in (None: none);
        ``length``: its Content-Length body's length (-1: no body)."""
        raise NotImplementedError

    def send_request_head(
        self, e: Engine, method: str, req: RequestHeader, has_body: bool, filtered: bool
    ) -> None:
        """Send ``req`` (its fields already end-to-end); ``has_body``: a body follows (framed
        by its Content-Length if it has a valid one, else by the codec); ``filtered``: a filter
        may have set framing fields. ``method``: the client's method (for the response's
        framing). Raises ValueError on a head that cannot be serialized."""
        raise NotImplementedError

    def send_body(self, e: Engine, piece: bytes) -> None:
        """A piece of the request body."""
        raise NotImplementedError

    def sends_trailers(self) -> bool:
        """Whether the request body's end carries a trailer section."""
        raise NotImplementedError

    def end_request(self, e: Engine, trailer_fields: list[tuple[str, str]] | None) -> bool:
        """The request body ended (with ``trailer_fields`` where it carries them); False if
        it was not as long as its Content-Length said."""
        raise NotImplementedError

    def request_sent(self) -> int:
        """Request body bytes sent so far."""
        raise NotImplementedError

    def request_length(self) -> int:
        """The request body's announced length (-1: none)."""
        raise NotImplementedError

    # -- the response

    def push_response_body(self, e: Engine) -> bool:
        """Hand the owner the buffered body pieces it takes now, then re-evaluate pausing
        (as ``response_pause_changed``) while it still owns the stream; False if the body
        turned out malformed (the owner was told)."""
        raise NotImplementedError

    def response_trailers(self) -> Headers | None:
        """The response's trailer section, once its body ended (None: none)."""
        raise NotImplementedError

    def response_bytes(self) -> int:
        """Bytes received from the origin during this exchange."""
        raise NotImplementedError

    def response_pause_changed(self, e: Engine) -> None:
        """The owner's wish to pause the response may have changed: re-evaluate."""
        raise NotImplementedError

    def reading_paused(self) -> bool:
        raise NotImplementedError

    def writing_paused(self) -> bool:
        raise NotImplementedError

    def mark_read(self, now: float) -> None:
        """Count the read timeout from ``now`` (the request is on its way)."""
        raise NotImplementedError

    # -- the end of the exchange

    def reusable(self) -> bool:
        """Whether the connection can carry another exchange, as far as the wire is
        concerned (the whole response read, nothing more arrived, the request complete)."""
        raise NotImplementedError

    def end(self, e: Engine, reuse: bool) -> None:
        """The exchange is over: back to the pool if the exchange allows it (``reuse``) and
        the wire does (``reusable()``), else closed."""
        raise NotImplementedError

    def abort(self, e: Engine) -> None:
        """The exchange failed or was cut: close at once, nothing more is sent."""
        raise NotImplementedError
