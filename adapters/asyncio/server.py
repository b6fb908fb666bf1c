"""The asyncio/uvloop adapter: binds the sans-I/O engine to asyncio's Protocol/Transport API.

Theory of operation: every transport callback becomes one event fed to the engine, stamped with
``loop.time()``; the returned actions are executed at once. Connection ids map to transports in
one dict. Timers are lazy: one TimerHandle per owner, moved only when the core asks for an
earlier deadline (an early firing is harmless: the core re-arms). ``async def`` phases run as
tasks and blocking phases in the default executor; both report back with FilterDone. This file
makes no protocol decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
from collections.abc import Sequence
from typing import Any

from proxycore.actions import (
    Action,
    Close,
    Connect,
    PauseReading,
    ReadFile,
    Resolve,
    ResumeReading,
    RunFilter,
    Send,
    SetTimer,
    ShutdownWrite,
)
from proxycore.adapters import BusyPoll, make_engine, print_stats, reload_tls
from proxycore.config import ServerConf
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    Drain,
    EofReceived,
    Event,
    FileRead,
    FilterDone,
    Resolved,
    Started,
    TimerFired,
    WritePaused,
    WriteResumed,
)
from proxycore.phases import Proxy

__all__ = ["AsyncioServer", "serve"]

log = logging.getLogger("proxycore")


def _reset(transport: Any) -> None:
    """Close at once, discarding unsent data, with a TCP reset (the contract's abort)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Downstream(asyncio.Protocol):
    __slots__ = ("cid", "srv")

    def __init__(self, srv: AsyncioServer) -> None:
        self.srv = srv
        self.cid = 0

    def connection_made(self, transport: Any) -> None:
        srv = self.srv
        srv.live += 1
        cid = self.cid = srv.engine.new_id()
        srv.transports[cid] = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        sock = transport.get_extra_info("sockname") or ("", 0)
        srv.feed(Accepted(cid, srv.loop.time(), (peer[0], peer[1]), (sock[0], sock[1])))

    def data_received(self, data: bytes) -> None:
        srv = self.srv
        now = srv.loop.time()
        busy = srv.busy
        if busy is not None and busy.touch(now):
            srv.loop.call_soon(srv.spin)
        srv.run(srv.engine_data(self.cid, data, now))

    def eof_received(self) -> bool:
        srv = self.srv
        srv.feed(EofReceived(self.cid, srv.loop.time()))
        return True  # keep the write side open; the core decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
        srv.live -= 1
        srv.transports.pop(self.cid, None)
        srv.cancel_timer(self.cid)
        srv.feed(Closed(self.cid, srv.loop.time(), repr(exc) if exc else None))

    def pause_writing(self) -> None:
        self.srv.feed(WritePaused(self.cid, self.srv.loop.time()))

    def resume_writing(self) -> None:
        self.srv.feed(WriteResumed(self.cid, self.srv.loop.time()))


class _Upstream(_Downstream):
    __slots__ = ()

    def __init__(self, srv: AsyncioServer, cid: int) -> None:
        self.srv = srv
        self.cid = cid

    def connection_made(self, transport: Any) -> None:
        srv = self.srv
        srv.live += 1
        if srv.connecting.pop(self.cid, None) is None:
            transport.abort()  # the core gave up on this connection (connect timeout)
            return
        srv.transports[self.cid] = transport
        srv.feed(Connected(self.cid, srv.loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.srv
        srv.live -= 1
        if srv.transports.pop(self.cid, None) is None:
            return
        srv.feed(Closed(self.cid, srv.loop.time(), repr(exc) if exc else None))


class AsyncioServer:
    """Runs one Engine on one asyncio loop."""

    def __init__(self, app: Proxy, conf: ServerConf, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = make_engine(app, conf, log, backend=type(loop).__module__.split(".")[0])
        self.loop = loop
        self.transports: dict[int, Any] = {}
        self.connecting: dict[int, asyncio.Task[Any]] = {}
        self.timer_handles: dict[int, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Future[Any]] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._engine_feed = self.engine.feed
        self.engine_data = self.engine.data
        self.live = 0  # transports whose connection_lost has not run yet (still flushing)
        self.busy = BusyPoll.from_conf(conf)
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ core I/O

    def feed(self, event: Event) -> None:
        self.run(self._engine_feed(event))

    def run(self, actions: list[Action]) -> None:
        """Execute the engine's actions, in order."""
        transports = self.transports
        for a in actions:
            t = type(a)
            if t is Send:
                tr = transports.get(a.conn)
                if tr is not None:
                    tr.write(a.data)
            elif t is SetTimer:
                self.set_timer(a.conn, a.deadline)
            elif t is Close:
                self._close(a)
            elif t is PauseReading:
                tr = transports.get(a.conn)
                if tr is not None:
                    tr.pause_reading()
            elif t is ResumeReading:
                tr = transports.get(a.conn)
                if tr is not None:
                    tr.resume_reading()
            elif t is Connect:
                task = self.loop.create_task(self._connect(a))
                self.connecting[a.conn] = task
            elif t is ShutdownWrite:
                tr = transports.get(a.conn)
                if tr is not None and tr.can_write_eof():
                    tr.write_eof()
            elif t is RunFilter:
                self._run_filter(a)
            elif t is Resolve or t is ReadFile:
                self._service_io(a)
            else:  # pragma: no cover - contract violation
                raise TypeError(f"unknown action {a!r}")

    def spin(self) -> None:
        """--busy-poll: a pending callback makes the loop poll with a zero timeout."""
        busy = self.busy
        if busy is not None and busy.keep_spinning(self.loop.time()):
            self.loop.call_soon(self.spin)

    def _close(self, a: Close) -> None:
        task = self.connecting.pop(a.conn, None)
        if task is not None:
            task.cancel()
            return
        tr = self.transports.pop(a.conn, None)
        self.cancel_timer(a.conn)
        if tr is not None:
            if a.abort:
                _reset(tr)
            else:
                tr.close()

    async def _connect(self, a: Connect) -> None:
        peer = a.peer
        try:
            await self.loop.create_connection(lambda: _Upstream(self, a.conn), peer.host, peer.port)
        except asyncio.CancelledError:
            return
        except ConnectionRefusedError as e:
            self._connect_failed(a.conn, "refused", str(e))
        except OSError as e:
            self._connect_failed(a.conn, "error", str(e))

    def _connect_failed(self, cid: int, reason: str, message: str) -> None:
        if self.connecting.pop(cid, None) is not None:
            self.feed(ConnectFailed(cid, self.loop.time(), reason, message))

    def set_timer(self, owner: int, deadline: float | None) -> None:
        handles = self.timer_handles
        h = handles.get(owner)
        if deadline is None:
            if h is not None:
                h.cancel()
                del handles[owner]
            return
        if h is not None:
            if h.when() <= deadline:
                return  # fires early; the core re-arms
            h.cancel()
        handles[owner] = self.loop.call_at(deadline, self._fire, owner)

    def cancel_timer(self, owner: int) -> None:
        h = self.timer_handles.pop(owner, None)
        if h is not None:
            h.cancel()

    def _fire(self, owner: int) -> None:
        self.timer_handles.pop(owner, None)
        self.feed(TimerFired(owner, self.loop.time()))

    def _service_io(self, a: Resolve | ReadFile) -> None:
        async def resolve(a: Resolve) -> None:
            try:
                infos = await self.loop.getaddrinfo(a.host, None, type=socket.SOCK_STREAM)
            except OSError as e:
                self.feed(Resolved(a.conn, a.token, self.loop.time(), error=str(e)))
                return
            addrs = sorted({str(i[4][0]) for i in infos})
            self.feed(Resolved(a.conn, a.token, self.loop.time(), addresses=addrs))

        async def read(a: ReadFile) -> None:
            def load() -> bytes:
                with open(a.path, "rb") as f:
                    return f.read()

            try:
                content = await self.loop.run_in_executor(None, load)
            except OSError as e:
                self.feed(FileRead(a.conn, a.token, self.loop.time(), error=str(e)))
                return
            self.feed(FileRead(a.conn, a.token, self.loop.time(), content=content))

        task = self.loop.create_task(resolve(a) if isinstance(a, Resolve) else read(a))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _run_filter(self, a: RunFilter) -> None:
        if a.kind == "blocking":
            fut: asyncio.Future[Any] = self.loop.run_in_executor(None, a.call)
        else:
            fut = asyncio.ensure_future(a.call(), loop=self.loop)
        self.tasks.add(fut)
        fut.add_done_callback(lambda f: self._filter_done(a, f))

    def _filter_done(self, a: RunFilter, fut: asyncio.Future[Any]) -> None:
        self.tasks.discard(fut)
        now = self.loop.time()
        if fut.cancelled():
            self.feed(FilterDone(a.conn, a.token, now, error=asyncio.CancelledError()))
            return
        exc = fut.exception()
        if exc is not None:
            self.feed(FilterDone(a.conn, a.token, now, error=exc))
        else:
            self.feed(FilterDone(a.conn, a.token, now, result=fut.result()))

    # ------------------------------------------------------------------ serving

    async def start(self, addrs: Sequence[tuple[str, int]]) -> None:
        for host, port in addrs:
            server = await self.loop.create_server(
                lambda: _Downstream(self),
                host,
                port,
                reuse_address=True,
                reuse_port=self.engine.conf.reuse_port or None,
                backlog=1024,
            )
            self.servers.append(server)
            for sock in server.sockets:
                log.info("listening on %s", sock.getsockname()[:2])

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds)."""
        for s in self.servers:
            s.close()
        self.feed(Drain(0, self.loop.time()))
        deadline = self.loop.time() + grace
        while (not self.engine.idle or self.live) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for tr in list(self.transports.values()):
            _reset(tr)
        if self.engine.recorder is not None:
            self.engine.recorder.flush_all()

    async def serve_forever(self, addrs: Sequence[tuple[str, int]], grace: float) -> None:
        await self.start(addrs)
        self.feed(Started(0, self.loop.time()))
        stop = asyncio.Event()
        mode = {"graceful": True}

        def on_signal(graceful: bool) -> None:
            mode["graceful"] = graceful
            stop.set()

        try:
            self.loop.add_signal_handler(signal.SIGTERM, on_signal, True)
            self.loop.add_signal_handler(signal.SIGINT, on_signal, False)
            self.loop.add_signal_handler(signal.SIGHUP, reload_tls, self.engine)
            self.loop.add_signal_handler(
                signal.SIGUSR1,
                lambda: print_stats(self.engine, tasks=len(asyncio.all_tasks(self.loop))),
            )
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread
            pass
        print(f"proxycore ready backend={type(self.loop).__module__}", flush=True)
        await stop.wait()
        log.info("shutting down (%s)", "graceful" if mode["graceful"] else "fast")
        await self.drain(grace if mode["graceful"] else 0.0)


def serve(
    app: Proxy,
    addrs: Sequence[tuple[str, int]],
    conf: ServerConf,
    uvloop: bool = False,
    grace: float = 5.0,
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
        runner.run(srv.serve_forever(addrs, grace))
