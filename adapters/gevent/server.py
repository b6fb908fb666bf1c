"""The gevent adapter.

Theory of operation: gevent's hub (libev/libuv) watches every socket with io watchers and calls
the shared socket driver (``adapters/_sockets.py``) when one is readable or writable; timers are
hub timers. Filter phases run in greenlets: by default every overridden phase not marked
``@proxycore.nonblocking`` is spawned as its own greenlet (a greenlet per phase call), so user code
written for gevent — gevent-aware database clients, ``gevent.sleep``, gevent sockets — may wait
inside a phase while every other connection keeps being served. The process does **not** need
to be monkey-patched; if your blocking library needs it, call ``gevent.monkey.patch_all()``
yourself at the top of your program (opt-in, documented in the README).
"""

from __future__ import annotations

import _socket
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.socket
import greenlet

from proxycore.adapters._sockets import SIGNALS, Conn, SocketDriver
from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = ["GeventServer", "serve"]

log = logging.getLogger("proxycore")


class GeventServer(SocketDriver):
    def __init__(self, app: Proxy, conf: ServerConf, blocking_phases: str = "all") -> None:
        super().__init__(app, conf, blocking_phases)
        self.now = time.monotonic  # type: ignore[method-assign]  # (one call less per event)
        self.loop = gevent.get_hub().loop
        self._listen_watchers: dict[int, Any] = {}
        self._idle: Any = None  # the --busy-poll watcher
        self._spin_pause: Any = None  # its back-off timer
        self.stop_requested = gevent.event.Event()

    def wake_main(self) -> None:
        self.stop_requested.set()

    def stats_extra(self) -> dict[str, Any]:
        return {"greenlets": sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet))}

    def now(self) -> float:
        return time.monotonic()

    def watch(self, c: Conn) -> None:
        w = c.watch
        if w is None:
            w = c.watch = [None, None]
        for i, (want, cb) in enumerate(
            ((c.reading, self.on_readable), (c.writing, self.on_writable))
        ):
            watcher = w[i]
            if want:
                if watcher is None:
                    watcher = w[i] = self.loop.io(c.fd, 1 << i)
                if not watcher.active:
                    watcher.start(cb, c)
            elif watcher is not None and watcher.active:
                watcher.stop()

    def start_spinning(self) -> None:
        # An active idle watcher makes the hub's loop poll with a zero timeout.
        w = self._idle
        if w is None:
            w = self._idle = self.loop.idle()
        if not w.active:
            w.start(self._spin)

    def _spin(self) -> None:
        busy = self.busy
        delay = None if busy is None else busy.keep_spinning(time.monotonic())
        if delay == 0.0 or self._idle is None:
            return
        self._idle.stop()
        if delay is not None:  # the loop is busy: step aside, then carry on
            self._spin_pause = t = self.loop.timer(delay)
            t.start(self._resume_spinning)

    def _resume_spinning(self) -> None:
        if self._spin_pause is not None:
            self._spin_pause.close()
            self._spin_pause = None
        if self._idle is not None:
            self._idle.start(self._spin)

    def forget(self, c: Conn) -> None:
        if c.watch is not None:
            for watcher in c.watch:
                if watcher is not None:
                    watcher.stop()
                    watcher.close()
            c.watch = None

    def watch_listener(self, sock: Any, on: bool) -> None:
        if on:
            w = self.loop.io(sock.fileno(), 1)
            w.start(self.on_accept, sock)
            self._listen_watchers[sock.fileno()] = w
        else:
            w = self._listen_watchers.pop(sock.fileno(), None)
            if w is not None:
                w.stop()
                w.close()

    def call_at(self, deadline: float, fn: Callable[[int], None], arg: int) -> Any:
        t = self.loop.timer(max(0.0, deadline - time.monotonic()))
        t.start(fn, arg)
        return (deadline, t)

    def when(self, handle: Any) -> float:
        return float(handle[0])

    def cancel(self, handle: Any) -> None:
        handle[1].stop()
        handle[1].close()

    def run_blocking(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        g = gevent.spawn(call)
        g.link(lambda g: done(g.value) if g.successful() else done(error=g.exception))

    def run_in_thread(self, fn: Callable[[], Any], done: Callable[..., None]) -> None:
        pool = gevent.get_hub().threadpool

        def waiter() -> None:
            try:
                result = pool.apply(fn)
            except BaseException as e:  # reported to the core as FilterDone(error=...)
                done(error=e)
            else:
                done(result)

        gevent.spawn(waiter)

    def resolve(self, host: str, port: int, done: Callable[[Any], None]) -> None:
        g = gevent.spawn(gevent.socket.getaddrinfo, host, port, 0, _socket.SOCK_STREAM)
        g.link(lambda g: done(g.value if g.successful() else g.exception))


def serve(
    app: Proxy,
    addrs: Sequence[tuple[str, int]],
    conf: ServerConf,
    blocking_phases: str = "all",
    **_: Any,
) -> None:
    """Serve on gevent's hub until SIGTERM (graceful) or SIGINT (fast)."""
    srv = GeventServer(app, conf, blocking_phases)
    for sig in SIGNALS:
        gevent.signal_handler(sig, srv.on_signal, sig)
    srv.listen(addrs)  # after the handlers: an early SIGTERM drains instead of killing
    print("proxycore ready backend=gevent", flush=True)
    srv.stop_requested.wait()
    while (delay := srv.shutdown_step()) is not None:
        gevent.sleep(delay)
