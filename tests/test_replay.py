"""Record and replay: traces reproduce the same actions byte for byte; divergences and bad
traces are reported clearly."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

import proxycore
from proxycore.replay import TraceError, groups_of, load_trace, normalized, replay
from proxycore.testing import Harness, assert_replays, record
from proxycore.trace import MAGIC
from tests.helpers import ORIGIN, connect_id

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Tagging(proxycore.Proxy):
    """Used by the tests: tags requests and responses, answers /deny itself."""

    def __init__(self, tag: str = "v1") -> None:
        self.tag = tag

    def new_ctx(self) -> dict[str, Any]:
        return {}

    def request_filter(self, session: Any, ctx: Any) -> bool:
        if session.req_header.path == "/deny":
            session.respond(403, b"no\n")
            return True
        return False

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN

    def upstream_request_filter(self, session: Any, req: Any, ctx: Any) -> None:
        req.headers["X-Tag"] = self.tag

    def response_filter(self, session: Any, resp: Any, ctx: Any) -> None:
        resp.headers["X-Tag"] = self.tag


class Renamed(Tagging):
    pass


class AsyncPeer(Tagging):
    async def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def _session(h: Harness) -> None:
    """Two connections: the second reuses the first's pooled upstream connection."""
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    h.now += 0.01
    h.connected(up)
    h.now += 0.02
    h.data(up, OK)
    h.data(down, b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")
    h.closed(down)
    down2, _ = h.accept(("192.0.2.99", 40000))
    h.now += 0.5
    h.data(down2, b"POST /b HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    h.data(down2, b"0\r\n\r\n")
    h.data(up, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    h.eof(down2)


def _record(app: proxycore.Proxy) -> dict[int, bytes]:
    h = Harness(app)
    traces = record(h)
    _session(h)
    h.engine.recorder.flush_all()  # type: ignore[union-attr]
    return traces


def test_each_connection_replays_identically() -> None:
    traces = _record(Tagging())
    assert len(traces) == 2
    for conn, data in traces.items():
        result = replay(load_trace(data, f"conn{conn}"))
        assert result.ok, result.report()
        assert result.events >= 4


def test_second_connection_replays_alone_with_the_pooled_connection() -> None:
    traces = _record(Tagging())
    second = load_trace(traces[max(traces)])
    assert any(g.pool and g.pool[0] for g in second.groups)  # it reused a pooled connection
    assert replay(second).ok


def test_changed_filter_reports_first_divergence_with_hexdump() -> None:
    traces = _record(Tagging())
    trace = load_trace(traces[min(traces)], "first")
    with pytest.raises(TraceError, match=r"recorded with proxy class .*Tagging.*Renamed"):
        replay(trace, Renamed())
    result = replay(trace, Tagging("v2"))
    assert not result.ok
    report = result.report()
    assert "DIVERGED at event #2" in report and "Connected(conn=2" in report
    # hexdump lines of the differing bytes: "v1" expected, "v2" actual
    assert "-00000080  76 31" in report and "+00000080  76 32" in report


def test_assert_replays_three_lines_and_update(tmp_path: Path) -> None:
    traces = _record(Tagging())
    path = tmp_path / "s.pctrace"
    path.write_bytes(traces[min(traces)])
    assert_replays(path, Tagging())
    with pytest.raises(AssertionError, match="DIVERGED"):
        assert_replays(path, Tagging("v2"))
    assert_replays(path, Tagging("v2"), update=True)  # expectations rewritten on purpose
    assert_replays(path, Tagging("v2"))
    with pytest.raises(AssertionError):
        assert_replays(path, Tagging("v1"), update=False)


def test_async_phase_results_come_from_the_trace() -> None:
    h = Harness(AsyncPeer())
    traces = record(h)
    down, _ = h.accept()
    (rf,) = [a for a in h.data(down, GET) if isinstance(a, proxycore.actions.RunFilter)]
    rf.call().close()
    up = connect_id(h.filter_done(down, rf.token, result=ORIGIN))
    h.connected(up)
    h.data(up, OK)
    h.closed(down)
    result = replay(load_trace(traces[down]))
    assert result.ok, result.report()


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(data[start : start + hlen]), start + hlen


def test_bad_traces_get_clear_errors() -> None:
    data = _record(Tagging())[1]
    with pytest.raises(TraceError, match=r"t1: truncated record"):
        load_trace(data[:-3], "t1")
    with pytest.raises(TraceError, match="t2: not a proxycore trace"):
        load_trace(b"GIF89a" + data, "t2")
    header, end = _header(data)
    header["version"] = 99
    raw = json.dumps(header).encode()
    future = MAGIC + struct.pack("<I", len(raw)) + raw + data[end:]
    with pytest.raises(TraceError, match="t3: trace format version 99"):
        load_trace(future, "t3")
    corrupt = bytearray(data)
    corrupt[end] = 250  # an unknown record kind
    with pytest.raises(TraceError, match="t4: corrupted record #0"):
        load_trace(bytes(corrupt), "t4")
    with pytest.raises(TraceError, match="t5: corrupted header"):
        load_trace(MAGIC + struct.pack("<I", 3) + b"{{{", "t5")


def test_normalized_view_ignores_chunking() -> None:
    def run(split: bool) -> dict[str, Any]:
        h = Harness(Tagging())
        traces = record(h)
        down, _ = h.accept()
        if split:
            acts = []
            for i in range(len(GET)):
                acts += h.data(down, GET[i : i + 1])
        else:
            acts = h.data(down, GET)
        up = connect_id(acts)
        h.connected(up)
        h.data(up, OK[:10])
        h.data(up, OK[10:])
        h.closed(down)
        return normalized(groups_of(load_trace(traces[down])))

    assert run(True) == run(False)


def test_long_connection_trace_is_flushed_in_pieces() -> None:
    h = Harness(Tagging())
    pieces: list[bytes] = []
    from proxycore.trace import Recorder

    rec = Recorder(h.engine, lambda conn, data: pieces.append(data))
    rec.flush_bytes = 2000
    h.engine.recorder = rec
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    h.connected(up)
    for _ in range(30):
        h.data(up, OK)
        h.data(down, GET)
    assert len(pieces) > 3 and all(len(p) < 4000 for p in pieces)
    h.data(up, OK)
    h.closed(down)
    trace = load_trace(b"".join(pieces))
    assert replay(trace).ok
