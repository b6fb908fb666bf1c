"""The command-line flags for ServerConf settings take effect, on every backend:
``--max-request-body-size`` (413 above it, declared or streamed), ``--client-body-timeout``
(408 when a request body stalls) and ``--send-timeout`` (a client that stops reading a response
is cut off). Each is checked against the default, so a flag that does nothing fails."""

from __future__ import annotations

import time

from conformance.client import Conn, build_request, chunked, request

MiB = 1 << 20


def test_max_request_body_size(echo, proxy):
    p = proxy(to=[echo.port], extra=["--max-request-body-size", "1k"])
    assert request(p.port, build_request("POST", "/at-limit", body=b"x" * 1024)).status == 200
    declared = request(p.port, build_request("POST", "/declared", body=b"x" * 1025))
    assert declared.status == 413, declared
    streamed = build_request(
        "POST", "/streamed", [("Transfer-Encoding", "chunked")], body=chunked(b"y" * 3000)
    )
    assert request(p.port, streamed).status == 413
    assert [q.target for q in echo.requests] == ["/at-limit"]
    unlimited = proxy(to=[echo.port], extra=["--max-request-body-size", "none"])
    assert request(unlimited.port, build_request("POST", "/big", body=b"z" * MiB)).status == 200


def _stalled_body(port: int, wait: float) -> tuple[bytes, float, bool]:
    """Declare 100 body bytes, send 10, wait: (what came back, after how long, closed)."""
    with Conn(port, timeout=5) as c:
        c.send(build_request("POST", "/stall", [("Content-Length", "100")]) + b"0123456789")
        t0 = time.monotonic()
        closed = c.wait_closed(wait)
        return bytes(c.buf), time.monotonic() - t0, closed


def test_client_body_timeout(echo, proxy):
    p = proxy(to=[echo.port], extra=["--client-body-timeout", "0.4"])
    answer, took, closed = _stalled_body(p.port, 3)
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert took < 2.5, f"stalled body answered after {took:.2f}s (timeout 0.4)"
    default = proxy(to=[echo.port])  # 60 s: still waiting for the body
    answer, _, closed = _stalled_body(default.port, 1)
    assert not closed and answer == b"", answer[:80]


def _unread_response(port: int, wait: float) -> tuple[int, bool]:
    """Ask for 16 MiB (more than the socket buffers on the way hold), read nothing for ``wait``
    seconds, then read to the end: (bytes received, whether the whole response arrived)."""
    size = 16 * MiB
    with Conn(port, timeout=5, rcvbuf=65536) as c:
        c.send(build_request("GET", f"/bytes/{size}"))
        time.sleep(wait)
        got = 0
        try:
            while got < size and c._fill(1 << 20):
                got += len(c.buf)
                c.buf.clear()
        except TimeoutError:
            pass
        return got, got >= size


def test_send_timeout(echo, proxy):
    p = proxy(to=[echo.port], extra=["--send-timeout", "0.3"])
    got, complete = _unread_response(p.port, 1.0)
    assert not complete, f"a client that did not read for 1 s got all {got} bytes"
    default = proxy(to=[echo.port])
    got, complete = _unread_response(default.port, 1.0)
    assert complete, f"with the default send timeout only {got} bytes arrived"
