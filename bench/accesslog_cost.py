"""What the access log costs the live uvloop proxy, two ways that survive a busy machine.

    # user-space instructions per proxied keep-alive request (callgrind; load-independent):
    python bench/accesslog_cost.py callgrind VENV/bin/python [VENV2/bin/python ...]
    # wrk -t1 -c50 on CPU 1 against the proxy on CPU 0, off and --access-log FILE, the
    # interpreters and modes alternated per round; req/s and the proxy's CPU time per request
    python bench/accesslog_cost.py wrk VENV/bin/python [VENV2/bin/python ...] --rounds 6
    # the same harness with nginx as the proxy (one worker on CPU 0): what the reference
    # pays for its access log (off, combined unbuffered, combined with buffer=64k)
    python bench/accesslog_cost.py nginx --rounds 6

``callgrind`` runs the proxy under valgrind, sends N1 and then N2 sequential keep-alive
requests (the head wrk sends) on one connection in two runs, and reports (total(N2) -
total(N1)) / (N2 - N1) for the access log off, ``combined`` and ``json`` (and, with
``--modes off,admin``, the admin listener's metrics on: an upper bound, since the snapshot each
0.5 s is paid per second of valgrind's slow run). ``wrk`` reports,
per round, req/s and (utime + stime of the proxy over the wrk run) / requests: on a machine
shared with other work req/s moves with the neighbours' load, the CPU time per request much
less. Both start their own nginx origin (``/small``, 53 bytes) on CPU 1.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness.targets import nginx_conf  # (bench/ is on the path: run as a script)

HOST = "127.0.0.1"
BODY = b"x" * 53


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


def start_origin(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;\n"
        "events { worker_connections 4096; }\n"
        "http { access_log off; keepalive_requests 1000000;\n"
        f"  server {{ listen {HOST}:{port} backlog=4096;\n"
        f'    location = /small {{ return 200 "{BODY.decode()}"; }} }} }}\n'
    )
    p = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(conf), "-p", str(work)])
    wait_port(port, 10)
    return p, port


def log_args(mode: str, log: Path) -> list[str]:
    if mode == "off":
        return []
    if mode == "admin":  # the admin listener's metrics instead (issue 34): counted, published
        return ["--admin", f"{HOST}:{free_port()}"]
    return ["--access-log", str(log), "--access-log-format", mode]


def proxy_argv(python: str, port: int, origin: int, extra: list[str]) -> list[str]:
    return [
        python, "-m", "proxycore", "reverse-proxy", "--listen", f"{HOST}:{port}",
        "--to", f"{HOST}:{origin}", "--backend", "uvloop", *extra,
    ]  # fmt: skip


def callgrind_total(
    python: str, origin: int, mode: str, n: int, work: Path, keep: Path | None = None
) -> int:
    port = free_port()
    out = keep or work / "callgrind.out"
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         *proxy_argv(python, port, origin, ["--busy-poll", "0", *log_args(mode, work / "cg.log")])],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_port(port)
    head = f"GET /small HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    with socket.create_connection((HOST, port)) as s:
        for _ in range(n):
            s.sendall(head)
            got = b""
            while not got.endswith(BODY):
                data = s.recv(65536)
                if not data:
                    raise SystemExit("the proxy closed the connection")
                got += data
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=600)[1]
    if keep is None:
        out.unlink(missing_ok=True)
    m = re.search(r"Collected : (\d+)", err)
    if m is None:
        raise SystemExit(f"no callgrind total:\n{err[-2000:]}")
    return int(m.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_round(
    python: str, origin: int, mode: str, duration: str, work: Path
) -> tuple[float, float]:
    port = free_port()
    log = work / "wrk.log"
    log.unlink(missing_ok=True)
    argv = proxy_argv(python, port, origin, log_args(mode, log))
    p = subprocess.Popen(["taskset", "-c", "0", *argv], cwd=work,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, 20)
        return measure(port, p.pid, duration)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def measure(port: int, pid: int, duration: str) -> tuple[float, float]:
    """A warm-up second, then ``wrk -t1 -c50 -d DURATION`` from CPU 1 against the proxy on
    ``port``: its req/s and process ``pid``'s CPU µs per request over the run."""
    url = f"http://{HOST}:{port}/small"
    wrk = ["taskset", "-c", "1", "wrk", "-t1", "-c50"]
    subprocess.run([*wrk, "-d1s", url], capture_output=True, timeout=60)  # warm-up
    c0 = cpu_seconds(pid)
    out = subprocess.run([*wrk, f"-d{duration}", url], capture_output=True, text=True,
                         timeout=600).stdout  # fmt: skip
    c1 = cpu_seconds(pid)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if rps is None or n is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return float(rps.group(1)), (c1 - c0) / int(n.group(1)) * 1e6


NGINX_MODES = {
    "off": "access_log off;",
    "combined": "access_log {log} combined;",
    "buffered": "access_log {log} combined buffer=64k flush=1s;",
}


def nginx_round(origin: int, mode: str, duration: str, work: Path) -> tuple[float, float]:
    """wrk_round with nginx as the reverse proxy: the bench's nginx target (one worker,
    upstream keep-alive; bench/harness/targets.py's configuration) with ``mode``'s
    access_log in its server block."""
    port = free_port()
    log = work / "nginx-access.log"
    log.unlink(missing_ok=True)
    d = work / f"nginx-proxy-{mode}"
    d.mkdir(exist_ok=True)
    conf = nginx_conf(
        d,
        "nginx-proxy",
        f"upstream o {{ server {HOST}:{origin}; keepalive 64; }}\n"
        f"server {{ listen {HOST}:{port} backlog=4096; {NGINX_MODES[mode].format(log=log)}\n"
        "  location / { proxy_pass http://o; proxy_http_version 1.1;\n"
        '    proxy_set_header Connection ""; } }\n',
    )
    p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(d)])
    try:
        wait_port(port, 10)
        worker = int(
            subprocess.run(
                ["pgrep", "-P", str(p.pid)], capture_output=True, text=True
            ).stdout.split()[0]
        )
        return measure(port, worker, duration)
    finally:
        p.send_signal(signal.SIGQUIT)
        p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("how", choices=("callgrind", "wrk", "nginx"))
    ap.add_argument("pythons", nargs="*", help="interpreters with proxycore installed")
    ap.add_argument("--modes", default="off,combined,json")
    ap.add_argument("--requests", default="1000,4000", help="callgrind: N1,N2")
    ap.add_argument("--rounds", type=int, default=4, help="wrk: alternated rounds")
    ap.add_argument("--duration", default="5s", help="wrk: -d of each measured run")
    ap.add_argument(
        "--keep",
        metavar="DIR",
        help="callgrind: keep each profile as DIR/callgrind.N.MODE.N2 (for callgrind_annotate)",
    )
    args = ap.parse_args()
    if args.how == "nginx":
        args.pythons = ["nginx"]
        if args.modes == ap.get_default("modes"):
            args.modes = "off,combined,buffered"
    elif not args.pythons:
        ap.error("name at least one interpreter with proxycore installed")
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="accesslog-cost-") as tmp:
        work = Path(tmp)
        origin, port = start_origin(work)
        try:
            if args.how == "callgrind":
                n1, n2 = (int(x) for x in args.requests.split(","))
                keep = Path(args.keep) if args.keep else None
                for i, py in enumerate(args.pythons):
                    for mode in modes:
                        ka = keep / f"callgrind.{i}.{mode}.{n1}" if keep else None
                        kb = keep / f"callgrind.{i}.{mode}.{n2}" if keep else None
                        a = callgrind_total(py, port, mode, n1, work, ka)
                        b = callgrind_total(py, port, mode, n2, work, kb)
                        print(f"{py} {mode}: {(b - a) / (n2 - n1):,.0f} instructions/request",
                              flush=True)  # fmt: skip
                return
            runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for r in range(args.rounds):
                order = [(py, m) for py in args.pythons for m in modes]
                for py, mode in order if r % 2 == 0 else order[::-1]:
                    if args.how == "nginx":
                        rps, us = nginx_round(port, mode, args.duration, work)
                    else:
                        rps, us = wrk_round(py, port, mode, args.duration, work)
                    runs.setdefault((py, mode), []).append((rps, us))
                    print(f"round {r} {py} {mode}: {rps:,.0f} req/s, {us:.2f} us CPU/request, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            for (py, mode), v in runs.items():
                rps = statistics.median(x[0] for x in v)
                us = statistics.median(x[1] for x in v)
                off = runs.get((py, "off"))
                ratio = ""
                if off and mode != "off":
                    ratio = (
                        f"  (x off: req/s {rps / statistics.median(x[0] for x in off):.3f}, "
                        f"CPU/request {us / statistics.median(x[1] for x in off):.3f})"
                    )
                print(f"median {py} {mode}: {rps:,.0f} req/s, {us:.2f} us CPU/request{ratio}")
        finally:
            origin.send_signal(signal.SIGQUIT)
            origin.wait(10)


if __name__ == "__main__":
    main()
