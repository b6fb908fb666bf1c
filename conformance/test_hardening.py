"""HTTP/1.1 behaviours that outside probes found wrong (issue 14, items 1-5 and 11).

* a ``Connection`` option never removes Host or Content-Length (RFC 9110 §7.6.1 vs §3.2);
* a malformed end of a chunked body (bare LF, bad trailers) is answered at once: 400 for a
  request, a truncated response for an origin's body — never a wait for a timeout;
* an origin that answers before reading the request body (RFC 9112 §9.5) is relayed, the
  client connection closed after it, and the backend not counted as failed;
* an absolute-form target with a scheme other than http/https is 400;
* bytes that cannot begin a request line are 400 and close at once (leading CRLFs are fine);
* log lines name what went wrong in words, never an exception's repr.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from conformance.client import Closed, Conn, build_request, chunked, get, request
from conformance.origins import (
    EchoOrigin,
    RawOrigin,
    ResetOrigin,
    free_port,
)

MiB = 1 << 20
H = b"Host: example.test\r\n"


def _header(j: dict, name: str) -> list[str]:
    return [v for k, v in j["headers"] if k.lower() == name]


def _wait_for(p, text: str, timeout: float = 3.0) -> str:
    """The proxy's stderr once it contains ``text`` (or at the deadline)."""
    deadline = time.monotonic() + timeout
    err = p.stderr()
    while text not in err and time.monotonic() < deadline:
        time.sleep(0.02)
        err = p.stderr()
    return err


# ------------------------------------------------------------------ 1. Connection vs Host


def test_connection_option_cannot_strip_host(echo, echo_proxy):
    r = request(echo_proxy.port, build_request("GET", "/echo", [("Connection", "host")]))
    assert r.status == 200, r
    assert _header(r.json(), "host") == ["example.test"], r.json()["headers"]


def test_connection_option_cannot_strip_request_content_length(echo, echo_proxy):
    body = b"x" * 1000
    raw = build_request("POST", "/cl", [("Connection", "content-length, host")], body)
    r = request(echo_proxy.port, raw)
    assert r.status == 200, r
    j = r.json()
    assert j["body_len"] == len(body) and _header(j, "host") == ["example.test"], j


def test_connection_option_cannot_strip_response_content_length(origins, proxy):
    o = origins(
        RawOrigin,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello",
        close=False,
    )
    p = proxy(to=[o.port])
    with Conn(p.port, timeout=3) as c:
        for i in range(2):  # the second response proves the framing held on keep-alive
            c.send(build_request("GET", f"/r{i}"))
            r = c.read_response()
            assert r.status == 200 and r.framing == "length" and r.body == b"hello", r


# ------------------------------------------------------------------ 2. chunked framing errors

BAD_CHUNKED_ENDS = {
    "bare-lf-after-last-chunk": b"5\r\nhello\r\n0\n\n",
    "bare-lf-ends-trailers": b"5\r\nhello\r\n0\r\n\n",
    "bare-lf-in-trailer-line": b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
    "bare-cr-ends-trailers": b"5\r\nhello\r\n0\r\n\rX",
    "obs-fold-in-trailers": b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n",
    "bare-lf-after-chunk-size": b"5\nhello\r\n0\r\n\r\n",
    "ctl-in-chunk-extension": b"5;a\x01b",
    "chunk-size-of-17-digits": b"00000000000000005",
}


@pytest.mark.parametrize("tail", BAD_CHUNKED_ENDS.values(), ids=BAD_CHUNKED_ENDS.keys())
def test_malformed_chunked_request_answered_at_once(echo, echo_proxy, tail):
    """No wait for client_body_timeout (60 s): 400 and close, like every framing error."""
    head = b"POST /chunked HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(head + tail)  # and nothing more: the connection stays open on our side
        try:
            r = c.read_response()
        except TimeoutError:
            pytest.fail("no answer within 3s to a malformed chunked body")
        assert r.status == 400, r
        assert c.wait_closed(2), "connection left open after 400"
    assert echo.request_count == 0, "a request with a malformed body reached the origin whole"


@pytest.mark.parametrize(
    "tail",
    [b"5\r\nhello\r\n0\n\n", b"5\r\nhello\r\n0\r\n\n", b"5\nhello\r\n0\r\n\r\n"],
    ids=["bare-lf-after-last-chunk", "bare-lf-ends-trailers", "bare-lf-after-chunk-size"],
)
def test_malformed_chunked_response_truncated_at_once(origins, proxy, tail):
    """An origin's bad chunk framing ends the response at once (no final chunk: the client
    sees it incomplete), while the origin keeps the connection open."""
    o = origins(
        RawOrigin, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, close=False
    )
    p = proxy(to=[o.port])
    with Conn(p.port, timeout=3) as c:
        c.send(build_request("GET", "/bad-chunks"))
        try:
            r = c.read_response()
        except TimeoutError:
            pytest.fail("the response neither ended nor was cut within 3s")
        except Closed:
            return  # cut before the head: also a clean error
        assert not r.complete, r
        assert b"".join(r.body.split()) in (b"", b"hello"), r
    assert "invalid" in _wait_for(p, "invalid chunk")


def test_chunked_request_still_forwarded(echo, echo_proxy):
    """The strictness does not cost valid bodies split anywhere, trailers included."""
    body = b"abcdefghij" * 50
    raw = build_request("POST", "/ok", [("Transfer-Encoding", "chunked")]) + chunked(
        body, 7, [("X-T", "1")]
    )
    with Conn(echo_proxy.port, timeout=3) as c:
        for i in range(0, len(raw), 5):
            c.send(raw[i : i + 5])
        r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == len(body), r


# ------------------------------------------------------------------ 3. early responses


class EarlyAnswerOrigin(EchoOrigin):
    """Answers a POST right after its head with 413 + Connection: close, and closes without
    reading the body (as Python's http.server does): the kernel resets the connection, so the
    proxy's writes of the body fail while the answer waits in its receive buffer. Other
    requests get the echo."""

    name = "early"

    def read_body(self, st, req, sock):
        if req.method != "POST":
            super().read_body(st, req, sock)

    def respond(self, sock, req):
        if req.method != "POST":
            return super().respond(sock, req)
        sock.sendall(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 4\r\nConnection: close\r\n\r\nbig!"
        )
        return False  # the connection is closed with the body unread


def _post_big(port: int, size: int, target: str = "/upload", wait_close: bool = True):
    """POST ``size`` bytes, sending from a thread while this one reads the answer; returns
    (response, closed after it) (``wait_close=False``: not waited for, None)."""
    c = Conn(port, timeout=10)
    raw = build_request("POST", target, [("Content-Length", str(size))])
    sender = threading.Thread(target=c.try_send, args=(raw + b"a" * size,), daemon=True)
    sender.start()
    try:
        r = c.read_response()
        closed = c.wait_closed(3) if wait_close else None
    finally:
        c.close()
        sender.join(10)
    return r, closed


def test_early_response_relayed_not_502(origins, proxy):
    """RFC 9112 §9.5: the origin's answer before the body is complete reaches the client
    every time, with Connection: close, and the connection is closed after it."""
    o = origins(EarlyAnswerOrigin)
    p = proxy(to=[o.port])
    for i in range(5):
        r, closed = _post_big(p.port, 8 * MiB, f"/upload{i}")
        assert r.status == 413 and r.body == b"big!", f"attempt {i}: {r!r}"
        assert "close" in r.connection_tokens(), r
        assert closed, "client connection left open after an early response"
    err = p.stderr()
    assert "upstream error" not in err and "Broken" not in err, err[-2000:]
    r = get(p.port, "/after")
    assert r.status == 200, r


def test_early_response_does_not_count_against_the_backend(origins, proxy):
    """With --eject-after 1, one failure would eject the backend: early answers are not
    failures, so requests keep alternating between the two backends."""
    early = origins(EarlyAnswerOrigin)
    echo = origins(EchoOrigin)
    p = proxy(to=[early.port, echo.port], extra=["--lb", "round_robin", "--eject-after", "1"])
    # (the keep-alive 200s would hold each post for wait_closed's 3 s: not waited for)
    statuses = [_post_big(p.port, 4 * MiB, f"/up{i}", wait_close=False)[0].status for i in range(6)]
    assert sorted(statuses) == [200] * 3 + [413] * 3, statuses
    before = early.snapshot()[1]
    for i in range(4):
        assert get(p.port, f"/next{i}").status == 200
    assert early.snapshot()[1] == before + 2, "the backend that answered early was ejected"
    assert "ejected" not in p.stderr()


def test_small_early_response_body_skipped_on_keep_alive(origins, proxy):
    """A small unread remainder is discarded and the connection carries on (when the origin
    read nothing, the close is announced)."""
    o = origins(EarlyAnswerOrigin)
    p = proxy(to=[o.port])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("POST", "/small", [("Content-Length", "1000")]) + b"a" * 1000)
        r = c.read_response()
        assert r.status == 413 and r.body == b"big!", r
        if "close" in r.connection_tokens():
            assert c.wait_closed(2)
        else:
            c.send(build_request("GET", "/next"))
            assert c.read_response().status == 200


# ------------------------------------------------------------------ 4. absolute-form schemes


@pytest.mark.parametrize("target", ["ftp://other.test/x", "gopher://other.test/", "ws://a/b"])
def test_absolute_form_with_other_scheme_is_400(echo, echo_proxy, target):
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 400, r
        assert c.wait_closed(2)
    assert echo.snapshot()[1] == 0, "the request went upstream"


def test_absolute_form_http_still_served(echo, echo_proxy):
    r = request(echo_proxy.port, b"GET HTTP://Other.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert r.status == 200, r
    assert _header(r.json(), "host") == ["Other.test"], r.json()["headers"]


# ------------------------------------------------------------------ 5. garbage after a request

GARBAGE = {
    "nul": b"\x00",
    "tls-client-hello": b"\x16\x03\x01\x02\x00",
    "space": b" ",
    "bare-cr": b"\r\r",
    "lowercase-version": b"GET / http/1.1",
    "bad-request-line": b"GET /\x7f HTTP/1.1\r\n",
    "method-then-ctl": b"GET\x01",
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_after_a_request_is_400_at_once(echo, echo_proxy, garbage):
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(build_request("GET", "/first"))
        assert c.read_response().status == 200
        c.send(garbage)  # and nothing more: no CRLFCRLF will ever come
        t0 = time.monotonic()
        try:
            r = c.read_response()
        except TimeoutError:
            pytest.fail(f"no answer to {garbage!r} on a keep-alive connection")
        assert r.status == 400, r
        assert c.wait_closed(2), "connection left open after 400"
        assert time.monotonic() - t0 < 2.5  # not the header timeout (5 s here)


def test_garbage_pipelined_after_a_request(echo, echo_proxy):
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(build_request("GET", "/first") + b"\x00")
        assert c.read_response().status == 200
        assert c.read_response().status == 400
        assert c.wait_closed(2)


def test_garbage_as_first_bytes_is_400_at_once(echo, echo_proxy):
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(b"\x00")
        r = c.read_response()
        assert r.status == 400, r
        assert c.wait_closed(2)


def test_leading_empty_lines_still_allowed(echo, echo_proxy):
    """RFC 9112 §2.2: empty lines before a request line are ignored, also split across
    reads and after a complete request."""
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(b"\r\n\r")
        time.sleep(0.05)
        c.send(b"\n" + build_request("GET", "/a"))
        assert c.read_response().status == 200
        c.send(b"\r")
        time.sleep(0.05)
        c.send(b"\n\r\n")
        time.sleep(0.05)
        c.send(build_request("GET", "/b"))
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/b", r
        assert c.is_open(0.2)


def test_request_line_split_across_reads_still_served(echo, echo_proxy):
    raw = build_request("GET", "/split?q=1", [("X-A", "b")])
    with Conn(echo_proxy.port, timeout=3) as c:
        for i in range(len(raw)):
            c.send(raw[i : i + 1])
            if i % 8 == 0:
                time.sleep(0.002)  # separate reads, most of the time
        r = c.read_response()
    assert r.status == 200 and r.json()["target"] == "/split?q=1", r


# ------------------------------------------------------------------ 11. log lines in words

_REPR = re.compile(r"\w+Error\(|\[Errno|Errno \d|Error: \[|errno", re.IGNORECASE)


def _assert_words(err: str) -> None:
    bad = [ln for ln in err.splitlines() if _REPR.search(ln)]
    assert not bad, "exception reprs in log lines:\n" + "\n".join(bad)


def test_log_connect_refused_in_words(proxy):
    port = free_port()
    p = proxy(to=[port])
    assert get(p.port, "/refused").status == 502
    text = f"upstream 127.0.0.1:{port} refused the connection"
    err = _wait_for(p, text)
    assert text in err, err[-2000:]
    _assert_words(err)


def test_log_reset_mid_response_in_words(origins, proxy):
    o = origins(ResetOrigin, mode="mid_body_length")
    p = proxy(to=[o.port])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/reset"))
        r = c.read_response()
        assert not r.complete
    text = f"upstream 127.0.0.1:{o.port} reset the connection while the response body"
    err = _wait_for(p, text)
    assert text in err, err[-2000:]
    _assert_words(err)


def test_log_closed_before_answering_in_words(origins, proxy):
    o = origins(ResetOrigin, mode="eof_before_head")
    p = proxy(to=[o.port])
    assert get(p.port, "/eof").status == 502
    text = f"upstream 127.0.0.1:{o.port} closed the connection before sending a response"
    err = _wait_for(p, text)
    assert text in err, err[-2000:]
    _assert_words(err)


class HangUpOrigin(EchoOrigin):
    """Reads a POST's head and resets the connection without answering."""

    name = "hangup"

    def read_body(self, st, req, sock):
        pass

    def respond(self, sock, req):
        from conformance.origins import rst_close

        rst_close(sock)
        return False


def test_log_upstream_gone_while_body_sent_in_words(origins, proxy):
    o = origins(HangUpOrigin)
    p = proxy(to=[o.port])
    r, _ = _post_big(p.port, 8 * MiB)
    assert r.status == 502, r
    text = f"upstream 127.0.0.1:{o.port} "
    err = _wait_for(p, "while the request body was being sent")
    assert "while the request body was being sent" in err and text in err, err[-2000:]
    _assert_words(err)
