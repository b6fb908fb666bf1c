"""The access log (--access-log, --access-log-format): one line per request, on every backend,
for proxied requests and for the ones the proxy answers itself; off by default."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conformance.client import Closed, Conn, build_request, get
from conformance.origins import SilentOrigin, free_port

# nginx combined + rt= uaddr= us= uct= uht=
COMBINED = re.compile(
    r"^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<sent>\d+) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)" rt=(?P<rt>\d+\.\d{3}) uaddr=(?P<uaddr>\S+) us=(?P<us>\S+) '
    r"uct=(?P<uct>\S+) uht=(?P<uht>\S+)$"
)


def wait_lines(read, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in read().splitlines() if line.strip()]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def bad_request(port: int) -> int:
    with Conn(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        return c.read_response().status


def test_combined_lines_for_every_kind_of_answer(tmp_path: Path, echo, origins, proxy) -> None:
    log = tmp_path / "access.log"
    p = proxy(to=[echo.port], extra=["--access-log", str(log)])
    assert get(p.port, "/ok?x=1", headers=[("User-Agent", "conf/1")]).status == 200
    assert get(p.port, "/status/404").status == 404
    assert bad_request(p.port) == 400
    lines = wait_lines(log.read_text, 3)
    assert len(lines) == 3, lines
    ok, nf, bad = (COMBINED.match(line) for line in lines)
    assert ok and nf and bad, lines
    assert ok["request"] == "GET /ok?x=1 HTTP/1.1" and ok["status"] == "200"
    assert ok["agent"] == "conf/1" and ok["addr"] == "127.0.0.1"
    assert ok["uaddr"] == f"127.0.0.1:{echo.port}" and ok["us"] == "200"
    assert float(ok["uct"]) >= 0 and float(ok["uht"]) >= 0 and float(ok["rt"]) >= 0
    assert nf["status"] == "404" and nf["us"] == "404"
    assert bad["status"] == "400" and bad["request"] == "GET / HTTP/1.1"
    assert (bad["uaddr"], bad["us"], bad["uct"], bad["uht"]) == ("-", "-", "-", "-")


def test_json_lines_for_502_and_504(tmp_path: Path, origins, proxy) -> None:
    log = tmp_path / "access.json"
    dead = free_port()
    p = proxy(to=[dead], extra=["--access-log", str(log), "--access-log-format", "json"])
    assert get(p.port, "/dead").status == 502
    silent = origins(SilentOrigin)
    q = proxy(
        to=[silent.port],
        extra=["--access-log", str(log), "--access-log-format", "json", "--read-timeout", "0.3"],
    )
    assert get(q.port, "/slow", timeout=5).status == 504
    lines = wait_lines(log.read_text, 2)
    assert len(lines) == 2, lines
    a, b = (json.loads(line) for line in lines)
    assert a["status"] == 502 and a["request"] == "GET /dead HTTP/1.1"
    assert a["upstream"] == [
        {"addr": f"127.0.0.1:{dead}", "status": 502, "connect_time": None, "header_time": None}
    ]
    assert b["status"] == 504 and b["request_time"] >= 0.3
    (up,) = b["upstream"]
    assert up["status"] == 504 and up["connect_time"] >= 0 and up["header_time"] is None
    assert set(a) == {
        "time", "remote_addr", "remote_user", "request", "status", "body_bytes_sent",
        "http_referer", "http_user_agent", "request_time", "upstream",
    }  # fmt: skip


def test_dash_writes_to_stdout(echo, proxy) -> None:
    p = proxy(to=[echo.port], extra=["--access-log", "-"])
    assert get(p.port, "/stdout").status == 200
    lines = [line for line in wait_lines(p.stdout, 2) if not line.startswith("proxycore ready")]
    assert len(lines) == 1 and COMBINED.match(lines[0]), p.stdout()
    assert '"GET /stdout HTTP/1.1" 200 ' in lines[0]


def test_off_by_default(tmp_path: Path, echo, proxy) -> None:
    p = proxy(to=[echo.port])
    for i in range(3):
        assert get(p.port, f"/quiet{i}").status == 200
    time.sleep(0.3)  # longer than the access log's flush interval
    assert [line for line in p.stdout().splitlines() if line.strip()] == [
        line for line in p.stdout().splitlines() if line.startswith("proxycore ready")
    ]
    assert "GET /quiet" not in p.stderr()


@pytest.mark.parametrize("workers", [2])
def test_workers_append_whole_lines_to_one_file(tmp_path: Path, echo, proxy, workers: int) -> None:
    log = tmp_path / "access.log"
    p = proxy(to=[echo.port], extra=["--access-log", str(log), "--workers", str(workers)])
    n = 200
    for i in range(n):
        assert get(p.port, f"/w{i}").status == 200
    lines = wait_lines(log.read_text, n)
    assert len(lines) == n
    assert all(COMBINED.match(line) for line in lines)
    assert sorted(int(COMBINED.match(x)["request"].split()[1][2:]) for x in lines) == list(  # type: ignore[index]
        range(n)
    )


def _load(port: int, tag: str, stop: threading.Event, done: list[str]) -> None:
    """Keep-alive requests on one connection (a new one when the proxy closes it) until the
    proxy stops answering; each request whose response arrived whole is added to ``done``."""
    i = 0
    while not stop.is_set():
        try:
            with Conn(port, timeout=5) as c:
                while not stop.is_set():
                    path = f"/{tag}-{i}"
                    i += 1
                    c.send(build_request("GET", path))
                    r = c.read_response()
                    if r.status != 200 or not r.complete:
                        return
                    done.append(path)
                    if "close" in r.connection_tokens():
                        break
        except (OSError, Closed):
            return  # refused or cut: the proxy is going away


def test_sigterm_under_load_loses_no_line(tmp_path: Path, echo, proxy) -> None:
    """Every request a client saw completed has exactly one whole line, when SIGTERM arrives
    while lines are queued (issue 26: the access log batches its writes). The app slows the
    flusher down, so the last batch leaves only through the flush at exit."""
    log = tmp_path / "access.log"
    p = proxy(
        mode="run",
        app="conformance.accesslog_apps:SlowFlush",
        extra=["--access-log", str(log)],
        env={"ORIGIN_PORT": echo.port},
    )
    stop = threading.Event()
    done: list[list[str]] = [[] for _ in range(6)]
    threads = [
        threading.Thread(target=_load, args=(p.port, f"c{k}", stop, done[k]), daemon=True)
        for k in range(len(done))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while sum(map(len, done)) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.signal(signal.SIGTERM)  # mid-load: the clients keep sending
    deadline = time.monotonic() + 10
    while p.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(10)
    assert not p.alive(), "proxy still running 10 s after SIGTERM"
    assert p.proc.returncode == 0, p.report()
    completed = [path for paths in done for path in paths]
    assert len(completed) >= 300
    text = log.read_text()
    assert text.endswith("\n")  # whole lines only
    lines = text.splitlines()
    parsed = [COMBINED.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m][:3]
    logged = Counter(m["request"].split()[1] for m in parsed if m)
    assert max(logged.values()) == 1  # no line twice
    missing = [path for path in completed if logged[path] != 1]
    assert not missing, f"{len(missing)} of {len(completed)} completed requests have no line"
