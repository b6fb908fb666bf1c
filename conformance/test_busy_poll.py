"""--busy-poll: every backend keeps polling for the window after a read, then sleeps again."""

from __future__ import annotations

import time
from pathlib import Path

from conformance.client import get


def _runnable_fraction(pid: int, seconds: float) -> float:
    """The fraction of samples (every ~2 ms for ``seconds``) in which some thread of ``pid``
    was running or runnable (state R) rather than sleeping. A spinning poller is runnable all
    the time even while other processes hold the CPUs, so unlike CPU time this does not
    depend on how loaded the machine is (the suite runs in parallel)."""
    tasks = Path(f"/proc/{pid}/task")
    samples = runnable = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        states = []
        for t in tasks.iterdir():
            try:
                states.append((t / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue  # the thread ended between listing and reading
        samples += 1
        runnable += "R" in states
        time.sleep(0.002)
    return runnable / max(samples, 1)


def test_busy_poll_spins_for_the_window_then_sleeps(echo, proxy):
    p = proxy(to=[echo.port], extra=["--busy-poll", "0.8"])
    # The first read after silence opens no window; the next ones (gaps of about a
    # millisecond, within 0.8 s) grow it to 0.2 s and more, and each read extends it.
    # The window adapts to the gaps between reads, which a loaded machine (the suite runs in
    # parallel) can stretch: a few tries, so only a poller that never spins fails.
    for attempt in range(4):
        assert all(get(p.port, f"/bp{attempt}-{i}").status == 200 for i in range(5))
        spinning = _runnable_fraction(p.pid, 0.15)  # inside the window the last read opened
        if spinning >= 0.6:
            break
    time.sleep(1.0)
    idle = _runnable_fraction(p.pid, 0.5)  # the window has closed: asleep in the poller
    assert spinning >= 0.6, f"no busy polling: runnable in {spinning:.0%} of 0.15 s"
    assert idle < 0.2, f"still spinning after the window: runnable in {idle:.0%} of 0.5 s"
    assert get(p.port, "/after").status == 200


def test_by_default_an_idle_proxy_sleeps(echo, proxy):
    p = proxy(to=[echo.port])  # busy polling on, adaptive, at most 0.2 ms after a read
    assert all(get(p.port, f"/x{i}").status == 200 for i in range(5))
    time.sleep(0.05)  # a few windows of 0.2 ms, long gone
    assert _runnable_fraction(p.pid, 0.5) < 0.2


def test_busy_poll_0_never_spins(echo, proxy):
    p = proxy(to=[echo.port], extra=["--busy-poll", "0"])
    assert all(get(p.port, f"/y{i}").status == 200 for i in range(5))
    assert _runnable_fraction(p.pid, 0.3) < 0.1
