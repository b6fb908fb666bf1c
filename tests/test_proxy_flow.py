"""End-to-end exchanges through the core, scripted with no sockets."""

from __future__ import annotations

from typing import Any

import pytest

import proxycore
from proxycore.actions import (
    Close,
    Connect,
    PauseReading,
    ResumeReading,
    RunFilter,
    Send,
    SetTimer,
    ShutdownWrite,
)
from proxycore.events import Accepted, DataReceived
from proxycore.testing import Harness, Playbook
from tests.helpers import ORIGIN, Simple, closed, connect_id, sent, setup_request

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def test_playbook_simple_get() -> None:
    pb = Playbook(Simple())
    pb >> Accepted(1, 0.0, ("192.0.2.1", 4000), ("127.0.0.1", 8080))
    pb >> DataReceived(1, GET, 0.0)
    pb << Connect(2, ORIGIN)
    assert pb


def test_simple_get_forwards_head_and_response() -> None:
    h = Harness(Simple())
    down, up, acts = setup_request(h, GET)
    head = sent(acts, up)
    assert head.startswith(b"GET /a?b=1 HTTP/1.1\r\n")
    assert b"Host: example.com\r\n" in head
    assert b"X-Forwarded-For: 192.0.2.10\r\n" in head
    assert b"X-Forwarded-Proto: http\r\n" in head
    assert b"X-Forwarded-Host: example.com\r\n" in head
    acts = h.data(up, OK)
    assert sent(acts, down) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    assert not closed(acts, down) and not closed(acts, up)  # kept alive, pooled


def test_pool_reuses_connection_for_next_request() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    acts = h.data(down, GET)
    assert not Harness.connects(acts)
    assert sent(acts, up).startswith(b"GET /a?b=1")
    # A second client connection also reuses the pooled connection.
    h.data(up, OK)
    down2, _ = h.accept()
    acts = h.data(down2, GET)
    assert not Harness.connects(acts) and sent(acts, up)
    assert h.engine.pool.stats.reused == 2 and h.engine.pool.stats.opened == 1


def test_upstreams_in_use_counts_open_exchanges_not_pooled_connections() -> None:
    # What the adapters' busy polling asks to know whether an origin's answer may be due.
    h = Harness(Simple())
    e = h.engine
    assert e.upstreams_in_use() == 0
    down, up, _ = setup_request(h, GET)
    assert e.upstreams_in_use() == 1  # request forwarded: the answer is due
    h.data(up, OK[:20])
    assert e.upstreams_in_use() == 1  # answer still streaming
    h.data(up, OK[20:])
    assert e.upstreams_in_use() == 0 and len(e.pool) == 1  # answered: back in the pool
    h.data(down, GET)
    assert e.upstreams_in_use() == 1  # reused from the pool for the next request
    h.data(up, OK)
    assert e.upstreams_in_use() == 0


def test_pipelined_requests_answered_in_order() -> None:
    h = Harness(Simple())
    down, _ = h.accept()
    r1 = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    r2 = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    acts = h.data(down, r1 + r2)
    up = connect_id(acts)
    acts = h.connected(up)
    assert sent(acts, up).startswith(b"GET /1 ")
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert sent(acts, down).endswith(b"\r\n\r\n1")
    assert sent(acts, up).startswith(b"GET /2 ")  # second request only after the first answer
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert sent(acts, down).endswith(b"\r\n\r\n2")


def test_chunked_request_body_streams_upstream_with_trailers() -> None:
    h = Harness(Simple())
    req = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    down, up, acts = setup_request(h, req)
    head = sent(acts, up)
    assert b"Transfer-Encoding: chunked\r\n" in head
    acts = h.data(down, b"3\r\nabc\r\n")
    assert sent(acts, up) == b"3\r\nabc\r\n"
    acts = h.data(down, b"0\r\nX-Sum: 9\r\n\r\n")
    assert sent(acts, up) == b"0\r\nX-Sum: 9\r\n\r\n"


def test_content_length_body_split_across_reads() -> None:
    h = Harness(Simple())
    down, up, acts = setup_request(
        h, b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234"
    )
    assert sent(acts, up).endswith(b"\r\n\r\n01234")
    acts = h.data(down, b"56789")
    assert sent(acts, up) == b"56789"
    acts = h.data(up, OK)
    assert sent(acts, down).endswith(b"hello")


def test_chunked_response_with_trailers_relayed() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    out = sent(h.data(up, resp), down)
    assert out.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert out.endswith(b"4\r\nwiki\r\n0\r\nGrpc-Status: 0\r\n\r\n")


def test_close_delimited_response_becomes_chunked_for_http11() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    out = sent(h.data(up, b"HTTP/1.0 200 OK\r\n\r\nabc"), down)
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"3\r\nabc\r\n")
    acts = h.eof(up)
    assert sent(acts, down) == b"0\r\n\r\n"
    assert closed(acts, up) and not closed(acts, down)


def test_close_delimited_response_to_http10_client() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.0\r\n\r\n")
    out = sent(h.data(up, b"HTTP/1.0 200 OK\r\n\r\nabc"), down)
    assert b"Connection: close" in out and out.endswith(b"\r\n\r\nabc")
    acts = h.eof(up)
    assert closed(acts, down)


def test_http10_keepalive_with_length() -> None:
    h = Harness(Simple())
    down, up, acts = setup_request(h, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Host: 127.0.0.1:9000" in sent(acts, up)
    acts = h.data(up, OK)
    assert b"Connection: keep-alive" in sent(acts, down)
    assert not closed(acts, down)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    acts = h.data(up, b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    out = sent(acts, down)
    assert out.endswith(b"\r\n\r\n") and b"Transfer-Encoding" not in out
    assert not closed(acts, down) and not closed(acts, up)


def test_head_keeps_content_length_and_sends_no_body() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    out = sent(h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"), down)
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"


def test_expect_100_continue_relayed() -> None:
    h = Harness(Simple())
    req = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    down, up, acts = setup_request(h, req)
    assert b"Expect: 100-continue" in sent(acts, up)
    acts = h.data(up, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert sent(acts, down) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert sent(h.data(down, b"abc"), up) == b"abc"
    assert sent(h.data(up, OK), down).startswith(b"HTTP/1.1 200 OK")


def test_1xx_not_sent_to_http10_client() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.0\r\n\r\n")
    acts = h.data(up, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    assert sent(acts, down).startswith(b"HTTP/1.1 200 OK")


def test_absolute_form_target() -> None:
    h = Harness(Simple())
    _, up, acts = setup_request(
        h, b"GET http://example.org:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n"
    )
    head = sent(acts, up)
    assert head.startswith(b"GET /p?q HTTP/1.1\r\n")
    assert b"Host: example.org:8080\r\n" in head and b"other" not in head


def test_hop_by_hop_removed_both_ways() -> None:
    h = Harness(Simple())
    req = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: foo\r\nProxy-Connection: x\r\n"
        b"Proxy-Authorization: Basic x\r\nX-Keep: y\r\n\r\n"
    )
    down, up, acts = setup_request(h, req)
    head = sent(acts, up).lower()
    for name in [b"connection", b"x-secret", b"keep-alive", b"te:", b"upgrade", b"proxy-"]:
        assert name not in head
    assert b"x-keep: y" in head
    resp = (
        b"HTTP/1.1 200 OK\r\nConnection: X-Gone\r\nX-Gone: 1\r\nKeep-Alive: t=5\r\n"
        b"Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"
    )
    out = sent(h.data(up, resp), down).lower()
    for name in [b"x-gone", b"keep-alive", b"proxy-authenticate", b"upgrade"]:
        assert name not in out


def test_existing_forwarded_for_is_appended() -> None:
    h = Harness(Simple())
    _, up, acts = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n")
    assert b"X-Forwarded-For: 1.1.1.1, 192.0.2.10\r\n" in sent(acts, up)


def test_forwarded_headers_switchable() -> None:
    h = Harness(Simple(), proxycore.ServerConf(add_forwarded_headers=False))
    _, up, acts = setup_request(h, GET)
    assert b"X-Forwarded" not in sent(acts, up)


# ---------------------------------------------------------------- bad input

BAD_REQUESTS = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n", 417),
    (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    BAD_REQUESTS,
    ids=[f"{i}-{s}" for i, (_, s) in enumerate(BAD_REQUESTS)],
)
def test_bad_requests_rejected_before_upstream(request_bytes: bytes, status: int) -> None:
    h = Harness(Simple())
    down, _ = h.accept()
    acts = h.data(down, request_bytes)
    assert not Harness.connects(acts)
    out = sent(acts, down)
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    assert b"Connection: close" in out
    assert any(isinstance(a, ShutdownWrite) for a in acts)  # lingering close
    assert not Harness.connects(h.data(down, GET))  # nothing more is processed


def test_bad_chunk_size_rejected() -> None:
    h = Harness(Simple())
    req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    down, up, _ = setup_request(h, req)
    acts = h.data(down, b"zz\r\nabc\r\n")
    assert sent(acts, down).startswith(b"HTTP/1.1 400 ")
    assert closed(acts, up)


def test_header_timeout_slowloris() -> None:
    h = Harness(Simple(), proxycore.ServerConf(header_timeout=2.0))
    down, _ = h.accept()
    h.data(down, b"GET / HTTP/1.1\r\nHost")
    h.now += 1.0
    h.data(down, b": a\r\n")
    acts = h.advance(1.5, down)
    assert sent(acts, down).startswith(b"HTTP/1.1 408 ")


def test_idle_keepalive_timeout_closes() -> None:
    h = Harness(Simple(), proxycore.ServerConf(keepalive_timeout=3.0))
    down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    assert not closed(h.advance(2.0, down), down)
    assert closed(h.advance(1.5, down), down)


# ---------------------------------------------------------------- upstream faults


def test_connect_refused_502() -> None:
    h = Harness(Simple())
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    acts = h.connect_failed(up, "refused")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")


def test_connect_timeout_504() -> None:
    h = Harness(Simple(), proxycore.ServerConf(connect_timeout=1.0))
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    acts = h.advance(1.5, down)
    assert sent(acts, down).startswith(b"HTTP/1.1 504 ")
    assert closed(acts, up)


def test_read_timeout_504_and_refreshed_by_data() -> None:
    h = Harness(Simple(), proxycore.ServerConf(read_timeout=2.0))
    down, _up, _ = setup_request(h, GET)
    acts = h.advance(2.5, down)
    assert sent(acts, down).startswith(b"HTTP/1.1 504 ")


def test_read_timeout_mid_body_truncates() -> None:
    h = Harness(Simple(), proxycore.ServerConf(read_timeout=2.0))
    down, up, _ = setup_request(h, GET)
    h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    h.now += 1.5
    h.data(up, b"de")
    assert not closed(h.advance(1.0, down), down)  # refreshed by the read at 1.5
    acts = h.advance(1.5, down)
    assert closed(acts, down) and sent(acts, down) == b""


def test_upstream_reset_before_head_502() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    acts = h.closed(up, "ConnectionResetError")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")


def test_invalid_upstream_response_502() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    acts = h.data(up, b"garbage garbage\r\n\r\n")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")
    assert closed(acts, up)


@pytest.mark.parametrize(
    "resp",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
def test_smuggling_shaped_upstream_responses_502(resp: bytes) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    assert sent(h.data(up, resp), down).startswith(b"HTTP/1.1 502 ")


def test_reset_mid_length_body_truncates() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    acts = h.closed(up, "reset")
    assert closed(acts, down) and sent(acts, down) == b""


def test_reset_mid_chunked_body_has_no_final_chunk() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    out = sent(
        h.data(up, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"), down
    )
    acts = h.closed(up, "reset")
    assert closed(acts, down)
    assert b"0\r\n\r\n" not in out + sent(acts, down)


def test_pooled_connection_dead_is_retried_once_fresh() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    acts = h.data(down, GET)  # reuses `up`
    assert sent(acts, up)
    acts = h.eof(up)  # it was closed by the origin: ReusedOnly retry on a new connection
    up2 = connect_id(acts)
    acts = h.connected(up2)
    assert sent(acts, up2).startswith(b"GET /a?b=1")
    assert sent(h.data(up2, OK), down).endswith(b"hello")


def test_idle_pooled_connection_dropped_on_data_or_eof() -> None:
    h = Harness(Simple())
    _down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    assert len(h.engine.pool) == 1
    acts = h.data(up, b"junk")
    assert closed(acts, up) and len(h.engine.pool) == 0


def test_pool_idle_timeout_expires() -> None:
    h = Harness(Simple(), proxycore.ServerConf(upstream_idle_timeout=5.0))
    _down, up, _ = setup_request(h, GET)
    acts = h.data(up, OK)
    assert any(isinstance(a, SetTimer) and a.conn == 0 for a in acts)
    h.now += 6
    acts = h.feed(proxycore.events.TimerFired(0, h.now))
    assert closed(acts, up) and len(h.engine.pool) == 0


def test_pool_cap_evicts_lru() -> None:
    h = Harness(Simple(), proxycore.ServerConf(upstream_keepalive_pool_size=1))
    _d1, u1, _ = setup_request(h, GET)
    d2, _ = h.accept()
    u2 = connect_id(h.data(d2, GET))
    h.connected(u2)
    h.data(u1, OK)
    acts = h.data(u2, OK)
    assert closed(acts, u1) and len(h.engine.pool) == 1


def test_response_early_before_request_body_done() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    acts = h.data(up, b"HTTP/1.1 413 Too Big\r\nContent-Length: 0\r\n\r\n")
    assert sent(acts, down).startswith(b"HTTP/1.1 413")
    assert closed(acts, up)  # the upstream didn't get the whole body: never reused


# ---------------------------------------------------------------- backpressure


def test_slow_client_pauses_upstream_reading() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    acts = h.feed(proxycore.events.WritePaused(down, h.now))
    assert PauseReading(up) in acts
    acts = h.feed(proxycore.events.WriteResumed(down, h.now))
    assert ResumeReading(up) in acts


def test_slow_upstream_pauses_client_reading() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    acts = h.feed(proxycore.events.WritePaused(up, h.now))
    assert PauseReading(down) in acts
    acts = h.feed(proxycore.events.WriteResumed(up, h.now))
    assert ResumeReading(down) in acts


def test_buffered_pipeline_limit_pauses_reading() -> None:
    h = Harness(Simple(), proxycore.ServerConf(read_buffer_limit=1000))
    down, _up, _ = setup_request(h, GET)
    acts = h.data(down, GET * 40)
    assert PauseReading(down) in acts


# ---------------------------------------------------------------- filters


class Filtering(proxycore.Proxy):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.logged: list[Any] = []

    def new_ctx(self) -> dict[str, Any]:
        return {}

    def early_request_filter(self, session: Any, ctx: Any) -> None:
        self.calls.append("early_request_filter")

    def request_filter(self, session: Any, ctx: Any) -> bool:
        self.calls.append("request_filter")
        if session.req_header.path == "/deny":
            session.respond(403, b"no\n", [("X-Why", "test")])
            return True
        if session.req_header.path == "/boom":
            raise RuntimeError("boom")
        return False

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        self.calls.append("upstream_peer")
        return ORIGIN

    def connected_to_upstream(self, session: Any, reused: bool, peer: Any, ctx: Any) -> None:
        self.calls.append(f"connected_to_upstream reused={reused}")

    def upstream_request_filter(self, session: Any, req: Any, ctx: Any) -> None:
        self.calls.append("upstream_request_filter")
        req.headers["X-Added"] = "1"
        req.path = "/rewritten"

    def upstream_response_filter(self, session: Any, resp: Any, ctx: Any) -> None:
        self.calls.append("upstream_response_filter")

    def response_filter(self, session: Any, resp: Any, ctx: Any) -> None:
        self.calls.append("response_filter")
        resp.headers["X-Resp"] = "yes"

    def response_body_filter(self, session: Any, body: bytes, eos: bool, ctx: Any) -> bytes:
        self.calls.append(f"response_body_filter eos={eos}")
        return body.upper()

    def logging(self, session: Any, error: Any, ctx: Any) -> None:
        self.calls.append("logging")
        self.logged.append((session.response_status, error))


def test_phases_run_in_pingora_order() -> None:
    app = Filtering()
    h = Harness(app)
    down, up, acts = setup_request(h, GET)
    assert sent(acts, up).startswith(b"GET /rewritten HTTP/1.1\r\n")
    assert b"X-Added: 1\r\n" in sent(acts, up)
    out = sent(h.data(up, OK), down)
    assert b"X-Resp: yes\r\n" in out and out.endswith(b"HELLO")
    assert app.calls == [
        "early_request_filter",
        "request_filter",
        "upstream_peer",
        "connected_to_upstream reused=False",
        "upstream_request_filter",
        "upstream_response_filter",
        "response_filter",
        "response_body_filter eos=True",
        "logging",
    ]
    assert app.logged == [(200, None)]


def test_request_filter_can_answer_and_keep_alive() -> None:
    app = Filtering()
    h = Harness(app)
    down, _ = h.accept()
    acts = h.data(down, b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")
    out = sent(acts, down)
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"X-Why: test" in out
    assert out.endswith(b"no\n") and not closed(acts, down) and not Harness.connects(acts)
    assert Harness.connects(h.data(down, GET))


def test_filter_raising_gives_500_and_logs() -> None:
    app = Filtering()
    h = Harness(app)
    down, _ = h.accept()
    acts = h.data(down, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sent(acts, down).startswith(b"HTTP/1.1 500 ")
    status, err = app.logged[-1]
    assert status == 500 and err.etype is proxycore.ErrorType.FILTER_ERROR
    # the connection keeps serving
    assert Harness.connects(h.data(down, GET))


def test_header_injection_from_filter_is_refused() -> None:
    class Inject(Simple):
        def upstream_request_filter(self, session: Any, req: Any, ctx: Any) -> None:
            req.headers["X-Evil"] = "a\r\nX-Smuggled: 1"

    h = Harness(Inject())
    down, up, acts = setup_request(h, GET)
    assert sent(acts, up) == b""
    assert sent(acts, down).startswith(b"HTTP/1.1 500 ")


class AsyncPhases(proxycore.Proxy):
    async def request_filter(self, session: Any, ctx: Any) -> bool:
        return False

    async def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def test_async_phases_are_deferred_to_the_adapter() -> None:
    h = Harness(AsyncPhases())
    down, _ = h.accept()
    acts = h.data(down, GET)
    (rf,) = [a for a in acts if isinstance(a, RunFilter)]
    assert rf.kind == "async"
    rf.call().close()  # the adapter would await it
    acts = h.filter_done(down, rf.token, result=False)
    (rf2,) = [a for a in acts if isinstance(a, RunFilter)]
    rf2.call().close()
    acts = h.filter_done(down, rf2.token, result=ORIGIN)
    assert Harness.connects(acts)


def test_blocking_marked_phase_is_deferred() -> None:
    class Blocking(Simple):
        @proxycore.blocking
        def request_filter(self, session: Any, ctx: Any) -> bool:
            return False

    h = Harness(Blocking())
    down, _ = h.accept()
    (rf,) = [a for a in h.data(down, GET) if isinstance(a, RunFilter)]
    assert rf.kind == "blocking" and rf.call() is False
    assert Harness.connects(h.filter_done(down, rf.token, result=False))


def test_fail_to_connect_retry_calls_upstream_peer_again() -> None:
    peers = [proxycore.Peer("127.0.0.1", 1), proxycore.Peer("127.0.0.1", 2)]

    class Retry(proxycore.Proxy):
        def new_ctx(self) -> list[int]:
            return [0]

        def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
            p = peers[ctx[0]]
            ctx[0] += 1
            return p

        def fail_to_connect(self, session: Any, peer: Any, ctx: Any, e: Any) -> Any:
            e.retry = True
            return e

    h = Harness(Retry())
    down, _ = h.accept()
    (c1,) = Harness.connects(h.data(down, GET))
    assert c1.peer.port == 1
    (c2,) = Harness.connects(h.connect_failed(c1.conn))
    assert c2.peer.port == 2


def test_max_retries_bounds_retrying() -> None:
    class Always(Simple):
        def fail_to_connect(self, session: Any, peer: Any, ctx: Any, e: Any) -> Any:
            e.retry = True
            return e

    h = Harness(Always(), proxycore.ServerConf(max_retries=2))
    down, _ = h.accept()
    acts = h.data(down, GET)
    for _ in range(2):
        acts = h.connect_failed(connect_id(acts))
    acts = h.connect_failed(connect_id(acts))
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")


def test_reverse_proxy_builtin_fails_over_to_next_backend() -> None:
    from proxycore.builtin import ReverseProxy

    h = Harness(ReverseProxy([proxycore.Peer("127.0.0.1", 1), proxycore.Peer("127.0.0.1", 2)]))
    down, _ = h.accept()
    (c1,) = Harness.connects(h.data(down, GET))
    (c2,) = Harness.connects(h.connect_failed(c1.conn))
    assert {c1.peer.port, c2.peer.port} == {1, 2}
    acts = h.connect_failed(c2.conn)
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")


def test_client_abort_closes_upstream() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    acts = h.closed(down, "reset")
    assert Close(up, True) in acts


def test_drain_closes_idle_and_marks_close() -> None:
    # (the origin closes after each answer: every request connects anew)
    h = Harness(Simple())
    d_idle, up0, _ = setup_request(h, GET)  # served once, then idle for longer than 1 s
    assert b"200 OK" in sent(h.data(up0, OK_CLOSE), d_idle)
    h.now += 1.5
    d_new, _ = h.accept()  # accepted, its first request not sent yet
    down, up, _ = setup_request(h, GET)
    acts = h.feed(proxycore.events.Drain(0, h.now))
    assert closed(acts, d_idle) and not closed(acts, down) and not closed(acts, d_new)
    acts = h.data(up, OK_CLOSE)
    assert b"Connection: close" in sent(acts, down) and closed(acts, down)
    acts = h.data(d_new, GET)  # the new connection's request is served, then it closes
    up2 = connect_id(acts)
    h.connected(up2)
    acts = h.data(up2, OK)
    assert b"Connection: close" in sent(acts, d_new) and closed(acts, d_new)
    assert h.engine.idle


def test_drain_gives_a_connection_active_a_moment_ago_one_second() -> None:
    """Its client's next request may be on the way: not closed under it (RFC 9112 §9.6)."""
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, OK_CLOSE)
    h.now += 0.25
    acts = h.feed(proxycore.events.Drain(0, h.now))
    assert not closed(acts, down)
    assert not closed(h.advance(0.5, down), down)
    assert closed(h.advance(0.3, down), down)  # 1 s after its last response: closed
    assert h.engine.idle


def test_playbook_reports_readable_diff() -> None:
    pb = Playbook(Simple())
    pb >> Accepted(1, 0.0, ("192.0.2.1", 4000), ("127.0.0.1", 8080))
    pb >> DataReceived(1, GET, 0.0)
    pb << Send(1, b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(AssertionError, match="action mismatch"):
        pb.run()


def test_internal_error_costs_one_connection_not_the_engine() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    other, _ = h.accept()
    session = h.engine.downstreams[down].current
    assert session is not None

    class Broken:  # what the upstream reports to; raising stands for a bug in the core
        def __init__(self) -> None:
            self.down = session.down

        def on_upstream_data(self, data: bytes) -> None:
            raise RuntimeError("core bug")

    h.engine.upstreams[up].session = Broken()
    acts = h.data(up, OK)
    assert Close(down, True) in acts and Close(up, True) in acts
    assert down not in h.engine.downstreams and other in h.engine.downstreams
    assert Harness.connects(h.data(other, GET))


@pytest.mark.parametrize(
    "conn_fields",
    [
        b"Connection: keep-alive\r\n",
        b"Connection: keep-alive\r\nConnection: Keep-Alive\r\n",
        b"connection: keep-alive\r\n",
        b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\n",
    ],
)
def test_connection_fields_never_forwarded_downstream(conn_fields: bytes) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    out = sent(
        h.data(up, b"HTTP/1.1 200 OK\r\n" + conn_fields + b"Content-Length: 1\r\n\r\nx"), down
    )
    assert b"onnection" not in out and b"X-Drop" not in out, out
    assert out.endswith(b"Content-Length: 1\r\n\r\nx")


def test_framing_fields_dropped_from_trailers_both_ways() -> None:
    h = Harness(Simple())
    req = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    down, up, _ = setup_request(h, req)
    acts = h.data(
        down,
        b"1\r\nx\r\n0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n"
        b"X-Checksum: 1\r\n\r\n",
    )
    assert sent(acts, up) == b"1\r\nx\r\n0\r\nX-Checksum: 1\r\n\r\n"
    resp = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\ny\r\n"
        b"0\r\nContent-Length: 9\r\nGrpc-Status: 0\r\n\r\n"
    )
    assert sent(h.data(up, resp), down).endswith(b"0\r\nGrpc-Status: 0\r\n\r\n")


def test_pool_per_key_cap() -> None:
    h = Harness(Simple(), proxycore.ServerConf(upstream_keepalive_per_peer=2))
    ups = []
    downs = []
    for _ in range(3):
        d, u, _ = setup_request(h, GET)
        downs.append(d)
        ups.append(u)
    h.data(ups[0], OK)
    h.data(ups[1], OK)
    acts = h.data(ups[2], OK)
    assert closed(acts, ups[0]) and len(h.engine.pool) == 2  # the key's LRU was evicted


def test_reused_only_retry_goes_to_a_fresh_connection_once() -> None:
    h = Harness(Simple())
    d1, u1, _ = setup_request(h, GET)
    d2, _ = h.accept()
    u2 = connect_id(h.data(d2, GET))
    h.connected(u2)
    h.data(u1, OK)
    h.data(u2, OK)  # two idle pooled connections to the same peer
    acts = h.data(d1, GET)  # reuses one of them
    reused = next(a.conn for a in acts if isinstance(a, Send))
    acts = h.eof(reused)  # dead before answering: retried on a FRESH connection
    fresh = connect_id(acts)
    assert fresh not in (u1, u2)
    acts = h.connect_failed(fresh)  # a fresh connection failing is not retried again
    assert sent(acts, d1).startswith(b"HTTP/1.1 502")


def test_pool_keeps_emptied_buckets_only_within_a_bound() -> None:
    """acquire() leaves a key's emptied bucket for the next release (no dict per request);
    release() sweeps the empty ones once there are many keys, so churning through many
    peers does not grow the pool's index without limit."""
    from proxycore.pool import ConnectionPool
    from proxycore.upstream import Upstream

    pool = ConnectionPool(max_idle=4)
    for i in range(1000):
        up = Upstream(i + 1, proxycore.Peer("127.0.0.1", 10000 + i), 0.0)
        assert pool.release(up, 60.0) is None
        assert pool.acquire(up.peer.key) is up
    assert len(pool) == 0 and len(pool._by_key) <= 2 * 4 + 64
    up = Upstream(5000, proxycore.Peer("127.0.0.1", 9), 0.0)
    pool.release(up, 60.0)
    assert pool.acquire(up.peer.key) is up and pool.acquire(up.peer.key) is None
