"""HTTP/2 floods over a real socket on every backend (RFC 9113 §10.5): rapid reset
(CVE-2023-44487), a client ignoring SETTINGS_MAX_CONCURRENT_STREAMS, the CONTINUATION flood
(CVE-2024-27316), PING / SETTINGS / PRIORITY / WINDOW_UPDATE / empty DATA / RST_STREAM floods.
Each attacker gets GOAWAY(ENHANCE_YOUR_CALM) and the end of its connection, while another
client's requests, on HTTP/2 and HTTP/1.1, keep succeeding.

Each attack sends exactly the frames that cross its budget, so the proxy has read everything
when it closes (a close with unread input would be a TCP reset that can destroy the GOAWAY)."""

from __future__ import annotations

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from conformance.origins import HOST

CALM = 11  # ENHANCE_YOUR_CALM


class Bystander:
    """Another client, requesting all along: HTTP/2 (one connection) and HTTP/1.1 in turn."""

    def __init__(self, port: int) -> None:
        self.base = f"http://{HOST}:{port}"
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        with (
            httpx.Client(http1=False, http2=True, timeout=10) as c2,
            httpx.Client(timeout=10) as c1,
        ):
            i = 0
            while not self._stop.is_set() or self.done < 20:
                c = c2 if i % 2 else c1
                try:
                    r = c.get(f"{self.base}/b{i}")
                    if r.status_code != 200:
                        self.failures.append(f"{r.http_version} {r.status_code}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                self.done += 1
                i += 1

    def finish(self) -> None:
        self._stop.set()
        self._t.join(30)
        assert not self._t.is_alive()
        assert self.failures == [] and self.done >= 20


def attacker(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection((HOST, port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def frames_until_eof(s: socket.socket) -> list[Frame]:
    """Every frame the proxy sends until it closes the connection."""
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    out: list[Frame] = []
    while len(buf) >= 9:
        f, length = Frame.parse_frame_header(memoryview(buf[:9]))
        f.parse_body(memoryview(buf[9 : 9 + length]))
        out.append(f)
        buf = buf[9 + length :]
    return out


def calmed(s: socket.socket) -> None:
    with s:
        frames = frames_until_eof(s)
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [CALM], frames[-3:]


def head(c: h2.connection.H2Connection, port: int, path: str = "/delay/1") -> list:
    return [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", f"{HOST}:{port}"),
        (":path", path),
    ]


def test_rapid_reset(echo, proxy):
    p = proxy(to=[echo.port])  # the default budget: 100 resets in 10 s
    by = Bystander(p.port)
    s, c = attacker(p.port)
    for i in range(101):
        sid = 1 + 2 * i
        c.send_headers(sid, head(c, p.port), end_stream=True)
        c.reset_stream(sid)
    s.sendall(c.data_to_send())
    calmed(s)
    by.finish()


def test_streams_past_max_concurrent_streams_again_and_again(echo, proxy):
    p = proxy(to=[echo.port], extra=["--h2-max-concurrent-streams", "2", "--h2-max-resets", "20"])
    by = Bystander(p.port)
    s, c = attacker(p.port)
    # the client library knows no limit yet (it has not read our SETTINGS): 2 open, 21 refused
    for i in range(23):
        c.send_headers(1 + 2 * i, head(c, p.port), end_stream=True)
    s.sendall(c.data_to_send())
    calmed(s)
    by.finish()


def test_continuation_flood(echo, proxy):
    p = proxy(to=[echo.port])  # the default: a header block of at most 64 KiB
    by = Bystander(p.port)
    s, c = attacker(p.port)
    block = c.encoder.encode(head(c, p.port))
    frames = [HeadersFrame(1, block)]  # no END_HEADERS: CONTINUATION frames follow
    frames += [ContinuationFrame(1, b"\x00" * 16000) for _ in range(5)]  # 80,000 > 65,536
    s.sendall(b"".join(f.serialize() for f in frames))
    calmed(s)
    by.finish()


def test_continuation_flood_of_empty_frames(echo, proxy):
    """Empty CONTINUATION frames never grow the block: past 64 in one block, ENHANCE_YOUR_CALM
    all the same (the kin of CVE-2024-27316 that costs CPU, not memory)."""
    p = proxy(to=[echo.port])
    by = Bystander(p.port)
    s, c = attacker(p.port)
    block = c.encoder.encode(head(c, p.port))
    frames = [HeadersFrame(1, block[:3])]  # no END_HEADERS
    frames += [ContinuationFrame(1, b"") for _ in range(1000)]
    s.sendall(b"".join(f.serialize() for f in frames))
    calmed(s)
    by.finish()


def _window_update() -> Frame:
    f = WindowUpdateFrame(0)
    f.window_increment = 1
    return f


def _priority() -> Frame:
    f = PriorityFrame(3)
    f.depends_on = 0
    f.stream_weight = 15
    return f


def _rst_closed() -> Frame:
    f = RstStreamFrame(1)
    f.error_code = 8
    return f


@pytest.mark.parametrize(
    "make",
    [
        lambda: PingFrame(0, b"12345678"),
        lambda: SettingsFrame(0),
        _priority,
        _window_update,
        lambda: DataFrame(1, b""),
        _rst_closed,
    ],
    ids=["ping", "settings", "priority", "window_update", "empty_data", "rst_closed_stream"],
)
def test_control_frame_flood(echo, proxy, make):
    p = proxy(to=[echo.port], extra=["--h2-max-control-frames", "200"])
    by = Bystander(p.port)
    s, c = attacker(p.port)
    # stream 1: an upload left open (empty DATA on it), or a finished request (RST_STREAM on
    # it); none for the others (our DATA would earn WINDOW_UPDATE frames)
    kind = make()
    if isinstance(kind, (DataFrame, RstStreamFrame)):
        end = isinstance(kind, RstStreamFrame)
        c.send_headers(1, head(c, p.port, "/x"), end_stream=end)
        s.sendall(c.data_to_send())
        while end:  # until the response ended: stream 1 is closed
            for ev in c.receive_data(s.recv(65536)):
                end = end and type(ev).__name__ != "StreamEnded"
    # the client's SETTINGS frame is the first of the 200
    s.sendall(b"".join(make().serialize() for _ in range(200)))
    calmed(s)
    by.finish()


def test_hpack_bomb(echo, proxy):
    p = proxy(to=[echo.port])
    by = Bystander(p.port)
    s, c = attacker(p.port)
    # one 4,000-byte table entry referenced 20 times: 80 KB decoded from 4 KB sent
    c.send_headers(1, [*head(c, p.port), *[("x-bomb", "a" * 4000)] * 20], end_stream=True)
    s.sendall(c.data_to_send())
    calmed(s)
    by.finish()


def test_no_headers_after_the_preface(echo, proxy):
    p = proxy(to=[echo.port], extra=["--header-timeout", "1", "--keepalive-timeout", "30"])
    by = Bystander(p.port)
    s, _c = attacker(p.port)
    t0 = time.monotonic()
    with s:
        frames = frames_until_eof(s)
    assert time.monotonic() - t0 < 10
    assert [f.error_code for f in frames if isinstance(f, GoAwayFrame)] == [0]
    by.finish()


def test_zero_window_stall_loses_the_stream_then_the_connection(echo, proxy):
    p = proxy(to=[echo.port], extra=["--send-timeout", "1", "--keepalive-timeout", "2"])
    by = Bystander(p.port)
    s, c = attacker(p.port)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.send_headers(1, head(c, p.port, "/bytes/5000000"), end_stream=True)
    s.sendall(c.data_to_send())
    t0 = time.monotonic()
    events: list = []
    while not any(isinstance(e, h2.events.StreamReset) for e in events):
        data = s.recv(65536)
        assert data, events
        events += c.receive_data(data)
        s.sendall(c.data_to_send())  # (SETTINGS ACK; never a WINDOW_UPDATE for stream 1)
    assert time.monotonic() - t0 < 10
    reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
    assert reset.stream_id == 1 and reset.error_code == 2  # INTERNAL_ERROR
    assert not any(isinstance(e, h2.events.DataReceived) for e in events)
    with s:  # then the connection, idle
        frames = frames_until_eof(s)
    assert [f.error_code for f in frames if isinstance(f, GoAwayFrame)] == [0]
    by.finish()
