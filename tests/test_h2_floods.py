"""HTTP/2 floods (RFC 9113 §10.5), bytes in and the exact frames out: rapid reset
(CVE-2023-44487), CONTINUATION flood (CVE-2024-27316), control-frame floods, streams opened
past SETTINGS_MAX_CONCURRENT_STREAMS again and again. Each ends in GOAWAY(ENHANCE_YOUR_CALM)
and a close; below its budget the connection lives on."""

from __future__ import annotations

import struct

import h2.events
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

import proxycore
from proxycore.actions import Action, Close, PauseReading
from proxycore.testing import Harness
from tests.helpers import Simple, connect_id, sent
from tests.test_h2_server import OK, Client

CALM = 0x0B  # ENHANCE_YOUR_CALM (RFC 9113 §7)


def goaway(last: int, code: int = CALM) -> bytes:
    """The exact GOAWAY frame (RFC 9113 §6.8): 8 bytes of payload, no debug data."""
    return struct.pack(">I", 8)[1:] + b"\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last, code)


def closed(acts: list[Action], conn: int) -> bool:
    return any(isinstance(a, Close) and a.conn == conn for a in acts)


def raw(cl: Client, *frames: Frame) -> list[Action]:
    """Frames written by hand (what a well-behaved h2 client refuses to send)."""
    cl.c.data_to_send()  # (nothing of the client object's own is pending)
    return cl.h.data(cl.conn, b"".join(f.serialize() for f in frames))


def request_block(cl: Client, sid: int) -> bytes:
    """An encoded request head for ``sid`` (the client's HPACK state stays in step)."""
    return cl.c.encoder.encode(
        [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "x")]
    )


def opened(cl: Client) -> Client:
    cl.flush()  # preface and SETTINGS both ways
    return cl


def test_rapid_reset_past_the_budget_is_goaway_enhance_your_calm() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_resets=5))
    cl = opened(Client(h))
    for i in range(5):
        sid = 1 + 2 * i
        acts = cl.request(sid)
        up = connect_id(acts)
        cl.c.reset_stream(sid)
        acts = cl.flush()
        assert closed(acts, up)  # the reset stops that stream's upstream work at once
        assert not closed(acts, cl.conn)
    acts = cl.request(11)
    up = connect_id(acts)
    cl.c.reset_stream(11)
    data = cl.c.data_to_send()
    acts = h.data(cl.conn, data)
    assert sent(acts, cl.conn) == goaway(11)
    assert closed(acts, cl.conn) and closed(acts, up)


def test_resets_spread_over_windows_are_fine() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_resets=2, h2_flood_window=10.0))
    cl = opened(Client(h))
    for i in range(6):
        sid = 1 + 2 * i
        cl.request(sid)
        cl.c.reset_stream(sid)
        acts = cl.flush()
        assert not closed(acts, cl.conn)
        if i % 2:
            h.now += 10.0
    up = connect_id(cl.request(13))
    h.connected(up)
    cl.take(h.data(up, OK))
    assert cl.body(13) == b"hello"


def test_a_client_ignoring_max_concurrent_streams_is_cut_off() -> None:
    conf = proxycore.ServerConf(h2_max_concurrent_streams=1, h2_max_resets=3)
    h = Harness(Simple(), conf=conf)
    cl = opened(Client(h, unlimited=True))
    cl.request(1)
    for sid in (3, 5, 7):
        cl.request(sid)
        assert cl.reset(sid) == 7  # REFUSED_STREAM
    hdrs = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    cl.c.send_headers(9, hdrs, end_stream=True)
    acts = h.data(cl.conn, cl.c.data_to_send())
    # the stream is refused (RST_STREAM REFUSED_STREAM), then the connection goes
    rst = b"\x00\x00\x04\x03\x00\x00\x00\x00\x09\x00\x00\x00\x07"
    assert sent(acts, cl.conn) == rst + goaway(9)
    assert closed(acts, cl.conn)


def test_continuation_flood_is_cut_when_the_block_passes_the_limit() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_header_block=1000))
    cl = opened(Client(h))
    block = request_block(cl, 1)
    first = HeadersFrame(1, block)  # no END_HEADERS
    acts = raw(cl, first)
    assert not sent(acts, cl.conn) and not closed(acts, cl.conn)
    piece = b"\x00" * 600  # (never decoded: the block is refused before its end)
    acts = raw(cl, ContinuationFrame(1, piece))
    assert not sent(acts, cl.conn) and not closed(acts, cl.conn)
    acts = raw(cl, ContinuationFrame(1, piece))
    assert sent(acts, cl.conn) == goaway(0)
    assert closed(acts, cl.conn)


def test_a_block_within_the_limit_across_continuations_is_served() -> None:
    h = Harness(Simple())
    cl = opened(Client(h))
    # 20,000 bytes: more than one 16 KiB frame, so the client sends HEADERS + CONTINUATION
    up = connect_id(cl.request(1, extra=[("x-big", "a" * 20000)]))
    head = sent(h.connected(up), up)
    assert b"x-big: " + b"a" * 20000 + b"\r\n" in head
    cl.take(h.data(up, OK))
    assert cl.body(1) == b"hello"


def _flood(frame: Frame, budget: int) -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_control_frames=budget))
    cl = opened(Client(h))  # its SETTINGS frame is the first of the budget
    for _ in range(budget - 1):
        acts = raw(cl, frame)
        assert not closed(acts, cl.conn)
    acts = raw(cl, frame)
    out = sent(acts, cl.conn)
    assert out.endswith(goaway(0)), out
    assert closed(acts, cl.conn)


def test_ping_flood() -> None:
    _flood(PingFrame(0, b"12345678"), 10)


def test_settings_flood() -> None:
    _flood(SettingsFrame(0), 10)


def test_priority_flood() -> None:
    f = PriorityFrame(3)
    f.depends_on = 0
    f.stream_weight = 15
    _flood(f, 10)


def test_window_update_flood() -> None:
    f = WindowUpdateFrame(0)
    f.window_increment = 1
    _flood(f, 10)


def test_rst_stream_on_closed_streams_flood() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_control_frames=3))
    cl = opened(Client(h))
    up = connect_id(cl.request(1))
    h.connected(up)
    cl.take(h.data(up, OK))
    assert cl.ended(1)
    rst = RstStreamFrame(1)
    rst.error_code = 8
    for _ in range(2):  # (and the client's SETTINGS)
        assert not closed(raw(cl, rst), cl.conn)
    acts = raw(cl, rst)
    assert sent(acts, cl.conn) == goaway(1) and closed(acts, cl.conn)


def test_empty_data_flood() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_control_frames=4))
    cl = opened(Client(h))
    up = connect_id(cl.request(1, "POST", end=False))
    h.connected(up)
    for _ in range(3):  # (and the client's SETTINGS)
        assert not closed(raw(cl, DataFrame(1, b"")), cl.conn)
    acts = raw(cl, DataFrame(1, b""))
    assert sent(acts, cl.conn) == goaway(1)
    assert closed(acts, cl.conn) and closed(acts, up)


def test_window_updates_earned_by_data_do_not_count() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_control_frames=2))
    cl = opened(Client(h))
    up = connect_id(cl.request(1))
    h.connected(up)
    body = b"x" * 16384 * 8
    cl.take(h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    got = b""
    while not cl.ended(1):
        # each DATA frame acknowledged: a WINDOW_UPDATE for the stream and the connection
        events = cl.of(1, h2.events.DataReceived)
        cl.events = [e for e in cl.events if e not in events]
        for e in events:
            got += e.data
            cl.c.acknowledge_received_data(e.flow_controlled_length, 1)
        acts = cl.flush()
        assert not closed(acts, cl.conn)
    got += cl.body(1)
    assert got == body


def test_hpack_bomb_past_the_header_list_size_is_goaway() -> None:
    h = Harness(Simple())  # max_header_bytes 32 KiB: SETTINGS_MAX_HEADER_LIST_SIZE 64 KiB
    cl = opened(Client(h))
    # one 4,000-byte entry in the dynamic table, then 1-byte references to it: 80 KB decoded
    bomb = [("x-bomb", "a" * 4000)] * 20
    cl.c.send_headers(1, [*REQUEST, *bomb], end_stream=True)
    data = cl.c.data_to_send()
    assert len(data) < 4200
    acts = h.data(cl.conn, data)
    assert sent(acts, cl.conn) == goaway(0)
    assert closed(acts, cl.conn) and not h.connects(acts)


def test_a_header_list_between_the_limits_is_431_and_hpack_stays_in_step() -> None:
    h = Harness(Simple())
    cl = opened(Client(h))
    cl.request(1, extra=[("x-bomb", "a" * 4000)] * 10)  # 40 KB decoded: over 32 KiB
    assert cl.headers(1)[b":status"] == b"431"
    up = connect_id(cl.request(3, extra=[("x-bomb", "a" * 4000)]))  # the table is in step
    assert b"x-bomb: " + b"a" * 4000 + b"\r\n" in sent(h.connected(up), up)
    cl.take(h.data(up, OK))
    assert cl.body(3) == b"hello"


def test_our_settings_choose_the_hpack_table_and_the_header_list_size() -> None:
    conf = proxycore.ServerConf(h2_header_table_size=1024)
    h = Harness(Simple(), conf=conf)
    cl = Client(h)
    cl.flush()
    got = next(e for e in cl.events if isinstance(e, h2.events.RemoteSettingsChanged))
    values = {int(k): v.new_value for k, v in got.changed_settings.items()}
    assert values[0x1] == 1024  # SETTINGS_HEADER_TABLE_SIZE
    assert values[0x6] == 65536  # SETTINGS_MAX_HEADER_LIST_SIZE: twice max_header_bytes
    assert values[0x3] == 100 and values[0x2] == 0  # MAX_CONCURRENT_STREAMS, ENABLE_PUSH
    assert cl.c.encoder.header_table_size == 1024  # the client's encoder obeys it


REQUEST = [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "x")]


def test_no_headers_after_the_preface_within_header_timeout() -> None:
    conf = proxycore.ServerConf(header_timeout=5.0, keepalive_timeout=75.0)
    h = Harness(Simple(), conf=conf)
    cl = opened(Client(h))
    acts = h.advance(4.9, cl.conn)
    assert not closed(acts, cl.conn)
    acts = h.advance(0.1, cl.conn)
    assert sent(acts, cl.conn) == goaway(0, 0) and closed(acts, cl.conn)


def test_keepalive_timeout_between_streams() -> None:
    conf = proxycore.ServerConf(header_timeout=5.0, keepalive_timeout=20.0)
    h = Harness(Simple(), conf=conf)
    cl = opened(Client(h))
    up = connect_id(cl.request(1))
    h.connected(up)
    cl.take(h.data(up, OK))
    assert cl.body(1) == b"hello"
    cl.flush()
    assert not closed(h.advance(19.9, cl.conn), cl.conn)
    acts = h.advance(0.1, cl.conn)
    assert sent(acts, cl.conn) == goaway(1, 0) and closed(acts, cl.conn)


def test_zero_window_stall_loses_the_stream_then_the_connection() -> None:
    conf = proxycore.ServerConf(send_timeout=10.0, keepalive_timeout=20.0)
    h = Harness(Simple(), conf=conf)
    cl = Client(h, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    cl.flush()
    up = connect_id(cl.request(1))
    h.connected(up)
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 30000)
    cl.take(acts)
    assert cl.headers(1)[b":status"] == b"200" and not cl.body(1)  # no window: no DATA
    assert any(isinstance(a, PauseReading) and a.conn == up for a in acts)  # bounded
    acts = h.advance(9.9, cl.conn)
    assert not sent(acts, cl.conn)
    acts = h.advance(0.1, cl.conn)
    rst = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x02"  # RST_STREAM INTERNAL_ERROR
    assert sent(acts, cl.conn) == rst
    assert closed(acts, up) and not closed(acts, cl.conn)
    acts = h.advance(20.0, cl.conn)
    assert sent(acts, cl.conn) == goaway(1, 0) and closed(acts, cl.conn)
