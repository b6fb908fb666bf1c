"""When the shutdown's grace period runs out (SIGTERM, ``--grace-period S``) with exchanges still in
flight, or on a fast shutdown (SIGINT), the proxy cuts them: one error line says how many, and
each gets its access-log entry, flagged as cut (combined: `` cut=1`` at the end; JSON:
``"cut":true``), written before the process exits, with exit status 0. On every backend.

An exchange cut after its response head went out keeps that status and the body bytes sent so
far; one cut before any response shows 444 (nginx's code for a connection closed without a
response). The client sees its connection end: the response is cut short, or there is none.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from conformance.client import Conn, build_request, get
from conformance.origins import SilentOrigin, SlowOrigin
from conformance.test_access_log import COMBINED

CUT_LINE = re.compile(r"ERROR proxycore: (.+): (\d+) exchanges? still in flight cut")


def _exit(p, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while p.alive():
        assert time.monotonic() < deadline, "proxy still running\n" + p.report()
        time.sleep(0.05)
    return p.proc.returncode


def _cut_lines(p) -> list[tuple[str, int]]:
    return [(m[1], int(m[2])) for m in map(CUT_LINE.search, p.stderr().splitlines()) if m]


def _rest(c: Conn, timeout: float = 5.0) -> bytes:
    """What the client receives until its connection ends (EOF or reset)."""
    c.sock.settimeout(timeout)
    got = b""
    while True:
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            return got
        except TimeoutError:
            raise AssertionError(
                f"the connection stayed open after the shutdown: {got!r}"
            ) from None
        if not data:
            return got
        got += data


def test_grace_period_over_cuts_and_logs_in_flight_exchanges(tmp_path: Path, origins, proxy):
    """Two responses stalled mid-body (one proxy) and one request waiting for its head
    (another, same log file), a grace period of 0.5 s: each proxy's error line counts its own, and
    the three lines are flagged ``cut=1``."""
    slow = origins(SlowOrigin, chunk_delay=30, chunks=2, piece=1000)
    silent = origins(SilentOrigin)
    log = tmp_path / "access.log"
    mid = proxy(to=[slow.port], extra=["--access-log", str(log), "--grace-period", "0.5"])
    conns = [Conn(mid.port, timeout=5) for _ in range(2)]
    try:
        for i, c in enumerate(conns):
            c.send(build_request("GET", f"/mid-body/{i}"))
        for c in conns:  # the head and the first 1000 bytes have arrived
            data = b""
            while data.count(b"\r\n\r\n") < 1 or len(data.split(b"\r\n\r\n", 1)[1]) < 1000:
                data += c.sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 "), data[:100]
        # (--grace: the older name of --grace-period)
        waiting = proxy(to=[silent.port], extra=["--access-log", str(log), "--grace", "0.5"])
        with Conn(waiting.port, timeout=5) as w:
            w.send(build_request("GET", "/no-answer"))
            deadline = time.monotonic() + 5
            while not silent.requests:
                assert time.monotonic() < deadline, waiting.report()
                time.sleep(0.02)
            t0 = time.monotonic()
            mid.signal(signal.SIGTERM)
            waiting.signal(signal.SIGTERM)
            for c in conns:
                assert len(_rest(c)) < 1000  # cut short: the second piece never came
            assert _rest(w) == b""  # no response at all
        assert _exit(mid) == 0 and _exit(waiting) == 0, mid.report() + waiting.report()
        assert time.monotonic() - t0 < 5
    finally:
        for c in conns:
            c.close()
    assert _cut_lines(mid) == [("grace period of 0.5 s over", 2)], mid.report()
    assert _cut_lines(waiting) == [("grace period of 0.5 s over", 1)], waiting.report()
    cut = log.read_text().splitlines()
    assert len(cut) == 3, cut
    for line in cut:
        assert line.endswith(" cut=1"), line
        m = COMBINED.match(line.removesuffix(" cut=1"))
        assert m, line
        if "/mid-body/" in line:
            assert (m["status"], m["sent"], m["us"]) == ("200", "1000", "200"), line
            assert float(m["rt"]) >= 0.5, line  # (cut when the grace period was over)
        else:
            assert m["request"] == "GET /no-answer HTTP/1.1", line
            assert (m["status"], m["sent"], m["us"]) == ("444", "0", "-"), line
    assert sorted(COMBINED.match(x.removesuffix(" cut=1"))["request"] for x in cut) == [
        "GET /mid-body/0 HTTP/1.1",
        "GET /mid-body/1 HTTP/1.1",
        "GET /no-answer HTTP/1.1",
    ]


def test_fast_shutdown_cuts_with_json_flag(tmp_path: Path, origins, proxy):
    """SIGINT does not wait: the exchange in flight is cut at once, ``"cut":true`` in JSON."""
    silent = origins(SilentOrigin)
    log = tmp_path / "access.json"
    p = proxy(to=[silent.port], extra=["--access-log", str(log), "--access-log-format", "json"])
    with Conn(p.port, timeout=5) as c:
        c.send(build_request("GET", "/fast"))
        deadline = time.monotonic() + 5
        while not silent.requests:
            assert time.monotonic() < deadline, p.report()
            time.sleep(0.02)
        p.signal(signal.SIGINT)
        assert _rest(c) == b""
    assert _exit(p) == 0, p.report()
    assert _cut_lines(p) == [("fast shutdown", 1)], p.report()
    (line,) = log.read_text().splitlines()
    entry = json.loads(line)
    assert entry["cut"] is True and entry["status"] == 444, entry
    assert entry["request"] == "GET /fast HTTP/1.1" and entry["upstream"][0]["status"] is None


def test_a_drained_shutdown_cuts_nothing(tmp_path: Path, echo, proxy):
    """Nothing in flight when the grace period ends: no error line, no cut entry."""
    log = tmp_path / "access.json"
    p = proxy(to=[echo.port], extra=["--access-log", str(log), "--access-log-format", "json"])
    assert get(p.port, "/x").status == 200
    p.signal(signal.SIGTERM)
    assert _exit(p) == 0, p.report()
    assert _cut_lines(p) == [] and "ERROR" not in p.stderr(), p.report()
    (line,) = log.read_text().splitlines()
    assert "cut" not in json.loads(line), line
