"""HTTP/1.0 clients and 1xx interim responses (RFC 9110 §15.2, RFC 9112 §9.3)."""

from __future__ import annotations

from conformance.client import Conn, build_request
from conformance.origins import InfoOrigin, pattern


def test_http10_client_closed_by_default(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("GET", "/ten", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["target"] == "/ten"
        assert c.wait_closed(2), "HTTP/1.0 connection without keep-alive was not closed"
    assert "transfer-encoding" not in r.header_names()


def test_http10_client_without_host(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("GET", "/nohost", version="HTTP/1.0", host=None))
        r = c.read_response()
    assert r.status == 200, r
    assert echo.last().target == "/nohost"


def test_http10_client_keepalive(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        for i in range(3):
            c.send(
                build_request("GET", f"/ka{i}", [("Connection", "keep-alive")], version="HTTP/1.0")
            )
            r = c.read_response()
            assert r.status == 200, r
            assert r.framing == "length", r
            assert "keep-alive" in r.connection_tokens(), (
                f"keep-alive response to HTTP/1.0 client lacks Connection: keep-alive: {r!r}"
            )
            assert c.is_open(0.2), "HTTP/1.0 keep-alive connection closed"
        assert r.json()["target"] == "/ka2"


def test_http10_keepalive_client_with_chunked_origin_gets_close_delimited(echo, echo_proxy):
    size = 50000
    with Conn(echo_proxy.port) as c:
        c.send(
            build_request(
                "GET", f"/chunked/{size}", [("Connection", "keep-alive")], version="HTTP/1.0"
            )
        )
        r = c.read_response()
        assert r.status == 200
        assert "transfer-encoding" not in r.header_names(), f"chunked to HTTP/1.0: {r!r}"
        assert r.body == pattern(size), r
        assert c.wait_closed(2)


def test_http10_post_with_body(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("POST", "/p10", body=b"0123456789", version="HTTP/1.0"))
        r = c.read_response()
    assert r.status == 200 and echo.last().body == b"0123456789"


def test_expect_100_continue_relayed(echo, echo_proxy):
    body = b"hello-after-100"
    with Conn(echo_proxy.port, timeout=3) as c:
        c.send(
            build_request(
                "POST", "/expect", [("Expect", "100-continue"), ("Content-Length", str(len(body)))]
            )
        )
        interim = c.read_head()  # TimeoutError here = no 100 Continue was relayed
        assert interim.status == 100, interim
        c.send(body)
        r = c.read_response()
    assert r.status == 200, r
    assert echo.last().body == body


def test_expect_100_continue_large_body(echo, echo_proxy):
    size = 2 << 20
    with Conn(echo_proxy.port, timeout=10) as c:
        c.send(
            build_request(
                "PUT", "/expect-big", [("Expect", "100-continue"), ("Content-Length", str(size))]
            )
        )
        interim = c.read_head()
        assert interim.status == 100, interim
        c.send(pattern(size))
        r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == size


def test_103_forwarded_to_http11_client(origins, proxy):
    o = origins(InfoOrigin)
    p = proxy(to=[o.port])
    with Conn(p.port) as c:
        c.send(build_request("GET", "/hints"))
        r = c.read_response()
        assert r.status == 200, r
        assert [i.status for i in r.informational] == [103], r.informational
        assert r.informational[0].header("link") == "</style.css>; rel=preload"
        c.send(build_request("GET", "/again"))
        r2 = c.read_response()
        assert r2.status == 200 and [i.status for i in r2.informational] == [103]


def test_1xx_not_sent_to_http10_client(origins, proxy):
    o = origins(InfoOrigin)
    p = proxy(to=[o.port])
    with Conn(p.port) as c:
        c.send(build_request("GET", "/hints10", version="HTTP/1.0"))
        r = c.read_response()
    assert r.informational == [], f"1xx sent to an HTTP/1.0 client: {r.informational}"
    assert r.status == 200
