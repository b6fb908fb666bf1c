"""The sans-I/O HTTP/2 server connection (proxycore.h2.connection) alone, against RFC 9113:
client bytes in (built with hyperframe and hpack, or raw where a frame must be malformed),
the exact frames out (parsed with hyperframe). Where ``h2`` is the reference (the initial
SETTINGS, the encoded response, the receive windows' WINDOW_UPDATE frames) the bytes are
compared with an ``h2`` server connection's."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxycore.h2.connection import (
    DATA_RECEIVED,
    GOAWAY_RECEIVED,
    MAX_CONTINUATIONS,
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

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
MAX_WINDOW = (1 << 31) - 1  # §6.9.1
REQ = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/"),
]
RESP = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-served-by", b"proxycore")]

# raw frame types (RFC 9113 §6)
T_DATA, T_HEADERS, T_PRIORITY, T_RST, T_SETTINGS, T_PING, T_WINDOW_UPDATE = 0, 1, 2, 3, 4, 6, 8


class Clock:
    """The engine's clock as FloodGuard reads it."""

    def __init__(self) -> None:
        self.now = 0.0


# -- helpers


def raw(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """A frame as bytes (§4.1), for the malformed ones hyperframe will not build."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, sid) + payload


def parse(data: bytes) -> list[Any]:
    """The frames in ``data``, which must hold whole frames only (each a hyperframe Frame of
    its type: Any, to read its fields)."""
    out: list[Any] = []
    view = memoryview(data)
    i = 0
    while i < len(data):
        frame, length = Frame.parse_frame_header(view[i : i + 9])
        frame.parse_body(view[i + 9 : i + 9 + length])
        out.append(frame)
        i += 9 + length
    assert i == len(data)
    return out


def new(
    streams: int = 100,
    list_size: int = 65536,
    table_size: int = 4096,
    block: int = 65536,
    guard: FloodGuard | None = None,
) -> Connection:
    return Connection(streams, list_size, table_size, block, guard)


def opened(
    conn: Connection | None = None, settings: dict[int, int] | None = None
) -> tuple[Connection, hpack.Encoder]:
    """A connection past the preface (ours: our SETTINGS; the client's: its SETTINGS, ACKed),
    its output taken; and the client's HPACK encoder."""
    conn = new() if conn is None else conn
    conn.initiate_connection()
    events = conn.receive_data(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
    assert [e.kind for e in events] == [SETTINGS_CHANGED]
    out = parse(conn.data_to_send())
    assert [type(f) for f in out] == [SettingsFrame, SettingsFrame]
    assert out[1].flags == {"ACK"}
    return conn, hpack.Encoder()


def headers(
    enc: hpack.Encoder,
    sid: int,
    fields: list[tuple[bytes, bytes]] = REQ,
    end_stream: bool = True,
    flags: Iterable[str] = ("END_HEADERS",),
    **kw: int,
) -> bytes:
    fl = set(flags) | ({"END_STREAM"} if end_stream else set())
    return HeadersFrame(sid, data=enc.encode(fields), flags=fl, **kw).serialize()


def request(conn: Connection, enc: hpack.Encoder, sid: int, end_stream: bool = False) -> None:
    """Open stream ``sid`` with a request head; nothing is sent back."""
    events = conn.receive_data(headers(enc, sid, end_stream=end_stream))
    assert [(e.kind, e.sid, e.ended) for e in events] == [(REQUEST, sid, end_stream)]
    assert conn.data_to_send() == b""


def data(sid: int, payload: bytes, end_stream: bool = False, **kw: int) -> bytes:
    flags = {"END_STREAM"} if end_stream else set()
    if "pad_length" in kw:
        flags.add("PADDED")
    return DataFrame(sid, data=payload, flags=flags, **kw).serialize()


def fails(conn: Connection, wire: bytes, code: int, last: int | None = None) -> None:
    """``wire`` is a connection error (§5.4.1) of ``code``: ConnectionError_ is raised and
    exactly one GOAWAY with that code (and the last stream id) ends the output."""
    with pytest.raises(ConnectionError_) as err:
        conn.receive_data(wire)
    assert err.value.error_code == code
    out = parse(conn.data_to_send())
    assert out, "no GOAWAY queued"
    assert isinstance(out[-1], GoAwayFrame)
    assert out[-1].error_code == code
    assert out[-1].last_stream_id == (conn.highest_inbound_stream_id if last is None else last)
    assert sum(isinstance(f, GoAwayFrame) for f in out) == 1


def rst(frame: Frame) -> tuple[int, int]:
    assert isinstance(frame, RstStreamFrame)
    return frame.stream_id, frame.error_code


def sent_resets(conn: Connection) -> list[tuple[int, int]]:
    return [rst(f) for f in parse(conn.data_to_send())]


def window_updates(wire: bytes) -> list[tuple[int, int]]:
    return [
        (f.stream_id, f.window_increment) for f in parse(wire) if isinstance(f, WindowUpdateFrame)
    ]


def kinds(events: list[Event]) -> list[tuple[int, int]]:
    return [(e.kind, e.sid) for e in events]


def h2_server(local: dict[SettingCodes, int] | None = None) -> h2.connection.H2Connection:
    """The ``h2`` library's server connection, the reference."""
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    if local is not None:
        c.local_settings = type(c.local_settings)(client=False, initial_values=local)
    return c


# -- the connection preface (§3.4)


def test_invalid_preface_is_a_protocol_error() -> None:
    """§3.4: an invalid preface is a connection error of type PROTOCOL_ERROR."""
    conn = new()
    conn.initiate_connection()
    conn.data_to_send()
    with pytest.raises(ConnectionError_) as err:
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert err.value.error_code == ErrorCodes.PROTOCOL_ERROR


def test_invalid_preface_queues_goaway_protocol_error() -> None:
    """§3.4, §5.4.1: a connection error's GOAWAY carries its code (RFC 9113 lets a GOAWAY be
    omitted after a bad preface, but the module's contract is GOAWAY then ConnectionError_,
    and close_connection() must not then report NO_ERROR)."""
    conn = new()
    fails(conn, b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n", ErrorCodes.PROTOCOL_ERROR, last=0)
    conn.close_connection(ErrorCodes.NO_ERROR)
    assert conn.data_to_send() == b""


def test_preface_split_over_many_reads() -> None:
    """§3.4: the preface and the SETTINGS that follow it may arrive a byte at a time."""
    conn = new()
    wire = PREFACE + SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 20000}).serialize()
    events: list[Event] = []
    for i in range(len(wire)):
        events += conn.receive_data(wire[i : i + 1])
    assert kinds(events) == [(SETTINGS_CHANGED, 0)]
    assert conn.max_outbound_frame_size == 20000
    out = parse(conn.data_to_send())
    assert [(type(f), f.flags) for f in out] == [(SettingsFrame, {"ACK"})]


@pytest.mark.parametrize(
    "first",
    [
        PingFrame(0, opaque_data=b"12345678").serialize(),
        SettingsFrame(0, flags=["ACK"]).serialize(),
        WindowUpdateFrame(0, window_increment=1).serialize(),
        HeadersFrame(1, data=hpack.Encoder().encode(REQ), flags=["END_HEADERS"]).serialize(),
    ],
    ids=["ping", "settings-ack", "window-update", "headers"],
)
def test_first_frame_not_settings(first: bytes) -> None:
    """§3.4: the client preface's first frame must be SETTINGS, else PROTOCOL_ERROR."""
    fails(new(), PREFACE + first, ErrorCodes.PROTOCOL_ERROR, last=0)


# -- frame size (§4.2)


def test_frame_over_max_frame_size_refused_at_its_header() -> None:
    """§4.2: a frame longer than our SETTINGS_MAX_FRAME_SIZE (16384) is FRAME_SIZE_ERROR, as
    soon as its 9-byte header is in: the payload is never awaited."""
    conn, enc = opened()
    request(conn, enc, 1)
    header = struct.pack(">I", 16385)[1:] + struct.pack(">BBI", T_DATA, 0, 1)
    fails(conn, header, ErrorCodes.FRAME_SIZE_ERROR, last=1)


def test_frame_of_max_frame_size_accepted() -> None:
    """§4.2: 16384 bytes is allowed."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(data(1, b"x" * 16384))
    assert [(e.kind, len(e.data), e.flow) for e in events] == [(DATA_RECEIVED, 16384, 16384)]


# -- HEADERS and stream identifiers (§5.1.1, §6.2)


def test_headers_open_a_stream() -> None:
    """§5.1, §6.2: HEADERS opens a stream; the request head is decoded; END_STREAM is told."""
    conn, enc = opened()
    events = conn.receive_data(headers(enc, 1, end_stream=True))
    assert [(e.kind, e.sid, e.headers, e.ended) for e in events] == [(REQUEST, 1, REQ, True)]
    fields = [*REQ, (b"x-custom", b"yes")]
    events = conn.receive_data(headers(enc, 3, fields, end_stream=False))
    assert [(e.kind, e.sid, e.headers, e.ended) for e in events] == [(REQUEST, 3, fields, False)]
    assert conn.highest_inbound_stream_id == 3
    assert conn.is_open(1)
    assert conn.is_open(3)
    assert conn.data_to_send() == b""


def test_headers_on_even_stream() -> None:
    """§5.1.1: a client's streams are odd; an even one is PROTOCOL_ERROR."""
    conn, enc = opened()
    fails(conn, headers(enc, 2), ErrorCodes.PROTOCOL_ERROR, last=0)


def test_headers_on_lower_stream_id() -> None:
    """§5.1.1: a new stream id must exceed all the client opened before: PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 5)
    fails(conn, headers(enc, 3), ErrorCodes.PROTOCOL_ERROR, last=5)


def test_headers_on_stream_zero() -> None:
    """§6.2: HEADERS on stream 0 is PROTOCOL_ERROR."""
    conn, enc = opened()
    block = enc.encode(REQ)
    fails(conn, raw(T_HEADERS, 0x5, 0, block), ErrorCodes.PROTOCOL_ERROR, last=0)


# -- header blocks: CONTINUATION (§4.3, §6.10)


def test_headers_and_continuation_reassembled() -> None:
    """§6.10: HEADERS without END_HEADERS and CONTINUATION frames make one block; nothing is
    decoded before END_HEADERS."""
    conn, enc = opened()
    fields = [*REQ, (b"x-long", b"v" * 300)]
    block = enc.encode(fields)
    a, b, c = block[:10], block[10:100], block[100:]
    assert conn.receive_data(HeadersFrame(1, data=a, flags=["END_STREAM"]).serialize()) == []
    assert conn.receive_data(ContinuationFrame(1, data=b).serialize()) == []
    events = conn.receive_data(ContinuationFrame(1, data=c, flags=["END_HEADERS"]).serialize())
    assert [(e.kind, e.sid, e.headers, e.ended) for e in events] == [(REQUEST, 1, fields, True)]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "interloper",
    [
        PingFrame(0, opaque_data=b"12345678").serialize(),
        ContinuationFrame(3, data=b"\x82", flags=["END_HEADERS"]).serialize(),
        raw(0x20, 0, 0, b"unknown"),
    ],
    ids=["ping", "continuation-other-stream", "unknown-type"],
)
def test_header_block_interrupted(interloper: bytes) -> None:
    """§4.3, §6.10: a header block is contiguous: any other frame, or CONTINUATION of another
    stream, before END_HEADERS is PROTOCOL_ERROR."""
    conn, enc = opened()
    block = enc.encode(REQ)
    conn.receive_data(HeadersFrame(1, data=block[:5], flags=["END_STREAM"]).serialize())
    fails(conn, interloper, ErrorCodes.PROTOCOL_ERROR, last=0)


def test_continuation_without_headers() -> None:
    """§6.10: CONTINUATION not preceded by HEADERS (without END_HEADERS) is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    wire = ContinuationFrame(1, data=b"\x82", flags=["END_HEADERS"]).serialize()
    fails(conn, wire, ErrorCodes.PROTOCOL_ERROR, last=1)


def test_header_block_over_limit_across_continuations() -> None:
    """§10.5 (CVE-2024-27316): a header block is bounded across CONTINUATION frames; the frame
    that passes max_header_block is ENHANCE_YOUR_CALM as it arrives, before END_HEADERS."""
    conn, _ = opened(new(block=100))
    assert conn.receive_data(HeadersFrame(1, data=b"\x00" * 60).serialize()) == []
    assert conn.receive_data(ContinuationFrame(1, data=b"\x00" * 40).serialize()) == []
    fails(conn, ContinuationFrame(1, data=b"\x00").serialize(), ErrorCodes.ENHANCE_YOUR_CALM, 0)


def test_header_block_over_limit_in_headers_alone() -> None:
    """§10.5: one HEADERS frame larger than max_header_block is ENHANCE_YOUR_CALM."""
    conn, _ = opened(new(block=100))
    wire = HeadersFrame(1, data=b"\x00" * 101, flags=["END_HEADERS"]).serialize()
    fails(conn, wire, ErrorCodes.ENHANCE_YOUR_CALM, last=0)


def test_header_block_of_too_many_continuation_frames() -> None:
    """CVE-2024-27316's kin: empty CONTINUATION frames cost work without growing the block;
    past MAX_CONTINUATIONS in one block the connection gets ENHANCE_YOUR_CALM."""
    conn, _ = opened()
    conn.receive_data(HeadersFrame(1, data=b"").serialize())
    empty = ContinuationFrame(1, data=b"").serialize()
    assert conn.receive_data(empty * MAX_CONTINUATIONS) == []
    fails(conn, empty, ErrorCodes.ENHANCE_YOUR_CALM, last=0)


def test_headers_after_the_clients_reset_is_a_stream_error() -> None:
    """§5.1 (closed): a frame other than PRIORITY after the client's RST_STREAM is a stream
    error STREAM_CLOSED; the connection lives on."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.receive_data(RstStreamFrame(1, error_code=8).serialize())
    conn.data_to_send()
    conn.receive_data(headers(enc, 1, [(b"x-t", b"1")], end_stream=True))
    assert sent_resets(conn) == [(1, ErrorCodes.STREAM_CLOSED)]
    request(conn, enc, 3)


# -- HPACK (§4.3)


@pytest.mark.parametrize(
    "block",
    [b"\x80", b"\xbf\x7f", b"\x40\x85abc", b"\xff\xff\xff\xff\xff\xff\xff"],
    ids=["index-0", "index-past-table", "truncated-literal", "huge-integer"],
)
def test_hpack_garbage(block: bytes) -> None:
    """§4.3: a field block that does not decode is COMPRESSION_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_HEADERS, 0x5, 1, block), ErrorCodes.COMPRESSION_ERROR, last=0)


def test_header_list_over_max_header_list_size() -> None:
    """§6.5.2, §10.5.1: a header list past SETTINGS_MAX_HEADER_LIST_SIZE (an HPACK bomb) is
    ENHANCE_YOUR_CALM."""
    conn, enc = opened(new(list_size=300))
    wire = headers(enc, 1, [*REQ, (b"x-big", b"a" * 300)])
    fails(conn, wire, ErrorCodes.ENHANCE_YOUR_CALM, last=0)


def test_smaller_header_table_size_applies_only_once_acknowledged() -> None:
    """§6.5.3, RFC 7541 §4.2: our SETTINGS_HEADER_TABLE_SIZE binds the client only once it
    ACKed our SETTINGS; a request sent with the preface (before our SETTINGS reached the
    client) legitimately uses the initial 4096-byte table, without a size update."""
    conn = new(table_size=0)
    conn.initiate_connection()
    enc = hpack.Encoder()
    wire = PREFACE + SettingsFrame(0).serialize() + headers(enc, 1)
    events = conn.receive_data(wire)
    assert kinds(events) == [(SETTINGS_CHANGED, 0), (REQUEST, 1)]


# -- DATA (§6.1)


def test_data_padding_removed_flow_counts_all() -> None:
    """§6.1, §6.9: padding is removed; the whole payload (Pad Length, padding) is flow
    controlled."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(data(1, b"hello", pad_length=10))
    assert [(e.kind, e.sid, e.data, e.flow) for e in events] == [(DATA_RECEIVED, 1, b"hello", 16)]
    events = conn.receive_data(data(1, b"!", end_stream=True))
    assert [(e.kind, e.sid, e.data, e.flow) for e in events] == [
        (DATA_RECEIVED, 1, b"!", 1),
        (STREAM_ENDED, 1, b"", 0),
    ]


def test_data_on_stream_zero() -> None:
    """§6.1: DATA on stream 0 is PROTOCOL_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_DATA, 0, 0, b"abc"), ErrorCodes.PROTOCOL_ERROR, last=0)


def test_data_on_idle_stream() -> None:
    """§5.1: DATA on an idle stream is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, data(3, b"abc"), ErrorCodes.PROTOCOL_ERROR, last=1)


@pytest.mark.parametrize(
    "frame",
    [
        data(2, b"abc"),
        WindowUpdateFrame(2, window_increment=1).serialize(),
        RstStreamFrame(2, error_code=ErrorCodes.CANCEL).serialize(),
    ],
    ids=["data", "window-update", "rst-stream"],
)
def test_frame_on_idle_server_stream_id(frame: bytes) -> None:
    """§5.1: stream 2 (server-initiated, never used: push is off) stays idle whatever the
    client's streams are (§5.1.1 closes only the idle streams of the peer that opens a new
    one); DATA, WINDOW_UPDATE or RST_STREAM on an idle stream is PROTOCOL_ERROR (``h2`` too)."""
    conn, enc = opened()
    request(conn, enc, 3)
    fails(conn, frame, ErrorCodes.PROTOCOL_ERROR, last=3)


def test_data_padding_not_shorter_than_payload() -> None:
    """§6.1: padding as long as the payload or longer is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, raw(T_DATA, 0x8, 1, b"\x03ab"), ErrorCodes.PROTOCOL_ERROR, last=1)


def test_data_after_end_stream() -> None:
    """§5.1 (half-closed remote), §6.1: DATA after the client's END_STREAM is a stream error
    STREAM_CLOSED: RST_STREAM, the stream reset."""
    conn, enc = opened()
    request(conn, enc, 1, end_stream=True)
    events = conn.receive_data(data(1, b"late"))
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (STREAM_RESET, 1, ErrorCodes.STREAM_CLOSED)
    ]
    assert sent_resets(conn) == [(1, ErrorCodes.STREAM_CLOSED)]
    assert not conn.is_open(1)


def test_data_past_connection_window() -> None:
    """§6.9: DATA past the connection's receive window is FLOW_CONTROL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    request(conn, enc, 3)
    for _ in range(4):
        conn.receive_data(data(1, b"x" * 16383))  # 65532 of the 65535
    assert conn.receive_data(data(3, b"abc"))[0].flow == 3
    fails(conn, data(3, b"y"), ErrorCodes.FLOW_CONTROL_ERROR, last=3)


def test_data_past_stream_window() -> None:
    """§6.9: DATA past a stream's window (the connection's larger) is FLOW_CONTROL_ERROR, here
    a stream error."""
    conn, enc = opened()
    conn.increment_flow_control_window(100000)
    assert window_updates(conn.data_to_send()) == [(0, 100000)]
    request(conn, enc, 1)
    for _ in range(3):
        conn.receive_data(data(1, b"x" * 16384))
    conn.receive_data(data(1, b"x" * 16383))  # the stream's 65535
    events = conn.receive_data(data(1, b"y"))
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (STREAM_RESET, 1, ErrorCodes.FLOW_CONTROL_ERROR)
    ]
    assert sent_resets(conn) == [(1, ErrorCodes.FLOW_CONTROL_ERROR)]


def test_data_on_stream_we_reset_is_ignored_but_counted() -> None:
    """§5.1 (closed), §6.9: frames in flight on a stream we reset are ignored (no event, no
    RST_STREAM), but their DATA still counts for the connection's window, which re-opens."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.reset_stream(1, ErrorCodes.CANCEL)
    assert sent_resets(conn) == [(1, ErrorCodes.CANCEL)]
    assert conn.receive_data(data(1, b"x" * 16384)) == []
    assert conn.data_to_send() == b""
    assert conn.receive_data(data(1, b"x" * 16384, end_stream=True)) == []
    assert window_updates(conn.data_to_send()) == [(0, 32768)]
    assert conn.receive_data(WindowUpdateFrame(1, window_increment=5).serialize()) == []
    assert conn.data_to_send() == b""


# -- receive windows (§6.9): h2's window manager


def test_window_update_once_half_consumed() -> None:
    """§6.9: the windows re-open (WINDOW_UPDATE on 0 and on the stream) once half of each was
    consumed and acknowledged."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.receive_data(data(1, b"x" * 16384))
    conn.acknowledge_received_data(16384, 1)
    assert conn.data_to_send() == b""
    conn.receive_data(data(1, b"x" * 16382))
    conn.acknowledge_received_data(16382, 1)
    assert conn.data_to_send() == b""  # 32766, one short of 65535 // 2
    conn.receive_data(data(1, b"x"))
    conn.acknowledge_received_data(1, 1)
    assert window_updates(conn.data_to_send()) == [(0, 32767), (1, 32767)]


def test_window_update_when_window_empty() -> None:
    """§6.9: with the window used up, more than min(1024, max/4) bytes acknowledged re-open it
    at once."""
    conn, enc = opened()
    request(conn, enc, 1)
    for _ in range(3):
        conn.receive_data(data(1, b"x" * 16384))
    conn.receive_data(data(1, b"x" * 16383))  # both windows at 0
    conn.acknowledge_received_data(1024, 1)
    assert conn.data_to_send() == b""
    conn.acknowledge_received_data(1, 1)
    assert window_updates(conn.data_to_send()) == [(0, 1025), (1, 1025)]


def test_no_stream_window_update_after_client_end_stream() -> None:
    """§6.9: once the client half-closed the stream only the connection's window re-opens."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.receive_data(data(1, b"x" * 16384) + data(1, b"x" * 16384, end_stream=True))
    conn.acknowledge_received_data(32768, 1)
    assert window_updates(conn.data_to_send()) == [(0, 32768)]


@pytest.mark.parametrize(("seed", "extra"), [(1, 0), (2, 0), (3, 1 << 20), (4, 70000)])
def test_window_updates_match_h2(seed: int, extra: int) -> None:
    """§6.9: the same DATA and acknowledgements, fed to Connection and to an ``h2`` server
    connection, give the same WINDOW_UPDATE frames (the streams stay open)."""
    rng = random.Random(seed)
    ours, enc = opened()
    ref = h2_server()
    ref.initiate_connection()
    ref.receive_data(PREFACE + SettingsFrame(0).serialize())
    ref.data_to_send()
    if extra:
        ours.increment_flow_control_window(extra)
        ref.increment_flow_control_window(extra)
        assert window_updates(ours.data_to_send()) == window_updates(ref.data_to_send())
    opening = headers(enc, 1, end_stream=False) + headers(enc, 3, end_stream=False)
    assert len(ours.receive_data(opening)) == 2
    assert len(ref.receive_data(opening)) == 2
    conn_w = 65535 + extra
    stream_w = {1: 65535, 3: 65535}
    pending = {1: 0, 3: 0}
    updates = 0
    for _ in range(400):
        sid = rng.choice((1, 3))
        room = min(conn_w, stream_w[sid], 16384)
        if room > 0 and rng.random() < 0.5:
            n = rng.randint(1, room)
            if n > 1 and rng.random() < 0.3:
                pad = min(n // 3, 255)
                frame = data(sid, b"d" * (n - 1 - pad), pad_length=pad)
            else:
                frame = data(sid, b"d" * n)
            [ev] = ours.receive_data(frame)
            [ref_ev] = ref.receive_data(frame)
            assert isinstance(ref_ev, h2.events.DataReceived)
            assert ev.flow == ref_ev.flow_controlled_length == n
            assert ev.data == ref_ev.data
            conn_w -= n
            stream_w[sid] -= n
            pending[sid] += n
        elif pending[sid]:
            k = rng.randint(1, pending[sid])
            pending[sid] -= k
            ours.acknowledge_received_data(k, sid)
            ref.acknowledge_received_data(k, sid)
        got = window_updates(ours.data_to_send())
        assert got == window_updates(ref.data_to_send())
        for s, inc in got:
            updates += 1
            if s == 0:
                conn_w += inc
            else:
                stream_w[s] += inc
    assert updates > 10


# -- the send side (§6.2, §6.1, §6.9, §6.10)


def test_send_headers_and_data_flags() -> None:
    """§6.1, §6.2: HEADERS carry END_HEADERS (and END_STREAM when asked), DATA END_STREAM when
    asked; the block decodes to the fields."""
    conn, enc = opened()
    request(conn, enc, 1)
    request(conn, enc, 3)
    conn.send_headers(1, RESP)
    conn.send_data(1, b"abc")
    conn.send_data(1, b"", end_stream=True)
    conn.send_headers(3, [(b":status", b"204")], end_stream=True)
    out = parse(conn.data_to_send())
    assert [(type(f), f.stream_id, f.flags) for f in out] == [
        (HeadersFrame, 1, {"END_HEADERS"}),
        (DataFrame, 1, set()),
        (DataFrame, 1, {"END_STREAM"}),
        (HeadersFrame, 3, {"END_HEADERS", "END_STREAM"}),
    ]
    dec = hpack.Decoder()
    assert dec.decode(out[0].data, raw=True) == RESP
    assert (out[1].data, out[2].data) == (b"abc", b"")
    assert dec.decode(out[3].data, raw=True) == [(b":status", b"204")]


@pytest.mark.parametrize("max_frame", [16384, 20000])
def test_send_headers_split_into_continuation(max_frame: int) -> None:
    """§4.2, §6.10: a block larger than the client's SETTINGS_MAX_FRAME_SIZE goes out as
    HEADERS and CONTINUATION frames of at most that size, END_HEADERS on the last only."""
    conn, enc = opened(settings={SettingCodes.MAX_FRAME_SIZE: max_frame})
    request(conn, enc, 1)
    rng = random.Random(5)
    big = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(80000))
    fields = [(b":status", b"200"), (b"x-big", big)]
    conn.send_headers(1, fields, end_stream=True)
    out = parse(conn.data_to_send())
    assert isinstance(out[0], HeadersFrame)
    assert set(out[0].flags) == {"END_STREAM"}
    assert all(isinstance(f, ContinuationFrame) for f in out[1:])
    assert [f.flags for f in out[1:]] == [set()] * (len(out) - 2) + [{"END_HEADERS"}]
    assert len(out) >= 3
    assert all(len(f.data) == max_frame for f in out[:-1])
    assert 0 < len(out[-1].data) <= max_frame
    assert {f.stream_id for f in out} == {1}
    dec = hpack.Decoder()
    dec.max_header_list_size = 1 << 20
    assert dec.decode(b"".join(f.data for f in out), raw=True) == fields


def test_send_data_past_window() -> None:
    """§6.9.1: a sender must not exceed the window: send_data past it raises StreamClosed."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.send_headers(1, RESP)
    for _ in range(3):
        conn.send_data(1, b"x" * 16384)
    conn.send_data(1, b"x" * 16383)
    assert conn.local_flow_control_window(1) == 0
    with pytest.raises(StreamClosed):
        conn.send_data(1, b"x")
    out = parse(conn.data_to_send())
    assert sum(len(f.data) for f in out if isinstance(f, DataFrame)) == 65535


def test_initial_window_size_changes_adjust_open_streams() -> None:
    """§6.9.2: SETTINGS_INITIAL_WINDOW_SIZE changes every open stream's send window by the
    difference, which may leave it negative."""
    conn, enc = opened()
    request(conn, enc, 1)
    assert conn.local_flow_control_window(1) == 65535
    conn.receive_data(
        SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 100}).serialize()
    )
    assert conn.local_flow_control_window(1) == 100
    conn.send_headers(1, RESP)
    conn.send_data(1, b"x" * 60)
    assert conn.local_flow_control_window(1) == 40
    conn.receive_data(SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 10}).serialize())
    assert conn.local_flow_control_window(1) == -50
    with pytest.raises(StreamClosed):
        conn.send_data(1, b"x")
    conn.data_to_send()
    request(conn, enc, 3)
    assert conn.local_flow_control_window(3) == 10  # a new stream: the new initial size
    events = conn.receive_data(WindowUpdateFrame(1, window_increment=70).serialize())
    assert kinds(events) == [(WINDOW_OPENED, 1)]
    assert conn.local_flow_control_window(1) == 20


def test_window_update_raises_send_windows() -> None:
    """§6.9: WINDOW_UPDATE opens the connection's window (then the stream's is the limit)."""
    conn, enc = opened(settings={SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    request(conn, enc, 1)
    assert conn.local_flow_control_window(1) == 65535  # the connection's
    events = conn.receive_data(WindowUpdateFrame(0, window_increment=1000).serialize())
    assert kinds(events) == [(WINDOW_OPENED, 0)]
    assert conn.local_flow_control_window(1) == 66535
    conn.receive_data(WindowUpdateFrame(0, window_increment=1 << 21).serialize())
    assert conn.local_flow_control_window(1) == 1 << 20  # the stream's


def test_end_sent_and_closed_stream() -> None:
    """§5.1: END_STREAM sent half-closes the stream (local); with the client's END_STREAM too
    it is closed and takes no more frames."""
    conn, enc = opened()
    request(conn, enc, 1, end_stream=True)
    request(conn, enc, 3)
    assert not conn.end_sent(1)
    conn.send_headers(1, RESP)
    conn.send_data(1, b"body", end_stream=True)
    assert conn.end_sent(1)
    assert not conn.is_open(1)
    with pytest.raises(StreamClosed):
        conn.send_headers(1, RESP)
    with pytest.raises(StreamClosed):
        conn.send_data(1, b"x")
    with pytest.raises(StreamClosed):
        conn.reset_stream(1, ErrorCodes.CANCEL)
    # stream 3: the server ends first (half-closed local), then the client
    conn.send_headers(3, RESP, end_stream=True)
    assert conn.end_sent(3)
    assert conn.is_open(3)
    with pytest.raises(StreamClosed):
        conn.send_data(3, b"x")
    events = conn.receive_data(data(3, b"rest", end_stream=True))
    assert kinds(events) == [(DATA_RECEIVED, 3), (STREAM_ENDED, 3)]
    assert not conn.is_open(3)
    with pytest.raises(StreamClosed):
        conn.send_headers(3, RESP)


def test_initial_settings_equal_h2() -> None:
    """§3.4, §6.5: our connection preface is the SETTINGS an ``h2`` server with the same local
    settings sends, byte for byte."""
    ours = new(streams=100, list_size=65536, table_size=4096)
    ours.initiate_connection()
    ref = h2_server(
        {
            SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            SettingCodes.HEADER_TABLE_SIZE: 4096,
            SettingCodes.ENABLE_PUSH: 0,
        }
    )
    ref.initiate_connection()
    assert ours.data_to_send() == ref.data_to_send()


def test_response_bytes_equal_h2() -> None:
    """HPACK (RFC 7541) and framing: the same responses, on the same streams, are the bytes an
    ``h2`` server sends (the dynamic table in step across two responses)."""
    ours, enc = opened()
    ref = h2_server()
    ref.initiate_connection()
    ref.receive_data(PREFACE + SettingsFrame(0).serialize())
    ref.data_to_send()
    wire = headers(enc, 1) + headers(enc, 3)
    ours.receive_data(wire)
    ref.receive_data(wire)
    extra = [(b"content-length", b"5"), (b"cache-control", b"no-store"), (b"x-trace", b"a1b2c3")]
    for conn in (ours, ref):
        conn.send_headers(1, [*RESP, *extra])
        conn.send_data(1, b"hello", end_stream=True)
        conn.send_headers(3, [*RESP, (b"x-trace", b"d4e5f6")])
        conn.send_data(3, b"", end_stream=True)
    assert ours.data_to_send() == ref.data_to_send()


# -- SETTINGS (§6.5)


def test_settings_each_acknowledged() -> None:
    """§6.5.3: each SETTINGS is acknowledged with an empty SETTINGS ACK."""
    conn, _ = opened()
    wire = (
        SettingsFrame(0, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 10}).serialize()
        + SettingsFrame(0).serialize()
    )
    events = conn.receive_data(wire)
    assert kinds(events) == [(SETTINGS_CHANGED, 0), (SETTINGS_CHANGED, 0)]
    out = parse(conn.data_to_send())
    assert [(type(f), f.flags, f.settings) for f in out] == [(SettingsFrame, {"ACK"}, {})] * 2
    # an ACK of ours is taken silently
    assert conn.receive_data(SettingsFrame(0, flags=["ACK"]).serialize()) == []
    assert conn.data_to_send() == b""


def test_settings_ack_with_payload() -> None:
    """§6.5: a SETTINGS ACK with a payload is FRAME_SIZE_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_SETTINGS, 0x1, 0, b"\x00\x03\x00\x00\x00\x01"), ErrorCodes.FRAME_SIZE_ERROR)


def test_settings_length_not_multiple_of_six() -> None:
    """§6.5: a SETTINGS payload not a multiple of 6 bytes is FRAME_SIZE_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_SETTINGS, 0, 0, b"\x00\x03\x00\x00\x01"), ErrorCodes.FRAME_SIZE_ERROR)


def test_settings_on_a_stream() -> None:
    """§6.5: SETTINGS on a stream is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, raw(T_SETTINGS, 0, 1, b""), ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        (SettingCodes.ENABLE_PUSH, 2, ErrorCodes.PROTOCOL_ERROR),
        (SettingCodes.INITIAL_WINDOW_SIZE, 1 << 31, ErrorCodes.FLOW_CONTROL_ERROR),
        (SettingCodes.MAX_FRAME_SIZE, 16383, ErrorCodes.PROTOCOL_ERROR),
        (SettingCodes.MAX_FRAME_SIZE, 1 << 24, ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["enable-push-2", "initial-window-2^31", "max-frame-16383", "max-frame-2^24"],
)
def test_settings_value_out_of_range(setting: int, value: int, code: int) -> None:
    """§6.5.2: ENABLE_PUSH other than 0 or 1 (PROTOCOL_ERROR), INITIAL_WINDOW_SIZE over
    2^31-1 (FLOW_CONTROL_ERROR), MAX_FRAME_SIZE outside 2^14..2^24-1 (PROTOCOL_ERROR)."""
    conn, _ = opened()
    payload = struct.pack(">HI", setting, value)
    fails(conn, raw(T_SETTINGS, 0, 0, payload), code)


def test_settings_limits_accepted() -> None:
    """§6.5.2: the extreme legal values are taken."""
    conn, _ = opened()
    values: dict[int, int] = {
        SettingCodes.ENABLE_PUSH: 1,
        SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW,
        SettingCodes.MAX_FRAME_SIZE: (1 << 24) - 1,
    }
    conn.receive_data(SettingsFrame(0, settings=values).serialize())
    assert conn.max_outbound_frame_size == (1 << 24) - 1
    conn.receive_data(SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 16384}).serialize())
    assert conn.max_outbound_frame_size == 16384
    assert [f.flags for f in parse(conn.data_to_send())] == [{"ACK"}, {"ACK"}]


def test_unknown_setting_ignored() -> None:
    """§6.5.2: a setting of unknown identifier is ignored."""
    conn, enc = opened()
    events = conn.receive_data(raw(T_SETTINGS, 0, 0, struct.pack(">HI", 0x99, 12345)))
    assert kinds(events) == [(SETTINGS_CHANGED, 0)]
    assert [f.flags for f in parse(conn.data_to_send())] == [{"ACK"}]
    request(conn, enc, 1)


@pytest.mark.parametrize("size", [0, 256])
def test_header_table_size_change_signalled(size: int) -> None:
    """§6.5.2, RFC 7541 §4.2, §6.3: the client's new SETTINGS_HEADER_TABLE_SIZE is signalled by
    a dynamic table size update at the start of the next block we encode (only that one)."""
    conn, enc = opened()
    request(conn, enc, 1)
    request(conn, enc, 3)
    conn.send_headers(1, RESP)
    conn.receive_data(SettingsFrame(0, settings={SettingCodes.HEADER_TABLE_SIZE: size}).serialize())
    conn.send_headers(3, RESP)
    conn.send_headers(1, RESP)
    out = [f for f in parse(conn.data_to_send()) if isinstance(f, HeadersFrame)]
    first, update, after = (f.data for f in out)
    assert first[0] & 0xE0 != 0x20
    assert update[0] & 0xE0 == 0x20
    assert after[0] & 0xE0 != 0x20
    dec = hpack.Decoder()
    assert dec.decode(first, raw=True) == RESP
    assert dec.decode(update, raw=True) == RESP
    assert dec.header_table_size == size
    assert dec.decode(after, raw=True) == RESP


@pytest.mark.parametrize(
    ("sizes", "updates"),
    [
        ([100, 4096], [100, 4096]),  # smaller, then back: both signalled (hpack 4.0 lost them)
        ([200, 200], [200]),  # the same size twice: signalled once
        ([4096], []),  # unchanged: nothing
        ([65536], []),  # more than 4096: our table stays at 4096, nothing to signal
        ([300, 100, 8192], [100, 4096]),  # the smallest, then the final (capped)
    ],
)
def test_table_size_updates_follow_rfc_7541(sizes: list[int], updates: list[int]) -> None:
    """RFC 7541 §4.2: after the client's SETTINGS_HEADER_TABLE_SIZE changes, the next block
    starts with the smallest size set since the last block, if below the final size, then the
    final size; our encoder's table stays within 4096 (ENCODER_TABLE_MAX)."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.send_headers(1, RESP)
    first = conn.data_to_send()
    for size in sizes:
        conn.receive_data(
            SettingsFrame(0, settings={SettingCodes.HEADER_TABLE_SIZE: size}).serialize()
        )
    conn.data_to_send()  # (the SETTINGS ACKs)
    request(conn, enc, 3)
    conn.send_headers(3, RESP)
    wire = first + conn.data_to_send()
    blocks = [f.data for f in parse(wire) if isinstance(f, HeadersFrame)]
    dec = hpack.Decoder()
    dec.max_allowed_table_size = 1 << 20
    dec.decode(blocks[0], raw=True)
    seen = []
    block = blocks[1]
    i = 0
    while block[i] & 0xE0 == 0x20:  # dynamic table size updates (§6.3)
        n = block[i] & 0x1F
        i += 1
        if n == 0x1F:
            m = 0
            shift = 0
            while True:
                b = block[i]
                i += 1
                m |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            n += m
        seen.append(n)
    assert seen == updates
    assert dec.decode(blocks[1], raw=True) == RESP


def test_headers_padding_reaching_into_the_priority_fields() -> None:
    """§6.2: padding that leaves no room for the priority fields and the fragment is a
    PROTOCOL_ERROR; a payload too short for the Pad Length and the priority fields themselves
    is a FRAME_SIZE_ERROR."""
    conn, enc = opened()
    blk = enc.encode(REQ)
    payload = bytes([len(blk) + 1]) + struct.pack(">IB", 0, 15) + blk
    fails(conn, raw(T_HEADERS, 0x2D, 1, payload), ErrorCodes.PROTOCOL_ERROR, last=0)
    conn, _ = opened()
    fails(conn, raw(T_HEADERS, 0x2C, 1, b"\x00\x00\x00"), ErrorCodes.FRAME_SIZE_ERROR, last=0)


# -- PING (§6.7)


def test_ping_acknowledged() -> None:
    """§6.7: a PING is answered by a PING with ACK and the same 8 bytes."""
    conn, _ = opened()
    assert conn.receive_data(PingFrame(0, opaque_data=b"\x01\x02\x03\x04abcd").serialize()) == []
    [frame] = parse(conn.data_to_send())
    assert isinstance(frame, PingFrame)
    assert (set(frame.flags), frame.opaque_data, frame.stream_id) == (
        {"ACK"},
        b"\x01\x02\x03\x04abcd",
        0,
    )


def test_ping_wrong_length() -> None:
    """§6.7: a PING not 8 bytes long is FRAME_SIZE_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_PING, 0, 0, b"1234567"), ErrorCodes.FRAME_SIZE_ERROR)


def test_ping_on_a_stream() -> None:
    """§6.7: a PING on a stream is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, raw(T_PING, 0, 1, b"12345678"), ErrorCodes.PROTOCOL_ERROR)


def test_ping_ack_reported() -> None:
    """§6.7: our PING goes out without ACK; the client's ACK is reported, not answered."""
    conn, _ = opened()
    conn.ping(b"opaque!!")
    [frame] = parse(conn.data_to_send())
    assert isinstance(frame, PingFrame)
    assert (set(frame.flags), frame.opaque_data) == (set(), b"opaque!!")
    events = conn.receive_data(PingFrame(0, opaque_data=b"opaque!!", flags=["ACK"]).serialize())
    assert [(e.kind, e.data) for e in events] == [(PING_ACKED, b"opaque!!")]
    assert conn.data_to_send() == b""


# -- PRIORITY (§6.3, §5.3.1)


def test_priority_wrong_length_is_a_stream_error() -> None:
    """§6.3: a PRIORITY not 5 bytes long is a stream error FRAME_SIZE_ERROR; the connection
    lives on."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(raw(T_PRIORITY, 0, 1, b"\x00\x00\x00\x00"))
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (STREAM_RESET, 1, ErrorCodes.FRAME_SIZE_ERROR)
    ]
    assert sent_resets(conn) == [(1, ErrorCodes.FRAME_SIZE_ERROR)]
    request(conn, enc, 3)
    conn.receive_data(PingFrame(0, opaque_data=b"stillup!").serialize())
    assert [type(f) for f in parse(conn.data_to_send())] == [PingFrame]


def test_priority_depending_on_itself() -> None:
    """§5.3.1: a stream depending on itself is a stream error PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.receive_data(PriorityFrame(1, depends_on=1, stream_weight=15).serialize())
    assert sent_resets(conn) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert not conn.is_open(1)


def test_priority_does_not_open_an_idle_stream() -> None:
    """§5.1, §6.3: PRIORITY may name an idle stream and leaves it idle: a later HEADERS opens
    it, and lower stream ids remain usable."""
    conn, enc = opened()
    assert conn.receive_data(PriorityFrame(5, depends_on=0, stream_weight=10).serialize()) == []
    assert conn.data_to_send() == b""
    assert conn.highest_inbound_stream_id == 0
    request(conn, enc, 3)
    request(conn, enc, 5)


def test_headers_priority_on_itself_keeps_hpack_in_step() -> None:
    """§5.3.1, §4.3: HEADERS with a PRIORITY depending on itself is a stream error
    PROTOCOL_ERROR, and its block is still decoded: the next request, which refers to the
    dynamic table entries it added, decodes right."""
    conn, enc = opened()
    fields = [*REQ, (b"x-session", b"abcdef123456")]
    wire = headers(
        enc, 1, fields, flags=("END_HEADERS", "PRIORITY"), depends_on=1, stream_weight=16
    )
    assert conn.receive_data(wire) == []
    assert sent_resets(conn) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    events = conn.receive_data(headers(enc, 3, fields))
    assert [(e.kind, e.sid, e.headers) for e in events] == [(REQUEST, 3, fields)]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("sid", [2, 3], ids=["even", "lower"])
def test_headers_priority_on_itself_on_unexpected_stream_id(sid: int) -> None:
    """§5.1.1: HEADERS on an even stream id, or on one lower than a stream the client already
    opened, is a connection error PROTOCOL_ERROR, whatever its PRIORITY fields say."""
    conn, enc = opened()
    request(conn, enc, 5)
    wire = headers(enc, sid, flags=("END_HEADERS", "PRIORITY"), depends_on=sid, stream_weight=16)
    fails(conn, wire, ErrorCodes.PROTOCOL_ERROR, last=5)


def test_headers_with_valid_priority() -> None:
    """§6.2: the PRIORITY fields of HEADERS (with padding) are skipped."""
    conn, enc = opened()
    wire = headers(
        enc,
        1,
        flags=("END_HEADERS", "PRIORITY", "PADDED"),
        depends_on=0,
        stream_weight=200,
        pad_length=7,
    )
    events = conn.receive_data(wire)
    assert [(e.kind, e.sid, e.headers) for e in events] == [(REQUEST, 1, REQ)]


# -- RST_STREAM (§6.4)


def test_rst_stream_on_open_stream() -> None:
    """§6.4: RST_STREAM closes the stream; its code is reported."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize())
    assert [(e.kind, e.sid, e.code) for e in events] == [(STREAM_RESET, 1, ErrorCodes.CANCEL)]
    assert not conn.is_open(1)
    assert conn.data_to_send() == b""
    with pytest.raises(StreamClosed):
        conn.send_headers(1, RESP)


def test_rst_stream_on_idle_stream() -> None:
    """§6.4, §5.1: RST_STREAM on an idle stream is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, RstStreamFrame(3, error_code=0).serialize(), ErrorCodes.PROTOCOL_ERROR)


def test_rst_stream_wrong_length() -> None:
    """§6.4: an RST_STREAM not 4 bytes long is FRAME_SIZE_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, raw(T_RST, 0, 1, b"\x00\x00\x00\x00\x08"), ErrorCodes.FRAME_SIZE_ERROR)


def test_rst_stream_on_stream_zero() -> None:
    """§6.4: RST_STREAM on stream 0 is PROTOCOL_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_RST, 0, 0, b"\x00\x00\x00\x08"), ErrorCodes.PROTOCOL_ERROR)


# -- WINDOW_UPDATE (§6.9)


def test_window_update_zero_on_stream() -> None:
    """§6.9: an increment of 0 on a stream is a stream error PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(raw(T_WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"))
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (STREAM_RESET, 1, ErrorCodes.PROTOCOL_ERROR)
    ]
    assert sent_resets(conn) == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_window_update_zero_on_connection() -> None:
    """§6.9: an increment of 0 on the connection is PROTOCOL_ERROR (a connection error)."""
    conn, _ = opened()
    fails(conn, raw(T_WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), ErrorCodes.PROTOCOL_ERROR)


def test_window_update_overflow_on_stream() -> None:
    """§6.9.1: a stream window past 2^31-1 is a stream error FLOW_CONTROL_ERROR; exactly
    2^31-1 is allowed."""
    conn, enc = opened()
    request(conn, enc, 1)
    request(conn, enc, 3)
    conn.receive_data(WindowUpdateFrame(1, window_increment=MAX_WINDOW - 65535).serialize())
    assert conn.data_to_send() == b""
    conn.receive_data(WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535).serialize())
    assert conn.local_flow_control_window(1) == MAX_WINDOW
    events = conn.receive_data(
        WindowUpdateFrame(3, window_increment=MAX_WINDOW - 65534).serialize()
    )
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (STREAM_RESET, 3, ErrorCodes.FLOW_CONTROL_ERROR)
    ]
    assert sent_resets(conn) == [(3, ErrorCodes.FLOW_CONTROL_ERROR)]


def test_window_update_overflow_on_connection() -> None:
    """§6.9.1: the connection's window past 2^31-1 is FLOW_CONTROL_ERROR."""
    conn, _ = opened()
    wire = WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65534).serialize()
    fails(conn, wire, ErrorCodes.FLOW_CONTROL_ERROR)


def test_window_update_wrong_length() -> None:
    """§6.9: a WINDOW_UPDATE not 4 bytes long is FRAME_SIZE_ERROR."""
    conn, _ = opened()
    fails(conn, raw(T_WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), ErrorCodes.FRAME_SIZE_ERROR)


def test_window_update_on_closed_stream_ignored() -> None:
    """§5.1 (closed), §6.9: a WINDOW_UPDATE may still arrive on a closed stream: ignored."""
    conn, enc = opened()
    request(conn, enc, 1, end_stream=True)
    conn.send_headers(1, RESP, end_stream=True)
    conn.data_to_send()
    assert not conn.is_open(1)
    assert conn.receive_data(WindowUpdateFrame(1, window_increment=100).serialize()) == []
    assert conn.data_to_send() == b""


# -- other frame types (§8.4, §5.5)


def test_push_promise_from_client() -> None:
    """§8.4, §6.6: a client cannot push: PUSH_PROMISE is PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    wire = PushPromiseFrame(
        1, promised_stream_id=2, data=enc.encode(REQ), flags=["END_HEADERS"]
    ).serialize()
    fails(conn, wire, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("sid", [0, 1, 7])
def test_unknown_frame_type_ignored(sid: int) -> None:
    """§5.5: frames of an unknown type are ignored, on any stream (open or idle)."""
    conn, enc = opened()
    request(conn, enc, 1)
    assert conn.receive_data(raw(0x20, 0xFF, sid, b"extension")) == []
    assert conn.data_to_send() == b""
    assert conn.highest_inbound_stream_id == 1
    request(conn, enc, 3)


# -- GOAWAY (§6.8)


def test_goaway_from_client() -> None:
    """§6.8: the client's GOAWAY is reported (last stream id, code); open streams are still
    answered."""
    conn, enc = opened()
    request(conn, enc, 1, end_stream=True)
    wire = GoAwayFrame(0, last_stream_id=1, error_code=ErrorCodes.NO_ERROR).serialize()
    events = conn.receive_data(wire)
    assert [(e.kind, e.sid, e.code) for e in events] == [(GOAWAY_RECEIVED, 1, 0)]
    wire = GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.ENHANCE_YOUR_CALM).serialize()
    [ev] = conn.receive_data(wire)
    assert (ev.kind, ev.sid, ev.code) == (GOAWAY_RECEIVED, 0, ErrorCodes.ENHANCE_YOUR_CALM)
    conn.send_headers(1, RESP)
    conn.send_data(1, b"bye", end_stream=True)
    out = parse(conn.data_to_send())
    assert [(type(f), f.stream_id) for f in out] == [(HeadersFrame, 1), (DataFrame, 1)]


# -- concurrency and graceful shutdown (§5.1.2, §8.7)


def test_streams_past_max_concurrent_refused() -> None:
    """§5.1.2, §8.7: a stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused with
    REFUSED_STREAM (not processed: no event); its block is still decoded (HPACK in step);
    once a stream closes a new one is taken."""
    conn, enc = opened(new(streams=2))
    request(conn, enc, 1, end_stream=True)
    request(conn, enc, 3, end_stream=True)
    fields = [*REQ, (b"x-tenant", b"blue-team")]
    assert conn.receive_data(headers(enc, 5, fields)) == []
    assert sent_resets(conn) == [(5, ErrorCodes.REFUSED_STREAM)]
    assert conn.refused == 1
    assert conn.receive_data(data(5, b"in flight", end_stream=True)) == []
    assert conn.data_to_send() == b""
    conn.send_headers(1, RESP, end_stream=True)
    conn.data_to_send()
    events = conn.receive_data(headers(enc, 7, fields))
    assert [(e.kind, e.sid, e.headers) for e in events] == [(REQUEST, 7, fields)]
    assert conn.data_to_send() == b""


def test_stream_above_our_goaway_refused() -> None:
    """§6.8, §8.7: after our GOAWAY(last stream 1) a stream above it is refused."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.send_goaway(1)
    [frame] = parse(conn.data_to_send())
    assert isinstance(frame, GoAwayFrame)
    assert (frame.last_stream_id, frame.error_code) == (1, ErrorCodes.NO_ERROR)
    assert conn.receive_data(headers(enc, 3)) == []
    assert sent_resets(conn) == [(3, ErrorCodes.REFUSED_STREAM)]
    events = conn.receive_data(data(1, b"still served", end_stream=True))
    assert kinds(events) == [(DATA_RECEIVED, 1), (STREAM_ENDED, 1)]


# -- trailers (§8.1)


def test_trailers() -> None:
    """§8.1: a trailer section is HEADERS with END_STREAM after the head."""
    conn, enc = opened()
    request(conn, enc, 1)
    conn.receive_data(data(1, b"body"))
    trailers = [(b"x-checksum", b"abc")]
    events = conn.receive_data(headers(enc, 1, trailers, end_stream=True))
    assert [(e.kind, e.sid, e.headers) for e in events] == [
        (TRAILERS, 1, trailers),
        (STREAM_ENDED, 1, []),
    ]
    assert conn.data_to_send() == b""


def test_trailers_without_end_stream() -> None:
    """§8.1: HEADERS after the head without END_STREAM is malformed: a stream error
    PROTOCOL_ERROR."""
    conn, enc = opened()
    request(conn, enc, 1)
    events = conn.receive_data(headers(enc, 1, [(b"x-checksum", b"abc")], end_stream=False))
    assert [(e.kind, e.sid, e.code) for e in events] == [
        (TRAILERS_NOT_LAST, 1, ErrorCodes.PROTOCOL_ERROR)
    ]
    assert sent_resets(conn) == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert not conn.is_open(1)


# -- flood budgets (§10.5)


def test_flood_control_frames() -> None:
    """§10.5: control frames past the budget (the client's SETTINGS counts) are
    ENHANCE_YOUR_CALM."""
    conn, _ = opened(new(guard=FloodGuard(100, 3, 10.0, Clock())))
    ping = PingFrame(0, opaque_data=b"floodme!").serialize()
    conn.receive_data(ping)
    conn.receive_data(ping)
    assert [f.flags for f in parse(conn.data_to_send())] == [{"ACK"}, {"ACK"}]
    fails(conn, ping, ErrorCodes.ENHANCE_YOUR_CALM, last=0)


def test_flood_resets() -> None:
    """§10.5 (CVE-2023-44487): the client resetting open streams past the budget is
    ENHANCE_YOUR_CALM."""
    conn, enc = opened(new(guard=FloodGuard(2, 100, 10.0, Clock())))
    for sid in (1, 3, 5):
        request(conn, enc, sid)
    conn.receive_data(RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize())
    conn.receive_data(RstStreamFrame(3, error_code=ErrorCodes.CANCEL).serialize())
    wire = RstStreamFrame(5, error_code=ErrorCodes.CANCEL).serialize()
    fails(conn, wire, ErrorCodes.ENHANCE_YOUR_CALM, last=5)


def test_flood_earned_window_updates_not_counted() -> None:
    """§10.5: the WINDOW_UPDATE frames our DATA earns (the stream's and the connection's per
    DATA frame) are not control-frame flood; past them they are."""
    conn, enc = opened(new(guard=FloodGuard(100, 2, 10.0, Clock())))  # SETTINGS: 1 of 2
    request(conn, enc, 1)
    conn.send_headers(1, RESP)
    for _ in range(3):
        conn.send_data(1, b"x" * 100)
    conn.data_to_send()
    for _ in range(3):
        conn.receive_data(
            WindowUpdateFrame(1, window_increment=100).serialize()
            + WindowUpdateFrame(0, window_increment=100).serialize()
        )
    conn.receive_data(WindowUpdateFrame(0, window_increment=1).serialize())  # 2 of 2
    fails(conn, WindowUpdateFrame(0, window_increment=1).serialize(), ErrorCodes.ENHANCE_YOUR_CALM)


def test_flood_budget_window_resets() -> None:
    """§10.5: the budgets are per window of time: once it passed, the counts start over."""
    clock = Clock()
    conn, _ = opened(new(guard=FloodGuard(100, 2, 10.0, clock)))  # SETTINGS: 1 of 2
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    conn.receive_data(ping)  # 2 of 2
    clock.now += 10.0
    conn.receive_data(ping)
    conn.receive_data(ping)
    assert len(parse(conn.data_to_send())) == 3
    fails(conn, ping, ErrorCodes.ENHANCE_YOUR_CALM)


# -- closing (§6.8, §5.4.1)


def test_close_connection_once() -> None:
    """§6.8: close_connection queues GOAWAY(last stream id, code), once."""
    conn, enc = opened()
    request(conn, enc, 1)
    request(conn, enc, 3)
    conn.close_connection(ErrorCodes.INTERNAL_ERROR)
    conn.close_connection(ErrorCodes.NO_ERROR)
    out = parse(conn.data_to_send())
    assert [(type(f), f.last_stream_id, f.error_code) for f in out] == [
        (GoAwayFrame, 3, ErrorCodes.INTERNAL_ERROR)
    ]


def test_close_connection_after_connection_error() -> None:
    """§5.4.1: after a connection error's GOAWAY nothing more is queued (a second GOAWAY would
    hide its code), and further input is dropped."""
    conn, enc = opened()
    request(conn, enc, 1)
    fails(conn, raw(T_PING, 0, 1, b"12345678"), ErrorCodes.PROTOCOL_ERROR, last=1)
    conn.close_connection(ErrorCodes.NO_ERROR)
    assert conn.data_to_send() == b""
    assert conn.receive_data(PingFrame(0, opaque_data=b"12345678").serialize()) == []
    assert conn.data_to_send() == b""
