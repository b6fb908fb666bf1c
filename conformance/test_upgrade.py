"""Zero-downtime upgrades under load (issue 30): a new process started with ``-u`` takes the
listening sockets over from the running one (SIGQUIT, SCM_RIGHTS over ``--upgrade-sock``),
five times in a row, while keep-alive clients, new connections and uploads run without a
pause and one slow response is in flight across each handover. Nothing may fail: no refused
or reset connection, no incomplete response (see conformance/loadharness.py for the one
retry HTTP allows), and every old process exits 0 within its grace period.

Also the edges: SIGQUIT with nobody waiting keeps serving; a new process that fails its start
exits 2 with its reason and the old one keeps serving; SIGINT during a drain stops at once.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from conformance import proxy as _proxy
from conformance.client import assert_serving
from conformance.loadharness import H2Streams, KeepAlive, Load, NewConnections, Slow, Uploads
from conformance.origins import EchoOrigin

UPGRADES = 5
GRACE = 10.0  # --grace-period of every process: the old ones must be gone well within it


def _wait_output(
    p: _proxy.ProxyProcess, text: str, timeout: float = 15.0, err: bool = False
) -> None:
    deadline = time.monotonic() + timeout
    while text not in (p.stderr() if err else p.stdout()):
        p.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after {timeout}s\n" + p.report())
        time.sleep(0.02)


def _successor(old: _proxy.ProxyProcess, workers: int) -> _proxy.ProxyProcess:
    """Start ``old``'s command again with ``-u``; return once it waits for the sockets."""
    new = _proxy.ProxyProcess([*old.argv, "-u"], old.port, old.backend)
    _wait_output(new, "proxycore upgrade waiting on")
    return new


def _serving(p: _proxy.ProxyProcess, workers: int) -> None:
    if workers > 1:
        _proxy.wait_workers_serving(p, workers)
    else:
        _wait_output(p, "proxycore ready")


def _start(proxy, origin: EchoOrigin, sock: Path, workers: int) -> _proxy.ProxyProcess:
    extra = ["--upgrade-sock", str(sock), "--grace-period", f"{GRACE:g}"]
    if workers > 1:
        extra += ["--workers", str(workers)]
    p = proxy(to=[origin.port], extra=extra)
    if workers > 1:
        _proxy.wait_workers_serving(p, workers)
    return p


@pytest.mark.parametrize("workers", [1, 2])
def test_five_upgrades_under_load_lose_nothing(tmp_path: Path, origins, proxy, workers: int):
    # (each client pauses 5 ms between requests: the suite runs tests side by side on two
    # cores; the soak below runs them flat out)
    _upgrades_under_load(tmp_path, origins, proxy, workers, UPGRADES, pause=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 3])
def test_soak_twenty_upgrades_flat_out(tmp_path: Path, origins, proxy, workers: int):
    _upgrades_under_load(tmp_path, origins, proxy, workers, 20, pause=0.0, clients=2)


def _upgrades_under_load(
    tmp_path: Path, origins, proxy, workers: int, upgrades: int, pause: float, clients: int = 1
) -> None:
    origin = origins(EchoOrigin, "A")
    sock = tmp_path / "upgrade.sock"
    current = _start(proxy, origin, sock, workers)
    kinds = [
        KeepAlive(2 * clients, pause),
        NewConnections(2 * clients, pause),
        Uploads(clients, pause),
        H2Streams(clients, pause, inflight=8),
    ]
    load = Load(current.port, kinds).start()
    generations = [current]
    try:
        time.sleep(0.3)
        for _ in range(upgrades):
            new = _successor(current, workers)
            proxy.started.append(new)  # (stopped with the others if the test fails)
            heads = origin.heads
            slow = Slow(current.port, delay=0.5).start()
            deadline = time.monotonic() + 5
            while origin.heads == heads and time.monotonic() < deadline:
                time.sleep(0.01)
            before = load.count()
            current.expect_exit = True
            current.signal(signal.SIGQUIT)
            _serving(new, workers)
            slow.result()  # the response in flight across the handover arrived complete
            try:
                code = current.proc.wait(timeout=GRACE)
            except Exception:
                raise AssertionError(
                    "the old process outlived its grace period\n" + current.report()
                ) from None
            assert code == 0, current.report()
            assert "draining" in current.stderr(), current.report()
            assert load.count() > before, "no request was served during the handover"
            current = new
            generations.append(new)
        time.sleep(0.3)
    finally:
        load.stop()
    assert not load.failures, load.summary() + "\n" + "\n".join(load.failures[:20])
    assert load.count("upload") > 0 and load.count("new-connection") > 0
    assert load.count("h2") > 0
    print(f"\n[{current.backend}, --workers {workers}] {upgrades} upgrades: {load.summary()}")
    # the last generation serves, and only it
    assert_serving(current.port)
    assert all(not g.alive() for g in generations[:-1])


def test_sigquit_with_nobody_waiting_keeps_serving(tmp_path: Path, origins, proxy):
    origin = origins(EchoOrigin, "A")
    p = _start(proxy, origin, tmp_path / "nobody.sock", 1)
    p.signal(signal.SIGQUIT)
    _wait_output(p, "no new process is waiting", err=True)
    assert p.alive()
    assert_serving(p.port)


def test_a_new_process_that_fails_its_start_leaves_the_old_one_serving(
    tmp_path: Path, origins, proxy
):
    origin = origins(EchoOrigin, "A")
    sock = tmp_path / "upgrade.sock"
    old = _start(proxy, origin, sock, 1)
    # The new process gets the sockets, then fails before serving (its TLS key is missing).
    cert = tmp_path / "missing-cert.pem"
    argv = [*old.argv, "-u", "--tls-cert", str(cert), "--tls-key", str(cert)]
    argv[argv.index("--listen") + 1] = f"http://127.0.0.1:{old.port}"
    new = _proxy.ProxyProcess(argv, old.port, old.backend)
    new.expect_exit = True
    proxy.started.append(new)
    code = new.proc.wait(timeout=15)
    assert code == 2, new.report()
    assert "error" in new.stderr().lower(), new.report()
    assert_serving(old.port)
    assert old.alive()


def test_a_new_process_that_fails_after_the_handover_leaves_the_old_one_serving(
    tmp_path: Path, origins, proxy
):
    """The handover happened, then the new process cannot start (one more listen address,
    taken by someone else): it answers E, exits 2 with the reason, and the old one, still
    holding the sockets, goes on serving, and can be upgraded later."""
    origin = origins(EchoOrigin, "A")
    sock = tmp_path / "upgrade.sock"
    old = _start(proxy, origin, sock, 1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        new = _proxy.ProxyProcess(
            [*old.argv, "-u", "--listen", f"127.0.0.1:{busy}"], old.port, old.backend
        )
        new.expect_exit = True
        proxy.started.append(new)
        _wait_output(new, "proxycore upgrade waiting on")
        old.signal(signal.SIGQUIT)
        code = new.proc.wait(timeout=15)
    assert code == 2, new.report()
    assert f"cannot listen on 127.0.0.1:{busy}: address already in use" in new.stderr()
    _wait_output(old, "the new process failed to start: cannot listen on", err=True)
    assert_serving(old.port)
    assert old.alive(), old.report()
    # and a later upgrade works
    again = _successor(old, 1)
    proxy.started.append(again)
    old.expect_exit = True
    old.signal(signal.SIGQUIT)
    _serving(again, 1)
    assert old.proc.wait(timeout=GRACE) == 0
    assert_serving(again.port)


def test_sigint_during_a_drain_stops_at_once(tmp_path: Path, origins, proxy):
    origin = origins(EchoOrigin, "A")
    p = _start(proxy, origin, tmp_path / "u.sock", 1)
    slow = Slow(p.port, delay=3.0).start()
    deadline = time.monotonic() + 5
    while origin.heads == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.expect_exit = True
    p.signal(signal.SIGTERM)
    _wait_output(p, "shutting down (graceful)", err=True)
    started = time.monotonic()
    p.signal(signal.SIGINT)
    p.proc.wait(timeout=5)
    assert time.monotonic() - started < 2.0
    assert "shutting down (fast)" in p.stderr()
    with pytest.raises(AssertionError):
        slow.result()
