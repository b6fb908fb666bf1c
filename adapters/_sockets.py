"""A readiness-based socket driver shared by every adapter (asyncio/uvloop, gevent, threads, trio).

Theory of operation: connections are plain non-blocking OS sockets (``_socket.socket``, so a
monkey-patched ``socket`` module changes nothing). The subclass supplies a reactor — readiness
callbacks (an asyncio loop's add_reader/add_writer, a selector on a thread, or libev watchers on
gevent's hub), timers, and a way to run blocking calls off the I/O loop — through the hook
methods at the bottom of :class:`SocketDriver`.
Everything else lives here once: reads feed DataReceived/EofReceived/Closed, Send tries an
immediate ``send`` and buffers the rest with WritePaused/WriteResumed around a 64 KiB high-water
mark, connects are non-blocking with their result fed back, Close flushes (or aborts with RST),
and events produced while executing actions are queued and fed afterwards (never re-entrantly).
A failed send on an upstream socket only breaks its write side (WriteFailed): the socket stays
open and is still read, because an origin that answered early and closed has its answer waiting
in the receive buffer (closing would throw it away). Errors reach the core in words
(:func:`proxycore.errors.socket_error_words`), never as exception reprs.

Listeners are bound here too (:func:`bind_listeners`), so every backend fails the same way at
start-up: a :class:`~proxycore.runner.StartupError` naming the address and the reason in words.
It makes no protocol decision; see docs/adapters.md.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import logging
import os
import selectors
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
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
from proxycore.adapters import BusyPoll, make_engine, print_stats, reload_config
from proxycore.config import ServerConf
from proxycore.errors import os_error_reason, socket_error_words
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    DataReceived,
    Drain,
    EofReceived,
    Event,
    FileRead,
    FilterDone,
    Resolved,
    Started,
    Stop,
    TimerFired,
    WriteFailed,
    WritePaused,
    WriteResumed,
)
from proxycore.phases import Proxy
from proxycore.runner import StartupError

_monotonic = time.monotonic
_EVENT_R, _EVENT_W = selectors.EVENT_READ, selectors.EVENT_WRITE
log = logging.getLogger("proxycore")

HIGH_WATER = 65536
LOW_WATER = 16384
READ_SIZE = 262144

# The signals every adapter routes to SocketDriver.on_signal, on its loop.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
# "worker" in a --workers worker: SIGQUIT is the supervisor's business.
upgrade_role = ""


# Called with the bound (host, port) addresses each time a driver has bound all its listeners:
# ``proxycore demo`` prints its banner, a ``--workers`` child tells its supervisor it serves.
listening_hooks: list[Callable[[list[tuple[str, int]]], None]] = []

# errno of a failed bind -> words (the C library's strerror, where it is clear enough)
_BIND_ERRORS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "cannot assign requested address (not an address of this host)",
    errno.EACCES: "permission denied",
}


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_reason(e: OSError, port: int) -> str:
    # The resolver's own words for a gaierror ("name or service not known"), else ours.
    reason = None if isinstance(e, _socket.gaierror) else _BIND_ERRORS.get(e.errno or 0)
    if reason is None:
        reason = os_error_reason(e)
    if e.errno == errno.EACCES and 0 < port < 1024:
        reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return reason


# Listening sockets this process did not bind: handed over by the process it replaces (``-u``,
# adapters/upgrade.py) or bound by the ``--workers`` supervisor before it forked.
# :func:`bind_listeners` takes the one bound to the address asked for instead of binding.
inherited: list[Any] = []
# True in a ``--workers`` worker: the inherited sockets are the supervisor's, kept for the next
# worker; otherwise the ones no address asked for are closed once the listeners are bound.
inherited_shared = False


def _take_inherited(family: int, sockaddr: Any, taken: set[int]) -> Any | None:
    for i, s in enumerate(inherited):
        if i in taken or s.family != family:
            continue
        name = s.getsockname()
        if name[0] == sockaddr[0] and (name[1] == sockaddr[1] or sockaddr[1] == 0):
            taken.add(i)
            return s
    return None


def bind_listeners(addrs: Sequence[tuple[str, int]], reuse_port: bool = False) -> list[Any]:
    """Bind and listen on every address (a name resolves to its first address, IPv4 first);
    non-blocking sockets in order. An :data:`inherited` socket bound to the address is used
    as it is. On any failure the sockets bound so far are closed and :class:`StartupError`
    names the address and the reason in words."""
    socks: list[Any] = []
    taken: set[int] = set()
    try:
        for host, port in addrs:
            try:
                infos = _socket.getaddrinfo(
                    host, port, _socket.AF_UNSPEC, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE
                )
                family, _, _, _, sockaddr = min(infos, key=lambda i: i[0] != _socket.AF_INET)
                s = _take_inherited(family, sockaddr, taken)
                if s is not None:
                    socks.append(s)
                    s.setblocking(False)
                    continue
                s = _socket.socket(family, _socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
                s.bind(sockaddr)
                s.listen(1024)
                s.setblocking(False)
            except OSError as e:
                raise StartupError(
                    f"cannot listen on {_show(host, port)}: {_bind_reason(e, port)}"
                ) from None
    except BaseException:
        for s in socks:
            s.close()
        raise
    if not inherited_shared:
        for i, s in enumerate(inherited):
            if i not in taken:
                log.info("no longer listening on %s (not configured)", _show(*s.getsockname()[:2]))
                s.close()
        inherited.clear()
    return socks


# Linux's IP_BIND_ADDRESS_NO_PORT (socket.h; in Python's socket module from 3.12): a socket
# bound to a source address before connect gets its port at connect time, so the four-tuple,
# not the port alone, must be unique (as Pingora binds).
_BIND_NO_PORT: int | None = (
    getattr(_socket, "IP_BIND_ADDRESS_NO_PORT", 24) if sys.platform.startswith("linux") else None
)


def _source(bind: tuple[str, ...], family: int) -> str | None:
    """The address of ``bind`` (Connect.bind: at most one per family) of this family."""
    v6 = family == _socket.AF_INET6
    for addr in bind:
        if (":" in addr) == v6:
            return addr
    return None


def check_source_addresses(conf: ServerConf) -> None:
    """Bind a socket to each of ``client_bind_to_ipv4/ipv6`` (port 0) and close it: an address
    that is not one of this host's is a :class:`StartupError` naming it, before serving."""
    for name, family in (
        ("client_bind_to_ipv4", _socket.AF_INET),
        ("client_bind_to_ipv6", _socket.AF_INET6),
    ):
        for addr in getattr(conf, name):
            s = _socket.socket(family, _socket.SOCK_STREAM)
            try:
                s.bind((addr, 0))
            except OSError as e:
                raise StartupError(
                    f"cannot bind connections to origins to {addr} ({name} / "
                    f"--client-bind-to): {_bind_reason(e, 0)}"
                ) from None
            finally:
                s.close()


class Conn:
    """One socket and its outgoing buffer."""

    __slots__ = (
        "cid",
        "closing",
        "connecting",
        "eof",
        "fd",
        "out",
        "out_size",
        "read_paused",
        "reading",
        "shut_wr",
        "sock",
        "upstream",
        "watch",
        "write_failed",
        "write_paused",
        "writing",
    )

    def __init__(self, cid: int, sock: Any) -> None:
        self.cid = cid
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.out: deque[memoryview | bytes] = deque()
        self.out_size = 0
        self.write_paused = False
        self.read_paused = False
        self.reading = False
        self.writing = False
        self.closing = False
        self.shut_wr = False
        self.connecting = sock is None
        self.upstream = sock is None  # made by a Connect action (clients come accepted)
        self.write_failed = False
        self.eof = False
        self.watch: Any = None  # reactor-specific registration


class SelectorWatch:
    """The watch hooks for a reactor that polls a :mod:`selectors` selector (``self.sel``):
    the threads and trio backends. Mix in before :class:`SocketDriver`."""

    sel: selectors.BaseSelector

    def watch(self, c: Conn) -> None:
        mask = (_EVENT_R if c.reading else 0) | (_EVENT_W if c.writing else 0)
        if c.watch is None:
            if mask:
                self.sel.register(c.fd, mask, c)
                c.watch = mask
        elif mask == 0:
            self.sel.unregister(c.fd)
            c.watch = None
        elif mask != c.watch:
            self.sel.modify(c.fd, mask, c)
            c.watch = mask

    def forget(self, c: Conn) -> None:
        if c.watch is not None:
            self.sel.unregister(c.fd)
            c.watch = None

    def watch_listener(self, sock: Any, on: bool) -> None:
        if on:
            self.sel.register(sock, _EVENT_R, sock)
        else:
            self.sel.unregister(sock)

    def dispatch(self, data: Any, mask: int) -> None:
        """Hand one ready selector key's ``data`` (a Conn or a listener) to the driver."""
        if isinstance(data, Conn):
            if mask & _EVENT_R and data.reading:
                self.on_readable(data)  # type: ignore[attr-defined]
            if mask & _EVENT_W and data.writing:
                self.on_writable(data)  # type: ignore[attr-defined]
        else:
            self.on_accept(data)  # type: ignore[attr-defined]


class SocketDriver:
    """Executes the engine's actions on non-blocking sockets; subclasses provide the reactor."""

    def __init__(
        self, app: Proxy, conf: ServerConf, blocking_phases: str, backend: str = ""
    ) -> None:
        self.backend_name = backend or type(self).__name__
        self.engine = make_engine(
            app, conf, log, backend=self.backend_name, blocking_phases=blocking_phases
        )
        self.conns: dict[int, Conn] = {}
        self.timers: dict[int, Any] = {}
        self.listeners: list[Any] = []
        self.bound: list[str] = []  # the listeners' addresses, HOST:PORT
        self.flushing: set[Conn] = set()  # closed by the core, still writing their last bytes
        self._queue: deque[Event] = deque()
        self._busy = False
        self.busy = BusyPoll.from_conf(conf, self.engine.upstreams_in_use)
        # lifecycle (request_stop / shutdown_step / upgrade)
        self.stop_mode: str | None = None  # "graceful" or "fast" once a stop was requested
        self.grace_used = 0.0  # the grace period the stop gives (0 when fast)
        self.cut_at = 0.0  # when the exchanges still in flight are cut (Stop)
        self.end_at: float | None = None  # when the last bytes are given up (after Stop)
        self.stopped = False  # Stop was fed
        self.handing_over = False  # SIGQUIT: a handover is under way
        self._engine_feed = self.engine.feed
        self._engine_data = self.engine.data
        self._dispatch: dict[type, Callable[[Any], None]] = {
            Send: self._send,
            Close: self._close,
            SetTimer: self._set_timer,
            PauseReading: self._pause,
            ResumeReading: self._resume,
            Connect: self._connect,
            ShutdownWrite: self._shutdown_write,
            RunFilter: self._run_filter,
            Resolve: self._resolve_action,
            ReadFile: self._read_file,
        }

    # ------------------------------------------------------------------ feeding

    def feed(self, ev: Event) -> None:
        """Feed ``ev`` and execute actions; events raised meanwhile are fed after, in order."""
        if self.stopped:  # (after Stop: the core has ended)
            return
        self._queue.append(ev)
        if not self._busy:
            self._run(None)

    def _run(self, actions: list[Action] | None) -> None:
        """Execute ``actions``, then feed the queued events (raised meanwhile) in order."""
        self._busy = True
        try:
            dispatch = self._dispatch
            if actions is not None:
                for a in actions:
                    dispatch[type(a)](a)
            q = self._queue
            while q:
                for a in self._engine_feed(q.popleft()):
                    dispatch[type(a)](a)
        finally:
            self._busy = False

    # ------------------------------------------------------------------ readiness

    def on_readable(self, c: Conn) -> None:
        try:
            data = c.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._lost(c, socket_error_words(e))
            return
        if data:
            now = self.now()
            busy = self.busy
            if busy is not None:  # --busy-poll (a fine clock: uvloop's ticks in milliseconds)
                busy.reads += 1
                if not busy.spinning and busy.wake(_monotonic()):
                    self.start_spinning()
            if self._busy:
                self.feed(DataReceived(c.cid, data, now))
            else:  # the engine's event-free entry point
                self._run(self._engine_data(c.cid, data, now))
        else:
            c.eof = True
            self._want_read(c, False)
            self.feed(EofReceived(c.cid, self.now()))

    def on_writable(self, c: Conn) -> None:
        if c.connecting:
            err = c.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            self._want_write(c, False)
            if err:
                self._fail_connect(c, err)
                return
            c.connecting = False
            self._want_read(c, True)
            self.feed(Connected(c.cid, self.now()))
            return
        self._flush(c)

    def on_accept(self, lsock: Any) -> None:
        for _ in range(64):
            try:
                fd, addr = lsock._accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: log, keep serving
                log.warning("accept failed: %s", os_error_reason(e))
                return
            sock = _socket.socket(lsock.family, _socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            cid = self.engine.new_id()
            c = Conn(cid, sock)
            c.connecting = False
            self.conns[cid] = c
            self._want_read(c, True)
            server = sock.getsockname()
            self.feed(Accepted(cid, self.now(), (addr[0], addr[1]), (server[0], server[1])))

    def _lost(self, c: Conn, error: str | None) -> None:
        if self.conns.pop(c.cid, None) is None:
            return
        self._discard(c)
        self._cancel_timer(c.cid)
        self.feed(Closed(c.cid, self.now(), error))

    def _discard(self, c: Conn) -> None:
        self.flushing.discard(c)
        self._want_read(c, False)
        self._want_write(c, False)
        self.forget(c)
        if c.sock is not None:
            c.sock.close()
        c.out.clear()

    # ------------------------------------------------------------------ actions

    def _send(self, a: Send) -> None:
        c = self.conns.get(a.conn)
        if c is None or c.closing or c.write_failed:
            return
        data = a.data
        if not c.out and not c.connecting:
            try:
                n = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._send_failed(c, e)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
        c.out.append(data)
        c.out_size += len(data)
        if not c.connecting:
            self._want_write(c, True)
        if c.out_size > HIGH_WATER and not c.write_paused:
            c.write_paused = True
            self._queue.append(WritePaused(c.cid, self.now()))

    def _flush(self, c: Conn) -> None:
        out = c.out
        while out:
            chunk = out[0]
            try:
                n = c.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._send_failed(c, e)
                return
            c.out_size -= n
            if n == len(chunk):
                out.popleft()
            else:
                out[0] = memoryview(chunk)[n:]
                break
        if c.write_paused and c.out_size <= LOW_WATER and not c.closing:
            c.write_paused = False
            self.feed(WriteResumed(c.cid, self.now()))
        if not out:
            self._want_write(c, False)
            if c.closing:
                self._discard(c)
            elif c.shut_wr:
                self._shut(c)

    def _send_failed(self, c: Conn, e: OSError) -> None:
        """A send raised. On an upstream connection that the peer has not finished sending on,
        only the write side is broken: drop what is queued, keep reading (the origin may have
        answered before it stopped reading, RFC 9112 §9.5) and let the core decide
        (WriteFailed). Otherwise the connection is gone (Closed)."""
        if c.closing:  # closed by the core, flushing its last bytes: nobody waits for them
            self._discard(c)
            return
        words = socket_error_words(e)
        if c.upstream and not c.eof:
            c.write_failed = True
            c.out.clear()
            c.out_size = 0
            c.shut_wr = False
            c.write_paused = False
            self._want_write(c, False)
            self.feed(WriteFailed(c.cid, self.now(), words))
            return
        self.conns.pop(c.cid, None)
        self._discard(c)
        self._cancel_timer(c.cid)
        self.feed(Closed(c.cid, self.now(), words))

    def _close(self, a: Close) -> None:
        c = self.conns.pop(a.conn, None)
        self._cancel_timer(a.conn)
        if c is None:
            return
        if c.sock is None:  # still resolving
            c.closing = True
            return
        if a.abort:
            try:
                c.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            self._discard(c)
        elif c.out and not c.connecting:
            c.closing = True  # finish flushing, then close
            self.flushing.add(c)
            self._want_read(c, False)
        else:
            self._discard(c)

    def _shutdown_write(self, a: ShutdownWrite) -> None:
        c = self.conns.get(a.conn)
        if c is None:
            return
        if c.out:
            c.shut_wr = True
        else:
            self._shut(c)

    def _shut(self, c: Conn) -> None:
        c.shut_wr = False
        try:
            c.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass

    def _pause(self, a: PauseReading) -> None:
        c = self.conns.get(a.conn)
        if c is not None:
            c.read_paused = True
            self._want_read(c, False)

    def _resume(self, a: ResumeReading) -> None:
        c = self.conns.get(a.conn)
        if c is not None:
            c.read_paused = False
            if not c.eof and not c.connecting:
                self._want_read(c, True)

    def _want_read(self, c: Conn, on: bool) -> None:
        on = on and not c.read_paused
        if on != c.reading:
            c.reading = on
            self.watch(c)

    def _want_write(self, c: Conn, on: bool) -> None:
        if on != c.writing:
            c.writing = on
            self.watch(c)

    def _connect(self, a: Connect) -> None:
        c = Conn(a.conn, None)
        self.conns[a.conn] = c
        host, port, bind = a.peer.host, a.peer.port, a.bind
        try:
            family = (
                _socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else (_socket.AF_INET)
            )
        except ValueError:
            self.resolve(host, port, lambda res: self._resolved(c, res, bind))
            return
        self._start_connect(c, family, (host, port), bind)

    def _resolved(self, c: Conn, res: Any, bind: tuple[str, ...]) -> None:
        if self.conns.get(c.cid) is not c:
            return  # closed meanwhile
        if isinstance(res, BaseException) or not res:
            self.conns.pop(c.cid, None)
            words = (
                socket_error_words(res)
                if isinstance(res, BaseException)
                else "could not be resolved (no addresses)"
            )
            self.feed(ConnectFailed(c.cid, self.now(), "error", words))
            return
        family, _, _, _, addr = res[0]
        self._start_connect(c, family, addr, bind)

    def _start_connect(self, c: Conn, family: int, addr: Any, bind: tuple[str, ...]) -> None:
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        c.sock = sock
        c.fd = sock.fileno()
        if bind:
            source = _source(bind, family)
            if source is not None:
                try:
                    if _BIND_NO_PORT is not None:
                        sock.setsockopt(_socket.IPPROTO_IP, _BIND_NO_PORT, 1)
                    sock.bind((source, 0))
                except OSError as e:
                    why = f"could not be connected from source address {source}: "
                    self._fail_connect(c, e.errno or 0, why + _bind_reason(e, 0))
                    return
        err = sock.connect_ex(addr)
        if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._want_write(c, True)
        else:
            self._fail_connect(c, err)

    def _fail_connect(self, c: Conn, err: int, message: str = "") -> None:
        self.conns.pop(c.cid, None)
        self._discard(c)
        reason = (
            "refused"
            if err == errno.ECONNREFUSED
            else ("timeout" if err == errno.ETIMEDOUT else "error")
        )
        message = message or socket_error_words(OSError(err, os.strerror(err)))
        ev = ConnectFailed(c.cid, self.now(), reason, message)
        if self._busy:
            self._queue.append(ev)
        else:
            self.feed(ev)

    def _set_timer(self, a: SetTimer) -> None:
        h = self.timers.get(a.conn)
        if a.deadline is None:
            if h is not None:
                del self.timers[a.conn]
                self.cancel(h)
            return
        if h is not None:
            if self.when(h) <= a.deadline:
                return  # fires early; the core re-arms
            self.cancel(h)
        self.timers[a.conn] = self.call_at(a.deadline, self._fire, a.conn)

    def _fire(self, owner: int) -> None:
        self.timers.pop(owner, None)
        self.feed(TimerFired(owner, self.now()))

    def _cancel_timer(self, owner: int) -> None:
        h = self.timers.pop(owner, None)
        if h is not None:
            self.cancel(h)

    def _run_filter(self, a: RunFilter) -> None:
        def done(result: Any = None, error: BaseException | None = None) -> None:
            self.feed(FilterDone(a.conn, a.token, self.now(), result, error))

        if a.kind == "blocking":
            self.run_blocking(a.call, done)
        else:
            self.run_async(a.call, done)

    def _resolve_action(self, a: Resolve) -> None:
        def done(res: Any) -> None:
            now = self.now()
            if isinstance(res, BaseException) or not res:
                why = os_error_reason(res) if isinstance(res, BaseException) else "no addresses"
                self.feed(Resolved(a.conn, a.token, now, error=why))
            else:
                addrs = sorted({str(info[4][0]) for info in res})
                self.feed(Resolved(a.conn, a.token, now, addresses=addrs))

        self.resolve(a.host, 0, done)

    def _read_file(self, a: ReadFile) -> None:
        def load() -> bytes:
            with open(a.path, "rb") as f:
                return f.read()

        def done(result: Any = None, error: BaseException | None = None) -> None:
            now = self.now()
            if error is not None:
                self.feed(FileRead(a.conn, a.token, now, error=os_error_reason(error)))
            else:
                self.feed(FileRead(a.conn, a.token, now, content=result))

        self.run_in_thread(load, done)

    # ------------------------------------------------------------------ listening

    def listen(self, addrs: Sequence[tuple[str, int]]) -> None:
        """Bind every address (all or none: :class:`StartupError` if one fails), start
        accepting, feed Started, then run :data:`listening_hooks`."""
        bound: list[tuple[str, int]] = []
        check_source_addresses(self.engine.conf)
        for s in bind_listeners(addrs, self.engine.conf.reuse_port):
            self.listeners.append(s)
            self.watch_listener(s, True)
            host, port = s.getsockname()[:2]
            bound.append((host, port))
            log.info("listening on %s", (host, port))
        self.bound = [_show(host, port) for host, port in bound]  # (the admin snapshot's)
        self.feed(Started(0, self.now()))
        self._publish(0)
        for hook in list(listening_hooks):
            hook(bound)

    def _publish(self, again: int) -> None:
        """The admin listener: publish the engine's metrics snapshot, and (``again`` 0: the
        timer's chain) again in PUBLISH_EVERY seconds (adapters/admin.py)."""
        from proxycore.adapters import admin

        metrics = self.engine.metrics
        if metrics is None or admin.board is None or self.stopped:
            return
        snap = metrics.snapshot(self.engine)
        snap["process"] = {
            "pid": os.getpid(),
            "backend": self.backend_name,
            "listeners": self.bound if self.listeners else [],
        }
        admin.board.publish(snap)
        if again == 0:
            self.call_at(self.now() + admin.PUBLISH_EVERY, self._publish, 0)

    # ------------------------------------------------------------------ lifecycle

    def on_signal(self, signum: int) -> None:
        """The adapter calls this on its loop for each of :data:`SIGNALS`: SIGTERM drains
        (graceful), SIGINT stops fast (also during a drain), SIGQUIT hands the listeners over
        to a new process (adapters/upgrade.py) and then drains, SIGHUP reloads, SIGUSR1
        prints the stats line."""
        if signum == signal.SIGTERM:
            self.request_stop(True)
        elif signum == signal.SIGINT:
            self.request_stop(False)
        elif signum == signal.SIGQUIT:
            self.upgrade()
        elif signum == signal.SIGHUP:
            reload_config(self)
        elif signum == signal.SIGUSR1:
            print_stats(self.engine, **self.stats_extra())

    def request_stop(self, graceful: bool) -> None:
        """Begin (or speed up) the shutdown: stop accepting, feed Drain, and wake the serve
        loop, which then calls :meth:`shutdown_step` until it returns None. Graceful: the
        exchanges in flight get ``conf.grace_period`` seconds, then the cut ones' last bytes
        ``conf.shutdown_timeout`` more. Fast: both at once."""
        if self.stop_mode == "fast" or (graceful and self.stop_mode is not None):
            return
        now = self.now()
        if self.stop_mode is None:
            conf = self.engine.conf
            self.grace_used = conf.grace_period if graceful else 0.0
            self.cut_at = now + self.grace_used
            self.begin_drain()
            if self.engine.metrics is not None:  # (/healthz says 503 at once)
                self._publish(-1)
        else:  # SIGINT during a graceful drain: cut now
            self.grace_used = 0.0
            self.cut_at = now
        self.stop_mode = "graceful" if graceful else "fast"
        log.info("shutting down (%s)", self.stop_mode)
        self.wake_main()

    def shutdown_step(self) -> float | None:
        """One turn of the shutdown (the serve loop calls it until it returns None, waiting
        the returned seconds in between, while the loop keeps running). Until the grace period
        ends or nothing is left in the core: wait. Then feed Stop (the core cuts and logs what
        is still in flight and closes every connection). Then connections the core closed
        gracefully earlier may flush their last bytes for ``conf.shutdown_timeout`` seconds
        (none in a fast stop). Then whatever is left is discarded: None."""
        now = self.now()
        if self.end_at is None:
            if not self.drained and now < self.cut_at:
                return 0.05
            self.feed(Stop(0, now, self.grace_used))
            self.stopped = True  # later events (timers, filters, reads) are not fed
            last = self.engine.conf.shutdown_timeout if self.stop_mode == "graceful" else 0.0
            self.end_at = now + last
        if self.flushing and now < self.end_at:
            return 0.05
        for c in [*self.conns.values(), *self.flushing]:
            self.conns.pop(c.cid, None)
            if c.sock is not None:
                self._discard(c)
        if self.engine.recorder is not None:
            self.engine.recorder.flush_all()
        return None

    def upgrade(self) -> None:
        """SIGQUIT: hand every listening socket to the new process waiting on
        ``conf.upgrade_sock`` (on a worker thread; the loop keeps serving), and drain once it
        serves. Nobody waiting, or the new process failing: logged, and this one goes on."""
        from proxycore.adapters import upgrade

        if upgrade_role == "worker":
            return  # (the supervisor hands the sockets over)
        if self.stop_mode is not None or self.handing_over:
            log.warning(
                "upgrade: SIGQUIT ignored (%s)",
                "already handing over" if self.stop_mode is None else "shutting down",
            )
            return
        path = self.engine.conf.upgrade_sock
        socks = list(self.listeners)
        self.handing_over = True
        log.info("upgrade: handing the listening sockets over on %s", path)

        def done(result: Any = None, error: BaseException | None = None) -> None:
            self.handing_over = False
            ok, message = result if error is None else (False, f"upgrade failed: {error!r}")
            if ok:
                log.info("%s", message)
                self.request_stop(True)
            else:
                log.error("%s", message)

        self.run_in_thread(lambda: upgrade.hand_over(path, socks), done)

    def begin_drain(self) -> None:
        for s in self.listeners:
            self.watch_listener(s, False)
            s.close()
        self.listeners.clear()
        self.feed(Drain(0, self.now()))

    @property
    def drained(self) -> bool:
        """No client connection left in the core and no graceful close still flushing."""
        return self.engine.idle and not self.flushing

    def wake_main(self) -> None:
        """A stop was requested: wake the adapter's serve loop (it then drives
        :meth:`shutdown_step`)."""
        raise NotImplementedError

    def stats_extra(self) -> dict[str, Any]:
        """Adapter-specific counts for the SIGUSR1 stats line."""
        return {}

    # ------------------------------------------------------------------ reactor hooks

    def now(self) -> float:
        raise NotImplementedError

    def watch(self, c: Conn) -> None:
        """Make the reactor's interest in ``c.fd`` match ``c.reading`` / ``c.writing``."""
        raise NotImplementedError

    def start_spinning(self) -> None:
        """--busy-poll: keep the reactor polling with a zero timeout, pausing when
        ``self.busy.keep_spinning(now)`` returns a delay and stopping when it returns None (see
        :class:`proxycore.adapters.BusyPoll`)."""
        raise NotImplementedError

    def forget(self, c: Conn) -> None:
        """Drop every registration for ``c`` (its socket is about to close)."""
        raise NotImplementedError

    def watch_listener(self, sock: Any, on: bool) -> None:
        raise NotImplementedError

    def call_at(self, deadline: float, fn: Callable[[int], None], arg: int) -> Any:
        raise NotImplementedError

    def when(self, handle: Any) -> float:
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        raise NotImplementedError

    def run_blocking(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        raise NotImplementedError

    def run_async(self, call: Callable[[], Any], done: Callable[..., None]) -> None:
        """An ``async def`` phase on a loop-less adapter: run the coroutine to completion on a
        private asyncio loop in a worker thread (asyncio primitives work inside it; objects bound
        to another event loop do not)."""
        import asyncio

        async def _await() -> Any:
            return await call()

        self.run_in_thread(lambda: asyncio.run(_await()), done)

    def run_in_thread(self, fn: Callable[[], Any], done: Callable[..., None]) -> None:
        """Run ``fn`` on a real OS thread; ``done(result, error)`` back on the I/O loop."""
        raise NotImplementedError

    def resolve(self, host: str, port: int, done: Callable[[Any], None]) -> None:
        raise NotImplementedError
