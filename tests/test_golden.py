"""The golden traces (tests/golden/INDEX.md) replay byte for byte, timer deadlines included.

They pin today's HTTP/1.1 output while the exchange is reshaped for HTTP/2: a step that changes
one action of one trace is not behaviour-neutral. This file runs on the pure-Python core and,
through tests/test_compiled.py, on the compiled one. To change a trace on purpose:
``python -m tests.golden.generate`` and a commit message that says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxycore.replay import load_trace, replay
from tests.golden.scenarios import SCENARIOS

GOLDEN = Path(__file__).resolve().parent / "golden"
TRACES = sorted(GOLDEN.glob("*.pctrace"))


def test_there_is_one_trace_per_scenario() -> None:
    assert len(TRACES) >= 25
    assert {p.stem for p in TRACES} == {s.name for s in SCENARIOS}


@pytest.mark.parametrize("path", TRACES, ids=[p.stem for p in TRACES])
def test_golden_trace_replays_identically(path: Path) -> None:
    trace = load_trace(path.read_bytes(), str(path))
    assert trace.groups, "an empty trace pins nothing"
    result = replay(trace)  # the app named in the trace, as recorded
    assert result.ok, result.report()
    assert result.events == len(trace.groups)


def test_a_changed_action_is_caught() -> None:
    # The check itself: one byte of one recorded Send changed must fail the replay.
    path = GOLDEN / "relay_get.pctrace"
    trace = load_trace(path.read_bytes(), str(path))
    for g in trace.groups:
        for i, (kind, conn, payload) in enumerate(g.actions):
            if kind == 64 and b"hello" in payload:
                g.actions[i] = (kind, conn, payload.replace(b"hello", b"hellO"))
                result = replay(trace)
                assert not result.ok and "hellO" in result.report()
                return
    raise AssertionError("relay_get has no Send with the body")


def test_a_changed_timer_deadline_is_caught() -> None:
    path = GOLDEN / "timeout_read.pctrace"
    trace = load_trace(path.read_bytes(), str(path))
    for g in trace.groups:
        for i, (kind, conn, payload) in enumerate(g.actions):
            if kind == 70 and payload != b"null":
                g.actions[i] = (kind, conn, str(float(payload) + 0.25).encode())
                assert not replay(trace).ok
                return
    raise AssertionError("timeout_read arms no timer")
