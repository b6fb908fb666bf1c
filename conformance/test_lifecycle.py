"""Process lifecycle: SIGTERM is a graceful shutdown (in-flight requests finish)."""

from __future__ import annotations

import signal
import time

from conformance.client import Conn, build_request
from conformance.origins import SlowOrigin


def test_sigterm_idle_exits_cleanly(echo, echo_proxy):
    echo_proxy.signal(signal.SIGTERM)
    t0 = time.monotonic()
    while echo_proxy.alive() and time.monotonic() - t0 < 3:
        time.sleep(0.05)
    assert not echo_proxy.alive(), "proxy still running 3s after SIGTERM while idle"
    assert echo_proxy.proc.returncode == 0, echo_proxy.report()


def test_sigterm_lets_in_flight_request_finish(origins, proxy):
    slow = origins(SlowOrigin, head_delay=0.8)
    p = proxy(to=[slow.port])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/in-flight"))
        time.sleep(0.2)
        p.signal(signal.SIGTERM)
        r = c.read_response()
    assert r.status == 200 and r.complete and r.body_len == 3000, r
    t0 = time.monotonic()
    while p.alive() and time.monotonic() - t0 < 4:
        time.sleep(0.05)
    assert not p.alive(), "proxy did not exit after finishing the in-flight request"
