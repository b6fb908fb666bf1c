"""The server side of an HTTP/2 connection (RFC 9113), sans I/O: bytes in, events out; calls
in, frames out.

Theory of operation: :meth:`Connection.receive_data` takes what the client sent and returns
the :class:`Event` list it amounts to (a request head, DATA, the end of a request, trailers,
a reset, a window opened, new SETTINGS, a PING's ACK, the client's GOAWAY). The calls of the
server (:meth:`send_headers`, :meth:`send_data`, :meth:`reset_stream`,
:meth:`acknowledge_received_data`, :meth:`send_goaway`, …) queue frames; one
:meth:`data_to_send` takes them all. Nothing here reads a clock or a socket: the flood
budgets' window is the engine's ``now`` (:class:`FloodGuard`).

The connection checks the frame layer once, in one place: frame sizes (§4.2), the stream
identifiers a client may use (§5.1.1), each stream's state (§5.1: the table
``STREAM_NEXT`` below, with the states of a server's stream: push is off, so there is no
reserved state), flow control in both directions (§5.2, §6.9), SETTINGS (§6.5), and the
header block: one HEADERS and its CONTINUATION frames, uninterrupted (§4.3, §6.10), bounded
in size and in frames (CVE-2024-27316), decoded by the compiled HPACK codec
(:mod:`proxycore.h2.hpackcodec`; an HPACK bomb past SETTINGS_MAX_HEADER_LIST_SIZE is
ENHANCE_YOUR_CALM). The fields of a request are checked by :mod:`proxycore.h2.fields`, the
caller's business. A connection error (§5.4.1) queues GOAWAY with the last stream id and
its code and raises :class:`ConnectionError_`; a stream error (§5.4.2) queues RST_STREAM
for that stream and the connection lives on.

Receiving, a stream is opened by the client's HEADERS (OPEN, or HALF_CLOSED_REMOTE with
END_STREAM). Past SETTINGS_MAX_CONCURRENT_STREAMS, or above the last stream id of our
GOAWAY, the stream is refused (RST_STREAM REFUSED_STREAM, §5.1.2, §8.7: the client may retry
it) after its block is decoded (the HPACK state stays in step, §4.3). A stream that closes is
forgotten; the last ``CLOSED_KEPT`` closed streams are remembered with how they closed, so
frames still in flight on a stream we reset are ignored (§5.1, "closed") and their DATA
still counts for the connection's window (§6.9).

The receive windows re-open as the server acknowledges data it consumed, in the manner of
the ``h2`` library's window manager (a WINDOW_UPDATE once half the window was consumed, or
sooner when the window is empty), so the frames on the wire are those ``h2`` sends.
"""

from __future__ import annotations

from typing import Any, Final

from hpack import HPACKError, OversizedHeaderListError

from proxycore.exchange_states import flatten
from proxycore.h2.frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    ENABLE_CONNECT_PROTOCOL,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_FRAME_SIZE_LIMIT,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
    MIN_FRAME_SIZE,
    NO_ERROR,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ACK,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    goaway,
    head,
    header_block,
    ping,
    rst_stream,
    settings,
    u32_at,
    window_update,
)
from proxycore.h2.hpackcodec import Decoder, Encoder

__all__ = [
    "CLOSED_KEPT",
    "Connection",
    "ConnectionError_",
    "Event",
    "FloodGuard",
    "StreamClosed",
]

# The version of the framing: the bytes this module sends for a given input. Recorded in the
# ``h2`` field of an HTTP/2 connection's trace (proxycore.trace); bump it when they change.
FRAMING: Final = "proxycore-h2/1"

# The client connection preface (§3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# -- events (Event.kind)
REQUEST: Final = 1  # a request head: sid, headers, ended (END_STREAM on its HEADERS)
DATA_RECEIVED: Final = 2  # sid, data (padding removed), flow (the flow-controlled length)
STREAM_ENDED: Final = 3  # the client's END_STREAM on DATA (after the head)
TRAILERS: Final = 4  # a trailer section with END_STREAM: sid, headers (the end follows)
TRAILERS_NOT_LAST: Final = 5  # HEADERS after the head without END_STREAM (§8.1); reset already
STREAM_RESET: Final = 6  # sid, code: the client reset the stream, or we did on a stream error
WINDOW_OPENED: Final = 7  # sid (0: the connection's window)
SETTINGS_CHANGED: Final = 8  # the client's SETTINGS (windows may have grown)
PING_ACKED: Final = 9  # data: the ACK of a PING we sent
GOAWAY_RECEIVED: Final = 10  # code, sid (the last stream id the client names)

# -- a stream's states (§5.1, server side, no push) and the table of their changes
OPEN: Final = 1
HALF_CLOSED_REMOTE: Final = 2  # the client sent END_STREAM
HALF_CLOSED_LOCAL: Final = 3  # we sent END_STREAM
CLOSED: Final = 4
STATE_NAMES: Final = ("", "open", "half-closed (remote)", "half-closed (local)", "closed")

RECV_END: Final = 0  # END_STREAM received
SEND_END: Final = 1  # END_STREAM sent
RESET: Final = 2  # RST_STREAM sent or received
_NE: Final = 3

STREAM_TABLE: Final[dict[int, dict[int, int]]] = {
    OPEN: {RECV_END: HALF_CLOSED_REMOTE, SEND_END: HALF_CLOSED_LOCAL, RESET: CLOSED},
    HALF_CLOSED_REMOTE: {SEND_END: CLOSED, RESET: CLOSED},
    HALF_CLOSED_LOCAL: {RECV_END: CLOSED, RESET: CLOSED},
    CLOSED: {},
}


STREAM_NEXT: Final = flatten(STREAM_TABLE, CLOSED + 1, _NE)  # 0 (NO_ROW): no such change

# How a remembered closed stream closed.
BY_OUR_RESET: Final = 1  # we sent RST_STREAM: what is still in flight is ignored (§5.1)
BY_PEER_RESET: Final = 2  # the client sent RST_STREAM
BY_END: Final = 3  # END_STREAM both ways
CLOSED_KEPT: Final = 128

# The largest dynamic table our encoder keeps, whatever the client allows (nghttp2's and Go's).
ENCODER_TABLE_MAX: Final = 4096

# At most this many CONTINUATION frames per header block (empty ones would otherwise cost
# work without growing the block: CVE-2024-27316's kin); a 64 KiB block needs 4.
MAX_CONTINUATIONS: Final = 64

# Flood budgets (FloodGuard.hit).
RESETS: Final = 0  # streams the client reset, refused past the limit, stream errors
CONTROL: Final = 1  # PING, SETTINGS, PRIORITY, unearned WINDOW_UPDATE, empty DATA, ...
_KIND_NAMES: Final = ("stream resets", "control frames")


class ConnectionError_(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with ``error_code`` is queued."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class StreamClosed(Exception):
    """A call for a stream that cannot take it (closed, reset, or never opened)."""


_NO_HEADERS: Final[list[tuple[bytes, bytes]]] = []


class Event:
    """One thing the client did (``kind``: the constants above)."""

    __slots__ = ("code", "data", "ended", "flow", "headers", "kind", "sid")

    def __init__(self, kind: int, sid: int) -> None:
        self.kind = kind
        self.sid = sid
        self.data = b""
        self.flow = 0
        self.ended = False
        self.code = 0
        self.headers: list[tuple[bytes, bytes]] = _NO_HEADERS

    def __repr__(self) -> str:
        return f"Event({self.kind}, sid={self.sid})"


class FloodGuard:
    """The budgets of one client connection (RFC 9113 §10.5): at most ``max_resets`` streams
    reset (by the client, refused by us, or reset on a stream error the client provoked) and
    ``max_control`` unproductive control frames per fixed window of ``window`` seconds (time is
    ``clock.now``: the engine's, so a replay counts the same). Each DATA frame we send earns two
    WINDOW_UPDATE frames (the stream's and the connection's) that do not count."""

    def __init__(self, max_resets: int, max_control: int, window: float, clock: Any) -> None:
        self.limits = [max_resets, max_control]
        self.window = window
        self.clock = clock
        self.counts = [0, 0]
        self.start: float = clock.now
        self.credit = 0

    def hit(self, kind: int) -> None:
        now: float = self.clock.now
        if now - self.start >= self.window:
            self.start = now
            self.counts = [0, 0]
        n = self.counts[kind] + 1
        self.counts[kind] = n
        if n > self.limits[kind]:
            msg = (
                f"too many {_KIND_NAMES[kind]}: more than {self.limits[kind]} "
                f"in {self.window:g} s (RFC 9113 §10.5)"
            )
            raise ConnectionError_(ENHANCE_YOUR_CALM, msg)


class _Stream:
    """A stream's state, send window and receive window (with what the server consumed but
    did not hand back yet)."""

    def __init__(self, state: int, send_window: int, recv_window: int) -> None:
        self.state = state
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_max = recv_window
        self.processed = 0


def _window_increment(current: int, maximum: int, processed: int) -> int:
    """How much of the ``processed`` bytes to hand back now (``h2``'s window manager: once
    half the window is consumed, or more than min(1024, max/4) when it is empty)."""
    if (current == 0 and processed > min(1024, maximum // 4)) or processed >= maximum // 2:
        return min(processed, maximum - current)
    return 0


class Connection:
    """One HTTP/2 connection, server side."""

    def __init__(
        self,
        max_concurrent_streams: int,
        max_header_list_size: int,
        header_table_size: int,
        max_header_block: int,
        guard: FloodGuard | None = None,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_block = max_header_block
        self.guard = guard
        dec = Decoder(max_header_list_size)
        # Our SETTINGS_HEADER_TABLE_SIZE binds the client once it ACKs our SETTINGS (§6.5.3);
        # until then it may use the initial 4096 (RFC 7541 §4.2).
        dec.max_allowed_table_size = max(header_table_size, 4096)
        self.decoder = dec
        self._table_size = header_table_size
        self._acked = False
        self.encoder = Encoder()
        # the client's settings (§6.5.2 initial values)
        self.remote_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = MIN_FRAME_SIZE
        self.streams: dict[int, _Stream] = {}
        self.closed_streams: dict[int, int] = {}
        self.highest_inbound_stream_id = 0
        self.last_sid = MAX_WINDOW  # the last stream id of our GOAWAY (graceful shutdown)
        self.refused = 0
        self.terminated = False  # a connection error's GOAWAY is queued
        self.send_window = DEFAULT_WINDOW  # the connection's (§6.9.1)
        self.recv_window = DEFAULT_WINDOW
        self.recv_max = DEFAULT_WINDOW
        self.recv_processed = 0
        self._out: list[bytes] = []
        self.takes = 0
        self._buf = b""
        self._preface = True  # the client preface is still to come
        self._settings_first = True  # its first frame must be SETTINGS (§3.4)
        # the header block being received (HEADERS, then CONTINUATION until END_HEADERS)
        self._block_sid = 0
        self._block: list[bytes] = []
        self._block_size = 0
        self._block_end = False
        self._block_bad = False
        self._events: list[Event] = []

    # -- output

    def initiate_connection(self) -> None:
        """Queue our SETTINGS (the server's connection preface, §3.4; in ``h2``'s order)."""
        ours = [
            (HEADER_TABLE_SIZE, self._table_size),
            (ENABLE_PUSH, 0),
            (INITIAL_WINDOW_SIZE, DEFAULT_WINDOW),
            (MAX_FRAME_SIZE, MIN_FRAME_SIZE),
            (ENABLE_CONNECT_PROTOCOL, 0),
            (MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (MAX_HEADER_LIST_SIZE, self.decoder.max_header_list_size),
        ]
        self._out.append(settings(ours))

    def data_to_send(self) -> bytes:
        """What was queued, in one piece (``takes`` counts the calls: one per input is the
        aim, tests/test_h2_output.py)."""
        self.takes += 1
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def increment_flow_control_window(self, increment: int) -> None:
        """Open the connection's receive window by ``increment`` (WINDOW_UPDATE on stream 0)."""
        self.recv_window += increment
        if self.recv_window > self.recv_max:
            self.recv_max = self.recv_window
        self._out.append(window_update(0, increment))

    def _send_stream(self, sid: int) -> _Stream:
        st = self.streams.get(sid)
        if st is None or st.state == CLOSED or st.state == HALF_CLOSED_LOCAL:
            raise StreamClosed(f"stream {sid} cannot send")
        return st

    def _change(self, sid: int, st: _Stream, ev: int, how: int) -> None:
        nxt = STREAM_NEXT[st.state * _NE + ev]
        if nxt == 0:  # (every caller checks the state first: a bug if it happens)
            raise AssertionError(f"stream {sid}: no change {ev} from {STATE_NAMES[st.state]}")
        st.state = nxt
        if nxt == CLOSED:
            del self.streams[sid]
            self._remember(sid, how)

    def send_headers(
        self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False
    ) -> None:
        st = self._send_stream(sid)
        block = self.encoder.encode(fields)
        self._out.append(header_block(sid, block, end_stream, self.max_outbound_frame_size))
        if end_stream:
            self._change(sid, st, SEND_END, BY_END)

    def local_flow_control_window(self, sid: int) -> int:
        """What stream ``sid`` may send now: the smaller of its window and the connection's."""
        st = self._send_stream(sid)
        w = st.send_window
        return w if w < self.send_window else self.send_window

    def send_data(self, sid: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        st = self._send_stream(sid)
        n = len(data)
        if n > st.send_window or n > self.send_window:
            raise StreamClosed(f"stream {sid}: {n} bytes exceed the send window")
        if n > self.max_outbound_frame_size:
            raise StreamClosed(f"stream {sid}: {n} bytes exceed the frame size")
        st.send_window -= n
        self.send_window -= n
        guard = self.guard
        if guard is not None and n:
            guard.credit += 2  # the stream's and the connection's WINDOW_UPDATE it earns
        out = self._out
        out.append(head(n, DATA, END_STREAM if end_stream else 0, sid))
        if n:
            out.append(bytes(data))
        if end_stream:
            self._change(sid, st, SEND_END, BY_END)

    def end_sent(self, sid: int) -> bool:
        """Whether stream ``sid`` sent END_STREAM (or is gone)."""
        st = self.streams.get(sid)
        return st is None or st.state == HALF_CLOSED_LOCAL or st.state == CLOSED

    def is_open(self, sid: int) -> bool:
        return sid in self.streams

    def reset_stream(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            raise StreamClosed(f"stream {sid} is closed")
        self._out.append(rst_stream(sid, code))
        self._change(sid, st, RESET, BY_OUR_RESET)

    def acknowledge_received_data(self, size: int, sid: int) -> None:
        """The server consumed ``size`` flow-controlled bytes of stream ``sid``: re-open the
        windows (the connection's always; the stream's while the client may still send)."""
        self.recv_processed += size
        inc = _window_increment(self.recv_window, self.recv_max, self.recv_processed)
        if inc:
            self.recv_processed = 0
            self.recv_window += inc
            self._out.append(window_update(0, inc))
        st = self.streams.get(sid)
        if st is not None and (st.state == OPEN or st.state == HALF_CLOSED_LOCAL):
            st.processed += size
            inc = _window_increment(st.recv_window, st.recv_max, st.processed)
            if inc:
                st.processed = 0
                st.recv_window += inc
                self._out.append(window_update(sid, inc))

    def ping(self, data: bytes) -> None:
        self._out.append(ping(data, False))

    def send_goaway(self, last_stream_id: int) -> None:
        """GOAWAY(NO_ERROR, ``last_stream_id``), the connection left open for the streams at
        or below it; a stream opened above it is refused (§6.8)."""
        self.last_sid = last_stream_id
        self._out.append(goaway(last_stream_id, NO_ERROR))

    def close_connection(self, code: int = NO_ERROR) -> None:
        """GOAWAY with ``code`` and the last stream id processed; none after a connection
        error's GOAWAY (a second one would hide its code)."""
        if not self.terminated:
            self.terminated = True
            self._out.append(goaway(self.highest_inbound_stream_id, code))

    def count_stream_error(self) -> str | None:
        """Count a stream error the server made (a malformed request, RFC 9113 §8.1.1) against
        the reset budget: stream errors a client provokes at will are rapid reset by other
        means ("MadeYouReset", CVE-2025-8671). Past the budget, GOAWAY(ENHANCE_YOUR_CALM) is
        queued and the reason returned: the connection must close."""
        guard = self.guard
        if guard is not None:
            try:
                guard.hit(RESETS)
            except ConnectionError_ as err:
                self._terminate(err.error_code)
                return str(err)
        return None

    # -- input

    def receive_data(self, data: bytes) -> list[Event]:
        """Take what the client sent; return the events it amounts to. A connection error
        raises :class:`ConnectionError_` (its GOAWAY is queued)."""
        events: list[Event] = []
        self._events = events
        buf = self._buf + data if self._buf else data
        if self.terminated:
            return events
        pos = 0
        end = len(buf)
        try:
            if self._preface:
                if buf[:24] != PREFACE[: min(end, 24)]:
                    self._fail(PROTOCOL_ERROR, "invalid HTTP/2 connection preface (§3.4)")
                if end < 24:
                    self._buf = buf
                    return events
                self._preface = False
                pos = 24
            while end - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MIN_FRAME_SIZE:
                    # §4.2: our SETTINGS_MAX_FRAME_SIZE; refused before the payload arrives
                    self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes (RFC 9113 §4.2)")
                if end - pos - 9 < length:
                    break
                kind = buf[pos + 3]
                flags = buf[pos + 4]
                sid = u32_at(buf, pos + 5) & 0x7FFFFFFF
                start = pos + 9
                pos = start + length
                self._frame(kind, flags, sid, buf[start:pos])
        except ConnectionError_ as err:
            self._buf = b""
            self._terminate(err.error_code)
            raise
        self._buf = buf[pos:] if pos < end else b""
        return events

    def _fail(self, code: int, message: str) -> None:
        raise ConnectionError_(code, message)

    def _terminate(self, code: int) -> None:
        if not self.terminated:
            self.terminated = True
            self._out.append(goaway(self.highest_inbound_stream_id, code))

    def _hit(self, kind: int) -> None:
        guard = self.guard
        if guard is not None:
            guard.hit(kind)

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self._block_sid:
            if kind != CONTINUATION or sid != self._block_sid:
                self._fail(PROTOCOL_ERROR, "header block interrupted (RFC 9113 §6.10)")
            self._continuation(flags, payload)
            return
        if self._settings_first:
            if kind != SETTINGS or flags & ACK:
                self._fail(PROTOCOL_ERROR, "the preface's first frame is not SETTINGS (§3.4)")
            self._settings_first = False
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == PING:
            self._ping(flags, sid, payload)
        elif kind == PRIORITY:
            self._priority(sid, payload)
        elif kind == GOAWAY:
            self._goaway(sid, payload)
        elif kind == CONTINUATION:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without a header block (RFC 9113 §6.10)")
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client (RFC 9113 §8.4)")
        # other types: ignored (§5.5)

    def _stream_error(
        self, sid: int, code: int, kind: int = STREAM_RESET, count: bool = True
    ) -> None:
        """A stream error (§5.4.2): RST_STREAM; the stream, if open, is reset (an event of
        ``kind`` tells the server). Counted against the reset budget (MadeYouReset)."""
        self._out.append(rst_stream(sid, code))
        st = self.streams.get(sid)
        if st is not None:
            self._change(sid, st, RESET, BY_OUR_RESET)
            ev = Event(kind, sid)
            ev.code = code
            self._events.append(ev)
        if count:
            self._hit(RESETS)

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload:
                self._fail(FRAME_SIZE_ERROR, "padded frame without its Pad Length (§6.1)")
            pad = payload[0]
            if pad >= len(payload):
                self._fail(PROTOCOL_ERROR, "padding as long as the payload (RFC 9113 §6.1)")
            return payload[1 : len(payload) - pad]
        return payload

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0 (RFC 9113 §6.1)")
        flow = len(payload)
        data = self._unpad(flags, payload)
        if sid > self.highest_inbound_stream_id or not sid & 1:
            self._fail(PROTOCOL_ERROR, f"DATA on idle stream {sid} (RFC 9113 §5.1)")
        if flow > self.recv_window:
            self._fail(FLOW_CONTROL_ERROR, "DATA past the connection's window (RFC 9113 §6.9)")
        self.recv_window -= flow
        ended = (flags & END_STREAM) != 0
        if not data and not ended:
            self._hit(CONTROL)
        st = self.streams.get(sid)
        if st is None or st.state == HALF_CLOSED_REMOTE:
            # closed, or its request ended: the data still counts for the connection's window
            self.acknowledge_received_data(flow, 0)
            if st is not None or self.closed_streams.get(sid, 0) != BY_OUR_RESET:
                self._stream_error(sid, STREAM_CLOSED)
            return
        if flow > st.recv_window:
            self.acknowledge_received_data(flow, 0)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        st.recv_window -= flow
        ev = Event(DATA_RECEIVED, sid)
        ev.data = data
        ev.flow = flow
        events = self._events
        events.append(ev)
        if ended:
            self._change(sid, st, RECV_END, BY_END)
            events.append(Event(STREAM_ENDED, sid))

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0 (RFC 9113 §6.2)")
        if flags & PRIORITY_FLAG and len(payload) < (6 if flags & PADDED else 5):
            self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority (RFC 9113 §6.2)")
        block = self._unpad(flags, payload)
        bad = False  # depends on itself (§5.3.1): a stream error once the block is decoded
        if flags & PRIORITY_FLAG:
            if len(block) < 5:  # the padding reaches into the priority fields
                self._fail(PROTOCOL_ERROR, "padding past the header block (RFC 9113 §6.2)")
            dep = u32_at(block, 0) & 0x7FFFFFFF
            block = block[5:]
            bad = dep == sid
        if len(block) > self.max_header_block:
            self._block_too_big()
        ended = (flags & END_STREAM) != 0
        if not flags & END_HEADERS:
            self._block_sid = sid
            self._block = [block]
            self._block_size = len(block)
            self._block_end = ended
            self._block_bad = bad
            return
        self._header_block(sid, block, ended, bad)

    def _remember(self, sid: int, how: int) -> None:
        kept = self.closed_streams
        kept[sid] = how
        if len(kept) > CLOSED_KEPT:
            del kept[next(iter(kept))]

    def _block_too_big(self) -> None:
        self._fail(
            ENHANCE_YOUR_CALM,
            f"header block over {self.max_header_block} bytes across CONTINUATION frames",
        )

    def _continuation(self, flags: int, payload: bytes) -> None:
        size = self._block_size + len(payload)
        if size > self.max_header_block:
            self._block_too_big()
        if len(self._block) > MAX_CONTINUATIONS:
            self._fail(
                ENHANCE_YOUR_CALM, f"more than {MAX_CONTINUATIONS} CONTINUATION frames in a block"
            )
        self._block_size = size
        self._block.append(payload)
        if flags & END_HEADERS:
            sid = self._block_sid
            block = b"".join(self._block)
            self._block_sid = 0
            self._block = []
            self._block_size = 0
            self._header_block(sid, block, self._block_end, self._block_bad)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self.decoder.decode_plain(block)
        except OversizedHeaderListError as err:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header list too large: {err}") from err
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as err:
            msg = f"field block does not decode: {err!r} (RFC 9113 §4.3)"
            raise ConnectionError_(COMPRESSION_ERROR, msg) from err

    def _header_block(self, sid: int, block: bytes, ended: bool, bad: bool) -> None:
        """A whole header block on ``sid``: a request head, trailers, or one to refuse."""
        headers = self._decode(block)
        st = self.streams.get(sid)
        if st is not None:
            if bad:
                self._stream_error(sid, PROTOCOL_ERROR)  # §5.3.1
                return
            if st.state == HALF_CLOSED_REMOTE:
                self._stream_error(sid, STREAM_CLOSED)  # §5.1: after END_STREAM
                return
            if not ended:
                # §8.1: trailers end the stream; a stream error (the server counts it)
                self._stream_error(sid, PROTOCOL_ERROR, TRAILERS_NOT_LAST, False)
                return
            ev = Event(TRAILERS, sid)
            ev.headers = headers
            self._events.append(ev)
            self._change(sid, st, RECV_END, BY_END)
            self._events.append(Event(STREAM_ENDED, sid))
            return
        if not sid & 1:
            self._fail(PROTOCOL_ERROR, f"client stream {sid} is even (RFC 9113 §5.1.1)")
        if sid <= self.highest_inbound_stream_id:
            how = self.closed_streams.get(sid, 0)
            if how == BY_OUR_RESET:
                return  # in flight when we reset it (§5.1)
            if how == BY_PEER_RESET:
                self._stream_error(sid, STREAM_CLOSED)  # §5.1: after its RST_STREAM
                return
            if how == 0:
                self._fail(PROTOCOL_ERROR, f"HEADERS on stream {sid}, not new (RFC 9113 §5.1.1)")
            self._fail(STREAM_CLOSED, f"HEADERS on closed stream {sid} (RFC 9113 §5.1)")
        self.highest_inbound_stream_id = sid
        if bad:
            # §5.3.1: depends on itself, a stream error (its block was decoded: §4.3)
            self._remember(sid, BY_OUR_RESET)
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        if sid > self.last_sid or len(self.streams) >= self.max_concurrent_streams:
            # §8.7 / §5.1.2: refused, not processed; the client may retry it
            if sid <= self.last_sid:
                self.refused += 1
            self._out.append(rst_stream(sid, REFUSED_STREAM))
            self._remember(sid, BY_OUR_RESET)
            self._hit(RESETS)
            return
        st = _Stream(
            HALF_CLOSED_REMOTE if ended else OPEN,
            self.remote_initial_window,
            DEFAULT_WINDOW,
        )
        self.streams[sid] = st
        ev = Event(REQUEST, sid)
        ev.headers = headers
        ev.ended = ended
        self._events.append(ev)

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes long (RFC 9113 §6.9)")
        inc = u32_at(payload, 0) & 0x7FFFFFFF
        guard = self.guard
        if guard is not None:
            if guard.credit > 0:
                guard.credit -= 1
            else:
                guard.hit(CONTROL)
        if sid == 0:
            if inc == 0:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 (RFC 9113 §6.9)")
            w = self.send_window + inc
            if w > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window past 2^31-1 (RFC 9113 §6.9.1)")
            self.send_window = w
            self._events.append(Event(WINDOW_OPENED, 0))
            return
        if sid > self.highest_inbound_stream_id or not sid & 1:
            self._fail(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid} (RFC 9113 §5.1)")
        st = self.streams.get(sid)
        if st is None:
            return  # closed: it may still arrive (§5.1)
        if inc == 0:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        w = st.send_window + inc
        if w > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        st.send_window = w
        self._events.append(Event(WINDOW_OPENED, sid))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream (RFC 9113 §6.5)")
        if flags & ACK:
            if payload:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload (RFC 9113 §6.5)")
            if not self._acked:
                self._acked = True
                self.decoder.max_allowed_table_size = self._table_size
            return
        if len(payload) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes (RFC 9113 §6.5)")
        self._hit(CONTROL)
        for i in range(0, len(payload), 6):
            code = (payload[i] << 8) | payload[i + 1]
            self._setting(code, u32_at(payload, i + 2))
        self._out.append(SETTINGS_ACK)
        self._events.append(Event(SETTINGS_CHANGED, 0))

    def _setting(self, code: int, value: int) -> None:
        """One of the client's settings (§6.5.2)."""
        if code == HEADER_TABLE_SIZE:
            # the client's decoder allows up to ``value``; our encoder's table stays within
            # 4096 (RFC 7541 §4.2: an encoder may use less; memory per connection is ours)
            self.encoder.header_table_size = min(value, ENCODER_TABLE_MAX)
        elif code == ENABLE_PUSH or code == ENABLE_CONNECT_PROTOCOL:
            if value > 1:
                self._fail(PROTOCOL_ERROR, f"setting {code} of {value} (RFC 9113 §6.5.2)")
        elif code == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "initial window past 2^31-1 (RFC 9113 §6.5.2)")
            delta = value - self.remote_initial_window
            self.remote_initial_window = value
            if delta:
                for st in self.streams.values():  # §6.9.2
                    w = st.send_window + delta
                    if w > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream's window past 2^31-1 (§6.9.2)")
                    st.send_window = w
        elif code == MAX_FRAME_SIZE:
            if value < MIN_FRAME_SIZE or value > MAX_FRAME_SIZE_LIMIT:
                self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE of {value} (§6.5.2)")
            self.max_outbound_frame_size = value
        # MAX_CONCURRENT_STREAMS limits the streams we would open (none: no push) and
        # MAX_HEADER_LIST_SIZE is advisory (§6.5.2); unknown settings are ignored

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0 (RFC 9113 §6.4)")
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes long (RFC 9113 §6.4)")
        if sid > self.highest_inbound_stream_id or not sid & 1:
            self._fail(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid} (RFC 9113 §5.1)")
        st = self.streams.get(sid)
        if st is None:
            self._hit(CONTROL)
            return
        self._hit(RESETS)  # rapid reset (CVE-2023-44487)
        code = u32_at(payload, 0)
        self._change(sid, st, RESET, BY_PEER_RESET)
        ev = Event(STREAM_RESET, sid)
        ev.code = code
        self._events.append(ev)

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "PING on a stream (RFC 9113 §6.7)")
        if len(payload) != 8:
            self._fail(FRAME_SIZE_ERROR, "PING not 8 bytes long (RFC 9113 §6.7)")
        if flags & ACK:
            ev = Event(PING_ACKED, 0)
            ev.data = payload
            self._events.append(ev)
            return
        self._hit(CONTROL)
        self._out.append(ping(payload, True))

    def _priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0 (RFC 9113 §6.3)")
        self._hit(CONTROL)
        if len(payload) != 5:
            self._stream_error(sid, FRAME_SIZE_ERROR)  # §6.3: a stream error, even on idle
            return
        dep = u32_at(payload, 0) & 0x7FFFFFFF
        if dep == sid:
            self._stream_error(sid, PROTOCOL_ERROR)  # §5.3.1

    def _goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(PROTOCOL_ERROR, "GOAWAY on a stream (RFC 9113 §6.8)")
        if len(payload) < 8:
            self._fail(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes (RFC 9113 §6.8)")
        ev = Event(GOAWAY_RECEIVED, 0)
        ev.sid = u32_at(payload, 0) & 0x7FFFFFFF
        ev.code = u32_at(payload, 4)
        self._events.append(ev)
