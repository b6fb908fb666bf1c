"""The configuration file (``-c FILE``) on every backend, with real proxy processes.

- examples/proxycore.yaml, with its addresses pointed at test origins, serves traffic through
  two routes to its two upstream groups, answers its ``return:`` routes itself, and 404s what
  no route matches; the command line's --listen/--backend/timeouts override the file's.
- ``proxycore run module:Class -c FILE`` takes the listeners from the file and hands the
  class its own section (Proxy.configure).
- Bad input: a missing file, a YAML syntax error, a wrong type, an unknown field, a route to a
  missing group, a certificate that does not load, and several problems at once: exit status
  2, one line per problem naming the file's line, never a traceback; with --workers 2 too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conformance.client import get
from conformance.origins import HOST, EchoOrigin, free_port
from conformance.proxy import PROCESS_CWD, ROOT, process_env, python_cmd
from conformance.test_tls import TlsEchoOrigin, origin_context, peer_cn, pki, tls_get

__all__ = ["pki"]  # the fixture, shared with test_tls.py

EXAMPLE = ROOT / "examples" / "proxycore.yaml"


def example_for(api: list[int], web: int) -> dict:
    """The example file with its backends on the test origins."""
    conf = yaml.safe_load(EXAMPLE.read_text())
    conf["upstreams"]["api"]["backends"] = [
        {"address": f"{HOST}:{api[0]}", "weight": 2},
        f"{HOST}:{api[1]}",
    ]
    conf["upstreams"]["web"]["backends"] = [f"{HOST}:{web}"]
    return conf


def write(tmp_path: Path, conf: dict | str, name: str = "proxycore.yaml") -> str:
    path = tmp_path / name
    path.write_text(conf if isinstance(conf, str) else yaml.safe_dump(conf, sort_keys=False))
    return str(path)


def test_example_routes_traffic_to_two_groups(backend, origins, proxy, tmp_path) -> None:
    api = [origins(EchoOrigin, name="api1"), origins(EchoOrigin, name="api2")]
    web = origins(EchoOrigin, name="web")
    path = write(tmp_path, example_for([o.port for o in api], web.port))
    p = proxy(extra=["-c", path])  # --listen and --backend given as flags override the file
    for user in ("alice", "bob", "carol", "dave"):
        r = get(p.port, "/v1/items", [("Host", "a.api.example.com"), ("X-User", user)])
        assert r.status == 200 and r.header("X-Origin") in ("api1", "api2"), r
        again = get(p.port, "/v1/other", [("Host", "b.api.example.com"), ("X-User", user)])
        assert again.header("X-Origin") == r.header("X-Origin")  # consistent hash per user
    r = get(p.port, "/api/x?q=1", [("Host", "www.example.com"), ("X-User", "u")])
    assert r.header("X-Origin") in ("api1", "api2")
    r = get(p.port, "/index.html", [("Host", "www.example.com")])
    assert r.status == 200 and r.header("X-Origin") == "web"
    assert web.requests[-1].path == "/index.html"
    r = get(p.port, "/old/page", [("Host", "old.example.com")])
    assert r.status == 301 and r.header("Location") == "https://www.example.com/"
    r = get(p.port, "/admin/users", [("Host", "www.example.com")])
    assert r.status == 403
    assert sum(o.request_count for o in api) >= 9


def test_run_gets_its_section(backend, origins, proxy, tmp_path) -> None:
    echo = origins(EchoOrigin, name="up")
    conf = {
        "server": {"backend": "asyncio"},
        "greeting": {"text": "hi there", "upstream": echo.port},
    }
    p = proxy(mode="run", app="conformance.apps:ConfiguredApp", extra=["-c", write(tmp_path, conf)])
    r = get(p.port, "/hello")
    assert r.status == 200 and r.body == b"hi there"
    r = get(p.port, "/x")
    assert r.status == 200 and r.header("X-Origin") == "up"


def test_tls_listener_sni_and_mtls_to_the_origin_from_the_file(
    backend, origins, proxy, pki, tmp_path
) -> None:
    strict = origins(TlsEchoOrigin, origin_context(pki, client_ca=True), name="strict")
    conf = {
        "listeners": [
            {
                "address": f"{HOST}:8443",  # replaced by the --listen the fixture gives
                "tls": {
                    "cert": pki["default.pem"],
                    "key": pki["default.key"],
                    "sni_certs": {
                        "other.test": {"cert": pki["other.pem"], "key": pki["other.key"]},
                        "*.wild.test": {"cert": pki["wild.pem"], "key": pki["wild.key"]},
                    },
                },
            }
        ],
        "upstreams": {
            "secure": {
                "backends": [f"https://{HOST}:{strict.port}"],
                "tls": {
                    "ca": pki["ca.pem"],
                    "sni": "origin.test",
                    "cert": pki["client.pem"],
                    "key": pki["client.key"],
                },
            }
        },
        "routes": [{"upstream": "secure"}],
    }
    p = proxy(extra=["-c", write(tmp_path, conf)])
    status, body, s = tls_get(p.port, pki.client_context(), path="/through")
    s.close()
    assert status == 200 and body["target"] == "/through"
    cn = dict(x[0] for x in strict.client_certs[-1]["subject"])["commonName"]
    assert cn == "client-1"  # the group's client certificate reached the origin
    ctx = pki.client_context()
    assert peer_cn(ctx, p.port, "other.test") == "other.test"
    assert peer_cn(ctx, p.port, "a.wild.test") == "*.wild.test"
    assert peer_cn(ctx, p.port, "localhost") == "localhost"


def test_daemon_fields_from_the_file(backend, origins, tmp_path) -> None:
    """``daemon: true`` with ``pid_file`` and ``error_log`` in the file: the command returns 0
    once the daemon serves, the pid file names it, SIGTERM stops it and removes the file."""
    import os
    import signal
    import time

    echo = origins(EchoOrigin, name="behind-daemon")
    port = free_port()
    pid_file, error_log = tmp_path / "pc.pid", tmp_path / "error.log"
    conf = {
        "server": {
            "daemon": True,
            "pid_file": str(pid_file),
            "error_log": str(error_log),
            "backend": backend,
        },
        "listeners": [{"address": f"{HOST}:{port}"}],
        "upstreams": {"app": {"backends": [f"{HOST}:{echo.port}"]}},
        "routes": [{"upstream": "app"}],
    }
    path = write(tmp_path, conf)
    r = subprocess.run(
        [*python_cmd(), "-m", "proxycore", "reverse-proxy", "-c", path],
        cwd=PROCESS_CWD,
        env=process_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = int(pid_file.read_text()) if pid_file.exists() else 0
    try:
        assert r.returncode == 0 and r.stdout == r.stderr == "", r
        assert pid and os.getsid(pid) != os.getsid(0)  # detached
        resp = get(port, "/from-the-daemon")
        assert resp.status == 200 and resp.header("X-Origin") == "behind-daemon"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_file.exists(), error_log.read_text()
        assert "shutting down (graceful)" in error_log.read_text()
    finally:
        if pid and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def _run_all(argvs: list[list[str]], timeout: float = 60) -> list[tuple[int, str, str]]:
    procs = [
        subprocess.Popen(
            argv,
            cwd=PROCESS_CWD,
            env=process_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
            raise AssertionError(f"did not exit within {timeout}s: {p.args}\n{e}") from None
        out.append((p.returncode, o, e))
    return out


GOOD = {
    "listeners": [{"address": f"{HOST}:0"}],
    "upstreams": {"api": {"backends": [f"{HOST}:9"]}},
    "routes": [{"upstream": "api"}],
}


def bad_files(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (file, the text each expected line holds: one line per entry)."""
    bad_cert = tmp_path / "bad.pem"
    bad_cert.write_text("not a certificate\n")
    listen = f"{HOST}:{free_port()}"
    base = {**GOOD, "listeners": [{"address": listen}]}
    f = {}
    f["missing"] = (str(tmp_path / "nope.yaml"), ["nope.yaml: cannot read the configuration file"])
    f["syntax"] = (
        write(tmp_path, "routes:\n  - upstream: [api\n  - x: 1\n", "syntax.yaml"),
        ["syntax.yaml:3:", "YAML syntax error"],
    )
    f["type"] = (
        write(tmp_path, {"server": {"threads": "x"}, **base}, "type.yaml"),
        ['type.yaml:2: server.threads: expected a whole number from 1 to 256, got "x"'],
    )
    f["unknown"] = (
        write(tmp_path, {"server": {"conect_timeout": 3}, **base}, "unknown.yaml"),
        ["unknown.yaml:2: server.conect_timeout: unknown field (did you mean connect_timeout?)"],
    )
    f["group"] = (
        write(tmp_path, {**base, "routes": [{"upstream": "nope"}]}, "group.yaml"),
        ["routes[0].upstream: no upstream group 'nope' (api)"],
    )
    tls = {"cert": str(bad_cert), "key": str(bad_cert)}
    f["cert"] = (
        write(tmp_path, {**base, "listeners": [{"address": listen, "tls": tls}]}, "cert.yaml"),
        ["cert.yaml:", "listeners[0].tls:", "bad.pem"],
    )
    several = {
        "server": {"threads": 0, "bogus": True},
        **base,
        "upstreams": {"api": {"backends": [{"address": f"{HOST}:9", "weight": "x"}]}},
    }
    f["several"] = (
        write(tmp_path, several, "several.yaml"),
        [
            "several.yaml:2: server.threads: expected a whole number from 1 to 256, got 0",
            "several.yaml:3: server.bogus: unknown field",
            'upstreams.api.backends[0].weight: expected a positive integer, got "x"',
        ],
    )
    return f


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_files_are_one_line_per_problem(backend, tmp_path, workers) -> None:
    files = bad_files(tmp_path)
    py = [*python_cmd(), "-m", "proxycore", "reverse-proxy"]
    argvs = [
        [*py, "-c", path, "--backend", backend, "--workers", workers] for path, _ in files.values()
    ]
    for (name, (path, expected)), (code, out, err) in zip(
        files.items(), _run_all(argvs), strict=True
    ):
        what = f"{name}: {path}\n--- stdout ---\n{out}--- stderr ---\n{err}"
        assert code == 2, what
        assert "Traceback" not in err + out, what
        lines = err.splitlines()
        if name in ("syntax", "cert"):  # one line holding every piece
            assert len(lines) == 1 and all(t in lines[0] for t in expected), what
        else:
            assert len(lines) == len(expected), what
            for line, text in zip(lines, expected, strict=True):
                assert line.startswith("proxycore reverse-proxy: error: ") and text in line, what


def test_http2_switches_from_the_file(backend, origins, proxy, tmp_path) -> None:
    """The example file serves HTTP/1.1 and h2c on one port; ``h2c: false`` on its listener
    makes the HTTP/2 connection preface a 505, as ``--no-h2c`` does."""
    import shutil

    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    api = [origins(EchoOrigin, name="api1"), origins(EchoOrigin, name="api2")]
    web = origins(EchoOrigin, name="web")
    conf = example_for([o.port for o in api], web.port)
    on = proxy(extra=["-c", write(tmp_path, conf)])
    conf["listeners"][0]["h2c"] = False
    off = proxy(extra=["-c", write(tmp_path, conf, "off.yaml")])
    for p, version in ((on, "2"), (off, None)):
        r = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
             "%{http_code} %{http_version}", "-H", "Host: www.example.com",
             f"http://{HOST}:{p.port}/index.html"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if version is not None:
            assert r.stdout == "200 2", r
        else:
            assert not r.stdout.startswith("200"), r  # the preface is refused (505), no h2
        assert get(p.port, "/index.html", [("Host", "www.example.com")]).status == 200
