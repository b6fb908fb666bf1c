#!/usr/bin/env python3
"""proxycore benchmark harness.

    python bench/run.py [--duration 10] [--only name,name]
                        [--scenarios rps,stream,idle,workers,tls,h2]
                        [--backends uvloop,...] [--tls-duration 5] [--json out.json]

Starts an nginx origin (1 worker, CPU 1), then measures, one after another with
identical settings, each target: direct-to-origin (the ceiling), nginx as a reverse
proxy, haproxy, a plain aiohttp+uvloop proxy, and proxycore with each --backends
backend. Proxies run pinned to CPU 0; the origin and wrk share CPU 1.

Scenarios: rps (GET /small, wrk c50 + c1), stream (1 GiB GET), idle (RSS per idle
keep-alive connection), workers (a proxycore --workers 2 row), tls (nginx and every
proxycore backend terminating TLS with the same ECDSA P-256 certificate, generated once
per run: keep-alive req/s over TLS, and new connections/s with resumed and with full
handshakes), h2 (nginx as an HTTP/2 proxy, listen ... http2, and every proxycore backend
taking h2c by prior knowledge: h2load -c10 -m10 and -c1 -m100 to GET /small; before that,
on proxycore rows, the RSS per idle HTTP/2 connection, --h2-idle-conns of them).

Everything listens on 127.0.0.1 only. Every process started here is stopped on exit,
including on Ctrl-C / SIGTERM. See bench/README.md.

This file is the command (flags and the measurement loop); the harness it drives lives in
bench/harness/ (processes, wrk, the TLS probe, targets, scenarios, installs, the report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the harness package

from harness.common import BENCH, BIG_BYTES, BOTH_CPUS, HOST, LOAD_CPU, PROXY_CPU, SMALL_BODY, log
from harness.install import _find, apt_install, ensure_tools, tool_versions
from harness.procs import Proc, check_small, check_small_tls, wait_quiet
from harness.report import (
    _brief,
    _chart_title,
    _cpu_model,
    draw_chart,
    print_rounds,
    report,
    rereport,
    summarize,
)
from harness.scenarios import SCENARIO_FLAGS, SCENARIOS, more_rounds
from harness.targets import PROXYCORE_PYTHON, Ctx, SkipTarget, Target, build_targets, start_origin
from harness.tlsprobe import build_noresume_shim, make_tls_files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="proxycore reverse-proxy benchmark: direct/nginx/haproxy/aiohttp/proxycore"
    )
    ap.add_argument("--duration", type=float, default=10, help="seconds per c50 measurement (10)")
    ap.add_argument("--c1-duration", type=float, default=5, help="seconds per c1 measurement (5)")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds before c50 (2)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each row's c50 req/s N times, in N passes over all rows (a fresh process "
        "each), and report the median pass: on a noisy box this keeps drift from landing on one "
        "row of a ratio (1)",
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma list of targets: direct,nginx,haproxy,aiohttp,proxycore-<backend>,"
        "proxycore-uvloop-w2,proxycore-uvloop-bp0,proxycore-uvloop-accesslog,"
        "proxycore-uvloop-admin ('proxycore' selects all proxycore rows)",
    )
    ap.add_argument(
        "--backends",
        default="uvloop,asyncio,gevent,threads,trio",
        help="proxycore backends, one row each (uvloop,asyncio,gevent,threads,trio)",
    )
    ap.add_argument(
        "--scenarios",
        default="rps,stream,idle,workers,tls,h2",
        help="comma list: rps (GET /small c50 + c1), stream (1 GiB GET: MB/s + peak RSS), "
        "idle (RSS per idle keep-alive conn), workers (proxycore-uvloop-w2 row, rps only), "
        "tls (nginx + proxycore terminating TLS: keep-alive req/s, new conns/s with resumed "
        "and full handshakes), h2 (HTTP/2 by prior knowledge to nginx and proxycore: h2load "
        "-c10 -m10 and -c1 -m100 req/s; proxycore rows: RSS per idle HTTP/2 conn)",
    )
    ap.add_argument(
        "--tls-duration",
        type=float,
        default=5,
        help="seconds per tls measurement (keep-alive, resumed, full handshakes) (5)",
    )
    ap.add_argument(
        "--idle-conns", type=int, default=10000, help="idle keep-alive connections (10000)"
    )
    ap.add_argument(
        "--idle-timeout", type=float, default=60, help="max seconds to set them up (60)"
    )
    ap.add_argument(
        "--h2-idle-conns",
        type=int,
        default=2000,
        help="h2 scenario: idle HTTP/2 connections per proxycore row for the RSS per "
        "connection, bench/h2_idle.py (2000; 0 = skip)",
    )
    ap.add_argument(
        "--stream-timeout", type=float, default=60, help="curl --max-time for the 1 GiB GET (60)"
    )
    ap.add_argument(
        "--stream-runs", type=int, default=3, help="1 GiB transfers per target; median MB/s (3)"
    )
    ap.add_argument(
        "--json", default=str(BENCH / "results" / "latest.json"), help="JSON output path"
    )
    ap.add_argument(
        "--chart", default=str(BENCH / "chart.png"), help="PNG chart path ('' = no chart)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10,
        help="before each scenario, wait up to S s for other processes' CPU to drop below 5%%"
        " (0 = don't wait; default 10)",
    )
    ap.add_argument(
        "--quiet-budget",
        type=float,
        default=90,
        help="at most S s of --quiet-wait in total over the run (90)",
    )
    ap.add_argument(
        "--proxycore-python",
        metavar="PATH",
        help="python that runs the proxycore rows, e.g. a venv with the compiled core "
        "(PROXYCORE_COMPILE=1 pip install .); default: this python, from the source tree",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 if any row failed or had errors")
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs/logs temp dir")
    ap.add_argument(
        "--report",
        metavar="JSON",
        default="",
        help="measure nothing: re-print tables + targets of a saved run (and redraw --chart)",
    )
    return ap.parse_args(argv)


def select(targets: list[Target], only: str) -> list[Target]:
    if not only:
        return targets
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = {t.name for t in targets}
    for w in wanted:
        if w not in names and w != "proxycore":
            sys.exit(f"bench: unknown target {w!r}; known: {', '.join(sorted(names))}")
    return [
        t
        for t in targets
        if t.name in wanted or ("proxycore" in wanted and t.name.startswith("proxycore-"))
    ]


def parse_scenarios(text: str) -> tuple[list[str], bool]:
    flags = [w.strip() for w in text.split(",") if w.strip()]
    for f in flags:
        if f not in SCENARIO_FLAGS:
            sys.exit(f"bench: unknown scenario {f!r}; known: {', '.join(SCENARIO_FLAGS)}")
    names = [v for f, v in SCENARIO_FLAGS.items() if f in flags and v]
    return names, "workers" in flags


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE -> hard, so every child (proxies, nginx, the idle client)
    inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.proxycore_python:
        PROXYCORE_PYTHON[0] = args.proxycore_python
    if args.report:
        return rereport(args.report, args.chart)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    scen_names, workers_row = parse_scenarios(args.scenarios)
    targets = select(build_targets(backends, workers_row), args.only)
    targets = [t for t in targets if any(s in scen_names for s in t.scenarios) or "-w" in t.name]
    if not targets:
        sys.exit("bench: no targets selected")
    nofile = raise_nofile()
    if "idle" in scen_names and nofile < args.idle_conns + 64:
        sys.exit(
            f"bench: RLIMIT_NOFILE is {nofile}; --idle-conns {args.idle_conns} needs "
            f">= {args.idle_conns + 64} (lower --idle-conns)"
        )

    # SIGINT (even if inherited as ignored), SIGTERM, SIGHUP all so the finally-block cleanup runs.
    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)

    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    nginx, haproxy, hnote = ensure_tools(any(t.name == "haproxy" for t in targets))
    if "stream" in scen_names and not _find("curl"):
        ok, msg = apt_install(["curl"])
        if not ok:
            sys.exit(f"bench: curl missing and could not be installed: {msg}")
    if "tls" in scen_names:
        try:
            import trustme  # noqa: F401
        except ImportError:
            sys.exit("bench: the tls scenario needs trustme (pip install trustme)")
    workdir = Path(tempfile.mkdtemp(prefix="proxycore-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers (user root, but be safe) read/write temp paths
    ctx = Ctx(args, workdir, nginx, haproxy, hnote)
    if "tls" in scen_names:
        ctx.tls = make_tls_files(workdir)
        ctx.noresume_so, ctx.noresume_note = build_noresume_shim(workdir)
        if ctx.noresume_note:
            log(ctx.noresume_note)
    rows: list[dict[str, Any]] = []
    interrupted = False
    quiet_left = args.quiet_budget  # total waiting for a quiet box, so a busy box can't
    # push the run past ~10 minutes
    try:
        try:
            start_origin(ctx)
        except RuntimeError as e:
            log(f"origin nginx failed to start: {e}")
            return 2
        log(f"origin nginx on {HOST}:{ctx.origin_port} (cpu {LOAD_CPU}), workdir {workdir}")
        for t in targets:
            row: dict[str, Any] = {
                "name": t.name,
                "description": t.description,
                "cpu_pin": t.cpu,
                "ok": False,
            }
            rows.append(row)
            errs: dict[str, str] = {}
            # The --workers row runs the rps scenario only, whatever --scenarios says.
            run = ["small"] if "-w" in t.name else [s for s in t.scenarios if s in scen_names]
            for sname in run:
                proc = None
                try:
                    if (wait := min(args.quiet_wait, quiet_left)) > 0:
                        q = row.setdefault("pre_quiet", {})[sname] = wait_quiet(wait)
                        quiet_left -= q["waited_s"]
                        if not q["quiet"]:
                            log(
                                f"{t.name}/{sname}: box still busy after {q['waited_s']}s "
                                f"(bg {q['bg_pct']}%); measuring anyway"
                            )
                    log(f"{t.name}/{sname}: starting")
                    tls = sname == "tls"
                    start = t.tls_start if tls else t.start
                    if sname == "h2" and t.h2_start is not None:
                        start = t.h2_start
                    assert start is not None
                    port, proc = start(ctx)  # a fresh process for every scenario
                    row["tls_port" if tls else "port"] = port
                    if proc is not None:
                        row["tls_cmd" if tls else "cmd"] = " ".join(proc.argv)
                    checked = None
                    if tls:
                        assert ctx.tls is not None
                        checked = check_small_tls(port, ctx.tls["ca"])
                    elif sname != "h2":  # (h2load counts the h2 answers itself)
                        check_small(port)
                    res = row[sname] = SCENARIOS[sname](ctx, port, proc)
                    if checked is not None:
                        res["check"] = checked  # what a verifying Python client negotiated
                    if res.get("error"):
                        errs[sname] = res["error"]
                    log(f"{t.name}/{sname}: {_brief(sname, res)}")
                except SkipTarget as e:
                    row.update(skipped=True, error=str(e))
                    log(f"{t.name}: SKIPPED: {e}")
                    break
                except KeyboardInterrupt:
                    row["error"] = "interrupted"
                    raise
                except Exception as e:
                    msg = f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
                    errs[sname] = msg
                    row.setdefault(sname, {})["error"] = msg
                    log(f"{t.name}/{sname}: FAILED: {msg}")
                finally:
                    if proc is not None:
                        proc.stop()
                if ctx.origin is None or not ctx.origin.alive():
                    break
            row["scenario_errors"] = errs
            row["ok"] = not errs and not row.get("skipped")
            if ctx.origin is None or not ctx.origin.alive():
                log(f"origin nginx died; stopping:\n{ctx.origin.log_tail() if ctx.origin else ''}")
                break
        if args.rounds > 1 and ctx.origin is not None and ctx.origin.alive():
            # (rows is shorter than targets only if the loop stopped early)
            more_rounds(ctx, list(zip(targets, rows, strict=False)), args.rounds)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    finally:
        Proc.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summarize(rows)
    targets_eval = report(rows, args, started)
    print_rounds(rows)
    result = {
        "meta": {
            "started": started,
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "interrupted": interrupted,
            "args": vars(args),
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "cpu_model": _cpu_model(),
                "rlimit_nofile": nofile,
            },
            "pinning": {
                "proxy": PROXY_CPU,
                "proxy_workers_row": BOTH_CPUS,
                "origin": LOAD_CPU,
                "wrk": LOAD_CPU,
                "curl": LOAD_CPU,
                "idle_client": LOAD_CPU,
            },
            "versions": tool_versions(ctx),
            "body_bytes": len(SMALL_BODY),
            "big_bytes": BIG_BYTES,
            "tls": None
            if ctx.tls is None
            else {
                "certificate": ctx.tls["description"],
                "san": ctx.tls["san"],
                "generated_by": ctx.tls["generated_by"],
                "duration_s": args.tls_duration,
                "full_handshakes": "wrk + LD_PRELOAD shim dropping the session after SSL_clear"
                if ctx.noresume_so
                else ctx.noresume_note,
            },
        },
        "scenarios": scen_names + (["workers"] if workers_row else []),
        "targets": targets_eval,
        "rows": rows,
    }
    if interrupted:  # don't overwrite a good results file with a partial run
        return 130
    if args.chart:
        try:
            draw_chart(rows, Path(args.chart), _chart_title(started))
            print(f"chart: {args.chart}")
        except Exception as e:
            log(f"chart not drawn: {type(e).__name__}: {e}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"json: {out}  ({result['meta']['elapsed_s']:.0f}s total)")
    if args.strict and any(not r.get("ok") or r.get("flagged") for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
