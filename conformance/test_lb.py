"""Load balancing through a real proxy process: weights, sticky hashing, failover, and passive
ejection of a dead backend — on every backend."""

from __future__ import annotations

from conformance.client import get
from conformance.origins import EchoOrigin, free_port


def test_weighted_split(backend, origins, proxy):
    a = origins(EchoOrigin, name="a")
    b = origins(EchoOrigin, name="b")
    p = proxy(
        to=None,
        extra=[
            "--to",
            f"127.0.0.1:{a.port},weight=3",
            "--to",
            f"127.0.0.1:{b.port}",
            "--lb",
            "weighted",
        ],
    )
    got = [get(p.port, f"/w{i}").header("x-origin") for i in range(8)]
    assert got.count("a") == 6 and got.count("b") == 2, got


def test_consistent_hash_on_header_is_sticky(backend, origins, proxy):
    os_ = [origins(EchoOrigin, name=n) for n in "abc"]
    extra = ["--lb", "consistent", "--hash-key", "header:X-User"]
    for o in os_:
        extra += ["--to", f"127.0.0.1:{o.port}"]
    p = proxy(to=None, extra=extra)
    for user in ["alice", "bob", "carol", "dave"]:
        seen = {get(p.port, "/", headers=[("X-User", user)]).header("x-origin") for _ in range(4)}
        assert len(seen) == 1, (user, seen)


def test_dead_backend_is_failed_over_then_ejected(backend, origins, proxy):
    a = origins(EchoOrigin, name="a")
    dead = free_port()  # nothing listens: connection refused
    p = proxy(
        to=None,
        extra=[
            "--to",
            f"127.0.0.1:{a.port}",
            "--to",
            f"127.0.0.1:{dead}",
            "--eject-after",
            "1",
            "--eject-for",
            "30",
        ],
    )
    for i in range(10):
        r = get(p.port, f"/f{i}")
        assert r.status == 200 and r.header("x-origin") == "a", r
    err = p.stderr()
    assert f"backend 127.0.0.1:{dead} ejected" in err
    # once ejected it is not tried again: at most one refused connect was logged
    assert err.count(f"connect to 127.0.0.1:{dead}") == 1, err
