"""Message exchange: keep-alive, pipelining, bodies (length, chunked, close-delimited),
HEAD/204/304, absolute-form targets, streaming (RFC 9110, RFC 9112)."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx

from conformance.client import Conn, assert_serving, build_request, chunked, get
from conformance.origins import (
    EchoOrigin,
    Http10Origin,
    SlowOrigin,
    pattern,
    pattern_chunks,
    pattern_sha256,
)

MiB = 1 << 20


def test_simple_get(echo, echo_proxy):
    r = get(echo_proxy.port, "/x?q=1")
    assert r.status == 200, r
    seen = echo.last()
    assert seen.method == "GET"
    assert seen.target == "/x?q=1"
    assert seen.header("host") == "example.test"
    assert r.json()["target"] == "/x?q=1"


def test_keepalive_several_requests(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        for i in range(5):
            c.send(build_request("GET", f"/k{i}"))
            r = c.read_response()
            assert r.status == 200, r
            assert r.json()["target"] == f"/k{i}"
            assert "close" not in r.connection_tokens(), r
        assert c.is_open(0.3), "proxy closed a keep-alive connection after 5 requests"
    assert [q.target for q in echo.requests] == [f"/k{i}" for i in range(5)]


def test_pipelined_requests_answered_in_order(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(b"".join(build_request("GET", f"/p{i}") for i in range(1, 4)))
        for i in range(1, 4):
            r = c.read_response()
            assert r.status == 200, r
            assert r.json()["target"] == f"/p{i}", f"response {i} out of order: {r!r}"
        assert c.is_open(0.2)


def test_pipelined_slow_first_response_keeps_order(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(
            build_request("GET", "/delay/0.4")
            + build_request("GET", "/fast1")
            + build_request("GET", "/fast2")
        )
        got = [c.read_response().json()["target"] for _ in range(3)]
    assert got == ["/delay/0.4", "/fast1", "/fast2"]


def test_pipelined_with_bodies(echo, echo_proxy):
    reqs = [
        build_request("POST", "/a", body=b"first-body"),
        build_request("GET", "/b"),
        build_request(
            "PUT", "/c", [("Transfer-Encoding", "chunked")], body=chunked(b"third-body", 4)
        ),
    ]
    with Conn(echo_proxy.port) as c:
        c.send(b"".join(reqs))
        got = [c.read_response().json() for _ in range(3)]
    assert [(g["method"], g["target"], g["body"]) for g in got] == [
        ("POST", "/a", "first-body"),
        ("GET", "/b", ""),
        ("PUT", "/c", "third-body"),
    ]


def test_post_content_length_body(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(
            build_request("POST", "/post", [("Content-Type", "text/plain")], body=b"hello world")
        )
        r = c.read_response()
    assert r.status == 200, r
    assert echo.last().body == b"hello world"
    assert echo.last().header("content-length") == "11"


def test_large_request_body_content_length(echo, echo_proxy):
    size = 8 * MiB
    with Conn(echo_proxy.port, timeout=20) as c:
        c.send(build_request("POST", "/up", [("Content-Length", str(size))]))
        for piece in pattern_chunks(size):
            c.send(piece)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["body_len"] == size
    assert r.json()["body_sha256"] == pattern_sha256(size)


def test_large_response_body_content_length(echo, echo_proxy):
    size = 16 * MiB
    with Conn(echo_proxy.port, timeout=20) as c:
        c.send(build_request("GET", f"/bytes/{size}"))
        r = c.read_response(keep_body=False)
    assert r.status == 200
    assert r.header("content-length") == str(size)
    assert r.complete and r.body_len == size
    assert r.sha256 == pattern_sha256(size)


def test_request_body_is_streamed(echo, echo_proxy):
    """The upstream sees the request head before the client finished sending the body."""
    size = MiB
    data = pattern(size)
    with Conn(echo_proxy.port, timeout=10) as c:
        c.send(build_request("POST", "/stream-up", [("Content-Length", str(size))]))
        c.send(data[: 256 * 1024])
        streamed = echo.head_event.wait(3)
        c.send(data[256 * 1024 :])
        r = c.read_response()
    assert streamed, (
        "upstream did not receive the request head while the body was incomplete "
        "(request body buffered instead of streamed)"
    )
    assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_response_body_is_streamed(origins, proxy):
    """The client gets the first body bytes before the origin sends the rest."""
    slow = origins(SlowOrigin, chunk_delay=1.0, chunks=3, piece=1000)
    p = proxy(to=[slow.port])
    with Conn(p.port, timeout=10) as c:
        t0 = time.monotonic()
        c.send(build_request("GET", "/slow"))
        head = c.read_head()
        assert head.status == 200
        while len(c.buf) < 1000:
            if not c._fill():
                break
        first = time.monotonic() - t0
        c.read_body(head)
    assert first < 0.8, f"first 1000 body bytes took {first:.2f}s (origin sent them at once)"
    assert head.complete and head.body == pattern(3000)


def test_chunked_request_body(echo, echo_proxy):
    body = pattern(300000)
    with Conn(echo_proxy.port, timeout=10) as c:
        c.send(build_request("POST", "/chunked-up", [("Transfer-Encoding", "chunked")]))
        c.send(chunked(body, 7000))
        r = c.read_response()
    assert r.status == 200, r
    assert echo.last().body == body


def test_chunked_request_trailers_forwarded(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(
            build_request(
                "POST",
                "/trail-up",
                [("Transfer-Encoding", "chunked"), ("Trailer", "X-Req-Trailer")],
            )
        )
        c.send(chunked(b"abcdef", 3, trailers=[("X-Req-Trailer", "tv")]))
        r = c.read_response()
    assert r.status == 200, r
    seen = echo.last()
    assert seen.body == b"abcdef"
    assert ("X-Req-Trailer", "tv") in seen.trailers, (
        f"request trailer not forwarded upstream; upstream saw trailers={seen.trailers} "
        f"chunked={seen.chunked}"
    )


def test_chunked_response_with_trailers(echo, echo_proxy):
    size = 300000
    with Conn(echo_proxy.port) as c:
        c.send(build_request("GET", f"/chunked/{size}", [("TE", "trailers")]))
        r = c.read_response()
        assert c.is_open(0.2)
    assert r.status == 200, r
    assert r.framing == "chunked" and r.complete, r
    assert r.body == pattern(size)
    assert ("x-checksum", pattern_sha256(size)) in [(k.lower(), v) for k, v in r.trailers], (
        f"response trailers not forwarded: {r.trailers}"
    )


def test_large_chunked_both_ways(echo, echo_proxy):
    up = 4 * MiB
    down = 8 * MiB
    with Conn(echo_proxy.port, timeout=20) as c:
        c.send(build_request("POST", "/big-chunked", [("Transfer-Encoding", "chunked")]))
        for piece in pattern_chunks(up):
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.json()["body_sha256"] == pattern_sha256(up)
        c.send(build_request("GET", f"/chunked/{down}"))
        r = c.read_response(keep_body=False)
    assert r.framing == "chunked" and r.complete and r.body_len == down
    assert r.sha256 == pattern_sha256(down)


def test_read_until_close_origin_to_http11_client(origins, proxy):
    size = 200000
    o = origins(Http10Origin, size=size)
    p = proxy(to=[o.port])
    with Conn(p.port) as c:
        c.send(build_request("GET", "/old"))
        r = c.read_response()
        assert r.status == 200
        assert r.complete and r.body == pattern(size), r
        assert r.framing == "chunked", (
            f"close-delimited upstream body should reach an HTTP/1.1 client chunked; got {r!r}"
        )
        # the client connection survives: a second request on it works
        c.send(build_request("GET", "/old2"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == pattern(size)


def test_read_until_close_origin_to_http10_client(origins, proxy):
    size = 200000
    o = origins(Http10Origin, size=size)
    p = proxy(to=[o.port])
    with Conn(p.port) as c:
        c.send(build_request("GET", "/old", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200
        assert "transfer-encoding" not in r.header_names(), (
            f"chunked sent to an HTTP/1.0 client: {r!r}"
        )
        assert r.body == pattern(size), r
        assert c.wait_closed(2)


def test_head_keeps_content_length_and_sends_no_body(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("HEAD", "/bytes/1234"))
        r = c.read_response("HEAD")
        assert r.status == 200
        assert r.header("content-length") == "1234", r
        # no body bytes may follow: the next response on the connection must parse cleanly
        c.send(build_request("GET", "/after-head"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/after-head", r2
    assert echo.requests[0].method == "HEAD"


def test_head_of_chunked_resource(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("HEAD", "/chunked/5000"))
        r = c.read_response("HEAD")
        assert r.status == 200
        c.send(build_request("GET", "/after-head"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/after-head", r2


def test_204_and_304_have_no_body(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        for status in (204, 304):
            c.send(build_request("GET", f"/status/{status}"))
            r = c.read_response()
            assert r.status == status
            assert "transfer-encoding" not in r.header_names(), r
            assert r.header("content-length") in (None, "0"), r
        c.send(build_request("GET", "/after"))
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/after", (
            f"bytes after a 204/304 response: {r!r}"
        )


def test_absolute_form_target(echo, echo_proxy):
    r = get(echo_proxy.port, "http://example.com/x?y=1", [("Host", "example.com")])
    assert r.status == 200, r
    seen = echo.last()
    assert seen.target == "/x?y=1", f"upstream got target {seen.target!r}"
    assert seen.header_all("host") == ["example.com"]


def test_absolute_form_overrides_host_header(echo, echo_proxy):
    """RFC 9112 §3.2.2: with an absolute-form target the Host header is replaced by the
    target's authority."""
    r = get(echo_proxy.port, "http://example.com:8080/x", [("Host", "other.test")])
    assert r.status == 200, r
    seen = echo.last()
    assert seen.target == "/x"
    assert seen.header_all("host") == ["example.com:8080"], seen.headers


def test_absolute_form_empty_path(echo, echo_proxy):
    r = get(echo_proxy.port, "http://example.com", [("Host", "example.com")])
    assert r.status == 200, r
    assert echo.last().target == "/"


def test_httpx_client_keepalive_and_stream(echo, echo_proxy):
    base = f"http://127.0.0.1:{echo_proxy.port}"
    with httpx.Client(base_url=base, trust_env=False, timeout=10) as cl:
        for i in range(3):
            r = cl.post(f"/h{i}", content=b"x" * i * 1000)
            assert r.status_code == 200
            assert r.json()["body_len"] == i * 1000
        h = hashlib.sha256()
        n = 0
        with cl.stream("GET", f"/chunked/{2 * MiB}") as r:
            for chunk in r.iter_bytes():
                h.update(chunk)
                n += len(chunk)
        assert n == 2 * MiB and h.hexdigest() == pattern_sha256(2 * MiB)
    assert echo.accepts <= 2


def test_concurrent_clients(echo, echo_proxy):
    errors = []

    def worker(k):
        try:
            with Conn(echo_proxy.port, timeout=10) as c:
                for i in range(5):
                    c.send(build_request("POST", f"/w{k}/{i}", body=b"%d" % i))
                    r = c.read_response()
                    assert r.json()["target"] == f"/w{k}/{i}"
        except Exception as e:
            errors.append(f"{k}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert_serving(echo_proxy.port)


def test_duplicate_end_to_end_headers_keep_order(echo, echo_proxy):
    r = get(echo_proxy.port, "/dup", [("X-Dup", "a"), ("X-Other", "o"), ("X-Dup", "b")])
    assert r.status == 200
    assert echo.last().header_all("x-dup") == ["a", "b"]


def test_origin_class_is_extensible():
    """Sanity check of the suite itself: origins start and stop on 127.0.0.1."""
    o = EchoOrigin(name="selftest")
    try:
        with Conn(o.port) as c:
            c.send(build_request("GET", "/self"))
            assert c.read_response().json()["target"] == "/self"
    finally:
        o.stop()
