"""The --busy-poll window shared by every adapter (proxycore.adapters.BusyPoll), and its flag."""

from __future__ import annotations

import pytest

from proxycore.adapters import BusyPoll
from proxycore.cli import main
from proxycore.config import ServerConf


def test_off_unless_configured() -> None:
    assert BusyPoll.from_conf(ServerConf()) is None
    conf = ServerConf()
    conf.busy_poll = 0.001
    bp = BusyPoll.from_conf(conf)
    assert bp is not None and bp.window == 0.001


def test_one_spinner_per_window_extended_by_each_read() -> None:
    bp = BusyPoll(0.5)
    assert bp.touch(10.0)  # the first read starts the spinner
    assert not bp.touch(10.2)  # later reads extend the window of the running one
    assert bp.keep_spinning(10.6) == 0.0  # 10.2 + 0.5 not reached yet: poll again at once
    assert bp.keep_spinning(10.7) is None  # window over: the spinner stops ...
    assert not bp.spinning
    assert bp.touch(11.0)  # ... and the next read starts a new one


def test_steps_aside_while_the_loop_is_busy_then_carries_on() -> None:
    bp = BusyPoll(0.5)
    assert bp.touch(10.0)
    bp.touch(10.0001)  # more reads before the spinner's first turn: the loop has work anyway
    bp.touch(10.00015)
    assert bp.keep_spinning(10.0002) == BusyPoll.BACKOFF  # pause instead of polling at once
    assert bp.spinning and not bp.touch(10.0003)  # still one spinner (paused): no second one
    # After the pause the window still holds, with or without another read: poll again. (The
    # old rule stopped the spinner here and waited for a read after the pause; with none, the
    # rest of the window was slept through.)
    assert bp.keep_spinning(10.0003 + BusyPoll.BACKOFF) == 0.0
    assert bp.keep_spinning(10.4) == 0.0
    assert bp.keep_spinning(10.5004) is None and not bp.spinning


@pytest.mark.parametrize("bad", ["-1", "2", "x"])
def test_flag_range_is_checked(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["reverse-proxy", "--to", "127.0.0.1:1", "--busy-poll", bad])
    assert e.value.code == 2 and "--busy-poll" in capsys.readouterr().err
