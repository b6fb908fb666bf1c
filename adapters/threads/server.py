"""The threads adapter: for programs that cannot use an event loop.

Theory of operation: one I/O thread owns the engine and every socket. It waits in a selector
(epoll on Linux) with a timeout equal to the nearest timer (kept in a heap), and hands readiness
to the shared socket driver (``adapters/_sockets.py``). Filter phases run in a bounded
``ThreadPoolExecutor`` (``pool_size`` threads, default 32): by default every overridden phase that
is not marked ``@proxycore.nonblocking`` is deferred there, so user code may block freely. A
finished phase puts its result on a queue and writes one byte to a socketpair to wake the I/O
thread, which feeds FilterDone. So 1,000 keep-alive connections cost one I/O thread plus the pool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any

from proxycore.adapters._sockets import SIGNALS, SelectorWatch, SocketDriver
from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = ["ThreadsServer", "serve"]

log = logging.getLogger("proxycore")
_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Timer:
    __slots__ = ("arg", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[int], None], arg: int) -> None:
        self.when, self.fn, self.arg, self.cancelled = when, fn, arg, False


class ThreadsServer(SelectorWatch, SocketDriver):
    def __init__(
        self, app: Proxy, conf: ServerConf, pool_size: int = 32, blocking_phases: str = "all"
    ) -> None:
        super().__init__(app, conf, blocking_phases)
        self.now = time.monotonic  # type: ignore[method-assign]  # (one call less per event)
        self.sel = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="proxycore-phase")
        self.done: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, _R, None)

    # reactor hooks
    def now(self) -> float:
        return time.monotonic()

    def call_at(self, deadline: float, fn: Callable[[int], None], arg: int) -> _Timer:
        t = _Timer(deadline, fn, arg)
        heapq.heappush(self.heap, (deadline, next(self._seq), t))
        return t

    def when(self, handle: _Timer) -> float:
        return handle.when

    def cancel(self, handle: _Timer) -> None:
        handle.cancelled = True

    def _post(self, fn: Callable[[], None]) -> None:
        self.done.put(fn)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def run_blocking(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        def work() -> None:
            error: BaseException | None = None
            result: Any = None
            try:
                result = call()
            except BaseException as e:  # reported to the core as FilterDone(error=...)
                error = e
            self._post(lambda: done(result, error))

        self.pool.submit(work)

    run_in_thread = run_blocking

    def resolve(self, host: str, port: int, done: Callable[[Any], None]) -> None:
        def work() -> None:
            try:
                res: Any = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                res = e
            self._post(lambda: done(res))

        self.pool.submit(work)

    # the loop
    def start_spinning(self) -> None:
        pass  # run_once polls with a zero timeout while self.busy says so

    def run_once(self, max_wait: float | None) -> None:
        heap = self.heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        timeout = max_wait
        busy = self.busy
        if busy is not None and busy.spinning:
            delay = busy.keep_spinning(time.monotonic())
            if delay is not None:  # 0: poll; else the loop is busy: sleep at most that long
                timeout = delay if timeout is None else min(delay, timeout)
        if heap:
            t = max(0.0, heap[0][0] - time.monotonic())
            timeout = t if timeout is None else min(t, timeout)
        for key, mask in self.sel.select(timeout):
            data = key.data
            if data is None:
                self._drain_done()
            else:
                self.dispatch(data, mask)
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
            if not t.cancelled:
                t.fn(t.arg)

    def _drain_done(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                fn = self.done.get_nowait()
            except Empty:
                return
            fn()

    def wake_main(self) -> None:
        pass  # (request_stop runs on this loop's thread: serve_forever sees stop_mode next turn)

    def serve_forever(self, addrs: Sequence[tuple[str, int]]) -> None:
        self.listen(addrs)
        print("proxycore ready backend=threads", flush=True)
        while self.stop_mode is None:
            self.run_once(0.5)
        while (delay := self.shutdown_step()) is not None:
            self.run_once(delay)
        self.pool.shutdown(wait=False, cancel_futures=True)


def serve(
    app: Proxy,
    addrs: Sequence[tuple[str, int]],
    conf: ServerConf,
    pool_size: int = 32,
    blocking_phases: str = "all",
    **_: Any,
) -> None:
    """Serve with one I/O thread and ``pool_size`` phase threads until SIGTERM/SIGINT."""
    srv = ThreadsServer(app, conf, pool_size, blocking_phases)

    def on_signal(signum: int, _frame: Any) -> None:
        # (Python runs handlers on the main thread between two bytecodes, maybe inside a
        # feed: the signal is handled on the loop's next turn)
        srv._post(lambda: srv.on_signal(signum))

    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, on_signal)
    srv.serve_forever(addrs)
