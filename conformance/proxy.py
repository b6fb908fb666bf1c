"""Start and stop a proxycore process (``python -m proxycore ...``) for one backend.

stdout/stderr go to temporary files (never pipes: a chatty proxy must not block on a full
pipe). Readiness = the listening port accepts a TCP connection (polled, at most
READY_TIMEOUT seconds); if the process exits first, the error carries its stderr.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
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
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update({k: str(v) for k, v in self.env.items()})
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
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
    last_err: Exception | None = None
    for _ in range(3):
        port = free_port()
        argv = [sys.executable, "-m", "proxycore", mode]
        if mode == "run":
            assert app, "run needs app"
            argv.append(app)
        argv += ["--listen", f"{HOST}:{port}"]
        for p in to or []:
            argv += ["--to", f"{HOST}:{p}"]
        argv += ["--backend", backend, *DEFAULT_TIMEOUTS, *(extra or [])]
        proc = ProxyProcess(argv, port, backend, env)
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
