"""The route table behind ``proxycore reverse-proxy -c FILE`` (proxycore.builtin.RoutedProxy):
routes matched in order by host (exact, ``*.example.com``) and path prefix, each to an upstream
group with its own selector and passive health, or answered by itself (``return``); no match
is a 404. Driven through the real engine with the test harness (no sockets)."""

from __future__ import annotations

import pytest

from proxycore.builtin import Route, RoutedProxy
from proxycore.testing import Harness
from tests.helpers import sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

UPSTREAMS = {
    "api": {"backends": ["127.0.0.1:9001", "127.0.0.1:9002"]},
    "web": {"backends": ["127.0.0.1:9003"], "peer_options": {"read_timeout": 7.0}},
}
ROUTES = [
    {"host": "old.example.com", "return": "301 https://new.example.com/"},
    {"path": "/admin", "return": "403"},
    {"host": "*.api.example.com", "upstream": "api"},
    {"host": "www.example.com", "path": "/api/", "upstream": "api"},
    {"host": "www.example.com", "upstream": "web"},
    {"path": "/teapot", "return": "418 short and stout"},
]


def go(h: Harness, host: str, path: str = "/") -> tuple[int | None, bytes]:
    """One request; returns (upstream port or None, bytes sent to the client)."""
    down, _ = h.accept()
    acts = h.data(down, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    conns = Harness.connects(acts)
    port = None
    out = sent(acts, down)
    reused = [a.conn for a in acts if getattr(a, "data", b"").startswith(b"GET")]
    if conns or reused:
        if conns:
            up, port = conns[0].conn, conns[0].peer.port
            h.connected(up)
        else:  # a pooled connection
            up = reused[0]
            port = h.engine.upstreams[up].peer.port
        out += sent(h.data(up, OK), down)
    h.closed(down)
    return port, out


def test_routes_in_order_by_host_and_path_prefix() -> None:
    h = Harness(RoutedProxy(UPSTREAMS, ROUTES))
    assert go(h, "a.api.example.com")[0] in (9001, 9002)
    assert go(h, "x.y.api.example.com:8080", "/q")[0] in (9001, 9002)
    assert go(h, "www.example.com", "/api/v1?x=1")[0] in (9001, 9002)
    assert go(h, "WWW.Example.COM:80", "/api")[0] == 9003  # "/api" is not under "/api/"
    assert go(h, "www.example.com", "/")[0] == 9003


def test_wildcard_does_not_match_the_bare_domain() -> None:
    h = Harness(RoutedProxy(UPSTREAMS, ROUTES))
    port, out = go(h, "api.example.com")
    assert port is None and out.startswith(b"HTTP/1.1 404 ")


def test_return_answers() -> None:
    h = Harness(RoutedProxy(UPSTREAMS, ROUTES))
    port, out = go(h, "old.example.com", "/x")
    assert port is None and out.startswith(b"HTTP/1.1 301 ")
    assert b"\r\nLocation: https://new.example.com/\r\n" in out
    assert go(h, "www.example.com", "/admin/users")[1].startswith(b"HTTP/1.1 403 ")
    out = go(h, "anything", "/teapot")[1]
    assert out.startswith(b"HTTP/1.1 418 ") and out.endswith(b"\r\n\r\nshort and stout\n")


def test_each_group_balances_its_own_backends() -> None:
    app = RoutedProxy(UPSTREAMS, ROUTES)
    h = Harness(app)
    ports = [go(h, "a.api.example.com")[0] for _ in range(4)]
    assert sorted(ports) == [9001, 9001, 9002, 9002]
    assert app.groups["web"].lb.backends[0].peer.read_timeout == 7.0


def test_a_failed_connect_is_retried_within_the_group() -> None:
    app = RoutedProxy(UPSTREAMS, ROUTES)
    h = Harness(app)
    down, _ = h.accept()
    acts = h.data(down, b"GET / HTTP/1.1\r\nHost: a.api.example.com\r\n\r\n")
    first = Harness.connects(acts)[0]
    acts = h.connect_failed(first.conn)
    second = Harness.connects(acts)[0]
    assert {first.peer.port, second.peer.port} == {9001, 9002}
    assert app.groups["api"]._ejected_until  # passive health of that group
    assert not app.groups["web"]._ejected_until


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"path": "/"}, "exactly one of upstream and return"),
        ({"upstream": "api", "answer": "403"}, "exactly one of upstream and return"),
        ({"upstream": "api", "path": "api"}, "prefix starting with '/'"),
        ({"upstream": "api", "host": "a.*.com"}, "NAME or \\*.DOMAIN"),
        ({"answer": "301"}, "needs a URL"),
        ({"answer": "99 x"}, "status from 200 to 599"),
        ({"answer": "abc"}, "status from 200 to 599"),
    ],
)
def test_bad_routes_are_named(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route(**kw)


def test_a_route_to_a_missing_group_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream 'nope', not defined"):
        RoutedProxy(UPSTREAMS, [{"upstream": "nope"}])


def test_trace_init_rebuilds_the_same_proxy() -> None:
    app = RoutedProxy(UPSTREAMS, ROUTES)
    again = RoutedProxy(**app.trace_init())
    assert again.trace_init() == app.trace_init()


class _Rewrite(RoutedProxy):
    """A subclass whose request_filter edits the Host: routing sees the edited head."""

    def request_filter(self, session, ctx):  # type: ignore[no-untyped-def]
        if session.req_header.path.startswith("/legacy"):
            session.req_header.headers["Host"] = "www.example.com"
        return False


def test_routes_see_a_host_edited_by_request_filter() -> None:
    h = Harness(_Rewrite(UPSTREAMS, ROUTES))
    assert go(h, "anything.test", "/legacy/x")[0] == 9003  # www.example.com -> web
    assert go(h, "anything.test", "/other")[1].startswith(b"HTTP/1.1 404 ")
    h = Harness(RoutedProxy(UPSTREAMS, ROUTES))  # absolute-form: the authority is the host
    down, _ = h.accept()
    acts = h.data(down, b"GET http://www.example.com/x HTTP/1.1\r\nHost: other\r\n\r\n")
    assert Harness.connects(acts)[0].peer.port == 9003
