"""h2load (nghttp2-client): run_h2load starts it (pinned to the load CPU), parse_h2load reads
its report. The HTTP/2 rows: prior-knowledge h2c to GET /small."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from .common import HOST, LOAD_CPU

H2LOAD = shutil.which("h2load")

# The two shapes of the HTTP/2 rows: many connections with a few streams each, and one
# connection with many streams.
H2_SHAPES: dict[str, tuple[int, int]] = {"c10m10": (10, 10), "c1m100": (1, 100)}


def parse_h2load(out: str) -> dict[str, Any]:
    fin = re.search(r"^finished in ([\d.]+)s, ([\d.]+) req/s", out, re.M)
    req = re.search(
        r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
        re.M,
    )
    if not fin or not req:
        raise RuntimeError(f"could not parse h2load output:\n{out}")
    total, _done, ok, failed, errored, timeout = map(int, req.groups())
    return {
        "rps": float(fin.group(2)),
        "seconds": float(fin.group(1)),
        "requests": total,
        "succeeded": ok,
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
    }


def run_h2load(port: int, conns: int, streams: int, duration: float) -> dict[str, Any]:
    if H2LOAD is None:
        raise RuntimeError("h2load not installed (Debian: nghttp2-client)")
    argv = [
        "taskset", "-c", LOAD_CPU, H2LOAD, "-c", str(conns), "-m", str(streams),
        "-D", f"{duration:g}", f"http://{HOST}:{port}/small",
    ]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    res = parse_h2load(r.stdout)
    res["cmd"] = " ".join(argv)
    return res
