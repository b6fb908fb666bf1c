#!/usr/bin/env python3
"""proxycore benchmark harness.

    python bench/run.py [--duration 10] [--only name,name] [--scenarios rps,stream,idle,workers,tls]
                        [--backends uvloop,...] [--tls-duration 5] [--json out.json]

Starts an nginx origin (1 worker, CPU 1), then measures, one after another with
identical settings, each target: direct-to-origin (the ceiling), nginx as a reverse
proxy, haproxy, a plain aiohttp+uvloop proxy, and proxycore with each --backends
backend. Proxies run pinned to CPU 0; the origin and wrk share CPU 1.

Scenarios: rps (GET /small, wrk c50 + c1), stream (1 GiB GET), idle (RSS per idle
keep-alive connection), workers (a proxycore --workers 2 row), tls (nginx and every
proxycore backend terminating TLS with the same ECDSA P-256 certificate, generated once
per run: keep-alive req/s over TLS, and new connections/s with resumed and with full
handshakes).

Everything listens on 127.0.0.1 only. Every process started here is stopped on exit,
including on Ctrl-C / SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import textwrap
import threading
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


def check_small_tls(port: int, cafile: str) -> dict[str, Any]:
    """One real request over TLS, verifying the certificate against the run's CA (and
    127.0.0.1 against its IP SAN): must be 200 with exactly the 53-byte body. Returns
    what this (Python) client negotiated."""
    url = f"https://{HOST}:{port}/small"
    conn = http.client.HTTPSConnection(
        HOST, port, timeout=5, context=ssl.create_default_context(cafile=cafile)
    )
    try:
        conn.request("GET", "/small")
        r = conn.getresponse()
        status, body = r.status, r.read()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        info = {"version": sock.version(), "cipher": cipher[0] if cipher else None}
    except Exception as e:
        raise RuntimeError(f"GET {url} failed: {type(e).__name__}: {e}") from e
    finally:
        conn.close()
    if status != 200 or body != SMALL_BODY:
        raise RuntimeError(
            f"GET {url} -> {status}, {len(body)} bytes {body[:80]!r}, expected 200/53"
        )
    return info


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


# --------------------------------------------------------------------------- TLS

TLS_CERT_DESC = "ECDSA P-256 (secp256r1) leaf, ecdsa-with-SHA256, signed by a throwaway CA"


def make_tls_files(workdir: Path) -> dict[str, Any]:
    """One ECDSA P-256 server certificate (+ its CA) for the whole run, valid for
    127.0.0.1 and localhost; every TLS target is given the same files."""
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    d = workdir / "tls"
    d.mkdir()
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)
    cert, key, cafile = d / "server.crt", d / "server.key", d / "ca.crt"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    cafile.write_bytes(ca.cert_pem.bytes())
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    pub = c.public_key()
    if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
        raise RuntimeError(f"trustme made a {type(pub).__name__} key, expected ECDSA P-256")
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "cert": str(cert),
        "key": str(key),
        "ca": str(cafile),
        "description": TLS_CERT_DESC,
        "san": [str(n.value) for n in san],
        "generated_by": f"trustme {trustme.__version__}",
    }


# LD_PRELOAD shim for wrk: wrk keeps one SSL object per connection slot and calls
# SSL_shutdown + SSL_clear before reconnecting, which keeps the session, so every
# reconnect resumes it (TLS 1.3 PSK from a session ticket) instead of doing a full
# handshake. The shim drops the session after SSL_clear -> full handshake every time.
_NORESUME_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
typedef struct ssl_st SSL;
int SSL_clear(SSL *s) {
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, void *);
    if (!real_clear) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    int r = real_clear(s);
    if (set_session)
        set_session(s, NULL);
    return r;
}
"""


def build_noresume_shim(workdir: Path) -> tuple[str | None, str]:
    """Compile the shim with cc; (path, "") or (None, why not)."""
    cc = _find("cc") or _find("gcc")
    if not cc:
        return None, "no C compiler (cc) for the wrk no-resume shim: full handshakes not measured"
    src, so = workdir / "wrk_noresume.c", workdir / "wrk_noresume.so"
    src.write_text(_NORESUME_C)
    r = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None, f"building the wrk no-resume shim failed: {r.stderr.strip()[-300:]}"
    return str(so), ""


_TLS_VERSIONS = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0x0302: "TLSv1.1", 0x0301: "TLSv1"}
_TLS_CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS_GROUPS = {0x001D: "x25519", 0x0017: "secp256r1", 0x0018: "secp384r1", 0x001E: "x448"}


def classify_server_flight(data: bytes) -> dict[str, Any] | None:
    """Classify a TLS handshake from the first bytes the *server* sent (its plaintext
    part): None = need more bytes. TLS 1.3: resumed iff the ServerHello carries
    pre_shared_key (41). TLS 1.2: full iff a Certificate (11) comes before the
    ChangeCipherSpec record."""
    hs, pos, ccs = b"", 0, False
    while pos + 5 <= len(data):
        ctype, length = data[pos], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(data):
            break
        frag, pos = data[pos + 5 : pos + 5 + length], pos + 5 + length
        if ctype == 22:
            hs += frag
        elif ctype == 21:
            return {"kind": "alert"}
        else:  # 20 ChangeCipherSpec, 23 encrypted: the plaintext handshake is over
            ccs = True
            break
    info: dict[str, Any] = {}
    i = 0
    while i + 4 <= len(hs):
        mtype, mlen = hs[i], int.from_bytes(hs[i + 1 : i + 4], "big")
        if i + 4 + mlen > len(hs):
            return None
        body, i = hs[i + 4 : i + 4 + mlen], i + 4 + mlen
        if mtype == 2:  # ServerHello
            version = int.from_bytes(body[0:2], "big")
            j = 34 + 1 + body[34]  # version, random, session id
            cipher = int.from_bytes(body[j : j + 2], "big")
            j += 3  # cipher suite, compression
            exts: dict[int, bytes] = {}
            end = j + 2 + int.from_bytes(body[j : j + 2], "big") if j + 2 <= len(body) else j
            j += 2
            while j + 4 <= end:
                et, el = (
                    int.from_bytes(body[j : j + 2], "big"),
                    int.from_bytes(body[j + 2 : j + 4], "big"),
                )
                exts[et] = body[j + 4 : j + 4 + el]
                j += 4 + el
            if exts.get(43, b"")[:2] == b"\x03\x04":
                version = 0x0304
            info = {
                "version": _TLS_VERSIONS.get(version, hex(version)),
                "cipher": _TLS_CIPHERS.get(cipher, hex(cipher)),
            }
            if 51 in exts:
                group = int.from_bytes(exts[51][:2], "big")
                info["group"] = _TLS_GROUPS.get(group, hex(group))
            if version == 0x0304:
                return {**info, "kind": "resumed" if 41 in exts else "full"}
        elif mtype == 11 and info:  # TLS 1.2 Certificate: a full handshake
            return {**info, "kind": "full"}
    if ccs and info:  # TLS 1.2 abbreviated handshake: no Certificate before CCS
        return {**info, "kind": "resumed"}
    return {"kind": "unknown"} if ccs else None


class HandshakeProbe:
    """A TCP relay on 127.0.0.1 (asyncio, in a thread of this harness) in front of one TLS
    target. It counts the connections a client opens through it and classifies each
    one's handshake (resumed / full, version, cipher, group) from the server's plaintext
    ServerHello. Used with a short wrk run to check what wrk really does."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.connections = 0
        self.kinds: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self.upstream_errors = 0

    def __enter__(self) -> HandshakeProbe:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, HOST, 0, backlog=1024), self.loop
        ).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            self.server.close()
            # wrk has exited, so every relayed connection ends within ~1 s (see _handle);
            # loop, as a connection still in the accept queue may start a handler late.
            deadline = time.monotonic() + 3
            while tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                _, pending = await asyncio.wait(
                    tasks, timeout=max(0.1, deadline - time.monotonic())
                )
                if pending and time.monotonic() >= deadline:
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _record(self, res: dict[str, Any]) -> None:
        kind = res.get("kind", "unknown")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if "version" in res:
            p = " ".join(str(res[k]) for k in ("version", "cipher", "group") if k in res)
            self.params[p] = self.params.get(p, 0) + 1

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            ur, uw = await asyncio.open_connection(HOST, self.target)
        except OSError:
            self.upstream_errors += 1
            cw.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, inspect: bool) -> None:
            buf, done = b"", not inspect
            try:
                while data := await r.read(65536):
                    if not done:
                        buf += data
                        res = classify_server_flight(buf)
                        if res is not None or len(buf) > 65536:
                            self._record(res or {"kind": "unknown"})
                            done = True
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (OSError, RuntimeError):
                pass
            finally:
                if not done:
                    self._record({"kind": "unknown" if buf else "no-handshake"})

        pipes = [
            asyncio.ensure_future(pipe(cr, uw, False)),
            asyncio.ensure_future(pipe(ur, cw, True)),
        ]
        try:
            # When one side is done, give the other 1 s (e.g. wrk closed a connection it
            # opened as it stopped and the server waits for a ClientHello): no stragglers.
            _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=1)
        except asyncio.CancelledError:
            pass  # shutting down; returning normally keeps asyncio from logging it
        finally:
            for t in pipes:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pipes, return_exceptions=True)
            for w in (cw, uw):
                w.close()

    def result(self, requests: int) -> dict[str, Any]:
        # "no-handshake": opened as wrk stopped, closed before the server said anything
        n = sum(v for k, v in self.kinds.items() if k != "no-handshake")
        resumed = self.kinds.get("resumed", 0)
        share = resumed / n if n else None
        if share is None:
            kind = "none"
        else:
            kind = "resumed" if share >= 0.95 else "full" if share <= 0.05 else "mixed"
        return {
            "connections": self.connections,
            "requests": requests,
            "handshakes": dict(self.kinds),
            "resumed_share": None if share is None else round(share, 4),
            "kind": kind,
            "negotiated": dict(self.params),
            "upstream_errors": self.upstream_errors,
        }


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
    tls: dict[str, Any] | None = None  # make_tls_files(): cert/key/ca paths (tls scenario)
    noresume_so: str | None = None  # the wrk no-resume shim (full handshakes), if built
    noresume_note: str = ""

    @property
    def nginx_conns(self) -> int:
        return max(16384, int(self.args.idle_conns) + 1024)


@dataclass
class Target:
    name: str
    # Starts the target; returns (port to load, process to meter or None for "direct").
    start: Callable[[Ctx], tuple[int, Proc | None]]
    description: str
    # Which scenarios apply ("small", "stream", "idle", "tls"); --scenarios narrows it.
    scenarios: tuple[str, ...] = ("small", "stream", "idle")
    cpu: str = PROXY_CPU  # where the proxy runs (taskset -c)
    meta: dict[str, Any] = field(default_factory=dict)
    # Starts the same target terminating TLS with ctx.tls (the "tls" scenario).
    tls_start: Callable[[Ctx], tuple[int, Proc | None]] | None = None


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


def t_nginx(ctx: Ctx, tls: bool = False) -> tuple[int, Proc | None]:
    port = free_port()
    name = "nginx-proxy-tls" if tls else "nginx-proxy"
    ssl_conf = ""
    if tls:
        assert ctx.tls is not None
        ssl_conf = f"""
            ssl_certificate {ctx.tls["cert"]};
            ssl_certificate_key {ctx.tls["key"]};
            ssl_protocols TLSv1.2 TLSv1.3;
            ssl_session_cache shared:SSL:10m;"""
    server = f"""\
        upstream origin {{
            server {HOST}:{ctx.origin_port};
            keepalive 64;
            keepalive_requests 1000000;
        }}
        server {{
            listen {HOST}:{port}{" ssl" if tls else ""} backlog=4096;{ssl_conf}
            location / {{
                proxy_pass http://origin;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                # stream the 1 GiB body through memory buffers, never via temp files
                proxy_max_temp_file_size 0;
            }}
        }}
    """
    conf = nginx_conf(ctx.workdir, name, server, conns=ctx.nginx_conns)
    return port, start_nginx(ctx, name, conf, PROXY_CPU, port)


def t_nginx_tls(ctx: Ctx) -> tuple[int, Proc | None]:
    """The nginx target, same config plus listen ... ssl and the ssl_* lines above."""
    return t_nginx(ctx, tls=True)


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


BUSY_POLL_OFF = "0"  # the proxycore-uvloop-bp0 row: --busy-poll 0 (the default polls adaptively)


_HELP_CACHE: dict[str, str] = {}


def proxycore_supports(flag: str) -> bool:
    """Whether the proxycore under test (PROXYCORE_PYTHON) knows a reverse-proxy flag, from its
    --help (cached per interpreter)."""
    py = PROXYCORE_PYTHON[0]
    if py not in _HELP_CACHE:
        r = subprocess.run(
            [py, "-m", "proxycore", "reverse-proxy", "--help"],
            capture_output=True, text=True, timeout=30,
            cwd=ROOT if py == sys.executable else tempfile.gettempdir(),
        )  # fmt: skip
        _HELP_CACHE[py] = r.stdout
    return re.search(rf"(^|\s){re.escape(flag)}\b", _HELP_CACHE[py], re.M) is not None


def t_proxycore(
    backend: str,
    workers: int = 1,
    cpu: str = PROXY_CPU,
    tls: bool = False,
    busy_poll: str | None = None,
    access_log: bool = False,
) -> Callable[[Ctx], tuple[int, Proc | None]]:
    name = (
        f"proxycore-{backend}"
        + (f"-w{workers}" if workers > 1 else "")
        + (f"-bp{busy_poll}" if busy_poll is not None else "")
        + ("-accesslog" if access_log else "")
        + ("-tls" if tls else "")
    )

    def start(ctx: Ctx) -> tuple[int, Proc | None]:
        log_args: list[str] = []
        if access_log:
            if not proxycore_supports("--access-log"):
                raise SkipTarget(
                    f"{PROXYCORE_PYTHON[0]} -m proxycore reverse-proxy has no --access-log flag"
                )
            log_args = ["--access-log", str(ctx.workdir / f"{name}.access.log")]
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        tls_args = []
        if tls:
            assert ctx.tls is not None
            tls_args = ["--tls-cert", ctx.tls["cert"], "--tls-key", ctx.tls["key"]]
        p = Proc(
            name,
            [
                PROXYCORE_PYTHON[0],
                "-m",
                "proxycore",
                "reverse-proxy",
                "--listen",
                f"{HOST}:{port}",
                *tls_args,
                "--to",
                f"{HOST}:{ctx.origin_port}",
                "--backend",
                backend,
                *(["--workers", str(workers)] if workers > 1 else []),
                *(["--busy-poll", busy_poll] if busy_poll is not None else []),
                *log_args,
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
    with_tls = ("small", "stream", "idle", "tls")
    targets = [
        Target("direct", t_direct, "wrk -> origin (ceiling; no proxy)", ("small", "stream")),
        Target(
            "nginx",
            t_nginx,
            "nginx reverse proxy, 1 worker, upstream keepalive 64",
            with_tls,
            tls_start=t_nginx_tls,
        ),
        Target("haproxy", t_haproxy, "haproxy, nbthread 1, http-reuse always"),
        Target("aiohttp", t_aiohttp, "plain aiohttp+uvloop proxy (bench/aiohttp_proxy.py)"),
    ]
    for b in backends:
        targets.append(
            Target(
                f"proxycore-{b}",
                t_proxycore(b),
                f"python -m proxycore --backend {b}",
                with_tls,
                tls_start=t_proxycore(b, tls=True),
            )
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
    if "uvloop" in backends:  # the same 1-worker uvloop proxy without busy polling (rps only)
        bp = Target(
            f"proxycore-uvloop-bp{BUSY_POLL_OFF}",
            t_proxycore("uvloop", busy_poll=BUSY_POLL_OFF),
            f"python -m proxycore --backend uvloop --busy-poll {BUSY_POLL_OFF} (no busy polling)",
            ("small",),
        )
        names = [t.name for t in targets]
        targets.insert(names.index("proxycore-uvloop") + 1, bp)
    if "uvloop" in backends:  # the 1-worker uvloop proxy writing an access log (rps only)
        al = Target(
            "proxycore-uvloop-accesslog",
            t_proxycore("uvloop", access_log=True),
            "python -m proxycore --backend uvloop --access-log FILE (format combined)",
            ("small",),
        )
        names = [t.name for t in targets]
        targets.insert(names.index("proxycore-uvloop") + 1, al)
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


# Scenario registry: name -> fn(ctx, port, proc) -> metrics dict, stored as row[name].
# Every scenario gets a freshly started target (so one scenario's heap growth can't hide
# or inflate the next one's RSS). --scenarios maps rps->small, stream, idle, tls; "workers"
# adds the proxycore-uvloop-w2 row (which runs "small" only). "tls" starts the target
# with Target.tls_start (nginx and proxycore rows only).
SCENARIOS: dict[str, Callable[[Ctx, int, Proc | None], dict[str, Any]]] = {
    "small": scenario_small,
    "stream": scenario_stream,
    "idle": scenario_idle,
    "tls": scenario_tls,
}
SCENARIO_FLAGS = {
    "rps": "small",
    "stream": "stream",
    "idle": "idle",
    "workers": None,
    "tls": "tls",
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
        "openssl": first_line(["openssl", "version"]),  # the libssl wrk uses
        "python_ssl": ssl.OPENSSL_VERSION,
    }
    with contextlib.suppress(Exception):
        nv = subprocess.run([ctx.nginx, "-V"], capture_output=True, text=True, timeout=10)
        m = re.search(r"built with (OpenSSL [^\n]*)", nv.stderr + nv.stdout)
        if m:
            v["nginx_ssl"] = m.group(1).strip()
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
    key = {"small": "c50", "stream": "mb_s", "idle": "kib_per_conn", "tls": "keepalive"}[scen]
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

    def tls_ref(kind: str) -> float | None:
        """nginx (TLS) req/s: keep-alive, or new conns/s with resumed / full handshakes."""
        res = _ok(by["nginx"], "tls") if "nginx" in by else None
        m = (res or {}).get("keepalive") if kind == "keepalive" else None
        if res is not None and kind != "keepalive":
            m = res["handshakes"].get(kind)
        if not m or m.get("rps") is None or m["error_count"]:
            return None
        return float(m["rps"])

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
        if tls := _ok(r, "tls"):
            ka = tls["keepalive"]
            r["tls_rps"] = ka["rps"]
            r["tls_rps_load_bound"] = ka.get("load_bound", False)
            r["tls_ratio_nginx"] = ratio(ka["rps"], tls_ref("keepalive"))
            r["tls_p50_ms"] = ka["p50_ms"]
            r["tls_p99_ms"] = ka["p99_ms"]
            errors = ka["error_count"]
            for kind, h in tls["handshakes"].items():
                if h.get("rps") is not None:
                    r[f"tls_hs_{kind}"] = h["rps"]
                    r[f"tls_hs_{kind}_load_bound"] = h.get("load_bound", False)
                    r[f"tls_hs_{kind}_ratio_nginx"] = ratio(h["rps"], tls_ref(kind))
                    errors += h["error_count"]
            r["tls_errors"] = errors
            if errors:
                r["flagged"] = True
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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"


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


def print_table3(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Table 3: TLS termination -- keep-alive req/s and new connections/s (handshakes)."""
    tls_rows = [r for r in rows if "tls" in r or (r.get("skipped") and r["name"] == "nginx")]
    if not tls_rows:
        return
    secs = getattr(args, "tls_duration", 5)
    hdr = ["name (TLS)", "keep-alive req/s", "vs nginx", "p50", "p99", "proxy cpu",
           "resumed hs/s", "vs nginx", "proxy cpu", "full hs/s", "vs nginx", "proxy cpu",
           "bg cpu", "errors"]  # fmt: skip
    bound = False
    lines: list[list[str]] = []
    failures: dict[int, str] = {}
    notes: list[str] = []
    negotiated: dict[str, list[str]] = {}
    for r in tls_rows:
        if (why := _failure(r, "tls")) or (t := _ok(r, "tls")) is None:
            failures[len(lines)] = why or "FAILED"
            lines.append([r["name"]])
            continue
        cells = []
        for kind in ("resumed", "full"):
            h = t["handshakes"].get(kind)
            if not h or h.get("rps") is None:
                cells += ["FAILED" if h else "-", "-", "-"]
                continue
            mark = "" if h.get("kind") == kind else "!"
            if mark:
                notes.append(f"  ! {r['name']} {kind}: {h.get('warning', '')}")
            if h.get("load_bound"):
                mark += "^"
                bound = True
            cells += [
                f"{h['rps']:,.0f}{mark}",
                _ratio(r.get(f"tls_hs_{kind}_ratio_nginx")),
                _pct(h["cpu"].get("proxy_pct")),
            ]
            for p in h["probe"]["negotiated"]:
                negotiated.setdefault(p, []).append(f"{r['name']}/{kind}")
        errs = r.get("tls_errors", 0)
        ka_mark = "^" if t["keepalive"].get("load_bound") else ""
        bound = bound or bool(ka_mark)
        lines.append(
            [
                r["name"],
                f"{t['keepalive']['rps']:,.0f}{ka_mark}",
                _ratio(r.get("tls_ratio_nginx")),
                _lat(r.get("tls_p50_ms")),
                _lat(r.get("tls_p99_ms")),
                _pct(t["cpu"].get("proxy_pct")),
                *cells,
                f"{t.get('bg_pct_max', 0):.0f}%",
                f"{errs} FLAG" if errs else "0",
            ]
        )
    print()
    print(
        f"TLS termination, one {TLS_CERT_DESC} for every target; wrk -t1 -c50 -d{secs:g}s "
        "https://127.0.0.1:PORT/small. keep-alive: 50 long-lived TLS connections. hs/s: "
        'the same with -H "Connection: close" -- a new TCP + TLS connection per request '
        "(req/s = connections/s; wrk's latency starts after the handshake, so none shown). "
        "resumed: wrk as is, it resumes the TLS session on every reconnect (TLS 1.3 "
        "PSK from a session ticket: ECDHE but no certificate, no signature). full: wrk with "
        "an LD_PRELOAD shim that drops the session -> a full handshake (ECDHE + ECDSA "
        "signature) per connection. Both checked per row through a relay (1 s, -c4) that "
        "reads each ServerHello. proxy cpu = % of one core during that run; bg cpu = max "
        "over the 3 runs."
    )
    _render(hdr, lines, failures)
    if bound:
        print(
            f"^ cpu {LOAD_CPU} (wrk + origin) was saturated and the proxy was not: that "
            "number is wrk's limit, a lower bound for the row (ratios against it are upper "
            "bounds). wrk's side of a handshake costs more than the server's (ECDSA verify > "
            "sign), so with one load core a fast server's handshake rate is wrk's."
        )
    for r in tls_rows:
        t = r.get("tls")
        if isinstance(t, dict):
            if t.get("full_handshakes_note"):
                notes.append(f"  {r['name']} full handshakes: {t['full_handshakes_note']}")
            if t.get("error") and _ok(r, "tls") is not None:
                notes.append(f"  {r['name']} tls: {t['error'].splitlines()[0]}")
    probes = [
        h["probe"]
        for r in tls_rows
        for h in (r.get("tls") or {}).get("handshakes", {}).values()
        if isinstance(h, dict) and "probe" in h
    ]
    if probes:
        conns, reqs = sum(p["connections"] for p in probes), sum(p["requests"] for p in probes)
        print(
            f"relay check: {conns:,} connections for {reqs:,} requests in "
            f"{len(probes)} probe runs (one connection per request; the few extra were "
            "still in flight when wrk stopped)."
        )
    for p, who in negotiated.items():
        scope = (
            "all rows" if len(who) == sum(len(w) for w in negotiated.values()) else ", ".join(who)
        )
        print(f"negotiated by wrk: {p} ({scope})")
    for n in notes:
        print(n)


NOISY_BG_PCT = 10.0  # bg cpu above this during a measurement -> that number is noise


def _bg(r: dict[str, Any] | None, scen: str) -> float:
    res = (r or {}).get(scen)
    if not isinstance(res, dict):
        return 0.0
    if "bg_pct_max" in res:  # tls: the worst of its three windows
        return float(res["bg_pct_max"])
    return float(res.get("cpu", {}).get("bg_pct", 0))


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
    bp = f"proxycore-uvloop-bp{BUSY_POLL_OFF}"  # the same targets without busy polling
    if bp in by:
        add(f"{bp} req/s vs aiohttp", g(bp, "ratio_aiohttp"), ">=", 5.0, "x",
            ((bp, "small"), ("aiohttp", "small")))  # fmt: skip
        added = g(bp, "added_p50_ms")
        add(f"{bp} added p50 @c1", None if added is None else added * 1000, "<=", 50, "us",
            ((bp, "small"), ("direct", "small")))  # fmt: skip
    for r in rows:
        if r["name"].startswith("proxycore-") and "-w" not in r["name"] and "stream" in r:
            st = _ok(r, "stream")
            ratio = r.get("stream_ratio_nginx") if st and st["complete"] else None
            add(f"{r['name']} 1GiB MB/s vs nginx", ratio, ">=", 0.5, "x",
                ((r["name"], "stream"), ("nginx", "stream")))  # fmt: skip
            rss = st.get("peak_rss_mib") if st else None
            add(f"{r['name']} 1GiB peak RSS", rss, "<=", 64, "MiB")
    al = "proxycore-uvloop-accesslog"  # access log on: costs < 10 % of req/s
    al_rps, uv_rps = g(al, "rps"), g(uv, "rps")
    if al in by:
        add(f"{al} req/s vs {uv}", round(al_rps / uv_rps, 3) if al_rps and uv_rps else None,
            ">=", 0.9, "x", ((al, "small"), (uv, "small")))  # fmt: skip
    tr, aio = "proxycore-trio", "proxycore-asyncio"
    tr_rps, aio_rps = g(tr, "rps"), g(aio, "rps")
    if tr in by:
        add(f"{tr} req/s vs {aio}", round(tr_rps / aio_rps, 3) if tr_rps and aio_rps else None,
            ">=", 0.8, "x", ((tr, "small"), (aio, "small")))  # fmt: skip
    add(f"{uv} idle RSS per conn", g(uv, "idle_kib_per_conn"), "<=", 16, "KiB")
    if tr in by:
        add(f"{tr} idle RSS per conn", g(tr, "idle_kib_per_conn"), "<=", 4, "KiB")
    add(f"{uv} TLS keep-alive req/s vs nginx (TLS)", g(uv, "tls_ratio_nginx"), ">=", 0.25,
        "x", ((uv, "tls"), ("nginx", "tls")))  # fmt: skip
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
    """Horizontal bars: req/s (c50), 1 GiB MB/s, idle KiB per connection, TLS req/s and
    new connections/s."""
    plt = _ensure_matplotlib()
    panels = [
        ("req/s, GET /small, wrk -c50", "rps", "{:,.0f}", "small"),
        ("1 GiB stream, MB/s", "stream_mb_s", "{:,.0f}", "stream"),
        ("peak RSS streaming 1 GiB, MiB", "stream_peak_rss_mib", "{:.1f}", ""),
        ("RSS per idle keep-alive conn, KiB", "idle_kib_per_conn", "{:.1f}", ""),
        ("TLS keep-alive req/s, wrk -c50 (ECDSA P-256)", "tls_rps", "{:,.0f}", "tls"),
        ("TLS new conns/s, resumed handshakes", "tls_hs_resumed", "{:,.0f}", "tls"),
        ("TLS new conns/s, full handshakes", "tls_hs_full", "{:,.0f}", "tls"),
    ]
    panels = [p for p in panels if any(r.get(p[1]) is not None for r in rows)]
    if not panels:
        return
    by = {r["name"]: r for r in rows}

    def rows_with(ps: list[tuple[str, str, str, str]]) -> list[str]:
        return [r["name"] for r in rows if any(r.get(p[1]) is not None for p in ps)]

    # The TLS panels list only the rows that ran the tls scenario (nginx + proxycore);
    # the others share one row list, as before.
    tls_panels = [p for p in panels if p[3] == "tls"]
    names_main = rows_with([p for p in panels if p[3] != "tls"])
    names_tls = rows_with(tls_panels)

    def color(n: str) -> str:
        if n == "direct":
            return "#999999"
        if n.startswith("proxycore"):
            return "#1f77b4"
        return "#ff7f0e" if n == "aiohttp" else "#2ca02c"

    ncols = min(2, len(panels))
    main = [p for p in panels if p[3] != "tls"]
    # grid rows: the main panels, then the TLS panels starting on a fresh row
    layout = [main[i : i + ncols] for i in range(0, len(main), ncols)]
    layout += [tls_panels[i : i + ncols] for i in range(0, len(tls_panels), ncols)]
    heights = [0.36 * len(names_tls if row[0][3] == "tls" else names_main) + 1.0 for row in layout]
    fig, grid = plt.subplots(
        len(layout), ncols, figsize=(6.2 * ncols + 1, sum(heights) + 0.6), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    placed = []
    for row_axes, row_panels in zip(grid, layout, strict=True):
        for i, ax in enumerate(row_axes):
            if i < len(row_panels):
                placed.append((ax, row_panels[i]))
            else:
                ax.set_visible(False)
    for ax, (label, key, f, noise_scen) in placed:
        names = names_tls if noise_scen == "tls" else names_main
        ys = list(range(len(names)))[::-1]
        vals = [by[n].get(key) for n in names]
        # hatched + "(noisy)": measured while other processes used > NOISY_BG_PCT of a core
        noisy = [bool(noise_scen) and _bg(by[n], noise_scen) > NOISY_BG_PCT for n in names]
        bars = ax.barh(ys, [v or 0 for v in vals], color=[color(n) for n in names])
        top = max((v for v in vals if v), default=1)
        for bar, y, v, nz, n in zip(bars, ys, vals, noisy, names, strict=True):
            if nz:
                bar.set_hatch("///")
            txt = "-" if v is None else f.format(v) + (" (noisy)" if nz else "")
            if v is not None and by[n].get(f"{key}_load_bound"):
                txt += " (wrk's limit)"
            ax.text((v or 0) + top * 0.01, y, txt, va="center", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xlim(0, top * (1.5 if noise_scen == "tls" else 1.3))
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (sum(heights) + 0.6)))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


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


def print_rounds(rows: list[dict[str, Any]]) -> None:
    lines = [
        f"  {r['name']:<22} "
        + ", ".join(f"{x['rps']:,.0f}" for x in r["small"]["c50_rounds"])
        + f"  -> median {r['small']['c50']['rps']:,.0f}"
        for r in rows
        if isinstance(r.get("small"), dict) and len(r["small"].get("c50_rounds", ())) > 1
    ]
    if lines:
        print("\nc50 req/s per pass (--rounds; passes interleaved over all rows):")
        print("\n".join(lines))


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
        "proxycore-uvloop-w2,proxycore-uvloop-bp0,proxycore-uvloop-accesslog ('proxycore' "
        "selects all proxycore rows)",
    )
    ap.add_argument(
        "--backends",
        default="uvloop,asyncio,gevent,threads,trio",
        help="proxycore backends, one row each (uvloop,asyncio,gevent,threads,trio)",
    )
    ap.add_argument(
        "--scenarios",
        default="rps,stream,idle,workers,tls",
        help="comma list: rps (GET /small c50 + c1), stream (1 GiB GET: MB/s + peak RSS), "
        "idle (RSS per idle keep-alive conn), workers (proxycore-uvloop-w2 row, rps only), "
        "tls (nginx + proxycore terminating TLS: keep-alive req/s, new conns/s with resumed "
        "and full handshakes)",
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
                    assert start is not None
                    port, proc = start(ctx)  # a fresh process for every scenario
                    row["tls_port" if tls else "port"] = port
                    if proc is not None:
                        row["tls_cmd" if tls else "cmd"] = " ".join(proc.argv)
                    checked = None
                    if tls:
                        assert ctx.tls is not None
                        checked = check_small_tls(port, ctx.tls["ca"])
                    else:
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
    print_table3(rows, args)
    noisy = sorted(
        {
            f"{r['name']}/{sc}"
            for r in rows
            for sc in ("small", "stream", "tls")
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
    print_rounds(rows)
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
    if sname == "tls":
        ka = res["keepalive"]
        out = f"keep-alive {ka['rps']:,.0f} req/s, p99 {_lat(ka['p99_ms'])}"
        for kind, h in res["handshakes"].items():
            if h.get("rps") is None:
                out += f"; {kind} handshakes FAILED"
                continue
            p = h["probe"]
            out += (
                f"; {kind} {h['rps']:,.0f} conn/s (relay: {p['connections']} conns / "
                f"{p['requests']} reqs, {p['handshakes']})"
            )
        return out
    return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
