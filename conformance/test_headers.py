"""Header handling: hop-by-hop removal both ways (RFC 9110 §7.6.1) and X-Forwarded-*."""

from __future__ import annotations

from conformance.client import Conn, build_request, get

HOP_REQUEST_HEADERS = [
    ("Connection", "X-Hop-Req, keep-alive"),
    ("X-Hop-Req", "secret"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Upgrade", "foo/2"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Proxy-Authenticate", "Basic"),
    ("X-End-To-End", "keep-me"),
]
HOP_NAMES = {
    "x-hop-req",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
}


def test_hop_by_hop_request_headers_removed(echo, echo_proxy):
    r = get(echo_proxy.port, "/hop-req", HOP_REQUEST_HEADERS)
    assert r.status == 200, r
    seen = echo.last()
    leaked = HOP_NAMES & seen.header_names()
    assert not leaked, f"hop-by-hop headers reached upstream: {leaked}; saw {seen.headers}"
    conn_tokens = {t.strip().lower() for v in seen.header_all("connection") for t in v.split(",")}
    assert "x-hop-req" not in conn_tokens, seen.headers
    assert seen.header("x-end-to-end") == "keep-me"


def test_connection_listed_header_removed_even_if_multiple_connection_fields(echo, echo_proxy):
    r = get(
        echo_proxy.port,
        "/hop-multi",
        [("Connection", "X-A"), ("Connection", "x-b"), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")],
    )
    assert r.status == 200, r
    names = echo.last().header_names()
    assert "x-a" not in names and "x-b" not in names, echo.last().headers
    assert "x-c" in names


def test_hop_by_hop_response_headers_removed(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        c.send(build_request("GET", "/hop"))
        r = c.read_response()
        assert r.status == 200, r
        leaked = {
            "x-hop-resp",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "upgrade",
            "te",
        } & r.header_names()
        assert not leaked, f"hop-by-hop response headers reached the client: {leaked}; {r!r}"
        assert "x-hop-resp" not in r.connection_tokens()
        assert r.header("x-end-to-end") == "yes"
        # the origin's "Connection: X-Hop-Resp" must not make the proxy close the client
        c.send(build_request("GET", "/after-hop"))
        assert c.read_response().status == 200


def test_forwarded_headers_added(echo, echo_proxy):
    r = get(echo_proxy.port, "/fwd", [("Host", "example.org:8080")])
    assert r.status == 200
    seen = echo.last()
    assert seen.header_all("x-forwarded-for") == ["127.0.0.1"], seen.headers
    assert seen.header_all("x-forwarded-proto") == ["http"], seen.headers
    assert seen.header_all("x-forwarded-host") == ["example.org:8080"], seen.headers


def test_forwarded_for_appended_to_existing(echo, echo_proxy):
    r = get(echo_proxy.port, "/fwd2", [("X-Forwarded-For", "10.0.0.1")])
    assert r.status == 200
    xff = echo.last().header_all("x-forwarded-for")
    assert ", ".join(xff) == "10.0.0.1, 127.0.0.1", xff


def test_no_forwarded_headers_flag(echo, proxy):
    p = proxy(to=[echo.port], extra=["--no-forwarded-headers"])
    r = get(p.port, "/nofwd")
    assert r.status == 200
    names = echo.last().header_names()
    added = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} & names
    assert not added, f"forwarded headers added despite --no-forwarded-headers: {added}"
    r = get(p.port, "/nofwd2", [("X-Forwarded-For", "10.0.0.1")])
    assert echo.last().header_all("x-forwarded-for") == ["10.0.0.1"]


def test_host_header_passed_through(echo, echo_proxy):
    get(echo_proxy.port, "/host", [("Host", "virtual.example:81")])
    assert echo.last().header_all("host") == ["virtual.example:81"]
