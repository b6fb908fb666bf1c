"""Daemon mode, the pid file, the error log and the privilege drop (issue 28), on every backend.

Each test starts the real ``python -m proxycore reverse-proxy ... -d`` and judges the daemon
from outside, as an init system or an operator would: the starting process's exit status and
output, the pid file, ``/proc/PID`` (session, parent, standard streams, uid/gid/groups), real
requests through the proxy, and what SIGTERM/SIGINT leave behind.

- a daemonised proxy serves traffic; the start prints nothing and exits 0 only once it serves;
  the pid file names the daemon, which is detached (another session, not a child of the
  starting process, stdin on /dev/null, stdout/stderr on the error log);
- a second start with the same live pid file exits 2 with one line, and the first keeps serving;
- SIGTERM drains (a request in flight is answered) and removes the pid file; SIGINT stops at
  once and removes it too; a stale pid file (a dead process) is replaced;
- start-up errors reach the user: an unknown user/group, or an error log that cannot be
  opened, exits 2 with one line before anything binds or detaches; a port in use, found by the
  daemon after detaching, comes back over the pipe as the same one line (exit 2), and no pid
  file is left; in the foreground with an error log, that line still reaches stderr;
- ``--workers 2``: the supervisor is the daemon, its two workers serve, SIGTERM stops all;
- as root: ``--user nobody --group nogroup`` on a port below 1024 (daemon, foreground, and
  with workers): every serving process runs as nobody/nogroup with no supplementary groups
  (``/proc/PID/status``) and still serves.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conformance.client import assert_serving, get
from conformance.origins import HOST, free_port
from conformance.proxy import (
    DEFAULT_TIMEOUTS,
    PROCESS_CWD,
    ProxyProcess,
    process_env,
    python_cmd,
)

STOP_TIMEOUT = 15.0


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def _wait_gone(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


class Daemons:
    """Starts ``proxycore reverse-proxy -d`` and kills whatever is left at the end."""

    def __init__(self, backend: str, directory: Path) -> None:
        self.backend = backend
        self.dir = directory
        self.pids: set[int] = set()

    def start(
        self,
        to: int,
        port: int,
        extra: list[str] | None = None,
        pid_file: Path | None = None,
        error_log: Path | None = None,
        daemon: bool = True,
        app: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``reverse-proxy --to to`` (or ``run APP`` with ``ORIGIN_PORT=to``) on ``port``."""
        argv = [*python_cmd(), "-m", "proxycore"]
        argv += ["run", app] if app else ["reverse-proxy", "--to", f"{HOST}:{to}"]
        argv += ["--listen", f"{HOST}:{port}", "--backend", self.backend, *DEFAULT_TIMEOUTS]
        if daemon:
            argv.append("-d")
        argv += ["--pid-file", str(pid_file or self.dir / "proxycore.pid")]
        argv += ["--error-log", str(error_log or self.dir / "error.log")]
        r = subprocess.run(
            [*argv, *(extra or [])],
            cwd=PROCESS_CWD,
            env=process_env({"ORIGIN_PORT": to}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        with contextlib.suppress(OSError, ValueError):
            self.pids.add(int((pid_file or self.dir / "proxycore.pid").read_text()))
        return r

    def kill_all(self) -> None:
        for pid in self.pids:
            if _alive(pid):
                for kid in _children(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(kid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemons(backend, tmp_path):
    d = Daemons(backend, tmp_path)
    yield d
    d.kill_all()


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def _started(r: subprocess.CompletedProcess[str], pid_file: Path) -> int:
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    return pid


def test_daemon_serves_and_sigterm_drains(daemons, origins, tmp_path):
    echo = origins()
    port = free_port()
    pid_file, error_log = tmp_path / "proxycore.pid", tmp_path / "error.log"
    r = daemons.start(echo.port, port)
    pid = _started(r, pid_file)
    # detached: another session, not this process's child, standard streams redirected
    assert os.getsid(pid) != os.getsid(0)
    assert int(_status(pid)["PPid"]) != os.getpid()
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    for fd in (1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == str(error_log)
    # it serves (it said so before the start returned: no waiting here)
    resp = get(port, "/daemon")
    assert resp.status == 200 and resp.json()["target"] == "/daemon"
    # a second start with the same live pid file: exit 2, one line; the first goes on
    r2 = daemons.start(echo.port, free_port())
    assert r2.returncode == 2
    line = _one_line(r2.stderr)
    assert "names a running process" in line and str(pid) in line and str(pid_file) in line
    assert int(pid_file.read_text()) == pid
    assert_serving(port)
    # SIGTERM: graceful, a request in flight still gets its answer, then the pid file goes
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["resp"] = get(port, "/delay/1", timeout=10)
        except Exception as e:  # (reported by the assertion below)
            result["error"] = e

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while not any(req.path == "/delay/1" for req in list(echo.requests)):  # in flight
        assert time.monotonic() < deadline, "the slow request never reached the origin"
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    t.join(15)
    assert "error" not in result, result
    assert result["resp"].status == 200  # type: ignore[attr-defined]
    assert _wait_gone(pid), f"daemon still running after SIGTERM:\n{error_log.read_text()}"
    assert not pid_file.exists()
    assert "shutting down (graceful)" in error_log.read_text()


SCRIPT = """\
import os
import sys

import proxycore


class App(proxycore.Proxy):
    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", int(sys.argv[2]))


listen, _, backend, pid_file, error_log = sys.argv[1:]
proxycore.run(
    App(), [listen], backend=backend, daemon=True, pid_file=pid_file, error_log=error_log
)
print("run returned in", os.getpid(), flush=True)
"""


def test_run_and_a_script_daemonise(daemons, origins, tmp_path, backend):
    """``proxycore run module:Class -d``, and ``proxycore.run(daemon=True)`` from a script: the
    calling process exits 0 once the daemon serves; in the daemon, run() returns after the
    shutdown as it does in the foreground."""
    echo = origins()
    pid_file, error_log = tmp_path / "proxycore.pid", tmp_path / "error.log"
    port = free_port()
    pid = _started(daemons.start(echo.port, port, app="conformance.apps:HeaderApp"), pid_file)
    assert get(port, "/deny").status == 403  # the class answered
    assert get(port, "/app").header("x-resp") == "1"
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid), error_log.read_text()
    assert not pid_file.exists()

    script = tmp_path / "serve.py"
    script.write_text(SCRIPT)
    port = free_port()
    args = [f"{HOST}:{port}", str(echo.port), backend, str(pid_file), str(error_log)]
    r = subprocess.run(
        [*python_cmd(), str(script), *args],
        cwd=PROCESS_CWD,
        env=process_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = _started(r, pid_file)
    daemons.pids.add(pid)
    assert_serving(port)
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid), error_log.read_text()
    assert f"run returned in {pid}" in error_log.read_text()
    assert not pid_file.exists()


def test_sigint_is_fast_and_stale_pid_file_is_replaced(daemons, origins, tmp_path):
    echo = origins()
    pid_file, error_log = tmp_path / "proxycore.pid", tmp_path / "error.log"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")  # a stale file: its process is gone
    port = free_port()
    pid = _started(daemons.start(echo.port, port), pid_file)
    assert pid != dead.pid
    assert_serving(port)
    os.kill(pid, signal.SIGINT)
    assert _wait_gone(pid, 5), error_log.read_text()
    assert not pid_file.exists()
    assert "shutting down (fast)" in error_log.read_text()


def test_unknown_user_or_group_exits_2_before_binding(daemons, origins, tmp_path):
    echo = origins()
    port = free_port()
    pid_file = tmp_path / "proxycore.pid"
    for flags, words in [
        (["--user", "no-such-user-28"], "unknown user 'no-such-user-28'"),
        (["--group", "no-such-group-28"], "unknown group 'no-such-group-28'"),
    ]:
        for daemon in (True, False):
            r = daemons.start(echo.port, port, flags, daemon=daemon)
            assert r.returncode == 2, r.stderr
            assert words in _one_line(r.stderr)
            assert r.stdout == ""
            assert not pid_file.exists()
            with socket.socket() as s:  # nothing bound the port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))


def test_startup_error_after_detaching_reaches_the_user(daemons, origins, tmp_path):
    echo = origins()
    pid_file, error_log = tmp_path / "proxycore.pid", tmp_path / "error.log"
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = daemons.start(echo.port, port)
    assert r.returncode == 2
    line = _one_line(r.stderr)
    assert f"cannot listen on {HOST}:{port}: address already in use" in line
    assert r.stdout == ""
    assert not pid_file.exists()  # written by the daemon, removed when it gave up
    # (the daemon tells its starter first, then its own line reaches its error log: wait for it)
    deadline = time.monotonic() + 5
    while "address already in use" not in error_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "address already in use" in error_log.read_text()
    # in the foreground the error log takes stderr, but a start-up error is still shown
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = daemons.start(echo.port, port, daemon=False)
    assert r.returncode == 2
    assert f"cannot listen on {HOST}:{port}: address already in use" in _one_line(r.stderr)
    assert not pid_file.exists()


def test_error_log_that_cannot_be_opened(daemons, origins, tmp_path):
    echo = origins()
    missing = tmp_path / "no-such-dir" / "error.log"
    for daemon in (True, False):
        r = daemons.start(echo.port, free_port(), error_log=missing, daemon=daemon)
        assert r.returncode == 2
        line = _one_line(r.stderr)
        assert f"cannot open error log {str(missing)!r}: " in line, line
        assert not (tmp_path / "proxycore.pid").exists()


def test_daemon_with_workers(daemons, origins, tmp_path):
    echo = origins()
    port = free_port()
    pid_file, error_log = tmp_path / "proxycore.pid", tmp_path / "error.log"
    pid = _started(daemons.start(echo.port, port, ["--workers", "2"]), pid_file)
    assert "2 workers serving" in error_log.read_text()  # before the start returned
    workers = _children(pid)
    assert len(workers) == 2, workers
    for _ in range(4):
        assert_serving(port)
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid), error_log.read_text()
    assert not any(_alive(w) for w in workers)
    assert not pid_file.exists()


# -- privilege drop (as root) ------------------------------------------------------------------


def _need_root() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("the privilege drop is tested as root")
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody user / nogroup group here")


def _low_port() -> int:
    """A free port below 1024 (only root may bind it)."""
    for port in random.sample(range(600, 1000), 400):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


@pytest.fixture
def shared_dir():
    """A sticky world-writable directory outside pytest's root-only tmp_path (as /tmp is),
    where a daemon that dropped to nobody can still remove its own pid file."""
    d = Path(tempfile.mkdtemp(prefix="proxycore-daemon-"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _assert_dropped(pid: int, uid: int, gid: int) -> None:
    st = _status(pid)
    assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(gid)] * 4, st["Gid"]
    assert st["Groups"] == "", st["Groups"]


@pytest.mark.parametrize("workers", [1, 2])
def test_privileges_dropped_after_binding_a_low_port(
    daemons, origins, shared_dir, backend, workers
):
    uid, gid = _need_root()
    echo = origins()
    pid_file, error_log = shared_dir / "proxycore.pid", shared_dir / "error.log"
    flags = ["--user", "nobody", "--group", "nogroup", "--workers", str(workers)]
    for _ in range(3):  # another test may take the port between the probe and the bind
        port = _low_port()
        r = daemons.start(echo.port, port, flags, pid_file, error_log)
        if r.returncode != 2 or "in use" not in r.stderr:
            break
    pid = _started(r, pid_file)
    serving = [pid] if workers == 1 else _children(pid)
    assert len(serving) == workers
    for p in serving:
        _assert_dropped(p, uid, gid)
    if workers == 2:
        assert _status(pid)["Uid"].split()[0] == "0"  # the supervisor restarts workers: root
    for _ in range(2 * workers):
        assert_serving(port)
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid), error_log.read_text()
    assert not pid_file.exists(), "the pid file was not removed"


def test_privileges_dropped_in_the_foreground(origins, backend, shared_dir):
    uid, gid = _need_root()
    echo = origins()
    pid_file, error_log = shared_dir / "fg.pid", shared_dir / "fg.log"
    port = _low_port()
    argv = [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--listen", f"{HOST}:{port}"]
    argv += ["--to", f"{HOST}:{echo.port}", "--backend", backend, *DEFAULT_TIMEOUTS]
    argv += ["--user", "nobody", "--group", "nogroup"]
    argv += ["--pid-file", str(pid_file), "--error-log", str(error_log)]
    p = ProxyProcess(argv, port, backend)
    try:
        p.wait_ready()
        assert int(pid_file.read_text()) == p.pid
        # (a TCP connect succeeds once the port listens, before the drop; a request is
        # answered only after it: the drop comes between binding and accepting)
        assert_serving(port)
        _assert_dropped(p.pid, uid, gid)
        assert "listening on" in error_log.read_text()  # stderr went to the error log
        assert p.stderr() == ""
        p.signal(signal.SIGTERM)
        assert p.proc.wait(STOP_TIMEOUT) == 0
        assert not pid_file.exists()
    finally:
        p.stop()
        p.close_files()


def test_a_switch_only_root_can_make_is_refused():
    """Not running as root: switching to another user or group is a start-up error naming
    it (checked in a child that has dropped to nobody first), the same user is no switch."""
    uid, gid = _need_root()
    from proxycore.adapters.daemon import resolve_identity
    from proxycore.runner import StartupError

    cases = [("root", None), (None, "root"), ("nobody", None), ("nobody", "nogroup")]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, then ask
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            for user, group in cases:
                try:
                    answer = repr(resolve_identity(user, group))
                except StartupError as e:
                    answer = str(e)
                os.write(wfd, answer.encode() + b"\n")
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        answers = f.read().splitlines()
    os.waitpid(pid, 0)
    assert answers == [
        f"cannot switch to user 'root': only root can (running as uid {uid})",
        f"cannot switch to group 'root': only root can (running as uid {uid})",
        "(None, None)",
        "(None, None)",
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_daemon_upgrade_hands_over_and_rewrites_the_pid_file(daemons, origins, tmp_path, workers):
    """``-d -u`` while a daemon runs (the systemd ExecReload recipe): the new starter waits on
    the upgrade socket, the old daemon's SIGQUIT hands the listeners over, the starter exits 0
    once the new daemon serves, the pid file names the new daemon, the old one is gone."""
    echo = origins()
    port = free_port()
    pid_file = tmp_path / "proxycore.pid"
    sock = tmp_path / "upgrade.sock"
    extra = ["--upgrade-sock", str(sock), "--workers", str(workers)]
    old = _started(daemons.start(echo.port, port, extra=extra), pid_file)
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    t = threading.Thread(
        target=lambda: result.update(r=daemons.start(echo.port, port, extra=[*extra, "-u"]))
    )
    t.start()
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert time.monotonic() < deadline, "the new daemon never waited on the upgrade socket"
        time.sleep(0.02)
    assert int(pid_file.read_text()) == old  # (until the new one serves)
    assert_serving(port)
    os.kill(old, signal.SIGQUIT)
    t.join(30)
    r = result["r"]
    assert r.returncode == 0 and r.stderr == "", r.stderr
    new = int(pid_file.read_text())
    assert new != old and _alive(new)
    assert _wait_gone(old), "the old daemon did not exit after handing over"
    assert_serving(port)
    assert int(pid_file.read_text()) == new  # (the old one left the new one's file alone)
    os.kill(new, signal.SIGTERM)
    assert _wait_gone(new)
    assert not pid_file.exists()
