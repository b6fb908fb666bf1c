"""wrk: run_wrk starts it (pinned to the load CPU) and parse_wrk reads its report."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from .common import HOST, LOAD_CPU

# --------------------------------------------------------------------------- wrk

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(out: str) -> dict[str, Any]:
    def lat(pct: str) -> float | None:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)
        return round(float(m.group(1)) * _UNIT_MS[m.group(2)], 4) if m else None

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out, re.M)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not rps or not total:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx_3xx": 0}
    if sock:
        errors.update(
            zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True)
        )
    if non2xx:
        errors["non_2xx_3xx"] = int(non2xx.group(1))
    requests = int(total.group(1))
    read_bytes = float(total.group(4)) * _SIZE.get(total.group(5), 1)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": lat("50"),
        "p75_ms": lat("75"),
        "p90_ms": lat("90"),
        "p99_ms": lat("99"),
        "requests": requests,
        "bytes_per_response": round(read_bytes / requests, 1) if requests else None,
        "errors": errors,
        "error_count": sum(errors.values()),
    }


def run_wrk(
    port: int,
    conns: int,
    seconds: float,
    path: str = "/small",
    *,
    tls: bool = False,
    headers: tuple[str, ...] = (),
    preload: str | None = None,
    script: str | None = None,
) -> dict[str, Any]:
    """wrk on the load cpu; tls -> https://, headers -> -H each, preload -> LD_PRELOAD,
    script -> -s (a wrk Lua script)."""
    secs = max(1, round(seconds))
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{secs}s",
        "--latency",
        *[arg for h in headers for arg in ("-H", h)],
        *(["-s", script] if script else []),
        f"{'https' if tls else 'http'}://{HOST}:{port}{path}",
    ]
    env = dict(os.environ, LD_PRELOAD=preload) if preload else None
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    res = parse_wrk(r.stdout)
    res["cmd"] = (f"LD_PRELOAD={Path(preload).name} " if preload else "") + shlex.join(argv[3:])
    return res
