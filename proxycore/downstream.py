"""One downstream HTTP/1.1 connection: reading request heads, pipelining, keep-alive, closing.

Theory of operation: a Downstream owns the bytes received from the client (``buf``) and at most
one active request (``current``, a :class:`Session`). In the WAIT state it looks for a complete
head in ``buf`` (enforcing size limits and the header timeout) and starts a Session; while a
Session is active, the Session consumes its request body from ``buf`` and anything after it
(pipelined requests) stays buffered until the response is finished, so responses go out in
request order (RFC 9112 §9.3.2). When the buffer holds more than ``read_buffer_limit`` bytes the
connection stops reading (backpressure). A connection ends in one of two ways: ``close()``
after flushing, or a lingering close (half-close, then discard input until EOF or the linger
timeout), used after an error response so the client can read it before the socket goes away.

The connection is the exchange's :class:`proxycore.codec.ServerStream`: the Session reaches its
timers, the routing of its deferred filter results, the pausing of its request body and the end
of the exchange through that base class. The timers a connection may hold: ``header``
(client_header_timeout, from the first byte of a head), ``idle`` (keepalive_timeout between
requests), ``linger``, and the exchange's timers the Session names (``connect``, ``read``,
``write``, ``send``, ``body``), all on the connection's one adapter timer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxycore.accesslog import log_rejected
from proxycore.actions import PauseReading, ResumeReading, SetTimer, ShutdownWrite
from proxycore.codec import NO_BODY, OPEN_BODY, SIZED_BODY, ServerStream
from proxycore.errors import HTTPParseError
from proxycore.h1.parse import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    ChunkedDecoder,
    ResponseMeta,
    find_head_end,
    parse_request_head,
)
from proxycore.h1.write import (
    encode_chunk,
    serialize_response_fields,
    serialize_response_head,
    serialize_trailers,
)
from proxycore.http import Headers, ResponseHeader, reason_phrase
from proxycore.semantics import (
    HOP_BY_HOP,
    end_to_end,
    error_body,
    response_has_body,
    trailer_fields,
)
from proxycore.session import Session

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.tls import TlsInfo

__all__ = ["Downstream"]

_INF: Final = float("inf")
_KEEP_ALIVE: Final = frozenset({"keep-alive"})
_KEEP_ALIVE_LINE: Final = b"\r\nConnection: keep-alive\r\n"

WAIT: Final = 0  # waiting for (the rest of) a request head
ACTIVE: Final = 1  # a request is in progress
LINGER: Final = 2  # write side shut down; discarding input until EOF/timeout
CLOSED: Final = 3

# On Drain, a keep-alive connection whose last response ended less than this many seconds ago
# is not closed at once: its client's next request may be on the way (see on_drain).
DRAIN_RECENT: Final = 1.0


class Downstream(ServerStream):
    """State of one client connection."""

    __slots__ = (
        "_body_decoder",
        "_body_kind",
        "_body_left",
        "_filter_session",
        "_filter_token",
        "_resp_length",
        "_resp_mode",
        "_resp_sent",
        "_search_from",
        "_starting",
        "buf",
        "client_addr",
        "closed",
        "current",
        "engine",
        "fwd",
        "id",
        "peer_eof",
        "read_paused",
        "requests",
        "scheduled",
        "scheme",
        "server_addr",
        "state",
        "timers",
        "tls",
        "wbuf",
        "write_paused",
    )

    def __init__(
        self,
        engine: Engine,
        conn_id: int,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: str,
        tls: TlsInfo | None = None,
    ) -> None:
        self.engine = engine
        self.tls = tls
        self.id = conn_id
        self.client_addr = client
        self.server_addr = server
        self.scheme = scheme
        self.buf = bytearray()
        self.wbuf: list[bytes] = []
        self.state = WAIT
        self.current: Session | None = None
        self.timers: dict[str, float] = {}
        self.scheduled = _INF
        self.read_paused = False
        self.write_paused = False
        self.peer_eof = False
        self.closed = False
        self.requests = 0
        self._search_from = 0
        self._starting = False
        self.fwd = b""
        self._filter_token = 0
        self._filter_session: Session | None = None
        self._body_kind = NO_BODY  # the current request's body (codec.NO_BODY ...)
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._body_decoder: ChunkedDecoder | None = None  # a chunked body's decoder
        self._resp_mode = BODY_NONE  # how the current response's body is framed
        self._resp_length = 0  # its Content-Length (BODY_LENGTH)
        self._resp_sent = 0  # body bytes sent so far (BODY_LENGTH, BODY_CLOSE)

    def forwarded_fields(self) -> bytes:
        """The X-Forwarded-For/-Proto lines for this client, built once per connection."""
        if not self.fwd:
            self.fwd = (
                f"X-Forwarded-For: {self.client_addr[0]}\r\n"
                f"X-Forwarded-Proto: {self.scheme}\r\n".encode("latin-1")
            )
        return self.fwd

    # ------------------------------------------------------------------ the stream (ServerStream)

    def arm(self, name: str, deadline: float) -> None:
        """Set a named deadline; ask the adapter only if it is earlier than scheduled (sessions
        and the connection arm several timers per request: no action for most of them)."""
        self.timers[name] = deadline
        if deadline < self.scheduled:
            self.scheduled = deadline
            self.engine.emit(SetTimer(self.id, deadline))

    def disarm(self, name: str) -> None:
        timers = self.timers
        if name in timers:  # (in/del: direct calls in the compiled core, unlike dict.pop)
            del timers[name]

    def disarm_all(self, names: tuple[str, ...]) -> None:
        timers = self.timers
        if timers:
            for name in names:
                if name in timers:
                    del timers[name]

    def armed(self, name: str) -> bool:
        return name in self.timers

    def filter_token(self, s: Session) -> int:
        # One exchange at a time on HTTP/1.1, so one slot: a later token replaces an earlier.
        token = self.engine.new_token()
        self._filter_token = token
        self._filter_session = s
        return token

    def filter_done(self, token: int, result: object, error: BaseException | None) -> None:
        s = self._filter_session
        if s is None or token != self._filter_token:
            return  # stale: that exchange is over
        if s is not self.current:
            self._filter_session = None
            return
        s.on_filter_done(token, result, error)

    def request_pause_changed(self) -> None:
        self.update_read_pause()

    def exchange_done(self, s: Session, keep_alive: bool) -> None:
        """The Session finished (response written or failed). Next request, or close."""
        if self._filter_session is s:
            self._filter_session = None
        if self.closed:
            if self.current is s:
                self.current = None
            return
        self.request_done(s, keep_alive)

    def client_gone(self, s: Session) -> None:
        if not self.closed:
            self.close()

    def abort_response(self, s: Session) -> None:
        if not self.closed:
            self.close()

    def open_streams(self) -> int:
        """HTTP/2 streams open on this connection (0 for HTTP/1.1), for the metrics."""
        return 0

    def active_exchanges(self) -> int:
        return 0 if self.current is None else 1

    def stop(self, grace: float) -> int:
        """The shutdown's end: close at once (reset); the exchange in flight, if any, ends as
        cut. Returns how many exchanges were cut."""
        s = self.current
        self.current = None  # (closed first: the exchange ends as cut, not as a client gone)
        self.close(abort=True)
        return 1 if s is not None and s.on_stop(grace) else 0

    # ------------------------------------------------------------------ the request body

    def request_body_kind(self) -> int:
        return self._body_kind

    def push_request_body(self, s: Session) -> bool:
        buf = self.buf
        while buf and s.takes_request_body():
            dec = self._body_decoder
            if dec is None:
                n = min(self._body_left, len(buf))
                piece = bytes(buf[:n])
                del buf[:n]
                self._body_left -= n
                s.on_request_body(piece, self._body_left == 0)
                continue
            try:
                pieces = dec.feed(buf)
            except HTTPParseError as err:
                s.on_request_body_error(err)
                return False
            if not pieces and not dec.done:
                break
            tr = dec.trailers
            if tr and not s.on_request_trailers(tr):
                return False
            last = len(pieces) - 1
            if dec.done and last < 0:
                s.on_request_body(b"", True)
            for i, piece in enumerate(pieces):
                s.on_request_body(piece, dec.done and i == last)
        return True

    def request_trailers(self) -> Headers | None:
        dec = self._body_decoder
        return dec.trailers if dec is not None else None

    def request_body_left(self) -> int:
        return self._body_left if self._body_decoder is None else -1

    def discard_request_body(self) -> int:
        buf = self.buf
        dec = self._body_decoder
        try:
            if dec is None:
                n = min(self._body_left, len(buf))
                del buf[:n]
                self._body_left -= n
                return 1 if self._body_left == 0 else 0
            dec.feed(buf)
            return 1 if dec.done else 0
        except HTTPParseError:
            return -1

    # ------------------------------------------------------------------ writing the response

    def send_informational(self, s: Session, resp: ResponseHeader, tokens: frozenset[str]) -> None:
        # RFC 9110 §15.2: a 1xx is not sent to an HTTP/1.0 client (it could not parse it).
        if s.req_header.version == "HTTP/1.0":
            return
        fields = [
            (n, v) for k, n, v in resp.headers._items if k not in HOP_BY_HOP and k not in tokens
        ]
        self.engine.send(
            self,
            serialize_response_head(resp.status, resp.reason or reason_phrase(resp.status), fields),
        )

    def send_response_head(
        self, s: Session, resp: ResponseHeader, meta: ResponseMeta, edited: bool, keep: bool
    ) -> int:
        """Frame and send the final head of a proxied response (RFC 9112 §6). Content-Length
        when the response has a valid one, else chunked, else (an HTTP/1.0 client) delimited by
        the close. ``keep``: the exchange allows the connection to be kept alive. An untouched
        head whose framing stays the same goes out verbatim. Returns the body framing
        (``BODY_*``); ``BODY_CLOSE`` means the connection will close after it."""
        req = s.req_header
        status = resp.status
        client10 = req.version == "HTTP/1.0"
        drop_cl = False
        length = 0
        if not response_has_body(req.method, status):
            mode = BODY_NONE
        else:
            cl = resp.headers.get("content-length") if edited else meta.content_length
            if cl is not None and cl.isdigit():
                mode = BODY_LENGTH
                length = int(cl)
            else:
                drop_cl = cl is not None
                if client10:
                    mode = BODY_CLOSE  # RFC 9112 §6.3: no chunked coding for HTTP/1.0
                    keep = False
                else:
                    mode = BODY_CHUNKED
        self._resp_mode = mode
        self._resp_length = length
        self._resp_sent = 0
        if (
            keep
            and not edited
            and not meta.hop_other
            and mode != BODY_CHUNKED
            and not client10
            and resp.version == "HTTP/1.1"
        ):
            # Untouched, same framing, and at most a "Connection: keep-alive" line to drop
            # (what nginx and most origins send): the head goes down verbatim.
            raw = meta.raw
            if meta.hop:
                one = meta.connection_fields == 1 and meta.connection_tokens == _KEEP_ALIVE
                cut = raw.replace(_KEEP_ALIVE_LINE, b"\r\n", 1) if one else raw
                raw = cut if len(cut) < len(raw) else b""
            if raw:
                self.engine.send(self, raw)
                return mode
        fields = end_to_end(resp.headers._items, meta.hop, meta.connection_tokens, edited)
        if mode == BODY_CHUNKED or mode == BODY_CLOSE:
            if drop_cl:
                fields = [it for it in fields if it[0] != "content-length"]
            if mode == BODY_CHUNKED:
                fields.append(("transfer-encoding", "Transfer-Encoding", "chunked"))
        if not keep:
            fields.append(("connection", "Connection", "close"))
        elif client10:
            fields.append(("connection", "Connection", "keep-alive"))
        self.engine.send(
            self, serialize_response_fields(status, resp.reason or reason_phrase(status), fields)
        )
        return mode

    def send_local_response(
        self, s: Session, status: int, h: Headers, body: bytes, keep: bool
    ) -> None:
        """Send a response the proxy made (``session.respond``): ``h`` already holds its
        Content-Length; the Connection line this connection needs is added to ``h``."""
        if not keep:
            h.add("Connection", "close")
        elif s.req_header.version == "HTTP/1.0":
            h.add("Connection", "keep-alive")
        e = self.engine
        e.send(self, serialize_response_head(status, reason_phrase(status), h.items()))
        if body:
            e.send(self, body)

    def send_body(self, piece: bytes) -> bool:
        """A piece of the response body, framed; False if it runs past the Content-Length
        (nothing is sent then: the exchange must abort the response)."""
        mode = self._resp_mode
        if mode == BODY_CHUNKED:
            self.engine.send(self, encode_chunk(piece))
        elif mode != BODY_NONE:
            self._resp_sent += len(piece)
            if mode == BODY_LENGTH and self._resp_sent > self._resp_length:
                return False
            self.engine.send(self, piece)
        return True

    def takes_trailers(self) -> bool:
        """Whether the current response's framing can carry a trailer section (chunked)."""
        return self._resp_mode == BODY_CHUNKED

    def end_response(self, trailers: Headers | None) -> bool:
        """End the response body, with ``trailers`` where the framing carries them; False if
        fewer bytes were sent than its Content-Length announced."""
        mode = self._resp_mode
        if mode == BODY_CHUNKED:
            fields = trailer_fields(trailers) if trailers is not None else []
            self.engine.send(self, serialize_trailers(fields))
            return True
        return not (mode == BODY_LENGTH and self._resp_sent != self._resp_length)

    def response_sent(self) -> int:
        """Body bytes of the current response sent so far (Content-Length framing)."""
        return self._resp_sent

    def response_length(self) -> int:
        """The current response's Content-Length (Content-Length framing)."""
        return self._resp_length

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        e = self.engine
        self.arm("header", e.now + e.conf.header_timeout)

    def close(self, abort: bool = False) -> None:
        """Forget this connection and ask the adapter to close it."""
        if self.closed:
            return
        self.closed = True
        self.state = CLOSED
        s = self.current
        if s is not None:
            s.on_downstream_gone("connection closed by proxy")
        self._release(abort)

    def end_event(self) -> None:
        """The end of an event that asked for it (:attr:`Engine._late`): produce the output
        left for then. HTTP/1.1 connections never ask."""

    def _release(self, abort: bool) -> None:
        """The end of :meth:`close`, once its exchanges are told: forget the connection, send
        or drop what is pending, cancel its timer, and ask the adapter to close it."""
        e = self.engine
        e.downstreams.pop(self.id, None)
        if abort:
            self.wbuf.clear()
        else:
            e.flush(self)
        self.timers.clear()
        if self.scheduled != _INF:
            self.scheduled = _INF
            e.emit(SetTimer(self.id, None))
        from proxycore.actions import Close

        e.emit(Close(self.id, abort))

    def linger_close(self) -> None:
        """Half-close after the pending output, then discard input until EOF or timeout, so an
        error response is not destroyed by a TCP reset (nginx's lingering_close)."""
        if self.closed or self.state == LINGER:
            return
        e = self.engine
        if self.peer_eof:
            self.close()
            return
        self.state = LINGER
        self.buf.clear()
        for name in ("header", "idle", "body"):
            self.timers.pop(name, None)
        e.flush(self)
        e.emit(ShutdownWrite(self.id))
        if self.read_paused:
            self.read_paused = False
            e.emit(ResumeReading(self.id))
        self.arm("linger", e.now + e.conf.linger_timeout)

    def reject(self, err: HTTPParseError, raw: bytes | bytearray = b"") -> None:
        """Answer a malformed request with err.status, then close (nothing went upstream).
        ``raw``: the head as received, if it is not in ``buf`` (for the access log)."""
        e = self.engine
        e.log.info("client %s: rejected request: %s (%d)", self.peer_name(), err, err.status)
        body = error_body(err.status)
        head = serialize_response_head(
            err.status,
            reason_phrase(err.status),
            [
                ("Content-Type", "text/plain"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        e.send(self, head + body)
        access = e.access_log
        if access is not None:
            # The head began when the header timer was armed (the timer fired for a 408).
            deadline = self.timers.get("header")
            start = e.now
            if deadline is not None:
                start = deadline - e.conf.header_timeout
            elif err.status == 408:
                start -= e.conf.header_timeout
            log_rejected(access, self, err.status, raw or self.buf, len(body), start)
        self.linger_close()

    # ------------------------------------------------------------------ events

    def on_data(self, data: bytes) -> None:
        state = self.state
        if state == LINGER or state == CLOSED:
            return
        s = self.current
        if s is not None:
            # The request body (or pipelined requests behind it). Fast path: a Content-Length
            # body, nothing buffered, the whole read within it: straight to the session.
            direct = s.on_client_bytes()
            if (
                direct
                and not self.buf
                and self._body_decoder is None
                and len(data) <= self._body_left
            ):
                self._body_left -= len(data)
                s.on_request_body(data, self._body_left == 0)
            else:
                self.buf += data
                s.request_data_buffered()
            self.update_read_pause()
            return
        timers = self.timers
        if "idle" in timers:
            del timers["idle"]
        buf = self.buf
        if not buf and not self._starting and data[:2] != b"\r\n":
            # Fast path: nothing buffered, so look for a whole head in the read itself and
            # parse it from there (no copy into and out of the buffer).
            try:
                end = find_head_end(data, 0, self.engine.conf.limits, True)
            except HTTPParseError as err:
                self.reject(err, data)
                return
            if end > 0:
                if end < len(data):
                    buf += data[end:]
                    data = data[:end]
                self._begin(data)
                if buf and self.current is None and not self.closed:
                    self.try_start()
                else:
                    self.update_read_pause()
                return
        buf += data
        self.try_start()
        if self.current is None and self.state == WAIT and buf and "header" not in timers:
            e = self.engine
            self.arm("header", e.now + e.conf.header_timeout)  # a head has begun

    def on_eof(self) -> None:
        self.peer_eof = True
        if self.state == LINGER or (self.current is None and self.state != CLOSED):
            self.close()
            return
        s = self.current
        if s is not None:
            s.on_downstream_eof()

    def on_closed(self, error: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = CLOSED
        e = self.engine
        e.downstreams.pop(self.id, None)
        self.wbuf.clear()
        s = self.current
        if s is not None:
            s.on_client_lost(error or "closed the connection")
        self.timers.clear()

    def on_write_failed(self, error: str) -> None:
        """Nothing sent to this client can reach it any more: end its request and close."""
        if self.closed:
            return
        self.wbuf.clear()
        self.peer_eof = True  # (no lingering: nothing can reach the client)
        s = self.current
        if s is not None:
            s.on_client_lost(error)
        self.close(abort=True)

    def on_write_paused(self, paused: bool) -> None:
        self.write_paused = paused
        s = self.current
        if s is not None:
            s.on_downstream_write_paused(paused)

    def on_timer(self, name: str) -> None:
        if name == "header":
            if self.state == WAIT and self.current is None:
                if self.buf:
                    self.reject(HTTPParseError("client header timeout", 408))
                else:
                    self.close()
        elif name == "idle" or name == "linger":
            self.close()
        else:
            s = self.current
            if s is not None:
                s.on_timer(name)

    def on_drain(self) -> None:
        """The graceful shutdown began. An idle keep-alive connection closes now, unless its
        last response ended less than DRAIN_RECENT ago: a client sending requests back to back
        may have its next one on the way already, which a close would lose (reset, RFC 9112
        §9.6 — and it could not know the request was not processed); it gets until then to
        send it, answered with ``Connection: close``. A new connection that has not sent its
        first request yet is not idle either: its client connected to be served (during an
        upgrade, a moment before the listener went to the new process); its request is
        answered with ``Connection: close`` (the header timeout as usual)."""
        if self.current is not None or self.state != WAIT or self.buf or not self.requests:
            return
        e = self.engine
        idle_since = self.timers.get("idle", e.now) - e.conf.keepalive_timeout
        if e.now - idle_since < DRAIN_RECENT:
            self.arm("idle", idle_since + DRAIN_RECENT)
        else:
            self.close()

    # ------------------------------------------------------------------ request cycle

    def try_start(self) -> None:
        """Start the next request if a complete head is buffered (loops for pipelining)."""
        if self._starting:
            return
        self._starting = True
        try:
            while self.current is None and self.state == WAIT and self.buf:
                if not self._start_one():
                    break
        finally:
            self._starting = False
        self.update_read_pause()

    def _start_one(self) -> bool:
        e = self.engine
        buf = self.buf
        # RFC 9112 §2.2: ignore empty lines received before the request-line.
        while buf[:2] == b"\r\n":
            del buf[:2]
        if not buf:
            return False
        try:
            end = find_head_end(buf, self._search_from, e.conf.limits, True)
            if end < 0:
                self._search_from = max(0, len(buf) - 3)
                return False
            head = bytes(buf[:end])
            del buf[:end]
            self._search_from = 0
        except HTTPParseError as err:
            self.reject(err)
            return False
        return self._begin(head)

    def _begin(self, head: bytes) -> bool:
        """Parse a complete request head and start its Session (False if it was rejected)."""
        e = self.engine
        try:
            req, meta = parse_request_head(head, e.conf.limits, e.conf.headers_with_underscores)
            limit = e.conf.max_request_body_size
            if limit is not None and meta.length > limit:
                raise HTTPParseError("request body too large", 413)
        except HTTPParseError as err:
            if err.status == 505 and head == b"PRI * HTTP/2.0\r\n\r\n" and self.h2c_preface():
                return False
            self.reject(err, head)
            return False
        if meta.dropped is not None:
            e.log.info(
                "client %s: dropped %d request header field(s) with an underscore in the name "
                "(headers_with_underscores drop): %s",
                self.peer_name(),
                len(meta.dropped),
                ", ".join(meta.dropped),
            )
        timers = self.timers
        if timers:  # (in/del: direct calls in the compiled core, unlike dict.pop)
            if "header" in timers:
                del timers["header"]
            if "idle" in timers:
                del timers["idle"]
        self.state = ACTIVE
        body = meta.body
        if body == BODY_LENGTH:
            self._body_kind = SIZED_BODY
            self._body_left = meta.length
            self._body_decoder = None
        elif body == BODY_CHUNKED:
            self._body_kind = OPEN_BODY
            self._body_left = 0
            self._body_decoder = ChunkedDecoder(e.conf.limits)
        else:
            self._body_kind = NO_BODY
            self._body_left = 0
            self._body_decoder = None
        s = Session(self, req, meta)
        self.current = s
        s.start()
        return True

    def h2c_preface(self) -> bool:
        """The connection opened with the HTTP/2 preface (prior knowledge, RFC 9113 §3.3):
        hand it to :mod:`proxycore.h2` (unless ``h2c`` is off: then it is a 505)."""
        if self.requests or self.tls is not None or not self.engine.conf.h2c:
            return False
        from proxycore.h2.server import PREFACE_HEAD, switch_to_h2

        rest = bytes(self.buf)
        self.buf.clear()
        switch_to_h2(self, PREFACE_HEAD + rest)
        return True

    def request_done(self, s: Session, keep_alive: bool) -> None:
        """The Session finished (response written or failed). Next request, or close."""
        if self.current is not s or self.closed:
            return
        self.current = None
        self.requests += 1
        e = self.engine
        if not keep_alive or self.peer_eof or e.draining:
            # Linger while the client may still be sending a body we did not read (an early
            # answer): a close now would reset the connection and could destroy the answer.
            if self.peer_eof or (not self.buf and s.request_read()):
                self.close()
            else:
                self.linger_close()
            return
        self.state = WAIT
        if self.buf:
            self.arm("header", e.now + e.conf.header_timeout)
            if not self._starting:
                self.try_start()
        else:
            self.arm("idle", e.now + e.conf.keepalive_timeout)
            self.update_read_pause()

    def update_read_pause(self) -> None:
        """Pause reading when too much is buffered or the upstream cannot take more."""
        if self.closed:
            return
        want = len(self.buf) >= self.engine.conf.read_buffer_limit
        s = self.current
        if not want and s is not None:
            want = s.wants_request_paused()
        if want != self.read_paused:
            self.read_paused = want
            self.engine.emit(PauseReading(self.id) if want else ResumeReading(self.id))
