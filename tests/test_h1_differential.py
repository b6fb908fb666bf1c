"""Differential test: proxycore's fast HTTP/1.1 head parser against h11, the reference.

For every input in the corpus both parsers must agree on accept/reject and, when both accept,
on method, target, version and the header fields. Where proxycore is deliberately stricter than
h11 (to close request-smuggling vectors that RFC 9112 allows rejecting), the case is listed in
STRICTER with the reason; the test checks h11 accepts it and we reject it, so the list cannot
silently go stale.
"""

from __future__ import annotations

import h11
import pytest

from proxycore.errors import HTTPParseError
from proxycore.h1.parse import parse_request_head

AGREE = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a?b=c&d HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Tab:\tv\t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n",
    b"DELETE /r HTTP/1.1\r\nHost: a\r\nCookie: a=b; c=d\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    # "_" in a name is a tchar (RFC 9110 §5.6.2): the codec's default keeps such fields; the
    # server's default drops them (ServerConf.headers_with_underscores, tests/test_underscores.py)
    b"GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    # rejected by both
    b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\x01X: y\r\n\r\n",
]

# input -> why we reject what h11 accepts
STRICTER = {
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n": "obs-fold (RFC 9112 §5.2 allows rejecting; the issue requires 400)",
    b"GET / HTTP/1.1\nHost: a\n\n": "bare LF line endings (RFC 9112 §2.2 'MAY' accept; a smuggling vector)",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n": "duplicate equal Content-Length (RFC 9112 §6.3 permits rejecting)",
    b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n": "Host that is not a valid authority (RFC 9112 §3.2: MUST respond 400)",
    b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n": "Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1: treat framing as faulty)",
    b"GET x HTTP/1.1\r\nHost: a\r\n\r\n": "request target in no valid form (RFC 9112 §3.2)",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n": "unsupported expectation answered 417 (RFC 9110 §10.1.1)",
    b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n": "fragment in the request target (RFC 9112 §3.2)",
    b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n": "absolute-form with a scheme other than http(s) (RFC 9112 §3.2.2)",
}


def _h11(data: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(ev, h11.Request):
        return None
    headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in ev.headers]
    target = ev.target.decode("latin-1")
    return ev.method.decode(), target, "HTTP/" + ev.http_version.decode(), headers


def _ours(data: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    try:
        req, _ = parse_request_head(data)
    except HTTPParseError:
        return None
    target = (
        req.path
        if req.authority is None or req.method == "CONNECT"
        else (f"{req.scheme}://{req.authority}{req.path}")
    )
    headers = [(n.lower(), v) for n, v in req.headers.items()]
    return req.method, target, req.version, headers


@pytest.mark.parametrize("data", AGREE, ids=range(len(AGREE)))
def test_agrees_with_h11(data: bytes) -> None:
    ref = _h11(data)
    ours = _ours(data)
    if ref is None or ours is None:
        assert ref is None and ours is None, (ref, ours)
        return
    assert ours[:3] == ref[:3]
    assert sorted(ours[3]) == sorted(ref[3])


@pytest.mark.parametrize("data", list(STRICTER), ids=list(STRICTER.values()))
def test_documented_stricter_than_h11(data: bytes) -> None:
    assert _h11(data) is not None, "h11 rejects this now: move it to AGREE"
    assert _ours(data) is None
