"""Request header fields with an underscore in the name (``--headers-with-underscores``), on
every backend, against an origin that maps ``_`` and ``-`` to the same variable as CGI/WSGI do:
the smuggling case ``Transfer_Encoding: chunked`` beside ``Content-Length``."""

from __future__ import annotations

import time

from conformance.client import Conn, build_request, chunked, get, request
from conformance.origins import EchoOrigin


class CgiStyleOrigin(EchoOrigin):
    """Frames request bodies as a CGI/WSGI gateway sees the fields: ``HTTP_TRANSFER_ENCODING``
    is Transfer-Encoding and Transfer_Encoding alike (and it wins over Content-Length)."""

    name = "cgi"

    def read_body(self, st, req, sock):
        real = req.headers
        req.headers = [(k.replace("_", "-"), v) for k, v in real]
        try:
            super().read_body(st, req, sock)
        finally:
            req.headers = real


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b"0\r\n\r\n" + SMUGGLED  # a complete chunked body, then a request of its own
ATTACK = (
    b"POST /front HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n"
    b"Content-Length: %d\r\nX_Api_Key: k\r\n\r\n%b" % (len(BODY), BODY)
)
DROP_LINE = (
    "dropped 2 request header field(s) with an underscore in the name "
    "(headers_with_underscores drop): Transfer_Encoding, X_Api_Key"
)


def send_attack(port):
    with Conn(port) as c:
        c.send(ATTACK)
        r = c.read_response()
        closed = c.wait_closed(1.0)
    return r, closed


def wait_stderr(p, text, timeout=3.0):
    deadline = time.monotonic() + timeout
    while text not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    return p.stderr()


def test_default_drops_them(backend, origins, proxy):
    origin = origins(CgiStyleOrigin)
    p = proxy(to=[origin.port])
    r, _ = send_attack(p.port)
    assert r.status == 200, r
    time.sleep(0.2)
    assert [q.target for q in origin.requests] == ["/front"]  # nothing smuggled
    seen = origin.last()
    assert seen.body == BODY, seen  # framed by Content-Length, as the proxy framed it
    assert "transfer_encoding" not in seen.header_names(), seen.headers
    assert "x_api_key" not in seen.header_names(), seen.headers
    assert DROP_LINE in wait_stderr(p, DROP_LINE)
    assert get(p.port, "/after").status == 200


def test_reject_answers_400_and_closes(backend, origins, proxy):
    origin = origins(CgiStyleOrigin)
    p = proxy(to=[origin.port], extra=["--headers-with-underscores", "reject"])
    r, closed = send_attack(p.port)
    assert r.status == 400 and r.header("connection") == "close", r
    assert closed
    time.sleep(0.2)
    assert origin.request_count == 0
    err = wait_stderr(p, "header field name with an underscore")
    assert "rejected request: header field name with an underscore: 'Transfer_Encoding'" in err
    assert get(p.port, "/fine", [("X-A", "b_c")]).status == 200  # values may hold "_"


def test_allow_forwards_them_and_this_origin_is_then_smuggled_to(backend, origins, proxy):
    # Why drop is the default: forwarded as is, the origin frames the body by Transfer_Encoding
    # and reads the rest of it as a request the proxy never saw.
    origin = origins(CgiStyleOrigin)
    p = proxy(to=[origin.port], extra=["--headers-with-underscores", "allow"])
    r, _ = send_attack(p.port)
    assert r.status == 200, r
    assert origin.wait_requests(2)
    assert [q.target for q in origin.requests] == ["/front", "/smuggled"]
    assert origin.requests[0].header("transfer_encoding") == "chunked"
    assert "dropped" not in p.stderr()


def test_request_trailers_too(backend, echo, proxy):
    body = chunked(b"hello", trailers=[("X_Sig", "s"), ("X-Ok", "1")])
    data = build_request("POST", "/t", [("Transfer-Encoding", "chunked")], body)
    p = proxy(to=[echo.port])
    assert request(p.port, data).status == 200
    assert echo.last().body == b"hello" and echo.last().trailers == [("X-Ok", "1")]
    p2 = proxy(to=[echo.port], extra=["--headers-with-underscores", "reject"])
    r = request(p2.port, data)
    assert r.status == 400, r
    assert echo.request_count == 1  # the origin got no end of that body: no request
