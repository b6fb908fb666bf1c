"""Malformed requests (RFC 9110, RFC 9112 §2.2, §3, §5, §6): the right status, the connection
closed, nothing forwarded upstream, and the proxy keeps serving.

One proxy per backend is shared by the whole module, so every case also checks that the
previous bad requests did not break the worker.
"""

from __future__ import annotations

import time

import pytest

from conformance.client import Closed, Conn, assert_serving

H = b"Host: example.test\r\n"

# (id, raw request, expected status, level) — level "head": the upstream must not even see
# a request head; "body": the head may have been streamed upstream, but no complete request.
CASES = [
    (
        "cl-and-te",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "head",
    ),
    (
        "te-and-cl",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
        "head",
    ),
    (
        "duplicate-cl-equal",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
        "head",
    ),
    (
        "duplicate-cl-different",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
        "head",
    ),
    ("cl-abc", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400, "head"),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400, "head"),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400, "head"),
    (
        "cl-inner-space",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\nhello",
        400,
        "head",
    ),
    (
        "chunk-size-zz",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        "body",
    ),
    (
        "chunk-size-0x5",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
        "body",
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n  folded\r\n\r\n", 400, "head"),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Bad : 1\r\n\r\n", 400, "head"),
    ("host-space-before-colon", b"GET / HTTP/1.1\r\nHost : example.test\r\n\r\n", 400, "head"),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400, "head"),
    ("bare-cr-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400, "head"),
    ("missing-host-11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, "head"),
    ("two-hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n", 400, "head"),
    ("absolute-form-without-host", b"GET http://example.com/ HTTP/1.1\r\n\r\n", 400, "head"),
    ("host-invalid", b"GET / HTTP/1.1\r\nHost: exa mple.test\r\n\r\n", 400, "head"),
    (
        "cl-huge",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nhi",
        400,
        "head",
    ),
    (
        "chunk-size-huge",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhi\r\n0\r\n\r\n",
        400,
        "body",
    ),
    (
        "chunk-data-without-crlf",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
        400,
        "body",
    ),
    (
        "headers-too-large",
        b"GET / HTTP/1.1\r\n"
        + H
        + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
        + b"\r\n",
        431,
        "head",
    ),
    ("request-line-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, "head"),
    ("te-gzip", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello", 501, "head"),
    (
        "te-gzip-chunked",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        501,
        "head",
    ),
    ("http-2.0-request-line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, "head"),
    (
        "expect-unknown",
        b"POST / HTTP/1.1\r\n" + H + b"Expect: foo\r\nContent-Length: 5\r\n\r\nhello",
        417,
        "head",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "level"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request(shared_proxy, shared_echo, raw, status, level):
    shared_proxy.check_alive()
    before = shared_echo.snapshot()
    with Conn(shared_proxy.port, timeout=3) as c:
        c.try_send(raw)
        try:
            r = c.read_response()
        except Closed as e:
            pytest.fail(f"no response, expected {status}: {e}")
        except TimeoutError:
            pytest.fail(f"no response within 3s, expected {status}")
        assert r.status == status, f"expected {status}, got {r!r}"
        assert c.wait_closed(2), f"connection left open after {status} {r!r}"
    time.sleep(0.1)  # anything the proxy forwarded would have reached the origin by now
    after = shared_echo.snapshot()
    if level == "head":
        assert after[1] == before[1], "the bad request's head was forwarded upstream"
    assert after[2] == before[2], "the bad request reached the upstream complete"
    shared_proxy.check_alive()
    assert_serving(shared_proxy.port)


def test_bad_request_after_good_on_same_connection(shared_proxy, shared_echo):
    """A keep-alive connection that sends a good then a bad request: 200 then 400 + close."""
    with Conn(shared_proxy.port, timeout=3) as c:
        c.send(b"GET /good HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().status == 200
        c.send(b"GET /bad HTTP/1.1\r\n" + H + b"Content-Length: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 400, r
        assert c.wait_closed(2)
    assert_serving(shared_proxy.port)


def test_garbage_request_line(shared_proxy):
    with Conn(shared_proxy.port, timeout=3) as c:
        c.try_send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        try:
            r = c.read_response()
            assert r.status == 400, r
        except Closed:
            pass  # closing without a response is acceptable for non-HTTP bytes
        assert c.wait_closed(2)
    assert_serving(shared_proxy.port)


def test_client_disconnects_mid_head_and_mid_body(shared_proxy, shared_echo):
    with Conn(shared_proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHo")
    with Conn(shared_proxy.port) as c:
        c.send(b"POST /partial HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\nabc")
        time.sleep(0.2)
    time.sleep(0.2)
    shared_proxy.check_alive()
    assert_serving(shared_proxy.port)


def test_pipelined_bad_request_in_the_middle(shared_proxy, shared_echo):
    """good, bad, good in one write: 200, then 400 and close; the third is never served."""
    before = shared_echo.snapshot()
    with Conn(shared_proxy.port, timeout=3) as c:
        c.send(
            b"GET /pipe-good HTTP/1.1\r\n"
            + H
            + b"\r\n"
            + b"GET /pipe-bad HTTP/1.1\r\n"
            + H
            + b"Content-Length: 1\r\nContent-Length: 2"
            + b"\r\n\r\n"
            + b"GET /pipe-never HTTP/1.1\r\n"
            + H
            + b"\r\n"
        )
        assert c.read_response().json()["target"] == "/pipe-good"
        r = c.read_response()
        assert r.status == 400, r
        assert c.wait_closed(2)
        assert not c.buf, f"bytes after the 400: {bytes(c.buf)!r}"
    time.sleep(0.1)
    assert shared_echo.snapshot()[2] == before[2] + 1
    assert shared_echo.last().target == "/pipe-good"


def test_bare_lf_request_answered_promptly(shared_proxy, shared_echo):
    """RFC 9112 §2.2: a recipient MAY accept a bare LF as line terminator. Either way the
    request gets an answer (served, or 400 and close) — not silence until a timeout."""
    with Conn(shared_proxy.port, timeout=2) as c:
        c.send(b"GET /lf-only HTTP/1.1\nHost: example.test\n\n")
        try:
            r = c.read_response()
        except TimeoutError:
            pytest.fail("no answer within 2s to a request with bare-LF line endings")
        if r.status != 200:
            assert r.status == 400, r
            assert c.wait_closed(2)
    assert_serving(shared_proxy.port)


def test_transfer_encoding_in_http10_request_closes(shared_proxy):
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request = faulty framing; the
    connection is closed after the message is processed (or the request is rejected)."""
    with Conn(shared_proxy.port, timeout=3) as c:
        c.send(
            b"POST /te10 HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        )
        r = c.read_response()
        assert r.status in (200, 400), r
        assert c.wait_closed(2), "connection kept open after a TE-framed HTTP/1.0 request"
    assert_serving(shared_proxy.port)
