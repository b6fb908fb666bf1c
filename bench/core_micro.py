"""The core alone, no sockets: requests/second and (under callgrind) instructions/request.

    python bench/core_micro.py                 # time 50,000 proxied keep-alive requests
    python bench/core_micro.py prof 20000      # cProfile, top functions by self time
    python bench/core_micro.py record 50000    # the same with session recording on
    python bench/core_micro.py time-rp         # with the built-in ReverseProxy app (any mode: -rp)
    python bench/core_micro.py post            # POST, a 1 KiB Content-Length body each way
    python bench/core_micro.py chunked         # POST, chunked bodies each way (two chunks + last)
    python bench/core_micro.py post-rp 20000   # modes combine: body kind, -rp, count
    python bench/core_micro.py time-rp-al      # with --access-log FILE (any mode: -al, -json)
    python bench/core_micro.py time-routes     # RoutedProxy (-c FILE): 5 routes, the last taken
    python bench/core_micro.py h2              # HTTP/2 (h2c): a GET per new stream, one connection
    python bench/core_micro.py time-rp-metrics # counting for the admin listener (any mode)
    # instructions/request, independent of machine load (difference of two runs):
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/core_micro.py x 1000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/core_micro.py x 3000

Each iteration feeds the engine one request from the client and one response from the
(pooled, reused) upstream connection, like the built-in reverse proxy under wrk. In ``post``
and ``chunked`` modes the request's body arrives in a read of its own after the head, and the
response's body after its head, so the body paths are measured apart from the head paths.
In ``h2`` mode the client is one HTTP/2 connection: each iteration opens a stream with the
same request (a HEADERS frame whose HPACK block only indexes the dynamic table, plus a
WINDOW_UPDATE giving the connection back the previous answer's 53 bytes) and the pooled
HTTP/1.1 origin answers it with ``RESP``.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import proxycore
from proxycore.actions import Connect, Send
from proxycore.engine import NullLog
from proxycore.events import Accepted, Connected, DataReceived

REQ = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESP = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 17:57:31 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 53\r\nConnection: keep-alive\r\n\r\n" + b"x" * 53
)

BODY = b"b" * 1024
POST = (
    b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n"
)
POST_RESP = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n\r\n"
)
CHUNKED = (
    b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_RESP = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKS = b"200\r\n" + BODY[:512] + b"\r\n200\r\n" + BODY[512:] + b"\r\n0\r\n\r\n"

# mode prefix -> the reads of one iteration: (from the client?, bytes), in order
EXCHANGES: dict[str, list[tuple[bool, bytes]]] = {
    "post": [(True, POST), (True, BODY), (False, POST_RESP), (False, BODY)],
    "chunked": [(True, CHUNKED), (True, CHUNKS), (False, CHUNKED_RESP), (False, CHUNKS)],
}


class App(proxycore.Proxy):
    peer = proxycore.Peer("127.0.0.1", 9000)

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return self.peer


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 50000
    app: proxycore.Proxy = App()
    if mode.endswith("rp") or "-rp-" in mode:  # the built-in ReverseProxy (`reverse-proxy`)
        from proxycore.builtin import ReverseProxy

        app = ReverseProxy(["127.0.0.1:9000"])
    if mode.endswith("routes") or "-routes-" in mode:  # `reverse-proxy -c FILE`'s route table
        from proxycore.builtin import RoutedProxy

        app = RoutedProxy(
            {"api": {"backends": ["127.0.0.1:9001"]}, "web": {"backends": ["127.0.0.1:9000"]}},
            [  # as examples/proxycore.yaml: four routes miss, the catch-all takes it
                {"host": "old.example.com", "return": "301 https://www.example.com/"},
                {"path": "/admin", "return": "403"},
                {"host": "*.api.example.com", "upstream": "api"},
                {"host": "www.example.com", "path": "/api/", "upstream": "api"},
                {"upstream": "web"},
            ],
        )
    access = None
    if "-al" in mode or "-json" in mode:  # --access-log to a file, as the adapters set it up
        import tempfile

        from proxycore.adapters.access import access_logger

        conf = proxycore.ServerConf()
        conf.access_log = tempfile.mktemp(prefix="core_micro-", suffix=".log")
        conf.access_log_format = "json" if "-json" in mode else "combined"
        access = access_logger(conf)
    e = proxycore.Engine(app, None, NullLog(), access_log=access, metrics="-metrics" in mode)
    if mode.startswith("record"):
        from proxycore.trace import Recorder

        out = open("/dev/null", "wb")  # the sink a real adapter would use: a file
        e.recorder = Recorder(e, lambda conn, data: out.write(data))
    e.feed(Accepted(1, 0.0, ("127.0.0.1", 5555), ("127.0.0.1", 8080)))
    if mode.startswith("h2"):
        loop = h2_loop(e)
    else:
        loop = h1_loop(e, mode)
    if mode.startswith("prof"):
        pr = cProfile.Profile()
        pr.enable()
        loop(n)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return
    t = time.perf_counter()
    loop(n)
    dt = time.perf_counter() - t
    print(f"{n / dt:,.0f} requests/s through the core alone ({dt / n * 1e6:.2f} us/request)")


def h2_loop(e: proxycore.Engine) -> Callable[[int], None]:
    """Open an h2c connection (prior knowledge) and answer its first two requests; return the
    loop that sends one more request per iteration and answers it."""
    import struct

    import h2.config
    import h2.connection
    import h2.events

    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    hdrs = [
        (":method", "GET"),
        (":path", "/small"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:8080"),
        ("user-agent", "h2load"),
    ]
    feed = e.feed
    up = 0
    for sid in (1, 3):
        c.send_headers(sid, hdrs, end_stream=True)
        data = c.data_to_send()
        acts = feed(DataReceived(1, data, 0.0))
        if not up:
            up = next(a.conn for a in acts if isinstance(a, Connect))
            feed(Connected(up, 0.0))
        got = b"".join(a.data for a in acts if isinstance(a, Send) and a.conn == 1)
        for a in feed(DataReceived(up, RESP, 0.0)):
            if isinstance(a, Send) and a.conn == 1:
                got += a.data
        events = c.receive_data(got)
        assert any(isinstance(ev, h2.events.StreamEnded) for ev in events), events
        c.increment_flow_control_window(53)
        more = c.data_to_send()
        if more:
            feed(DataReceived(1, more, 0.0))
    # The second request's HEADERS frame: its block indexes the dynamic table only, so it
    # stays valid for every later stream.
    frame = data
    length = int.from_bytes(frame[:3], "big")
    assert frame[3] == 1 and len(frame) == 9 + length, frame
    block = frame[9:]
    head = length.to_bytes(3, "big") + b"\x01\x05"  # HEADERS, END_STREAM | END_HEADERS
    window = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + struct.pack(">I", 53)
    state = [5]

    def loop(count: int) -> None:
        sid = state[0]
        for _ in range(count):
            feed(DataReceived(1, head + struct.pack(">I", sid) + block + window, 1.0))
            feed(DataReceived(up, RESP, 1.0))
            sid += 2
        state[0] = sid

    return loop


def h1_loop(e: proxycore.Engine, mode: str) -> Callable[[int], None]:
    up = next(a.conn for a in e.feed(DataReceived(1, REQ, 0.0)) if isinstance(a, Connect))
    e.feed(Connected(up, 0.0))
    e.feed(DataReceived(up, RESP, 0.0))
    feed = e.feed
    kind = next((k for k in EXCHANGES if mode.startswith(k)), "")

    if kind:
        reads = [(1 if client else up, data) for client, data in EXCHANGES[kind]]

        def loop(count: int) -> None:
            for _ in range(count):
                for conn, data in reads:
                    feed(DataReceived(conn, data, 1.0))

        # One exchange first, checked: the client gets the whole answer, the origin the body.
        got: dict[int, bytes] = {1: b"", up: b""}
        for conn, data in reads:
            for a in feed(DataReceived(conn, data, 1.0)):
                if isinstance(a, Send):
                    got[a.conn] += a.data
        assert got[1].endswith(reads[-1][1]) and BODY[-100:] in got[up], got
    else:

        def loop(count: int) -> None:
            for _ in range(count):
                feed(DataReceived(1, REQ, 1.0))
                feed(DataReceived(up, RESP, 1.0))

    return loop


if __name__ == "__main__":
    main()
