"""The user API through ``python -m proxycore run conformance.apps:Name``, and upstream
selection (round robin, retry on connect failure) through ``reverse-proxy``."""

from __future__ import annotations

import threading
import time

import pytest

from conformance.apps import RAISE_MARKER
from conformance.client import Conn, assert_serving, build_request, get
from conformance.origins import EchoOrigin, free_port


def run_app(proxy, name, origin, **env):
    env = {"ORIGIN_PORT": origin.port, **env}
    return proxy(mode="run", app=f"conformance.apps:{name}", env=env)


def test_header_filters(echo, proxy):
    p = run_app(proxy, "HeaderApp", echo)
    r = get(p.port, "/filtered")
    assert r.status == 200, r
    assert r.header("x-resp") == "1", r
    assert echo.last().header("x-via") == "pc", echo.last().headers


def test_request_filter_responds_directly(echo, proxy):
    p = run_app(proxy, "HeaderApp", echo)
    with Conn(p.port) as c:
        c.send(build_request("GET", "/deny"))
        r = c.read_response()
        assert r.status == 403 and r.body == b"no\n", r
        assert r.header("x-a") == "1"
        c.send(build_request("GET", "/ok-after-deny"))
        assert c.read_response().status == 200
    assert [q.target for q in echo.requests] == ["/ok-after-deny"]


def test_direct_response_with_unread_body_no_smuggling(echo, proxy):
    """403 answered before the request body was read: the body must never be parsed as a
    next request. Either the body is drained (then /next is served) or the connection closes."""
    p = run_app(proxy, "HeaderApp", echo)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with Conn(p.port) as c:
        c.send(build_request("POST", "/deny", body=smuggled) + build_request("GET", "/next"))
        r = c.read_response()
        assert r.status == 403, r
        if not c.wait_closed(0.5) or c.buf:
            r2 = c.read_response()
            assert r2.status == 200 and r2.header("x-resp") == "1", r2
    time.sleep(0.1)
    assert "/smuggled" not in [q.target for q in echo.requests]


@pytest.mark.parametrize(
    "phase",
    [
        "early_request_filter",
        "request_filter",
        "upstream_peer",
        "upstream_request_filter",
        "upstream_response_filter",
        "response_filter",
    ],
)
def test_raising_filter_500_and_keeps_serving(echo, proxy, phase):
    p = run_app(proxy, "RaisingApp", echo)
    r = get(p.port, f"/raise/{phase}")
    assert r.status == 500, r
    deadline = time.monotonic() + 2
    while RAISE_MARKER not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert RAISE_MARKER in p.stderr(), "the filter's exception was not logged on stderr"
    p.check_alive()
    r = get(p.port, "/fine")
    assert r.status == 200, r


def test_fail_to_connect_retry_picks_next_peer(echo, proxy):
    dead = free_port()
    p = run_app(proxy, "RetryApp", echo, DEAD_PORT=dead)
    r = get(p.port, "/retry")
    assert r.status == 200, r
    seen = echo.last()
    assert seen.header("x-tries") == "2", seen.headers
    assert seen.header("x-failed") == str(dead)


def test_reverse_proxy_skips_dead_backend(echo, proxy):
    p = proxy(to=[free_port(), echo.port])
    for i in range(6):
        r = get(p.port, f"/rr-dead{i}")
        assert r.status == 200, f"request {i}: {r!r}"
    assert echo.request_count == 6


def test_reverse_proxy_round_robin(origins, proxy):
    a = origins(EchoOrigin, name="a")
    b = origins(EchoOrigin, name="b")
    p = proxy(to=[a.port, b.port])
    got = [get(p.port, f"/rr{i}").header("x-origin") for i in range(4)]
    assert sorted(got) == ["a", "a", "b", "b"], got
    assert got[0] != got[1], got


def test_async_phases(backend, echo, proxy):
    p = run_app(proxy, "AsyncApp", echo)
    r = get(p.port, "/deny")
    assert r.status == 403 and r.body == b"async no\n" and r.header("x-a") == "async", r
    r = get(p.port, "/through")
    assert r.status == 200, r
    assert echo.last().header("x-async") == "yes"
    assert [q.target for q in echo.requests] == ["/through"]


def test_blocking_phase_does_not_hold_up_others(backend, echo, proxy):
    env = {"PROXYCORE_TEST_SLEEP": "gevent"} if backend == "gevent" else {}
    p = run_app(proxy, "BlockingApp", echo, **env)
    assert get(p.port, "/warm").status == 200
    results: dict[str, float] = {}

    def timed(path: str) -> None:
        t0 = time.monotonic()
        assert get(p.port, path, timeout=5).status == 200
        results[path] = time.monotonic() - t0

    threads = [threading.Thread(target=timed, args=(f"/slow/{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    timed("/fast")
    for t in threads:
        t.join()
    assert results["/fast"] < 0.25, results  # not queued behind the sleeping phases
    assert max(results[f"/slow/{i}"] for i in range(3)) < 0.9, results  # they ran in parallel


def test_body_filters(echo, proxy):
    p = run_app(proxy, "BodyApp", echo)
    with Conn(p.port) as c:
        c.send(build_request("POST", "/body", body=b"hello body"))
        r = c.read_response()
        assert r.status == 200
        assert echo.last().body == b"HELLO BODY"
        assert r.body == r.body.lower() and b'"body_len": 10' in r.body, r
        c.send(
            build_request(
                "POST", "/body2", [("Transfer-Encoding", "chunked")], body=b"3\r\nabc\r\n0\r\n\r\n"
            )
        )
        assert c.read_response().status == 200
        assert echo.last().body == b"ABC"


def test_request_header_api(echo, proxy):
    p = run_app(proxy, "HeaderViewApp", echo)
    r = get(p.port, "/view", [("X-Multi", "one"), ("x-multi", "two")])
    assert r.status == 200 and r.header("x-view") == "1", r
    assert r.body.decode().splitlines() == [
        "method=GET",
        "path=/view",
        "get=one",
        "all=one|two",
        "in=True",
        "missing=dflt",
        "set=1|2",
        "removed=True",
    ]
    assert echo.request_count == 0
    assert_serving(p.port, "/view")


def test_connected_to_upstream_reports_reuse(echo, proxy):
    p = run_app(proxy, "LifecycleApp", echo, DEAD_PORT=free_port())
    for _ in range(3):
        r = get(p.port, "/life")
        assert r.status == 200, r
        assert r.header("x-upstream-filter") == "1", r
    assert [q.header("x-reused") for q in echo.requests] == ["False", "True", "True"]
    assert echo.last().header("x-peer-port") == str(echo.port)


def test_proxy_upstream_filter_false(echo, proxy):
    p = run_app(proxy, "LifecycleApp", echo, DEAD_PORT=free_port())
    assert get(p.port, "/noup").status == 502
    r = get(p.port, "/noup-resp")
    assert r.status == 202 and r.body == b"answered in proxy_upstream_filter\n", r
    assert echo.request_count == 0


def test_fail_to_proxy_custom_page_and_logging(echo, proxy):
    p = run_app(proxy, "LifecycleApp", echo, DEAD_PORT=free_port())
    r = get(p.port, "/dead")
    assert r.status == 503 and r.body == b"custom failure page\n", r
    assert r.header("x-custom") == "1"
    assert get(p.port, "/ok").status == 200
    deadline = time.monotonic() + 2
    while "LOGPHASE /ok" not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    err = p.stderr()
    assert "LOGPHASE /ok None" in err, err[-2000:]
    assert "LOGPHASE /dead ProxyError" in err, err[-2000:]


def test_peer_read_timeout(origins, proxy):
    from conformance.origins import SilentOrigin

    o = origins(SilentOrigin)
    p = run_app(proxy, "PeerTimeoutApp", o)
    t0 = time.monotonic()
    r = get(p.port, "/peer-timeout")
    assert r.status == 504, r
    assert time.monotonic() - t0 < 3
