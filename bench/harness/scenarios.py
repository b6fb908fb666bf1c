"""Scenarios: GET /small (rps), the 1 GiB stream, idle keep-alive RSS, TLS; more_rounds
(--rounds)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .common import BENCH, BIG_BYTES, HOST, LOAD_CPU, log
from .h2load import H2_SHAPES, run_h2load
from .procs import CpuMeter, Proc, RssSampler, check_small, tree, tree_fds, tree_mem
from .targets import Ctx, Target
from .tlsprobe import HandshakeProbe
from .wrk import run_wrk

# --------------------------------------------------------------------------- scenarios


def scenario_small(ctx: Ctx, port: int, proc: Proc | None) -> dict[str, Any]:
    """GET /small (53-byte body): c50 throughput + latency, then c1 latency."""
    a = ctx.args
    run_wrk(port, 50, a.warmup)  # warm-up (connection pools, JIT-less caches, etc.)
    pids = {"origin": ctx.origin.pid} if ctx.origin else {}
    if proc is not None:
        pids["proxy"] = proc.pid
    with CpuMeter(pids) as cpu:
        c50 = run_wrk(port, 50, a.duration)
    if proc is not None and not proc.alive():
        raise RuntimeError(f"{proc.name} died during the c50 run:\n{proc.log_tail()}")
    run_wrk(port, 1, min(a.warmup, 1.0))  # short warm-up for the single-connection run
    c1 = run_wrk(port, 1, a.c1_duration)
    return {"c50": c50, "c1": c1, "cpu": cpu.result}


def scenario_stream(ctx: Ctx, port: int, proc: Proc | None) -> dict[str, Any]:
    """GET /big (1 GiB) --stream-runs times through the target with curl (pinned to the
    load cpu, body to /dev/null): median throughput, and the proxy tree's peak RSS over
    all transfers (VmHWM reset before the first one, plus a 10 ms VmRSS sampler)."""
    a = ctx.args
    argv = [
        "taskset", "-c", LOAD_CPU,
        "curl", "-s", "--noproxy", "*", "-o", "/dev/null",
        "--max-time", f"{a.stream_timeout:g}",
        "-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
        f"http://{HOST}:{port}/big",
    ]  # fmt: skip
    pids = {"origin": ctx.origin.pid} if ctx.origin else {}
    if proc is not None:
        pids["proxy"] = proc.pid
    mem = RssSampler(proc.pid) if proc is not None else contextlib.nullcontext()
    runs: list[dict[str, Any]] = []
    with mem, CpuMeter(pids) as cpu:
        for _ in range(max(1, a.stream_runs)):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=a.stream_timeout + 30)
            try:
                code, size, total, ttfb = r.stdout.split()
            except ValueError:
                raise RuntimeError(
                    f"curl exited {r.returncode}: {r.stdout!r} {r.stderr!r}"
                ) from None
            size_b, secs = int(size), float(total)
            runs.append(
                {
                    "http_code": int(code),
                    "bytes": size_b,
                    "seconds": round(secs, 3),
                    "ttfb_s": round(float(ttfb), 4),
                    "mb_s": round(size_b / secs / 1e6, 1) if secs > 0 else 0.0,
                    "curl_rc": r.returncode,  # 28 = --max-time hit: speed is of a partial body
                }
            )
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} died during the 1 GiB stream:\n{proc.log_tail()}")
            if runs[-1]["http_code"] != 200 or runs[-1]["bytes"] != BIG_BYTES:
                break  # a broken or too slow transfer: don't repeat it
            if sum(x["seconds"] for x in runs) > 20:
                break  # a slow proxy: fewer repeats, keeps the whole run bounded
    speeds = sorted(x["mb_s"] for x in runs)
    res: dict[str, Any] = {
        "mb_s": speeds[len(speeds) // 2],  # median (of 3 by default)
        "mb_s_runs": [x["mb_s"] for x in runs],
        "complete": all(x["http_code"] == 200 and x["bytes"] == BIG_BYTES for x in runs),
        "runs": runs,
        "cmd": " ".join(argv[3:]),
        "cpu": cpu.result,
    }
    if proc is not None:
        m = mem.result  # type: ignore[union-attr]
        res.update(m, peak_rss_mib=round(m["peak_rss_kib"] / 1024, 1))
    if not res["complete"]:
        x = runs[-1]
        res["error"] = (
            f"incomplete: HTTP {x['http_code']}, {x['bytes']:,} of {BIG_BYTES:,} bytes in "
            f"{x['seconds']:.1f}s (curl rc {x['curl_rc']})"
        )
    return res


def _readline(p: Proc, timeout: float) -> dict[str, Any]:
    """One JSON line from a pipes=True helper's stdout, or RuntimeError after timeout."""
    import selectors

    assert p.p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"{p.name}: no answer in {timeout:.0f}s\n{p.log_tail()}")
    line = p.p.stdout.readline()
    if not line:
        raise RuntimeError(f"{p.name} exited (rc {p.p.poll()}):\n{p.log_tail()}")
    out: dict[str, Any] = json.loads(line)
    return out


def scenario_idle(ctx: Ctx, port: int, proc: Proc | None) -> dict[str, Any]:
    """Open --idle-conns keep-alive connections (one GET /small each, response read in
    full, then idle) from bench/idle_client.py on the load cpu; proxy tree RSS before and
    with them open -> KiB per idle connection."""
    assert proc is not None
    a = ctx.args
    n = a.idle_conns
    pids = tree(proc.pid)
    time.sleep(0.3)
    before = tree_mem(pids)
    fds_before = tree_fds(pids)
    client = Proc(
        f"idle-client-{proc.name}",
        [
            sys.executable, str(BENCH / "idle_client.py"), "--port", str(port),
            "--conns", str(n), "--timeout", f"{a.idle_timeout:g}",
        ],
        LOAD_CPU,
        ctx.workdir,
        pipes=True,
    )  # fmt: skip
    try:
        ready = _readline(client, a.idle_timeout + 15)
        if not ready.get("ready"):
            raise RuntimeError(f"idle client: {ready}")
        time.sleep(1.0)  # let the proxy finish bookkeeping for the last connections
        pids = tree(proc.pid)
        with_ = tree_mem(pids)
        fds_with = tree_fds(pids)
        assert client.p.stdin is not None
        client.p.stdin.write(b"check\n")
        client.p.stdin.flush()
        check = _readline(client, 10)
    finally:
        client.stop()
    if not proc.alive():
        raise RuntimeError(f"{proc.name} died holding idle connections:\n{proc.log_tail()}")
    opened = ready["open"]
    delta = with_["rss_kib"] - before["rss_kib"]
    res: dict[str, Any] = {
        "wanted": n,
        "opened": opened,
        "still_open": check["still_open"],
        "setup_s": ready["setup_s"],
        "client_errors": ready["errors"],
        "rss_before_kib": before["rss_kib"],
        "rss_with_kib": with_["rss_kib"],
        "delta_kib": delta,
        "kib_per_conn": round(delta / opened, 2) if opened else None,
        "fds_before": fds_before,
        "fds_with": fds_with,
    }
    if opened < n or check["still_open"] < opened:
        res["error"] = (
            f"only {opened}/{n} connections set up ({ready['errors'] or 'timeout'}), "
            f"{check['still_open']} still open at measurement"
        )
    return res


TLS_CLOSE = ("Connection: close",)  # wrk: every request on a new TCP + TLS connection


def load_bound(cpu: dict[str, Any]) -> bool:
    """The load cpu (wrk + origin) was saturated while the proxy was not: the number is
    the load generator's limit (a lower bound for the proxy)."""
    return bool(cpu.get(f"cpu{LOAD_CPU}_busy_pct", 0) >= 95 and cpu.get("proxy_pct", 100) < 95)


def scenario_tls(ctx: Ctx, port: int, proc: Proc | None) -> dict[str, Any]:
    """The target terminating TLS (ctx.tls): keep-alive req/s over TLS (wrk -c50), then new
    connections/s with wrk -H "Connection: close" -- as wrk does it (it resumes the TLS
    session on every reconnect) and, with the no-resume shim, with full handshakes. After
    each handshake run a 1 s wrk -c4 through HandshakeProbe checks what really happened
    (one connection per request? resumed or full?)."""
    a = ctx.args
    secs = a.tls_duration
    pids = {"origin": ctx.origin.pid} if ctx.origin else {}
    if proc is not None:
        pids["proxy"] = proc.pid

    def alive(what: str) -> None:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} died during {what}:\n{proc.log_tail()}")

    run_wrk(port, 50, min(a.warmup, 1.0), tls=True)  # warm-up: upstream pool, caches
    with CpuMeter(pids) as cpu:
        ka = run_wrk(port, 50, secs, tls=True)
    alive("the TLS keep-alive run")
    ka["load_bound"] = load_bound(cpu.result)
    res: dict[str, Any] = {"keepalive": ka, "cpu": cpu.result, "handshakes": {}}
    modes: list[tuple[str, str | None]] = [("resumed", None)]
    if ctx.noresume_so:
        modes.append(("full", ctx.noresume_so))
    else:
        res["full_handshakes_note"] = ctx.noresume_note
    errors = []
    for kind, preload in modes:
        try:
            with CpuMeter(pids) as cpu:
                h = run_wrk(port, 50, secs, tls=True, headers=TLS_CLOSE, preload=preload)
            alive(f"the {kind}-handshake run")
            h["cpu"] = cpu.result
            h["load_bound"] = load_bound(cpu.result)
            with HandshakeProbe(port) as probe:
                pr = run_wrk(probe.port, 4, 1, tls=True, headers=TLS_CLOSE, preload=preload)
            h["probe"] = probe.result(pr["requests"])
            h["probe"]["cmd"] = pr["cmd"].replace(str(probe.port), "RELAY", 1)
            h["probe"]["wrk_errors"] = pr["error_count"]
            h["kind"] = h["probe"]["kind"]  # what the relay saw; "resumed"/"full" expected
            p = h["probe"]
            # each connection carries one request: connections ~= requests (+ <= 4 in flight)
            h["conn_per_request"] = (
                round(p["connections"] / p["requests"], 3) if p["requests"] else None
            )
            if h["kind"] != kind:
                h["warning"] = (
                    f"expected {kind} handshakes, the relay saw {p['handshakes']} "
                    f"({p['connections']} connections for {p['requests']} requests)"
                )
        except Exception as e:
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
            h = {"error": msg}
            errors.append(f"{kind} handshakes: {msg}")
        res["handshakes"][kind] = h
    windows = [res["cpu"]] + [h["cpu"] for h in res["handshakes"].values() if "cpu" in h]
    res["bg_pct_max"] = max(w.get("bg_pct", 0) for w in windows)
    if errors:
        res["error"] = "; ".join(errors)
    return res


def scenario_h2(ctx: Ctx, port: int, proc: Proc | None) -> dict[str, Any]:
    """HTTP/2 (h2c by prior knowledge) GET /small with h2load: -c10 -m10 and -c1 -m100, each
    after a short warm-up; any failed, errored or timed-out request is an error. Before them,
    on the fresh process, proxycore rows measure the RSS per idle HTTP/2 connection
    (``bench/h2_idle.py``'s ``measure_idle``, --h2-idle-conns connections; ``idle``)."""
    a = ctx.args
    pids = {"origin": ctx.origin.pid} if ctx.origin else {}
    if proc is not None:
        pids["proxy"] = proc.pid
    out: dict[str, Any] = {}
    if proc is not None and proc.name.startswith("proxycore") and a.h2_idle_conns > 0:
        from h2_idle import measure_idle  # bench/ is on sys.path (run.py puts it there)

        try:
            out["idle"] = measure_idle(proc.pid, port, a.h2_idle_conns)
        except (OSError, RuntimeError) as e:
            out["idle"] = {"error": f"{type(e).__name__}: {e}"}
            out["error"] = f"idle HTTP/2 connections: {e}"
        if not proc.alive():
            raise RuntimeError(f"{proc.name} died holding idle HTTP/2 connections")
    for key, (conns, streams) in H2_SHAPES.items():
        run_h2load(port, conns, streams, min(a.warmup, 2.0))
        with CpuMeter(pids) as cpu:
            res = out[key] = run_h2load(port, conns, streams, a.duration)
        res["cpu"] = cpu.result
        out.setdefault("cpu", cpu.result)  # (the -c10 -m10 window: what noise checks read)
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} died during the h2load {key} run:\n{proc.log_tail()}")
        bad = res["failed"] + res["errored"] + res["timeout"]
        if bad or not res["succeeded"]:
            out["error"] = f"h2load {key}: {bad} requests failed, errored or timed out"
    return out


# Scenario registry: name -> fn(ctx, port, proc) -> metrics dict, stored as row[name].
# Every scenario gets a freshly started target (so one scenario's heap growth can't hide
# or inflate the next one's RSS). --scenarios maps rps->small, stream, idle, tls; "workers"
# adds the proxycore-uvloop-w2 row (which runs "small" only). "tls" starts the target
# with Target.tls_start (nginx and proxycore rows only); "h2" with Target.h2_start where a
# target has one (nginx: listen ... http2), else Target.start (proxycore takes h2c on its port).
SCENARIOS: dict[str, Callable[[Ctx, int, Proc | None], dict[str, Any]]] = {
    "small": scenario_small,
    "stream": scenario_stream,
    "idle": scenario_idle,
    "tls": scenario_tls,
    "h2": scenario_h2,
}
SCENARIO_FLAGS = {
    "rps": "small",
    "stream": "stream",
    "idle": "idle",
    "workers": None,
    "tls": "tls",
    "h2": "h2",
}


def more_rounds(ctx: Ctx, pairs: list[tuple[Target, dict[str, Any]]], rounds: int) -> None:
    """--rounds N: passes 2..N over every row that measured GET /small, c50 only (warm-up, then
    the same wrk run, in a fresh process). Each row keeps every pass in ``c50_rounds`` and
    reports the pass with the median req/s as its ``c50`` (latencies from that same pass)."""
    a = ctx.args
    for rnd in range(2, rounds + 1):
        for t, row in pairs:
            small = row.get("small")
            if not isinstance(small, dict) or small.get("error") or "c50" not in small:
                continue
            proc = None
            try:
                port, proc = t.start(ctx)
                check_small(port)
                run_wrk(port, 50, a.warmup)
                c50 = run_wrk(port, 50, a.duration)
                small.setdefault("c50_rounds", [small["c50"]]).append(c50)
                log(f"{t.name}/small round {rnd}: {c50['rps']:,.0f} req/s")
            except Exception as e:
                log(f"{t.name}/small round {rnd}: FAILED: {type(e).__name__}: {e}")
            finally:
                if proc is not None:
                    proc.stop()
    for _, row in pairs:
        small = row.get("small")
        if isinstance(small, dict) and len(small.get("c50_rounds", ())) > 1:
            runs = sorted(small["c50_rounds"], key=lambda r: r["rps"])
            small["c50"] = runs[(len(runs) - 1) // 2]  # the median (the lower one of two)
