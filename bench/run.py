#!/usr/bin/env python3
"""proxycore benchmark harness.

    python bench/run.py [--duration 10] [--only name,name] [--json out.json]

Starts an nginx origin (1 worker, CPU 1), then measures, one after another with
identical settings, each target: direct-to-origin (the ceiling), nginx as a reverse
proxy, haproxy, a plain aiohttp+uvloop proxy, and proxycore with each --backends
backend. Proxies run pinned to CPU 0; the origin and wrk share CPU 1.

Everything listens on 127.0.0.1 only. Every process started here is stopped on exit,
including on Ctrl-C / SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"  # the only address this harness ever talks to

# Exactly 53 bytes, plain ASCII with no characters nginx would interpret in `return`.
SMALL_BODY = (string.ascii_lowercase * 2 + "!").encode()
assert len(SMALL_BODY) == 53

PROXY_CPU = "0"  # proxy under test
LOAD_CPU = "1"  # origin + wrk (+ curl and the idle-connection client)
BOTH_CPUS = "0,1"  # the --workers 2 row only: the proxy is not pinned to one core

BIG_BYTES = 1 << 30  # the streamed body: 1 GiB, a sparse file served by the origin (sendfile)
NOFILE_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

ALL_BASE_TARGETS = ("direct", "nginx", "haproxy", "aiohttp")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child if this harness dies without cleaning up (kill -9)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


class Proc:
    """A started process (in its own session/process group), pinned with taskset."""

    live: list[Proc] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        cpu: str,
        workdir: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.argv = ["taskset", "-c", cpu, *argv]
        # pipes=True: stdin/stdout are pipes to this harness (helpers); stderr -> log.
        self.p = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log if pipes else subprocess.STDOUT,
            cwd=cwd,
            env=env,
            preexec_fn=_die_with_parent,
        )
        Proc.live.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            return "\n".join(lines[-n:])
        return ""

    def stop(self) -> None:
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if self.alive():
            # Only the process group this harness created for this child (pgid == pid).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=5)
        else:
            # The leader is gone; make sure nothing it forked (e.g. workers) lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, signal.SIGKILL)
        self._log.close()
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(list(cls.live)):
            with contextlib.suppress(Exception):
                p.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: Proc | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with code {proc.p.returncode} before listening:\n"
                f"{proc.log_tail()}"
            )
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    tail = proc.log_tail() if proc else ""
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s\n{tail}")


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check_small(port: int) -> None:
    """One real request: must be 200 with exactly the 53-byte body."""
    url = f"http://{HOST}:{port}/small"
    try:
        with _NO_PROXY_OPENER.open(url, timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except Exception as e:
        raise RuntimeError(f"GET {url} failed: {type(e).__name__}: {e}") from e
    if status != 200 or body != SMALL_BODY:
        raise RuntimeError(
            f"GET {url} -> {status}, {len(body)} bytes {body[:80]!r}, expected 200/53"
        )


# --------------------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, utime+stime ticks, comm) of one process, all its threads included."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = data[data.find("(") + 1 : data.rfind(")")]
    fields = data[data.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), comm


def proc_snapshot() -> dict[int, tuple[int, int, str]]:
    snap = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _proc_stat(int(d))) is not None:
            snap[int(d)] = st
    return snap


def descendants(snap: dict[int, tuple[int, int, str]], root_pid: int) -> set[int]:
    """root_pid and all its descendants present in snap."""
    keep, frontier = set(), {root_pid}
    while frontier:
        keep |= frontier
        frontier = {p for p, st in snap.items() if st[0] in frontier} - keep
    return keep & snap.keys()


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of one process from /proc/<pid>/status ({} if it is gone)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def tree(root_pid: int) -> set[int]:
    return descendants(proc_snapshot(), root_pid)


def tree_mem(pids: set[int]) -> dict[str, int]:
    """Sum of VmRSS and of VmHWM (KiB) over a process tree (nginx: master + worker)."""
    rss = hwm = 0
    for p in pids:
        st = _status_kib(p)
        rss += st.get("VmRSS", 0)
        hwm += st.get("VmHWM", 0)
    return {"rss_kib": rss, "hwm_kib": hwm}


def tree_fds(pids: set[int]) -> int:
    n = 0
    for p in pids:
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


def reset_hwm(pids: set[int]) -> bool:
    """Reset VmHWM to the current VmRSS (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0), so
    VmHWM afterwards is the exact peak of the window that follows."""
    ok = True
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class RssSampler:
    """Peak RSS of a process tree over a window: VmHWM (reset at the start, exact) and a
    10 ms VmRSS sampler thread (cross-check; also works where clear_refs is refused)."""

    def __init__(self, root_pid: int, interval: float = 0.01) -> None:
        self.root, self.interval = root_pid, interval

    def __enter__(self) -> RssSampler:
        import threading

        self.pids = tree(self.root)
        self.before = tree_mem(self.pids)
        self.hwm_reset = reset_hwm(self.pids)
        self.peak_sampled = self.before["rss_kib"]
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = tree_mem(self.pids)["rss_kib"]
            self.samples += 1
            self.peak_sampled = max(self.peak_sampled, rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        after = tree_mem(self.pids)
        peak = max(self.peak_sampled, after["hwm_kib"] if self.hwm_reset else 0)
        self.result = {
            "rss_before_kib": self.before["rss_kib"],
            "rss_after_kib": after["rss_kib"],
            "peak_rss_kib": peak,
            "peak_sampled_kib": self.peak_sampled,
            "hwm_kib": after["hwm_kib"],
            "hwm_reset": self.hwm_reset,
            "samples": self.samples,
            "pids": len(self.pids),
        }


def core_busy() -> dict[str, tuple[int, int, int, int]]:
    """{cpuN: (busy_ticks, total_ticks, steal_ticks, irq+softirq ticks)} from /proc/stat
    (softirq and steal count as busy)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals]
            total = sum(v[:8])
            out[name] = (total - v[3] - v[4], total, v[7], v[5] + v[6])
    return out


class CpuMeter:
    """CPU % (of one core) over one measurement window: each named process tree, wrk,
    every core, and "others" -- processes that are not this harness's descendants nor
    kernel threads (someone else's load on the box, i.e. noise)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.snap0 = proc_snapshot()
        self.cores0 = core_busy()
        self.children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        snap1 = proc_snapshot()
        cores1 = core_busy()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)

        def pct(ticks: float) -> float:
            return round(100.0 * ticks / CLK_TCK / wall, 1)

        def delta(pid: int) -> int:
            return snap1[pid][1] - (self.snap0[pid][1] if pid in self.snap0 else 0)

        self.result: dict[str, Any] = {}
        for k, root in self.pids.items():
            self.result[f"{k}_pct"] = pct(sum(delta(p) for p in descendants(snap1, root)))
        wrk_s = (ru.ru_utime + ru.ru_stime) - (self.children0.ru_utime + self.children0.ru_stime)
        self.result["wrk_pct"] = round(100.0 * wrk_s / wall, 1)  # reaped children: wrk/curl
        me_s = (me.ru_utime + me.ru_stime) - (self.self0.ru_utime + self.self0.ru_stime)
        self.result["harness_pct"] = round(100.0 * me_s / wall, 1)  # e.g. the RSS sampler
        ours_pct = sum(self.result.values())  # proxy + origin + wrk + this harness
        irq_pct = 0.0
        for name, (busy, total, steal, irq) in cores1.items():
            b0, t0, s0, i0 = self.cores0.get(name, (0, 0, 0, 0))
            if total > t0:
                self.result[f"{name}_busy_pct"] = round(100.0 * (busy - b0) / (total - t0), 1)
                self.result[f"{name}_steal_pct"] = round(100.0 * (steal - s0) / (total - t0), 1)
                irq_pct += 100.0 * (irq - i0) / (total - t0)
        self.result["irq_softirq_pct"] = round(irq_pct, 1)
        ours = descendants(snap1, os.getpid())
        others = {
            p: delta(p)
            for p, (ppid, _, _) in snap1.items()
            if p not in ours and p != 2 and ppid != 2  # 2 = kthreadd: kernel threads
        }
        self.result["others_pct"] = pct(sum(others.values()))
        # Short-lived processes (someone's pytest, pip) are missed by the snapshots, so
        # also count what the cores did beyond our own trees + wrk: all-core busy minus
        # ours, minus irq/softirq time (loopback TCP at GB/s is mostly softirq, billed to
        # no process). ~0-3% on a quiet box.
        cores_pct = sum(v for k, v in self.result.items() if k.endswith("_busy_pct"))
        self.result["unaccounted_pct"] = round(max(0.0, cores_pct - irq_pct - ours_pct), 1)
        self.result["bg_pct"] = max(self.result["others_pct"], self.result["unaccounted_pct"])
        top = sorted(((t, p) for p, t in others.items() if t > 0), reverse=True)[:3]
        self.result["others_top"] = [
            f"{snap1[p][2]}[{p}] {pct(t)}%" for t, p in top if pct(t) >= 1.0
        ]


def wait_quiet(max_wait: float, threshold: float = 5.0) -> dict[str, Any]:
    """Wait (up to max_wait s) until processes outside this harness use < threshold % CPU
    over 0.5 s. This box may be shared; someone else's test run skews every number."""
    t0 = time.monotonic()
    while True:
        with CpuMeter({}) as m:
            time.sleep(0.5)
        busy = m.result["bg_pct"]
        waited = time.monotonic() - t0
        if busy < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "bg_pct": busy, "quiet": busy < threshold}


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


def run_wrk(port: int, conns: int, seconds: float, path: str = "/small") -> dict[str, Any]:
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
        f"http://{HOST}:{port}{path}",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    res = parse_wrk(r.stdout)
    res["cmd"] = " ".join(argv[3:])
    return res


# --------------------------------------------------------------------------- config files


def nginx_conf(
    workdir: Path, name: str, server_block: str, workers: int = 1, conns: int = 16384
) -> Path:
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = (
        textwrap.dedent(
            f"""\
        {user}
        worker_processes {workers};
        daemon off;
        master_process on;
        pid {workdir}/{name}.pid;
        error_log {workdir}/{name}.error.log warn;
        worker_rlimit_nofile {NOFILE_HARD};
        events {{ worker_connections {conns}; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            keepalive_timeout 75s;
            default_type text/plain;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
        """
        )
        + textwrap.indent(textwrap.dedent(server_block), "    ")
        + "}\n"
    )
    path = workdir / f"{name}.conf"
    path.write_text(conf)
    return path


def start_nginx(ctx: Ctx, name: str, conf: Path, cpu: str, port: int) -> Proc:
    t = subprocess.run(
        [
            ctx.nginx,
            "-t",
            "-q",
            "-e",
            str(ctx.workdir / f"{name}.error.log"),
            "-p",
            str(ctx.workdir),
            "-c",
            str(conf),
        ],
        capture_output=True,
        text=True,
    )
    if t.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {name}: {t.stderr.strip()}")
    p = Proc(
        name,
        [
            ctx.nginx,
            "-e",
            str(ctx.workdir / f"{name}.error.log"),
            "-p",
            str(ctx.workdir),
            "-c",
            str(conf),
        ],
        cpu,
        ctx.workdir,
    )
    wait_listening(port, p, 10)
    return p


# --------------------------------------------------------------------------- targets


@dataclass
class Ctx:
    args: argparse.Namespace
    workdir: Path
    nginx: str
    haproxy: str | None
    haproxy_note: str
    origin_port: int = 0
    origin: Proc | None = None

    @property
    def nginx_conns(self) -> int:
        return max(16384, int(self.args.idle_conns) + 1024)


@dataclass
class Target:
    name: str
    # Starts the target; returns (port to load, process to meter or None for "direct").
    start: Callable[[Ctx], tuple[int, Proc | None]]
    description: str
    # Which scenarios apply ("small", "stream", "idle"); the --scenarios flag narrows it.
    scenarios: tuple[str, ...] = ("small", "stream", "idle")
    cpu: str = PROXY_CPU  # where the proxy runs (taskset -c)
    meta: dict[str, Any] = field(default_factory=dict)


def start_origin(ctx: Ctx) -> None:
    port = free_port()
    big = ctx.workdir / "big.bin"  # sparse: no disk blocks, reads are zero pages
    with open(big, "wb") as f:
        os.truncate(f.fileno(), BIG_BYTES)
    with open(big, "rb", buffering=0) as f:  # into the page cache now, not in the first row
        buf = bytearray(1 << 20)
        while f.readinto(buf):
            pass
    server = f"""\
        server {{
            listen {HOST}:{port} backlog=4096;
            location = /small {{ return 200 "{SMALL_BODY.decode()}"; }}
            location = /big {{
                alias {big};
                default_type application/octet-stream;
                sendfile on;
                tcp_nopush on;
            }}
            location / {{ return 404; }}
        }}
    """
    conf = nginx_conf(ctx.workdir, "origin", server)
    ctx.origin = start_nginx(ctx, "origin", conf, LOAD_CPU, port)
    ctx.origin_port = port
    check_small(port)


def t_direct(ctx: Ctx) -> tuple[int, Proc | None]:
    return ctx.origin_port, None


def t_nginx(ctx: Ctx) -> tuple[int, Proc | None]:
    port = free_port()
    server = f"""\
        upstream origin {{
            server {HOST}:{ctx.origin_port};
            keepalive 64;
            keepalive_requests 1000000;
        }}
        server {{
            listen {HOST}:{port} backlog=4096;
            location / {{
                proxy_pass http://origin;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                # stream the 1 GiB body through memory buffers, never via temp files
                proxy_max_temp_file_size 0;
            }}
        }}
    """
    conf = nginx_conf(ctx.workdir, "nginx-proxy", server, conns=ctx.nginx_conns)
    return port, start_nginx(ctx, "nginx-proxy", conf, PROXY_CPU, port)


def t_haproxy(ctx: Ctx) -> tuple[int, Proc | None]:
    if not ctx.haproxy:
        raise SkipTarget(ctx.haproxy_note or "haproxy not available")
    port = free_port()
    cfg = ctx.workdir / "haproxy.cfg"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            global
                nbthread 1
                maxconn {max(8000, ctx.args.idle_conns + 100)}
                # 10k idle conns need maxconn > 10k, and haproxy wants 2 fds per conn
                # (> the 20000 hard limit here); idle keep-alive clients hold only one.
                ulimit-n {NOFILE_HARD}
                no strict-limits
            defaults
                mode http
                option http-keep-alive
                http-reuse always
                timeout connect 5s
                timeout client 60s
                timeout server 60s
                timeout http-keep-alive 60s
            frontend fe
                bind {HOST}:{port}
                default_backend be
            backend be
                server origin {HOST}:{ctx.origin_port}
            """
        )
    )
    chk = subprocess.run([ctx.haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"haproxy -c failed: {chk.stderr.strip() or chk.stdout.strip()}")
    p = Proc("haproxy", [ctx.haproxy, "-db", "-f", str(cfg)], PROXY_CPU, ctx.workdir)
    wait_listening(port, p, 10)
    return port, p


def t_aiohttp(ctx: Ctx) -> tuple[int, Proc | None]:
    port = free_port()
    p = Proc(
        "aiohttp",
        [
            sys.executable,
            str(BENCH / "aiohttp_proxy.py"),
            "--listen",
            f"{HOST}:{port}",
            "--to",
            f"{HOST}:{ctx.origin_port}",
            "--loop",
            "uvloop",
        ],
        PROXY_CPU,
        ctx.workdir,
    )
    wait_listening(port, p, 20)
    return port, p


# The interpreter that runs proxycore rows (--proxycore-python); a list so main() can set it.
PROXYCORE_PYTHON = [sys.executable]


def t_proxycore(
    backend: str, workers: int = 1, cpu: str = PROXY_CPU
) -> Callable[[Ctx], tuple[int, Proc | None]]:
    name = f"proxycore-{backend}" + (f"-w{workers}" if workers > 1 else "")

    def start(ctx: Ctx) -> tuple[int, Proc | None]:
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = Proc(
            name,
            [
                PROXYCORE_PYTHON[0],
                "-m",
                "proxycore",
                "reverse-proxy",
                "--listen",
                f"{HOST}:{port}",
                "--to",
                f"{HOST}:{ctx.origin_port}",
                "--backend",
                backend,
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            cpu,
            ctx.workdir,
            # Another interpreter (e.g. a venv with the compiled core) must not see the source
            # tree first on sys.path, so it runs from the work dir.
            cwd=ROOT if PROXYCORE_PYTHON[0] == sys.executable else ctx.workdir,
            env=env,
        )
        wait_listening(port, p, 20)
        return port, p

    return start


def build_targets(backends: list[str], workers_row: bool = True) -> list[Target]:
    targets = [
        Target("direct", t_direct, "wrk -> origin (ceiling; no proxy)", ("small", "stream")),
        Target("nginx", t_nginx, "nginx reverse proxy, 1 worker, upstream keepalive 64"),
        Target("haproxy", t_haproxy, "haproxy, nbthread 1, http-reuse always"),
        Target("aiohttp", t_aiohttp, "plain aiohttp+uvloop proxy (bench/aiohttp_proxy.py)"),
    ]
    for b in backends:
        targets.append(
            Target(f"proxycore-{b}", t_proxycore(b), f"python -m proxycore --backend {b}")
        )
    if workers_row:  # listed right after the 1-worker uvloop row
        w2 = Target(
            "proxycore-uvloop-w2",
            t_proxycore("uvloop", 2, BOTH_CPUS),
            "python -m proxycore --backend uvloop --workers 2 (NOT pinned: cpus 0-1, "
            "sharing cpu 1 with origin+wrk)",
            ("small",),
            cpu=BOTH_CPUS,
        )
        names = [t.name for t in targets]
        at = names.index("proxycore-uvloop") + 1 if "proxycore-uvloop" in names else len(names)
        targets.insert(at, w2)
    return targets


class SkipTarget(Exception):
    pass


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


# Scenario registry: name -> fn(ctx, port, proc) -> metrics dict, stored as row[name].
# Every scenario gets a freshly started target (so one scenario's heap growth can't hide
# or inflate the next one's RSS). --scenarios maps rps->small, stream, idle; "workers"
# adds the proxycore-uvloop-w2 row (which runs "small" only).
SCENARIOS: dict[str, Callable[[Ctx, int, Proc | None], dict[str, Any]]] = {
    "small": scenario_small,
    "stream": scenario_stream,
    "idle": scenario_idle,
}
SCENARIO_FLAGS = {"rps": "small", "stream": "stream", "idle": "idle", "workers": None}


# --------------------------------------------------------------------------- install


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (
            p
            for d in ("/usr/sbin", "/sbin", "/usr/local/sbin")
            if os.access(p := f"{d}/{binary}", os.X_OK)
        ),
        None,
    )


def apt_install(pkgs: list[str]) -> tuple[bool, str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return False, "not root and no sudo"
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
    log(f"installing: {' '.join(pkgs)}")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, env=env)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
    return r.returncode == 0, "\n".join(tail)


def ensure_tools(want_haproxy: bool) -> tuple[str, str | None, str]:
    missing = [pkg for b, pkg in (("nginx", "nginx-light"), ("wrk", "wrk")) if not _find(b)]
    if missing:
        ok, msg = apt_install(missing)
        if not ok:
            sys.exit(f"bench: could not install {missing}: {msg}")
    if not _find("taskset"):
        ok, msg = apt_install(["util-linux"])
        if not ok:
            sys.exit(f"bench: taskset missing and could not install util-linux: {msg}")
    nginx = _find("nginx")
    assert nginx and _find("wrk")
    haproxy, note = _find("haproxy"), ""
    if want_haproxy and not haproxy:
        ok, msg = apt_install(["haproxy"])
        haproxy = _find("haproxy") if ok else None
        if not haproxy:
            note = f"haproxy could not be installed ({msg.splitlines()[-1] if msg else '?'})"
            log(f"SKIP haproxy: {note}")
    return nginx, haproxy, note


def tool_versions(ctx: Ctx) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"

    import aiohttp
    import uvloop

    v = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": first_line([ctx.nginx, "-v"]),
        "wrk": first_line(["wrk", "--version"]),
        "aiohttp": aiohttp.__version__,
        "uvloop": uvloop.__version__,
    }
    if ctx.haproxy:
        v["haproxy"] = first_line([ctx.haproxy, "-v"])
    r = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    v["proxycore_git"] = r.stdout.strip() if r.returncode == 0 else "(no commit)"
    return v


# --------------------------------------------------------------------------- report


def _ok(r: dict[str, Any], scen: str) -> dict[str, Any] | None:
    """The row's result for a scenario if it ran and produced its main number."""
    res = r.get(scen)
    if not isinstance(res, dict):
        return None
    key = {"small": "c50", "stream": "mb_s", "idle": "kib_per_conn"}[scen]
    return res if res.get(key) is not None else None


def summarize(rows: list[dict[str, Any]]) -> None:
    """Derived numbers: ratios to nginx / aiohttp (req/s and stream MB/s), added p50 at c1
    vs direct."""
    by = {r["name"]: r for r in rows}

    def ref(name: str, scen: str, key: str) -> float | None:
        res = _ok(by[name], scen) if name in by else None
        if res is None or (scen == "small" and res["c50"]["error_count"]):
            return None
        return float(res["c50"]["rps"] if scen == "small" else res[key])

    def ratio(x: float, y: float | None) -> float | None:
        return round(x / y, 3) if y else None

    direct = _ok(by["direct"], "small") if "direct" in by else None
    direct_c1 = direct["c1"]["p50_ms"] if direct else None
    for r in rows:
        if s := _ok(r, "small"):
            mine = s["c50"]["rps"]
            r["rps"] = mine
            r["ratio_nginx"] = ratio(mine, ref("nginx", "small", ""))
            r["ratio_aiohttp"] = ratio(mine, ref("aiohttp", "small", ""))
            r["p50_ms"] = s["c50"]["p50_ms"]
            r["p99_ms"] = s["c50"]["p99_ms"]
            r["c1_p50_ms"] = s["c1"]["p50_ms"]
            r["added_p50_ms"] = (
                round(s["c1"]["p50_ms"] - direct_c1, 4)
                if direct_c1 is not None and s["c1"]["p50_ms"] is not None
                else None
            )
            r["errors"] = s["c50"]["error_count"] + s["c1"]["error_count"]
            r["flagged"] = r["errors"] > 0
        if st := _ok(r, "stream"):
            r["stream_mb_s"] = st["mb_s"]
            r["stream_ratio_nginx"] = ratio(st["mb_s"], ref("nginx", "stream", "mb_s"))
            r["stream_ratio_aiohttp"] = ratio(st["mb_s"], ref("aiohttp", "stream", "mb_s"))
            r["stream_peak_rss_mib"] = st.get("peak_rss_mib")
        if idle := _ok(r, "idle"):
            r["idle_kib_per_conn"] = idle["kib_per_conn"]
        if r.get("scenario_errors"):
            r["flagged"] = True


def _lat(ms: float | None) -> str:
    if ms is None:
        return "-"
    if abs(ms) < 1:
        return f"{ms * 1000:.0f}us"
    return f"{ms:.2f}ms"


def _added(ms: float | None, is_direct: bool) -> str:
    if is_direct or ms is None:
        return "-"
    return ("+" if ms >= 0 else "-") + _lat(abs(ms))


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _render(hdr: list[str], lines: list[list[str]], failures: dict[int, str]) -> None:
    """Aligned table; failures[i] replaces line i's cells after the name."""
    widths = [
        max([len(hdr[i])] + [len(ln[i]) for j, ln in enumerate(lines) if j not in failures])
        for i in range(len(hdr))
    ]
    fmt = lambda cols: "  ".join(  # noqa: E731
        c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cols)
    )
    print(fmt(hdr))
    print("  ".join("-" * w for w in widths))
    for j, ln in enumerate(lines):
        if j in failures:
            reason = failures[j].strip().splitlines() or [""]
            print(f"{ln[0].ljust(widths[0])}  {reason[0]}")
            for extra in reason[1:4]:
                print(" " * (widths[0] + 4) + extra)
        else:
            print(fmt(ln))


def _failure(r: dict[str, Any], scen: str) -> str | None:
    if r.get("skipped"):
        return f"SKIPPED: {r.get('error', '')}"
    res = r.get(scen)
    if isinstance(res, dict) and res.get("error") and _ok(r, scen) is None:
        return f"FAILED: {res['error']}"
    return None


def print_table(rows: list[dict[str, Any]]) -> None:
    """Table 1: GET /small req/s and latency."""
    hdr = ["name", "req/s", "vs nginx", "vs aiohttp", "p50", "p99", "c1 p50", "added p50",
           "proxy cpu", "bg cpu", "errors"]  # fmt: skip
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    for r in rows:
        if "small" not in r and not r.get("skipped"):
            continue
        if (why := _failure(r, "small")) or _ok(r, "small") is None:
            failures[len(lines)] = why or "FAILED"
            lines.append([r["name"]])
            continue
        cpu = r["small"]["cpu"].get("proxy_pct")
        lines.append(
            [
                r["name"] + (" *" if r.get("cpu_pin") == BOTH_CPUS else ""),
                f"{r['rps']:,.0f}",
                _ratio(r["ratio_nginx"]),
                _ratio(r["ratio_aiohttp"]),
                _lat(r["p50_ms"]),
                _lat(r["p99_ms"]),
                _lat(r["c1_p50_ms"]),
                _added(r["added_p50_ms"], r["name"] == "direct"),
                "-" if cpu is None else f"{cpu:.0f}%",
                f"{r['small']['cpu'].get('bg_pct', 0):.0f}%",
                f"{r['errors']} FLAG" if r["errors"] else "0",
            ]
        )
    if lines:
        _render(hdr, lines, failures)
    if any(r.get("cpu_pin") == BOTH_CPUS and "small" in r for r in rows):
        print(
            f"* --workers 2: proxy NOT pinned (taskset -c {BOTH_CPUS}); one worker shares cpu "
            f"{LOAD_CPU} with origin+wrk. Compare with the 1-worker row pinned to cpu {PROXY_CPU}."
        )


def print_table2(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Table 2: 1 GiB stream and idle keep-alive connections."""
    hdr = ["name", "1GiB MB/s", "vs nginx", "vs aiohttp", "peak RSS MiB", "bg cpu",
           "idle conns", "RSS before MiB", "RSS with MiB", "KiB/conn", "proxy fds"]  # fmt: skip
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    for r in rows:
        if "stream" not in r and "idle" not in r and not r.get("skipped"):
            continue
        if r.get("skipped"):
            failures[len(lines)] = _failure(r, "stream") or "SKIPPED"
            lines.append([r["name"]])
            continue
        st, idle = _ok(r, "stream"), _ok(r, "idle")
        ln = [r["name"]]
        if st:
            inc = "" if st["complete"] else " (partial)"
            ln += [
                f"{st['mb_s']:,.0f}{inc}",
                _ratio(r.get("stream_ratio_nginx")),
                _ratio(r.get("stream_ratio_aiohttp")),
                f"{st['peak_rss_mib']:.1f}" if "peak_rss_mib" in st else "-",
                f"{st['cpu'].get('bg_pct', 0):.0f}%",
            ]
        else:
            ln += ["FAILED" if "stream" in r else "-", "-", "-", "-", "-"]
        if idle:
            ln += [
                f"{idle['opened']:,}" + ("" if idle["opened"] == idle["wanted"] else "!"),
                _mib(idle["rss_before_kib"]),
                _mib(idle["rss_with_kib"]),
                f"{idle['kib_per_conn']:.1f}",
                f"{idle['fds_with']:,}",
            ]
        else:
            ln += ["FAILED" if "idle" in r else "-", "-", "-", "-", "-"]
        lines.append(ln)
    if not lines:
        return
    print()
    print(
        f"GET /big (1 GiB sparse file, origin sendfile) x{args.stream_runs} with curl -> "
        f"/dev/null on cpu {LOAD_CPU}: median MB/s (1e6 B); peak RSS = proxy process tree "
        "during the transfers. "
        f"idle: {args.idle_conns:,} keep-alive conns, each after one GET /small; "
        f"KiB/conn = (RSS with - RSS before) / conns."
    )
    _render(hdr, lines, failures)
    for r in rows:
        for scen in ("stream", "idle"):
            res = r.get(scen)
            if isinstance(res, dict) and res.get("error"):
                print(f"  {r['name']} {scen}: {res['error'].splitlines()[0]}")


NOISY_BG_PCT = 10.0  # bg cpu above this during a measurement -> that number is noise


def _bg(r: dict[str, Any] | None, scen: str) -> float:
    res = (r or {}).get(scen)
    return float(res.get("cpu", {}).get("bg_pct", 0)) if isinstance(res, dict) else 0.0


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value (same run) and PASS/FAIL. A
    verdict whose inputs (the row itself or its reference row) were measured while other
    processes used > NOISY_BG_PCT of a core is marked noisy."""
    by = {r["name"]: r for r in rows}
    out: list[dict[str, Any]] = []

    def add(
        what: str,
        value: float | None,
        op: str,
        target: float,
        unit: str,
        deps: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if value is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if (value >= target if op == ">=" else value <= target) else "FAIL"
        noisy = [f"{n} bg {_bg(by.get(n), sc):.0f}%" for n, sc in deps
                 if _bg(by.get(n), sc) > NOISY_BG_PCT]  # fmt: skip
        out.append({"what": what, "value": value, "op": op, "target": target,
                    "unit": unit, "verdict": verdict, "noisy": noisy})  # fmt: skip

    def g(name: str, key: str) -> float | None:
        return by.get(name, {}).get(key)

    uv = "proxycore-uvloop"
    add(f"{uv} req/s vs nginx", g(uv, "ratio_nginx"), ">=", 0.5, "x",
        ((uv, "small"), ("nginx", "small")))  # fmt: skip
    for b, t in (("uvloop", 5.0), ("asyncio", 3.5), ("gevent", 2.5), ("threads", 1.5)):
        n = f"proxycore-{b}"
        add(f"{n} req/s vs aiohttp", g(n, "ratio_aiohttp"), ">=", t, "x",
            ((n, "small"), ("aiohttp", "small")))  # fmt: skip
    added = g(uv, "added_p50_ms")
    add(f"{uv} added p50 @c1", None if added is None else added * 1000, "<=", 50, "us",
        ((uv, "small"), ("direct", "small")))  # fmt: skip
    for r in rows:
        if r["name"].startswith("proxycore-") and "-w" not in r["name"] and "stream" in r:
            st = _ok(r, "stream")
            ratio = r.get("stream_ratio_nginx") if st and st["complete"] else None
            add(f"{r['name']} 1GiB MB/s vs nginx", ratio, ">=", 0.5, "x",
                ((r["name"], "stream"), ("nginx", "stream")))  # fmt: skip
            rss = st.get("peak_rss_mib") if st else None
            add(f"{r['name']} 1GiB peak RSS", rss, "<=", 64, "MiB")
    add(f"{uv} idle RSS per conn", g(uv, "idle_kib_per_conn"), "<=", 16, "KiB")
    return out


def print_targets(targets: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    if not targets:
        return
    print("\ntargets (ratios from this run):")
    w = max(len(t["what"]) for t in targets)
    for t in targets:
        v = t["value"]
        if v is None:
            val = "-"
        elif t["unit"] == "x":
            val = f"{v:.2f}x"
        else:
            val = f"{v:.1f} {t['unit']}"
        tgt = f"{t['op']} {t['target']:g}{'x' if t['unit'] == 'x' else ' ' + t['unit']}"
        noisy = f"  (noisy: {', '.join(t['noisy'])})" if t.get("noisy") else ""
        print(f"  {t['what'].ljust(w)}  {val:>10}  {tgt:>10}  {t['verdict']}{noisy}")
    n = {k: sum(t["verdict"] == k for t in targets) for k in ("PASS", "FAIL", "n/a")}
    nn = sum(bool(t.get("noisy")) for t in targets)
    print(
        f"  -> {n['PASS']} PASS, {n['FAIL']} FAIL, {n['n/a']} not measured"
        + (f"; {nn} verdict(s) rest on a noisy measurement -- re-run those rows" if nn else "")
    )
    by = {r["name"]: r for r in rows}
    w1, w2 = by.get("proxycore-uvloop", {}).get("rps"), by.get("proxycore-uvloop-w2", {}).get("rps")
    if w1 and w2:
        print(
            f"  uvloop --workers 2 (unpinned, cpus {BOTH_CPUS}): {w2:,.0f} req/s vs "
            f"{w1:,.0f} with 1 worker on cpu {PROXY_CPU} = {w2 / w1:.2f}x"
        )


def _ensure_matplotlib() -> Any:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log("matplotlib missing: pip install matplotlib")
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"pip install matplotlib failed: {r.stderr.strip()[-300:]}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars: req/s (c50), 1 GiB MB/s, idle KiB per connection."""
    plt = _ensure_matplotlib()
    panels = [
        ("req/s, GET /small, wrk -c50", "rps", "{:,.0f}", "small"),
        ("1 GiB stream, MB/s", "stream_mb_s", "{:,.0f}", "stream"),
        ("peak RSS streaming 1 GiB, MiB", "stream_peak_rss_mib", "{:.1f}", ""),
        ("RSS per idle keep-alive conn, KiB", "idle_kib_per_conn", "{:.1f}", ""),
    ]
    panels = [p for p in panels if any(r.get(p[1]) is not None for r in rows)]
    if not panels:
        return
    names = [r["name"] for r in rows if any(r.get(p[1]) is not None for p in panels)]
    by = {r["name"]: r for r in rows}

    def color(n: str) -> str:
        if n == "direct":
            return "#999999"
        if n.startswith("proxycore"):
            return "#1f77b4"
        return "#ff7f0e" if n == "aiohttp" else "#2ca02c"

    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(6.2 * ncols + 1, (0.36 * len(names) + 1.0) * nrows + 0.6),
        squeeze=False,
    )  # fmt: skip
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes = axes[: len(panels)]
    ys = list(range(len(names)))[::-1]
    for ax, (label, key, f, noise_scen) in zip(axes, panels, strict=True):
        vals = [by[n].get(key) for n in names]
        # hatched + "(noisy)": measured while other processes used > NOISY_BG_PCT of a core
        noisy = [bool(noise_scen) and _bg(by[n], noise_scen) > NOISY_BG_PCT for n in names]
        bars = ax.barh(ys, [v or 0 for v in vals], color=[color(n) for n in names])
        top = max((v for v in vals if v), default=1)
        for bar, y, v, nz in zip(bars, ys, vals, noisy, strict=True):
            if nz:
                bar.set_hatch("///")
            txt = "-" if v is None else f.format(v) + (" (noisy)" if nz else "")
            ax.text((v or 0) + top * 0.01, y, txt, va="center", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlim(0, top * 1.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="proxycore reverse-proxy benchmark: direct/nginx/haproxy/aiohttp/proxycore"
    )
    ap.add_argument("--duration", type=float, default=10, help="seconds per c50 measurement (10)")
    ap.add_argument("--c1-duration", type=float, default=5, help="seconds per c1 measurement (5)")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds before c50 (2)")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of targets: direct,nginx,haproxy,aiohttp,proxycore-<backend>,"
        "proxycore-uvloop-w2 ('proxycore' selects all proxycore rows)",
    )
    ap.add_argument(
        "--backends",
        default="uvloop,asyncio,gevent,threads,trio",
        help="proxycore backends, one row each (uvloop,asyncio,gevent,threads,trio)",
    )
    ap.add_argument(
        "--scenarios",
        default="rps,stream,idle,workers",
        help="comma list: rps (GET /small c50 + c1), stream (1 GiB GET: MB/s + peak RSS), "
        "idle (RSS per idle keep-alive conn), workers (proxycore-uvloop-w2 row, rps only)",
    )
    ap.add_argument(
        "--idle-conns", type=int, default=10000, help="idle keep-alive connections (10000)"
    )
    ap.add_argument(
        "--idle-timeout", type=float, default=60, help="max seconds to set them up (60)"
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
    workdir = Path(tempfile.mkdtemp(prefix="proxycore-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers (user root, but be safe) read/write temp paths
    ctx = Ctx(args, workdir, nginx, haproxy, hnote)
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
                    port, proc = t.start(ctx)  # a fresh process for every scenario
                    row["port"] = port
                    if proc is not None:
                        row["cmd"] = " ".join(proc.argv)
                    check_small(port)
                    res = row[sname] = SCENARIOS[sname](ctx, port, proc)
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
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    finally:
        Proc.stop_all()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summarize(rows)
    targets_eval = report(rows, args, started)
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


def report(rows: list[dict[str, Any]], args: argparse.Namespace, started: str) -> list[Any]:
    """Print both tables, the noise warning and the targets; return the targets."""
    print()
    print(
        f"proxycore bench {started}; GET /small (53 B), wrk -t1 -c50 -d{args.duration:g}s; "
        f"c1 = wrk -t1 -c1 -d{args.c1_duration:g}s. "
        f"proxy on cpu {PROXY_CPU}, origin+wrk on cpu {LOAD_CPU}."
    )
    print_table(rows)
    print_table2(rows, args)
    noisy = sorted(
        {
            f"{r['name']}/{sc}"
            for r in rows
            for sc in ("small", "stream")
            if _bg(r, sc) > NOISY_BG_PCT
        }
    )
    if noisy:
        print(
            f"WARNING: other processes used >{NOISY_BG_PCT:.0f}% of a core during: "
            f"{', '.join(noisy)} (bg cpu column; see others_top in the JSON) -- those numbers "
            "are noisy."
        )
    targets_eval = evaluate_targets(rows)
    print_targets(targets_eval, rows)
    return targets_eval


def rereport(path: str, chart: str) -> int:
    """--report: re-print the tables/targets (and redraw the chart) of a saved JSON."""
    data = json.loads(Path(path).read_text())
    rows, meta = data["rows"], data["meta"]
    summarize(rows)
    report(rows, argparse.Namespace(**meta["args"]), meta["started"])
    if chart:
        draw_chart(rows, Path(chart), _chart_title(meta["started"]))
        print(f"chart: {chart}")
    return 0


def _chart_title(started: str) -> str:
    return (
        f"proxycore bench {started} - proxy on cpu {PROXY_CPU}, origin+load on cpu "
        f"{LOAD_CPU} (w2 row unpinned)"
    )


def _brief(sname: str, res: dict[str, Any]) -> str:
    if sname == "small":
        c50 = res["c50"]
        c1 = _lat(res["c1"]["p50_ms"])
        return f"{c50['rps']:,.0f} req/s, p99 {_lat(c50['p99_ms'])}, c1 p50 {c1}"
    if sname == "stream":
        rss = f", peak RSS {res['peak_rss_mib']} MiB" if "peak_rss_mib" in res else ""
        return f"{res['mb_s']} MB/s{rss}" + (f" ({res['error']})" if res.get("error") else "")
    if sname == "idle":
        return (
            f"{res['opened']} open in {res['setup_s']}s, RSS {_mib(res['rss_before_kib'])} -> "
            f"{_mib(res['rss_with_kib'])} MiB, {res['kib_per_conn']} KiB/conn"
        )
    return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
