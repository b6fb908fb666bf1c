"""SIGHUP reloads the configuration file (``-c FILE``), on every backend, with real proxy
processes started from a file (no --listen or timeout flags: the file decides).

- A route's backends changed: the next requests go to the new origin, while a slow response
  started before the reload completes on the old one (no connection dropped).
- A file that does not load (YAML error, a route to a missing group) is refused with one
  ERROR line and the old configuration keeps serving.
- A changed listener (and backend) is named in one WARNING line (needs an upgrade); the rest
  of the file is applied and the old listener keeps serving.
- The access log is reopened: renamed away (logrotate), the next lines go to a new file.
- So is the error log (``error_log``): standard error goes to a new file at the path.
- A changed read timeout takes effect; a health check added starts probing, removed stops.
- With ``--workers 2`` both workers reload.
- ``run APP -c FILE``: a new instance gets the new sections.
- A TLS listener's certificates are re-read (new handshakes), a broken one refuses the reload.
- Without a file (flags only), SIGHUP still reopens the access log.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.client import Conn, get
from conformance.origins import HOST, EchoOrigin, SlowOrigin
from conformance.proxy import ProxyProcess, _start, python_cmd, wait_workers_serving
from conformance.test_tls import peer_cn, pki, tls_get

__all__ = ["pki"]  # the fixture, shared with test_tls.py

RELOADED = "proxycore config reloaded"
REFUSED = "proxycore config reload refused"


def conf_for(port: int, origin: int, backend: str, **server: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "server": {"backend": backend, "connect_timeout": 2, "read_timeout": 5, **server},
        "listeners": [{"address": f"{HOST}:{port}"}],
        "upstreams": {"app": {"backends": [f"{HOST}:{origin}"]}},
        "routes": [{"path": "/", "upstream": "app"}],
    }


class Served:
    """A proxy started from ``path``; ``conf`` is what was written there last."""

    def __init__(self, p: ProxyProcess, path: Path, conf: dict[str, Any]) -> None:
        self.p = p
        self.path = path
        self.conf = conf

    @property
    def port(self) -> int:
        return self.p.port

    def write(self, conf: dict[str, Any] | str) -> None:
        if isinstance(conf, dict):
            self.conf = conf
        text = conf if isinstance(conf, str) else yaml.safe_dump(conf, sort_keys=False)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def reload(self, expect: str = RELOADED, count: int = 1) -> None:
        """SIGHUP, and wait for ``count`` more ``expect`` lines on stdout."""
        before = self.p.stdout().count(expect)
        self.p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.p.stdout().count(expect) < before + count:
            self.p.check_alive()
            assert time.monotonic() < deadline, f"no {expect!r}\n" + self.p.report()
            time.sleep(0.02)


@pytest.fixture
def served(backend, proxy, tmp_path):
    """``served(origin_port, **server_fields)`` starts ``proxycore reverse-proxy -c FILE``
    (the listener in the file, with ``listener``'s fields); ``extra``: more flags."""

    def start(
        origin: int,
        extra: list[str] | None = None,
        listener: dict[str, Any] | None = None,
        **server: Any,
    ) -> Served:
        path = tmp_path / "proxycore.yaml"
        holder: dict[str, Any] = {}

        def argv(port: int) -> list[str]:
            conf = conf_for(port, origin, backend, **server)
            conf["listeners"][0].update(listener or {})
            holder["conf"] = conf
            path.write_text(yaml.safe_dump(conf, sort_keys=False))
            return [
                *python_cmd(),
                "-m",
                "proxycore",
                "reverse-proxy",
                "-c",
                str(path),
                *(extra or []),
            ]

        p = _start(argv, backend, None)
        proxy.started.append(p)
        return Served(p, path, holder["conf"])

    return start


def test_new_requests_go_to_the_new_origin_while_a_slow_one_completes(served, origins) -> None:
    old = origins(SlowOrigin, head_delay=0.2, chunk_delay=0.4, chunks=3, piece=1000, name="old")
    new = origins(EchoOrigin, name="new")
    s = served(old.port)
    slow = Conn(s.port, timeout=10)
    result: dict[str, Any] = {}

    def fetch() -> None:
        slow.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        result["r"] = slow.read_response()

    t = threading.Thread(target=fetch)
    t.start()
    deadline = time.monotonic() + 5
    while not old.requests and time.monotonic() < deadline:  # the slow exchange has begun
        time.sleep(0.01)
    conf = dict(s.conf)
    conf["upstreams"] = {"app": {"backends": [f"{HOST}:{new.port}"]}}
    s.write(conf)
    s.reload()
    for _ in range(4):
        r = get(s.port, "/after")
        assert r.status == 200 and r.header("X-Origin") == "new", r
    t.join(10)
    r = result["r"]
    assert r.status == 200 and r.complete and len(r.body) == 3000, r
    assert r.header("X-Origin") == "old"
    slow.close()


def test_a_bad_file_is_refused_and_the_old_configuration_serves(served, origins) -> None:
    echo = origins(EchoOrigin, name="first")
    s = served(echo.port)
    good = s.conf
    s.write("version: 1\nserver: [\n")
    s.reload(REFUSED)
    err = s.p.stderr()
    assert "configuration reload refused, keeping the current configuration: " in err
    assert f"{s.path}:" in err and "YAML" in err
    assert get(s.port, "/").header("X-Origin") == "first"
    bad = dict(good)
    bad["routes"] = [{"path": "/", "upstream": "missing"}]
    s.write(bad)
    s.reload(REFUSED)
    assert "missing" in s.p.stderr().splitlines()[-1]
    assert get(s.port, "/").header("X-Origin") == "first"
    assert "Traceback" not in s.p.stderr()


def test_a_changed_listener_needs_an_upgrade(served, origins, backend) -> None:
    first = origins(EchoOrigin, name="first")
    second = origins(EchoOrigin, name="second")
    s = served(first.port)
    conf = dict(s.conf)
    conf["listeners"] = [{"address": f"{HOST}:1"}]
    conf["server"] = {**conf["server"], "backend": "threads" if backend != "threads" else "trio"}
    conf["upstreams"] = {"app": {"backends": [f"{HOST}:{second.port}"]}}
    s.write(conf)
    s.reload()
    (line,) = [x for x in s.p.stderr().splitlines() if "needs an upgrade" in x]
    assert "WARNING" in line and f"(proxycore reverse-proxy -c {s.path} -u)" in line
    assert line.endswith("not reloaded: listeners, backend"), line
    r = get(s.port, "/")  # the listener it was started with, the new routes
    assert r.status == 200 and r.header("X-Origin") == "second"


def test_the_access_log_is_reopened_after_a_rename(served, origins, tmp_path) -> None:
    echo = origins(EchoOrigin)
    log = tmp_path / "access.log"
    s = served(echo.port, access_log=str(log))
    assert get(s.port, "/one").status == 200
    deadline = time.monotonic() + 5
    while "/one" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, s.p.report()
        time.sleep(0.02)
    log.rename(tmp_path / "access.log.1")
    s.reload()
    assert get(s.port, "/two").status == 200
    deadline = time.monotonic() + 5
    while not log.exists() or "/two" not in log.read_text():
        assert time.monotonic() < deadline, s.p.report()
        time.sleep(0.02)
    assert "/two" not in (tmp_path / "access.log.1").read_text()


def test_a_changed_read_timeout_takes_effect(served, origins) -> None:
    slow = origins(SlowOrigin, head_delay=1.0, chunks=1, piece=10)
    s = served(slow.port, read_timeout=5)
    assert get(s.port, "/", timeout=8).status == 200
    conf = dict(s.conf)
    conf["server"] = {**conf["server"], "read_timeout": 0.3}
    s.write(conf)
    s.reload()
    assert get(s.port, "/", timeout=8).status == 504


def test_a_health_check_added_probes_and_removed_stops(served, origins) -> None:
    echo = origins(EchoOrigin)
    s = served(echo.port)

    def probes() -> int:
        return sum(1 for r in list(echo.requests) if r.path == "/healthz")

    conf = dict(s.conf)
    conf["upstreams"] = {
        "app": {
            "backends": [f"{HOST}:{echo.port}"],
            "health_check": {"check": "http:/healthz", "interval": 0.1},
        }
    }
    s.write(conf)
    s.reload()
    deadline = time.monotonic() + 5
    while probes() < 3:
        assert time.monotonic() < deadline, s.p.report()
        time.sleep(0.02)
    conf["upstreams"] = {"app": {"backends": [f"{HOST}:{echo.port}"]}}
    s.write(conf)
    s.reload()
    time.sleep(0.2)  # a probe already on its way may still arrive
    n = probes()
    time.sleep(0.5)
    assert probes() == n
    assert get(s.port, "/").status == 200


def two_workers_reloaded(served, origins) -> Served:
    """``--workers 2`` started on origin "first", then the file pointed at origin "second"
    and reloaded (both workers said so)."""
    first = origins(EchoOrigin, name="first")
    second = origins(EchoOrigin, name="second")
    s = served(first.port, extra=["--workers", "2"])
    wait_workers_serving(s.p, 2)
    conf = dict(s.conf)
    conf["upstreams"] = {"app": {"backends": [f"{HOST}:{second.port}"]}}
    s.write(conf)
    s.reload(count=2)
    return s


def test_both_workers_reload(served, origins) -> None:
    s = two_workers_reloaded(served, origins)
    # SO_REUSEPORT spreads new connections over both workers: all of them use the new route
    assert {get(s.port, "/").header("X-Origin") for _ in range(16)} == {"second"}


def test_run_app_gets_its_new_section(backend, origins, proxy, tmp_path) -> None:
    """``proxycore run APP -c FILE``: a new instance of the class gets the new sections
    (Proxy.configure); a section it refuses is refused like a bad file."""
    echo = origins(EchoOrigin, name="up")
    path = tmp_path / "app.yaml"

    def argv(port: int) -> list[str]:
        conf = {
            "server": {"backend": backend},
            "listeners": [{"address": f"{HOST}:{port}"}],
            "greeting": {"text": "hi there", "upstream": echo.port},
        }
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
        app = "conformance.apps:ConfiguredApp"
        return [*python_cmd(), "-m", "proxycore", "run", app, "-c", str(path)]

    p = _start(argv, backend, None)
    proxy.started.append(p)
    s = Served(p, path, yaml.safe_load(path.read_text()))
    assert get(s.port, "/hello").body == b"hi there"
    s.write({**s.conf, "greeting": {"text": "hello again", "upstream": echo.port}})
    s.reload()
    assert get(s.port, "/hello").body == b"hello again"
    s.write({**s.conf, "greeting": {"text": 5, "upstream": echo.port}})
    s.reload(REFUSED)
    assert "greeting.text: expected a string" in s.p.stderr()
    assert get(s.port, "/hello").body == b"hello again"
    assert get(s.port, "/x").header("X-Origin") == "up"


def test_certificates_are_reloaded_and_a_broken_one_refused(served, origins, pki, tmp_path):
    import shutil

    echo = origins(EchoOrigin)
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki["default.pem"], cert)
    shutil.copy(pki["default.key"], key)
    s = served(echo.port, listener={"tls": {"cert": str(cert), "key": str(key)}})
    nocheck = pki.client_context()
    nocheck.check_hostname = False
    status, _, old = tls_get(s.port, pki.client_context())
    assert status == 200 and peer_cn(nocheck, s.port, "x.test") == "localhost"
    shutil.copy(pki["other.pem"], cert)
    shutil.copy(pki["other.key"], key)
    s.reload()
    assert "proxycore tls reloaded" in s.p.stdout()
    assert peer_cn(nocheck, s.port, "x.test") == "other.test"  # new handshakes: new cert
    old.close()
    cert.write_text("garbage")
    s.reload(REFUSED)
    assert "configuration reload refused" in s.p.stderr() and "PEM" in s.p.stderr()
    assert peer_cn(nocheck, s.port, "x.test") == "other.test"


def test_the_error_log_is_reopened(served, origins, tmp_path) -> None:
    echo = origins(EchoOrigin)
    log = tmp_path / "error.log"
    s = served(echo.port, error_log=str(log))
    log.rename(tmp_path / "error.log.1")
    s.reload()
    deadline = time.monotonic() + 5
    while not log.exists() or "configuration reloaded" not in log.read_text():
        assert time.monotonic() < deadline, s.p.report()
        time.sleep(0.02)
    assert "listening on" in (tmp_path / "error.log.1").read_text()
    assert "listening on" not in log.read_text()


def test_without_a_file_sighup_reopens_the_access_log(proxy, origins, tmp_path) -> None:
    echo = origins(EchoOrigin)
    log = tmp_path / "access.log"
    p = proxy(to=[echo.port], extra=["--access-log", str(log)])
    s = Served(p, tmp_path / "unused.yaml", {})
    assert get(p.port, "/one").status == 200
    deadline = time.monotonic() + 5
    while "/one" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, p.report()
        time.sleep(0.02)
    log.rename(tmp_path / "access.log.1")
    s.reload("proxycore tls reloaded")
    assert get(p.port, "/two").status == 200
    deadline = time.monotonic() + 5
    while not log.exists() or "/two" not in log.read_text():
        assert time.monotonic() < deadline, p.report()
        time.sleep(0.02)
    assert RELOADED not in p.stdout()


def test_a_worker_restarted_after_a_reload_serves_the_reloaded_configuration(
    served, origins
) -> None:
    s = two_workers_reloaded(served, origins)
    children = Path(f"/proc/{s.p.proc.pid}/task/{s.p.proc.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while s.p.stdout().count(RELOADED) < 3:  # the replacement reloads once it serves
        s.p.check_alive()
        assert time.monotonic() < deadline, s.p.report()
        time.sleep(0.05)
    assert {get(s.port, "/").header("X-Origin") for _ in range(16)} == {"second"}
