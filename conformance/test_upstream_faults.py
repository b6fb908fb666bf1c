"""Upstream failures → 502/504, truncated bodies never completed, and timeouts."""

from __future__ import annotations

import time

import pytest

from conformance.client import Closed, Conn, build_request, get
from conformance.origins import (
    EchoOrigin,
    GarbageOrigin,
    ResetOrigin,
    SilentOrigin,
    SlowOrigin,
    WatchOrigin,
    free_port,
)


def _get_status_twice(port: int, expected: int) -> None:
    for i in range(2):  # the second request proves the worker survived the first
        r = get(port, f"/fault{i}")
        assert r.status == expected, f"request {i}: expected {expected}, got {r!r}"


def test_connect_refused_502(proxy):
    p = proxy(to=[free_port()])
    _get_status_twice(p.port, 502)


def test_garbage_response_502(origins, proxy):
    o = origins(GarbageOrigin)
    p = proxy(to=[o.port])
    _get_status_twice(p.port, 502)


def test_reset_before_head_502(origins, proxy):
    o = origins(ResetOrigin, mode="before_head")
    p = proxy(to=[o.port])
    _get_status_twice(p.port, 502)


def test_eof_before_head_502(origins, proxy):
    o = origins(ResetOrigin, mode="eof_before_head")
    p = proxy(to=[o.port])
    _get_status_twice(p.port, 502)


def _read_truncated(port: int):
    with Conn(port, timeout=5) as c:
        c.send(build_request("GET", "/truncated"))
        try:
            r = c.read_response()
        except TimeoutError:
            pytest.fail(
                "connection neither completed nor closed within 5s after the "
                "upstream reset mid-body"
            )
        closed = c.wait_closed(2)
    return r, closed


def test_reset_mid_body_content_length(origins, proxy):
    o = origins(ResetOrigin, mode="mid_body_length", total=100000, sent=1000)
    p = proxy(to=[o.port])
    r, closed = _read_truncated(p.port)
    assert r.status == 200, f"head was sent 0.2s before the reset, expected it relayed: {r!r}"
    assert r.framing == "length", r
    assert not r.complete and r.body_len < 100000, f"fake completion of a truncated body: {r!r}"
    assert closed


def test_reset_mid_body_chunked(origins, proxy):
    o = origins(ResetOrigin, mode="mid_body_chunked", sent=1000)
    p = proxy(to=[o.port])
    r, closed = _read_truncated(p.port)
    assert r.status == 200, f"head was sent 0.2s before the reset, expected it relayed: {r!r}"
    assert r.framing in ("chunked", "close"), r
    if r.framing == "chunked":
        assert not r.complete, f"terminating 0-chunk sent for a truncated body: {r!r}"
    else:
        pytest.fail(
            f"truncated chunked body relayed close-delimited to an HTTP/1.1 client "
            f"(indistinguishable from a complete body): {r!r}"
        )
    assert closed


def test_read_timeout_504(origins, proxy):
    o = origins(SilentOrigin)
    p = proxy(to=[o.port], extra=["--read-timeout", "0.5"])
    t0 = time.monotonic()
    r = get(p.port, "/never", timeout=5)
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert took < 3, f"504 took {took:.2f}s with --read-timeout 0.5"
    r = get(p.port, "/never2", timeout=5)
    assert r.status == 504


def test_abandoned_upstream_is_reset(origins, proxy):
    # The adapter contract: Close(abort=True) is a TCP reset on every backend (SO_LINGER 0),
    # so an origin sees that the proxy gave up rather than an orderly end of the request.
    o = origins(WatchOrigin)
    p = proxy(to=[o.port], extra=["--read-timeout", "0.3"])
    assert get(p.port, "/never", timeout=5).status == 504
    deadline = time.monotonic() + 5
    while not o.closes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert o.closes == ["reset"], o.closes


def test_read_timeout_mid_body_truncates(origins, proxy):
    o = origins(SlowOrigin, chunk_delay=3.0, chunks=2, piece=1000)
    p = proxy(to=[o.port], extra=["--read-timeout", "0.5"])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/stall-mid-body"))
        t0 = time.monotonic()
        r = c.read_response()
        took = time.monotonic() - t0
    assert r.status == 200
    assert not r.complete and r.body_len == 1000, r
    assert took < 2.5, f"stalled upstream body not cut after {took:.2f}s (read timeout 0.5)"


def test_slowloris_header_timeout(echo, proxy):
    p = proxy(to=[echo.port], extra=["--header-timeout", "0.5"])
    with Conn(p.port, timeout=5) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: example.test\r\nX-Slow: ")
        t0 = time.monotonic()
        closed = c.wait_closed(3)
        took = time.monotonic() - t0
        if c.buf:
            assert c.buf.startswith(b"HTTP/1.1 408") or c.buf.startswith(b"HTTP/1.0 408"), bytes(
                c.buf[:100]
            )
    assert closed and took < 2, f"partial head not timed out (closed={closed}, {took:.2f}s)"
    assert echo.heads == 0


def test_slowloris_dripping_header_timeout(echo, proxy):
    """A client that keeps sending a byte every 0.1s is still cut at the header timeout."""
    p = proxy(to=[echo.port], extra=["--header-timeout", "0.5"])
    with Conn(p.port, timeout=5) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: example.test\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 3:
            if not c.try_send(b"X-Drip-%d: 1\r\n" % int((time.monotonic() - t0) * 100)):
                closed = True
                break
            if c.wait_closed(0.1):
                closed = True
                break
        took = time.monotonic() - t0
    assert closed and took < 2, f"dripping head not timed out (closed={closed}, {took:.2f}s)"


def test_idle_keepalive_timeout(echo, proxy):
    p = proxy(to=[echo.port], extra=["--keepalive-timeout", "0.5"])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/idle"))
        r = c.read_response()
        assert r.status == 200 and "close" not in r.connection_tokens()
        t0 = time.monotonic()
        closed = c.wait_closed(3)
        took = time.monotonic() - t0
    assert closed, "idle keep-alive connection not closed within 3s (--keepalive-timeout 0.5)"
    assert took < 2.0


def test_keepalive_timeout_does_not_cut_active_connection(echo, proxy):
    p = proxy(to=[echo.port], extra=["--keepalive-timeout", "0.5"])
    with Conn(p.port, timeout=5) as c:
        for i in range(4):
            c.send(build_request("GET", f"/active{i}"))
            assert c.read_response().status == 200
            time.sleep(0.2)


def test_upstream_close_while_idle_in_pool(origins, proxy):
    """The origin closes its idle keep-alive connection; the next request must still work
    (a fresh upstream connection or a retry on the reused one)."""
    from conformance.origins import EchoOrigin

    class ClosingIdleOrigin(EchoOrigin):
        def respond(self, sock, req):
            super().respond(sock, req)
            time.sleep(0.05)
            return False  # close after each response, without saying so

    o = origins(ClosingIdleOrigin)
    p = proxy(to=[o.port])
    for i in range(3):
        r = get(p.port, f"/pool-stale{i}")
        assert r.status == 200, f"request {i} after the origin closed an idle conn: {r!r}"
        time.sleep(0.2)


def test_client_gone_while_upstream_slow(origins, proxy):
    o = origins(SlowOrigin, head_delay=0.5)
    p = proxy(to=[o.port])
    with Conn(p.port) as c:
        c.send(build_request("GET", "/gone"))
    time.sleep(0.8)
    p.check_alive()
    with Conn(p.port) as c:
        c.send(build_request("GET", "/after-gone"))
        try:
            assert c.read_response().status == 200
        except Closed:
            pytest.fail("proxy stopped serving after a client went away mid-request")


def test_short_timers_do_not_cut_slow_but_active_exchanges(origins, proxy):
    """--keepalive-timeout/--header-timeout 0.5 apply to idle time and to the head only: a
    response streamed over 1.2s and a body uploaded over 1.5s both complete."""
    slow = origins(SlowOrigin, chunk_delay=0.4, chunks=4, piece=1000)
    echo = origins(EchoOrigin)
    timers = ["--keepalive-timeout", "0.5", "--header-timeout", "0.5"]
    p = proxy(to=[slow.port], extra=timers)
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/slow-response"))
        r = c.read_response()
    assert r.status == 200 and r.complete and r.body_len == 4000, r
    p2 = proxy(to=[echo.port], extra=timers)
    with Conn(p2.port, timeout=5) as c:
        c.send(build_request("POST", "/slow-upload", [("Content-Length", "10")]))
        for _ in range(10):
            time.sleep(0.15)
            c.send(b"x")
        r = c.read_response()
    assert r.status == 200 and echo.last().body == b"x" * 10, r
