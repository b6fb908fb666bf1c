"""Start-up errors exit with status 2 and one clear line on stderr, never a traceback.

Each case runs the real ``python -m proxycore ...`` (or a user's script calling
``proxycore.run``) on the backend under test and checks the exit status, that stderr is exactly
one line naming the address (or flag, or package) and the reason, that no traceback was
printed and that nothing claimed to be serving. The cases of one test run side by side (they
only fail at start-up, so they are short and independent).

- a listen address in use, unresolvable, not of this host, or a privileged port without
  CAP_NET_BIND_SERVICE (the capability dropped with ``setpriv``), for reverse-proxy, run, demo
  and ``proxycore.run()`` from a script, and with ``--workers 2``;
- ``--backend uvloop|gevent|trio`` without its package: the import is blocked by a meta path
  finder installed from a ``sitecustomize`` on PYTHONPATH, the real import machinery;
- ``--lb hash|consistent`` without ``--hash-key``;
- and what must still work: the demo's banner comes once its port is bound (and names the
  port actually bound), asyncio/threads start without uvloop/gevent/trio installed, and a
  worker that dies after serving is restarted with a growing back-off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conformance.client import get
from conformance.origins import HOST, free_port
from conformance.proxy import (
    PROCESS_CWD,
    process_env,
    python_cmd,
    start_proxy,
    wait_workers_serving,
)

EXTRA_PACKAGES = ("uvloop", "gevent", "trio")
BLOCKER = '''\
import os
import sys

_BLOCKED = set(os.environ.get("PROXYCORE_TEST_BLOCK", "").split(","))


class _Blocker:
    """Makes the named top-level packages (and their submodules) impossible to import."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''
SCRIPT = """\
import sys
import proxycore


class App(proxycore.Proxy):
    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", 9)


proxycore.run(App(), [sys.argv[1]], backend=sys.argv[2])
print("run returned", flush=True)
"""


def _env(**extra: str) -> dict[str, str]:
    return process_env(extra)


def _run_all(argvs: list[list[str]], env: dict[str, str] | None = None, timeout: float = 30):
    """Run every command at once; (returncode, stdout, stderr) of each, in order."""
    procs = [
        subprocess.Popen(
            argv,
            cwd=PROCESS_CWD,
            env=env or _env(),
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


def _check_one_line(result, *must_contain: str | tuple[str, ...], argv=None) -> str:
    """Status 2, one stderr line holding every ``must_contain`` (a tuple: any one of them),
    no traceback, nothing that says it serves. Returns the line."""
    code, out, err = result
    what = f"{argv}\n--- stdout ---\n{out}--- stderr ---\n{err}"
    assert code == 2, what
    assert "Traceback" not in err and "Traceback" not in out, what
    lines = err.splitlines()
    assert len(lines) == 1, what
    for text in must_contain:
        options = text if isinstance(text, tuple) else (text,)
        assert any(t in lines[0] for t in options), (text, what)
    assert "proxycore ready" not in out and "curl" not in out, what
    return lines[0]


@pytest.fixture(scope="module")
def busy_port():
    """A port with a listener on it (not SO_REUSEPORT: nothing else can bind it)."""
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _modes(backend: str, listen: str) -> list[list[str]]:
    """The same --listen for reverse-proxy, run and demo."""
    py = [*python_cmd(), "-m", "proxycore"]
    common = ["--listen", listen, "--backend", backend]
    return [
        [*py, "reverse-proxy", "--to", f"{HOST}:9", *common],
        [*py, "run", "conformance.apps:HeaderApp", *common],
        [*py, "demo", *common],
        [*python_cmd(), "-c", SCRIPT, listen, backend],
    ]


# the resolver's words for a name that does not resolve (the second: no DNS server reachable)
UNRESOLVED = ("name or service not known", "temporary failure in name resolution")
# (--listen, words in the message); "{busy}" is the busy port
BAD_LISTEN = [
    ("127.0.0.1:{busy}", ("address already in use",)),
    ("no-such-host.invalid:8080", UNRESOLVED),
    ("999.1.2.3:8080", UNRESOLVED),
    ("192.0.2.1:8080", ("cannot assign requested address",)),
]


def test_bad_listen_address_exits_2_with_one_line(backend, busy_port):
    """Every reason with reverse-proxy; run, demo and a script's ``proxycore.run()`` with a port
    in use (the binding code is one for all of them)."""
    cases = []
    for listen, reasons in BAD_LISTEN:
        listen = listen.format(busy=busy_port)
        modes = _modes(backend, listen)
        every_mode = listen.endswith(f":{busy_port}")
        cases += [(argv, listen, reasons) for argv in (modes if every_mode else modes[:1])]
    results = _run_all([argv for argv, _, _ in cases], env=_env(ORIGIN_PORT="9"))
    for (argv, listen, reasons), result in zip(cases, results, strict=True):
        line = _check_one_line(
            result, tuple(f"cannot listen on {listen}: {r}" for r in reasons), argv=argv
        )
        script = argv[1] == "-c"
        assert line.startswith("proxycore: error: " if script else "proxycore "), line


def test_privileged_port_without_permission_exits_2(backend):
    """Port 1 with CAP_NET_BIND_SERVICE dropped (root keeps every other capability)."""
    wrap: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is not installed")
        wrap = [setpriv, "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]
    unprivileged = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if unprivileged.exists() and int(unprivileged.read_text()) <= 1:
        pytest.skip("this kernel lets anyone bind port 1 (ip_unprivileged_port_start)")
    listen = f"{HOST}:1"
    argvs = [[*wrap, *argv] for argv in _modes(backend, listen)[::2]]  # reverse-proxy, demo
    for argv, result in zip(argvs, _run_all(argvs), strict=True):
        _check_one_line(
            result,
            f"cannot listen on {listen}: permission denied",
            "ports below 1024 need root or CAP_NET_BIND_SERVICE",
            argv=argv,
        )


def test_second_listen_address_failing_exits_2(backend, busy_port):
    """All or nothing: the first address binds, the second cannot; nothing keeps serving."""
    good = f"{HOST}:{free_port()}"
    bad = f"{HOST}:{busy_port}"
    argv = [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--to", f"{HOST}:9"]
    argv += ["--listen", good, "--listen", bad, "--backend", backend]
    (result,) = _run_all([argv])
    _check_one_line(result, f"cannot listen on {bad}: address already in use", argv=argv)


def _proxycore_processes(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "proxycore" in cmdline and marker in cmdline:
                pids.append(int(proc.name))
    return pids


def test_workers_failing_at_startup_stop_the_supervisor(backend, busy_port):
    listen = f"{HOST}:{busy_port}"
    argv = [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--to", f"{HOST}:9"]
    argv += ["--listen", listen, "--backend", backend, "--workers", "2"]
    t0 = time.monotonic()
    (result,) = _run_all([argv], timeout=20)
    took = time.monotonic() - t0
    _check_one_line(result, f"cannot listen on {listen}: address already in use", argv=argv)
    assert took < 10, f"the supervisor took {took:.1f}s to give up"
    assert _proxycore_processes(listen) == [], "a worker outlived its supervisor"


def test_worker_dying_after_serving_is_restarted_with_back_off(backend, echo):
    """Killed once: back after 0.1 s; its replacement killed at once: after 0.2 s."""
    p = start_proxy(backend, to=[echo.port], extra=["--workers", "2"])
    try:
        wait_workers_serving(p, 2)
        other, victim = sorted(_children(p.pid))
        for delay in ("0.1s", "0.2s"):
            assert get(p.port, "/before").status == 200
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 8
            while True:
                kids = _children(p.pid)
                if f"restarting it in {delay}" in p.stderr() and len(kids) == 2:
                    if victim not in kids:
                        break
                assert time.monotonic() < deadline, p.report()
                time.sleep(0.05)
            assert other in kids, (other, kids)
            (victim,) = kids - {other}
        assert p.alive(), p.report()
        for i in range(10):
            assert get(p.port, f"/after{i}").status == 200
        p.signal(signal.SIGTERM)
        assert p.proc.wait(10) == 0, p.report()
        assert "Traceback" not in p.stderr(), p.report()
    finally:
        p.stop()
        p.close_files()


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids.update(int(x) for x in (task / "children").read_text().split())
    return kids


@pytest.fixture(scope="module")
def blocker(tmp_path_factory):
    d = tmp_path_factory.mktemp("block-imports")
    (d / "sitecustomize.py").write_text(BLOCKER)
    return d


def test_backend_without_its_package_names_the_extra(backend, blocker, echo):
    env = _env(PROXYCORE_TEST_BLOCK=",".join(EXTRA_PACKAGES))
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env["PYTHONPATH"]])
    if backend not in EXTRA_PACKAGES:  # needs none of them: starts and serves without them
        p = start_proxy(backend, to=[echo.port], env={"PYTHONPATH": env["PYTHONPATH"],
                                                     "PROXYCORE_TEST_BLOCK": env["PROXYCORE_TEST_BLOCK"]})  # fmt: skip
        try:
            assert get(p.port, "/no-extras").status == 200
        finally:
            p.stop()
            p.close_files()
        return
    py = [*python_cmd(), "-m", "proxycore"]
    listen = f"{HOST}:{free_port()}"
    argvs = [
        [*py, "reverse-proxy", "--to", f"{HOST}:9", "--listen", listen, "--backend", backend],
        [*py, "demo", "--listen", listen, "--backend", backend],
        [*py, "run", "conformance.apps:HeaderApp", "--listen", listen, "--backend", backend,
         "--workers", "2"],
        [*python_cmd(), "-c", SCRIPT, listen, backend],
    ]  # fmt: skip
    env["ORIGIN_PORT"] = "9"
    for argv, result in zip(argvs, _run_all(argvs, env=env), strict=True):
        _check_one_line(result, f"the {backend} backend", f'pip install "proxycore[{backend}]"',
                        argv=argv)  # fmt: skip


def test_hash_selector_without_hash_key_exits_2(backend):
    argvs = []
    for lb in ("hash", "consistent"):
        argv = [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--to", f"{HOST}:9"]
        argv += ["--to", f"{HOST}:10", "--lb", lb, "--backend", backend]
        argvs.append([*argv, "--listen", f"{HOST}:{free_port()}"])
    for argv, result in zip(argvs, _run_all(argvs), strict=True):
        _check_one_line(result, f"--lb {argv[argv.index('--lb') + 1]}", "--hash-key", argv=argv)


def test_demo_banner_comes_once_listening(backend):
    """``--listen 127.0.0.1:0``: the banner names the port the kernel picked, and it answers."""
    argv = [*python_cmd(), "-m", "proxycore", "demo", "--listen", f"{HOST}:0"]
    argv += ["--backend", backend]
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"demo-{os.getpid()}-{backend}.out"
    with open(out_path, "w+") as out:
        proc = subprocess.Popen(
            argv, cwd=PROCESS_CWD, env=_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            port = None
            while port is None:
                assert proc.poll() is None, f"demo exited with {proc.returncode}"
                assert time.monotonic() < deadline, out_path.read_text()
                for line in out_path.read_text().splitlines():
                    if line.startswith("    curl -i http://"):
                        port = int(line.split(f"http://{HOST}:")[1].split("/")[0])
                        break
                time.sleep(0.05)
            assert port != 0
            r = get(port, "/hello")
            assert r.status == 200 and r.json()["origin"] == "demo", r
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out_path.unlink()


def _without_dac_override() -> list[str]:
    """A command prefix under which file permissions apply (root bypasses them through
    CAP_DAC_OVERRIDE, dropped with ``setpriv``); skips where that is impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", caps, "--inh-caps", caps]


def test_unusable_record_dir_exits_2_before_binding(backend, busy_port, tmp_path):
    """``--record DIR`` that cannot be used: an existing file, a missing parent, a path through
    a file, a directory without write permission (and one that cannot be created there). The
    listen address is a busy port: the record directory's line comes first, so it was checked
    before binding; with reverse-proxy, run, ``--workers 2`` and ``proxycore.run(record=)``."""
    afile = tmp_path / "afile"
    afile.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "existing").mkdir()
    locked.chmod(0o555)
    (locked / "existing").chmod(0o555)
    cases = [
        (str(afile), "it exists and is not a directory"),
        (str(tmp_path / "missing" / "traces"),
         f"its parent directory {str(tmp_path / 'missing')!r} does not exist"),
        (str(afile / "traces"), "cannot create it (not a directory)"),
        (str(locked / "traces"), "cannot create it (permission denied)"),
        (str(locked / "existing"), "cannot create files in it (permission denied)"),
    ]  # fmt: skip
    listen = f"{HOST}:{busy_port}"
    py = [*python_cmd(), "-m", "proxycore"]
    common = ["--listen", listen, "--backend", backend]
    record_script = SCRIPT.replace(
        "backend=sys.argv[2])", "backend=sys.argv[2], record=sys.argv[3])"
    )
    argvs, expected = [], []
    for path, reason in cases:
        wrap = _without_dac_override() if "permission" in reason else []
        argvs += [
            [*wrap, *py, "reverse-proxy", "--to", f"{HOST}:9", *common, "--record", path],
            [*wrap, *py, "run", "conformance.apps:HeaderApp", *common, "--record", path],
            [*wrap, *py, "reverse-proxy", "--to", f"{HOST}:9", *common, "--record", path,
             "--workers", "2"],
            [*wrap, *python_cmd(), "-c", record_script, listen, backend, path],
        ]  # fmt: skip
        expected += [f"cannot record traces into {path!r}: {reason}"] * 4
    results = _run_all(argvs, env=_env(ORIGIN_PORT="9"))
    for argv, line, result in zip(argvs, expected, results, strict=True):
        got = _check_one_line(result, line, argv=argv)
        assert got.endswith(line), (got, line)
        assert got.startswith("proxycore: error: " if "-c" in argv else "proxycore "), got
    assert not (locked / "traces").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "locked"]


def test_record_dir_is_created_and_filled(backend, echo, tmp_path):
    """What still works: a missing DIR (its parent existing) is created, and traces land in it."""
    from conformance.proxy import start_proxy as start

    traces = tmp_path / "traces"
    p = start(backend, to=[echo.port], extra=["--record", str(traces)])
    try:
        assert get(p.port, "/recorded").status == 200
        deadline = time.monotonic() + 5
        while not list(traces.glob("*.pctrace")):
            assert time.monotonic() < deadline, p.report()
            time.sleep(0.05)
        assert [x.name for x in traces.iterdir() if x.name.startswith(".")] == []
    finally:
        p.stop()
        p.close_files()
