"""Robustness: concurrency without cross-talk, connection reuse after errors and aborts,
deep pipelines."""

from __future__ import annotations

import threading
import time

from conformance.client import Conn, assert_serving, build_request, get
from conformance.origins import EchoOrigin, ResetOrigin, pattern_chunks, pattern_sha256

MiB = 1 << 20


class MixedOrigin(EchoOrigin):
    """Echo origin that resets mid-body on /rst-mid."""

    def respond(self, sock, req):
        if req.path == "/rst-mid":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.2)
            from conformance.origins import rst_close

            rst_close(sock)
            return False
        return super().respond(sock, req)


def test_concurrent_mixed_requests_no_crosstalk(echo, echo_proxy):
    errors = []

    def worker(k):
        try:
            with Conn(echo_proxy.port, timeout=15) as c:
                for i in range(8):
                    rid = f"{k}-{i}"
                    if i % 4 == 0:  # pipelined pair
                        c.send(
                            build_request("GET", f"/id/{rid}/a")
                            + build_request("POST", f"/id/{rid}/b", body=rid.encode())
                        )
                        a, b = c.read_response(), c.read_response()
                        assert a.json()["target"] == f"/id/{rid}/a", a
                        assert b.json()["target"] == f"/id/{rid}/b", b
                        assert b.json()["body"] == rid
                    elif i % 4 == 1:
                        c.send(build_request("GET", f"/chunked/{10000 + k}"))
                        r = c.read_response()
                        assert r.body_len == 10000 + k and r.complete, r
                    else:
                        c.send(build_request("PUT", f"/id/{rid}", body=b"z" * (k * 100 + i)))
                        r = c.read_response()
                        assert r.json()["target"] == f"/id/{rid}", r
                        assert r.json()["body_len"] == k * 100 + i
        except Exception as e:
            errors.append(f"worker {k}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert_serving(echo_proxy.port)


def test_upstream_reset_mid_body_then_next_requests_fine(origins, proxy):
    o = origins(MixedOrigin)
    p = proxy(to=[o.port])
    assert get(p.port, "/before").status == 200
    with Conn(p.port) as c:
        c.send(build_request("GET", "/rst-mid"))
        r = c.read_response()
        assert not r.complete, r
    for i in range(5):
        r = get(p.port, f"/after{i}")
        assert r.status == 200 and r.json()["target"] == f"/after{i}", r


def test_client_abort_mid_response_then_next_requests_fine(echo, echo_proxy):
    with Conn(echo_proxy.port, timeout=5, rcvbuf=65536) as c:
        c.send(build_request("GET", f"/bytes/{16 * MiB}"))
        c.read_head()
        while len(c.buf) < 100_000:
            c._fill(65536)
    time.sleep(0.3)
    for i in range(5):
        r = get(echo_proxy.port, f"/after-abort{i}")
        assert r.status == 200 and r.json()["target"] == f"/after-abort{i}", r
    echo_proxy.check_alive()


def test_client_abort_mid_request_body_then_next_requests_fine(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("POST", "/partial-upload", [("Content-Length", str(MiB))]))
        c.send(b"y" * 100_000)
        time.sleep(0.2)
    time.sleep(0.3)
    for i in range(5):
        r = get(echo_proxy.port, f"/after-partial{i}")
        assert r.status == 200 and r.json()["target"] == f"/after-partial{i}", r
    assert all(q.target != "/partial-upload" for q in echo.requests), (
        "a partial request body was completed upstream"
    )


def test_deep_pipeline(echo, echo_proxy):
    n = 100
    with Conn(echo_proxy.port, timeout=10) as c:
        c.send(b"".join(build_request("GET", f"/deep{i}") for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.json()["target"] == f"/deep{i}", r
        assert c.is_open(0.2)


def test_pipeline_of_large_responses_flow_controlled(echo, proxy):
    """20 pipelined 2 MiB responses, read only after all were sent: all arrive, in order,
    and the proxy does not buffer them all."""
    p = proxy(to=[echo.port])
    base = p.rss_kib()
    peak = base
    size = 2 * MiB
    with Conn(p.port, timeout=15, rcvbuf=65536) as c:
        c.send(b"".join(build_request("GET", f"/bytes/{size}?n={i}") for i in range(20)))
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            peak = max(peak, p.rss_kib())
            time.sleep(0.1)
        for i in range(20):
            r = c.read_response(keep_body=False)
            assert r.status == 200 and r.complete and r.body_len == size, (i, r)
            if i % 5 == 0:
                peak = max(peak, p.rss_kib())
    assert r.sha256 == pattern_sha256(size)
    assert (peak - base) / 1024 < 24, f"RSS grew {(peak - base) / 1024:.1f} MiB"


def test_reset_origin_does_not_poison_pool(origins, proxy):
    """Two upstreams round robin, one resets every connection: the healthy one keeps
    answering correctly (no response mix-up)."""
    good = origins(EchoOrigin, name="good")
    bad = origins(ResetOrigin, mode="before_head")
    p = proxy(to=[good.port, bad.port])
    statuses = []
    for i in range(6):
        r = get(p.port, f"/mix{i}")
        statuses.append(r.status)
        if r.status == 200:
            assert r.json()["target"] == f"/mix{i}"
    assert set(statuses) <= {200, 502}, statuses
    assert statuses.count(200) >= 3, statuses


def test_upload_streamed_in_small_writes(echo, echo_proxy):
    size = 2 * MiB
    with Conn(echo_proxy.port, timeout=15) as c:
        c.send(build_request("POST", "/small-writes", [("Content-Length", str(size))]))
        for piece in pattern_chunks(size, 4096):
            c.send(piece)
        r = c.read_response()
    assert r.json()["body_sha256"] == pattern_sha256(size)


class EarlyResponseOrigin(EchoOrigin):
    """Answers 413 + Connection: close without reading the request body."""

    def read_body(self, st, req, sock):
        pass

    def respond(self, sock, req):
        sock.sendall(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
        )
        time.sleep(0.3)
        return False


def test_early_upstream_response_relayed(origins, proxy):
    """RFC 9112 §9.3: a server may answer before the request body is complete; the proxy
    relays that response (and does not reuse the client connection mid-body)."""
    o = origins(EarlyResponseOrigin)
    p = proxy(to=[o.port])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("POST", "/early", [("Content-Length", "1000")]) + b"a" * 1000)
        r = c.read_response()
    assert r.status == 413 and r.body == b"big!", r
    p.check_alive()
