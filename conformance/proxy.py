"""Start and stop a proxycore process (``python -m proxycore ...``, or a script such as an
example: :func:`start_script`) for one backend.

stdout/stderr go to temporary files (never pipes: a chatty proxy must not block on a full
pipe). Readiness = the listening port accepts a TCP connection (polled, at most
READY_TIMEOUT seconds); if the process exits first, the error carries its stderr.

Which proxycore runs: with ``PROXYCORE_PYTHON`` set to an interpreter that has proxycore
installed (``scripts/test`` sets it to a venv with the default, compiled install: what users
run), proxy processes run that interpreter from a scratch directory whose ``PYTHONPATH`` holds
only this repository's ``conformance``, ``examples`` and ``tests`` packages (for ``run`` apps),
so ``import proxycore`` finds the installed package, never the source tree. Without it they run
this interpreter on the source tree (``PYTHONPATH`` = the repository), as a developer's edits
are. Every test that starts a proxycore process goes through :func:`python_cmd` /
:func:`process_env` / :data:`PROCESS_CWD`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conformance.origins import HOST, free_port

ROOT = Path(__file__).resolve().parent.parent  # /work/main
READY_TIMEOUT = 10.0

# Short defaults so that nothing in the suite can hang for long; tests override by
# passing the same flag again (argparse keeps the last value).
DEFAULT_TIMEOUTS = [
    "--connect-timeout",
    "2",
    "--read-timeout",
    "5",
    "--header-timeout",
    "5",
    "--keepalive-timeout",
    "5",
]

LIVE: list[ProxyProcess] = []  # every proxy not yet stopped (for failure reports)


def installed_python() -> str | None:
    """``PROXYCORE_PYTHON`` as a command the proxy processes can run from any directory: a
    relative path (``build/compiled-venv/bin/python``) is made absolute against the directory
    pytest started in (not resolved through symlinks: a virtualenv's interpreter is one), a
    bare name is looked up on PATH. None when unset."""
    value = os.environ.get("PROXYCORE_PYTHON") or None
    if value is None:
        return None
    if os.sep not in value:
        return shutil.which(value) or value
    return os.path.abspath(value)


INSTALLED_PYTHON = installed_python()


def _scratch_path() -> Path:
    """A directory holding only links to the repository's test-side packages."""
    d = Path(tempfile.mkdtemp(prefix="proxycore-conformance-"))
    for name in ("conformance", "examples", "tests"):
        (d / name).symlink_to(ROOT / name)
    atexit.register(shutil.rmtree, d, True)
    return d


PROCESS_CWD: Path = _scratch_path() if INSTALLED_PYTHON else ROOT


def python_cmd() -> list[str]:
    """The interpreter that runs proxycore processes (see the module docstring)."""
    return [INSTALLED_PYTHON or sys.executable]


def process_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a proxycore process: PYTHONPATH as the module docstring says."""
    env = dict(os.environ)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(PROCESS_CWD), *rest])
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def describe_core() -> str:
    """One line for the test report header: which proxycore the proxy processes run."""
    code = (
        "import proxycore, proxycore.session as s, proxycore.h1.parse as p;"
        "print(proxycore.__file__);"
        "print('compiled' if s.__file__.endswith('.so') else 'pure Python',"
        " '+ C head scanner' if p._HSCAN is not None else '')"
    )
    r = subprocess.run(
        [*python_cmd(), "-c", code],
        cwd=PROCESS_CWD,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return f"proxycore under test: cannot import ({r.stderr.strip().splitlines()[-1:]})"
    where, kind = r.stdout.strip().splitlines()
    return f"proxycore under test: {kind.strip()} ({where})"


class ProxyDied(AssertionError):
    pass


class ProxyProcess:
    def __init__(self, argv: list[str], port: int, backend: str, env: dict | None = None):
        self.argv = argv
        self.port = port
        self.backend = backend
        self.env = env or {}
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv,
            cwd=PROCESS_CWD,
            env=process_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )
        self.pid = self.proc.pid
        self.stopped = False
        self.expect_exit = False  # set by tests that stop the proxy themselves (signals)
        LIVE.append(self)

    # -- output ------------------------------------------------------------------------
    def _read(self, f) -> str:
        try:
            f.flush()
            f.seek(0)
            return f.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return "<unavailable>"

    def stderr(self) -> str:
        return self._read(self._err)

    def stdout(self) -> str:
        return self._read(self._out)

    def report(self, tail: int = 6000) -> str:
        err = self.stderr()
        if len(err) > tail:
            err = "...\n" + err[-tail:]
        rc = self.proc.poll()
        return (
            f"proxy[{self.backend}] pid={self.pid} port={self.port} "
            f"{'running' if rc is None else f'exited rc={rc}'}\n"
            f"argv: {' '.join(self.argv)}\n--- stderr ---\n{err}\n--- end stderr ---"
        )

    # -- lifecycle ---------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        """Send a signal the test expects to end the process."""
        self.expect_exit = True
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ProxyDied("proxy process died\n" + self.report())

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ProxyDied("proxy exited before accepting connections\n" + self.report())
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.5)
            try:
                s.connect((HOST, self.port))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                s.close()
        raise ProxyDied(
            f"proxy not accepting on {HOST}:{self.port} after {timeout}s\n" + self.report()
        )

    def stop(self) -> int | None:
        """Terminate (then kill); returns the exit code."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ValueError):
            LIVE.remove(self)
        return self.proc.returncode

    def close_files(self) -> None:
        for f in (self._out, self._err):
            with contextlib.suppress(OSError):
                f.close()

    # -- memory ------------------------------------------------------------------------
    def rss_kib(self) -> int:
        """VmRSS of the proxy process plus all its descendants, in KiB."""
        total = 0
        for pid in [self.pid, *_descendants(self.pid)]:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total


def _descendants(pid: int) -> list[int]:
    out = []
    todo = [pid]
    while todo and len(out) < 256:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    kids = [int(x) for x in (task / "children").read_text().split()]
                    out += kids
                    todo += kids
    return out


def start_proxy(
    backend: str,
    mode: str = "reverse-proxy",
    to: list[int] | None = None,
    app: str | None = None,
    extra: list[str] | None = None,
    env: dict | None = None,
) -> ProxyProcess:
    """Start a proxy and wait until it accepts. ``to``: upstream ports (reverse-proxy);
    ``app``: ``module:Class`` (run). Retries on a port race (at most 3 attempts)."""

    def argv(port: int) -> list[str]:
        out = [*python_cmd(), "-m", "proxycore", mode]
        if mode == "run":
            assert app, "run needs app"
            out.append(app)
        out += ["--listen", f"{HOST}:{port}"]
        for p in to or []:
            out += ["--to", f"{HOST}:{p}"]
        return [*out, "--backend", backend, *DEFAULT_TIMEOUTS, *(extra or [])]

    return _start(argv, backend, env)


def start_script(
    backend: str, script: str, args: list[str] | None = None, env: dict | None = None
) -> ProxyProcess:
    """Start ``python SCRIPT --listen 127.0.0.1:PORT ARGS... --backend BACKEND`` (a program
    of its own that serves a proxy, such as an example; ``script`` is relative to the
    repository) and wait until it accepts, retrying on a port race like :func:`start_proxy`."""

    def argv(port: int) -> list[str]:
        listen = ["--listen", f"{HOST}:{port}"]
        return [*python_cmd(), str(ROOT / script), *listen, *(args or []), "--backend", backend]

    return _start(argv, backend, env)


def _start(argv: Callable[[int], list[str]], backend: str, env: dict | None) -> ProxyProcess:
    """Run ``argv(free_port)`` until it accepts on that port (at most 3 attempts: another
    process may take the port between free_port and the proxy's bind)."""
    last_err: Exception | None = None
    for _ in range(3):
        port = free_port()
        proc = ProxyProcess(argv(port), port, backend, env)
        try:
            proc.wait_ready()
            return proc
        except ProxyDied as e:
            proc.stop()
            last_err = e
            if "in use" not in proc.stderr().lower():
                proc.close_files()
                raise
            proc.close_files()
    assert last_err is not None
    raise last_err


def wait_workers_serving(p: ProxyProcess, n: int, timeout: float = READY_TIMEOUT) -> None:
    """With ``--workers n``: wait for the supervisor's log line saying all n serve (before it,
    a worker that dies counts as failing at start-up and stops the supervisor)."""
    deadline = time.monotonic() + timeout
    while f"{n} workers serving" not in p.stderr():
        p.check_alive()
        if time.monotonic() > deadline:
            raise ProxyDied(f"{n} workers not serving after {timeout}s\n" + p.report())
        time.sleep(0.05)
