"""The exchange's transition tables (proxycore.exchange_states): their shape, their checking,
the README's rendering of them, and the exact paths typical exchanges take through them.

Every other test is also checked against the tables (tests/conftest.py fails a test in which
an exchange took a transition the table does not have; conformance/conftest.py does the same
from the proxies' logs): this module checks the paths themselves.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import proxycore
import proxycore.session
from proxycore import exchange_states as X
from proxycore.actions import RunFilter
from proxycore.testing import Harness
from tests.helpers import ORIGIN, Simple, closed, connect_id, sent, setup_request

ROOT = Path(__file__).resolve().parent.parent
GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

# ---------------------------------------------------------------------- the tables' shape


def _rows(table: dict[int, dict[int, int]]) -> set[tuple[int, int]]:
    return {(s, e) for s, row in table.items() for e in row}


def test_every_state_has_a_row_and_ints_name_them() -> None:
    assert sorted(X.EXCHANGE_TABLE) == list(range(len(X.EXCHANGE_STATE_NAMES)))
    assert sorted(X.BODY_TABLE) == list(range(len(X.BODY_STATE_NAMES)))
    assert len(X.EXCHANGE_EVENT_NAMES) == X.N_EXCHANGE_EVENTS
    assert len(X.BODY_EVENT_NAMES) == X.N_BODY_EVENTS
    for i, name in enumerate(X.EXCHANGE_STATE_NAMES):
        value = getattr(X, name)
        assert type(value) is int and value == i  # Final ints, not an IntEnum
    for i, name in enumerate(X.EXCHANGE_EVENT_NAMES):
        assert getattr(X, name) == i


def _reachable(table: dict[int, dict[int, int]], start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in table[todo.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reached_and_every_state_can_end() -> None:
    assert _reachable(X.EXCHANGE_TABLE, X.REQUEST_PHASES) == set(X.EXCHANGE_TABLE)
    for state in X.EXCHANGE_TABLE:
        assert X.DONE in _reachable(X.EXCHANGE_TABLE, state), X.EXCHANGE_STATE_NAMES[state]
    # DONE is the only final state; the finished states only go forward
    assert [s for s, row in X.EXCHANGE_TABLE.items() if not row] == [X.DONE]
    assert X.EXCHANGE_TABLE[X.LOGGING] == {X.HAND_BACK: X.DONE, X.LOGGING_DONE: X.LOGGED}
    assert X.EXCHANGE_TABLE[X.LOGGED] == {X.HAND_BACK: X.DONE}
    # every state before LOGGING can end (the client leaves, the shutdown cuts it)
    for state in range(X.LOGGING):
        assert X.EXCHANGE_TABLE[state].get(X.FINISH) == X.LOGGING
    assert _reachable(X.BODY_TABLE, X.UNREAD) == set(X.BODY_TABLE)


def test_no_transition_enters_an_initial_state() -> None:
    # (so 0, the initial state's number, can mean "no row" in the flattened tables)
    for table, initial in ((X.EXCHANGE_TABLE, X.REQUEST_PHASES), (X.BODY_TABLE, X.UNREAD)):
        assert initial == X.NO_ROW == 0
        assert all(initial not in row.values() for row in table.values())
    n = X.N_EXCHANGE_EVENTS
    for state, row in X.EXCHANGE_TABLE.items():
        for event in range(n):
            assert X.EXCHANGE_NEXT[state * n + event] == row.get(event, X.NO_ROW)


def test_each_pair_of_states_is_one_event() -> None:
    # (a path read as states says which events it took)
    for table in (X.EXCHANGE_TABLE, X.BODY_TABLE):
        for row in table.values():
            assert len(set(row.values())) == len(row)


def test_tunnel_is_reserved_and_nothing_enters_it_yet() -> None:
    entering = {(s, e) for s, e in _rows(X.EXCHANGE_TABLE) if X.EXCHANGE_TABLE[s][e] == X.TUNNEL}
    assert entering == {(X.AWAITING_HEAD, X.UPGRADED)}
    assert X.RESERVED == {(X.AWAITING_HEAD, X.UPGRADED), (X.TUNNEL, X.FINISH)}
    assert "UPGRADED" not in (ROOT / "proxycore" / "session.py").read_text()


def test_a_transition_not_in_the_table_raises_and_is_recorded() -> None:
    assert X.exchange_next(X.REQUEST_PHASES, X.PICK_PEER) == X.CHOOSING_PEER
    assert X.body_next(X.FORWARDING, X.END) == X.READ
    assert not X.exchange_allows(X.DONE, X.RESPOND)
    try:
        with pytest.raises(X.ExchangeStateError, match="cannot take HEAD_SENT in SENDING"):
            X.exchange_next(X.SENDING, X.HEAD_SENT)
        with pytest.raises(X.ExchangeStateError, match="request body cannot take FORWARD"):
            X.body_next(X.READ, X.FORWARD)
        assert len(X.VIOLATIONS) == 2
    finally:
        X.VIOLATIONS.clear()  # (they were meant: the autouse check must not fail this test)


def test_the_readme_shows_the_tables_as_generated() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_state_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    readme = (ROOT / "README.md").read_text()
    assert X.table_markdown() in readme


# ---------------------------------------------------------------------- the paths exchanges take

Step = tuple[str, str, str]  # (machine "x" or "b", state name, event name)


@pytest.fixture
def path(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Step]]:
    """The transitions exchanges take, in order: every store to ``Session._state`` /
    ``_body`` after the first is recorded with the event the table names for it (one per pair
    of states, test_each_pair_of_states_is_one_event). On the source build only, where a
    slot's descriptor can be wrapped."""
    Session = proxycore.session.Session
    if not proxycore.session.__file__.endswith(".py"):
        pytest.skip("a compiled class's attributes cannot be wrapped (checked on the source)")
    taken: list[Step] = []

    def recorded(
        slot: str, machine: str, table: dict[int, dict[int, int]], states: Any, events: Any
    ) -> property:
        desc = Session.__dict__[slot]

        def get(s: Any) -> int:
            return int(desc.__get__(s, Session))

        def put(s: Any, new: int) -> None:
            try:
                old = desc.__get__(s, Session)
            except AttributeError:  # (the first store: the initial state)
                old = None
            if old is not None:
                (event,) = [e for e, nxt in table[old].items() if nxt == new]
                taken.append((machine, states[old], events[event]))
            desc.__set__(s, new)

        return property(get, put)

    monkeypatch.setattr(
        Session,
        "_state",
        recorded("_state", "x", X.EXCHANGE_TABLE, X.EXCHANGE_STATE_NAMES, X.EXCHANGE_EVENT_NAMES),
    )
    monkeypatch.setattr(
        Session,
        "_body",
        recorded("_body", "b", X.BODY_TABLE, X.BODY_STATE_NAMES, X.BODY_EVENT_NAMES),
    )
    yield taken


def x(*steps: str) -> list[Step]:
    """``x("REQUEST_PHASES PICK_PEER", ...)`` → the exchange's steps."""
    return [("x", *s.split()) for s in steps]  # type: ignore[misc]


ENDS = x("ENDING FINISH", "LOGGING HAND_BACK")
NEW_CONNECTION = x("REQUEST_PHASES PICK_PEER", "CHOOSING_PEER CONNECT", "CONNECTING CONNECTED")
RELAYED = x(
    "AWAITING_HEAD HEAD_RECEIVED",
    "RESPONSE_PHASES HEAD_SENT",
    "STREAMING BODY_RECEIVED",
)


def test_a_proxied_get(path: list[Step]) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    assert path == [*NEW_CONNECTION, *x("SENDING REQUEST_SENT"), *RELAYED, *ENDS]
    path.clear()
    h.data(down, GET)  # the next request takes the pooled connection
    h.data(up, OK)
    assert path[:2] == x("REQUEST_PHASES PICK_PEER", "CHOOSING_PEER CONNECTED")


def test_a_post_forwards_its_body_then_waits(path: list[Step]) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, POST + b"01234")
    h.data(down, b"56789")
    h.data(up, OK)
    assert path == [
        *NEW_CONNECTION,
        ("b", "UNREAD", "FORWARD"),
        ("b", "FORWARDING", "END"),
        *x("SENDING REQUEST_SENT"),
        *RELAYED,
        *ENDS,
    ]


def test_an_early_answer_then_the_rest_of_the_body_is_skipped(path: list[Step]) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, POST + b"01")
    acts = h.data(up, OK)
    assert sent(acts, down).endswith(b"hello")
    assert path == [
        *NEW_CONNECTION,
        ("b", "UNREAD", "FORWARD"),
        *x("SENDING HEAD_RECEIVED", "RESPONSE_PHASES HEAD_SENT", "STREAMING BODY_RECEIVED"),
        ("b", "FORWARDING", "SKIP"),
        *x("ENDING FINISH", "LOGGING LOGGING_DONE"),
    ]
    path.clear()
    acts = h.data(down, b"23456789")  # the rest arrives: dropped, the connection carries on
    assert path == [("b", "SKIPPING", "END"), *x("LOGGED HAND_BACK")]
    assert not closed(acts, down)


def test_a_request_filter_answers(path: list[Step]) -> None:
    class Deny(Simple):
        def request_filter(self, session: Any, ctx: Any) -> bool:
            session.respond(403, b"no\n")
            return True

    h = Harness(Deny())
    down, _ = h.accept()
    assert sent(h.data(down, GET), down).startswith(b"HTTP/1.1 403 ")
    assert path == x("REQUEST_PHASES RESPOND", "ANSWERED FINISH", "LOGGING HAND_BACK")


def test_a_refused_connection_is_retried_then_fails(path: list[Step]) -> None:
    class Retry(Simple):
        def fail_to_connect(self, session: Any, peer: Any, ctx: Any, e: Any) -> Any:
            e.retry = True
            return e

    h = Harness(Retry(), proxycore.ServerConf(max_retries=1))
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    up2 = connect_id(h.connect_failed(up, "refused"))
    acts = h.connect_failed(up2, "refused")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")
    assert path == x(
        "REQUEST_PHASES PICK_PEER",
        "CHOOSING_PEER CONNECT",
        "CONNECTING UPSTREAM_ERROR",
        "UPSTREAM_FAILED RETRY",
        "CHOOSING_PEER CONNECT",
        "CONNECTING UPSTREAM_ERROR",
        "UPSTREAM_FAILED FAIL",
        "FAILING RESPOND",
        "ANSWERED FINISH",
        "LOGGING HAND_BACK",
    )


def test_no_peer_fails_from_choosing_one(path: list[Step]) -> None:
    class NoPeer(proxycore.Proxy):
        def upstream_peer(self, session: Any, ctx: Any) -> None:
            return None

    h = Harness(NoPeer())
    down, _ = h.accept()
    assert sent(h.data(down, GET), down).startswith(b"HTTP/1.1 502 ")
    assert path[:3] == x("REQUEST_PHASES PICK_PEER", "CHOOSING_PEER FAIL", "FAILING RESPOND")


def test_the_origin_resets_while_the_body_goes(path: list[Step]) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, POST + b"01")
    acts = h.closed(up, "reset")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")
    assert path[3:7] == [
        ("b", "UNREAD", "FORWARD"),
        *x("SENDING UPSTREAM_ERROR"),
        ("b", "FORWARDING", "STOP"),
        *x("UPSTREAM_FAILED FAIL"),
    ]


def test_the_response_is_cut_after_its_head(path: list[Step]) -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, GET)
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhel")
    acts = h.closed(up, "reset")
    assert closed(acts, down)
    assert path[-4:] == x(
        "AWAITING_HEAD HEAD_RECEIVED",
        "RESPONSE_PHASES HEAD_SENT",
        "STREAMING FINISH",
        "LOGGING HAND_BACK",
    )


class _Deferred(proxycore.Proxy):
    """upstream_peer and response_filter run as blocking calls (deferred to the adapter)."""

    @proxycore.blocking
    def upstream_peer(self, session: Any, ctx: Any) -> Any:
        return ORIGIN

    @proxycore.blocking
    def response_filter(self, session: Any, resp: Any, ctx: Any) -> None:
        return None


def _deferred(h: Harness, acts: list[Any]) -> RunFilter:
    (rf,) = [a for a in acts if isinstance(a, RunFilter)]
    return rf


def test_the_client_leaves_while_a_phase_runs(path: list[Step]) -> None:
    h = Harness(_Deferred())
    down, _ = h.accept()
    rf = _deferred(h, h.data(down, GET))
    h.closed(down, "reset")
    h.filter_done(down, rf.token, result=ORIGIN)  # too late: dropped
    assert path == x(
        "REQUEST_PHASES PICK_PEER", "CHOOSING_PEER FINISH", "LOGGING HAND_BACK",
    )  # fmt: skip


def test_the_origin_fails_while_a_response_phase_runs(path: list[Step]) -> None:
    h = Harness(_Deferred())
    down, _ = h.accept()
    rf = _deferred(h, h.data(down, GET))
    up = connect_id(h.filter_done(down, rf.token, result=ORIGIN))
    h.connected(up)
    rf2 = _deferred(h, h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"))
    acts = h.closed(up, "reset")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")
    h.filter_done(down, rf2.token)  # the stale result of the response filter: dropped
    assert x("RESPONSE_PHASES UPSTREAM_ERROR", "UPSTREAM_FAILED FAIL")[0] in path
    assert path[-1] == ("x", "LOGGING", "HAND_BACK")


def test_a_later_phase_that_answers_ends_the_exchange(path: list[Step]) -> None:
    class AnswerFromPeer(proxycore.Proxy):
        def upstream_peer(self, session: Any, ctx: Any) -> Any:
            session.respond(503, b"later\n")
            return ORIGIN  # (the answer stands: no connection is opened)

    h = Harness(AnswerFromPeer())
    down, _ = h.accept()
    acts = h.data(down, GET)
    assert sent(acts, down).startswith(b"HTTP/1.1 503 ")
    assert not h.connects(acts)
    assert path == x(
        "REQUEST_PHASES PICK_PEER", "CHOOSING_PEER RESPOND", "ANSWERED FINISH",
        "LOGGING HAND_BACK",
    )  # fmt: skip


def test_respond_after_the_exchange_ended_is_refused_politely() -> None:
    seen: list[str] = []

    class LateAnswer(Simple):
        def logging(self, session: Any, e: Any, ctx: Any) -> None:
            try:
                session.respond(200, b"late")
            except RuntimeError as exc:
                seen.append(str(exc))

    class Gone(LateAnswer):
        @proxycore.blocking
        def upstream_peer(self, session: Any, ctx: Any) -> Any:
            return ORIGIN

    h = Harness(Gone())
    down, _ = h.accept()
    h.data(down, GET)
    h.closed(down, "reset")  # no response started; the exchange ends, logging runs
    assert seen == ["respond() after the exchange ended (the client has its answer)"]
    assert not X.VIOLATIONS
