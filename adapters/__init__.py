"""Event-loop adapters for proxycore (installed as ``proxycore.adapters``).

Each adapter accepts connections, moves bytes, runs timers and deferred filters, and executes the
core's actions. It makes no protocol decision; see docs/adapters.md for the contract.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

__all__ = ["attach_recorder", "print_stats"]


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
