"""Processes: Proc (started in its own session, pinned with taskset, killed with this harness),
free_port / wait_listening / check_small, and /proc accounting: process trees, RSS (RssSampler),
fds, per-core CPU (CpuMeter) and wait_quiet."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import resource
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import HOST, SMALL_BODY

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
