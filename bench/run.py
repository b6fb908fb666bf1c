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
LOAD_CPU = "1"  # origin + wrk

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
    ) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.argv = ["taskset", "-c", cpu, *argv]
        self.p = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
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


def core_busy() -> dict[str, tuple[int, int, int]]:
    """{cpuN: (busy_ticks, total_ticks, steal_ticks)} from /proc/stat (softirq and steal
    count as busy)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals]
            total = sum(v[:8])
            out[name] = (total - v[3] - v[4], total, v[7])
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
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        snap1 = proc_snapshot()
        cores1 = core_busy()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)

        def pct(ticks: float) -> float:
            return round(100.0 * ticks / CLK_TCK / wall, 1)

        def delta(pid: int) -> int:
            return snap1[pid][1] - (self.snap0[pid][1] if pid in self.snap0 else 0)

        self.result: dict[str, Any] = {}
        for k, root in self.pids.items():
            self.result[f"{k}_pct"] = pct(sum(delta(p) for p in descendants(snap1, root)))
        wrk_s = (ru.ru_utime + ru.ru_stime) - (self.children0.ru_utime + self.children0.ru_stime)
        self.result["wrk_pct"] = round(100.0 * wrk_s / wall, 1)
        ours_pct = sum(self.result.values())  # proxy + origin + wrk
        for name, (busy, total, steal) in cores1.items():
            b0, t0, s0 = self.cores0.get(name, (0, 0, 0))
            if total > t0:
                self.result[f"{name}_busy_pct"] = round(100.0 * (busy - b0) / (total - t0), 1)
                self.result[f"{name}_steal_pct"] = round(100.0 * (steal - s0) / (total - t0), 1)
        ours = descendants(snap1, os.getpid())
        others = {
            p: delta(p)
            for p, (ppid, _, _) in snap1.items()
            if p not in ours and p != 2 and ppid != 2  # 2 = kthreadd: kernel threads
        }
        self.result["others_pct"] = pct(sum(others.values()))
        # Short-lived processes (someone's pytest, pip) are missed by the snapshots, so
        # also count what the cores did beyond our own trees + wrk: all-core busy minus
        # ours. ~0-3% on a quiet box (softirq not billed to a process).
        cores_pct = sum(v for k, v in self.result.items() if k.endswith("_busy_pct"))
        self.result["unaccounted_pct"] = round(max(0.0, cores_pct - ours_pct), 1)
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


def nginx_conf(workdir: Path, name: str, server_block: str, workers: int = 1) -> Path:
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
        worker_rlimit_nofile 65536;
        events {{ worker_connections 16384; }}
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


@dataclass
class Target:
    name: str
    # Starts the target; returns (port to load, process to meter or None for "direct").
    start: Callable[[Ctx], tuple[int, Proc | None]]
    description: str
    # TODO(--workers): pass a worker/thread count through to start() once proxycore has
    # a multi-worker mode; nginx_conf(workers=N), haproxy nbthread N, proxycore --workers N.
    meta: dict[str, Any] = field(default_factory=dict)


def start_origin(ctx: Ctx) -> None:
    port = free_port()
    server = f"""\
        server {{
            listen {HOST}:{port} backlog=4096;
            location = /small {{ return 200 "{SMALL_BODY.decode()}"; }}
            # TODO(stream_1g): a location serving a 1 GiB file (sendfile) for streaming runs.
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
            }}
        }}
    """
    conf = nginx_conf(ctx.workdir, "nginx-proxy", server)
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
                maxconn 8000
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


def t_proxycore(backend: str) -> Callable[[Ctx], tuple[int, Proc | None]]:
    def start(ctx: Ctx) -> tuple[int, Proc | None]:
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = Proc(
            f"proxycore-{backend}",
            [
                sys.executable,
                "-m",
                "proxycore",
                "reverse-proxy",
                "--listen",
                f"{HOST}:{port}",
                "--to",
                f"{HOST}:{ctx.origin_port}",
                "--backend",
                backend,
            ],
            PROXY_CPU,
            ctx.workdir,
            cwd=ROOT,
            env=env,
        )
        wait_listening(port, p, 20)
        return port, p

    return start


def build_targets(backends: list[str]) -> list[Target]:
    targets = [
        Target("direct", t_direct, "wrk -> origin (ceiling; no proxy)"),
        Target("nginx", t_nginx, "nginx reverse proxy, 1 worker, upstream keepalive 64"),
        Target("haproxy", t_haproxy, "haproxy, nbthread 1, http-reuse always"),
        Target("aiohttp", t_aiohttp, "plain aiohttp+uvloop proxy (bench/aiohttp_proxy.py)"),
    ]
    for b in backends:
        targets.append(
            Target(f"proxycore-{b}", t_proxycore(b), f"python -m proxycore --backend {b}")
        )
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


# Scenario registry. Each scenario gets a started target and returns a metrics dict;
# summarize()/print_table() read the "small" scenario today.
SCENARIOS: dict[str, Callable[[Ctx, int, Proc | None], dict[str, Any]]] = {
    "small": scenario_small,
    # TODO(stream_1g): stream a 1 GiB body through each proxy (GET, then POST upload);
    #   measure throughput (GiB/s) and proxy RSS high-water mark (must stay flat).
    # TODO(idle_10k): open 10k idle keep-alive connections, then measure c50 /small
    #   rps/p99 alongside them, and proxy RSS per idle connection.
    # TODO(workers): re-run "small" with --workers 2 (nginx worker_processes 2, haproxy
    #   nbthread 2, proxycore --workers 2), unpinned or pinned to both cores.
}


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


def summarize(rows: list[dict[str, Any]]) -> None:
    """Derived columns: ratios to nginx / aiohttp, added p50 at c1 vs direct."""
    by = {r["name"]: r for r in rows if r.get("ok")}

    def rps(name: str) -> float | None:
        return by[name]["small"]["c50"]["rps"] if name in by else None

    direct_c1 = by["direct"]["small"]["c1"]["p50_ms"] if "direct" in by else None
    for r in rows:
        if not r.get("ok"):
            continue
        s = r["small"]
        mine = s["c50"]["rps"]
        r["rps"] = mine
        r["ratio_nginx"] = round(mine / rps("nginx"), 3) if rps("nginx") else None
        r["ratio_aiohttp"] = round(mine / rps("aiohttp"), 3) if rps("aiohttp") else None
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


def print_table(rows: list[dict[str, Any]]) -> None:
    hdr = [
        "name",
        "req/s",
        "vs nginx",
        "vs aiohttp",
        "p50",
        "p99",
        "c1 p50",
        "added p50",
        "proxy cpu",
        "bg cpu",
        "errors",
    ]
    lines = []
    for r in rows:
        if not r.get("ok"):
            lines.append([r["name"], "FAILED" if not r.get("skipped") else "SKIPPED"])
            continue
        cpu = r["small"]["cpu"].get("proxy_pct")
        lines.append(
            [
                r["name"],
                f"{r['rps']:,.0f}",
                _ratio(r["ratio_nginx"]),
                _ratio(r["ratio_aiohttp"]),
                _lat(r["p50_ms"]),
                _lat(r["p99_ms"]),
                _lat(r["c1_p50_ms"]),
                _added(r["added_p50_ms"], r["name"] == "direct"),
                "-" if cpu is None else f"{cpu:.0f}%",
                f"{r['small']['cpu'].get('bg_pct', 0):.0f}%",
                f"{r['errors']} FLAG" if r["flagged"] else "0",
            ]
        )
    widths = [
        max([len(hdr[i])] + [len(ln[i]) for ln in lines if len(ln) > i]) for i in range(len(hdr))
    ]
    fmt = lambda cols: "  ".join(  # noqa: E731
        c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cols)
    )
    print(fmt(hdr))
    print("  ".join("-" * w for w in widths))
    for ln, r in zip(lines, rows, strict=True):
        if len(ln) == 2:
            reason = (r.get("error") or "").strip().splitlines()
            print(f"{ln[0].ljust(widths[0])}  {ln[1]}: {reason[0] if reason else ''}")
            for extra in reason[1:4]:
                print(" " * (widths[0] + 2) + "  " + extra)
        else:
            print(fmt(ln))
    noisy = [r["name"] for r in rows if r.get("ok") and r["small"]["cpu"].get("bg_pct", 0) > 10]
    if noisy:
        print(
            f"WARNING: other processes used >10% of a core during: {', '.join(noisy)} "
            "(bg cpu column; see others_top in the JSON) -- those rows are noisy."
        )


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
        help="comma list of targets: direct,nginx,haproxy,aiohttp,proxycore-<backend> "
        "('proxycore' selects all proxycore rows)",
    )
    ap.add_argument(
        "--backends", default="uvloop,asyncio", help="proxycore backends (uvloop,asyncio)"
    )
    ap.add_argument(
        "--json", default=str(BENCH / "results" / "latest.json"), help="JSON output path"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10,
        help="before each target, wait up to S s for other processes' CPU to drop below 5%%"
        " (0 = don't wait; default 10)",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 if any row failed or had errors")
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs/logs temp dir")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    targets = select(build_targets(backends), args.only)
    if not targets:
        sys.exit("bench: no targets selected")

    # SIGINT (even if inherited as ignored), SIGTERM, SIGHUP all so the finally-block cleanup runs.
    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)

    t_start = time.monotonic()
    nginx, haproxy, hnote = ensure_tools(any(t.name == "haproxy" for t in targets))
    workdir = Path(tempfile.mkdtemp(prefix="proxycore-bench-"))
    os.chmod(workdir, 0o755)  # nginx workers (user root, but be safe) read/write temp paths
    ctx = Ctx(args, workdir, nginx, haproxy, hnote)
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        try:
            start_origin(ctx)
        except RuntimeError as e:
            log(f"origin nginx failed to start: {e}")
            return 2
        log(f"origin nginx on {HOST}:{ctx.origin_port} (cpu {LOAD_CPU}), workdir {workdir}")
        for t in targets:
            row: dict[str, Any] = {"name": t.name, "description": t.description, "ok": False}
            rows.append(row)
            proc = None
            try:
                if args.quiet_wait > 0:
                    q = row["pre_quiet"] = wait_quiet(args.quiet_wait)
                    if not q["quiet"]:
                        log(
                            f"{t.name}: box still busy after {q['waited_s']}s "
                            f"(bg {q['bg_pct']}%); measuring anyway"
                        )
                log(f"{t.name}: starting")
                port, proc = t.start(ctx)
                row["port"] = port
                if proc is not None:
                    row["cmd"] = " ".join(proc.argv)
                check_small(port)
                for sname, fn in SCENARIOS.items():
                    row[sname] = fn(ctx, port, proc)
                row["ok"] = True
                c50 = row["small"]["c50"]
                log(
                    f"{t.name}: {c50['rps']:,.0f} req/s, p99 {_lat(c50['p99_ms'])}, "
                    f"cpu {row['small']['cpu']}"
                )
            except SkipTarget as e:
                row.update(skipped=True, error=str(e))
                log(f"{t.name}: SKIPPED: {e}")
            except KeyboardInterrupt:
                row["error"] = "interrupted"
                raise
            except Exception as e:
                row["error"] = (
                    f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
                )
                log(f"{t.name}: FAILED: {row['error']}")
            finally:
                if proc is not None:
                    proc.stop()
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
    print()
    print(
        f"GET /small (53 B), wrk -t1 -c50 -d{args.duration:g}s; "
        f"c1 = wrk -t1 -c1 -d{args.c1_duration:g}s. "
        f"proxy on cpu {PROXY_CPU}, origin+wrk on cpu {LOAD_CPU}."
    )
    print_table(rows)
    result = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "interrupted": interrupted,
            "args": vars(args),
            "host": {
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "cpu_model": _cpu_model(),
            },
            "pinning": {"proxy": PROXY_CPU, "origin": LOAD_CPU, "wrk": LOAD_CPU},
            "versions": tool_versions(ctx),
            "body_bytes": len(SMALL_BODY),
        },
        "scenarios": list(SCENARIOS),
        "rows": rows,
    }
    if interrupted:  # don't overwrite a good results file with a partial run
        return 130
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\njson: {out}  ({result['meta']['elapsed_s']:.0f}s total)")
    if args.strict and any(not r.get("ok") or r.get("flagged") for r in rows):
        return 1
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
