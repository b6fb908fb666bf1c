"""Running N worker processes that share the listening ports, under a supervisor.

Theory of operation: the supervisor forks ``n`` children; each child runs the chosen adapter's
``serve`` exactly as a single-process server would, binding its listening sockets with
``SO_REUSEPORT`` so the kernel spreads new connections across workers (no accept thundering
herd, no shared accept lock). The supervisor does no I/O on client traffic: it waits for
children, restarts one that dies unexpectedly (with a short back-off, so a worker that crashes
at start-up cannot spin the CPU), and forwards SIGTERM (graceful), SIGINT (fast) and SIGUSR1
(stats) to every worker. It exits when all workers have exited after a shutdown signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["supervise"]

log = logging.getLogger("proxycore")


def supervise(n: int, serve_one: Callable[[int], None]) -> int:
    """Run ``serve_one(index)`` in ``n`` forked worker processes until a shutdown signal.

    Returns the exit status for the supervisor (0 after a requested shutdown).
    """
    if n < 1:
        raise ValueError(f"workers must be at least 1, got {n}")
    children: dict[int, int] = {}  # pid -> worker index
    stopping: list[int] = []  # the signal that asked us to stop, if any
    started: dict[int, float] = {}

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (
                signal.SIGTERM,
                signal.SIGINT,
                signal.SIGUSR1,
                signal.SIGHUP,
                signal.SIGCHLD,
            ):
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                serve_one(index)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                logging.shutdown()  # flush handlers (the access log's queued lines)
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        children[pid] = index
        started[index] = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, forward)
    for i in range(n):
        spawn(i)
    log.info("supervisor %d: %d workers", os.getpid(), n)
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d (pid %d) exited with status %d; restarting it", index, pid, code)
        if time.monotonic() - started.get(index, 0.0) < 1.0:
            time.sleep(1.0)  # crashing at start-up: do not spin
        if not stopping:
            spawn(index)
    return 0
