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


def test_sigterm_closes_idle_keepalive_at_once_and_ends_in_flight_with_connection_close(
    origins, proxy
):
    """SIGTERM: an idle keep-alive connection is closed at once (FIN, no reset); the request
    in flight finishes, its response says ``Connection: close``, then the process exits 0."""
    slow = origins(SlowOrigin, head_delay=1.5)
    p = proxy(to=[slow.port])
    with Conn(p.port, timeout=5) as idle, Conn(p.port, timeout=5) as busy:
        idle.send(build_request("GET", "/first"))
        assert idle.read_response().status == 200  # (after 1.5 s: now idle, kept alive)
        busy.send(build_request("GET", "/in-flight"))
        time.sleep(1.1)  # idle for longer than DRAIN_RECENT (1 s)
        p.expect_exit = True
        p.signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert not idle._fill(), "the idle keep-alive connection was not closed"
        assert idle.eof and not idle.reset and time.monotonic() - t0 < 0.5
        r = busy.read_response()
    assert r.status == 200 and r.complete and r.body_len == 3000, r
    assert "close" in r.connection_tokens()
    assert p.proc.wait(timeout=4) == 0, p.report()


def test_sigterm_answers_a_connection_accepted_before_it_that_had_not_asked_yet(echo, proxy):
    """A connection accepted just before SIGTERM whose client had not sent its request yet is
    not idle (during an upgrade this is the connection the old process accepted a moment
    before handing the listener over): its request is answered, with ``Connection: close``."""
    p = proxy(to=[echo.port])
    with Conn(p.port, timeout=5) as c:
        time.sleep(0.3)  # accepted by the proxy
        p.expect_exit = True
        p.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert p.alive()
        c.send(build_request("GET", "/late"))
        r = c.read_response()
        assert r.status == 200 and "close" in r.connection_tokens(), r
    assert p.proc.wait(timeout=4) == 0, p.report()


def test_grace_period_zero_cuts_at_once_and_exits_0(origins, proxy):
    slow = origins(SlowOrigin, head_delay=3)
    p = proxy(to=[slow.port], extra=["--grace-period", "0", "--shutdown-timeout", "0"])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/in-flight"))
        time.sleep(0.3)
        p.expect_exit = True
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        assert p.proc.wait(timeout=3) == 0, p.report()
        assert time.monotonic() - t0 < 1.5
    assert "grace period of 0 s over" in p.stderr() or "fast shutdown" in p.stderr(), p.report()


def test_sigterm_answers_the_next_request_of_a_connection_active_a_moment_ago(echo, proxy):
    """A keep-alive connection whose last response ended less than a second before SIGTERM
    is not closed under its client's next request (which may be on the way already, and a
    close would reset it): that request is answered with ``Connection: close``."""
    p = proxy(to=[echo.port])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/first"))
        assert c.read_response().status == 200
        p.expect_exit = True
        p.signal(signal.SIGTERM)
        time.sleep(0.3)
        c.send(build_request("GET", "/next"))
        r = c.read_response()
        assert r.status == 200 and "close" in r.connection_tokens(), r
        assert not c._fill() and c.eof
    assert p.proc.wait(timeout=4) == 0, p.report()
