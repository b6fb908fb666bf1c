"""The adaptive --busy-poll window shared by every adapter (proxycore.adapters.BusyPoll)."""

from __future__ import annotations

import pytest

from proxycore.adapters import BusyPoll
from proxycore.cli import main
from proxycore.config import ServerConf

S = 0.0002  # the default limit


def test_on_by_default_and_off_with_zero() -> None:
    bp = BusyPoll.from_conf(ServerConf())
    assert bp is not None and bp.limit == S and bp.grow_from == S / 4
    conf = ServerConf()
    conf.busy_poll = 0.0
    assert BusyPoll.from_conf(conf) is None


def _read(bp: BusyPoll, now: float) -> bool:
    """What the adapters do on a read; True when a spinner must be started."""
    bp.reads += 1
    return not bp.spinning and bp.wake(now)


def test_first_read_after_silence_does_not_spin() -> None:
    bp = BusyPoll(S)
    assert not _read(bp, 100.0)  # no previous read: the gap is unbounded
    assert bp.window == 0.0 and not bp.spinning


def test_window_grows_on_gaps_it_missed_and_is_capped() -> None:
    bp = BusyPoll(S)
    _read(bp, 1.0)
    t = 1.0
    seen = []
    for _ in range(5):  # each gap is within S but longer than the window: no spinner caught it
        t += 0.00019
        bp.spinning = False  # the previous spinner (if any) has run out
        _read(bp, t)
        seen.append(bp.window)
    assert seen == pytest.approx([S / 4, S / 2, S, S, S])
    assert bp.spinning and bp.until == pytest.approx(t + S)


def test_window_shrinks_on_gaps_no_window_would_catch() -> None:
    bp = BusyPoll(S)
    bp.window, bp.last = S, 1.0
    assert _read(bp, 1.01)  # a 10 ms gap: halve the window
    assert bp.window == S / 2
    bp.spinning = False
    _read(bp, 1.02)
    assert bp.window == S / 4
    bp.spinning = False
    assert not _read(bp, 1.03)  # below S/4: off until a short gap grows it again
    assert bp.window == 0.0


def test_a_gap_within_the_window_leaves_it() -> None:
    bp = BusyPoll(S)
    bp.window, bp.last = S / 2, 1.0
    assert _read(bp, 1.0 + S / 4)
    assert bp.window == S / 2


def test_the_spinner_extends_the_window_on_reads_and_stops_after_it() -> None:
    bp = BusyPoll(S)
    bp.window, bp.last = S, 1.0
    assert _read(bp, 1.0001)
    assert bp.keep_spinning(1.0002) == 0.0
    assert not _read(bp, 1.00025)  # caught by the running spinner: no second one
    assert bp.keep_spinning(1.00026) == 0.0  # the read extended the window to 1.00046
    assert bp.keep_spinning(1.00040) == 0.0
    assert bp.keep_spinning(1.00047) is None and not bp.spinning


def test_steps_aside_while_the_loop_is_busy_then_carries_on() -> None:
    bp = BusyPoll(0.5)
    bp.window, bp.last = 0.5, 10.0
    assert _read(bp, 10.0)
    _read(bp, 10.0001)  # more reads before the spinner's first turn: the loop has work anyway
    _read(bp, 10.00015)
    assert bp.keep_spinning(10.0002) == BusyPoll.BACKOFF  # pause instead of polling at once
    assert bp.spinning and not _read(bp, 10.0003)  # still one spinner (paused): no second one
    # After the pause the window still holds, with or without another read: poll again.
    assert bp.keep_spinning(10.0003 + BusyPoll.BACKOFF) == 0.0
    assert bp.keep_spinning(10.4) == 0.0
    assert bp.keep_spinning(10.5104) is None and not bp.spinning


def test_after_a_burst_one_connections_traffic_is_polled_again() -> None:
    # The bug this pins: 50 connections' burst ends while the spinner is paused, and one
    # client carries on back-to-back (a read every ~50 us). Judged by the reads counted over
    # the 10 ms pause (~200), the spinner paused again and again and never polled for it.
    bp = BusyPoll(S)
    bp.window, bp.last = S, 1.0
    assert _read(bp, 1.0)
    for i in range(5):
        _read(bp, 1.0 + i * 1e-6)
    assert bp.keep_spinning(1.00001) == BusyPoll.BACKOFF  # the burst: step aside
    t = 1.00001
    while t < 1.00001 + BusyPoll.BACKOFF:  # during the pause: one client, a read every 50 us
        t += 50e-6
        _read(bp, t)
    assert bp.reads > 100
    assert bp.keep_spinning(t) == 0.0  # after the pause: poll, don't judge the queued reads
    _read(bp, t + 50e-6)
    assert bp.keep_spinning(t + 60e-6) == 0.0  # one read between two polls: keep polling
    for i in range(3):  # and if the loop really is busy, the next turn says so
        _read(bp, t + 61e-6 + i * 1e-6)
    assert bp.keep_spinning(t + 70e-6) == BusyPoll.BACKOFF


def _simulate(bp: BusyPoll, gaps: list[float]) -> tuple[int, float]:
    """Feed reads at the given gaps, the spinner turning at each read and stopping when its
    window runs out; returns (reads that found the loop asleep, seconds spent spinning)."""
    t, woken, spun, since = 0.0, 0, 0.0, None
    for gap in gaps:
        t += gap
        if bp.spinning and t >= bp.until:  # the window ran out before this read
            assert bp.keep_spinning(bp.until) is None
            spun += bp.until - since
        if bp.spinning:
            bp.reads += 1
            assert bp.keep_spinning(t) == 0.0
        else:
            woken += 1
            bp.reads += 1
            if bp.wake(t):
                since = t
    return woken, spun


def test_back_to_back_traffic_never_finds_the_loop_asleep() -> None:
    # c1 request/response: the origin answers in 40 us, the client sends the next in 30 us
    woken, _ = _simulate(BusyPoll(S), [1.0] + [40e-6, 30e-6] * 1000)
    assert woken <= 3  # only while the window grows


def test_sparse_traffic_spends_at_most_a_quarter_window_per_request() -> None:
    # one request every ~1 ms: origin answers in 40 us, the client waits 1 ms before the next
    _, spun = _simulate(BusyPoll(S), [1.0] + [40e-6, 1e-3] * 1000)
    assert spun / 1000 <= S / 4 + 1e-9


@pytest.mark.parametrize("bad", ["-1", "2", "x"])
def test_flag_range_is_checked(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["reverse-proxy", "--to", "127.0.0.1:1", "--busy-poll", bad])
    assert e.value.code == 2 and "--busy-poll" in capsys.readouterr().err


def test_polls_while_an_upstream_exchange_is_open_even_with_no_window() -> None:
    # Think time between requests: the window has collapsed to 0, but the request just read
    # was forwarded, so the origin's answer is due: poll for it, up to S after that read.
    open_exchanges = [0]
    bp = BusyPoll(S, pending=lambda: open_exchanges[0])
    bp.last = 1.0
    assert _read(bp, 1.01)  # a 10 ms gap: window 0, but the spinner starts to ask pending()
    assert bp.window == 0.0
    open_exchanges[0] = 1  # the engine forwarded the request
    assert bp.keep_spinning(1.01001) == 0.0
    assert bp.keep_spinning(1.01005) == 0.0
    assert not _read(bp, 1.01014)  # the answer, caught while polling
    open_exchanges[0] = 0  # answered and forwarded: the connection is back in the pool
    assert bp.keep_spinning(1.01015) == 0.0  # (the turn that sees the read)
    assert bp.keep_spinning(1.01016) is None and not bp.spinning  # nothing due: sleep


def test_pending_polling_is_bounded_by_the_limit_after_the_last_read() -> None:
    bp = BusyPoll(S, pending=lambda: 1)  # e.g. a slow origin, or a tunnel
    bp.last = 1.0
    assert _read(bp, 2.0)
    assert bp.keep_spinning(2.0 + S / 2) == 0.0
    assert bp.keep_spinning(2.0 + S) is None  # S after the last read: give up, sleep


def test_without_pending_a_collapsed_window_starts_no_spinner() -> None:
    bp = BusyPoll(S)
    bp.last = 1.0
    assert not _read(bp, 2.0) and not bp.spinning


def test_sparse_traffic_with_pending_polls_only_while_the_origin_answers() -> None:
    # one request every ~1 ms, the origin answers in 40 us: poll for the answer every time,
    # never through the client's pause.
    state = {"open": 0}
    bp = BusyPoll(S, pending=lambda: state["open"])
    t, caught, spun = 1.0, 0, 0.0
    for _ in range(200):
        t += 1e-3  # the next request, after the client's pause
        if bp.spinning:
            assert bp.keep_spinning(t) is None  # nothing due: the spinner had stopped
        assert _read(bp, t)  # the loop was asleep: start (window 0, but it will ask pending)
        state["open"] = 1
        start = t
        assert bp.keep_spinning(t + 1e-6) == 0.0  # the answer is due: poll
        t += 40e-6
        bp.reads += 1  # the answer arrives while polling
        caught += 1
        assert bp.keep_spinning(t) == 0.0
        state["open"] = 0  # forwarded; connection back in the pool
        assert bp.keep_spinning(t + 1e-6) is None
        spun += t + 1e-6 - start
    assert caught == 200 and spun / 200 < 50e-6
