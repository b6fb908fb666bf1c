"""Event-loop adapters for proxycore (installed as ``proxycore.adapters``).

Each adapter accepts connections, moves bytes, runs timers and deferred filters, and executes the
core's actions. It makes no protocol decision; see docs/adapters.md for the contract.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

__all__ = ["BusyPoll", "attach_recorder", "make_engine", "print_stats", "reload_tls"]

log = logging.getLogger("proxycore")


class BusyPoll:
    """``--busy-poll S`` (``ServerConf.busy_poll``): after each read, the adapter keeps its event
    loop polling with a zero timeout for ``window`` seconds instead of sleeping in the poller.

    Waking a sleeping process costs an inter-processor interrupt, and on a virtual machine an
    idle vCPU is descheduled, so a request that crosses the proxy twice waits for four such
    wake-ups. Polling through the short gaps (the origin's answer, the client's next request)
    removes the proxy's two. HAProxy's ``busy-polling`` does the same, unbounded; here it stops
    ``window`` seconds after the last read, so an idle proxy still sleeps. And it steps aside
    under load: when more than one read arrived between two turns of the spinner, the loop is
    not going to sleep anyway, and zero-timeout polls would only split its event batches, so
    the spinner pauses for ``BACKOFF`` seconds and then carries on while the window lasts.
    Every adapter uses this one object: ``touch(now)`` on each read returns True when the
    adapter must start its spinner (a callback, watcher or task that yields to the loop), and
    the spinner calls ``keep_spinning(now)`` each turn: 0.0 means poll again at once, a
    positive delay means come back after that long (the loop is busy), None means stop.
    """

    __slots__ = ("reads", "spinning", "until", "window")

    BACKOFF = 0.01

    def __init__(self, window: float) -> None:
        self.window = window
        self.until = 0.0
        self.spinning = False
        self.reads = 0  # reads since the spinner's last turn

    @classmethod
    def from_conf(cls, conf: Any) -> BusyPoll | None:
        return cls(conf.busy_poll) if conf.busy_poll > 0 else None

    def touch(self, now: float) -> bool:
        self.until = now + self.window
        self.reads += 1
        if self.spinning:
            return False
        self.spinning = True
        self.reads = 0
        return True

    def keep_spinning(self, now: float) -> float | None:
        busy = self.reads > 1
        self.reads = 0
        if now >= self.until:
            self.spinning = False
            return None
        return self.BACKOFF if busy else 0.0


def make_engine(app: Any, conf: Any, logger: Any, backend: str = "", **options: Any) -> Any:
    """The engine every adapter runs: TLS certificates loaded from ``conf.tls`` (files are
    read here, outside the core), client contexts for ``Peer(tls=True)``, and the recorder if
    ``conf.record_dir`` is set. Raises TlsConfigError for a certificate that cannot be used."""
    from proxycore.engine import Engine
    from proxycore.tlsconfig import ClientContextCache, load_server_tls

    server = load_server_tls(conf.tls) if conf.tls is not None else None
    engine = Engine(
        app, conf, logger, server_tls=server, client_tls=ClientContextCache(), **options
    )
    attach_recorder(engine, conf, backend=backend)
    return engine


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
        server = load_server_tls(conf.tls) if conf.tls is not None else None
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


def attach_recorder(engine: Any, conf: Any, backend: str = "") -> None:
    """If ``conf.record_dir`` is set, record one trace file per client connection there
    (``<pid>-<conn>.pctrace``). A trace is written when its connection ends, or in 256 KiB
    pieces for long-lived connections (and what is pending at shutdown), so recording costs no
    I/O on most requests and bounded memory per connection."""
    if not conf.record_dir:
        return
    import os

    from proxycore.trace import Recorder

    directory = conf.record_dir
    os.makedirs(directory, exist_ok=True)
    pid = os.getpid()

    def sink(conn: int, data: bytes) -> None:
        # Pieces of one connection's trace arrive in order; the first creates the file.
        path = os.path.join(directory, f"{pid}-{conn:08d}.pctrace")
        with open(path, "ab") as f:
            f.write(data)

    engine.recorder = Recorder(engine, sink, backend=backend)
