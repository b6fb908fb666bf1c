"""HTTP/2 from clients (proxycore.h2), driven with bytes only: an ``h2`` client object on the
client side, the HTTP/1.1 origin scripted, no sockets."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes

import proxycore
from proxycore.actions import Action, Close, PauseReading, ResumeReading
from proxycore.testing import Harness
from tests.helpers import Simple, connect_id, sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class _Unlimited(h2.connection.H2Connection):
    """A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS (to test the server's answer)."""

    @property
    def open_outbound_streams(self) -> int:
        return 0


class Client:
    """An h2 client connection on one proxy connection of a Harness."""

    def __init__(
        self, h: Harness, settings: dict[int, int] | None = None, unlimited: bool = False
    ) -> None:
        self.h = h
        self.c = (_Unlimited if unlimited else h2.connection.H2Connection)(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.c.initiate_connection()
        if settings:
            self.c.update_settings(settings)
        self.conn, _ = h.accept()
        self.events: list[Any] = []
        self.byte_by_byte = False

    def flush(self) -> list[Action]:
        data = self.c.data_to_send()
        if not self.byte_by_byte:
            acts = self.h.data(self.conn, data)
        else:
            acts = []
            for i in range(len(data)):
                acts += self.h.data(self.conn, data[i : i + 1])
        self.take(acts)
        return acts

    def take(self, acts: list[Action]) -> None:
        out = sent(acts, self.conn)
        if out:
            self.events += self.c.receive_data(out)
            more = self.c.data_to_send()
            if more:
                self.take(self.h.data(self.conn, more))

    def request(
        self,
        sid: int,
        method: str = "GET",
        path: str = "/a",
        extra: list[tuple[str, str]] | None = None,
        end: bool = True,
    ) -> list[Action]:
        hdrs = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", "example.com"),
        ]
        self.c.send_headers(sid, hdrs + (extra or []), end_stream=end)
        return self.flush()

    def of(self, sid: int, kind: type) -> list[Any]:
        return [
            e for e in self.events if isinstance(e, kind) and getattr(e, "stream_id", None) == sid
        ]

    def headers(self, sid: int) -> dict[bytes, bytes]:
        evs = self.of(sid, h2.events.ResponseReceived)
        assert evs, self.events
        return dict(evs[0].headers)

    def body(self, sid: int) -> bytes:
        data = b"".join(e.data for e in self.of(sid, h2.events.DataReceived))
        for e in self.of(sid, h2.events.DataReceived):
            self.c.acknowledge_received_data(e.flow_controlled_length, sid)
        return data

    def ended(self, sid: int) -> bool:
        return bool(self.of(sid, h2.events.StreamEnded))

    def reset(self, sid: int) -> int | None:
        r = self.of(sid, h2.events.StreamReset)
        return r[0].error_code if r else None


def origin(h: Harness, acts: list[Action]) -> int:
    up = connect_id(acts)
    return up


def test_get_over_h2c_prior_knowledge() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts = cl.request(1)
    up = origin(h, acts)
    head = sent(h.connected(up), up)
    assert head.startswith(b"GET /a HTTP/1.1\r\n")
    assert b"host: example.com\r\n" in head.lower()
    cl.take(h.data(up, OK))
    assert cl.headers(1)[b":status"] == b"200"
    assert cl.headers(1)[b"content-length"] == b"5"
    assert cl.body(1) == b"hello" and cl.ended(1)


def test_every_frame_fed_byte_by_byte() -> None:
    h = Harness(Simple())
    cl = Client(h)
    cl.byte_by_byte = True
    acts = cl.request(1, "POST", "/p", [("content-length", "3")], end=False)
    up = origin(h, acts)
    h.connected(up)
    cl.c.send_data(1, b"abc", end_stream=True)
    acts = cl.flush()
    assert sent(acts, up) == b"abc"
    cl.take(h.data(up, OK))
    assert cl.headers(1)[b":status"] == b"200" and cl.body(1) == b"hello"


def test_http_version_and_pseudo_fields_seen_by_filters() -> None:
    seen: list[tuple[str, str, str | None, str | None, str]] = []

    class App(Simple):
        def request_filter(self, session: Any, ctx: Any) -> bool:
            r = session.req_header
            seen.append((session.http_version, r.path, r.authority, r.scheme, r.method))
            session.respond(203, b"local")
            return True

    h = Harness(App())
    cl = Client(h)
    cl.request(1, "HEAD")
    cl.request(3)
    assert seen == [
        ("2", "/a", "example.com", "http", "HEAD"),
        ("2", "/a", "example.com", "http", "GET"),
    ]
    assert cl.headers(1)[b":status"] == b"203" and cl.body(1) == b"" and cl.ended(1)
    assert cl.headers(3)[b"content-length"] == b"5" and cl.body(3) == b"local" and cl.ended(3)


def test_cookie_crumbs_joined_and_te_dropped() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts = cl.request(1, extra=[("cookie", "a=1"), ("te", "trailers"), ("cookie", "b=2")])
    up = origin(h, acts)
    head = sent(h.connected(up), up).lower()
    assert b"cookie: a=1; b=2\r\n" in head
    assert b"\r\nte:" not in head


def test_request_body_without_length_goes_chunked_with_trailers() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts = cl.request(1, "POST", "/u", end=False)
    up = origin(h, acts)
    out = sent(h.connected(up), up)
    cl.c.send_data(1, b"hello")
    out += sent(cl.flush(), up)
    cl.c.send_headers(1, [("x-sum", "42")], end_stream=True)
    out += sent(cl.flush(), up)
    assert b"transfer-encoding: chunked\r\n" in out.lower()
    assert out.endswith(b"5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n")


def test_chunked_origin_body_with_trailers_becomes_data_and_trailers() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    cl.take(
        h.data(
            up,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
        )
    )
    hd = cl.headers(1)
    assert b"transfer-encoding" not in hd and b"connection" not in hd
    assert cl.body(1) == b"abcde"
    tr = cl.of(1, h2.events.TrailersReceived)
    assert tr and dict(tr[0].headers) == {b"x-sum": b"5"}
    assert cl.ended(1)


def test_close_delimited_origin_body() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    cl.take(h.data(up, b"HTTP/1.1 200 OK\r\n\r\nsome"))
    cl.take(h.data(up, b" more"))
    assert not cl.ended(1)
    cl.take(h.eof(up))
    assert cl.body(1) == b"some more" and cl.ended(1)


def test_informational_relayed() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    cl.take(h.data(up, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK))
    info = cl.of(1, h2.events.InformationalResponseReceived)
    assert info and dict(info[0].headers)[b":status"] == b"103"
    assert cl.body(1) == b"hello"


def test_upstream_refused_is_502_on_that_stream_only() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up1 = origin(h, cl.request(1))
    up3 = origin(h, cl.request(3))
    cl.take(h.connect_failed(up1))
    assert cl.headers(1)[b":status"] == b"502" and cl.ended(1)
    h.connected(up3)
    cl.take(h.data(up3, OK))
    assert cl.body(3) == b"hello"


def test_filter_raising_is_500() -> None:
    class App(Simple):
        def request_filter(self, session: Any, ctx: Any) -> bool:
            if session.req_header.path == "/boom":
                raise RuntimeError("boom")
            return False

    h = Harness(App())
    cl = Client(h)
    cl.request(1, path="/boom")
    assert cl.headers(1)[b":status"] == b"500"


def test_client_rst_stream_aborts_upstream() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    cl.c.reset_stream(1, ErrorCodes.CANCEL)
    acts = cl.flush()
    assert any(isinstance(a, Close) and a.conn == up for a in acts)
    assert not any(isinstance(a, Close) and a.conn == cl.conn for a in acts)
    # the connection goes on
    up3 = origin(h, cl.request(3))
    h.connected(up3)
    cl.take(h.data(up3, OK))
    assert cl.body(3) == b"hello"


def test_refused_stream_past_the_limit() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(h2_max_concurrent_streams=2))
    cl = Client(h, unlimited=True)
    cl.request(1)
    cl.request(3)
    acts = cl.request(5)
    assert not proxycore.testing.Harness.connects(acts)
    assert cl.reset(5) == ErrorCodes.REFUSED_STREAM
    assert not any(isinstance(a, Close) and a.conn == cl.conn for a in acts)
    assert not cl.of(0, h2.events.ConnectionTerminated)


def test_too_large_header_list_is_431() -> None:
    h = Harness(Simple())
    cl = Client(h)
    acts = cl.request(1, extra=[(f"x-f{i}", "v") for i in range(101)])
    assert not Harness.connects(acts)
    assert cl.headers(1)[b":status"] == b"431" and cl.ended(1)
    acts = cl.request(3, extra=[("x-big", "v" * 33000)])
    assert cl.headers(3)[b":status"] == b"431"


def test_flow_control_is_backpressure_with_bounded_buffers() -> None:
    """The response: a client that does not open its window stops the stream's upstream
    reads; the request: the window re-opens only as the upstream takes the data."""
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    size = 200_000
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * 100_000)
    cl.take(acts)
    got = sum(len(e.data) for e in cl.of(1, h2.events.DataReceived))
    assert got == 65535  # the default stream window, not more
    assert any(isinstance(a, PauseReading) and a.conn == up for a in acts)
    for e in cl.of(1, h2.events.DataReceived):
        cl.c.acknowledge_received_data(e.flow_controlled_length, 1)
    cl.events.clear()
    cl.flush()
    got = sum(len(e.data) for e in cl.of(1, h2.events.DataReceived))
    assert got > 0


def test_request_window_reopens_only_as_upstream_takes() -> None:
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1, "POST", extra=[("content-length", "200000")], end=False))
    h.connected(up)
    h.feed(proxycore.events.WritePaused(up, h.now))
    w0 = cl.c.local_flow_control_window(1)
    for _ in range(3):
        cl.c.send_data(1, b"y" * 16384)
    acts = cl.flush()
    assert sent(acts, up).count(b"y") == 3 * 16384  # handed to the upstream connection...
    assert cl.c.local_flow_control_window(1) == w0 - 3 * 16384  # ...no WINDOW_UPDATE yet
    cl.take(h.feed(proxycore.events.WriteResumed(up, h.now)))
    assert cl.c.local_flow_control_window(1) == w0  # re-opened once the upstream takes more


def test_response_finished_behind_a_shut_window_still_drains() -> None:
    """The exchange ends (the origin sent everything) while the stream's window holds part of
    the response back: the stream stays until it is sent, then ends, with no RST_STREAM."""
    h = Harness(Simple())
    cl = Client(h)
    up = origin(h, cl.request(1))
    h.connected(up)
    size = 150_000
    cl.take(h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size))
    got = 0
    for _ in range(10):
        got += len(cl.body(1))
        cl.events = [e for e in cl.events if not isinstance(e, h2.events.DataReceived)]
        cl.flush()
        if cl.ended(1):
            break
    got += len(cl.body(1))
    assert got == size and cl.ended(1) and cl.reset(1) is None
    assert h.engine.downstreams[cl.conn].active_exchanges() == 0
    assert not h.engine.downstreams[cl.conn].streams  # type: ignore[attr-defined]


def test_read_timeout_is_504_on_that_stream_only() -> None:
    h = Harness(Simple(), conf=proxycore.ServerConf(read_timeout=5.0, keepalive_timeout=100.0))
    cl = Client(h)
    up1 = origin(h, cl.request(1))
    h.connected(up1)
    h.now = 3.0
    up3 = origin(h, cl.request(3))
    h.connected(up3)
    cl.take(h.advance(2.5, cl.conn))  # stream 1's read timeout (at 5.0), not stream 3's (8.0)
    assert cl.headers(1)[b":status"] == b"504" and cl.ended(1)
    assert not cl.of(3, h2.events.ResponseReceived)
    cl.take(h.data(up3, OK))
    assert cl.body(3) == b"hello"


def test_client_not_reading_the_connection_pauses_every_upstream() -> None:
    h = Harness(Simple())
    cl = Client(h)
    ups = []
    for sid in (1, 3):
        up = origin(h, cl.request(sid))
        h.connected(up)
        h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc")
        ups.append(up)
    acts = h.feed(proxycore.events.WritePaused(cl.conn, h.now))
    assert {a.conn for a in acts if isinstance(a, PauseReading)} == set(ups)
    acts = h.feed(proxycore.events.WriteResumed(cl.conn, h.now))
    assert {a.conn for a in acts if isinstance(a, ResumeReading)} == set(ups)


def test_access_log_line_of_an_http2_request() -> None:
    import logging

    from proxycore.accesslog import AccessEntry

    got: list[AccessEntry] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.msg)  # type: ignore[arg-type]

    log = logging.getLogger("test-h2-access")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(Grab())
    h = Harness(Simple(), access_log=log)
    cl = Client(h)
    up = origin(h, cl.request(1, path="/q?x=1", extra=[("user-agent", "h2-test")]))
    h.connected(up)
    cl.take(h.data(up, OK))
    assert len(got) == 1
    e = got[0]
    assert (e.request, e.status, e.user_agent) == ("GET /q?x=1 HTTP/2.0", 200, "h2-test")


def _access_harness(conf: proxycore.ServerConf | None = None) -> tuple[Harness, list[Any]]:
    import logging

    got: list[Any] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.access)  # type: ignore[attr-defined]

    log = logging.getLogger(f"test-h2-access-{id(got)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(Grab())
    return Harness(Simple(), conf=conf, access_log=log), got


def test_access_log_lines_of_http2_requests_refused_before_their_exchange() -> None:
    """431, 413, 400 and 501 answered by the connection itself get a line each, as an
    HTTP/1.1 head the connection rejects does: status, request line, nothing upstream; in
    both formats."""
    import json

    from proxycore.accesslog import format_combined, format_json

    conf = proxycore.ServerConf(max_request_body_size=10, headers_with_underscores="reject")
    h, got = _access_harness(conf)
    cl = Client(h)
    ua = [("user-agent", "h2-test"), ("referer", "http://r/")]
    cl.request(1, path="/big", extra=ua + [(f"x-f{i}", "v") for i in range(101)])
    cl.request(3, "POST", "/up", [*ua, ("content-length", "11")], end=False)
    cl.request(5, path="/u", extra=[("user-agent", "h2-test"), ("x_y", "1")])
    connect = [(":method", "CONNECT"), (":authority", "example.com:443"), ("user-agent", "h2-test")]
    cl.c.send_headers(7, connect)
    cl.flush()
    assert [cl.headers(sid)[b":status"] for sid in (1, 3, 5, 7)] == [b"431", b"413", b"400", b"501"]
    assert [e.status for e in got] == [431, 413, 400, 501]
    assert [e.request for e in got] == [
        "GET /big HTTP/2.0",
        "POST /up HTTP/2.0",
        "GET /u HTTP/2.0",
        "CONNECT example.com:443 HTTP/2.0",
    ]
    for e, sid in zip(got, (1, 3, 5, 7), strict=True):
        assert e.upstream == () and e.body_bytes_sent == len(cl.body(sid)) > 0
        assert e.user_agent == "h2-test"
        line = format_combined(e)
        assert line.startswith("192.0.2.10 - - [")
        assert f'"{e.request}" {e.status} {e.body_bytes_sent} ' in line
        assert line.endswith('"h2-test" rt=0.000 uaddr=- us=- uct=- uht=-')
        d = json.loads(format_json(e))
        assert (d["request"], d["status"], d["http_user_agent"]) == (e.request, e.status, "h2-test")
        assert (d["remote_addr"], d["upstream"], d["request_time"]) == ("192.0.2.10", [], 0.0)
    assert got[0].referer == got[1].referer == "http://r/"
    assert not Harness.connects(h.log)  # type: ignore[arg-type]
