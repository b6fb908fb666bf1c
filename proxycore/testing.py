"""Scripted, socket-free tests of the core: bytes and events in, actions out.

Theory of operation: a :class:`Playbook` (after mitmproxy's) is a list of steps, ``>> event``
for input and ``<< action`` for an expected output, run against a fresh :class:`Engine`. Actions
of the types in ``ignore`` (timers by default) are skipped when comparing. On the first mismatch
it raises AssertionError showing the whole exchange, the expected and the actual action, and a
byte diff for Send. ``Harness`` is a lower-level driver for tests that need to look at the
actions themselves (random splits, property tests).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from proxycore.actions import Action, Close, Connect, Send, SetTimer
from proxycore.config import ServerConf
from proxycore.engine import Engine, NullLog
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    DataReceived,
    EofReceived,
    Event,
    FilterDone,
    TimerFired,
    WriteFailed,
)
from proxycore.phases import Proxy

__all__ = ["Harness", "Playbook", "assert_replays", "describe", "record"]


def describe(item: Event | Action) -> str:
    """One readable line for an event or action (bytes shown with repr, long ones cut)."""
    text = repr(item)
    return text if len(text) < 400 else text[:380] + "...)"


class Harness:
    """Drive one Engine by hand. Every method returns the actions that event produced."""

    def __init__(
        self,
        app: Proxy,
        conf: ServerConf | None = None,
        *,
        now: float = 0.0,
        logger: Any = None,
        access_log: Any = None,
        metrics: bool = False,
    ) -> None:
        """``access_log``: a logger for the access records (see proxycore.accesslog);
        ``metrics``: count exchanges (``engine.metrics``, see proxycore.metrics)."""
        self.engine = Engine(
            app, conf, logger or NullLog(), tls=False, access_log=access_log, metrics=metrics
        )  # scripted plaintext
        self.now = now
        self.log: list[Event | Action] = []

    def feed(self, event: Event) -> list[Action]:
        self.log.append(event)
        out = self.engine.feed(event)
        self.log.extend(out)
        return out

    def accept(self, client: tuple[str, int] = ("192.0.2.10", 50000)) -> tuple[int, list[Action]]:
        cid = self.engine.new_id()
        return cid, self.feed(Accepted(cid, self.now, client, ("127.0.0.1", 8080)))

    def data(self, conn: int, data: bytes) -> list[Action]:
        return self.feed(DataReceived(conn, data, self.now))

    def eof(self, conn: int) -> list[Action]:
        return self.feed(EofReceived(conn, self.now))

    def closed(self, conn: int, error: str | None = None) -> list[Action]:
        return self.feed(Closed(conn, self.now, error))

    def write_failed(self, conn: int, error: str = "reset the connection") -> list[Action]:
        return self.feed(WriteFailed(conn, self.now, error))

    def connected(self, conn: int) -> list[Action]:
        return self.feed(Connected(conn, self.now))

    def connect_failed(self, conn: int, reason: str = "refused") -> list[Action]:
        return self.feed(ConnectFailed(conn, self.now, reason, reason))

    def advance(self, seconds: float, conn: int) -> list[Action]:
        self.now += seconds
        return self.feed(TimerFired(conn, self.now))

    def filter_done(
        self, conn: int, token: int, result: Any = None, error: BaseException | None = None
    ) -> list[Action]:
        return self.feed(FilterDone(conn, token, self.now, result, error))

    @staticmethod
    def sent(actions: Iterable[Action], conn: int) -> bytes:
        """All bytes the actions send to ``conn``, joined."""
        return b"".join(a.data for a in actions if isinstance(a, Send) and a.conn == conn)

    @staticmethod
    def connects(actions: Iterable[Action]) -> list[Connect]:
        return [a for a in actions if isinstance(a, Connect)]

    @staticmethod
    def closes(actions: Iterable[Action], conn: int) -> list[Close]:
        return [a for a in actions if isinstance(a, Close) and a.conn == conn]

    def transcript(self) -> str:
        lines = []
        for item in self.log:
            arrow = ">>" if isinstance(item, Event) else "<<"
            lines.append(f"{arrow} {describe(item)}")
        return "\n".join(lines)


class Playbook:
    """``pb >> event`` feeds an event, ``pb << action`` expects an action; ``assert pb`` runs.

    >>> pb = Playbook(MyProxy())
    >>> pb >> Accepted(1, 0.0, ("1.2.3.4", 5), ("127.0.0.1", 80))
    >>> pb >> DataReceived(1, b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n", 0.0)
    >>> pb << Connect(2, Peer("127.0.0.1", 9000))
    >>> assert pb
    """

    def __init__(
        self,
        app: Proxy,
        conf: ServerConf | None = None,
        *,
        ignore: tuple[type[Action], ...] = (SetTimer,),
    ) -> None:
        self.engine = Engine(app, conf, NullLog(), tls=False)  # scripted plaintext
        self.ignore = ignore
        self.steps: list[tuple[str, Event | Action]] = []

    def __rshift__(self, event: Event) -> Playbook:
        self.steps.append((">>", event))
        return self

    def __lshift__(self, action: Action) -> Playbook:
        self.steps.append(("<<", action))
        return self

    def __bool__(self) -> bool:
        self.run()
        return True

    def run(self) -> None:
        pending: list[Action] = []
        log: list[str] = []
        for kind, item in self.steps:
            if kind == ">>":
                for extra in pending:
                    log.append(f"<< {describe(extra)}   (unexpected)")
                if pending:
                    self._fail(log, "unexpected action(s) before next event", pending[0], None)
                log.append(f">> {describe(item)}")
                assert isinstance(item, Event)
                pending = [a for a in self.engine.feed(item) if not isinstance(a, self.ignore)]
            else:
                assert isinstance(item, Action)
                if not pending:
                    self._fail(log, "expected an action, got none", None, item)
                actual = pending.pop(0)
                if actual != item:
                    self._fail(log, "action mismatch", actual, item)
                log.append(f"<< {describe(actual)}")
        if pending:
            self._fail(log, "unexpected action(s) at the end", pending[0], None)

    @staticmethod
    def _fail(log: list[str], what: str, actual: Action | None, expected: Action | None) -> None:
        lines = ["Playbook failed: " + what, *log]
        lines.append(f"expected: {describe(expected) if expected else '(nothing)'}")
        lines.append(f"actual:   {describe(actual) if actual else '(nothing)'}")
        if isinstance(actual, Send) and isinstance(expected, Send):
            a = actual.data.decode("latin-1").splitlines(keepends=True)
            b = expected.data.decode("latin-1").splitlines(keepends=True)
            diff = difflib.unified_diff(b, a, "expected", "actual")
            lines.extend(line.rstrip("\n") for line in diff)
        raise AssertionError("\n".join(lines))


def record(harness: Harness) -> dict[int, bytes]:
    """Start recording a :class:`Harness`'s engine; returns the dict that receives finished
    traces (downstream id -> trace bytes). Call ``harness.engine.recorder.flush_all()`` to get
    traces of connections that are still open."""
    from proxycore.trace import Recorder

    traces: dict[int, bytes] = {}

    def sink(conn: int, data: bytes) -> None:
        traces[conn] = traces.get(conn, b"") + data

    harness.engine.recorder = Recorder(harness.engine, sink)
    return traces


def assert_replays(
    trace: str | bytes | Any,
    app: Proxy | None = None,
    *,
    update: bool | None = None,
) -> None:
    """Replay a recorded trace (a path or the bytes) against ``app`` and fail the test with the
    first divergence if the actions differ. The three-line test::

        def test_checkout_session():
            assert_replays("tests/traces/checkout.pctrace", MyProxy())

    To change expectations on purpose (after changing a filter), run the test with
    ``PROXYCORE_UPDATE_TRACES=1`` (or pass ``update=True``): the trace file is rewritten with the
    actions of this replay and the test passes.
    """
    import os
    from pathlib import Path

    from proxycore.replay import load_trace, replay, write_trace

    path = None
    if isinstance(trace, (str, os.PathLike)):
        path = Path(trace)
        data = path.read_bytes()
        name = str(path)
    else:
        data, name = bytes(trace), "<trace bytes>"
    if update is None:
        update = os.environ.get("PROXYCORE_UPDATE_TRACES", "") not in ("", "0")
    parsed = load_trace(data, name)
    result = replay(parsed, app, allow_other_app=bool(update), full=bool(update))
    if result.ok:
        return
    if update and path is not None:
        path.write_bytes(write_trace(parsed, result.all_actual))
        return
    raise AssertionError(result.report())
