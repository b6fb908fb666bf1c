"""Graceful shutdown of HTTP/2 client connections (RFC 9113 §6.8), driven with bytes only:
the Drain event, then the exact frames out — GOAWAY(2^31-1) and a PING, the final GOAWAY with
the last stream processed once the PING's ACK is back (or a second later), REFUSED_STREAM for
streams above it, the streams below it finished, the connection closed once none is left."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

from proxycore.actions import Action, Close, Connect
from proxycore.events import Drain, Stop
from proxycore.testing import Harness
from tests.helpers import Simple, closed, connect_id, sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
DRAIN_PING = b"drain\x00\x00\x00"
MAX = (1 << 31) - 1


class _GoawayTolerant(h2.connection.H2ConnectionStateMachine):
    """``h2``'s client treats every frame after a GOAWAY as a protocol error; RFC 9113 §6.8
    lets the streams at or below its last stream id complete."""

    _transitions = dict(h2.connection.H2ConnectionStateMachine._transitions)
    _transitions[
        (h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY)
    ] = (None, h2.connection.ConnectionState.CLIENT_OPEN)
    _transitions[
        (h2.connection.ConnectionState.IDLE, h2.connection.ConnectionInputs.RECV_GOAWAY)
    ] = (None, h2.connection.ConnectionState.IDLE)


def frames(data: bytes) -> list[Frame]:
    out: list[Frame] = []
    while data:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9 : 9 + length]))
        out.append(f)
        data = data[9 + length :]
    return out


def goaways(fs: list[Frame]) -> list[tuple[int, int]]:
    return [(f.last_stream_id, f.error_code) for f in fs if isinstance(f, GoAwayFrame)]


class Client:
    """An h2 client on one proxy connection; ``auto``: send its answers (SETTINGS and PING
    ACKs) back at once."""

    def __init__(self, h: Harness, drain_first: bool = False) -> None:
        self.h = h
        self.c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.c.state_machine = _GoawayTolerant()
        self.c.initiate_connection()
        self.conn, _ = h.accept()
        self.events: list[Any] = []
        self.auto = True
        self.wire: list[Frame] = []  # every frame the proxy sent
        self.held = b""  # the answers not sent back (``auto`` off)
        if drain_first:  # then the preface and a request in one read
            h.feed(Drain(0, h.now))
            hdrs = [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "x")]
            self.c.send_headers(1, hdrs, end_stream=True)
        self.take(h.data(self.conn, self.c.data_to_send()))

    def take(self, acts: list[Action]) -> list[Frame]:
        out = sent(acts, self.conn)
        fs = frames(out)
        self.wire += fs
        if out:
            self.events += self.c.receive_data(out)
            more = self.c.data_to_send()
            if more and self.auto:
                fs += self.take(self.h.data(self.conn, more))
            else:
                self.held += more
        return fs

    def send(self) -> tuple[list[Action], list[Frame]]:
        acts = self.h.data(self.conn, self.c.data_to_send())
        return acts, self.take(acts)

    def request(self, sid: int) -> tuple[list[Action], list[Frame]]:
        hdrs = [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "x")]
        self.c.send_headers(sid, hdrs, end_stream=True)
        return self.send()

    def body(self, sid: int) -> bytes:
        evs = [e for e in self.events if isinstance(e, h2.events.DataReceived)]
        return b"".join(e.data for e in evs if e.stream_id == sid)


def drain(h: Harness, cl: Client) -> tuple[list[Action], list[Frame]]:
    acts = h.feed(Drain(0, h.now))
    return acts, cl.take(acts)


def test_drain_two_goaways_then_in_flight_stream_finishes_and_new_one_is_refused() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts, _ = cl.request(1)
    up = connect_id(acts)
    h.connected(up)
    cl.auto = False
    acts, fs = drain(h, cl)
    # the first GOAWAY: NO_ERROR, last stream id 2^31-1, then our PING
    assert [(type(f), f.stream_id) for f in fs] == [(GoAwayFrame, 0), (PingFrame, 0)]
    assert goaways(fs) == [(MAX, 0)]
    assert fs[1].opaque_data == DRAIN_PING and "ACK" not in fs[1].flags
    assert not closed(acts, cl.conn)
    # stream 3 opened before the client saw the GOAWAY: processed
    cl.auto = True
    cl.c.send_headers(
        3, [(":method", "GET"), (":path", "/b"), (":scheme", "http"), (":authority", "x")], True
    )
    acts = h.data(cl.conn, cl.c.data_to_send() + cl.held)  # HEADERS 3, then the PING's ACK
    fs = cl.take(acts)
    up3 = connect_id(acts)
    # the final GOAWAY: the last stream processed
    assert goaways(fs) == [(3, 0)]
    assert not closed(acts, cl.conn)
    # a stream above it: refused, nothing upstream
    acts, fs = cl.request(5)
    assert not Harness.connects(acts)
    assert [(type(f), f.stream_id, f.error_code) for f in fs] == [
        (RstStreamFrame, 5, ErrorCodes.REFUSED_STREAM)
    ]
    # the streams in flight finish; the connection closes after the last one
    fs = cl.take(h.data(up, OK))
    assert [(type(f), f.stream_id) for f in fs] == [
        (HeadersFrame, 1),
        (DataFrame, 1),  # the whole body, with END_STREAM
    ]
    assert "END_STREAM" in fs[-1].flags
    assert cl.body(1) == b"hello"
    h.connected(up3)
    acts = h.data(up3, OK)
    fs = cl.take(acts)
    assert [(type(f), f.stream_id) for f in fs] == [
        (HeadersFrame, 3),
        (DataFrame, 3),  # the whole body, with END_STREAM
    ]
    assert "END_STREAM" in fs[-1].flags
    assert cl.body(3) == b"hello"
    assert closed(acts, cl.conn)
    assert next(c for c in acts if isinstance(c, Close) and c.conn == cl.conn).abort is False
    assert goaways(cl.wire) == [(MAX, 0), (3, 0)]  # no third GOAWAY at the close


def test_drain_of_an_idle_connection_closes_after_the_ping_ack() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts, _ = cl.request(1)
    up = connect_id(acts)
    h.connected(up)
    cl.take(h.data(up, OK))
    acts, fs = drain(h, cl)  # the client ACKs the PING at once
    assert [(type(f), f.stream_id) for f in fs] == [
        (GoAwayFrame, 0),
        (PingFrame, 0),
        (GoAwayFrame, 0),
    ]
    assert goaways(fs) == [(MAX, 0), (1, 0)]
    assert any(isinstance(a, Close) and a.conn == cl.conn and not a.abort for a in h.log)


def test_final_goaway_a_second_later_without_the_ping_ack() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts, _ = cl.request(1)
    up = connect_id(acts)
    h.connected(up)
    cl.auto = False
    _, fs = drain(h, cl)
    assert goaways(fs) == [(MAX, 0)]
    acts = h.advance(0.5, cl.conn)
    assert not sent(acts, cl.conn)
    acts = h.advance(0.5, cl.conn)
    assert goaways(cl.take(acts)) == [(1, 0)]
    assert not closed(acts, cl.conn)
    fs = cl.take(acts := h.data(up, OK))
    assert cl.body(1) == b"hello" and closed(acts, cl.conn)


def test_stop_after_the_grace_period_cuts_what_is_left() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts, _ = cl.request(1)
    up = connect_id(acts)
    h.connected(up)
    _, fs = drain(h, cl)
    assert goaways(fs) == [(MAX, 0), (1, 0)]
    acts = h.feed(Stop(0, h.now, 5.0))
    assert closed(acts, cl.conn) and not sent(acts, cl.conn)  # (the GOAWAY went out already)
    assert any(isinstance(a, Close) and a.conn == up and a.abort for a in acts)


def test_connection_turning_to_http2_after_the_drain_began_is_drained_too() -> None:
    """Accepted before the Drain (HTTP/1.1 keeps a new connection for its first request), the
    preface after it: GOAWAY(2^31-1) and the PING at once, the request still served."""
    h = Harness(Simple())
    cl = Client(h, drain_first=True)
    assert goaways(cl.wire) == [(MAX, 0), (1, 0)]
    assert any(isinstance(f, PingFrame) and f.opaque_data == DRAIN_PING for f in cl.wire)
    up = next(a.conn for a in h.log if isinstance(a, Connect))
    h.connected(up)
    acts = h.data(up, OK)
    cl.take(acts)
    assert cl.body(1) == b"hello" and closed(acts, cl.conn)
