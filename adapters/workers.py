"""Running N worker processes that share the listening ports, under a supervisor.

Theory of operation: the supervisor binds the listening sockets once (or takes them over from
the process it replaces, ``-u``), then forks ``n`` children; each child runs the chosen
adapter's ``serve`` exactly as a single-process server would, and its driver takes the
inherited sockets instead of binding (:data:`proxycore.adapters._sockets.inherited`): every
worker accepts from the same sockets, as nginx's workers do. One set of sockets is what makes a
zero-downtime upgrade possible: on SIGQUIT the supervisor hands them to the new process
(adapters/upgrade.py) and, once that one serves, tells its workers to drain; a connection
waiting in an accept queue is never lost, which per-worker ``SO_REUSEPORT`` sockets cannot
promise (closing one resets the connections queued on it). The supervisor does no I/O on
client traffic.

Start-up is a handshake over one pipe per worker: once the worker's driver has bound its
listeners it writes ``R`` (a hook in :data:`proxycore.adapters._sockets.listening_hooks`); a
worker that fails first writes ``E`` and its one-line message (a
:class:`~proxycore.runner.StartupError`, or the exception's repr with the traceback logged)
and exits with status 2. Until every first-generation worker has written ``R``, any failure
stops the others (SIGINT, then SIGKILL) and :func:`supervise` raises StartupError with that
worker's message, once: a port in use or a missing certificate fails fast instead of being
retried forever.

After that, a worker that dies is restarted after a back-off (``BACKOFF_FIRST`` seconds,
doubling up to ``BACKOFF_MAX``; back to the first step once a worker has served for
``STABLE_AFTER`` seconds), so a worker that keeps crashing cannot spin the CPU; a replacement
that fails before serving is logged and retried on the same back-off while the other workers
go on serving. The supervisor sleeps in ``select`` on the pipes and a wake-up pipe written by
its signal handlers (``signal.set_wakeup_fd``; SIGCHLD wakes it when a worker exits), and
forwards SIGTERM (graceful), SIGINT (fast), SIGUSR1 (stats) and SIGHUP (reload) to every
worker; a worker restarted after a SIGHUP gets one of its own as soon as it serves, so it
reloads the file as the others did instead of serving the start-up configuration; SIGQUIT is
the supervisor's own (the upgrade). It returns when all workers have exited after a
shutdown signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from proxycore.adapters._sockets import listening_hooks
from proxycore.runner import StartupError

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "STABLE_AFTER", "supervise"]

log = logging.getLogger("proxycore")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class _Worker:
    __slots__ = ("buf", "index", "pid", "pipe", "ready_at", "reload")

    def __init__(self, index: int, pid: int, pipe: int, reload: bool = False) -> None:
        self.index = index
        self.pid = pid
        self.pipe: int | None = pipe  # read end, until EOF
        self.buf = b""
        self.ready_at: float | None = None
        self.reload = reload  # SIGHUP it once it serves (see supervise)

    def read(self) -> None:
        """Take what the worker wrote (non-blocking); close the pipe at EOF."""
        while self.pipe is not None:
            try:
                data = os.read(self.pipe, 4096)
            except BlockingIOError:
                return
            if not data:
                os.close(self.pipe)
                self.pipe = None
                return
            self.buf += data
            if self.ready_at is None and self.buf.startswith(b"R"):
                self.ready_at = time.monotonic()

    def failure(self, code: int) -> str:
        if self.buf.startswith(b"E"):
            return self.buf[1:].decode("utf-8", "replace").strip()
        return f"worker {self.index} exited with status {code} before serving"


def _worker_main(index: int, serve_one: Callable[[int], None], wfd: int) -> int:
    """In the child: serve, telling the supervisor through ``wfd`` when serving started (or
    why it could not start); returns the exit status."""
    starting = [True]

    def ready(_addrs: list[tuple[str, int]]) -> None:
        if starting[0]:
            starting[0] = False
            os.write(wfd, b"R")

    listening_hooks.append(ready)
    message = ""
    try:
        serve_one(index)
        code = 0
    except StartupError as e:
        message, code = str(e), 2
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt as e:
        # The supervisor's fast stop (SIGINT) where the adapter was not handling it: during
        # start-up, typically while this worker was already unwinding from its own start-up
        # error (another worker failed first). Not a crash: report the start-up error if
        # there was one, else exit as stopped.
        cause = e.__context__
        if isinstance(cause, StartupError):
            message, code = str(cause), 2
        else:
            code = 0
    except BaseException as e:
        log.exception("worker %d crashed", index)
        message, code = f"worker {index} failed: {e!r}", 1
    if starting[0] and message:
        with contextlib.suppress(OSError):
            os.write(wfd, b"E" + message.encode("utf-8", "replace"))
    return code


def supervise(
    n: int,
    serve_one: Callable[[int], None],
    on_ready: Callable[[], None] | None = None,
    listeners: Sequence[Any] = (),
    upgrade_sock: str | None = None,
    admin_board: Any = None,
) -> int:
    """Run ``serve_one(index)`` in ``n`` forked worker processes until a shutdown signal.
    ``on_ready`` is called once, when every first-generation worker serves (daemon mode tells
    the starting process so). ``listeners``: the listening sockets the workers serve (bound
    by the caller, inherited through the fork); on SIGQUIT they are handed to the new
    process waiting on ``upgrade_sock`` (adapters/upgrade.py), and once it serves every
    worker is told to drain (SIGTERM). If nobody waits or the new process fails, that is
    logged and the workers go on serving.

    Returns 0 after a requested shutdown; raises :class:`StartupError` (every worker stopped)
    when a worker fails before all of them are serving.
    """
    if n < 1:
        raise ValueError(f"workers must be at least 1, got {n}")
    workers: dict[int, _Worker] = {}  # pid -> worker
    stopping: list[int] = []  # the signal that asked us to stop, if any
    backoff = dict.fromkeys(range(n), BACKOFF_FIRST)  # next restart delay, per index
    due: dict[int, float] = {}  # index -> when to restart it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def spawn(index: int) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (*_FORWARDED, signal.SIGQUIT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in (rfd, wake_r, wake_w, *(w.pipe for w in workers.values() if w.pipe)):
                    os.close(fd)
                code = _worker_main(index, serve_one, wfd)
            finally:
                logging.shutdown()  # flush handlers (the access log's queued lines)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(wfd)
        os.set_blocking(rfd, False)
        workers[pid] = _Worker(index, pid, rfd, reload=bool(reloads))

    upgrades: list[int] = []  # SIGQUIT received, handover not done yet
    # SIGHUP forwarded so far: the workers reloaded their configuration, which the supervisor
    # (serving nothing) never does; a worker restarted after that starts from the start-up
    # configuration, so it is sent SIGHUP once it serves and reloads the file as they did.
    reloads: list[int] = []
    if admin_board is not None:  # (/healthz: 503 from the moment the stop begins)
        admin_board.stopping = lambda: bool(stopping)

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGQUIT:
            upgrades.append(signum)
            return
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        elif signum == signal.SIGHUP:
            reloads.append(signum)
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_handlers = {sig: signal.signal(sig, forward) for sig in (*_FORWARDED, signal.SIGQUIT)}
    old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        for i in range(n):
            spawn(i)
        starting = True  # until every first-generation worker serves
        while workers or (due and not stopping):
            now = time.monotonic()
            timeout = max(0.0, min(due.values()) - now) if due and not stopping else None
            pipes = [w.pipe for w in workers.values() if w.pipe is not None]
            with contextlib.suppress(InterruptedError):
                select.select([wake_r, *pipes], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            for w in list(workers.values()):
                w.read()
                if w.reload and w.ready_at is not None and not stopping:
                    w.reload = False
                    log.info("supervisor: worker %d restarted after a reload: SIGHUP", w.index)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGHUP)
            for w, code in _reap(workers):
                w.read()
                if stopping:
                    continue
                if starting and w.ready_at is None:
                    _stop_all(workers)
                    raise StartupError(w.failure(code))
                _schedule(w, code, backoff, due)
            if starting and all(w.ready_at is not None for w in workers.values()):
                starting = False
                log.info("supervisor %d: %d workers serving", os.getpid(), n)
                if on_ready is not None:
                    on_ready()
            if upgrades:
                upgrades.clear()
                if _hand_over(listeners, upgrade_sock, stopping):
                    forward(signal.SIGTERM, None)
            now = time.monotonic()
            for index, when in list(due.items()):
                if when <= now and not stopping:
                    del due[index]
                    spawn(index)
        return 0
    finally:
        for w in workers.values():
            if w.pipe is not None:
                os.close(w.pipe)
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _hand_over(listeners: Sequence[Any], path: str | None, stopping: list[int]) -> bool:
    """SIGQUIT in the supervisor: hand the listeners over (blocking; the workers serve on
    meanwhile). True when the new process serves and the workers must drain."""
    from proxycore.adapters.upgrade import hand_over

    if stopping or path is None:
        log.warning(
            "upgrade: SIGQUIT ignored (%s)", "shutting down" if stopping else "no upgrade_sock"
        )
        return False
    log.info("upgrade: handing the listening sockets over on %s", path)
    ok, message = hand_over(path, listeners)
    if not ok:
        log.error("%s", message)
        return False
    log.info("%s", message)
    for s in listeners:
        s.close()
    return True


def _reap(workers: dict[int, _Worker]) -> list[tuple[_Worker, int]]:
    """The workers that have exited, with their exit status (removed from ``workers``)."""
    out = []
    for pid in list(workers):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the status is lost
            done, status = pid, 255 << 8
        if done:
            out.append((workers.pop(pid), os.waitstatus_to_exitcode(status)))
    return out


def _schedule(w: _Worker, code: int, backoff: dict[int, float], due: dict[int, float]) -> None:
    """A worker died after the start-up: restart it after its back-off."""
    now = time.monotonic()
    if w.ready_at is None:
        log.error("worker %d (pid %d) failed before serving: %s", w.index, w.pid, w.failure(code))
    elif now - w.ready_at >= STABLE_AFTER:
        backoff[w.index] = BACKOFF_FIRST
    delay = backoff[w.index]
    backoff[w.index] = min(delay * 2, BACKOFF_MAX)
    log.error(
        "worker %d (pid %d) exited with status %d; restarting it in %gs",
        w.index,
        w.pid,
        code,
        delay,
    )
    due[w.index] = now + delay


def _stop_all(workers: dict[int, _Worker], timeout: float = 5.0) -> None:
    """A fast stop of every worker (SIGINT, SIGKILL after ``timeout``), reaped."""
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while workers and time.monotonic() < deadline:
        if not _reap(workers):
            time.sleep(0.02)
    for pid in list(workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        del workers[pid]
