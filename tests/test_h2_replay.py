"""Record and replay of HTTP/2 connections: a session's trace replays to identical frames,
its header names the HTTP/2 framing version (``h2``), and a replay under another version says
so."""

from __future__ import annotations

import json
import struct

from proxycore.events import Drain
from proxycore.h2.connection import FRAMING
from proxycore.replay import load_trace, replay
from proxycore.testing import Harness, record
from proxycore.trace import MAGIC
from tests.helpers import Simple, connect_id
from tests.test_h2_shutdown import OK, Client

POST = [(":method", "POST"), (":path", "/b"), (":scheme", "http"), (":authority", "x")]


def _h2_session() -> bytes:
    """Two streams (a GET, a POST with a body in pieces), the pooled upstream reused, then a
    graceful shutdown: both GOAWAYs, the last response, the close."""
    h = Harness(Simple())
    traces = record(h)
    cl = Client(h)
    acts, _ = cl.request(1)
    up = connect_id(acts)
    h.now += 0.01
    h.connected(up)
    cl.take(h.data(up, OK))
    cl.c.send_headers(3, POST, end_stream=False)
    cl.c.send_data(3, b"x" * 1000)
    cl.send()
    h.now += 0.02
    cl.c.send_data(3, b"y" * 100, end_stream=True)
    cl.send()
    cl.take(h.feed(Drain(0, h.now)))
    h.now += 0.3
    cl.take(h.data(up, OK))
    assert cl.body(3) == b"hello"
    h.engine.recorder.flush_all()  # type: ignore[union-attr]
    (trace,) = traces.values()
    return trace


def _with_header(data: bytes, **fields: object) -> bytes:
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(data[start : start + hlen])
    header.update(fields)
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + data[start + hlen :]


def test_h2_session_replays_identically_and_names_the_h2_version() -> None:
    trace = load_trace(_h2_session(), "h2.pctrace")
    assert trace.header["h2"] == FRAMING
    assert len(trace.groups) > 8
    result = replay(trace, Simple())
    assert result.ok, result.report()
    assert (
        result.report()
        == f"h2.pctrace: OK ({len(trace.groups)} events replayed, actions identical)"
    )


def test_http1_trace_has_no_h2_field() -> None:
    h = Harness(Simple())
    traces = record(h)
    down, _ = h.accept()
    up = connect_id(h.data(down, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.connected(up)
    h.data(up, OK)
    h.closed(down)
    (data,) = traces.values()
    assert "h2" not in load_trace(data).header


def test_replay_under_another_h2_version_says_so() -> None:
    trace = load_trace(_with_header(_h2_session(), h2="3.2.0"), "old.pctrace")
    result = replay(trace, Simple())
    assert result.ok  # (the same frames here; the note says why they might not be)
    assert result.report().splitlines()[1] == (
        f"  note: recorded with HTTP/2 framing 3.2.0, replayed with {FRAMING}: "
        "HTTP/2 frames may differ for that reason alone"
    )


def test_a_changed_byte_in_an_h2_trace_is_a_divergence_with_the_version_note() -> None:
    data = _with_header(_h2_session(), h2="3.2.0")
    trace = load_trace(data, "bad.pctrace")
    # the request the proxy sent upstream was for another path
    first = next(i for i, g in enumerate(trace.groups) if type(g.event).__name__ == "Connected")
    kind, conn, payload = trace.groups[first].actions[0]
    trace.groups[first].actions[0] = (kind, conn, payload.replace(b"/a", b"/z"))
    result = replay(trace, Simple())
    assert not result.ok
    report = result.report()
    assert report.startswith(f"bad.pctrace: DIVERGED at event #{first} of ")
    assert (
        "note: recorded with HTTP/2 framing 3.2.0"
        in report.splitlines()[0] + report.splitlines()[1]
    )
