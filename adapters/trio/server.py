"""The trio adapter (through anyio): binds one :class:`proxycore.Engine` to a trio event loop.

Theory of operation
-------------------
Everything runs on one trio thread, so "one engine, one thread of control" holds for free, as
long as feeding the engine and executing its actions never awaits. :meth:`Adapter.feed` is that
critical section: it queues the event and, unless a batch is already running, drains the queue,
feeding each event and executing its actions synchronously. Events produced while executing
actions (a write-paused signal) land in the queue and are fed after the batch, never
recursively. The engine's clock is the loop's clock (``anyio.current_time()``).

Each connection (downstream or upstream) is a :class:`Conn` run by one task (``conn_task``)
inside its own cancel scope: the task connects (upstream) or announces ``Accepted``
(downstream), then runs a reader and a writer. The reader feeds ``DataReceived`` /
``EofReceived`` and waits while reading is paused. ``Send`` only appends to the connection's
outgoing buffer and wakes the writer, which flushes in order, signals ``WritePaused`` /
``WriteResumed`` around a high/low-water mark, and performs ``ShutdownWrite`` (send_eof) and a
graceful ``Close`` after the buffer is empty. ``Close(abort=True)`` cancels the connection's
scope and closes the socket with ``SO_LINGER 0`` (RST); pending output is discarded. A ``Close``
during a connect cancels it and feeds nothing. A network error feeds ``Closed(error=...)`` once.

Timers: one deadline per owner in a dict plus a heap, served by one timer task that sleeps
until the earliest deadline (a cancel scope with a deadline) and is woken when an earlier one
arrives. ``RunFilter`` runs in its own task: awaited on the loop (``async``) or on a bounded
thread pool (``blocking``, ``anyio.to_thread``); exactly one ``FilterDone`` is fed back.

Signals: SIGTERM stops accepting, feeds ``Drain`` and waits until the engine is idle and every
graceful close has flushed (or ``grace`` seconds), then aborts the rest; SIGINT aborts at once
(also during a drain). SIGUSR1 prints one ``proxycore stats {json}`` line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import math
import signal
import socket
import struct
from collections import deque
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener

from proxycore import actions as A
from proxycore import events as E
from proxycore.adapters import BusyPoll, make_engine, print_stats, reload_tls
from proxycore.config import ServerConf
from proxycore.engine import Engine
from proxycore.peer import Peer

__all__ = ["serve"]

log = logging.getLogger("proxycore")
HIGH_WATER = 65536
LOW_WATER = 16384
READ_SIZE = 65536
_now = anyio.current_time


class Conn:
    """One socket: outgoing buffer, flow-control flags, and the scopes that stop it."""

    def __init__(self, cid: int, stream: anyio.abc.SocketStream | None) -> None:
        self.cid = cid
        self.stream = stream
        self.buf: list[bytes] = []
        self.size = 0
        self.wpaused = self.paused = self.shut = self.eof = self.closing = False
        self.dead = self.abort = False
        self.tasks = 0  # tasks serving this socket (for stats)
        self.wake = anyio.Event()
        self.resume = anyio.Event()
        self.scope = anyio.CancelScope()
        self.rscope = anyio.CancelScope()


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _connect_reason(exc: BaseException) -> str:
    """anyio raises OSError("All connection attempts failed") from the per-address errors."""
    errs = [exc, exc.__cause__, *getattr(exc.__cause__, "exceptions", ())]
    codes = {getattr(e, "errno", None) for e in errs}
    return (
        "refused"
        if errno.ECONNREFUSED in codes
        else "timeout"
        if errno.ETIMEDOUT in codes
        else "error"
    )


class Adapter:
    def __init__(self, engine: Engine, tg: anyio.abc.TaskGroup, threads: int) -> None:
        self.engine = engine
        self.tg = tg
        self.conns: dict[int, Conn] = {}
        self.flushing: set[Conn] = set()  # closed by the core, still flushing output
        self.queue: deque[E.Event] = deque()
        self.busy = False
        self.poll = BusyPoll.from_conf(engine.conf, engine.upstreams_in_use)  # --busy-poll
        self.deadlines: dict[int, float] = {}
        self.heap: list[tuple[float, int]] = []
        self.timer_wake = anyio.Event()
        self.limiter = anyio.CapacityLimiter(threads)
        self.draining = False
        self.idle = anyio.Event()

    def feed(self, event: E.Event) -> None:
        self.queue.append(event)
        if not self.busy:
            self.run(None)

    async def spin(self) -> None:
        """--busy-poll: a task that keeps yielding makes trio poll with a zero timeout."""
        poll = self.poll
        while poll is not None:
            delay = poll.keep_spinning(_now())
            if delay is None:
                return
            if delay:  # the loop is busy: step aside, then carry on
                await anyio.sleep(delay)
            else:
                await anyio.lowlevel.checkpoint()

    def feed_data(self, cid: int, data: bytes) -> None:
        """``feed(DataReceived(...))`` through the engine's event-free entry point."""
        now = _now()
        poll = self.poll
        if poll is not None:
            poll.reads += 1
            if not poll.spinning and poll.wake(now):
                self.tg.start_soon(self.spin)
        if self.busy:
            self.feed(E.DataReceived(cid, data, now))
        else:
            self.run(self.engine.data(cid, data, now))

    def run(self, actions: list[A.Action] | None) -> None:
        """Execute ``actions``, then feed the queued events (raised meanwhile) in order."""
        self.busy = True
        try:
            if actions is not None:
                for action in actions:
                    self.execute(action)
            while self.queue:
                ev = self.queue.popleft()
                for action in self.engine.feed(ev):
                    self.execute(action)
        finally:
            self.busy = False
        self.check_idle()

    def check_idle(self) -> None:
        if self.draining and self.engine.idle and not self.flushing:
            self.idle.set()

    def execute(self, a: A.Action) -> None:
        c = self.conns.get(a.conn)  # type: ignore[attr-defined]  # (Action.conn is unannotated)
        if isinstance(a, A.Send):
            if c is not None and not c.closing:
                c.buf.append(a.data)
                c.size += len(a.data)
                c.wake.set()
                if c.size > HIGH_WATER and not c.wpaused:
                    c.wpaused = True
                    self.queue.append(E.WritePaused(c.cid, _now()))
        elif isinstance(a, A.SetTimer):
            self.set_timer(a.conn, a.deadline)
        elif isinstance(a, A.Close):
            self.deadlines.pop(a.conn, None)
            if c is not None:
                self.forget(c)
                if a.abort or c.stream is None:  # still connecting: cancel it, feed nothing
                    c.abort = True
                    c.scope.cancel()
                else:
                    c.closing = True
                    self.flushing.add(c)
                    c.rscope.cancel()
                    c.wake.set()
        elif isinstance(a, A.PauseReading | A.ResumeReading):
            if c is not None:
                c.paused = isinstance(a, A.PauseReading)
                c.resume.set()
        elif isinstance(a, A.ShutdownWrite):
            if c is not None:
                c.shut = True
                c.wake.set()
        elif isinstance(a, A.Connect):
            self.conns[a.conn] = c = Conn(a.conn, None)
            self.tg.start_soon(self.conn_task, c, a.peer)
        elif isinstance(a, A.RunFilter):
            self.tg.start_soon(self.run_filter, a)
        elif isinstance(a, A.Resolve):
            self.tg.start_soon(self.resolve, a)
        elif isinstance(a, A.ReadFile):
            self.tg.start_soon(self.read_file, a)
        else:
            raise TypeError(f"not an action: {a!r}")

    async def resolve(self, a: A.Resolve) -> None:
        try:
            infos = await anyio.getaddrinfo(a.host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            self.feed(E.Resolved(a.conn, a.token, _now(), error=str(e)))
            return
        addrs = sorted({str(info[4][0]) for info in infos})
        self.feed(E.Resolved(a.conn, a.token, _now(), addresses=addrs))

    async def read_file(self, a: A.ReadFile) -> None:
        def read() -> bytes:
            with open(a.path, "rb") as f:
                return f.read()

        try:
            content = await anyio.to_thread.run_sync(read, limiter=self.limiter)
        except OSError as e:
            self.feed(E.FileRead(a.conn, a.token, _now(), error=str(e)))
            return
        self.feed(E.FileRead(a.conn, a.token, _now(), content=content))

    def set_timer(self, owner: int, deadline: float | None) -> None:
        if deadline is None:
            self.deadlines.pop(owner, None)
            return
        old = self.deadlines.get(owner)
        if old is not None and old <= deadline:
            return  # fires early; the core re-arms
        self.deadlines[owner] = deadline
        heapq.heappush(self.heap, (deadline, owner))
        if self.heap[0][1] == owner:
            self.timer_wake.set()

    async def timer_task(self) -> None:
        heap, deadlines = self.heap, self.deadlines
        while True:
            due = []
            now = _now()
            while heap and (deadlines.get(heap[0][1]) != heap[0][0] or heap[0][0] <= now):
                when, owner = heapq.heappop(heap)
                if deadlines.get(owner) == when:
                    del deadlines[owner]
                    due.append(owner)
            for owner in due:
                self.feed(E.TimerFired(owner, _now()))
            if due:
                continue
            self.timer_wake = anyio.Event()
            with anyio.CancelScope(deadline=heap[0][0] if heap else math.inf):
                await self.timer_wake.wait()

    async def run_filter(self, a: A.RunFilter) -> None:
        try:
            if a.kind == "async":
                result = await a.call()
            elif a.kind == "blocking":
                result = await anyio.to_thread.run_sync(
                    a.call, limiter=self.limiter, abandon_on_cancel=True
                )
            else:
                raise ValueError(f"unknown RunFilter kind {a.kind!r}")
        except BaseException as e:
            self.feed(E.FilterDone(a.conn, a.token, _now(), error=e))
            if not isinstance(e, Exception):
                raise
        else:
            self.feed(E.FilterDone(a.conn, a.token, _now(), result=result))

    def forget(self, c: Conn) -> bool:
        """Drop ``c`` if the core still knows it; True if it did (then feed something)."""
        if c.dead:
            return False
        c.dead = True
        if self.conns.get(c.cid) is c:
            del self.conns[c.cid]
        self.deadlines.pop(c.cid, None)
        return True

    def broken(self, c: Conn, exc: BaseException) -> None:
        c.abort = True
        c.scope.cancel()
        if self.forget(c):
            self.feed(E.Closed(c.cid, _now(), error=_describe(exc)))

    async def accept(self, stream: anyio.abc.SocketStream) -> None:
        c = Conn(self.engine.new_id(), stream)
        self.conns[c.cid] = c
        await self.conn_task(c, None)

    async def conn_task(self, c: Conn, peer: Peer | None) -> None:
        c.tasks += 1
        try:
            with c.scope:
                if peer is not None:
                    try:
                        c.stream = await anyio.connect_tcp(peer.host, peer.port)
                    except Exception as e:
                        if self.forget(c):
                            self.feed(
                                E.ConnectFailed(c.cid, _now(), _connect_reason(e), _describe(e))
                            )
                        return
                    if c.dead:
                        return
                    self.feed(E.Connected(c.cid, _now()))
                else:
                    assert c.stream is not None
                    remote = cast(tuple[str, int], c.stream.extra(SocketAttribute.remote_address))
                    here = cast(tuple[str, int], c.stream.extra(SocketAttribute.local_address))
                    self.feed(E.Accepted(c.cid, _now(), remote[:2], here[:2], "http"))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.reader, c)
                    await self.writer(c)
                    tg.cancel_scope.cancel()
        except Exception:
            log.exception("trio adapter: error on connection %d", c.cid)
            c.abort = True
            if self.forget(c):
                self.feed(E.Closed(c.cid, _now(), error="adapter error"))
        finally:
            if c.stream is not None:
                if c.abort:
                    raw = c.stream.extra(SocketAttribute.raw_socket)
                    with contextlib.suppress(OSError):  # RST: discard what is unsent
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await anyio.aclose_forcefully(c.stream)
            c.tasks -= 1
            if c in self.flushing:
                self.flushing.discard(c)
                self.check_idle()

    async def reader(self, c: Conn) -> None:
        assert c.stream is not None
        c.tasks += 1
        try:
            with c.rscope:
                while not c.dead:
                    if c.paused:
                        c.resume = anyio.Event()
                        await c.resume.wait()
                        continue
                    data = await c.stream.receive(READ_SIZE)
                    if not c.dead:
                        self.feed_data(c.cid, data)
        except anyio.EndOfStream:
            if not c.dead:
                self.feed(E.EofReceived(c.cid, _now()))
        except anyio.ClosedResourceError:
            pass
        except Exception as e:
            self.broken(c, e)
        finally:
            c.tasks -= 1

    async def writer(self, c: Conn) -> None:
        assert c.stream is not None
        try:
            while True:
                if c.buf:
                    data = c.buf[0] if len(c.buf) == 1 else b"".join(c.buf)
                    c.buf.clear()
                    await c.stream.send(data)
                    c.size -= len(data)
                    if c.wpaused and c.size <= LOW_WATER:
                        c.wpaused = False
                        if not c.dead:
                            self.feed(E.WriteResumed(c.cid, _now()))
                elif c.closing:
                    return
                elif c.shut and not c.eof:
                    c.eof = True
                    await c.stream.send_eof()
                else:
                    c.wake = anyio.Event()
                    await c.wake.wait()
        except Exception as e:
            self.broken(c, e)

    def stats(self) -> None:
        """SIGUSR1: ``tasks`` counts every task except those serving sockets the core holds
        open (a trio design has 1-2 tasks per connection); a leaked task still shows."""
        per_conn = sum(c.tasks for c in self.conns.values())
        total = len(anyio.get_running_tasks())
        print_stats(self.engine, tasks=total - per_conn, conn_tasks=per_conn)

    def abort_all(self) -> None:
        for c in [*self.conns.values(), *self.flushing]:
            c.abort = True
            c.dead = True
            c.scope.cancel()


async def _main(
    app: Any, addrs: list[tuple[str, int]], conf: ServerConf, grace: float, threads: int
) -> None:
    engine = make_engine(app, conf, log, backend="trio")
    with anyio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP
    ) as signals:
        listeners = [
            await anyio.create_tcp_listener(local_host=h, local_port=p, reuse_port=conf.reuse_port)
            for h, p in addrs
        ]
        listener = MultiListener(listeners)
        async with anyio.create_task_group() as tg:
            ad = Adapter(engine, tg, threads)
            tg.start_soon(ad.timer_task)
            accepting, running = anyio.CancelScope(), anyio.CancelScope()

            async def accept_loop() -> None:
                with accepting:
                    while True:  # an accept error (EMFILE...) must not end the worker
                        try:
                            await listener.serve(ad.accept, task_group=tg)
                        except Exception:
                            log.exception("trio adapter: accept failed")
                            await anyio.sleep(0.1)
                await listener.aclose()  # stop accepting: the ports close now

            async def drain() -> None:
                with anyio.move_on_after(grace):
                    await ad.idle.wait()
                running.cancel()

            tg.start_soon(accept_loop)
            ad.feed(E.Started(0, _now()))
            for lst in listener.listeners:
                h, p = cast(tuple[str, int], lst.extra(SocketAttribute.local_address))[:2]
                print(f"proxycore ready backend=trio listen={h}:{p}", flush=True)
            with running:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reload_tls(engine)
                        continue
                    if signum == signal.SIGUSR1:
                        ad.stats()
                        continue
                    accepting.cancel()  # stop accepting (both signals)
                    if signum == signal.SIGINT or ad.draining:
                        break
                    ad.draining = True
                    ad.feed(E.Drain(0, _now()))
                    tg.start_soon(drain)
            ad.abort_all()
            if engine.recorder is not None:
                engine.recorder.flush_all()
            tg.cancel_scope.cancel()


def serve(
    app: Any,
    addrs: list[tuple[str, int]],
    conf: ServerConf | None = None,
    grace: float = 5.0,
    **options: Any,
) -> None:
    """Serve ``app`` on every ``(host, port)`` of ``addrs`` until SIGTERM (graceful, at most
    ``grace`` seconds) or SIGINT (fast). Option: ``threads`` (blocking-filter pool size)."""
    threads = int(options.pop("threads", 40))
    options.pop("pool_size", None)
    if options:
        log.debug("trio adapter: ignoring options %s", sorted(options))
    anyio.run(_main, app, list(addrs), conf or ServerConf(), grace, threads, backend="trio")
