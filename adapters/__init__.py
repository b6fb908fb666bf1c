"""Event-loop adapters for proxycore (installed as ``proxycore.adapters``).

Each adapter accepts connections, moves bytes, runs timers and deferred filters, and executes the
core's actions. It makes no protocol decision; see docs/adapters.md for the contract.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

__all__ = ["print_stats"]


def print_stats(engine: Any, **extra: Any) -> None:
    """Write one ``proxycore stats {json}`` line to stderr (adapters do this on SIGUSR1):
    the engine's snapshot, the process's thread count, and adapter-specific counts."""
    data = dict(engine.stats())
    data["threads"] = threading.active_count()
    data.update(extra)
    print("proxycore stats " + json.dumps(data, sort_keys=True), file=sys.stderr, flush=True)
