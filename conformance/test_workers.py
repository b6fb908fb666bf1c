"""``--workers N``: N processes share the port; a worker that dies after serving is replaced;
SIGTERM stops them all (start-up failures and the restart back-off: test_startup.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conformance.client import assert_serving, get
from conformance.proxy import wait_workers_serving


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(x) for x in text)
    return out


def _wait_children(pid: int, n: int, timeout: float = 8.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(pid)
        if len(kids) == n:
            return kids
        time.sleep(0.1)
    return _children(pid)


def test_workers_share_port_are_restarted_and_stop_together(backend, echo, proxy):
    p = proxy(to=[echo.port], extra=["--workers", "2"])
    wait_workers_serving(p, 2)
    kids = _wait_children(p.pid, 2)
    assert len(kids) == 2, kids
    for i in range(20):
        assert get(p.port, f"/w{i}").status == 200
    victim = min(kids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        now = _children(p.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and victim not in now, (kids, now)
    time.sleep(0.5)  # the replacement binds its socket
    for _ in range(20):
        assert_serving(p.port)
    assert "restarting it" in p.stderr()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    for k in _children_or_empty(p.pid):
        raise AssertionError(f"worker {k} survived the supervisor")


def _children_or_empty(pid: int) -> set[int]:
    try:
        return _children(pid)
    except (FileNotFoundError, ProcessLookupError):
        return set()
