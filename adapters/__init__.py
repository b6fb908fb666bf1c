"""Event-loop adapters for proxycore (installed as ``proxycore.adapters``).

Each adapter accepts connections, moves bytes, runs timers and deferred filters, and executes the
core's actions. It makes no protocol decision; see docs/adapters.md for the contract.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "BusyPoll",
    "attach_recorder",
    "make_engine",
    "prepare_record_dir",
    "print_stats",
    "reload_config",
    "reload_tls",
]

log = logging.getLogger("proxycore")


class BusyPoll:
    """``--busy-poll S`` (``ServerConf.busy_poll``, default 0.0002; 0 turns it off): after a
    read, the adapter keeps its event loop polling with a zero timeout for an adaptive window
    of at most ``S`` seconds instead of sleeping in the poller.

    Waking a sleeping process costs an inter-processor interrupt, and on a virtual machine an
    idle vCPU is descheduled, so a request that crosses the proxy twice waits for four such
    wake-ups. Polling through the short gaps (the origin's answer, the client's next request)
    removes the proxy's two. The window adapts like the kernel's halt-polling (cpuidle-haltpoll,
    KVM's ``halt_poll_ns``): each read measures the gap since the previous one; a gap longer
    than the window but within ``S`` doubles the window (from ``S/4``; polling would have
    caught it), a gap longer than ``S`` halves it (to 0 below ``S/4``; no window would have
    caught it), a gap within the window leaves it. One gap the window cannot predict: with
    think time between requests, the gaps alternate (the origin's short answer, the client's
    long pause) and the window collapses. So, given ``pending`` (the engine's count of upstream
    exchanges in progress), the spinner also polls on while an exchange is open, up to ``S``
    after the last read: the origin's answer is due. A proxy answering back-to-back requests
    polls through every gap, one with sparse traffic polls while its origins answer, and an
    idle one sleeps. And it steps aside under load: when more than one read arrived
    between two turns of the spinner, the loop is not going to sleep anyway, and zero-timeout
    polls would only split its event batches, so the spinner pauses for ``BACKOFF`` seconds
    and then carries on while the window lasts (the first turn after a pause polls without
    judging: the reads that queued up during the pause would always look busy, and a single
    connection's back-to-back traffic after a burst would never be polled for again).

    Every adapter uses this one object, and keeps the per-read cost to a counter: on each read
    it adds 1 to ``reads`` and, only if ``spinning`` is False (the loop slept, or nothing was
    polling), calls ``wake(now)``, which adapts the window and returns True when the adapter
    must start its spinner (a callback, watcher or task that yields to the loop). The spinner
    calls ``keep_spinning(now)`` each turn, which extends the window when reads arrived since
    the last turn: 0.0 means poll again at once, a positive delay means come back after that
    long (the loop is busy), None means stop. ``now`` must be a fine clock (uvloop's
    ``loop.time()`` ticks in milliseconds).
    """

    __slots__ = (
        "grow_from",
        "last",
        "limit",
        "paused",
        "pending",
        "reads",
        "spinning",
        "window",
    )

    BACKOFF = 0.01

    def __init__(self, limit: float, pending: Callable[[], int] | None = None) -> None:
        self.limit = limit  # the configured S: the window never exceeds it
        # How many upstream exchanges are open (Engine.upstreams_in_use): while one is, the
        # spinner polls on up to S after the last read even if the window has shrunk.
        self.pending = pending
        self.grow_from = limit / 4  # the first non-zero window; smaller ones shrink to 0
        self.window = 0.0  # current window, adapted by wake()
        self.last = float("-inf")  # when a read was last seen: the window runs from here
        self.spinning = False
        self.paused = False  # the spinner's last turn asked for a BACKOFF pause
        self.reads = 0  # reads since the spinner's last turn

    @classmethod
    def from_conf(cls, conf: Any, pending: Callable[[], int] | None = None) -> BusyPoll | None:
        return cls(conf.busy_poll, pending) if conf.busy_poll > 0 else None

    def wake(self, now: float) -> bool:
        """A read arrived while no spinner was running: adapt the window to the gap since the
        last read, open it, and say whether to start the spinner."""
        gap = now - self.last
        self.last = now
        window = self.window
        if gap > window:  # the read came after the window (or with none): adapt it
            if gap <= self.limit:  # a wider window would have polled through this gap
                window = max(window * 2, self.grow_from)
                if window > self.limit:
                    window = self.limit
            else:  # no window would have: poll less
                window /= 2
                if window < self.grow_from:
                    window = 0.0
            self.window = window
        self.reads = 0
        if window == 0.0 and self.pending is None:
            return False
        self.spinning = True  # (with a window of 0, the first turn asks pending())
        return True

    @property
    def until(self) -> float:
        """When the current window closes."""
        return self.last + self.window

    def keep_spinning(self, now: float) -> float | None:
        reads = self.reads
        if reads:  # reads since the last turn: within the window, which they extend
            self.reads = 0
            self.last = now
        elif now >= self.last + self.window:
            pending = self.pending
            if pending is None or now >= self.last + self.limit or not pending():
                self.spinning = False
                self.paused = False
                return None
        if self.paused:  # reads counted over a pause say nothing: poll, and judge next turn
            self.paused = False
            return 0.0
        if reads > 1:  # more than one read between two polls: the loop is busy anyway
            self.paused = True
            return self.BACKOFF
        return 0.0


def make_engine(app: Any, conf: Any, logger: Any, backend: str = "", **options: Any) -> Any:
    """The engine every adapter runs: TLS certificates loaded from ``conf.tls`` (files are
    read here, outside the core), client contexts for ``Peer(tls=True)``, and the recorder if
    ``conf.record_dir`` is set, and the access log (``conf.access_log``, see
    :mod:`proxycore.adapters.access`). Raises TlsConfigError for a certificate that cannot be
    used."""
    from proxycore.adapters.access import access_logger
    from proxycore.engine import Engine
    from proxycore.tlsconfig import ClientContextCache, load_server_tls

    server = load_server_tls(conf.tls, conf.h2) if conf.tls is not None else None
    engine = Engine(
        app,
        conf,
        logger,
        server_tls=server,
        client_tls=ClientContextCache(),
        access_log=access_logger(conf),
        metrics=conf.admin is not None,
        **options,
    )
    attach_recorder(engine, conf, backend=backend)
    return engine


def reload_config(driver: Any) -> None:
    """What every adapter does on SIGHUP, on the thread that feeds its engine (``driver``:
    its :class:`~proxycore.adapters._sockets.SocketDriver`): reload the configuration file
    (``-c FILE``) or, without one, the TLS certificates and the access log. See
    :mod:`proxycore.adapters.reload`."""
    from proxycore.adapters.reload import reload

    reload(driver)


def reload_tls(engine: Any) -> bool:
    """Re-read the TLS certificate files (adapters call this on SIGHUP). New handshakes use the
    new certificates; open connections keep theirs. On an error the current certificates stay
    and the error is logged. Upstream client contexts (CA bundles, client certificates) are
    rebuilt on next use. Prints ``proxycore tls reloaded`` when done."""
    from proxycore.tlsconfig import ClientContextCache, TlsConfigError, load_server_tls

    layer = engine.tls
    if layer is None:
        return False
    conf = engine.conf
    try:
        server = load_server_tls(conf.tls, conf.h2) if conf.tls is not None else None
    except TlsConfigError as e:
        log.error("TLS reload failed, keeping the current certificates: %s", e)
        print("proxycore tls reload failed", flush=True)
        return False
    layer.set_server(server)
    layer.client = ClientContextCache()
    layer.sessions.clear()
    log.info("TLS certificates reloaded")
    print("proxycore tls reloaded", flush=True)
    return True


def print_stats(engine: Any, **extra: Any) -> None:
    """Write one ``proxycore stats {json}`` line to stderr (adapters do this on SIGUSR1):
    the engine's snapshot, the process's thread count, and adapter-specific counts."""
    data = dict(engine.stats())
    data["threads"] = threading.active_count()
    data.update(extra)
    print("proxycore stats " + json.dumps(data, sort_keys=True), file=sys.stderr, flush=True)


def prepare_record_dir(path: str) -> None:
    """Start-up check of ``--record DIR`` (``ServerConf.record_dir``): DIR is created if it
    does not exist (its parent must: a mistyped parent is refused, not created), and must be
    a directory this process can create files in (checked by creating and removing one).
    Raises :class:`proxycore.runner.StartupError` naming the path and the reason."""
    import errno
    import os
    import tempfile

    from proxycore.errors import os_error_reason
    from proxycore.runner import StartupError

    def refuse(reason: str) -> StartupError:
        return StartupError(f"cannot record traces into {path!r}: {reason}")

    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise refuse("it exists and is not a directory") from None
    except OSError as e:
        parent = os.path.dirname(os.path.abspath(path))
        if isinstance(e, FileNotFoundError) and not os.path.isdir(parent):
            raise refuse(f"its parent directory {parent!r} does not exist") from None
        e.filename = None  # (the path is named already)
        raise refuse(f"cannot create it ({os_error_reason(e)})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".proxycore-record-check-", dir=path)
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise refuse("it exists and is not a directory") from None
        e.filename = None
        raise refuse(f"cannot create files in it ({os_error_reason(e)})") from None
    os.close(fd)
    os.unlink(probe)


def attach_recorder(engine: Any, conf: Any, backend: str = "") -> None:
    """If ``conf.record_dir`` is set, record one trace file per client connection there
    (``<pid>-<conn>.pctrace``). A trace is written when its connection ends, or in 256 KiB
    pieces for long-lived connections (and what is pending at shutdown), so recording costs no
    I/O on most requests and bounded memory per connection. The directory is checked (and
    created) by :func:`prepare_record_dir` first: a StartupError if it cannot be used."""
    if not conf.record_dir:
        return
    import os

    from proxycore.trace import Recorder

    directory = conf.record_dir
    prepare_record_dir(directory)
    pid = os.getpid()

    def sink(conn: int, data: bytes) -> None:
        # Pieces of one connection's trace arrive in order; the first creates the file.
        path = os.path.join(directory, f"{pid}-{conn:08d}.pctrace")
        with open(path, "ab") as f:
            f.write(data)

    engine.recorder = Recorder(engine, sink, backend=backend)
