"""The built-in reverse proxy: selectors, hash keys, weights, passive health, panic mode, and
the CLI's answers to bad values (exit status 2, naming the value)."""

from __future__ import annotations

from typing import Any

import pytest

from proxycore.builtin import ReverseProxy, parse_backend, parse_hash_key
from proxycore.cli import main
from proxycore.testing import Harness
from tests.helpers import connect_id, sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def request(path: str = "/", headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode()


def one(h: Harness, data: bytes, respond: bytes | None = OK) -> tuple[int, Any]:
    """One request on a new client connection; returns (upstream port, actions)."""
    down, _ = h.accept()
    acts = h.data(down, data)
    conns = Harness.connects(acts)
    if not conns:  # reused a pooled connection
        up = next(a.conn for a in acts if getattr(a, "data", b"").startswith(b"GET"))
        port = h.engine.upstreams[up].peer.port
    else:
        up, port = conns[0].conn, conns[0].peer.port
        h.connected(up)
    acts = h.data(up, respond) if respond else []
    h.closed(down)
    return port, acts


def test_backend_and_hash_key_parsing() -> None:
    peer, w = parse_backend("127.0.0.1:9000,weight=3")
    assert (peer.port, w) == (9000, 3)
    for bad in [
        "127.0.0.1:9000,weight=0",
        "127.0.0.1:9000,weight=-2",
        "127.0.0.1:9000,w=2",
        "nonsense",
        "127.0.0.1:notaport",
    ]:
        with pytest.raises(ValueError):
            parse_backend(bad)
    assert parse_hash_key("header:X-User") == ("header", "X-User")
    with pytest.raises(ValueError, match="unknown hash key 'cookie'"):
        parse_hash_key("cookie")


def test_consistent_by_header_is_sticky() -> None:
    app = ReverseProxy(
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"],
        lb="consistent",
        hash_key="header:X-User",
    )
    h = Harness(app)
    for user in ["alice", "bob", "carol"]:
        ports = {one(h, request(headers=f"X-User: {user}\r\n"))[0] for _ in range(5)}
        assert len(ports) == 1


def test_weighted_distribution() -> None:
    h = Harness(ReverseProxy(["127.0.0.1:9001,weight=3", "127.0.0.1:9002"], lb="weighted"))
    ports = [one(h, request())[0] for _ in range(8)]
    assert ports.count(9001) == 6 and ports.count(9002) == 2


def test_passive_health_ejects_after_consecutive_failures_then_readmits() -> None:
    app = ReverseProxy(["127.0.0.1:9001", "127.0.0.1:9002"], eject_after=2, eject_for=10.0)
    h = Harness(app)
    bad = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    for _ in range(4):  # round robin: 9001 answers 503 twice -> ejected
        one(h, request(), bad if _port_is(h, 9001) else OK)
    assert app._ejected_until.get("127.0.0.1:9001", 0) > h.engine.now
    assert {one(h, request())[0] for _ in range(4)} == {9002}
    h.now += 11
    assert 9001 in {one(h, request())[0] for _ in range(4)}


def test_active_health_check_recovery_lifts_a_passive_ejection() -> None:
    # Under load, passive ejection (5 failures in a few ms) can beat the health check to a dead
    # backend; when the check then sees it healthy again, it must rejoin at once, not after
    # --eject-for.
    app = ReverseProxy(
        ["127.0.0.1:9001", "127.0.0.1:9002"],
        eject_after=1,
        eject_for=30.0,
        health_check="http:/healthz",
    )
    checker = app.services()[0]
    b = app.lb.backends[0]
    app._ejected_until[b.address] = 1e9
    checker.result(b, False, "refused")
    assert b.address in app._ejected_until
    checker.result(b, True, "status 200")
    assert b.healthy and b.address not in app._ejected_until


def _port_is(h: Harness, port: int) -> bool:
    app: ReverseProxy = h.engine.app  # type: ignore[assignment]
    nxt = app.lb.selector._next  # type: ignore[attr-defined]
    return app.lb.backends[nxt].peer.port == port


def test_connect_failures_count_and_retry_elsewhere() -> None:
    app = ReverseProxy(["127.0.0.1:9001", "127.0.0.1:9002"], eject_after=1, eject_for=5.0)
    h = Harness(app)
    down, _ = h.accept()
    c1 = Harness.connects(h.data(down, request()))[0]
    c2 = Harness.connects(h.connect_failed(c1.conn))[0]
    assert c2.peer.port != c1.peer.port
    h.connected(c2.conn)
    h.data(c2.conn, OK)
    assert app._ejected_until[c1.peer.address] == pytest.approx(h.now + 5.0)
    assert all(b.inflight == 0 for b in app.lb.backends)


def test_all_ejected_panic_mode_still_routes() -> None:
    app = ReverseProxy(["127.0.0.1:9001"], eject_after=1, eject_for=60.0)
    h = Harness(app)
    down, _ = h.accept()
    c1 = Harness.connects(h.data(down, request()))[0]
    acts = h.connect_failed(c1.conn)
    assert sent(acts, down).startswith(b"HTTP/1.1 502")
    port, _ = one(h, request())
    assert port == 9001  # ejected, but the only one: panic mode routes anyway


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "127.0.0.1:9000,weight=0"], "weight must be a positive integer"),
        (["--to", "nonsense"], "expected HOST:PORT"),
        (["--to", "127.0.0.1:1", "--lb", "fastest"], "unknown selector 'fastest'"),
        (["--to", "127.0.0.1:1", "--hash-key", "cookie:x"], "unknown hash key 'cookie:x'"),
        (["--to", "127.0.0.1:1", "--backend", "nope"], "unknown backend 'nope'"),
        (["--to", "127.0.0.1:1", "--workers", "0"], "workers from 1 to 256"),
    ],
)
def test_cli_bad_values_exit_2_naming_the_value(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["reverse-proxy", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_connect_id_helper_still_works() -> None:  # keeps helpers imported for other tests
    h = Harness(ReverseProxy(["127.0.0.1:9001"]))
    down, _ = h.accept()
    assert connect_id(h.data(down, request())) > 0


def test_phase_marks_work_on_methods_that_take_no_attributes() -> None:
    # Methods of mypyc-compiled classes (the compiled ReverseProxy) reject attributes, so the
    # blocking/nonblocking marks are kept by (module, qualified name) for them.
    from proxycore import phases

    try:
        assert phases.nonblocking(str.upper) is str.upper  # a C method: no attributes
        assert phases.is_marked(str.upper, "nonblocking")
        assert not phases.is_marked(str.upper, "blocking")
        assert not phases.is_marked(str.lower, "nonblocking")
    finally:
        phases._COMPILED_MARKS.pop(("builtins", "str.upper"), None)


def test_hash_selectors_need_a_hash_key() -> None:
    for lb in ("hash", "consistent"):
        with pytest.raises(ValueError, match=f"the {lb} selector needs a hash_key"):
            ReverseProxy(["127.0.0.1:9000", "127.0.0.1:9001"], lb=lb)
