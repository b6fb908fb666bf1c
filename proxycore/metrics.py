"""What the core counts for the admin listener's metrics (issue 34): requests, their durations,
bytes, retries, upstream connect and first-byte times, per upstream group and backend.

Theory of operation: the engine owns one :class:`Metrics` when the admin listener is on
(``Engine.metrics``; None otherwise, so a proxy without ``--admin`` pays one ``is None`` test per
exchange). Each exchange is counted once, when it ends (:meth:`Metrics.exchange_done`, called
from ``Session._finish``): a counter per (status class, method, protocol, upstream group), three
fixed-bucket histograms, byte and retry totals, and a request and error count per backend.
Gauges (open connections, pool use, in-flight requests, HTTP/2 streams, backend health) are not
counted at all: :meth:`Metrics.snapshot` reads them from the engine when asked. The snapshot is
plain data (dicts, lists, numbers: JSON-able, and summable across worker processes by
:func:`merge`); the adapter publishes it and serves it in Prometheus' text format through
``prometheus_client`` (``adapters/admin.py``). No clock, no I/O: times come from the session's
event times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from proxycore.upstream import IDLE

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.session import Session

__all__ = ["BUCKETS", "Cell", "Histogram", "Metrics", "merge"]

# Seconds: Prometheus' default buckets (client libraries' DEFAULT_BUCKETS), +Inf implied.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_FOLD_AT: Final = 4096  # observations kept before they are sorted into buckets

# Methods kept as label values; any other is counted as "other" (bounded label cardinality).
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and count. Values are
    appended to ``pending`` as they come (one append per observation) and sorted into the
    buckets by :meth:`fold`: at snapshot time, or when ``_FOLD_AT`` are pending."""

    __slots__ = ("bounds", "counts", "pending", "sum")

    def __init__(self) -> None:
        self.bounds: list[float] = list(BUCKETS)
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.pending: list[float] = []

    def observe(self, value: float) -> None:
        pending = self.pending
        pending.append(value)
        if len(pending) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        bounds = self.bounds
        counts = self.counts
        n = len(bounds)
        total = self.sum
        for value in self.pending:
            i = 0
            while i < n and value > bounds[i]:
                i += 1
            counts[i] += 1
            total += value
        self.sum = total
        self.pending = []

    def data(self) -> dict[str, Any]:
        self.fold()
        return {"counts": list(self.counts), "sum": self.sum}


class Cell:
    """One counter (a native integer: ``cell.n += 1`` costs a few instructions)."""

    __slots__ = ("errors", "n")

    def __init__(self) -> None:
        self.n = 0
        self.errors = 0


class Metrics:
    """The counters of one engine (see the module docstring)."""

    def __init__(self) -> None:
        # (status class, method, HTTP version as in the request line, upstream group) -> n
        self.requests: dict[tuple[str, str, str, str], Cell] = {}
        self.duration = Histogram()  # request: head received -> exchange over
        self.connect = Histogram()  # upstream connect (new connections only)
        self.first_byte = Histogram()  # upstream attempt start -> response head
        self.bytes_in = 0  # request bodies received
        self.bytes_out = 0  # response bodies sent
        self.retries = 0
        # backend address -> requests, errors (5xx or failed)
        self.backends: dict[str, Cell] = {}
        # The last request's labels and cell, and the last backend's: most requests look like
        # the one before (compared as strings: a few instructions when they are the same)
        self._last: tuple[str, str, str, str] = ("", "", "", "")
        self._last_cell = Cell()
        self._last_address = ""
        self._last_backend = Cell()

    def exchange_done(self, s: Session) -> None:
        """Count one exchange (its status, times and bytes) as it ends. Runs once per request
        when the admin listener is on: comparisons, the counters of the labels seen last (a
        dictionary only when they change), and appends (see :class:`Histogram`)."""
        status = s.response_status
        err = s.error
        if not status and err is not None:
            status = err.status
        if status < 300:
            cls = "2xx" if status >= 200 else "1xx" if status >= 100 else "none"
        elif status < 400:
            cls = "3xx"
        elif status < 500:
            cls = "4xx"
        else:
            cls = "5xx" if status < 600 else "none"
        req = s.req_header
        method = req.method
        if method != "GET" and method not in _METHODS:
            method = "other"
        version = req.version
        group = s.upstream_group
        last = self._last
        if last[0] == cls and last[1] == method and last[2] == version and last[3] == group:
            cell = self._last_cell
        else:
            key = (cls, method, version, group)
            found = self.requests.get(key)
            if found is None:
                found = self.requests[key] = Cell()
            cell = self._last_cell = found
            self._last = key
        cell.n += 1
        self.duration.observe(s.engine.now - s.start_time)
        self.bytes_in += s.request_body_bytes
        self.bytes_out += s.response_body_bytes
        self.retries += s.retries
        peer = s.peer
        if peer is not None:
            # the current attempt's times, as the access log reads them (Session._attempt)
            start = s._t_peer
            if s._t_conn >= 0.0 and not s.upstream_reused:
                self.connect.observe(s._t_conn - start)
            if s._t_head >= 0.0:
                self.first_byte.observe(s._t_head - start)
            address = peer.address
            if address == self._last_address:
                backend = self._last_backend
            else:
                got = self.backends.get(address)
                if got is None:
                    got = self.backends[address] = Cell()
                backend = self._last_backend = got
                self._last_address = address
            backend.n += 1
            resp = s._resp
            if status >= 500 or resp is None or resp.status >= 500:
                backend.errors += 1

    def snapshot(self, engine: Engine) -> dict[str, Any]:
        """Everything, as plain data: the counters, and the gauges read from ``engine`` now."""
        pool = engine.pool.stats
        h2_streams = 0
        for d in engine.downstreams.values():
            h2_streams += d.open_streams()
        tls = engine.tls
        pools: dict[str, list[int]] = {}  # backend address -> [open, idle] connections
        for up in engine.upstreams.values():
            counts = pools.get(up.peer.address)
            if counts is None:
                counts = pools[up.peer.address] = [0, 0]
            counts[0] += 1
            if up.state == IDLE:
                counts[1] += 1
        return {
            "requests": [[c, m, v[5:], g, x.n] for (c, m, v, g), x in self.requests.items()],
            "duration": self.duration.data(),
            "connect": self.connect.data(),
            "first_byte": self.first_byte.data(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "retries": self.retries,
            "backends": {a: [c.n, c.errors] for a, c in self.backends.items()},
            "pools": pools,
            "downstreams": len(engine.downstreams),
            "in_flight": sum(d.active_exchanges() for d in engine.downstreams.values()),
            "h2_streams": h2_streams,
            "upstreams_open": len(engine.upstreams),
            "upstreams_idle": len(engine.pool),
            "pool_opened": pool.opened,
            "pool_reused": pool.reused,
            "pool_evicted": pool.evicted + pool.expired,
            "tls_handshakes": tls.handshakes if tls is not None else 0,
            "tls_failures": tls.failures if tls is not None else 0,
            "draining": engine.draining,
            "health": _backend_states(engine),
        }


def _backend_states(engine: Engine) -> list[dict[str, Any]]:
    """The app's backends (``backend_states(now)``: the built-in proxies have it; a user's
    class may define it too), or none."""
    states = getattr(engine.app, "backend_states", None)
    return [] if states is None else list(states(engine.now))


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several workers' snapshots (counters and gauges add up; ``draining`` if any
    is; backend states from the first that has them)."""
    if not snapshots:
        return {}
    out: dict[str, Any] = {}
    requests: dict[tuple[Any, ...], int] = {}
    backends: dict[str, list[int]] = {}
    pools: dict[str, list[int]] = {}
    for snap in snapshots:
        for address, counts in snap.get("pools", {}).items():
            mine = pools.setdefault(address, [0, 0])
            mine[0] += counts[0]
            mine[1] += counts[1]
        for *key, n in snap["requests"]:
            k = tuple(key)
            requests[k] = requests.get(k, 0) + n
        for address, counts in snap["backends"].items():
            mine = backends.setdefault(address, [0, 0])
            mine[0] += counts[0]
            mine[1] += counts[1]
        for name, value in snap.items():
            if name in ("requests", "backends", "health", "pools", "process"):
                continue
            if isinstance(value, dict):  # a histogram
                h = out.setdefault(name, {"counts": [0] * len(value["counts"]), "sum": 0.0})
                h["counts"] = [a + b for a, b in zip(h["counts"], value["counts"], strict=True)]
                h["sum"] += value["sum"]
            elif isinstance(value, bool):
                out[name] = out.get(name, False) or value
            else:
                out[name] = out.get(name, 0) + value
    out["requests"] = [[*k, n] for k, n in requests.items()]
    out["backends"] = backends
    out["pools"] = pools
    out["health"] = next((s["health"] for s in snapshots if s.get("health")), [])
    out["processes"] = [s["process"] for s in snapshots if "process" in s]
    return out
