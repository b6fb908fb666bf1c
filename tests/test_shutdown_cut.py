"""The end of a shutdown in the core: ``Stop(0, now, grace)`` cuts every exchange still in
flight (access-log entry flagged as cut, a SHUTDOWN error for the ``logging`` phase), closes
every connection with a reset, and logs one error line with the count; it is recorded in every
open trace and replays (no sockets)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import proxycore
from proxycore.accesslog import AccessEntry, format_combined, format_json
from proxycore.actions import Close
from proxycore.errors import ErrorType, ProxyError
from proxycore.events import Stop
from proxycore.replay import load_trace, replay
from proxycore.testing import Harness, record
from proxycore.trace import decode_event, encode_event
from tests.helpers import ORIGIN, connect_id, setup_request

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n"


class Logged(proxycore.Proxy):
    """Keeps what its ``logging`` phase is told."""

    def __init__(self) -> None:
        self.errors: list[ProxyError | None] = []

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN

    def logging(self, session: Any, error: ProxyError | None, ctx: Any) -> None:
        self.errors.append(error)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Any:
    """(error log, access log) loggers and their records."""
    made = []
    for kind in ("error", "access"):
        logger = logging.getLogger(f"test.shutdown.{kind}.{id(made)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        rec = Records()
        logger.addHandler(rec)
        made.append((logger, rec))
    yield made
    for logger, rec in made:
        logger.removeHandler(rec)


def _scene(h: Harness) -> dict[str, int]:
    """Four client connections: one request waiting for its response head, one whose
    response is half sent, one finished (keep-alive, idle), one with half a head."""
    waiting, _, _ = setup_request(h, GET)
    mid, up_mid, _ = setup_request(h, GET)
    h.data(up_mid, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    done, up_done, _ = setup_request(h, GET)
    h.data(up_done, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    partial, _ = h.accept()
    h.data(partial, b"GET /b HTTP/1.1\r\nHo")
    return {"waiting": waiting, "mid": mid, "done": done, "partial": partial}


def test_stop_cuts_what_is_in_flight_logs_it_and_resets_every_connection(logs: Any) -> None:
    (err_log, errors), (access_log, access) = logs
    app = Logged()
    h = Harness(app, logger=err_log, access_log=access_log)
    conns = _scene(h)
    assert len(access.records) == 1  # the finished one
    h.now += 5.0
    acts = h.feed(Stop(0, h.now, 5.0))
    closes = {a.conn: a.abort for a in acts if isinstance(a, Close)}
    for name, conn in conns.items():
        assert closes.get(conn) is True, (name, acts)
    assert len(closes) == 7, acts  # and the upstream connections: two in use, one pooled
    assert all(closes.values()), acts
    assert not h.engine.downstreams and not h.engine.upstreams
    (line,) = [r.getMessage() for r in errors.records if r.levelno == logging.ERROR]
    assert line == "grace period of 5 s over: 2 exchanges still in flight cut (logged as cut in " \
        "the access log)"  # fmt: skip
    done, waiting, mid = (r.access for r in access.records)  # type: ignore[attr-defined]
    assert not done.cut and done.status == 200
    assert waiting.cut and (waiting.status, waiting.body_bytes_sent) == (444, 0)
    assert waiting.upstream == (("127.0.0.1:9000", 0, 0.0, -1.0),)
    assert mid.cut and (mid.status, mid.body_bytes_sent) == (200, 5)
    assert mid.request_time == pytest.approx(5.0)
    shutdown = [e for e in app.errors if e is not None]
    assert [e.etype for e in shutdown] == [ErrorType.SHUTDOWN] * 2
    assert shutdown[0].message == "cut: the grace period of 5 s ran out"


def test_fast_stop_and_a_stop_with_nothing_in_flight(logs: Any) -> None:
    (err_log, errors), (access_log, access) = logs
    h = Harness(Logged(), logger=err_log, access_log=access_log)
    setup_request(h, GET)
    h.feed(Stop(0, h.now, 0.0))
    assert [r.getMessage() for r in errors.records if r.levelno == logging.ERROR] == [
        "fast shutdown: 1 exchange still in flight cut (logged as cut in the access log)"
    ]
    assert [r.access.cut for r in access.records] == [True]  # type: ignore[attr-defined]
    errors.records.clear()
    h2 = Harness(Logged(), logger=err_log, access_log=access_log)
    down, _ = h2.accept()
    acts = h2.feed(Stop(0, h2.now, 5.0))
    assert [(a.conn, a.abort) for a in acts if isinstance(a, Close)] == [(down, True)]
    assert errors.records == [] and len(access.records) == 1


def test_the_cut_flag_in_both_formats() -> None:
    up = (("127.0.0.1:9000", 200, 0.001, 0.002),)
    entry = AccessEntry("192.0.2.1", GET, 200, 5, 5.0, up)
    plain_combined, plain_json = format_combined(entry), format_json(entry)
    assert "cut" not in plain_combined and "cut" not in json.loads(plain_json)
    entry.cut = True
    assert format_combined(entry) == plain_combined + " cut=1"
    assert json.loads(format_json(entry)) == {**json.loads(plain_json), "cut": True}
    for attempts in [(), (*up, ("127.0.0.1:9001", 0, -1.0, -1.0))]:
        entry.upstream = attempts
        assert format_combined(entry).endswith(" cut=1")
        assert json.loads(format_json(entry))["cut"] is True


def test_stop_is_recorded_in_every_open_trace_and_replays() -> None:
    h = Harness(Logged())
    traces = record(h)
    _scene(h)
    h.feed(Stop(0, h.now + 5.0, 5.0))
    assert len(traces) == 4  # each connection's trace ends with the Stop that closed it
    for conn, data in traces.items():
        trace = load_trace(data, f"conn{conn}")
        assert isinstance(trace.groups[-1].event, Stop), conn
        assert trace.groups[-1].event.grace == 5.0  # type: ignore[attr-defined]
        result = replay(trace, Logged())
        assert result.ok, result.report()
    kind, payload = encode_event(Stop(0, 1.5, 2.5))
    assert decode_event(kind, 0, 1.5, payload) == Stop(0, 1.5, 2.5)


def test_connect_in_progress_is_cut_too(logs: Any) -> None:
    (err_log, _), (access_log, access) = logs
    h = Harness(Logged(), logger=err_log, access_log=access_log)
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))  # connecting, never connected
    acts = h.feed(Stop(0, h.now + 1.0, 1.0))
    assert {(a.conn, a.abort) for a in acts if isinstance(a, Close)} == {(down, True), (up, True)}
    (entry,) = (r.access for r in access.records)  # type: ignore[attr-defined]
    assert entry.cut and entry.status == 444
