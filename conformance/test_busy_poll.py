"""--busy-poll: every backend keeps polling for the window after a read, then sleeps again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conformance.client import get


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_during(pid: int, seconds: float) -> float:
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return _cpu_seconds(pid) - before


def test_busy_poll_spins_for_the_window_then_sleeps(echo, proxy):
    p = proxy(to=[echo.port], extra=["--busy-poll", "0.8"])
    # The first read after silence opens no window; the next ones (gaps of about a
    # millisecond, within 0.8 s) grow it to 0.2 s and more, and each read extends it.
    assert all(get(p.port, f"/bp{i}").status == 200 for i in range(5))
    spinning = _cpu_during(p.pid, 0.15)  # inside the window that the last read opened
    time.sleep(1.0)
    idle = _cpu_during(p.pid, 1.0)  # the window has closed: back to sleeping in the poller
    assert spinning >= 0.07, f"no busy polling: {spinning:.2f}s CPU in 0.15s"
    assert idle < 0.15, f"still spinning after the window: {idle:.2f}s CPU in 1s"
    assert get(p.port, "/after").status == 200


def test_by_default_an_idle_proxy_sleeps(echo, proxy):
    p = proxy(to=[echo.port])  # busy polling on, adaptive, at most 0.2 ms after a read
    assert all(get(p.port, f"/x{i}").status == 200 for i in range(5))
    assert _cpu_during(p.pid, 0.5) < 0.1


def test_busy_poll_0_never_spins(echo, proxy):
    p = proxy(to=[echo.port], extra=["--busy-poll", "0"])
    assert all(get(p.port, f"/y{i}").status == 200 for i in range(5))
    assert _cpu_during(p.pid, 0.3) < 0.05
