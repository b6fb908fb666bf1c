"""The admin listener (``--admin HOST:PORT``, the file's ``admin:``): ``/metrics`` in
Prometheus' text format, ``/healthz`` for load balancers and orchestrators.

Theory of operation: the core counts (:mod:`proxycore.metrics`), the serving process publishes
and this module serves. Every serving process's driver publishes its engine's snapshot every
:data:`PUBLISH_EVERY` seconds and at once when it begins to drain (a timer on its own loop: the
engine is only ever read on the thread that feeds it) to a :class:`Board`. The admin HTTP server
is a WSGI application on a thread of its own (``wsgiref``, as ``prometheus_client``'s own
``start_http_server``) in the process that owns the listener: the single serving process, or,
with ``--workers``, the supervisor, whose board is a private directory where each worker
writes its snapshot (a file per worker, replaced atomically) and which sums them
(:func:`proxycore.metrics.merge`), so the numbers cover every worker. The exposition itself is
``prometheus_client``'s (a custom collector over the latest snapshot), not ours.

The admin listener is not a proxy listener: it binds to a loopback address unless the
configuration explicitly allows another (``admin.allow_non_loopback``), and it makes no
proxy decision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from proxycore._version import __version__
from proxycore.metrics import BUCKETS, merge
from proxycore.runner import StartupError

__all__ = ["PUBLISH_EVERY", "AdminServer", "Board", "FileBoard"]

log = logging.getLogger("proxycore")

PUBLISH_EVERY = 0.5  # seconds between two snapshots of a serving process


class Board:
    """Where serving processes publish their latest snapshot; the admin server reads it."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}
        self.started = time.time()

    def publish(self, snapshot: dict[str, Any]) -> None:
        self.latest = snapshot  # (one reference assignment: safe across threads)

    def read(self) -> dict[str, Any]:
        return self.latest

    def draining(self) -> bool:
        return bool(self.latest.get("draining"))


class FileBoard(Board):
    """``--workers``: one file per worker in a private directory; the supervisor sums them."""

    def __init__(self, directory: str | None = None) -> None:
        super().__init__()
        self.directory = directory or tempfile.mkdtemp(prefix="proxycore-admin-")
        self.index = -1  # set in each worker before it serves
        self.stopping: Callable[[], bool] = lambda: False  # the supervisor's

    def publish(self, snapshot: dict[str, Any]) -> None:
        path = os.path.join(self.directory, f"worker-{self.index}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(snapshot, f)
        os.replace(tmp, path)

    def read(self) -> dict[str, Any]:
        snaps = []
        for name in sorted(os.listdir(self.directory)):
            if name.startswith("worker-") and name.endswith(".json"):
                with contextlib.suppress(OSError, ValueError):
                    with open(os.path.join(self.directory, name), encoding="utf-8") as f:
                        snaps.append(json.load(f))
        return merge(snaps)

    def draining(self) -> bool:
        return self.stopping() or bool(self.read().get("draining"))

    def remove(self) -> None:
        for name in os.listdir(self.directory):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)


# The board of this process (set by proxycore.run before serving when the admin listener is
# on); the socket driver publishes to it.
board: Board | None = None


class _Collector:
    """prometheus_client's view of a snapshot."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self.read()
        if not snap:
            return
        c = CounterMetricFamily(
            "proxycore_requests",
            "Requests by status class, method, protocol and upstream group.",
            labels=["code", "method", "protocol", "group"],
        )
        for code, method, proto, group, n in snap["requests"]:
            c.add_metric([code, method, proto, group], n)
        yield c
        for name, key, what in (
            ("request_duration", "duration", "Time from the request head to the exchange's end."),
            ("upstream_connect", "connect", "Time to connect to an upstream (new connections)."),
            ("upstream_first_byte", "first_byte", "Time from the attempt's start to its head."),
        ):
            h = snap[key]
            buckets, total = [], 0
            for bound, n in zip([*BUCKETS, float("inf")], h["counts"], strict=True):
                total += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            yield HistogramMetricFamily(
                f"proxycore_{name}_seconds", what, buckets=buckets, sum_value=h["sum"]
            )
        for name, key, what in (
            ("proxycore_request_body_bytes", "bytes_in", "Request body bytes received."),
            ("proxycore_response_body_bytes", "bytes_out", "Response body bytes sent."),
            ("proxycore_retries", "retries", "Upstream attempts after the first."),
            ("proxycore_upstream_connections_opened", "pool_opened", "Connections opened."),
            ("proxycore_upstream_connections_reused", "pool_reused", "Pooled connections reused."),
            ("proxycore_upstream_connections_evicted", "pool_evicted", "Idle connections evicted."),
            ("proxycore_tls_handshakes", "tls_handshakes", "TLS handshakes completed."),
            ("proxycore_tls_handshake_failures", "tls_failures", "TLS handshakes failed."),
        ):
            yield CounterMetricFamily(name, what, value=snap[key])
        for name, key, what in (
            ("proxycore_requests_in_flight", "in_flight", "Requests in progress."),
            ("proxycore_client_connections", "downstreams", "Open client connections."),
            ("proxycore_http2_streams", "h2_streams", "Open HTTP/2 streams."),
            ("proxycore_upstream_connections", "upstreams_open", "Open upstream connections."),
            ("proxycore_upstream_connections_idle", "upstreams_idle", "Idle pooled connections."),
        ):
            yield GaugeMetricFamily(name, what, value=snap[key])
        b_req = CounterMetricFamily(
            "proxycore_backend_requests", "Requests per backend.", labels=["backend"]
        )
        b_err = CounterMetricFamily(
            "proxycore_backend_errors",
            "Requests per backend that failed or got a 5xx.",
            labels=["backend"],
        )
        for address, (n, errors) in sorted(snap["backends"].items()):
            b_req.add_metric([address], n)
            b_err.add_metric([address], errors)
        yield b_req
        yield b_err
        up = GaugeMetricFamily(
            "proxycore_backend_up",
            "1 if the backend is healthy and not ejected.",
            labels=["group", "backend"],
        )
        ej = CounterMetricFamily(
            "proxycore_backend_ejections", "Passive ejections.", labels=["group", "backend"]
        )
        for b in snap["health"]:
            up.add_metric([b["group"], b["address"]], 1 if b["healthy"] and not b["ejected"] else 0)
            ej.add_metric([b["group"], b["address"]], b["ejections"])
        yield up
        yield ej
        info = GaugeMetricFamily("proxycore_info", "proxycore's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Rates:
    """Requests/s and error rate over the last minute, from a sample of the board's counters
    each second (a thread of the admin server)."""

    WINDOW = 60.0

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, list[int]], int]] = deque(maxlen=62)
        self.lock = threading.Lock()

    def sample(self, snap: dict[str, Any]) -> None:
        total = sum(row[-1] for row in snap.get("requests", []))
        backends = {a: list(c) for a, c in snap.get("backends", {}).items()}
        with self.lock:
            self.samples.append((time.monotonic(), backends, total))

    def rates(self) -> tuple[dict[str, tuple[float, float]], float]:
        """backend -> (requests/s, errors/requests), and all requests/s, over the window."""
        with self.lock:
            if len(self.samples) < 2:
                return {}, 0.0
            now_t, now_b, now_total = self.samples[-1]
            old = self.samples[0]
            for sample in self.samples:
                if now_t - sample[0] <= self.WINDOW:
                    old = sample
                    break
        then_t, then_b, then_total = old
        span = max(now_t - then_t, 1e-9)
        out = {}
        for address, (n, errors) in now_b.items():
            n0, e0 = then_b.get(address, [0, 0])
            dn = n - n0
            out[address] = (dn / span, (errors - e0) / dn if dn else 0.0)
        return out, (now_total - then_total) / span


class AdminServer:
    """The admin HTTP server on its own thread (see the module docstring)."""

    def __init__(self, host: str, port: int, board: Board) -> None:
        from prometheus_client import CollectorRegistry

        self.board = board
        self.rates = _Rates()
        self._stopped = threading.Event()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(board.read))  # type: ignore[arg-type]
        server_class = _Server6 if ":" in host else _Server
        try:
            self.httpd = make_server(
                host, port, self.app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as e:
            raise StartupError(
                f"cannot listen on admin address {host}:{port}: {e.strerror}"
            ) from None
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="admin")

    def start(self) -> AdminServer:
        self.thread.start()
        threading.Thread(target=self._sampler, daemon=True, name="admin-rates").start()
        log.info("admin listener on %s:%s (/metrics, /healthz, /status)", *self.address)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _sampler(self) -> None:
        while not self._stopped.wait(1.0):
            with contextlib.suppress(Exception):  # (a torn read: the next second's will do)
                self.rates.sample(self.board.read())

    def status(self) -> dict[str, Any]:
        """What /status.json says and /status shows."""
        snap = self.board.read()
        rates, rps = self.rates.rates()
        pools = snap.get("pools", {})
        counts = snap.get("backends", {})
        groups: dict[str, list[dict[str, Any]]] = {}
        for b in snap.get("health", []):
            address = b["address"]
            n, errors = counts.get(address, [0, 0])
            rate, error_rate = rates.get(address, (0.0, 0.0))
            pool_open, pool_idle = pools.get(address, [0, 0])
            state = "down" if not b["healthy"] else "ejected" if b["ejected"] else "up"
            groups.setdefault(b["group"], []).append(
                {
                    **b,
                    "state": state,
                    "requests": n,
                    "errors": errors,
                    "requests_per_second": round(rate, 3),
                    "error_rate": round(error_rate, 4),
                    "pool_open": pool_open,
                    "pool_idle": pool_idle,
                }
            )
        processes = snap.get("processes") or ([snap["process"]] if "process" in snap else [])
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.board.started, 1),
            "draining": self.board.draining(),
            "workers": processes,
            "listeners": sorted({a for p in processes for a in p.get("listeners", [])}),
            "requests": sum(row[-1] for row in snap.get("requests", [])),
            "requests_per_second": round(rps, 3),
            "in_flight": snap.get("in_flight", 0),
            "client_connections": snap.get("downstreams", 0),
            "http2_streams": snap.get("h2_streams", 0),
            "upstream_connections": snap.get("upstreams_open", 0),
            "upstream_connections_idle": snap.get("upstreams_idle", 0),
            "groups": [{"name": g, "backends": bs} for g, bs in groups.items()],
        }

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            body = generate_latest(self.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            if self.board.draining():
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"draining\n"]
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/status.json":
            body = json.dumps(self.status()).encode()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            )
            return [body]
        if path in ("/status", "/"):
            start_response(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
            )
            return [STATUS_PAGE]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics, /healthz, /status, /status.json\n"]


# The status page: no external asset; it fetches /status.json every 2 seconds and redraws.
STATUS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>proxycore status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.meta span{margin-right:1.5em} .num{text-align:right;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;background:#fff;min-width:60%}
th,td{border:1px solid #ddd;padding:.3em .6em} th{background:#f0f0f0;text-align:left}
.up{color:#fff;background:#2a8a3a} .down{color:#fff;background:#c0392b}
.ejected{color:#222;background:#f1c40f} .state{text-align:center;font-weight:600}
.draining{color:#c0392b;font-weight:600} #err{color:#c0392b}
</style></head><body>
<h1>proxycore <span id="version"></span></h1>
<div class="meta"><span>uptime <b id="uptime">-</b></span><span>requests <b id="requests">-</b>
</span><span>req/s (1 min) <b id="rps">-</b></span><span>in flight <b id="inflight">-</b></span>
<span>client connections <b id="clients">-</b></span><span>HTTP/2 streams <b id="streams">-</b>
</span><span id="state"></span></div>
<h2>Upstream groups</h2><div id="groups"></div>
<h2>Processes</h2><table><thead><tr><th>pid</th><th>backend</th><th>listeners</th></tr>
</thead><tbody id="workers"></tbody></table>
<p>Updated <span id="updated">never</span>. <span id="err"></span>
<a href="/status.json">status.json</a> &middot; <a href="/metrics">metrics</a></p>
<script>
function esc(s){return String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",
'"':"&quot;"}[c]))}
function dur(s){s=Math.floor(s);const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),
m=Math.floor(s%3600/60);return(d?d+"d ":"")+(h?h+"h ":"")+m+"m "+(s%60)+"s"}
function draw(st){
 for(const[k,v]of[["version",st.version],["uptime",dur(st.uptime_seconds)],
  ["requests",st.requests],["rps",st.requests_per_second.toFixed(1)],["inflight",st.in_flight],
  ["clients",st.client_connections],["streams",st.http2_streams]])
  document.getElementById(k).textContent=v;
 const state=document.getElementById("state");
 state.textContent=st.draining?"draining":"";state.className=st.draining?"draining":"";
 let html="";
 for(const g of st.groups){
  html+="<h3>"+esc(g.name)+"</h3><table><thead><tr><th>backend</th><th>state</th><th>weight"+
   "</th><th>in flight</th><th>requests</th><th>req/s (1 min)</th><th>errors (1 min)</th>"+
   "<th>ejections</th><th>pool open / idle</th></tr></thead><tbody>";
  for(const b of g.backends){
   html+='<tr data-backend="'+esc(b.address)+'" data-state="'+b.state+'"><td>'+
    esc(b.address)+'</td><td class="state '+b.state+'">'+b.state+'</td><td class="num">'+
    b.weight+'</td><td class="num">'+b.in_flight+'</td><td class="num requests">'+
    b.requests+'</td><td class="num">'+b.requests_per_second.toFixed(1)+
    '</td><td class="num">'+(100*b.error_rate).toFixed(1)+' %</td><td class="num">'+
    b.ejections+'</td><td class="num">'+b.pool_open+" / "+b.pool_idle+"</td></tr>"}
  html+="</tbody></table>"}
 document.getElementById("groups").innerHTML=html||"<p>no upstream group</p>";
 document.getElementById("workers").innerHTML=st.workers.map(w=>"<tr><td>"+w.pid+
  "</td><td>"+esc(w.backend)+"</td><td>"+esc(w.listeners.join(", "))+"</td></tr>").join("");
 document.getElementById("updated").textContent=new Date().toLocaleTimeString();
 document.body.dataset.refreshes=String(Number(document.body.dataset.refreshes||0)+1)}
async function refresh(){
 try{const r=await fetch("/status.json",{cache:"no-store"});draw(await r.json());
  document.getElementById("err").textContent=""}
 catch(e){document.getElementById("err").textContent="proxycore is not answering"}}
refresh();setInterval(refresh,2000);
</script></body></html>
"""
