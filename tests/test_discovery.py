"""DNS and file discovery, scripted: the core asks (Resolve/ReadFile), the test answers."""

from __future__ import annotations

from proxycore.actions import ReadFile, Resolve
from proxycore.builtin import ReverseProxy
from proxycore.events import FileRead, Resolved, Started, TimerFired
from proxycore.testing import Harness


def start(app: ReverseProxy) -> tuple[Harness, int, list]:
    h = Harness(app)
    (svc,) = h.engine.services
    h.feed(Started(0, h.now))
    acts = h.feed(TimerFired(svc, h.now))
    return h, svc, acts


def addresses(app: ReverseProxy) -> list[str]:
    return sorted(b.address for b in app.lb.backends)


def test_dns_names_are_resolved_to_every_address_and_refreshed() -> None:
    app = ReverseProxy(["api.internal:8080,weight=2", "127.0.0.1:9000"], discovery_interval=30)
    h, svc, acts = start(app)
    (r,) = [a for a in acts if isinstance(a, Resolve)]
    assert r.host == "api.internal"
    h.feed(Resolved(svc, r.token, h.now, addresses=["10.0.0.2", "10.0.0.1", "fd00::1"]))
    assert addresses(app) == ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]
    assert all(b.weight == 2 and b.peer.sni == "api.internal" for b in app.lb.backends)
    # a failed re-resolution keeps the previous addresses
    h.now += 30
    (r2,) = [a for a in h.feed(TimerFired(svc, h.now)) if isinstance(a, Resolve)]
    h.feed(Resolved(svc, r2.token, h.now, error="SERVFAIL"))
    assert len(app.lb.backends) == 3
    # a change is applied, keeping the state of backends that remain
    app.lb.backends[0].healthy = False
    h.now += 30
    (r3,) = [a for a in h.feed(TimerFired(svc, h.now)) if isinstance(a, Resolve)]
    h.feed(Resolved(svc, r3.token, h.now, addresses=["10.0.0.1", "10.0.0.3"]))
    assert addresses(app) == ["10.0.0.1:8080", "10.0.0.3:8080"]
    assert not app.lb.backends[0].healthy


def test_file_discovery_swaps_on_change_and_keeps_set_on_bad_file() -> None:
    app = ReverseProxy(["127.0.0.1:9001"], backends_file="/etc/pc/backends", discovery_interval=5)
    h, svc, acts = start(app)
    (rf,) = [a for a in acts if isinstance(a, ReadFile)]
    assert rf.path == "/etc/pc/backends"
    h.feed(
        FileRead(
            svc, rf.token, h.now, content=b"# pool\n127.0.0.1:9002,weight=3\n\n127.0.0.1:9003\n"
        )
    )
    assert addresses(app) == ["127.0.0.1:9002", "127.0.0.1:9003"]
    for content, error in [(b"127.0.0.1:9004,weight=0\n", None), (None, "EACCES")]:
        h.now += 5
        (rf,) = [a for a in h.feed(TimerFired(svc, h.now)) if isinstance(a, ReadFile)]
        h.feed(FileRead(svc, rf.token, h.now, content=content, error=error))
        assert addresses(app) == ["127.0.0.1:9002", "127.0.0.1:9003"]


def test_requests_in_flight_keep_their_backend_across_a_swap() -> None:
    app = ReverseProxy(["127.0.0.1:9001"], backends_file="/f", discovery_interval=5)
    h, svc, acts = start(app)
    (rf,) = [a for a in acts if isinstance(a, ReadFile)]
    down, _ = h.accept()
    (c,) = Harness.connects(h.data(down, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.feed(FileRead(svc, rf.token, h.now, content=b"127.0.0.1:9009\n"))
    h.connected(c.conn)
    acts = h.data(c.conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert Harness.sent(acts, down).startswith(b"HTTP/1.1 200")
    assert addresses(app) == ["127.0.0.1:9009"]
