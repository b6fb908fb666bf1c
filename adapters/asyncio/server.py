"""The asyncio/uvloop adapter: binds the shared socket driver to an asyncio event loop.

Theory of operation: connections are plain non-blocking sockets watched with the loop's
``add_reader`` / ``add_writer`` (epoll through asyncio's selector, or libuv's poll handles on
uvloop), and the shared driver (``adapters/_sockets.py``, also behind gevent and threads) does
everything else: reads feed the engine, Send tries an immediate ``send`` and buffers the rest,
connects are non-blocking, Close flushes or resets. Timers are ``loop.call_at`` handles.
``async def`` phases run as tasks on this loop and blocking phases in the default executor;
both report back with FilterDone. This file makes no protocol decision.

Why not asyncio's Protocol/Transport API: each read then goes through the transport's
buffering and the protocol callback machinery (on uvloop, a context switch per callback), and
each write through the transport's write path; the driver's direct ``recv``/``send`` does the
same job with fewer layers (uvloop 39.5k -> 47.0k req/s on one core in an A/B on the bench box;
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from proxycore.adapters._sockets import SIGNALS, Conn, SocketDriver
from proxycore.config import ServerConf
from proxycore.phases import Proxy

__all__ = ["AsyncioServer", "serve"]

log = logging.getLogger("proxycore")


class AsyncioServer(SocketDriver):
    """Runs one Engine on one asyncio (or uvloop) loop."""

    def __init__(
        self,
        app: Proxy,
        conf: ServerConf,
        loop: asyncio.AbstractEventLoop,
        blocking_phases: str = "marked",
    ) -> None:
        self.loop = loop
        super().__init__(app, conf, blocking_phases, backend=type(loop).__module__.split(".")[0])
        self.tasks: set[asyncio.Future[Any]] = set()
        self._listening: set[int] = set()
        self.now = loop.time  # type: ignore[method-assign]  # (one call less per event)

    # ------------------------------------------------------------------ reactor hooks

    def now(self) -> float:
        return self.loop.time()

    def watch(self, c: Conn) -> None:
        w = c.watch
        if w is None:
            w = c.watch = [False, False]
        loop = self.loop
        if c.reading != w[0]:
            w[0] = c.reading
            if c.reading:
                loop.add_reader(c.fd, self.on_readable, c)
            else:
                loop.remove_reader(c.fd)
        if c.writing != w[1]:
            w[1] = c.writing
            if c.writing:
                loop.add_writer(c.fd, self.on_writable, c)
            else:
                loop.remove_writer(c.fd)

    def forget(self, c: Conn) -> None:
        w = c.watch
        if w is not None:
            if w[0]:
                self.loop.remove_reader(c.fd)
            if w[1]:
                self.loop.remove_writer(c.fd)
            c.watch = None

    def watch_listener(self, sock: Any, on: bool) -> None:
        fd = sock.fileno()
        if on:
            self.loop.add_reader(fd, self.on_accept, sock)
            self._listening.add(fd)
        elif fd in self._listening:
            self._listening.discard(fd)
            self.loop.remove_reader(fd)

    def start_spinning(self) -> None:
        self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        # --busy-poll: a pending callback makes the loop poll with a zero timeout.
        busy = self.busy
        delay = None if busy is None else busy.keep_spinning(time.monotonic())
        if delay == 0.0:
            self.loop.call_soon(self._spin)
        elif delay is not None:  # the loop is busy: step aside, then carry on
            self.loop.call_later(delay, self._spin)

    def call_at(self, deadline: float, fn: Callable[[int], None], arg: int) -> Any:
        return self.loop.call_at(deadline, fn, arg)

    def when(self, handle: Any) -> float:
        return float(handle.when())

    def cancel(self, handle: Any) -> None:
        handle.cancel()

    def _track(self, fut: asyncio.Future[Any], done: Callable[..., None]) -> None:
        self.tasks.add(fut)

        def finished(f: asyncio.Future[Any]) -> None:
            self.tasks.discard(f)
            if f.cancelled():
                done(error=asyncio.CancelledError())
                return
            exc = f.exception()
            if exc is not None:
                done(error=exc)
            else:
                done(f.result())

        fut.add_done_callback(finished)

    def run_blocking(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        self._track(self.loop.run_in_executor(None, call), done)

    def run_async(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        # An ``async def`` phase runs on this loop, as a task.
        self._track(asyncio.ensure_future(call(), loop=self.loop), done)

    run_in_thread = run_blocking  # both: the loop's default executor

    def resolve(self, host: str, port: int, done: Callable[[Any], None]) -> None:
        async def lookup() -> Any:
            try:
                return await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except Exception as e:  # handed to the core as a failed lookup
                return e

        def finished(result: Any = None, error: BaseException | None = None) -> None:
            done(error if error is not None else result)

        self._track(asyncio.ensure_future(lookup(), loop=self.loop), finished)

    # ------------------------------------------------------------------ serving

    def wake_main(self) -> None:
        self._stop_requested.set()

    def stats_extra(self) -> dict[str, Any]:
        return {"tasks": len(asyncio.all_tasks(self.loop))}

    async def serve_forever(self, addrs: Sequence[tuple[str, int]]) -> None:
        self._stop_requested = asyncio.Event()
        try:
            for sig in SIGNALS:
                self.loop.add_signal_handler(sig, self.on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
        # Listen only once the handlers are in: a SIGTERM sent as soon as the port accepts
        # must drain, not kill the process with the default action.
        try:
            self.listen(addrs)
        except BaseException:
            # A start-up error: the process exits 2 with its one line. Take the handlers out
            # now and ignore SIGTERM/SIGINT (a supervisor stopping its other workers): closing
            # the loop closes its signal wake-up pipe before it removes its handlers, and a
            # signal in between prints "Exception ignored ... signal wakeup fd" with a traceback.
            for sig in SIGNALS:
                try:
                    self.loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass
            with contextlib.suppress(ValueError):  # (not the main thread)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise
        print(f"proxycore ready backend={type(self.loop).__module__}", flush=True)
        await self._stop_requested.wait()
        while (delay := self.shutdown_step()) is not None:
            await asyncio.sleep(delay)


def serve(
    app: Proxy,
    addrs: Sequence[tuple[str, int]],
    conf: ServerConf,
    uvloop: bool = False,
    **_: Any,
) -> None:
    """Serve ``app`` on ``addrs`` until a signal; ``uvloop=True`` uses uvloop's loop."""
    if uvloop:
        import uvloop as _uvloop

        factory = _uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        srv = AsyncioServer(app, conf, loop)
        runner.run(srv.serve_forever(addrs))
