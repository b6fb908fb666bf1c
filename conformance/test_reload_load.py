"""Configuration reload under load (issue 30): five SIGHUPs in a row, each switching a route's
backends between two origins, while keep-alive clients, new connections and uploads run
without a pause and a slow response is in flight across each reload. Nothing may fail (see
conformance/loadharness.py), every slow response arrives complete, and every request that
starts after a reload was announced goes to the new backends. The same with ``--workers 2``
(each worker reloads on its own: the announcement is awaited from both)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from conformance import proxy as _proxy
from conformance.loadharness import H2Streams, KeepAlive, Load, NewConnections, Slow, Uploads
from conformance.origins import HOST, EchoOrigin, free_port

RELOADS = 5
ANNOUNCED = "proxycore config reloaded"


def _conf(port: int, backend: str, origin: int, workers: int) -> str:
    return yaml.safe_dump(
        {
            "server": {"backend": backend, "threads": workers, "grace_period_seconds": 10},
            "listeners": [{"address": f"{HOST}:{port}"}],
            "upstreams": {"app": {"backends": [f"{HOST}:{origin}"]}},
            "routes": [{"upstream": "app"}],
        },
        sort_keys=False,
    )


def _wait(p: _proxy.ProxyProcess, text: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while p.stdout().count(text) < count:
        p.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} x {text!r} not seen after {timeout}s\n" + p.report())
        time.sleep(0.01)


@pytest.mark.parametrize("workers", [1, 2])
def test_five_reloads_under_load_switch_backends_and_lose_nothing(
    tmp_path: Path, origins, backend: str, workers: int
):
    a, b = origins(EchoOrigin, "A"), origins(EchoOrigin, "B")
    port = free_port()
    path = tmp_path / "proxycore.yaml"
    path.write_text(_conf(port, backend, a.port, workers))
    argv = [*_proxy.python_cmd(), "-m", "proxycore", "reverse-proxy", "-c", str(path)]
    p = _proxy.ProxyProcess(argv, port, backend)
    try:
        p.wait_ready()
        if workers > 1:
            _proxy.wait_workers_serving(p, workers)
        kinds = [KeepAlive(2, 0.005), NewConnections(2, 0.005), Uploads(1, 0.005)]
        load = Load(port, [*kinds, H2Streams(1, 0.005, inflight=8)])
        load.start()
        switches: list[tuple[float, str]] = []
        try:
            time.sleep(0.3)
            for i in range(RELOADS):
                old, new = (a, b) if i % 2 == 0 else (b, a)
                slow = Slow(port, delay=0.5).start()
                heads = old.heads
                deadline = time.monotonic() + 5
                while old.heads == heads and time.monotonic() < deadline:
                    time.sleep(0.01)
                path.write_text(_conf(port, backend, new.port, workers))
                sent = time.monotonic()
                p.signal(signal.SIGHUP)
                _wait(p, ANNOUNCED, (i + 1) * workers)
                switches.append((sent, time.monotonic(), new.name))
                assert slow.result() == old.name  # in flight across the reload, complete
                time.sleep(0.15)
        finally:
            load.stop()
        assert not load.failures, load.summary() + "\n" + "\n".join(load.failures[:20])
        assert load.count("h2") > 0
        # Between the moment a reload was announced and the moment the next SIGHUP was sent,
        # every request that started went to the new backends.
        for n, (_, when, name) in enumerate(switches):
            until = switches[n + 1][0] if n + 1 < len(switches) else float("inf")
            within = [r for r in load.records if when < r.started and r.ended < until]
            assert within, "no request between two reloads"
            wrong = [r for r in within if r.origin != name]
            assert not wrong, (
                f"after the reload to {name} at {when}: {len(wrong)} went elsewhere: {wrong[:3]}"
            )
        assert p.alive()
        print(f"\n[{backend}, --workers {workers}] {RELOADS} reloads: {load.summary()}")
    finally:
        p.stop()
        p.close_files()
