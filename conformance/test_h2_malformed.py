"""Malformed HTTP/2 requests over a real socket on every backend (RFC 9113 §8.1.1, §8.2-8.3):
one connection sends a run of malformed requests, each on its own stream, then a good one.
Every malformed stream gets RST_STREAM(PROTOCOL_ERROR) alone; the connection is not closed
(no GOAWAY) and the good request is answered."""

from __future__ import annotations

import socket

from hpack import Decoder, Encoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from conformance.origins import HOST
from conformance.test_h2_floods import Bystander, calmed

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_malformed_requests_are_stream_errors(echo, proxy):
    p = proxy(to=[echo.port])
    by = Bystander(p.port)
    base = [(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":authority", HOST)]
    heads = [
        [*base, ("X-Upper", "1")],
        [*base, ("connection", "keep-alive")],
        [*base, ("transfer-encoding", "chunked")],
        [*base, ("te", "gzip")],
        [*base, ("x-a", "a\r\nx-b: smuggled")],
        [*base, (":foo", "1")],
        [*base[:3], ("x-a", "1"), base[3]],
        [*base, (":path", "/b")],
        [(n, v) for n, v in base if n != ":path"],
        [(n, "a b" if n == ":path" else v) for n, v in base],
        [*base, ("content-length", "1"), ("content-length", "2")],
        [*base, ("content-length", "4")],  # with END_STREAM on the HEADERS
        [*base, ("host", "other.example")],
    ]
    enc, dec = Encoder(), Decoder()
    out = [SettingsFrame(0)]
    sid = 1
    bad: list[int] = []
    for fields in heads:
        block = enc.encode([(n.encode(), v.encode()) for n, v in fields])
        out.append(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]))
        bad.append(sid)
        sid += 2
    # a body longer than its content-length; trailers that do not end the stream
    post = [("content-length", "2")]
    block = enc.encode([(n.encode(), v.encode()) for n, v in [*base, *post]])
    out += [HeadersFrame(sid, block, flags=["END_HEADERS"]), DataFrame(sid, b"abc")]
    bad.append(sid)
    sid += 2
    block = enc.encode([(n.encode(), v.encode()) for n, v in [(":method", "POST"), *base[1:]]])
    trailer = enc.encode([(b"x-sum", b"1")])
    out += [
        HeadersFrame(sid, block, flags=["END_HEADERS"]),
        HeadersFrame(sid, trailer, flags=["END_HEADERS"]),
    ]
    bad.append(sid)
    sid += 2
    good = sid
    block = enc.encode([(n.encode(), v.encode()) for n, v in base])
    out.append(HeadersFrame(good, block, flags=["END_HEADERS", "END_STREAM"]))
    with socket.create_connection((HOST, p.port), timeout=10) as s:
        s.sendall(PREFACE + b"".join(f.serialize() for f in out))
        frames: list[Frame] = []
        buf = b""
        status = None
        ended = False
        while not ended:
            data = s.recv(65536)
            assert data, frames
            buf += data
            while len(buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                f.parse_body(memoryview(buf[9 : 9 + length]))
                buf = buf[9 + length :]
                frames.append(f)
                if isinstance(f, HeadersFrame):
                    fields = dict(dec.decode(f.data))
                    if f.stream_id == good:
                        status = fields[":status"]
                if f.stream_id == good and "END_STREAM" in f.flags:
                    ended = True
    resets = {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)}
    assert resets == dict.fromkeys(bad, 1)  # PROTOCOL_ERROR on each malformed stream
    assert not [f for f in frames if isinstance(f, GoAwayFrame)]
    assert not [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id != good]
    assert status == "200"
    by.finish()


def test_malformed_requests_past_the_reset_budget(echo, proxy):
    """Stream errors provoked at will (MadeYouReset, CVE-2025-8671) spend the reset budget:
    GOAWAY(ENHANCE_YOUR_CALM) and the close, other clients unharmed."""
    p = proxy(to=[echo.port], extra=["--h2-max-resets", "20"])
    by = Bystander(p.port)
    enc = Encoder()
    bad = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a"), (b"X-Bad", b"1")]
    out = [SettingsFrame(0)]
    out += [
        HeadersFrame(1 + 2 * i, enc.encode(bad), flags=["END_HEADERS", "END_STREAM"])
        for i in range(21)
    ]
    s = socket.create_connection((HOST, p.port), timeout=10)
    s.sendall(PREFACE + b"".join(f.serialize() for f in out))
    calmed(s)
    by.finish()
