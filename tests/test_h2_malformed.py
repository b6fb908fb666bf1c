"""Malformed HTTP/2 requests (RFC 9113 §8.1.1, §8.2-8.3), bytes in and the exact frames out:
each is a stream error, RST_STREAM(PROTOCOL_ERROR) on that stream alone, nothing goes upstream,
and the connection goes on serving its other streams. Requests that are well-formed but refused
by policy get a status instead."""

from __future__ import annotations

import struct

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame

import proxycore
from proxycore.actions import Action
from proxycore.h2.fields import Malformed, check_request, check_trailers
from proxycore.testing import Harness
from tests.helpers import Simple, closed, connect_id, sent
from tests.test_h2_floods import goaway
from tests.test_h2_server import OK, Client

PROTOCOL_ERROR = 1
BASE = [(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":authority", "example.com")]


def rst(sid: int, code: int = PROTOCOL_ERROR) -> bytes:
    """The exact RST_STREAM frame (RFC 9113 §6.4)."""
    return b"\x00\x00\x04\x03\x00" + struct.pack(">II", sid, code)


class Raw:
    """A client writing frames by hand, its own HPACK encoder (what a well-behaved h2 client
    refuses to send)."""

    def __init__(self, h: Harness) -> None:
        self.cl = Client(h)
        self.cl.flush()  # preface and SETTINGS both ways
        self.h = h
        self.enc = Encoder()
        self.dec = Decoder()

    def read(self, acts: list[Action]) -> list[Frame]:
        """The frames the proxy wrote (HEADERS decoded into ``.fields``)."""
        data = sent(acts, self.cl.conn)
        out: list[Frame] = []
        while data:
            f, length = Frame.parse_frame_header(memoryview(data[:9]))
            f.parse_body(memoryview(data[9 : 9 + length]))
            if isinstance(f, HeadersFrame):
                f.fields = dict(self.dec.decode(f.data, raw=True))  # type: ignore[attr-defined]
            out.append(f)
            data = data[9 + length :]
        return out

    def status(self, acts: list[Action], sid: int) -> bytes:
        hs = [f for f in self.read(acts) if isinstance(f, HeadersFrame) and f.stream_id == sid]
        assert hs, acts
        return hs[0].fields[b":status"]  # type: ignore[attr-defined,no-any-return]

    def frames(self, *frames: Frame) -> list[Action]:
        return self.h.data(self.cl.conn, b"".join(f.serialize() for f in frames))

    def headers(self, sid: int, fields: list[tuple[str, str]], end: bool = True) -> list[Action]:
        block = self.enc.encode([(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields])
        flags = ["END_HEADERS"] + (["END_STREAM"] if end else [])
        return self.frames(HeadersFrame(sid, block, flags=flags))

    def still_serves(self, sid: int) -> None:
        """Another request on the same connection is proxied and answered."""
        acts = self.headers(sid, BASE)
        up = connect_id(acts)
        self.h.connected(up)
        assert self.status(self.h.data(up, OK), sid) == b"200"
        assert not closed(acts, self.cl.conn)


def swap(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in BASE]


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in BASE if n != name]


MALFORMED: dict[str, list[tuple[str, str]]] = {
    "upper-case name": [*BASE, ("X-Foo", "1")],
    "name with a space": [*BASE, ("x foo", "1")],
    "name with a colon inside": [*BASE, ("x:foo", "1")],
    "empty name": [*BASE, ("", "1")],
    "name with a non-ASCII byte": [*BASE, ("x-\xe9", "1")],
    "value with NUL": [*BASE, ("x-a", "a\x00b")],
    "value with CR": [*BASE, ("x-a", "a\rb")],
    "value with LF": [*BASE, ("x-a", "a\nb")],
    "value with another control": [*BASE, ("x-a", "a\x01b")],
    "value starting with a space": [*BASE, ("x-a", " a")],
    "value ending with a tab": [*BASE, ("x-a", "a\t")],
    "connection": [*BASE, ("connection", "keep-alive")],
    "proxy-connection": [*BASE, ("proxy-connection", "keep-alive")],
    "keep-alive": [*BASE, ("keep-alive", "timeout=5")],
    "transfer-encoding": [*BASE, ("transfer-encoding", "chunked")],
    "upgrade": [*BASE, ("upgrade", "websocket")],
    "te other than trailers": [*BASE, ("te", "gzip")],
    "pseudo after regular": [*without(":authority"), ("x-a", "1"), (":authority", "e.com")],
    "unknown pseudo": [*BASE, (":foo", "bar")],
    ":status in a request": [*BASE, (":status", "200")],
    ":protocol without extended CONNECT": [*BASE, (":protocol", "websocket")],
    "duplicate :path": [*BASE, (":path", "/b")],
    "no :method": without(":method"),
    "no :scheme": without(":scheme"),
    "no :path": without(":path"),
    "empty :path": swap(":path", ""),
    ":path not absolute": swap(":path", "abc"),
    ":path with a space": swap(":path", "/a b"),
    ":path '*' on GET": swap(":path", "*"),
    "invalid :method": swap(":method", "G T"),
    "invalid :scheme": swap(":scheme", "1http"),
    "empty :authority": swap(":authority", ""),
    ":authority with userinfo": swap(":authority", "user@example.com"),
    ":authority with a space": swap(":authority", "exa mple.com"),
    "CONNECT with :path": [(":method", "CONNECT"), (":authority", "e.com:443"), (":path", "/")],
    "CONNECT without :authority": [(":method", "CONNECT")],
    "content-length not digits": [*BASE, ("content-length", "1x")],
    "content-length negative": [*BASE, ("content-length", "-1")],
    "content-length non-ASCII digit": [*BASE, ("content-length", "\xb2")],
    "content-length conflicting": [*BASE, ("content-length", "1"), ("content-length", "2")],
    "content-length with HEADERS ending the stream": [*BASE, ("content-length", "5")],
    "two host fields": [*without(":authority"), ("host", "a.com"), ("host", "a.com")],
    "host other than :authority": [*BASE, ("host", "other.com")],
    "invalid host": [*without(":authority"), ("host", "a b")],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_rst_stream_protocol_error(case: str) -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, MALFORMED[case])
    assert sent(acts, r.cl.conn) == rst(1)
    assert not Harness.connects(acts)
    assert not closed(acts, r.cl.conn)
    r.still_serves(3)


def test_well_formed_edges_are_proxied() -> None:
    cases = [
        [(":method", "OPTIONS"), (":scheme", "http"), (":path", "*"), (":authority", "e.com")],
        [*BASE, ("x-empty", "")],
        [*BASE, ("te", "Trailers")],
        [*BASE, ("x-inner", "a \t b"), ("x-obs", "caf\xe9")],
        [*BASE, ("host", "EXAMPLE.com")],
        [*without(":authority"), ("host", "a.com:8080")],
        [*BASE, ("content-length", "0"), ("content-length", "0")],
    ]
    for fields in cases:
        h = Harness(Simple())
        r = Raw(h)
        acts = r.headers(1, fields)
        up = connect_id(acts)
        head = sent(h.connected(up), up)
        assert head.endswith(b"\r\n\r\n"), head
        assert r.status(h.data(up, OK), 1) == b"200"


def test_no_authority_and_no_host_is_400() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, without(":authority"))
    assert not Harness.connects(acts)
    assert r.status(acts, 1) == b"400"
    r.still_serves(3)


def test_more_data_than_content_length_resets_the_stream_and_closes_upstream() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, [*BASE, ("content-length", "3")], end=False)
    up = connect_id(acts)
    h.connected(up)
    acts = r.frames(DataFrame(1, b"abcd"))
    assert rst(1) in sent(acts, r.cl.conn)
    assert closed(acts, up)  # the upstream connection is not reused after a cut body
    assert not closed(acts, r.cl.conn)
    r.still_serves(3)


def test_less_data_than_content_length_resets_the_stream() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, [*BASE, ("content-length", "5")], end=False)
    up = connect_id(acts)
    h.connected(up)
    acts = r.frames(DataFrame(1, b"ab"), DataFrame(1, b"c", flags=["END_STREAM"]))
    assert rst(1) in sent(acts, r.cl.conn)
    assert closed(acts, up)
    r.still_serves(3)


def test_exact_content_length_is_forwarded() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, [*BASE, ("content-length", "3")], end=False)
    up = connect_id(acts)
    out = sent(h.connected(up), up)
    out += sent(r.frames(DataFrame(1, b"abc", flags=["END_STREAM"])), up)
    assert out.endswith(b"\r\n\r\nabc") and b"content-length: 3\r\n" in out.lower()


def test_pseudo_field_in_trailers_resets_the_stream() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, [(":method", "POST"), *BASE[1:]], end=False)
    up = connect_id(acts)
    h.connected(up)
    r.frames(DataFrame(1, b"abc"))
    acts = r.headers(1, [(":path", "/x")], end=True)
    assert sent(acts, r.cl.conn) == rst(1)
    assert closed(acts, up)
    r.still_serves(3)


def test_trailers_without_end_stream_reset_the_stream_only() -> None:
    h = Harness(Simple())
    r = Raw(h)
    acts = r.headers(1, [(":method", "POST"), *BASE[1:]], end=False)
    up = connect_id(acts)
    h.connected(up)
    acts = r.headers(1, [("x-sum", "1")], end=False)
    assert sent(acts, r.cl.conn) == rst(1)
    assert closed(acts, up)
    assert not closed(acts, r.cl.conn)
    r.still_serves(3)  # (the HPACK state stayed in step: the trailer block was decoded)


def test_malformed_request_has_a_log_and_an_access_log_line() -> None:
    lines: list[object] = []

    class Log:
        def info(self, msg: str, *args: object) -> None:
            lines.append(msg % args)

        def __getattr__(self, name: str) -> object:
            return lambda *a, **k: None

    h = Harness(Simple(), logger=Log())
    r = Raw(h)
    r.headers(1, [*BASE, ("X-Foo", "1")])
    assert any("malformed HTTP/2 request on stream 1" in str(x) for x in lines), lines


def test_check_request_reasons_cite_the_rfc() -> None:
    with pytest.raises(Malformed, match=r"upper-case field name 'X-A' \(RFC 9113 §8\.2\)"):
        check_request([(n.encode(), v.encode()) for n, v in [*BASE, ("X-A", "1")]])
    with pytest.raises(Malformed, match="in trailers"):
        check_trailers([(b":path", b"/")])
    f = check_request([(n.encode(), v.encode()) for n, v in [*BASE, ("cookie", "a=1")]])
    assert (f.method, f.path, f.scheme, f.authority, f.cookies) == (
        "GET",
        "/a",
        "http",
        "example.com",
        ["a=1"],
    )
    assert f.size == sum(len(n) + len(v) + 4 for n, v in [*BASE, ("cookie", "a=1")])


def test_conf_limits_still_answer_with_status() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(headers_with_underscores="reject"))
    r = Raw(h)
    acts = r.headers(1, [*BASE, ("x_a", "1")])
    assert r.status(acts, 1) == b"400"


def test_malformed_requests_count_against_the_reset_budget() -> None:
    """Stream errors a client provokes at will are rapid reset by other means (MadeYouReset,
    CVE-2025-8671): past --h2-max-resets, GOAWAY(ENHANCE_YOUR_CALM) and the close."""
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_resets=3))
    r = Raw(h)
    bad = [*BASE, ("X-Foo", "1")]
    for sid in (1, 3, 5):
        acts = r.headers(sid, bad)
        assert sent(acts, r.cl.conn) == rst(sid)
        assert not closed(acts, r.cl.conn)
    acts = r.headers(7, bad)
    assert sent(acts, r.cl.conn) == rst(7) + goaway(7)
    assert closed(acts, r.cl.conn)


def test_bodies_contradicting_content_length_count_too() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_resets=1))
    r = Raw(h)
    r.headers(1, [*BASE, ("content-length", "1")], end=False)
    acts = r.frames(DataFrame(1, b"ab"))
    assert not closed(acts, r.cl.conn)
    r.headers(3, [*BASE, ("content-length", "1")], end=False)
    acts = r.frames(DataFrame(3, b"ab"))
    assert sent(acts, r.cl.conn).endswith(rst(3) + goaway(3))
    assert closed(acts, r.cl.conn)


def test_a_field_block_that_does_not_decode_is_compression_error() -> None:
    """RFC 9113 §4.3: a connection error of type COMPRESSION_ERROR (h2 alone says
    PROTOCOL_ERROR); an invalid index, a table size update above our SETTINGS or not at the
    start of the block."""
    for block in (b"\xff\x7f", b"\x3f\xe2\x1f\x82", b"\x82\x20"):
        h = Harness(Simple())
        r = Raw(h)
        acts = r.frames(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
        assert sent(acts, r.cl.conn) == goaway(0, 9)
        assert closed(acts, r.cl.conn)


def test_settings_ack_with_a_payload_is_frame_size_error() -> None:
    """RFC 9113 §6.5 (h2 alone says PROTOCOL_ERROR)."""
    h = Harness(Simple())
    r = Raw(h)
    ack = b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + struct.pack(">HI", 3, 100)
    acts = h.data(r.cl.conn, ack)
    assert sent(acts, r.cl.conn) == goaway(0, 6)
    assert closed(acts, r.cl.conn)
