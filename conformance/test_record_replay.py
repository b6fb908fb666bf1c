"""Recording on every backend: the same scripted session, recorded by each adapter, replays to
identical actions, and the recordings agree across adapters; an HTTP/2 session too.

Adapters may deliver bytes in different chunks, so traces are compared with
``proxycore.replay.normalized``: bytes joined per connection (exact content and order) and the
sequence of connection-level actions, not chunk boundaries.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import h2
import h2.events

from conformance.client import Conn, build_request, chunked
from conformance.conftest import selected_backends
from conformance.loadharness import H2ClientConnection
from conformance.origins import EchoOrigin
from conformance.proxy import start_proxy
from conformance.test_resources import wait_for
from proxycore.h2.connection import FRAMING
from proxycore.replay import groups_of, load_trace, normalized, replay


def _script(port: int) -> list[int]:
    statuses = []
    with Conn(port, timeout=5) as c:
        c.send(build_request("GET", "/one", headers=[("X-Test", "a")]))
        statuses.append(c.read_response().status)
        c.send(build_request("POST", "/two", body=b"hello world" * 100))
        statuses.append(c.read_response().status)
        c.send(
            build_request("PUT", "/three", headers=[("Transfer-Encoding", "chunked")])
            + chunked(b"x" * 3000, piece=700, trailers=[("X-Sum", "1")])
        )
        statuses.append(c.read_response().status)
        c.send(build_request("GET", "/status/404"))
        statuses.append(c.read_response().status)
    return statuses


def test_same_session_records_identically_on_every_backend(request, tmp_path: Path):
    views = {}
    for backend in selected_backends(request.config):
        origin = EchoOrigin(name="rec")
        rec = tmp_path / backend.replace(".", "_")
        p = start_proxy(backend, to=[origin.port], extra=["--record", str(rec)])
        try:
            assert _script(p.port) == [200, 200, 200, 404]
            # let the proxy see the client's close before stopping it (else the shutdown
            # would be part of the session on some backends and not on others)
            wait_for(p, lambda s: s["downstreams"] == 0)
            p.signal(signal.SIGTERM)
            p.proc.wait(10)
        finally:
            p.stop()
            p.close_files()
            origin.stop()
        traces = [load_trace(f.read_bytes(), str(f)) for f in sorted(rec.glob("*.pctrace"))]
        for trace in traces:  # every connection, including the readiness probe's, replays
            result = replay(trace)
            assert result.ok, result.report()
        sessions = [t for t in traces if normalized(groups_of(t))["in"]]
        assert len(sessions) == 1, (backend, [t.name for t in traces])
        views[backend] = normalized(groups_of(sessions[0]))
    first, *others = views
    for backend in others:
        assert views[backend] == views[first], f"{backend} recorded differently from {first}"


def _h2_script(port: int) -> list[str]:
    """Six GETs on one h2c connection, three streams at a time; the targets answered."""
    conn = H2ClientConnection(port)
    answered: list[str] = []
    try:
        for batch in ((1, 2, 3), (4, 5, 6)):
            for n in batch:
                conn.request(f"/h2/{n}")
            conn.flush()
            while conn.streams:
                data = conn.sock.recv(65536)
                assert data, "the proxy closed the connection"
                for ev in conn.h2.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        conn.streams[ev.stream_id].body += ev.data
                        conn.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        answered.append(json.loads(conn.streams.pop(ev.stream_id).body)["target"])
                conn.flush()
    finally:
        conn.close()
    return answered


def test_http2_session_records_and_replays(backend: str, tmp_path: Path):
    """An h2c session recorded on every backend replays to identical frames; its trace's
    header names the h2 version. (Adapters chunk reads differently, and HTTP/2 output follows
    the reads — one write per read —, so traces are not compared across backends.)"""
    origin = EchoOrigin(name="rec")
    rec = tmp_path / "traces"
    p = start_proxy(backend, to=[origin.port], extra=["--record", str(rec)])
    try:
        assert sorted(_h2_script(p.port)) == [f"/h2/{n}" for n in range(1, 7)]
        wait_for(p, lambda s: s["downstreams"] == 0)
        p.signal(signal.SIGTERM)
        p.proc.wait(10)
    finally:
        p.stop()
        p.close_files()
        origin.stop()
    traces = [load_trace(f.read_bytes(), str(f)) for f in sorted(rec.glob("*.pctrace"))]
    for trace in traces:
        result = replay(trace)
        assert result.ok, result.report()
    sessions = [t for t in traces if "h2" in t.header]
    assert len(sessions) == 1, [t.name for t in traces]
    assert sessions[0].header["h2"] == FRAMING
    assert len(sessions[0].groups) > 10
