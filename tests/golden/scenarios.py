"""The scripted HTTP/1.1 sessions behind the golden traces.

Each scenario drives a :class:`Driver` (a :class:`proxycore.testing.Harness` with a recorder
attached) through one client connection, event by event, the way an adapter would: client and
origin bytes, connects, write back-pressure, timers firing, deferred filter results. The
recorder writes what went in and what came out; ``generate.py`` stores it. ``expect`` lists
byte strings the client connection must have been sent, so a scenario cannot silently stop
covering what its name says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxycore.actions import Action, Connect, RunFilter, Send
from proxycore.config import ServerConf
from proxycore.events import Accepted, WritePaused, WriteResumed
from proxycore.h1.parse import Limits
from proxycore.testing import Harness, record
from proxycore.tls import TlsInfo
from tests.golden.app import GoldenAsync, GoldenBlocking, GoldenProxy

# Distinct timeouts, so a SetTimer deadline in a trace says which timer was armed.
CONF = dict(
    connect_timeout=1.0,
    read_timeout=2.0,
    write_timeout=3.0,
    header_timeout=4.0,
    client_body_timeout=5.0,
    send_timeout=6.0,
    keepalive_timeout=7.0,
    upstream_idle_timeout=8.0,
    linger_timeout=0.5,
    max_request_body_size=64,
    limits=Limits(max_request_line=256, max_header_bytes=512, max_headers=20),
)

OK = b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 5\r\n\r\nhello"


class Driver:
    """One client connection through a recording engine."""

    def __init__(self, app: Any, conf: ServerConf, tls: TlsInfo | None = None) -> None:
        self.h = Harness(app, conf, now=100.0)
        self.traces = record(self.h)
        self.client_bytes = b""
        self.runs: list[RunFilter] = []
        self.up = 0
        self.ups: list[int] = []
        cid = self.h.engine.new_id()
        scheme = "https" if tls is not None else "http"
        self._take(
            self.h.feed(
                Accepted(cid, self.h.now, ("192.0.2.10", 50000), ("127.0.0.1", 8080), scheme, tls)
            )
        )
        self.down = cid

    def _take(self, acts: list[Action]) -> list[Action]:
        for a in acts:
            if isinstance(a, Send) and a.conn == self.down:
                self.client_bytes += a.data
            elif isinstance(a, Connect):
                self.up = a.conn
                self.ups.append(a.conn)
            elif isinstance(a, RunFilter):
                self.runs.append(a)
        return acts

    def tick(self, seconds: float = 0.001) -> None:
        self.h.now += seconds

    def client(self, data: bytes) -> None:
        self.tick()
        self._take(self.h.data(self.down, data))

    def client_eof(self) -> None:
        self.tick()
        self._take(self.h.eof(self.down))

    def client_closed(self) -> None:
        self.tick()
        self._take(self.h.closed(self.down))

    def connected(self, up: int | None = None) -> None:
        self.tick()
        self._take(self.h.connected(self.up if up is None else up))

    def refused(self, up: int | None = None) -> None:
        self.tick()
        self._take(self.h.connect_failed(self.up if up is None else up, "refused"))

    def origin(self, data: bytes, up: int | None = None) -> None:
        self.tick()
        self._take(self.h.data(self.up if up is None else up, data))

    def origin_eof(self, up: int | None = None) -> None:
        self.tick()
        self._take(self.h.eof(self.up if up is None else up))

    def origin_closed(self, up: int | None = None) -> None:
        self.tick()
        self._take(self.h.closed(self.up if up is None else up, "reset by peer"))

    def write_paused(self, conn: int) -> None:
        self.tick()
        self._take(self.h.feed(WritePaused(conn, self.h.now)))

    def write_resumed(self, conn: int) -> None:
        self.tick()
        self._take(self.h.feed(WriteResumed(conn, self.h.now)))

    def fire(self, seconds: float) -> None:
        """Let ``seconds`` pass, then fire the client connection's timer."""
        self._take(self.h.advance(seconds, self.down))

    def finish_filters(self) -> None:
        """Run every pending deferred phase the way an adapter would, and report it done."""
        while self.runs:
            run = self.runs.pop(0)
            result: Any = None
            error: BaseException | None = None
            try:
                result = run.call()
                if hasattr(result, "send"):  # a coroutine: drive it to completion
                    try:
                        result.send(None)
                    except StopIteration as stop:
                        result = stop.value
                    else:  # pragma: no cover - golden coroutines never suspend
                        raise AssertionError("a golden coroutine suspended")
            except Exception as e:
                result, error = None, e
            self.tick()
            self._take(self.h.filter_done(run.conn, run.token, result, error))

    def traces_out(self) -> dict[int, bytes]:
        rec = self.h.engine.recorder
        if rec is not None:
            rec.flush_all()
        return self.traces


@dataclass
class Scenario:
    name: str
    covers: str
    run: Callable[[Driver], None]
    app: type = GoldenProxy
    conf: dict[str, Any] = field(default_factory=dict)
    expect: tuple[bytes, ...] = ()
    tls: bool = False


SCENARIOS: list[Scenario] = []


def scenario(
    covers: str, *, app: type = GoldenProxy, expect: tuple[bytes, ...] = (), tls: bool = False,
    **conf: Any,
) -> Callable[[Callable[[Driver], None]], Callable[[Driver], None]]:  # fmt: skip
    def add(fn: Callable[[Driver], None]) -> Callable[[Driver], None]:
        SCENARIOS.append(Scenario(fn.__name__, covers, fn, app, conf, expect, tls))
        return fn

    return add


# ---------------------------------------------------------------- relays and edited heads


@scenario(
    "verbatim relay of a GET and a Content-Length answer, kept alive, client closes",
    expect=(b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 5\r\n\r\nhello",),
)
def relay_get(d: Driver) -> None:
    d.client(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: golden\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client_eof()


@scenario(
    "filter-edited request and response heads, path rewrite, header removed",
    expect=(b"X-Golden-Response: 1\r\n",),
)
def edited_head(d: Driver) -> None:
    d.client(b"GET /edit/x HTTP/1.1\r\nHost: a\r\nX-Drop-Me: 1\r\nAccept: */*\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client_closed()


@scenario(
    "keep-alive: two requests in turn on one client connection, the pooled origin reused",
    expect=(b"hello", b"world"),
)
def keepalive_reuse(d: Driver) -> None:
    d.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld")
    d.client_eof()


# ---------------------------------------------------------------- bodies


@scenario(
    "Content-Length request body in pieces, Content-Length answer body in pieces",
    expect=(b"Content-Length: 10\r\n\r\n0123456789",),
)
def content_length_both_ways(d: Driver) -> None:
    d.client(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nhello")
    d.connected()
    d.client(b" world!")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    d.origin(b"56789")
    d.client_eof()


@scenario(
    "chunked request body with trailers, chunked answer with trailers (trailer filter)",
    expect=(b"Transfer-Encoding: chunked\r\n", b"X-Golden-Trailer: 1\r\n"),
)
def chunked_both_ways_trailers(d: Driver) -> None:
    d.client(b"POST /edit/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             b"TE: trailers\r\n\r\n5\r\nhello\r\n")  # fmt: skip
    d.connected()
    d.client(b"6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n")
    d.origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n"
             b"3\r\nabc\r\n")  # fmt: skip
    d.origin(b"2\r\nde\r\n0\r\nX-Check: 5\r\n\r\n")
    d.client_eof()


@scenario("a body filter that changes the body's bytes (same length)", expect=(b"HELLO",))
def body_filter(d: Driver) -> None:
    d.client(b"GET /upper HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client_eof()


@scenario(
    "HTTP/1.0 client without keep-alive: answer, then close", expect=(b"HTTP/1.1 200 OK\r\n",)
)
def http10_client(d: Driver) -> None:
    d.client(b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(OK)


@scenario("HTTP/1.0 client asking for keep-alive", expect=(b"Connection: keep-alive\r\n",))
def http10_client_keepalive(d: Driver) -> None:
    d.client(b"GET /old HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client_eof()


@scenario(
    "HTTP/1.0 origin, close-delimited body relayed to an HTTP/1.1 client",
    expect=(b"legacy \r\n4\r\nbody\r\n0\r\n\r\n",),
)
def http10_origin_close_delimited(d: Driver) -> None:
    d.client(b"GET /legacy HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nlegacy ")
    d.origin(b"body")
    d.origin_eof()
    d.client_eof()


@scenario(
    "HTTP/1.1 origin answering with Connection: close and no length",
    expect=(b"6\r\nuntil \r\n5\r\nclose\r\n0\r\n\r\n",),
)
def close_delimited_response(d: Driver) -> None:
    d.client(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
    d.origin(b"close")
    d.origin_eof()


# ---------------------------------------------------------------- 1xx and early answers


@scenario(
    "1xx: an origin's 103 Early Hints relayed before the final answer",
    expect=(b"HTTP/1.1 103 Early Hints\r\n",),
)
def interim_103(d: Driver) -> None:
    d.client(b"GET /hints HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
    d.origin(OK)
    d.client_eof()


@scenario(
    "Expect: 100-continue: the origin's 100 relayed, then the body, then the answer",
    expect=(b"HTTP/1.1 100 Continue\r\n",),
)
def expect_100_continue(d: Driver) -> None:
    d.client(b"PUT /put HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 100 Continue\r\n\r\n")
    d.client(b"data")
    d.origin(OK)
    d.client_eof()


@scenario(
    "Expect: 100-continue answered locally by a filter: no 100, connection closed",
    expect=(b"HTTP/1.1 403 Forbidden\r\n",),
)
def expect_100_denied(d: Driver) -> None:
    d.client(b"PUT /deny HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")


@scenario(
    "an origin answering early (413) while the client is still uploading",
    expect=(b"HTTP/1.1 413 ",),
)
def early_response_during_upload(d: Driver) -> None:
    d.client(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n0123456789")
    d.connected()
    d.origin(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    d.client(b"0123456789")
    d.origin_eof()
    d.client(b"01234567890123456789")
    d.client_eof()


# ---------------------------------------------------------------- rejections


@scenario("400: a malformed request line", expect=(b"HTTP/1.1 400 ",))
def reject_400(d: Driver) -> None:
    d.client(b"GET /a b c HTTP/1.1\r\nHost: a\r\n\r\n")


@scenario(
    "400: Content-Length and Transfer-Encoding together (smuggling)", expect=(b"HTTP/1.1 400 ",)
)
def reject_400_cl_te(d: Driver) -> None:
    d.client(b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # fmt: skip


@scenario("413: a declared body over max_request_body_size", expect=(b"HTTP/1.1 413 ",))
def reject_413(d: Driver) -> None:
    d.client(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")


@scenario("413: a chunked body growing over max_request_body_size", expect=(b"HTTP/1.1 413 ",))
def reject_413_chunked(d: Driver) -> None:
    d.client(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    d.connected()
    d.client(b"40\r\n" + b"x" * 64 + b"\r\n")
    d.client(b"40\r\n" + b"y" * 64 + b"\r\n")


@scenario("414: a request line over the limit", expect=(b"HTTP/1.1 414 ",))
def reject_414(d: Driver) -> None:
    d.client(b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: a\r\n\r\n")


@scenario("431: a header section over the limit", expect=(b"HTTP/1.1 431 ",))
def reject_431(d: Driver) -> None:
    d.client(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n")


@scenario("501: a transfer coding the proxy does not implement", expect=(b"HTTP/1.1 501 ",))
def reject_501(d: Driver) -> None:
    d.client(b"POST /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")


# ---------------------------------------------------------------- upstream failures, retries


@scenario("502: the origin refuses the connection, no retry", expect=(b"HTTP/1.1 502 ",))
def upstream_refused_502(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.refused()
    d.client_eof()


@scenario("502: the origin answers garbage", expect=(b"HTTP/1.1 502 ",))
def upstream_garbage_502(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"SPDY/9 what\r\n\r\n")
    d.client_eof()


@scenario(
    "502: the origin closes mid-body after the head went out: client connection cut",
    expect=(b"Content-Length: 10\r\n\r\n01234",),
)
def upstream_cut_mid_body(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    d.origin_closed()


@scenario(
    "a refused connect retried by fail_to_connect onto another peer",
    expect=(b"HTTP/1.1 200 OK\r\n",),
)
def connect_failure_retried(d: Driver) -> None:
    d.client(b"GET /retry HTTP/1.1\r\nHost: a\r\n\r\n")
    d.refused()
    d.connected()
    d.origin(OK)
    d.client_eof()


@scenario(
    "a pooled connection that died before answering: retried on a new one (ReusedOnly)",
    expect=(b"world",),
)
def reused_connection_fails(d: Driver) -> None:
    d.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(OK)
    first = d.up
    d.client(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    d.origin_eof(first)
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld")
    d.client_eof()


# ---------------------------------------------------------------- timeouts


@scenario("504: connect timeout", expect=(b"HTTP/1.1 504 ",))
def timeout_connect(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.fire(1.0)
    d.client_eof()


@scenario("504: read timeout waiting for the answer's head", expect=(b"HTTP/1.1 504 ",))
def timeout_read(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.fire(1.0)  # not yet: re-armed from the last read
    d.fire(1.5)
    d.client_eof()


@scenario("write timeout: the origin stops reading the request body", expect=(b"HTTP/1.1 504 ",))
def timeout_write(d: Driver) -> None:
    d.client(b"POST /w HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789")
    d.connected()
    d.write_paused(d.up)
    d.client(b"0123456789")
    d.fire(3.0)


@scenario("send timeout: the client stops reading the answer", expect=(b"HTTP/1.1 200 OK\r\n",))
def timeout_send(d: Driver) -> None:
    d.client(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 20)
    d.write_paused(d.down)
    d.origin(b"z" * 20)
    d.fire(6.0)


@scenario("408: client body timeout, the client stops sending the body", expect=(b"HTTP/1.1 408 ",))
def timeout_client_body(d: Driver) -> None:
    d.client(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n01234")
    d.connected()
    d.fire(5.0)


@scenario(
    "idle keep-alive timeout closes the client connection after an answer", expect=(b"hello",)
)
def timeout_idle(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.fire(7.0)


@scenario("header timeout: a client that sends half a head and stops (slowloris)")
def timeout_header(d: Driver) -> None:
    d.client(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    d.fire(4.0)


# ---------------------------------------------------------------- deferred filters


@scenario(
    "async def request_filter, upstream_peer and request_body_filter (RunFilter / "
    "FilterDone), the body filter paced chunk by chunk",
    app=GoldenAsync,
    expect=(b"hello",),
)
def async_filters(d: Driver) -> None:
    d.client(b"POST /async HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    d.finish_filters()  # request_filter
    d.finish_filters()  # upstream_peer
    d.connected()
    d.finish_filters()  # the first body piece
    d.client(b"def")
    d.finish_filters()
    d.origin(OK)
    d.client_eof()


@scenario("an async request_filter that raises: 500", app=GoldenAsync, expect=(b"HTTP/1.1 500 ",))
def async_filter_raises(d: Driver) -> None:
    d.client(b"GET /raise HTTP/1.1\r\nHost: a\r\n\r\n")
    d.finish_filters()
    d.client_eof()


@scenario("@blocking upstream_peer", app=GoldenBlocking, expect=(b"hello",))
def blocking_filter(d: Driver) -> None:
    d.client(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    d.finish_filters()
    d.connected()
    d.origin(OK)
    d.client_eof()


# ---------------------------------------------------------------- pipelining, back-pressure


@scenario(
    "pipelining: three requests in one read answered in order",
    expect=(b"\r\n\r\none", b"\r\n\r\ntwo", b"\r\n\r\nsix"),
)
def pipelining(d: Driver) -> None:
    d.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
             b"HEAD /3 HTTP/1.1\r\nHost: a\r\n\r\n")  # fmt: skip
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    d.client(b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nsix")
    d.client_eof()


@scenario(
    "a slow client: the client's write side pauses, origin reading pauses and resumes",
    expect=(b"y" * 30,),
)
def slow_client_backpressure(d: Driver) -> None:
    d.client(b"GET /dl HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 30)
    d.write_paused(d.down)
    d.origin(b"y" * 30)
    d.write_resumed(d.down)
    d.client_eof()


@scenario(
    "a slow origin: the upstream write side pauses, client reading pauses and resumes",
    expect=(b"HTTP/1.1 200 OK\r\n",),
)
def slow_origin_backpressure(d: Driver) -> None:
    d.client(b"POST /ul HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n0123456789")
    d.connected()
    d.write_paused(d.up)
    d.client(b"0123456789")
    d.write_resumed(d.up)
    d.client(b"0123456789")
    d.origin(OK)
    d.client_eof()


# ---------------------------------------------------------------- local answers, errors


@scenario("session.respond() from request_filter", expect=(b"X-Local: 1\r\n",))
def respond_from_filter(d: Driver) -> None:
    d.client(b"GET /respond HTTP/1.1\r\nHost: a\r\n\r\n")
    d.client(b"GET /respond/again HTTP/1.1\r\nHost: a\r\n\r\n")
    d.client_eof()


@scenario("a filter that raises: 500, the connection goes on", expect=(b"HTTP/1.1 500 ",))
def filter_raises(d: Driver) -> None:
    d.client(b"GET /raise HTTP/1.1\r\nHost: a\r\n\r\n")
    d.client(b"GET /teapot HTTP/1.1\r\nHost: a\r\n\r\n")
    d.client_eof()


# ---------------------------------------------------------------- bodiless answers


@scenario(
    "HEAD: the Content-Length answer is relayed without a body",
    expect=(b"Content-Length: 5\r\n\r\n",),
)
def head_request(d: Driver) -> None:
    d.client(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    d.client(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n")
    d.origin(OK)
    d.client_eof()


@scenario(
    "204 and 304 answers: no body, connection kept",
    expect=(b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 304 Not Modified\r\n"),
)
def no_body_204_304(d: Driver) -> None:
    d.client(b"DELETE /r HTTP/1.1\r\nHost: a\r\n\r\n")
    d.connected()
    d.origin(b"HTTP/1.1 204 No Content\r\n\r\n")
    d.client(b'GET /r HTTP/1.1\r\nHost: a\r\nIf-None-Match: "x"\r\n\r\n')
    d.origin(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n')
    d.client_eof()


# ---------------------------------------------------------------- TLS


@scenario(
    "a TLS client session (scheme https: X-Forwarded-Proto and session.tls)",
    tls=True,
    expect=(b"hello",),
)
def tls_session(d: Driver) -> None:
    d.client(b"GET /secure HTTP/1.1\r\nHost: secure.example\r\n\r\n")
    d.connected()
    d.origin(OK)
    d.client_eof()


TLS_INFO = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", "secure.example", "http/1.1")


def run_scenario(s: Scenario) -> tuple[Driver, dict[int, bytes]]:
    conf = ServerConf(**{**CONF, **s.conf})
    d = Driver(s.app(), conf, TLS_INFO if s.tls else None)
    s.run(d)
    return d, d.traces_out()
