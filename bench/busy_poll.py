"""What busy polling buys and costs, by traffic shape: proxycore with the default (adaptive busy
polling) and with ``--busy-poll 0``, side by side, on bench/run.py's plumbing (the same nginx
origin, pinning, wrk runner and proxy launcher, from bench/harness/). Proxy on CPU 0; origin and
wrk on CPU 1.

    python bench/busy_poll.py [--proxycore-python VENV/bin/python] [--backend uvloop]   (~1 min)

Rows: one connection back to back; 1, 4 and 16 connections with 1 ms think time (wrk's Lua
``delay()``); 50 connections flat out; idle. Columns: req/s, p50, and the proxy's CPU (% of one
core, utime+stime from /proc over the run). A benchmark, not a test: numbers move with the
machine's neighbours; compare the two columns.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the harness package

from harness.install import ensure_tools
from harness.procs import CLK_TCK, Proc, _proc_stat
from harness.targets import PROXYCORE_PYTHON, Ctx, start_origin, t_proxycore
from harness.wrk import run_wrk

SECONDS = 4
SHAPES = [  # (label, connections, think time)
    ("1 conn, back to back", 1, False),
    ("1 conn, 1 ms think time", 1, True),
    ("4 conns, 1 ms think time", 4, True),
    ("16 conns, 1 ms think time", 16, True),
    ("50 conns, back to back", 50, False),
]


def cpu_ticks(pid: int) -> int:
    stat = _proc_stat(pid)
    return stat[1] if stat else 0


def measure(ctx: Ctx, label: str, backend: str, busy_poll: str | None, lua: str) -> None:
    port, proc = t_proxycore(backend, busy_poll=busy_poll)(ctx)
    assert proc is not None
    try:
        run_wrk(port, 1, 1)  # warm-up
        for shape, conns, think in SHAPES:
            t0 = cpu_ticks(proc.pid)
            r = run_wrk(port, conns, SECONDS, script=lua if think else None)
            cpu = 100 * (cpu_ticks(proc.pid) - t0) / CLK_TCK / SECONDS
            p50 = f"{r['p50_ms'] * 1000:.0f} us"
            rps = f"{r['rps']:,.0f}"
            print(f"{label:<12} {shape:<27} {rps:>9} req/s  p50 {p50:>7}  cpu {cpu:3.0f} %")
        time.sleep(0.5)
        t0 = cpu_ticks(proc.pid)
        time.sleep(2)
        cpu = 100 * (cpu_ticks(proc.pid) - t0) / CLK_TCK / 2
        print(f"{label:<12} {'idle':<27} {'-':>9}         {'':>11}  cpu {cpu:3.0f} %")
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxycore-python", help="interpreter with proxycore installed")
    ap.add_argument("--backend", default="uvloop")
    args = ap.parse_args()
    if args.proxycore_python:
        PROXYCORE_PYTHON[0] = args.proxycore_python
    nginx, _, _ = ensure_tools(want_haproxy=False)
    workdir = Path(tempfile.mkdtemp(prefix="proxycore-busypoll-"))
    lua = workdir / "think.lua"
    lua.write_text("function delay()\n   return 1\nend\n")
    ctx = Ctx(argparse.Namespace(idle_conns=0), workdir, nginx, None, "")
    try:
        start_origin(ctx)
        direct = run_wrk(ctx.origin_port, 1, 2)
        print(f"backend {args.backend}; direct to the origin, 1 conn: p50 "
              f"{direct['p50_ms'] * 1000:.0f} us")  # fmt: skip
        measure(ctx, "default", args.backend, None, str(lua))  # adaptive, --busy-poll 0.0002
        measure(ctx, "busy-poll 0", args.backend, "0", str(lua))
    finally:
        Proc.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
