"""The shutdown's phases in the shared socket driver (adapters/_sockets.py), on a driver whose
reactor is a fake clock: SIGTERM waits for the exchanges in flight up to ``grace_period``,
then Stop, then ``shutdown_timeout`` for connections still flushing their last bytes; SIGINT
does both at once, also during a graceful stop; a second SIGTERM changes nothing; nothing is
fed after Stop."""

from __future__ import annotations

import signal
import socket
from typing import Any

from proxycore import ServerConf
from proxycore.adapters._sockets import Conn, SocketDriver
from proxycore.events import Drain, Stop


class Clock:
    t = 100.0


class FakeDriver(SocketDriver):
    def __init__(self, conf: ServerConf) -> None:
        from proxycore.builtin import ReverseProxy
        from proxycore.peer import Peer

        super().__init__(ReverseProxy([Peer("127.0.0.1", 9)]), conf, "marked", backend="fake")
        self.clock = Clock()
        self.woken = 0
        self.fed: list[Any] = []
        feed = self._engine_feed

        def spy(ev: Any) -> Any:
            self.fed.append(ev)
            return feed(ev)

        self._engine_feed = spy

    def now(self) -> float:
        return self.clock.t

    def watch(self, c: Conn) -> None:
        pass

    def forget(self, c: Conn) -> None:
        pass

    def watch_listener(self, sock: Any, on: bool) -> None:
        pass

    def wake_main(self) -> None:
        self.woken += 1


def _driver(grace: float = 10.0, last: float = 2.0) -> FakeDriver:
    conf = ServerConf(grace_period=grace, shutdown_timeout=last)
    return FakeDriver(conf)


def _flushing(d: FakeDriver) -> Conn:
    a, b = socket.socketpair()
    b.close()
    c = Conn(99, a)
    c.closing = True
    c.out.append(b"last bytes")
    d.flushing.add(c)
    return c


def _kinds(d: FakeDriver) -> list[type]:
    return [type(e) for e in d.fed]


def test_an_idle_graceful_stop_ends_at_the_first_step() -> None:
    d = _driver()
    d.on_signal(signal.SIGTERM)
    assert d.stop_mode == "graceful" and d.woken == 1
    assert _kinds(d) == [Drain]
    assert d.shutdown_step() is None
    assert _kinds(d) == [Drain, Stop] and d.fed[-1].grace == 10.0


def test_the_last_bytes_get_shutdown_timeout_after_the_grace_period() -> None:
    d = _driver(grace=10.0, last=2.0)
    c = _flushing(d)
    d.on_signal(signal.SIGTERM)
    assert d.shutdown_step() == 0.05  # still flushing: within the grace period, wait
    d.clock.t += 10.0  # the grace period is over: Stop, then the last-bytes period
    assert d.shutdown_step() == 0.05
    assert Stop in _kinds(d) and d.stopped
    d.clock.t += 1.0
    assert d.shutdown_step() == 0.05
    d.clock.t += 1.0  # shutdown_timeout over: discarded
    assert d.shutdown_step() is None
    assert c.sock.fileno() == -1 and not d.flushing


def test_flushed_connections_end_the_stop_early() -> None:
    d = _driver()
    c = _flushing(d)
    d.on_signal(signal.SIGTERM)
    assert d.shutdown_step() == 0.05
    d._discard(c)  # (flushed and closed)
    assert d.shutdown_step() is None


def test_sigint_during_a_graceful_stop_cuts_at_once_and_a_second_sigterm_does_not() -> None:
    d = _driver(grace=10.0, last=2.0)
    _flushing(d)
    d.on_signal(signal.SIGTERM)
    d.on_signal(signal.SIGTERM)
    assert d.stop_mode == "graceful" and _kinds(d) == [Drain]
    assert d.shutdown_step() == 0.05
    d.on_signal(signal.SIGINT)
    assert d.stop_mode == "fast"
    assert d.shutdown_step() is None  # no grace, no last bytes
    stop = d.fed[-1]
    assert isinstance(stop, Stop) and stop.grace == 0.0


def test_nothing_is_fed_after_stop() -> None:
    d = _driver()
    d.on_signal(signal.SIGINT)
    assert d.shutdown_step() is None
    n = len(d.fed)
    d.feed(Drain(0, d.now()))
    assert len(d.fed) == n
