"""HTTP/2 graceful shutdown over a socket (RFC 9113 §6.8): SIGTERM with three streams in flight
on one h2c connection: GOAWAY(NO_ERROR, 2^31-1) and a PING, then — once the client's ACK is
back — GOAWAY(NO_ERROR, 5); a stream opened after it is refused; the three responses arrive
complete; the connection closes (no reset) and the process exits 0. Every backend."""

from __future__ import annotations

import signal
import time

import h2.errors
import h2.events

from conformance.loadharness import H2ClientConnection
from conformance.origins import SlowOrigin


def test_sigterm_sends_two_goaways_finishes_streams_and_refuses_new_ones(origins, proxy):
    slow = origins(SlowOrigin, head_delay=1.0)
    p = proxy(to=[slow.port])
    conn = H2ClientConnection(p.port)
    try:
        for n in (1, 2, 3):
            conn.request(f"/in-flight/{n}")
        conn.flush()
        deadline = time.monotonic() + 5
        while slow.heads < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.heads == 3
        p.expect_exit = True
        p.signal(signal.SIGTERM)
        goaways: list[tuple[int, int]] = []
        pings = 0
        refused: dict[int, int] = {}
        bodies: dict[int, int] = {}
        ended: list[int] = []
        eof = False
        t0 = time.monotonic()
        while not eof and time.monotonic() - t0 < 8:
            data = conn.sock.recv(65536)
            if not data:
                eof = True
                break
            for ev in conn.h2.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    goaways.append((ev.last_stream_id, ev.error_code))
                    if len(goaways) == 2:  # the final one: a stream above it is refused
                        conn.request("/too-late")
                elif isinstance(ev, h2.events.PingReceived):
                    pings += 1  # (h2 queues the ACK: sent by the flush below)
                elif isinstance(ev, h2.events.StreamReset):
                    refused[ev.stream_id] = ev.error_code
                elif isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] = bodies.get(ev.stream_id, 0) + len(ev.data)
                    conn.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.append(ev.stream_id)
            conn.flush()
    finally:
        conn.close()
    assert goaways == [((1 << 31) - 1, 0), (5, 0)], goaways
    assert pings == 1
    assert refused == {7: h2.errors.ErrorCodes.REFUSED_STREAM}, refused
    assert sorted(ended) == [1, 3, 5] and bodies == {1: 3000, 3: 3000, 5: 3000}, (ended, bodies)
    assert eof  # closed once no stream was left (FIN: recv returned b"", no reset)
    assert p.proc.wait(timeout=5) == 0, p.report()
