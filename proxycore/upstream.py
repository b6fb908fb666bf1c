"""One upstream connection: the core's record of it (the socket is the adapter's) and its
HTTP/1.1 codec, the origin side of an exchange.

Theory of operation: an :class:`Upstream` is created when the core emits a Connect action and
lives until the core closes it. While an exchange uses it, ``session`` points at its owner (a
:class:`proxycore.session.Session`, or a health probe) and the engine hands every event of the
connection to the codec here (``on_data``, ``on_eof``, ``on_write_failed`` …), which tells the
owner through :class:`proxycore.upcodec.UpstreamOwner`; while it sits in the pool, ``session``
is None and any byte or EOF that arrives makes the pool drop it. After a WriteFailed the
connection is still read (the origin may have answered) but carries nothing more and is never
pooled.

HTTP/1.1 carries one exchange at a time, so the connection is the exchange's handle
(:class:`proxycore.upcodec.OriginStream`): ``begin`` resets the per-exchange state, nothing is
allocated per request. The codec (RFC 9112):

- **writes the request**: a head relayed as received with the ``X-Forwarded-*`` field lines
  spliced in before its blank line (``send_received_head``), or serialized from fields
  (``send_request_head``), where a body without a valid Content-Length is sent chunked
  (§7.1; a filter's Transfer-Encoding is dropped: framing is the codec's); body pieces, chunk
  encoded where chunked; the last chunk with the trailer section (§7.1.2); a Content-Length
  body that came out shorter than announced is reported (``end_request`` returns False);
- **parses the response**: heads until the final one, each 1xx handed to the owner (§15.2
  of RFC 9110; a 101 is the owner's to refuse), then the body by its framing (Content-Length,
  chunked with trailers, or until the connection closes, §6.3), pushed to the owner while it
  takes pieces; a Content-Length body that fits one read goes straight through (the fast
  path); what the owner does not take waits in ``buf``, reading paused over
  ``read_buffer_limit``;
- **decides reuse**: the connection can carry another exchange only when the response was
  persistent and read to its end with nothing after it, the request was sent whole, and the
  connection neither ended nor failed a write (§9.3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from proxycore.errors import HTTPParseError
from proxycore.h1.parse import ChunkedDecoder, ResponseMeta, find_head_end, parse_response_head
from proxycore.h1.write import encode_chunk, serialize_request_fields, serialize_trailers
from proxycore.upcodec import BODY_CHUNKED, BODY_CLOSE, BODY_LENGTH, OriginStream, UpstreamOwner

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.http import Headers, RequestHeader
    from proxycore.peer import Peer

__all__ = ["Upstream"]

CONNECTING: Final = 0
ACTIVE: Final = 1
IDLE: Final = 2
CLOSED: Final = 3


class Upstream(OriginStream):
    """One upstream connection and its HTTP/1.1 codec."""

    __slots__ = (
        "_chunked",
        "_decoder",
        "_ended",
        "_head_done",
        "_length",
        "_meta",
        "_method",
        "_remaining",
        "_sent",
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
        # The owner of the exchange using this connection (a Session or a health probe), or
        # None while idle. Typed Any like any slot tools may fill: the codec reads it once per
        # event into an UpstreamOwner local (a type check), and calls it natively from there.
        self.session: Any = None
        self.last_read = now
        self.read_paused = False
        self.write_paused = False
        self.write_failed = False  # a WriteFailed came: still readable, never reusable
        self.eof = False
        self.received = 0  # bytes received during the current exchange
        self.requests = 0
        # the current exchange: the request's framing and the response's parsing state
        self._method = "GET"  # the client's method (a HEAD's response has no body)
        self._chunked = False
        self._length = -1  # the request's Content-Length (-1: none)
        self._sent = 0  # request body bytes sent
        self._head_done = False
        self._meta: ResponseMeta | None = None
        self._remaining = 0  # of a Content-Length response body
        self._decoder: ChunkedDecoder | None = None
        self._ended = False  # the response body's last piece was handed over

    def __repr__(self) -> str:
        return f"Upstream(id={self.id}, peer={self.peer!r}, state={self.state})"

    # ------------------------------------------------------------------ taking it

    def bind(self, owner: UpstreamOwner) -> None:
        self.session = owner

    def begin(self, owner: UpstreamOwner, reused: bool, now: float) -> None:
        self.state = ACTIVE
        self.session = owner
        if reused:
            self.requests += 1
        else:
            self.requests = 1
        self.received = 0
        self.last_read = now
        self._chunked = False
        self._length = -1
        self._sent = 0
        self._head_done = False
        self._meta = None
        self._remaining = 0
        self._decoder = None
        self._ended = False

    def in_use(self) -> bool:
        return self.state == ACTIVE

    # ------------------------------------------------------------------ the request

    def send_received_head(
        self,
        e: Engine,
        method: str,
        raw: bytes,
        fields: bytes | None,
        host: str | None,
        length: int,
    ) -> None:
        if fields is not None:
            xfh = b"X-Forwarded-Host: %b\r\n" % host.encode("latin-1") if host else b""
            raw = b"%b%b%b\r\n" % (raw[:-2], fields, xfh)
        self._method = method
        self._chunked = False
        self._length = length
        e.send(self, raw)
        self._sent = 0

    def send_request_head(
        self, e: Engine, method: str, req: RequestHeader, has_body: bool, filtered: bool
    ) -> None:
        h = req.headers
        if filtered and "transfer-encoding" in h:
            h.remove("transfer-encoding")  # framing is ours to decide
        self._method = method
        self._chunked = False
        self._length = -1
        if has_body:
            cl = h.get("content-length")
            if cl is not None and cl.isdigit():
                self._length = int(cl)
            else:
                h.remove("content-length")
                h.add("Transfer-Encoding", "chunked")
                self._chunked = True
        e.send(self, serialize_request_fields(req.method, req.path, h._items, "HTTP/1.1"))
        self._sent = 0

    def send_body(self, e: Engine, piece: bytes) -> None:
        if not piece:
            return
        self._sent += len(piece)
        e.send(self, encode_chunk(piece) if self._chunked else piece)

    def sends_trailers(self) -> bool:
        return self._chunked

    def end_request(self, e: Engine, trailer_fields: list[tuple[str, str]] | None) -> bool:
        if self._chunked:
            e.send(self, serialize_trailers(trailer_fields if trailer_fields is not None else []))
            return True
        return self._length < 0 or self._sent == self._length

    def request_sent(self) -> int:
        return self._sent

    def request_length(self) -> int:
        return self._length

    # ------------------------------------------------------------------ events

    def on_connected(self, e: Engine) -> None:
        s: UpstreamOwner | None = self.session
        if s is None:
            e.close_upstream(self)
            return
        s.on_upstream_connected(self)

    def on_connect_failed(self, reason: str, message: str) -> None:
        self.state = CLOSED
        s: UpstreamOwner | None = self.session
        self.session = None
        if s is not None:
            s.on_upstream_connect_failed(self, reason, message)

    def on_eof(self, e: Engine, error: str | None) -> None:
        """EOF (``error`` None) or the connection closed (``error``: how)."""
        self.eof = True
        s: UpstreamOwner | None = self.session
        if s is None:
            e.close_upstream(self)  # RFC 9112 §9.3: an idle connection that ends is dropped
        else:
            s.on_upstream_eof(error)

    def on_write_paused(self, paused: bool) -> None:
        self.write_paused = paused
        s: UpstreamOwner | None = self.session
        if s is not None:
            s.on_upstream_write_paused(paused)

    def on_write_failed(self, e: Engine, error: str) -> None:
        self.write_failed = True
        self.wbuf.clear()
        self.write_paused = False
        s: UpstreamOwner | None = self.session
        if s is None:
            e.close_upstream(self, abort=True)
        else:
            s.on_upstream_write_failed(error)

    def on_data(self, e: Engine, data: bytes) -> None:
        owner: UpstreamOwner | None = self.session
        if owner is None:
            # RFC 9112 §9.3: nothing may arrive on an idle connection; drop it.
            e.close_upstream(self)
            return
        self.last_read = e.now
        self.received += len(data)
        if self._head_done:
            if (
                not self.buf
                and len(data) <= self._remaining
                and self._decoder is None
                and owner.takes_response_data()
            ):
                # Fast path: a Content-Length body straight through.
                self._remaining -= len(data)
                self._ended = self._remaining == 0
                owner.on_response_body(data, self._ended)
                return
            self.buf += data
            owner.response_data_buffered()
            return
        self._parse_heads(e, owner, data)

    # ------------------------------------------------------------------ the response

    def _parse_heads(self, e: Engine, owner: UpstreamOwner, data: bytes) -> None:
        """Parse response heads from ``data`` (when nothing is buffered; the fast path) and
        from the buffer, handing 1xx to the owner, until the final head is in."""
        buf = self.buf
        if data:
            if buf:
                buf += data
            else:
                try:
                    end = find_head_end(data, 0, e.conf.limits, False)
                except HTTPParseError as err:
                    owner.on_invalid_response(err, f"sent an invalid head: {err}")
                    return
                if end < 0:
                    buf += data
                    return
                if end < len(data):
                    buf += data[end:]
                    data = data[:end]
                if not self._response_head(e, owner, data):
                    return
        while not self._head_done and buf and self.session is not None:
            try:
                end = find_head_end(buf, 0, e.conf.limits, False)
            except HTTPParseError as err:
                owner.on_invalid_response(err, f"sent an invalid head: {err}")
                return
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[:end]
            if not self._response_head(e, owner, head):
                return

    def _response_head(self, e: Engine, owner: UpstreamOwner, head: bytes) -> bool:
        """Handle one complete response head; True if more heads may follow (it was a 1xx)."""
        try:
            resp, meta = parse_response_head(head, self._method, e.conf.limits)
        except HTTPParseError as err:
            owner.on_invalid_response(err, f"sent an invalid head: {err}")
            return False
        if resp.status < 200:
            return owner.on_informational(resp, meta)
        self._head_done = True
        self._meta = meta
        if meta.body == BODY_LENGTH:
            self._remaining = meta.length
        elif meta.body == BODY_CHUNKED:
            self._decoder = ChunkedDecoder(e.conf.limits, error_status=502)
        owner.on_response_head(resp, meta)
        return False

    def push_response_body(self, e: Engine) -> bool:
        owner: UpstreamOwner | None = self.session
        meta = self._meta
        assert owner is not None and meta is not None
        buf = self.buf
        body = meta.body
        while buf and not self._ended and owner.takes_response_body():
            if body == BODY_LENGTH:
                n = min(self._remaining, len(buf))
                if n == len(buf):  # the usual case: take it all (one copy, no slice)
                    piece = bytes(buf)
                    buf.clear()
                else:
                    piece = bytes(buf[:n])
                    del buf[:n]
                self._remaining -= n
                self._ended = self._remaining == 0
                owner.on_response_body(piece, self._ended)
                if self._ended and buf:
                    # More bytes than Content-Length: the connection can't be reused.
                    meta.keep_alive = False
            elif body == BODY_CHUNKED:
                dec = self._decoder
                assert dec is not None
                try:
                    pieces = dec.feed(buf)
                except HTTPParseError as err:
                    owner.on_invalid_response(err, f"sent an invalid chunked body: {err}")
                    return False
                if not pieces and not dec.done:
                    break
                last = len(pieces) - 1
                self._ended = dec.done
                if dec.done and last < 0:
                    owner.on_response_body(b"", True)
                for i, piece in enumerate(pieces):
                    owner.on_response_body(piece, dec.done and i == last)
                if dec.done and buf:
                    meta.keep_alive = False
            else:  # BODY_CLOSE
                piece = bytes(buf)
                buf.clear()
                owner.on_response_body(piece, False)
        if (
            body == BODY_CLOSE
            and self.eof
            and not buf
            and not self._ended
            and owner.takes_response_body()
        ):
            self._ended = True
            owner.on_response_body(b"", True)
        if self.session is owner:  # (still this owner's: re-evaluate pausing)
            e.pause_upstream(
                self, owner.wants_response_paused() or len(buf) >= e.conf.read_buffer_limit
            )
        return True

    def response_trailers(self) -> Headers | None:
        dec = self._decoder
        return dec.trailers if dec is not None else None

    def response_bytes(self) -> int:
        return self.received

    def response_pause_changed(self, e: Engine) -> None:
        owner: UpstreamOwner | None = self.session
        assert owner is not None
        e.pause_upstream(
            self, owner.wants_response_paused() or len(self.buf) >= e.conf.read_buffer_limit
        )

    def reading_paused(self) -> bool:
        return self.read_paused

    def writing_paused(self) -> bool:
        return self.write_paused

    def mark_read(self, now: float) -> None:
        self.last_read = now

    # ------------------------------------------------------------------ the end

    def reusable(self) -> bool:
        meta = self._meta
        return (
            meta is not None
            and meta.keep_alive
            and meta.body != BODY_CLOSE
            and not self.buf
            and not self.eof
            and not self.write_failed
            and (self._length < 0 or self._sent == self._length)
        )

    def end(self, e: Engine, reuse: bool) -> None:
        if reuse and self.reusable():
            e.release_upstream(self)
        else:
            e.close_upstream(self)

    def abort(self, e: Engine) -> None:
        e.close_upstream(self, abort=True)
