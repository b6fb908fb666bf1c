"""Memory per idle HTTP/2 connection of a real proxycore process (RSS, KiB per connection).

    python bench/h2_idle.py [--python PY] [--backend uvloop] [--conns 2000]

Starts ``PY -m proxycore reverse-proxy`` on 127.0.0.1 (its upstream a closed port: each
connection's one request is answered 502 by the proxy itself), opens 50 warm-up connections,
reads the proxy's VmRSS, opens ``--conns`` more h2c connections (prior knowledge: preface,
SETTINGS, one finished request each) and leaves them idle, then reads VmRSS again. Kernel
socket buffers are not in RSS. The issue's target: <= 32 KiB per idle HTTP/2 connection.

``measure_idle`` is the measurement itself, on a proxy already running; ``bench/run.py``'s h2
scenario calls it for every proxycore backend (its ``h2_idle`` row).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import h2.config
import h2.connection
import h2.events

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def h2_connection(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    hdrs = [(":method", "GET"), (":path", "/idle"), (":scheme", "http"), (":authority", HOST)]
    c.send_headers(1, hdrs, end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            raise RuntimeError("the proxy closed an HTTP/2 connection")
        done = any(isinstance(e, h2.events.StreamEnded) for e in c.receive_data(data))
        s.sendall(c.data_to_send())
    return s


TARGET_KIB = 32  # issue 32: memory per idle HTTP/2 connection


def measure_idle(pid: int, port: int, conns: int, warm: int = 50) -> dict[str, float | int]:
    """Open ``warm`` h2c connections to the proxy on ``port``, read the VmRSS of ``pid``,
    open ``conns`` more, each with one finished request, leave them idle 2 s, read VmRSS
    again; close them all. KiB per idle HTTP/2 connection."""
    warmed = [h2_connection(port) for _ in range(warm)]
    opened: list[socket.socket] = []
    try:
        time.sleep(1)
        before = rss_kib(pid)
        t = time.monotonic()
        for _ in range(conns):
            opened.append(h2_connection(port))
        setup = time.monotonic() - t
        time.sleep(2)
        after = rss_kib(pid)
    finally:
        for s in warmed + opened:
            s.close()
    return {
        "conns": len(opened),
        "setup_s": round(setup, 2),
        "rss_before_kib": before,
        "rss_with_kib": after,
        "kib_per_conn": round((after - before) / len(opened), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="python that runs proxycore")
    ap.add_argument("--backend", default="uvloop")
    ap.add_argument("--conns", type=int, default=2000)
    a = ap.parse_args()
    port = free_port()
    argv = [a.python, "-m", "proxycore", "reverse-proxy", "--listen", f"{HOST}:{port}",
            "--to", f"{HOST}:{free_port()}", "--backend", a.backend,
            "--keepalive-timeout", "600"]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        r = measure_idle(p.pid, port, a.conns)
        print(
            f"{a.backend}: RSS {r['rss_before_kib']} -> {r['rss_with_kib']} KiB with "
            f"{r['conns']} idle HTTP/2 connections: {r['kib_per_conn']:.1f} KiB per connection"
        )
    finally:
        p.terminate()
        p.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
