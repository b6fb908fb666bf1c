"""Load balancing through a real proxy process: weights, sticky hashing, failover, and passive
ejection of a dead backend — on every backend."""

from __future__ import annotations

import json
import time

import pytest

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
    assert err.count(f"upstream 127.0.0.1:{dead} refused the connection") == 1, err


def test_active_health_check_origin_killed_then_back(backend, origins, proxy):
    """Three origins under steady load; one dies: once the health interval has passed no client
    sees an error and none reaches the dead one; when it comes back it rejoins."""
    import threading
    import time

    a, b, c = (origins(EchoOrigin, name=n) for n in "abc")
    extra = ["--health-check", "http:/healthz", "--health-interval", "0.2"]
    for o in (a, b, c):
        extra += ["--to", f"127.0.0.1:{o.port}"]
    p = proxy(to=None, extra=extra)
    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = get(p.port, "/load", timeout=3)
                results.append((time.monotonic(), r.status, r.header("x-origin")))
            except OSError:
                results.append((time.monotonic(), 0, None))
            time.sleep(0.01)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        b_port = b.port
        b.stop()
        time.sleep(1.0)
        settled = [r for r in results if r[0] > killed_at + 0.5]
        assert settled and all(s == 200 for _, s, _ in settled), settled[-5:]
        assert all(o != "b" for _, _, o in settled)
        assert f"backend 127.0.0.1:{b_port} is now unhealthy" in p.stderr()
        origins(EchoOrigin, name="b", port=b_port)  # it comes back
        back_at = time.monotonic()
        time.sleep(1.0)
    finally:
        stop.set()
        t.join(5)
    assert f"backend 127.0.0.1:{b_port} is now healthy" in p.stderr()
    assert any(o == "b" for ts, _, o in results if ts > back_at + 0.5), "b did not rejoin"
    # Errors are allowed only for requests in flight when the origin died (502, or retried
    # where safe); before the kill, during the return and after settling, everything is 200.
    errors = [r for r in results if r[1] != 200]
    assert all(killed_at <= ts <= killed_at + 0.5 and s == 502 for ts, s, _ in errors), errors


def test_backends_file_is_watched(backend, origins, proxy, tmp_path):
    import time

    a = origins(EchoOrigin, name="a")
    b = origins(EchoOrigin, name="b")
    f = tmp_path / "backends"
    f.write_text(f"# the pool\n127.0.0.1:{a.port}\n")
    p = proxy(to=None, extra=["--backends-file", str(f), "--discovery-interval", "0.2"])
    assert {get(p.port, f"/x{i}").header("x-origin") for i in range(4)} == {"a"}
    f.write_text(f"127.0.0.1:{b.port},weight=2\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if get(p.port, "/probe").header("x-origin") == "b":
            break
        time.sleep(0.1)
    assert {get(p.port, f"/y{i}").header("x-origin") for i in range(4)} == {"b"}
    f.write_text("this is not a backend\n")  # invalid: the current set stays
    time.sleep(0.5)
    assert get(p.port, "/z").header("x-origin") == "b"
    assert "keeping the current backends" in p.stderr()


def test_dns_name_backends_are_resolved_by_the_adapter(backend, origins, proxy):
    a = origins(EchoOrigin, name="a")
    p = proxy(to=None, extra=["--to", f"localhost:{a.port}", "--discovery-interval", "0.2"])
    for i in range(6):
        r = get(p.port, f"/d{i}")
        assert r.status == 200 and r.header("x-origin") == "a", r
    import time

    time.sleep(0.5)
    assert f"backends now 127.0.0.1:{a.port}" in p.stderr()
    assert all(get(p.port, f"/e{i}").status == 200 for i in range(6))


def test_name_that_does_not_resolve_exits_2(backend):
    import subprocess

    from conformance.proxy import PROCESS_CWD, process_env, python_cmd

    r = subprocess.run(
        [
            *python_cmd(),
            "-m",
            "proxycore",
            "reverse-proxy",
            "--listen",
            "127.0.0.1:1",
            "--to",
            "no-such-name.invalid:80",
            "--backend",
            backend,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=PROCESS_CWD,
        env=process_env(),
    )
    assert r.returncode == 2
    assert "'no-such-name.invalid' does not resolve" in r.stderr


@pytest.mark.parametrize(
    ("lb", "flags", "dead_tries"),
    [
        ("round_robin", [], (1, 2)),  # the defaults: one refused connect ejects for 10 s
        ("consistent", ["--hash-key", "uri"], (1, 2)),
        ("round_robin", ["--eject-after-connect-failures", "3", "--eject-for", "60"], (3, 3)),
    ],
    ids=["round_robin", "consistent", "three-connect-failures"],
)
def test_refusing_backend_is_tried_at_most_twice(
    backend, origins, proxy, tmp_path, lb, flags, dead_tries
):
    """One refusing and one answering backend, 100 requests: every client gets its answer
    (the request that met the refusing one was retried on the other), and the refusing one
    was tried once or twice in all — each attempt counted in the access log, which lists
    every attempt of a request."""
    live = origins(EchoOrigin, name="live")
    dead = free_port()  # nothing listens: connection refused
    log = tmp_path / "access.json"
    p = proxy(
        to=None,
        extra=[
            "--to",
            f"127.0.0.1:{dead}",
            "--to",
            f"127.0.0.1:{live.port}",
            "--lb",
            lb,
            *flags,
            "--access-log",
            str(log),
            "--access-log-format",
            "json",
        ],
    )
    n = 100
    for i in range(n):
        r = get(p.port, f"/n{i}")
        assert r.status == 200 and r.header("x-origin") == "live", (i, r)
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == n
    attempts = [a["addr"] for e in entries for a in e["upstream"]]
    tries = attempts.count(f"127.0.0.1:{dead}")
    assert dead_tries[0] <= tries <= dead_tries[1], attempts
    assert attempts.count(f"127.0.0.1:{live.port}") == n  # and each request ended there
    retried = [e["upstream"] for e in entries if len(e["upstream"]) > 1]
    assert len(retried) == tries
    assert all([a["status"] for a in u] == [502, 200] for u in retried), retried
    assert f"backend 127.0.0.1:{dead} ejected for" in p.stderr()
