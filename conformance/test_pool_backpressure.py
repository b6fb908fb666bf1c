"""Upstream connection reuse and flow control toward slow clients."""

from __future__ import annotations

import hashlib
import threading
import time

from conformance.client import Conn, build_request, get
from conformance.origins import EchoOrigin, LargeOrigin, pattern_chunks, pattern_sha256

MiB = 1 << 20


def test_upstream_connections_pooled(echo, echo_proxy):
    for i in range(30):
        r = get(echo_proxy.port, f"/pool{i}")
        assert r.status == 200, r
    assert echo.request_count == 30
    assert echo.accepts <= 3, f"30 sequential requests used {echo.accepts} upstream connections"


def test_pooled_connection_reused_across_keepalive_client(echo, echo_proxy):
    with Conn(echo_proxy.port) as c:
        for i in range(10):
            c.send(build_request("GET", f"/ka-pool{i}"))
            assert c.read_response().status == 200
    assert echo.accepts <= 2


def test_slow_reader_backpressure(origins, proxy):
    """A client that stops reading a 48 MiB response must not make the proxy buffer it: the
    proxy's RSS stays bounded (growth < 24 MiB, total < 150 MiB) and the body arrives whole."""
    size = 48 * MiB
    o = origins(LargeOrigin, size=size)
    p = proxy(to=[o.port], extra=["--read-timeout", "20"])
    # warm up (imports, first request paths) before the baseline
    with Conn(p.port) as c:
        c.send(build_request("GET", "/warm"))
        c.read_response()
    time.sleep(0.2)
    base = p.rss_kib()
    peak = base
    c = Conn(p.port, timeout=20, rcvbuf=64 * 1024)
    try:
        c.send(build_request("GET", "/big"))
        # phase 1: read nothing for 2s while the origin can write as fast as it likes
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            peak = max(peak, p.rss_kib())
            time.sleep(0.1)
        stalled_peak = peak
        # phase 2: read slowly-ish in small pieces, sampling RSS
        head = c.read_head()
        assert head.status == 200, head
        got = len(c.buf)
        h = hashlib.sha256(bytes(c.buf))
        c.buf.clear()
        last_sample = 0.0
        deadline = time.monotonic() + 60
        while got < size and time.monotonic() < deadline:
            try:
                data = c.sock.recv(256 * 1024)
            except TimeoutError:
                break
            if not data:
                break
            got += len(data)
            h.update(data)
            now = time.monotonic()
            if now - last_sample > 0.05:
                peak = max(peak, p.rss_kib())
                last_sample = now
    finally:
        c.close()
    growth = (peak - base) / 1024
    print(f"RSS base={base} stalled_peak={stalled_peak} peak={peak} KiB")
    assert got == size, f"received {got} of {size} bytes"
    assert h.hexdigest() == pattern_sha256(size)
    assert (stalled_peak - base) / 1024 < 24, (
        f"proxy RSS grew {(stalled_peak - base) / 1024:.1f} MiB while the client was not "
        f"reading (base {base / 1024:.1f} MiB): response not flow-controlled"
    )
    assert growth < 24 and peak / 1024 < 150, (
        f"proxy RSS peak {peak / 1024:.1f} MiB (base {base / 1024:.1f} MiB)"
    )


class StallingReaderOrigin(EchoOrigin):
    """Waits 2s after the request head before reading the body."""

    def before_body(self, sock, req):
        time.sleep(2.0)


def test_upload_to_stalled_origin_backpressure(origins, proxy):
    """The origin does not read the request body for 2s: the proxy must stop reading the
    client's 32 MiB upload instead of buffering it."""
    size = 32 * MiB
    o = origins(StallingReaderOrigin)
    p = proxy(to=[o.port], extra=["--read-timeout", "20"])
    assert get(p.port, "/warm").status == 200
    time.sleep(0.2)
    base = p.rss_kib()
    peak = base
    errors = []
    c = Conn(p.port, timeout=30)

    def send_body():
        try:
            c.send(build_request("POST", "/up", [("Content-Length", str(size))]))
            for piece in pattern_chunks(size):
                c.send(piece)
        except OSError as e:
            errors.append(repr(e))

    t = threading.Thread(target=send_body)
    try:
        t.start()
        t_end = time.monotonic() + 1.8
        while time.monotonic() < t_end:
            peak = max(peak, p.rss_kib())
            time.sleep(0.1)
        stalled_peak = peak
        t.join(30)
        r = c.read_response()
    finally:
        c.close()
        t.join(5)
    print(f"RSS base={base} stalled_peak={stalled_peak} KiB")
    assert not errors, errors
    assert r.status == 200 and r.json()["body_len"] == size, r
    assert r.json()["body_sha256"] == pattern_sha256(size)
    assert (stalled_peak - base) / 1024 < 24, (
        f"proxy RSS grew {(stalled_peak - base) / 1024:.1f} MiB while the origin was not "
        f"reading the upload (request body not flow-controlled)"
    )
