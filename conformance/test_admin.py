"""The admin listener (issue 34) on every backend: ``/metrics`` parsed with prometheus_client's
own parser after known traffic (HTTP/1.1 and HTTP/2, 2xx and 5xx, to a group's backends),
``/healthz`` 200 while serving and 503 while draining, totals across ``--workers 2``, the
loopback rule, ``/status.json`` with a healthy and a dead backend, and the status page
rendered by a real headless Chromium (driven over its DevTools protocol), its screenshot saved
as a test artifact (``build/artifacts/status-page-BACKEND.png``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conformance import proxy as _proxy
from conformance.client import get
from conformance.origins import HOST, EchoOrigin, free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "artifacts"


# (the installed proxycore, as the conformance proxies run it)
_RUN = {
    "capture_output": True,
    "text": True,
    "timeout": 30,
    "env": _proxy.process_env(),
    "cwd": _proxy.PROCESS_CWD,
}


def _fetch(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _fetch(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_metrics_count_what_happened_and_healthz_follows_the_drain(origins, proxy):
    echo = origins(EchoOrigin, "A")
    admin = free_port()
    p = proxy(to=[echo.port], extra=["--admin", f"{HOST}:{admin}"])
    for _ in range(5):
        assert get(p.port, "/ok").status == 200
    for _ in range(2):
        assert get(p.port, "/status/503").status == 503
    with httpx.Client(http2=True, http1=False) as client:  # h2c by prior knowledge
        for _ in range(3):
            r = client.post(f"http://{HOST}:{p.port}/h2", content=b"x" * 1000)
            assert r.status_code == 200 and r.http_version == "HTTP/2"

    def counted() -> None:
        m = _samples(admin)
        base = {"group": "default"}
        assert _value(m, "proxycore_requests_total", code="2xx", method="GET", protocol="1.1",
                      **base) == 5  # fmt: skip
        assert _value(m, "proxycore_requests_total", code="5xx", method="GET", protocol="1.1",
                      **base) == 2  # fmt: skip
        assert _value(m, "proxycore_requests_total", code="2xx", method="POST", protocol="2",
                      **base) == 3  # fmt: skip
        assert _value(m, "proxycore_request_duration_seconds_count") == 10
        assert _value(m, "proxycore_request_body_bytes_total") == 3000
        assert _value(m, "proxycore_response_body_bytes_total") > 0
        backend = f"{HOST}:{echo.port}"
        assert _value(m, "proxycore_backend_requests_total", backend=backend) == 10
        assert _value(m, "proxycore_backend_errors_total", backend=backend) == 2
        assert _value(m, "proxycore_backend_up", group="default", backend=backend) == 1
        assert _value(m, "proxycore_upstream_connections_opened_total") >= 1
        assert _value(m, "proxycore_upstream_first_byte_seconds_count") == 10

    _wait_for(counted)
    assert _fetch(admin, "/healthz") == (200, b"ok\n")
    # draining: a slow request keeps the process up; /healthz says 503 at once
    slow = threading.Thread(target=lambda: get(p.port, "/delay/2", timeout=10))
    slow.start()
    time.sleep(0.3)
    p.expect_exit = True
    p.signal(signal.SIGTERM)
    _wait_for(lambda: _check(_fetch(admin, "/healthz") == (503, b"draining\n")), timeout=3)
    slow.join(10)
    assert p.proc.wait(timeout=10) == 0


def _check(ok: bool) -> None:
    assert ok


def test_workers_metrics_cover_every_worker(origins, proxy):
    echo = origins(EchoOrigin, "A")
    admin = free_port()
    p = proxy(to=[echo.port], extra=["--admin", f"{HOST}:{admin}", "--workers", "2"])
    _proxy.wait_workers_serving(p, 2)
    for _ in range(40):  # new connections: the kernel hands them to both workers
        assert get(p.port, "/w").status == 200

    def totals() -> None:
        m = _samples(admin)
        total = _value(m, "proxycore_requests_total", code="2xx", method="GET", protocol="1.1",
                       group="default")  # fmt: skip
        assert total == 40, total
        status = json.loads(_fetch(admin, "/status.json")[1])
        assert len(status["workers"]) == 2 and status["requests"] == 40

    _wait_for(totals)


def test_the_admin_listener_stays_on_loopback_unless_the_file_allows_it(tmp_path, origins):
    echo = origins(EchoOrigin, "A")
    argv = [*_proxy.python_cmd(), "-m", "proxycore", "reverse-proxy"]
    r = subprocess.run(
        [*argv, "--to", f"{HOST}:{echo.port}", "--admin", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_proxy.process_env(),
        cwd=_proxy.PROCESS_CWD,
    )
    assert r.returncode == 2
    assert "0.0.0.0 is not a loopback address" in r.stderr and "Traceback" not in r.stderr
    conf = tmp_path / "p.yaml"
    body = (
        f"listeners: [{{address: '{HOST}:{free_port()}'}}]\n"
        f"upstreams: {{app: {{backends: ['{HOST}:{echo.port}']}}}}\n"
        "routes: [{upstream: app}]\n"
    )
    conf.write_text(body + f"admin: {{address: '0.0.0.0:{free_port()}'}}\n")
    r = subprocess.run([*argv, "-c", str(conf), "-t"], **_RUN)
    assert r.returncode == 2 and "admin.address: 0.0.0.0 is not a loopback address" in r.stderr
    conf.write_text(body + "admin: {address: '0.0.0.0:9', allow_non_loopback: true}\n")
    r = subprocess.run([*argv, "-c", str(conf), "-t"], **_RUN)
    assert r.returncode == 0 and r.stdout.strip() == "configuration ok", r.stderr


def _start_with_a_dead_backend(origins, proxy) -> tuple[_proxy.ProxyProcess, int, str, str]:
    echo = origins(EchoOrigin, "A")
    dead = f"{HOST}:{free_port()}"  # nothing listens there
    admin = free_port()
    p = proxy(
        to=[echo.port],
        extra=[
            "--to", dead, "--admin", f"{HOST}:{admin}",
            "--health-check", "tcp", "--health-interval", "0.2",
        ],
    )  # fmt: skip
    return p, admin, f"{HOST}:{echo.port}", dead


def test_status_json_shows_each_backend(origins, proxy):
    p, admin, live, dead = _start_with_a_dead_backend(origins, proxy)
    for _ in range(6):
        assert get(p.port, "/s").status == 200

    def shown() -> None:
        status, body = _fetch(admin, "/status.json")
        assert status == 200
        st = json.loads(body)
        assert st["version"] and st["uptime_seconds"] >= 0 and not st["draining"]
        assert st["listeners"] == [f"{HOST}:{p.port}"]
        (group,) = st["groups"]
        backends = {b["address"]: b for b in group["backends"]}
        assert backends[dead]["state"] == "down" and backends[live]["state"] == "up"
        assert backends[live]["requests"] == 6 and backends[live]["weight"] == 1

    _wait_for(shown, timeout=8)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium (.ci/run installs Debian's)")
def test_the_status_page_in_a_real_browser(origins, proxy, backend):
    """Headless Chromium loads /status: the dead backend is shown down, the live one up, the
    numbers move between two of the page's own refreshes; a screenshot is saved."""
    from websockets.sync.client import connect

    p, admin, live, dead = _start_with_a_dead_backend(origins, proxy)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            get(p.port, "/page")
            time.sleep(0.05)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    profile = tempfile.mkdtemp(prefix="proxycore-chromium-")
    port = free_port()
    browser = subprocess.Popen(
        [
            _chromium() or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
            "--no-first-run", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
            "--window-size=1100,700", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/json/list", timeout=2) as r:
                    pages = [x for x in json.load(r) if x.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Chromium's DevTools endpoint never came up"
            time.sleep(0.2)
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            ids = iter(range(1, 10_000))

            def call(method: str, **params: object) -> dict:
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=20))
                    if msg.get("id") == n:
                        assert "error" not in msg, msg
                        return msg.get("result", {})

            def page(expr: str) -> object:
                r = call("Runtime.evaluate", expression=expr, returnByValue=True)
                return r["result"].get("value")

            call("Page.enable")
            call("Page.navigate", url=f"http://{HOST}:{admin}/status")

            def rendered() -> None:
                assert page("document.querySelectorAll('tr[data-backend]').length") == 2

            _wait_for(rendered, timeout=15)

            def states() -> None:
                found = page(
                    "Object.fromEntries([...document.querySelectorAll('tr[data-backend]')]"
                    ".map(r => [r.dataset.backend, r.dataset.state]))"
                )
                assert found == {live: "up", dead: "down"}, found

            _wait_for(states, timeout=10)
            first = page("[document.body.dataset.refreshes, document.getElementById('requests')"
                         ".textContent]")  # fmt: skip
            time.sleep(4.5)  # two refreshes later
            second = page("[document.body.dataset.refreshes, document.getElementById('requests')"
                          ".textContent]")  # fmt: skip
            assert int(second[0]) >= int(first[0]) + 2, (first, second)
            assert int(second[1]) > int(first[1]), (first, second)
            down = page("getComputedStyle(document.querySelector('td.down')).backgroundColor")
            assert down == "rgb(192, 57, 43)", down  # shown red
            shot = call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            out = ARTIFACTS / f"status-page-{backend}.png"
            out.write_bytes(base64.b64decode(shot["data"]))
            assert out.stat().st_size > 5000
    finally:
        stop.set()
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)
        t.join(5)
        os.environ.get("PROXYCORE_KEEP", "")
