"""The trio adapter: binds the shared socket driver to a trio event loop.

Theory of operation: connections are plain non-blocking sockets, and the shared driver
(``adapters/_sockets.py``, also behind asyncio/uvloop, gevent and threads) does everything the
contract asks of them: reads feed the engine, Send tries an immediate ``send`` and buffers the
rest, connects are non-blocking, Close flushes or resets, listeners are bound by
``SocketDriver.listen``. This file is only the reactor, built on trio's low-level primitives.

Readiness: the driver's read/write interest in every socket (and the listeners) lives in one
selector of our own (epoll on Linux, kqueue on the BSDs and macOS), level-triggered and changed
only when interest changes. The selector's own descriptor is pollable, so one **reactor task**
waits for it with ``trio.lowlevel.wait_readable`` and, when it is ready, takes every ready event
with a zero-timeout ``select`` and hands it to the driver. So an idle connection costs no task
at all: a trio task waiting on a descriptor costs about 3 KiB, more than the rest of an idle
connection together (a task per connection through anyio streams cost 16 KiB per idle
connection and ran at ~0.35x the other backends' requests/second; ``python bench/run.py``
compares this one with them).

Timers: a heap of ``(deadline, seq, handle)`` with lazy cancellation, served by one **timer
task** sleeping in a cancel scope whose trio deadline is the heap's earliest entry (moved
earlier in place when an earlier timer arrives). The engine's clock is ``time.monotonic``
(the driver and busy polling use it too); a deadline becomes a trio deadline by the two clocks'
current difference. ``async def`` phases run as tasks on this loop (trio code works in them);
blocking phases, file reads and name lookups run in worker threads (``trio.to_thread``, a
bounded limiter of ``threads`` threads, default 40) or trio's resolver. Each reports back by
feeding the engine from its task: every feed runs synchronously and never awaits, so "one
engine, one thread of control" holds.

Busy polling (``--busy-poll``): while the window is open, the reactor task does not wait for
the descriptor but yields with a checkpoint (so trio polls with a zero timeout) and polls the
selector at every turn, which also spares a re-arm of trio's wait per read; when the loop is
busy anyway it waits as usual for ``BusyPoll.BACKOFF``, then polls on until the window closes
(about 30 us less added latency at one connection than a separate spinner task).

Signals come through ``trio.open_signal_receiver`` and go to the shared driver's
``on_signal`` (SIGTERM drains, SIGINT stops fast, SIGQUIT hands the listeners to a new
process, SIGHUP reloads, SIGUSR1 prints the stats line, ``tasks``: every trio task; none
belongs to a connection). This file makes no protocol decision.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from proxycore.adapters._sockets import SIGNALS, Conn, SelectorWatch, SocketDriver
from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = ["TrioServer", "serve"]

log = logging.getLogger("proxycore")
_monotonic = time.monotonic


class _Timer:
    __slots__ = ("arg", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[int], None], arg: int) -> None:
        self.when, self.fn, self.arg, self.cancelled = when, fn, arg, False


class TrioServer(SelectorWatch, SocketDriver):
    """Runs one Engine on one trio loop: one reactor task, one timer task, no task per
    connection."""

    def __init__(
        self, app: Proxy, conf: ServerConf, threads: int = 40, blocking_phases: str = "marked"
    ) -> None:
        super().__init__(app, conf, blocking_phases, backend="trio")
        self.now = _monotonic  # type: ignore[method-assign]  # (one call less per event)
        self.sel = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._timer_scope: trio.CancelScope | None = None
        self.limiter = trio.CapacityLimiter(threads)
        self.nursery: trio.Nursery | None = None
        self.spinning = False  # --busy-poll: the reactor polls instead of waiting
        self._stop_requested = trio.Event()

    # ------------------------------------------------------------------ reactor hooks

    def now(self) -> float:
        return _monotonic()

    def call_at(self, deadline: float, fn: Callable[[int], None], arg: int) -> _Timer:
        t = _Timer(deadline, fn, arg)
        heap = self.heap
        heapq.heappush(heap, (deadline, next(self._seq), t))
        scope = self._timer_scope
        if scope is not None and heap[0][2] is t:  # the earliest: wake the timer task sooner
            scope.deadline = _trio_time(deadline)
        return t

    def when(self, handle: _Timer) -> float:
        return handle.when

    def cancel(self, handle: _Timer) -> None:
        handle.cancelled = True

    def start_spinning(self) -> None:
        self.spinning = True  # the reactor task polls at every turn (see _reactor)

    def run_blocking(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        async def in_thread() -> Any:
            return await trio.to_thread.run_sync(call, limiter=self.limiter, abandon_on_cancel=True)

        self._spawn(self._report, in_thread, done)

    run_in_thread = run_blocking

    def run_async(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        # An ``async def`` phase runs on this loop, as a task: trio code works in it.
        self._spawn(self._report, call, done)

    def resolve(self, host: str, port: int, done: Callable[[Any], None]) -> None:
        async def lookup() -> Any:
            try:
                return await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:  # handed to the core as a failed lookup
                return e

        def finished(result: Any = None, error: BaseException | None = None) -> None:
            done(error if error is not None else result)

        self._spawn(self._report, lookup, finished)

    # ------------------------------------------------------------------ tasks

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    async def _report(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        """Await ``call()`` and hand its result or error to ``done`` (which feeds the engine)."""
        try:
            result = await call()
        except BaseException as e:  # reported to the core as FilterDone(error=...)
            if not self.stopped:
                _guarded(done, None, e)
            if not isinstance(e, Exception):
                raise
        else:
            if not self.stopped:
                _guarded(done, result, None)

    async def _reactor(self) -> None:
        """Wait for the selector's descriptor, then hand every ready event to the driver; while
        busy polling, poll the selector at every turn of trio's loop instead."""
        sel = self.sel
        fd = sel.fileno()
        busy = self.busy
        poll = self._poll
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        while True:
            if self.spinning and busy is not None:
                delay = busy.keep_spinning(_monotonic())
                if delay is None:
                    self.spinning = False
                elif delay == 0.0:
                    await checkpoint()  # trio polls with a zero timeout; so do we
                    poll(sel.select(0))
                else:  # the loop is busy anyway: wait as usual for that long, then poll on
                    with trio.move_on_after(delay):
                        while True:
                            await wait_readable(fd)
                            poll(sel.select(0))
            else:
                await wait_readable(fd)
                poll(sel.select(0))

    def _poll(self, ready: list[tuple[Any, int]]) -> None:
        for key, mask in ready:
            data = key.data
            try:
                self.dispatch(data, mask)
            except Exception:  # a bug here must not end the worker: close that connection
                log.exception("trio adapter: error on connection")
                if isinstance(data, Conn):
                    self._lost(data, "adapter error")

    async def _timers(self) -> None:
        heap = self.heap
        while True:
            now = _monotonic()
            while heap and (heap[0][2].cancelled or heap[0][0] <= now):
                t = heapq.heappop(heap)[2]
                if not t.cancelled:
                    try:
                        t.fn(t.arg)
                    except Exception:  # a bug here must not end the worker
                        log.exception("trio adapter: error in a timer")
            deadline = _trio_time(heap[0][0]) if heap else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None

    def _count_tasks(self) -> int:
        """Every trio task in this run."""
        n = 0
        todo = [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            if task is None:
                continue
            n += 1
            for nursery in task.child_nurseries:
                todo.extend(nursery.child_tasks)
        return n

    # ------------------------------------------------------------------ serving

    def wake_main(self) -> None:
        self._stop_requested.set()

    def stats_extra(self) -> dict[str, Any]:
        return {"tasks": self._count_tasks()}

    async def serve_forever(self, addrs: Sequence[tuple[str, int]]) -> None:
        failed: BaseException | None = None
        with trio.open_signal_receiver(*SIGNALS) as received:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._timers)
                try:
                    self.listen(addrs)
                except BaseException as e:  # raised below, not wrapped in an ExceptionGroup
                    failed = e
                else:
                    nursery.start_soon(self._reactor)
                    nursery.start_soon(self._signals, received)
                    print("proxycore ready backend=trio", flush=True)
                    await self._stop_requested.wait()
                    while (delay := self.shutdown_step()) is not None:
                        await trio.sleep(delay)
                self.stopped = True
                nursery.cancel_scope.cancel()
        self.sel.close()
        if failed is not None:
            raise failed

    async def _signals(self, received: Any) -> None:
        async for signum in received:
            self.on_signal(signum)


def _trio_time(deadline: float) -> float:
    """A ``time.monotonic`` deadline on trio's clock."""
    return deadline - _monotonic() + trio.current_time()


def _guarded(done: Callable[..., None], result: Any, error: BaseException | None) -> None:
    try:
        if error is not None:
            done(error=error)
        else:
            done(result)
    except Exception:  # a bug here must not end the worker
        log.exception("trio adapter: error reporting a result")


def serve(
    app: Proxy,
    addrs: Sequence[tuple[str, int]],
    conf: ServerConf,
    threads: int = 40,
    blocking_phases: str = "marked",
    **_: Any,
) -> None:
    """Serve ``app`` on ``addrs`` until SIGTERM (graceful) or SIGINT (fast). ``threads``
    bounds the worker threads of blocking phases."""
    srv = TrioServer(app, conf, int(threads), blocking_phases)
    trio.run(srv.serve_forever, list(addrs))
