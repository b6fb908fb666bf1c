"""HTTP/2 output without waste (issue 32): every event fed to the engine calls the HTTP/2
connection's ``data_to_send()`` at most once, however many frames its streams queued."""

from __future__ import annotations

from typing import Any

import h2.events
import pytest

from proxycore.actions import Action
from proxycore.events import Event
from proxycore.h2.server import H2Conn
from proxycore.testing import Harness
from tests.helpers import Simple, connect_id
from tests.test_h2_server import OK, Client


class Counting(Harness):
    """A Harness that records, per event fed, how often each HTTP/2 connection's
    ``data_to_send()`` ran (its ``takes``)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.conns: dict[int, Any] = {}  # every HTTP/2 connection seen, by id
        self.per_event: list[tuple[str, int]] = []

    def _h2(self) -> None:
        for conn_id, down in self.engine.downstreams.items():
            if isinstance(down, H2Conn):
                self.conns[conn_id] = down

    def feed(self, event: Event) -> list[Action]:
        self._h2()
        before = {k: c.h2.takes for k, c in self.conns.items()}
        out = super().feed(event)
        self._h2()
        most = max((c.h2.takes - before.get(k, 0) for k, c in self.conns.items()), default=0)
        self.per_event.append((type(event).__name__, most))
        return out

    def worst(self) -> int:
        return max(n for _, n in self.per_event)


@pytest.fixture
def h() -> Counting:
    return Counting(Simple())


def test_request_with_body_and_fixed_length_response(h: Counting) -> None:
    cl = Client(h)
    up = connect_id(cl.request(1, "POST", "/p", [("content-length", "6")], end=False))
    h.connected(up)
    cl.c.send_data(1, b"abc")
    cl.flush()
    cl.c.send_data(1, b"def", end_stream=True)
    cl.flush()
    cl.take(h.data(up, OK))
    assert cl.body(1) == b"hello" and cl.ended(1)
    assert h.worst() == 1, h.per_event


def test_chunked_response_with_trailers_in_one_upstream_read(h: Counting) -> None:
    cl = Client(h)
    up = connect_id(cl.request(1))
    h.connected(up)
    cl.take(
        h.data(
            up,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
        )
    )
    assert cl.body(1) == b"abcde" and cl.of(1, h2.events.TrailersReceived) and cl.ended(1)
    assert h.per_event[-1] == ("DataReceived", 1)  # head, two DATA, trailers: one call
    assert h.worst() == 1, h.per_event


def test_informational_and_response_in_one_upstream_read(h: Counting) -> None:
    cl = Client(h)
    up = connect_id(cl.request(1))
    h.connected(up)
    cl.take(h.data(up, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK))
    assert cl.body(1) == b"hello" and cl.ended(1)
    assert h.worst() == 1, h.per_event


def test_many_streams_in_one_read_each_answered_in_one_upstream_read(h: Counting) -> None:
    cl = Client(h)
    sids = list(range(1, 21, 2))
    for sid in sids:
        cl.c.send_headers(
            sid,
            [(":method", "GET"), (":path", f"/{sid}"), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
    ups = [a.conn for a in Harness.connects(cl.flush())]
    assert len(ups) == len(sids)
    for up in ups:
        h.connected(up)
    for up in ups:
        cl.take(h.data(up, OK))
    assert all(cl.body(sid) == b"hello" and cl.ended(sid) for sid in sids)
    assert h.worst() == 1, h.per_event


def test_refusals_and_local_answers(h: Counting) -> None:
    cl = Client(h)
    cl.request(1, extra=[(f"x-f{i}", "v") for i in range(101)])  # 431 before any exchange
    assert cl.headers(1)[b":status"] == b"431"
    up = connect_id(cl.request(3))
    cl.take(h.connect_failed(up))  # 502 from the proxy itself
    assert cl.headers(3)[b":status"] == b"502" and cl.ended(3)
    assert h.worst() == 1, h.per_event


def test_window_update_drains_several_streams_at_once(h: Counting) -> None:
    cl = Client(h)
    cl.c.update_settings({4: 8})  # SETTINGS_INITIAL_WINDOW_SIZE: 8 bytes per stream
    cl.flush()
    ups = [connect_id(cl.request(sid)) for sid in (1, 3, 5)]
    body = b"x" * 20
    for up in ups:
        h.connected(up)
        cl.take(h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + body))
    cl.c.update_settings({4: 65535})  # every stream's window opens in one event
    cl.flush()
    assert all(cl.body(sid) == body and cl.ended(sid) for sid in (1, 3, 5))
    assert h.worst() == 1, h.per_event
