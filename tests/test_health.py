"""Active health checks, scripted through the engine with no sockets."""

from __future__ import annotations

import pytest

from proxycore.actions import Close, Connect, SetTimer
from proxycore.builtin import ReverseProxy
from proxycore.events import Started, TimerFired
from proxycore.health import HealthCheck
from proxycore.testing import Harness

UP = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
DOWN = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


def setup(check: str = "http:/healthz", **kw: object) -> tuple[Harness, ReverseProxy, int, dict]:
    app = ReverseProxy(
        ["127.0.0.1:9001", "127.0.0.1:9002"], health_check=check, health_interval=1.0, **kw
    )  # type: ignore[arg-type]
    h = Harness(app)
    (svc_id,) = h.engine.services
    acts = h.feed(Started(0, h.now))
    assert SetTimer(svc_id, h.now) in acts
    return h, app, svc_id, {}


def probe_round(h: Harness, svc_id: int) -> dict[int, int]:
    """Fire the checker's timer; returns {backend port: probe connection id}."""
    acts = h.feed(TimerFired(svc_id, h.now))
    return {a.peer.port: a.conn for a in acts if isinstance(a, Connect)}


def test_http_check_marks_down_and_up() -> None:
    h, app, svc, _ = setup()
    probes = probe_round(h, svc)
    assert set(probes) == {9001, 9002}
    for port, conn in probes.items():
        acts = h.connected(conn)
        req = Harness.sent(acts, conn)
        assert req.startswith(b"GET /healthz HTTP/1.1\r\n") and b"Host: 127.0.0.1:%d" % port in req
        acts = h.data(conn, UP if port == 9001 else DOWN)
        assert Close(conn) in acts
    b1, b2 = app.lb.backends
    assert b1.healthy and not b2.healthy
    # traffic now avoids 9002
    down, _ = h.accept()
    (c,) = Harness.connects(h.data(down, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert c.peer.port == 9001
    # next round, 9002 recovers
    h.now += 1.0
    probes = probe_round(h, svc)
    h.connected(probes[9002])
    h.data(probes[9002], UP)
    assert b2.healthy


def test_connect_failure_and_timeout_count_as_failures() -> None:
    h, app, svc, _ = setup()
    probes = probe_round(h, svc)
    h.connect_failed(probes[9001], "refused")
    h.connected(probes[9002])  # connected, never answers
    h.now += 2.5  # past the 2 s probe timeout
    acts = h.feed(TimerFired(svc, h.now))
    assert Close(probes[9002]) in acts
    assert not any(b.healthy for b in app.lb.backends)


def test_tcp_check_and_rise_fall_thresholds() -> None:
    app = ReverseProxy(
        ["127.0.0.1:9001"], health_check=HealthCheck("tcp", interval=1.0, fall=2, rise=2)
    )
    h = Harness(app)
    (svc,) = h.engine.services
    h.feed(Started(0, h.now))
    b = app.lb.backends[0]
    for expected in [True, False]:  # one failure is not enough (fall=2), two are
        (conn,) = probe_round(h, svc).values()
        h.connect_failed(conn)
        assert b.healthy is expected
        h.now += 1.0
    (conn,) = probe_round(h, svc).values()
    h.connected(conn)
    assert not b.healthy  # rise=2
    h.now += 1.0
    (conn,) = probe_round(h, svc).values()
    h.connected(conn)
    assert b.healthy


def test_pool_statistics_do_not_count_probes() -> None:
    h, _, svc, _ = setup("tcp")
    probe_round(h, svc)
    assert h.engine.pool.stats.opened == 0


@pytest.mark.parametrize("bad", ["http", "http:healthz", "udp", "http:/a b"])
def test_bad_health_check_values(bad: str) -> None:
    with pytest.raises(ValueError):
        HealthCheck.parse(bad)
