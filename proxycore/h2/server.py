"""HTTP/2 from clients (RFC 9113): the connection (:class:`H2Conn`) and its streams.

Theory of operation: a client connection that opened with the HTTP/2 connection preface
(prior knowledge, RFC 9113 §3.3; or ALPN ``h2``, §3.2) is an :class:`H2Conn`. It feeds what
it reads to its sans-I/O HTTP/2 connection (:class:`proxycore.h2.connection.Connection`) and
turns the events into calls on its streams; what the streams send leaves as one
``data_to_send()`` per input. Each stream is an
:class:`H2Stream`, the :class:`proxycore.codec.ServerStream` of one exchange
(:class:`proxycore.session.Session`), so filters see the same session API as on HTTP/1.1
(``session.http_version`` is ``"2"``).

Flow control is the request body's backpressure (RFC 9113 §5.2): a stream's receive window
re-opens only for the data its exchange took and its upstream connection is not refusing
(``Session.wants_request_paused``), so a stream never buffers more than its window (64 KiB);
the connection's window is bounded too. On the way out, what a stream's send window does not
take waits in the stream; while it waits, the stream is ``write_paused`` and its exchange
stops reading its upstream connection, without pausing any other stream.

The connection is a :class:`proxycore.downstream.Downstream` for the engine (its timer table,
write buffer and events), never one for an exchange: its HTTP/1.1 methods are not used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxycore.accesslog import log_rejected
from proxycore.codec import NO_BODY, OPEN_BODY, SIZED_BODY, ServerStream
from proxycore.downstream import DRAIN_RECENT, Downstream
from proxycore.h2.connection import (
    DATA_RECEIVED,
    GOAWAY_RECEIVED,
    PING_ACKED,
    REQUEST,
    SETTINGS_CHANGED,
    STREAM_ENDED,
    STREAM_RESET,
    TRAILERS,
    TRAILERS_NOT_LAST,
    WINDOW_OPENED,
    Connection,
    ConnectionError_,
    Event,
    FloodGuard,
    StreamClosed,
)
from proxycore.h2.fields import Malformed, check_request, check_trailers
from proxycore.h2.frames import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
)
from proxycore.http import Headers, RequestHeader, ResponseHeader
from proxycore.meta import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, RequestMeta, ResponseMeta
from proxycore.semantics import HOP_BY_HOP, error_body, response_has_body, trailer_fields
from proxycore.session import Session

if TYPE_CHECKING:
    from proxycore.config import ServerConf
    from proxycore.engine import Engine
    from proxycore.tls import TlsInfo

__all__ = ["PREFACE", "H2Conn", "H2Stream"]

# The client connection preface (RFC 9113 §3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What the HTTP/1.1 head scanner sees of the preface: a request head of its own.
PREFACE_HEAD: Final = b"PRI * HTTP/2.0\r\n\r\n"
# Each stream's receive window (the default, SETTINGS_INITIAL_WINDOW_SIZE) bounds what one
# stream buffers; the connection's receive window, raised to this, bounds them all.
CONN_WINDOW: Final = 1 << 20
# Fields a message must not carry on HTTP/2 (RFC 9113 §8.2.2), beyond the hop-by-hop set.
_CONNECTION_SPECIFIC: Final = HOP_BY_HOP | frozenset({"proxy-connection", "host"})

# Graceful shutdown (RFC 9113 §6.8), the states of H2Conn.drain: serving; the first GOAWAY
# (last stream id 2^31-1) and its PING sent; the final GOAWAY (the last stream id processed)
# sent, new streams refused.
SERVING: Final = 0
ANNOUNCED: Final = 1
FINAL: Final = 2
MAX_STREAM_ID: Final = (1 << 31) - 1
# The opaque data of the PING that follows the first GOAWAY: its ACK tells every stream the
# client opened before it has arrived.
DRAIN_PING: Final = b"drain\x00\x00\x00"


def _log_head(method: str, path: str, items: list[tuple[str, str, str]]) -> bytes:
    """The head the access log reads the request line and a few fields from: HTTP/2's,
    written out as nginx logs it ("GET /a HTTP/2.0")."""
    lines = [f"{method} {path} HTTP/2.0"]
    lines += [f"{k}: {v}" for k, _, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _fields(items: list[tuple[str, str, str]]) -> list[tuple[bytes, bytes]]:
    """Response or trailer fields as HTTP/2 wants them: lower-case names, no
    connection-specific fields (RFC 9113 §8.2.2)."""
    return [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, _, v in items
        if k not in _CONNECTION_SPECIFIC
    ]


class H2Stream(ServerStream):
    """One HTTP/2 stream: the client side of one exchange."""

    __slots__ = (
        "_body_kind",
        "_body_left",
        "_declared",
        "_ending",
        "_eos_given",
        "_got",
        "_in",
        "_in_ended",
        "_out",
        "_out_size",
        "_resp_length",
        "_resp_mode",
        "_resp_sent",
        "_trailers",
        "_unacked",
        "client_addr",
        "closed",
        "conn",
        "engine",
        "id",
        "peer_eof",
        "req_trailers",
        "requests",
        "reset_code",
        "scheme",
        "server_addr",
        "session",
        "sid",
        "tls",
        "write_paused",
    )

    def __init__(self, conn: H2Conn, sid: int) -> None:
        self.conn = conn
        self.engine = conn.engine
        self.id = conn.id
        self.sid = sid
        self.client_addr = conn.client_addr
        self.server_addr = conn.server_addr
        self.scheme = conn.scheme
        self.tls = conn.tls
        self.requests = conn.requests
        self.write_paused = conn.write_paused
        self.peer_eof = False
        self.closed = False
        self.session: Session | None = None
        self._body_kind = NO_BODY
        self._body_left = 0
        self._declared = -1  # the request's content-length (-1: none), checked against
        self._got = 0  # the DATA received (RFC 9113 §8.1.1)
        self.reset_code = 0  # the RST_STREAM code the stream ends with (0: as its exchange ends)
        self._in: list[tuple[bytes, int]] = []  # body pieces not handed over, with their
        self._in_ended = False  # flow-controlled lengths; END_STREAM seen
        self._eos_given = False
        self._unacked = 0  # bytes handed over whose window is not re-opened yet
        self.req_trailers: Headers | None = None
        self._out: list[bytes | memoryview] = []  # DATA the send window did not take yet
        self._out_size = 0
        self._ending = False  # the response ends once _out is sent
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._resp_mode = BODY_NONE
        self._resp_length = 0
        self._resp_sent = 0

    def forwarded_fields(self) -> bytes:
        return self.conn.forwarded_fields()

    # -- timers: the connection's table, under "<stream id>:<name>"

    def arm(self, name: str, deadline: float) -> None:
        self.conn.arm(f"{self.sid}:{name}", deadline)

    def disarm(self, name: str) -> None:
        timers = self.conn.timers
        key = f"{self.sid}:{name}"
        if key in timers:
            del timers[key]

    def disarm_all(self, names: tuple[str, ...]) -> None:
        timers = self.conn.timers
        if timers:
            for name in names:
                key = f"{self.sid}:{name}"
                if key in timers:
                    del timers[key]

    def armed(self, name: str) -> bool:
        return f"{self.sid}:{name}" in self.conn.timers

    # -- deferred filter results: the connection routes tokens to streams

    def filter_token(self, s: Session) -> int:
        token = self.engine.new_token()
        self.conn.tokens[token] = self
        return token

    def filter_done(self, token: int, result: object, error: BaseException | None) -> None:
        s = self.session
        if s is not None:
            s.on_filter_done(token, result, error)

    # -- the request body

    def request_body_kind(self) -> int:
        return self._body_kind

    def request_pause_changed(self) -> None:
        s = self.session
        if s is None or self.closed:
            return
        if self._unacked and not s.wants_request_paused():
            self.conn.ack(self.sid, self._unacked)
            self._unacked = 0
        if self._in or (self._in_ended and not self._eos_given):
            self.push_request_body(s)

    def push_request_body(self, s: Session) -> bool:
        """Hand ``s`` the pieces it takes now; the window re-opens for what its upstream takes
        (RFC 9113 §5.2: flow control as the request body's backpressure)."""
        queue = self._in
        while (queue or (self._in_ended and not self._eos_given)) and s.takes_request_body():
            if queue:
                piece, flow = queue.pop(0)
                last = not queue and self._in_ended
            else:
                piece, flow, last = b"", 0, True
            if last:
                self._eos_given = True
            if self._body_kind == SIZED_BODY:
                self._body_left -= len(piece)
            self._unacked += flow
            s.on_request_body(piece, last)
            if self.closed or self.session is None:
                return False
        if self._unacked and not s.wants_request_paused():
            self.conn.ack(self.sid, self._unacked)
            self._unacked = 0
        return True

    def request_trailers(self) -> Headers | None:
        return self.req_trailers

    def request_body_left(self) -> int:
        return self._body_left if self._body_kind == SIZED_BODY else -1

    def discard_request_body(self) -> int:
        # An early answer ends the exchange; exchange_done resets the rest of the request
        # (RST_STREAM NO_ERROR, RFC 9113 §8.1): nothing is left to skip.
        self._drop_input()
        return 1

    def _drop_input(self) -> None:
        flow = self._unacked + sum(f for _, f in self._in)
        self._in.clear()
        self._unacked = 0
        if flow:
            self.conn.ack(self.sid, flow)

    # -- client data, from the connection

    def on_body(self, data: bytes, flow: int) -> None:
        if self._declared >= 0:
            self._got += len(data)
            if self._got > self._declared:
                self.conn.malformed_body(
                    self, flow, "more DATA than its content-length (RFC 9113 §8.1.1)"
                )
                return
        s = self.session
        if s is None or self._eos_given:
            if flow:
                self.conn.ack(self.sid, flow)
            return
        self._in.append((data, flow))
        s.on_client_bytes()
        s.request_data_buffered()

    def on_end(self) -> None:
        if self._declared >= 0 and self._got != self._declared:
            self.conn.malformed_body(self, 0, "less DATA than its content-length (RFC 9113 §8.1.1)")
            return
        self.peer_eof = True
        self._in_ended = True
        s = self.session
        if s is not None and not self._eos_given:
            s.request_data_buffered()

    # -- writing the response

    def send_informational(self, s: Session, resp: ResponseHeader, tokens: frozenset[str]) -> None:
        fields = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, _, v in resp.headers._items
            if k not in _CONNECTION_SPECIFIC and k not in tokens
        ]
        fields.insert(0, (b":status", str(resp.status).encode()))
        self.conn.send_headers(self.sid, fields, False)

    def send_response_head(
        self, s: Session, resp: ResponseHeader, meta: ResponseMeta, edited: bool, keep: bool
    ) -> int:
        """The response head as a HEADERS frame (RFC 9113 §8.3.2): connection-specific fields
        dropped, a valid Content-Length kept; a chunked or close-delimited origin body becomes
        DATA frames ended by END_STREAM. Returns the body framing (``BODY_*``)."""
        status = resp.status
        items = [it for it in resp.headers._items if it[0] not in tokens_of(meta)]
        mode = BODY_NONE
        length = 0
        if response_has_body(s.req_header.method, status):
            cl = resp.headers.get("content-length")
            if cl is not None and cl.isdigit():
                mode = BODY_LENGTH
                length = int(cl)
            else:
                mode = BODY_CHUNKED
                if cl is not None:
                    items = [it for it in items if it[0] != "content-length"]
        self._resp_mode = mode
        self._resp_length = length
        self._resp_sent = 0
        fields = _fields(items)
        fields.insert(0, (b":status", str(status).encode()))
        self.conn.send_headers(self.sid, fields, False)
        return mode

    def send_local_response(
        self, s: Session, status: int, h: Headers, body: bytes, keep: bool
    ) -> None:
        fields = _fields(h._items)
        fields.insert(0, (b":status", str(status).encode()))
        self._resp_mode = BODY_LENGTH
        self._resp_length = len(body)
        self._resp_sent = len(body)
        self.conn.send_headers(self.sid, fields, not body)
        if body:
            self._queue(body)
            self._ending = True
            self._drain()

    def send_body(self, piece: bytes) -> bool:
        mode = self._resp_mode
        if mode == BODY_NONE:
            return True
        self._resp_sent += len(piece)
        if mode == BODY_LENGTH and self._resp_sent >= self._resp_length:
            if self._resp_sent > self._resp_length:
                return False
            self._ending = True  # the last piece carries END_STREAM (no empty DATA after it)
        self._queue(piece)
        self._drain()
        return True

    def takes_trailers(self) -> bool:
        return self._resp_mode == BODY_CHUNKED

    def end_response(self, trailers: Headers | None) -> bool:
        if trailers is not None and len(trailers):
            fields = [
                (n.lower().encode("latin-1"), v.encode("latin-1"))
                for n, v in trailer_fields(trailers)
                if n.lower() not in _CONNECTION_SPECIFIC
            ]
            if fields:
                self._trailers = fields
        self._ending = True
        self._drain()
        return not (self._resp_mode == BODY_LENGTH and self._resp_sent != self._resp_length)

    def response_sent(self) -> int:
        return self._resp_sent

    def response_length(self) -> int:
        return self._resp_length

    def _queue(self, piece: bytes) -> None:
        if piece:
            self._out.append(piece)
            self._out_size += len(piece)

    def _drain(self) -> None:
        """Send what the stream's and the connection's send windows take (RFC 9113 §6.9)."""
        if self.closed:
            return
        conn = self.conn
        h2 = conn.h2
        sid = self.sid
        out = self._out
        try:
            while out:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                size = min(window, h2.max_outbound_frame_size)
                chunk = out[0]
                if len(chunk) <= size:
                    del out[0]
                    self._out_size -= len(chunk)
                    end = self._ending and not out and not self._trailers
                    h2.send_data(sid, chunk, end)
                else:
                    view = memoryview(chunk)
                    h2.send_data(sid, view[:size], False)
                    out[0] = view[size:]
                    self._out_size -= size
            if not out and self._ending:
                self._ending = False
                if self._trailers:
                    h2.send_headers(sid, self._trailers, True)
                    self._trailers = None
                elif self._out_size == 0 and not h2.end_sent(sid):
                    h2.send_data(sid, b"", True)
        except StreamClosed:
            # The stream was closed under us (the client reset it): nothing more goes out.
            out.clear()
            self._out_size = 0
        conn.output()
        if self.session is None:
            if not out and not self._ending:
                conn.stream_done(self, 0)  # its exchange ended before its output drained
            return
        self.update_write_pause()

    def update_write_pause(self) -> None:
        paused = bool(self._out) or self.conn.write_paused
        if paused != self.write_paused:
            self.write_paused = paused
            s = self.session
            if s is not None:
                s.on_downstream_write_paused(paused)

    # -- the end of the exchange

    def exchange_done(self, s: Session, keep_alive: bool) -> None:
        self.conn.stream_done(self, self.reset_code)

    def client_gone(self, s: Session) -> None:
        self.conn.stream_done(self, self.reset_code or CANCEL)

    def abort_response(self, s: Session) -> None:
        # RFC 9113 §8.1: a response that cannot be completed ends with RST_STREAM.
        self.conn.stream_done(self, INTERNAL_ERROR)

    def active_exchanges(self) -> int:
        return 0 if self.session is None else 1

    def stop(self, grace: float) -> int:
        s = self.session
        return 1 if s is not None and s.on_stop(grace) else 0


def tokens_of(meta: ResponseMeta) -> frozenset[str]:
    """The fields an origin response must lose on HTTP/2: the hop-by-hop set and those its
    Connection field named."""
    return HOP_BY_HOP | meta.connection_tokens if meta.connection_tokens else HOP_BY_HOP


class H2Conn(Downstream):
    """One HTTP/2 client connection: its frame layer (``h2``, a
    :class:`proxycore.h2.connection.Connection`) and its streams."""

    __slots__ = ("_pending", "_streams_done", "drain", "h2", "streams", "tokens")

    def __init__(
        self,
        engine: Engine,
        conn_id: int,
        client: tuple[str, int],
        server: tuple[str, int],
        scheme: str,
        tls: TlsInfo | None = None,
    ) -> None:
        super().__init__(engine, conn_id, client, server, scheme, tls)
        conf = engine.conf
        guard = FloodGuard(
            conf.h2_max_resets, conf.h2_max_control_frames, conf.h2_flood_window, engine
        )
        h2 = Connection(
            conf.h2_max_concurrent_streams,
            header_list_size(conf),
            conf.h2_header_table_size,
            conf.h2_max_header_block,
            guard,
        )
        self.h2 = h2
        self.streams: dict[int, H2Stream] = {}
        self.tokens: dict[int, H2Stream] = {}
        self._pending = False  # output waits for the end of the event (Engine._late)
        self._streams_done = 0
        self.drain = SERVING
        self.state = 1  # (ACTIVE for the HTTP/1.1 code paths it inherits: none read it)

    # -- output: one data_to_send() per input

    def output(self) -> None:
        """Frames were queued in the connection: they leave at the end of the event, with everything
        else the event queued, as one ``data_to_send()`` (:meth:`end_event`)."""
        if not self._pending and not self.closed:
            self._pending = True
            self.engine._late.append(self)

    def end_event(self) -> None:
        if self._pending:
            self._pending = False
            if not self.closed:
                self._write()

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.engine.send(self, data)

    def ack(self, sid: int, flow: int) -> None:
        self.h2.acknowledge_received_data(flow, sid)  # (a stream gone: the connection's)
        self.output()

    def send_headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(sid, fields, end)
        except StreamClosed:
            return  # the client reset the stream
        self.output()

    # -- lifecycle

    def start(self) -> None:
        """Send our SETTINGS (and open the connection's receive window)."""
        h2 = self.h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONN_WINDOW - 65535)
        self.output()
        self._first_headers()

    def _first_headers(self) -> None:
        """The first HEADERS is awaited ``header_timeout`` after the preface (nginx's
        client_header_timeout), then the connection is idle between streams (``_idle``)."""
        e = self.engine
        self.arm("idle", e.now + e.conf.header_timeout)

    def _idle(self) -> None:
        if not self.streams and not self.closed:
            e = self.engine
            self.arm("idle", e.now + e.conf.keepalive_timeout)

    def goaway(self, code: int = 0) -> None:
        if self.closed:
            return
        self.h2.close_connection(code)
        self.output()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        if not abort:
            if self.drain != FINAL:
                self.goaway()
            self._write()  # now: the bytes go out before the Close action
        self.closed = True
        self._pending = False
        self.state = 3
        for st in list(self.streams.values()):
            st.closed = True
            s = st.session
            if s is not None:
                s.on_downstream_gone("connection closed by proxy")
        self.streams.clear()
        self.tokens.clear()
        self._release(abort)

    def stream_done(self, st: H2Stream, code: int) -> None:
        """The exchange of ``st`` ended: forget it; reset what is left of the stream (a request
        body not read, RFC 9113 §8.1: NO_ERROR; a response cut short: ``code``)."""
        sid = st.sid
        if self.streams.get(sid) is not st:
            return
        if st.session is not None:
            st.session = None
            self.requests += 1
            for t in [t for t, v in self.tokens.items() if v is st]:
                del self.tokens[t]
        if not code and (st._out or st._ending) and not self.closed and not st.closed:
            return  # the response is still going out (flow control): H2Stream._drain ends it
        del self.streams[sid]
        if self.closed:
            return
        if self.h2.is_open(sid):
            if code or st._out or st._ending:
                st._out.clear()
                st._out_size = 0
                self._reset(sid, code or CANCEL)
            elif not st._in_ended:
                st._drop_input()
                self._reset(sid, NO_ERROR)
        st.closed = True
        self.output()
        if not self.streams:
            if self.peer_eof or self.drain == FINAL:
                self.close()
            else:
                self._idle()

    def _reset(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except StreamClosed:
            pass

    # -- events

    def on_data(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ConnectionError_ as err:
            self.engine.log.info("client %s: HTTP/2 error: %s", self.peer_name(), err)
            self.close()  # (h2 queued the GOAWAY: close sends it)
            return
        for ev in events:
            if self.closed:
                return
            self._event(ev)
        self.output()

    def _event(self, ev: Event) -> None:
        kind = ev.kind
        if kind == DATA_RECEIVED:
            st = self.streams.get(ev.sid)
            if st is not None:
                st.on_body(ev.data, ev.flow)
            else:
                self.ack(ev.sid, ev.flow)
        elif kind == REQUEST:
            self._request(ev.sid, ev.headers, ev.ended)
        elif kind == STREAM_ENDED:
            st = self.streams.get(ev.sid)
            if st is not None:
                st.on_end()
        elif kind == WINDOW_OPENED and ev.sid:
            st = self.streams.get(ev.sid)
            if st is not None:
                st._drain()
        elif kind == WINDOW_OPENED or kind == SETTINGS_CHANGED:  # (windows may have grown)
            for st in list(self.streams.values()):
                if st._out or st._ending:
                    st._drain()
        elif kind == TRAILERS:
            st = self.streams.get(ev.sid)
            if st is not None:
                self._trailers(st, ev.headers)
        elif kind == STREAM_RESET:
            st = self.streams.get(ev.sid)
            if st is not None:
                st.closed = True
                st._out.clear()
                st._out_size = 0
                st._ending = False
                st._trailers = None
                s = st.session
                if s is not None:
                    s.on_client_lost("reset the stream")
                self.stream_done(st, 0)
        elif kind == PING_ACKED:
            if ev.data == DRAIN_PING and self.drain == ANNOUNCED:
                self._drain_final()
        elif kind == TRAILERS_NOT_LAST:
            st = self.streams.get(ev.sid)
            if st is not None:
                self.malformed_body(st, 0, "trailers without END_STREAM (RFC 9113 §8.1)")
        elif kind == GOAWAY_RECEIVED:
            self.peer_eof = True
            if not self.streams:
                self.close()

    def _trailers(self, st: H2Stream, headers: list[tuple[bytes, bytes]]) -> None:
        try:
            fields = check_trailers(headers)
        except Malformed as err:
            self.malformed_body(st, 0, str(err))
            return
        h = Headers()
        for name, value in fields:
            h.add(name, value)
        st.req_trailers = h
        s = st.session
        if s is not None and not s.on_request_trailers(h):
            return

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        """A request head (RFC 9113 §8.3.1), checked once (:mod:`proxycore.h2.fields`; a
        malformed one resets its stream), cookie crumbs joined (§8.2.3), Host from :authority
        (§8.3.1), the HTTP/1.1 size limits (431)."""
        e = self.engine
        conf = e.conf
        limits = conf.limits
        try:
            f = check_request(headers)
        except Malformed as err:
            self._malformed(sid, str(err))
            return
        method = f.method
        path = f.path
        authority = f.authority
        items = f.items
        dropped: list[str] | None = None
        if f.underscored and conf.headers_with_underscores != "allow":
            if conf.headers_with_underscores == "reject":
                self._answer(sid, 400, ended, method, path, items)
                return
            dropped = [k for k, _, _ in items if "_" in k]
            items = [it for it in items if "_" not in it[0]]
        if f.size > limits.max_header_bytes or f.count > limits.max_headers:
            self._answer(sid, 431, ended, method, path, items)
            return
        if method == "CONNECT":
            # Extended CONNECT (RFC 8441) is not offered; the log shows the target.
            self._answer(sid, 501, ended, method, authority, items)
            return
        if not f.has_authority and f.host is None:
            # RFC 9113 §8.3.1: a request carries :authority or Host; HTTP/1.1 needs one upstream.
            self._answer(sid, 400, ended, method, path, items)
            return
        if ended and f.length > 0:
            self._malformed(sid, "content-length larger than the DATA received (RFC 9113 §8.1.1)")
            return
        if f.cookies:
            items.append(("cookie", "cookie", "; ".join(f.cookies)))
        if f.has_authority and f.host is not None:
            items = [it for it in items if it[0] != "host"]
        if f.has_authority:
            items.append(("host", "host", authority))
        meta = RequestMeta()
        meta.hop = True
        meta.dropped = dropped
        host: str | None = authority or None
        for k, _, v in items:
            if k == "host":
                host = v
            elif k == "expect":
                meta.expect_continue = v.lower() == "100-continue"
            elif k[:12] == "x-forwarded-":
                meta.forwarded = True
        meta.host = host
        meta.has_host = host is not None
        if e.access_log is not None:
            meta.raw = _log_head(method, path, items)
        st = H2Stream(self, sid)
        if ended:
            st._body_kind = NO_BODY
            st._in_ended = True
            st._eos_given = True
            st.peer_eof = True
        else:
            if f.length >= 0:
                st._body_kind = SIZED_BODY
                st._body_left = st._declared = meta.length = f.length
            else:
                st._body_kind = OPEN_BODY
            limit = conf.max_request_body_size
            if limit is not None and meta.length > limit:
                self._answer(sid, 413, ended, method, path, items)
                return
        req = RequestHeader(
            method,
            path,
            Headers._from_parsed(items),
            "HTTP/2",
            scheme=f.scheme or None,
            authority=authority or None,
        )
        timers = self.timers
        if "idle" in timers:
            del timers["idle"]
        self.streams[sid] = st
        s = Session(st, req, meta)
        st.session = s
        s.start()

    def _malformed(self, sid: int, reason: str) -> None:
        """A malformed request head (RFC 9113 §8.1.1): a stream error, RST_STREAM
        (PROTOCOL_ERROR) on that stream alone; logged, with an access-log line (400, nothing
        sent) as nginx writes one."""
        e = self.engine
        e.log.info(
            "client %s: malformed HTTP/2 request on stream %d: %s", self.peer_name(), sid, reason
        )
        access = e.access_log
        if access is not None:
            log_rejected(access, self, 400, _log_head("-", "-", []), 0, e.now)
        self._reset(sid, PROTOCOL_ERROR)
        self._stream_error_counted()
        self.output()

    def _stream_error_counted(self) -> None:
        """A stream error counts against the reset budget (see ServerConnection); past it the
        connection goes, with GOAWAY(ENHANCE_YOUR_CALM)."""
        flood = self.h2.count_stream_error()
        if flood is not None:
            self.engine.log.info("client %s: HTTP/2 error: %s", self.peer_name(), flood)
            self.close()

    def malformed_body(self, st: H2Stream, flow: int, reason: str) -> None:
        """A request whose DATA or trailers make it malformed (RFC 9113 §8.1, §8.1.1): its
        exchange ends as if the client had gone (the upstream connection is closed, not
        reused) and the stream is reset with PROTOCOL_ERROR."""
        self.engine.log.info(
            "client %s: malformed HTTP/2 request on stream %d: %s",
            self.peer_name(),
            st.sid,
            reason,
        )
        if flow:
            self.ack(st.sid, flow)
        st._drop_input()
        st.reset_code = PROTOCOL_ERROR
        s = st.session
        if s is not None:
            s.on_client_lost(f"sent a malformed request ({reason})")
        if self.streams.get(st.sid) is st:
            self.stream_done(st, PROTOCOL_ERROR)
        if not self.closed:
            self._stream_error_counted()

    def _answer(
        self,
        sid: int,
        status: int,
        ended: bool,
        method: str,
        path: str,
        items: list[tuple[str, str, str]],
    ) -> None:
        """Answer a request refused before any exchange (431, 400, 413, 501), then end the
        stream (the rest of its request with RST_STREAM NO_ERROR, RFC 9113 §8.1). The access
        log gets its line, as for an HTTP/1.1 head the connection rejects: the request line and
        the fields read so far (``items``), nothing upstream."""
        e = self.engine
        body = error_body(status)
        e.log.info("client %s: rejected HTTP/2 request (%d)", self.peer_name(), status)
        access = e.access_log
        if access is not None:
            log_rejected(access, self, status, _log_head(method, path, items), len(body), e.now)
        h2 = self.h2
        try:
            h2.send_headers(
                sid,
                [
                    (b":status", str(status).encode()),
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            h2.send_data(sid, body, True)
            if not ended:
                h2.reset_stream(sid, NO_ERROR)
        except StreamClosed:
            self._reset(sid, REFUSED_STREAM)
        self.output()

    def on_eof(self) -> None:
        self.peer_eof = True
        if not self.streams:
            self.close()
            return
        for st in list(self.streams.values()):
            s = st.session
            if s is not None and not st._in_ended:
                s.on_downstream_eof()

    def on_closed(self, error: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = 3
        self.engine.downstreams.pop(self.id, None)
        self.wbuf.clear()
        self.timers.clear()
        for st in list(self.streams.values()):
            st.closed = True
            s = st.session
            if s is not None:
                s.on_client_lost(error or "closed the connection")
        self.streams.clear()

    def on_write_failed(self, error: str) -> None:
        if self.closed:
            return
        self.wbuf.clear()
        self.peer_eof = True
        for st in list(self.streams.values()):
            s = st.session
            if s is not None:
                s.on_client_lost(error)
        self.close(abort=True)

    def on_write_paused(self, paused: bool) -> None:
        """The client stopped (resumed) reading the connection: every stream stops (resumes)
        reading its upstream."""
        self.write_paused = paused
        for st in list(self.streams.values()):
            st.update_write_pause()

    def on_timer(self, name: str) -> None:
        if name == "idle":
            self.close()
            return
        if name == "goaway":
            self._drain_final()
            return
        sid, _, what = name.partition(":")
        st = self.streams.get(int(sid)) if sid.isdigit() else None
        if st is not None and st.session is not None:
            st.session.on_timer(what)

    # -- graceful shutdown (RFC 9113 §6.8)

    def on_drain(self) -> None:
        """The graceful shutdown began (SIGTERM, or the old process of an upgrade). Two steps,
        as nginx, h2o and Envoy do, so that no stream the client has already sent is lost: a
        GOAWAY(NO_ERROR) with the last stream id 2^31-1 (new streams should go elsewhere) and a
        PING; once the PING's ACK comes back (every stream opened before it has arrived) or
        after DRAIN_RECENT, the GOAWAY with the last stream id processed (:meth:`_drain_final`).
        Streams at or below it finish within the grace period; those above it are refused
        (REFUSED_STREAM, RFC 9113 §8.7: the client may retry them elsewhere)."""
        if self.closed or self.drain != SERVING:
            return
        self.drain = ANNOUNCED
        h2 = self.h2
        h2.send_goaway(MAX_STREAM_ID)
        h2.ping(DRAIN_PING)
        self.output()
        self.arm("goaway", self.engine.now + DRAIN_RECENT)

    def _drain_final(self) -> None:
        """The second GOAWAY: the last stream id processed; close if no stream is left."""
        if self.closed or self.drain == FINAL:
            return
        self.drain = FINAL
        self.disarm("goaway")
        h2 = self.h2
        h2.send_goaway(h2.highest_inbound_stream_id)
        self.output()
        if not self.streams:
            self.close()

    def filter_done(self, token: int, result: object, error: BaseException | None) -> None:
        st = self.tokens.pop(token, None)
        if st is not None:
            st.filter_done(token, result, error)

    def open_streams(self) -> int:
        return len(self.streams)

    def active_exchanges(self) -> int:
        return sum(1 for st in self.streams.values() if st.session is not None)

    def stop(self, grace: float) -> int:
        cut = 0
        for st in list(self.streams.values()):
            cut += st.stop(grace)
        self.streams.clear()
        self.close(abort=True)
        return cut

    def update_read_pause(self) -> None:
        """Flow control paces each stream (RFC 9113 §5.2); the socket keeps being read."""


def header_list_size(conf: ServerConf) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2), enforced by the HPACK decoder (an
    HPACK bomb past it is GOAWAY(ENHANCE_YOUR_CALM)): twice the HTTP/1.1 head limit, so a
    list between the two is decoded (HPACK stays in step) and answered 431 on its stream."""
    return max(2 * conf.limits.max_header_bytes, 16384)


def switch_to_h2(down: Downstream, first: bytes) -> None:
    """The HTTP/1.1 connection ``down`` received the HTTP/2 connection preface before any
    request (prior knowledge, RFC 9113 §3.3): the connection becomes an :class:`H2Conn`,
    fed ``first`` (what was read so far)."""
    e = down.engine
    conn = H2Conn(e, down.id, down.client_addr, down.server_addr, down.scheme, down.tls)
    conn.scheduled = down.scheduled
    down.closed = True
    down.timers.clear()
    e.downstreams[down.id] = conn
    rec = e._recorder
    if rec is not None:
        rec.http2(down.id)
    conn.start()
    if e.draining:
        conn.on_drain()
    conn.on_data(first)
