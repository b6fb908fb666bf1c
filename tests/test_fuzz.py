"""Property-based fuzzing of the core: arbitrary client bytes, arbitrary splits, arbitrary
upstream behaviour and event orders (EOF, resets, timers at any point).

Invariants checked on every run:
1. nothing but the documented behaviour escapes: ``feed`` never raises and the engine never
   hits its internal-error containment;
2. every request gets exactly one response, in order, or the connection is closed;
3. no response is delivered to the wrong request (each origin response echoes its request's
   path, and the client sees them in the order it sent the requests);
4. nothing reaches the upstream for a request the proxy rejected (after a 4xx/5xx parse
   rejection, the origin sees no further request).

Profiles: ``fast`` runs with the normal suite; ``deep`` on its own:
``python -m pytest tests/test_fuzz.py --hypothesis-profile=deep``.
"""

from __future__ import annotations

from typing import Any

import h11
from hypothesis import given
from hypothesis import strategies as st

import proxycore
from proxycore.actions import Close, Connect, Send
from proxycore.errors import HTTPParseError
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    DataReceived,
    EofReceived,
    TimerFired,
)
from proxycore.h1.parse import (
    ChunkedDecoder,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from tests.helpers import ORIGIN


class _Log:
    def __init__(self) -> None:
        self.internal: list[str] = []

    def exception(self, msg: str, *a: Any, **k: Any) -> None:
        self.internal.append(msg % a if a else msg)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class Echo(proxycore.Proxy):
    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def _request(i: int, kind: int, body: bytes) -> bytes:
    path = f"/r{i}"
    if kind == 0:
        return f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    if kind == 1:
        return (
            f"POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    chunked = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return (
        f"PUT {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunked
    )


requests_st = st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=40)), min_size=1, max_size=4)
mutation_st = st.one_of(
    st.none(),
    st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=4)),  # insert garbage
    st.tuples(st.integers(0, 400), st.integers(1, 4)),  # delete bytes
)
# Steps after the client data: what the origin and the network do.
step_st = st.sampled_from(
    [
        "respond",
        "respond",
        "respond",
        "garbage",
        "eof",
        "reset",
        "client_eof",
        "client_reset",
        "timer",
    ]
)


class Origin:
    """A model origin per upstream connection: h11 parses requests, answers echo the path."""

    def __init__(self) -> None:
        self.conns: dict[int, h11.Connection] = {}
        self.seen: list[str] = []
        self.pending: dict[int, list[str]] = {}

    def receive(self, conn: int, data: bytes) -> None:
        c = self.conns.setdefault(conn, h11.Connection(h11.SERVER))
        if c.our_state is h11.ERROR or c.their_state is h11.ERROR:
            return
        c.receive_data(data)
        while True:
            try:
                ev = c.next_event()
            except h11.RemoteProtocolError:
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return
            if isinstance(ev, h11.Request):
                path = ev.target.decode()
                self.seen.append(path)
                self.pending.setdefault(conn, []).append(path)

    def response(self, conn: int) -> bytes | None:
        paths = self.pending.get(conn)
        if not paths:
            return None
        path = paths.pop(0)
        c = self.conns[conn]
        try:
            if c.their_state is not h11.DONE:
                return None
            out = c.send(
                h11.Response(
                    status_code=200, headers=[("X-Echo", path), ("Content-Length", str(len(path)))]
                )
            )
            out += c.send(h11.Data(data=path.encode())) + c.send(h11.EndOfMessage())
            c.start_next_cycle()
        except h11.LocalProtocolError:
            return None
        return out


def _num(path: str) -> int:
    digits = "".join(ch for ch in path if ch.isdigit())
    return int(digits) if digits else -1


def _parse_responses(data: bytes) -> list[tuple[int, str | None]]:
    """(status, X-Echo) of each complete response in a downstream byte stream."""
    out: list[tuple[int, str | None]] = []
    buf = bytearray(data)
    while buf:
        end = find_head_end(buf, 0, proxycore.Limits(), False)
        if end < 0:
            break
        resp, meta = parse_response_head(bytes(buf[:end]), "GET")
        del buf[:end]
        if resp.status < 200:
            continue
        if meta.body == 1:
            if len(buf) < meta.length:
                break
            del buf[: meta.length]
        elif meta.body == 2:
            dec = ChunkedDecoder()
            dec.feed(buf)
            if not dec.done:
                break
        elif meta.body == 3:
            buf.clear()
        out.append((resp.status, resp.headers.get("x-echo")))
    return out


@given(
    reqs=requests_st,
    mutation=mutation_st,
    cuts=st.lists(st.integers(0, 500), max_size=6),
    steps=st.lists(step_st, max_size=12),
)
def test_core_invariants(
    reqs: list[tuple[int, bytes]], mutation: Any, cuts: list[int], steps: list[str]
) -> None:
    log = _Log()
    engine = proxycore.Engine(
        Echo(), proxycore.ServerConf(read_timeout=5, header_timeout=5, keepalive_timeout=5), log
    )
    wire = b"".join(_request(i, k, b) for i, (k, b) in enumerate(reqs))
    if mutation is not None:
        pos, what = mutation
        pos %= len(wire) + 1
        wire = (
            wire[:pos] + what + wire[pos:]
            if isinstance(what, bytes)
            else wire[:pos] + wire[pos + what :]
        )
    now = 0.0
    down = engine.new_id()
    origin = Origin()
    client_out = bytearray()
    closed = False
    upstreams: set[int] = set()
    connecting: set[int] = set()

    def feed(ev: Any) -> None:
        nonlocal closed
        for a in engine.feed(ev):
            if isinstance(a, Send):
                if a.conn == down:
                    client_out.extend(a.data)
                else:
                    assert a.conn in upstreams
                    origin.receive(a.conn, a.data)
            elif isinstance(a, Connect):
                upstreams.add(a.conn)
                connecting.add(a.conn)
            elif isinstance(a, Close):
                if a.conn == down:
                    closed = True
                upstreams.discard(a.conn)
                connecting.discard(a.conn)

    feed(Accepted(down, now, ("192.0.2.1", 1), ("127.0.0.1", 8080)))
    prev = 0
    for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
        if cut > prev and not closed:
            feed(DataReceived(down, wire[prev:cut], now))
            prev = cut
        for up in list(connecting):
            connecting.discard(up)
            feed(Connected(up, now))
    for step in steps:
        if closed:
            break
        for up in list(connecting):
            connecting.discard(up)
            feed(Connected(up, now))
        live = sorted(upstreams)
        if step == "respond":
            for up in live:
                r = origin.response(up)
                if r:
                    feed(DataReceived(up, r, now))
        elif step == "garbage" and live:
            feed(DataReceived(live[0], b"\x00garbage\r\n\r\n", now))
        elif step == "eof" and live:
            feed(EofReceived(live[0], now))
        elif step == "reset" and live:
            feed(Closed(live[0], now, "reset"))
        elif step == "client_eof":
            feed(EofReceived(down, now))
        elif step == "client_reset":
            feed(Closed(down, now, "reset"))
            closed = True
        elif step == "timer":
            now += 6.0
            feed(TimerFired(down, now))
    # drain: let the origin answer everything that is still answerable
    for _ in range(8):
        if closed:
            break
        for up in list(connecting):
            connecting.discard(up)
            feed(Connected(up, now))
        for up in sorted(upstreams):
            r = origin.response(up)
            if r:
                feed(DataReceived(up, r, now))

    # 1. nothing escaped, nothing hit the containment path
    assert log.internal == []
    # 3. responses in request order, each to its own request: the k-th final response answers
    #    the k-th request (exactly, when the wire was not mutated; a mutation can merge or
    #    split requests, so then echoes must still only move forward)
    responses = _parse_responses(bytes(client_out))
    echoes = [e for _, e in responses if e is not None]
    if mutation is None:
        for k, (_, echo) in enumerate(responses):
            assert echo is None or echo == f"/r{k}", (k, responses)
    assert set(echoes) <= set(origin.seen)
    # 4. the origin saw requests in order; a repeat is only ever an immediate retry of the same
    #    request (a pooled connection that died before answering)
    collapsed = [p for i, p in enumerate(origin.seen) if i == 0 or origin.seen[i - 1] != p]
    if mutation is None:
        assert collapsed == [f"/r{k}" for k in range(len(collapsed))], origin.seen
    rejected = [
        k for k, (s, e) in enumerate(responses) if e is None and s in (400, 413, 414, 431, 501, 505)
    ]
    if rejected:
        # nothing after a rejection: it is the last response, and the origin saw no request
        # beyond the ones answered before it
        assert rejected[0] == len(responses) - 1
        assert len(collapsed) <= rejected[0] + 1
    # 2. every request answered or the connection closed
    if not closed and mutation is None:
        assert len(responses) <= len(reqs)


@given(st.binary(max_size=300), st.integers(0, 200))
def test_parser_never_more_lenient_than_h11(noise: bytes, pos: int) -> None:
    """Differential: whatever our request parser accepts, h11 accepts too (we may be
    stricter, never looser) — on valid heads with arbitrary bytes spliced in."""
    base = b"POST /p?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\nX-A: b\r\n\r\n"
    pos %= len(base) - 3
    head = base[:pos] + noise + base[pos:]
    end = head.find(b"\r\n\r\n")
    head = head[: end + 4]
    if end < 0:
        return
    try:
        parse_request_head(head)
    except HTTPParseError:
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    ev = conn.next_event()  # raises RemoteProtocolError if h11 rejects: that is the failure
    assert isinstance(ev, h11.Request)
