"""The access log in the core: which requests get a record, what the record says, and the two
formats (no sockets; the handler that writes lines is tested with a real file)."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import proxycore
from proxycore.accesslog import (
    AccessEntry,
    CombinedFormatter,
    JsonFormatter,
    format_combined,
    format_json,
    request_fields,
    time_local,
)
from proxycore.adapters.access import AccessLogHandler, access_logger
from proxycore.testing import Harness, assert_replays, record
from tests.helpers import Simple, closed, connect_id, sent, setup_request

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\nReferer: http://r/\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnah"


class Capture(logging.Handler):
    """Keeps the records (a program routing the access log to its own handler)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def entries(self) -> list[AccessEntry]:
        return [r.access for r in self.records]  # type: ignore[attr-defined]


@pytest.fixture
def cap() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger(f"test.access.{id(object())}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    c = Capture()
    logger.addHandler(c)
    yield logger, c
    logger.removeHandler(c)


def harness(cap: tuple[logging.Logger, Capture], app: Any = None, **conf: Any) -> Harness:
    return Harness(app or Simple(), proxycore.ServerConf(**conf), access_log=cap[0])


# ---------------------------------------------------------------- which requests get a record


def test_proxied_request_gets_one_record_with_upstream_times(cap: Any) -> None:
    _, c = cap
    h = harness(cap)
    down, _ = h.accept()
    h.now = 10.0
    up = connect_id(h.data(down, GET))
    h.now = 10.004
    h.connected(up)
    h.now = 10.025
    acts = h.data(up, OK)
    assert sent(acts, down).endswith(b"hello")
    (e,) = c.entries
    assert e.remote_addr == "192.0.2.10"
    assert e.request == "GET /a?b=1 HTTP/1.1"
    assert (e.status, e.body_bytes_sent) == (200, 5)
    assert (e.referer, e.user_agent, e.remote_user) == ("http://r/", "t/1", None)
    assert e.request_time == pytest.approx(0.025)
    ((addr, status, ct, ht),) = e.upstream
    assert (addr, status) == ("127.0.0.1:9000", 200)
    assert ct == pytest.approx(0.004) and ht == pytest.approx(0.025)
    line = format_combined(e)
    assert line.endswith(
        '"GET /a?b=1 HTTP/1.1" 200 5 "http://r/" "t/1" '
        "rt=0.025 uaddr=127.0.0.1:9000 us=200 uct=0.004 uht=0.025"
    )
    assert c.records[0].getMessage() == line  # the message is the combined line


def test_pooled_connection_has_zero_connect_time_and_one_record_each(cap: Any) -> None:
    _, c = cap
    h = harness(cap)
    down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    h.now += 1.0
    acts = h.data(down, GET)
    assert not Harness.connects(acts)
    h.now += 0.002
    h.data(up, NOT_FOUND)
    assert [e.status for e in c.entries] == [200, 404]
    ((_, status, ct, ht),) = c.entries[1].upstream
    assert (status, ct) == (404, 0.0) and ht == pytest.approx(0.002)


def test_rejected_head_gets_a_record_without_upstream(cap: Any) -> None:
    _, c = cap
    h = harness(cap)
    down, _ = h.accept()
    acts = h.data(down, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\nUser-Agent: u\r\n\r\n")
    assert sent(acts, down).startswith(b"HTTP/1.1 400 ")
    (e,) = c.entries
    assert (e.status, e.request, e.upstream) == (400, "GET / HTTP/1.1", ())
    assert e.body_bytes_sent == len(b"400 Bad Request\n")
    assert format_combined(e).endswith('"u" rt=0.000 uaddr=- us=- uct=- uht=-')


def test_garbage_is_logged_escaped(cap: Any) -> None:
    _, c = cap
    h = harness(cap)
    down, _ = h.accept()
    h.data(down, b'\x00\x16"\\ \xff\r\n\r\n')
    (e,) = c.entries
    assert e.status == 400
    assert '"\\x00\\x16\\x22\\x5C \\xFF" 400 ' in format_combined(e)
    assert json.loads(format_json(e))["request"] == '\x00\x16"\\ \xff'


def test_header_timeout_408_gets_a_record_with_its_duration(cap: Any) -> None:
    _, c = cap
    h = harness(cap, header_timeout=2.0)
    down, _ = h.accept()
    h.data(down, b"GET /slow HTTP/1.1\r\nHost")
    acts = h.advance(2.5, down)
    assert sent(acts, down).startswith(b"HTTP/1.1 408 ")
    (e,) = c.entries
    assert (e.status, e.request) == (408, "GET /slow HTTP/1.1")
    assert e.request_time == pytest.approx(2.0)


def test_connect_refused_502_and_timeout_504(cap: Any) -> None:
    _, c = cap
    h = harness(cap, connect_timeout=1.0)
    down, _ = h.accept()
    h.connect_failed(connect_id(h.data(down, GET)), "refused")
    down2, _ = h.accept()
    connect_id(h.data(down2, GET))
    h.advance(1.5, down2)
    a, b = c.entries
    assert a.status == 502 and a.upstream == (("127.0.0.1:9000", 502, -1.0, -1.0),)
    assert b.status == 504 and b.upstream == (("127.0.0.1:9000", 504, -1.0, -1.0),)
    assert format_combined(a).endswith("uaddr=127.0.0.1:9000 us=502 uct=- uht=-")


def test_read_timeout_504_keeps_connect_time(cap: Any) -> None:
    _, c = cap
    h = harness(cap, read_timeout=2.0)
    down, _up, _ = setup_request(h, GET)
    h.advance(2.5, down)
    (e,) = c.entries
    assert e.status == 504 and e.upstream == (("127.0.0.1:9000", 504, 0.0, -1.0),)


def test_retries_list_every_attempt_in_order(cap: Any) -> None:
    peers = [proxycore.Peer("127.0.0.1", 1), proxycore.Peer("127.0.0.1", 2)]

    class Retry(proxycore.Proxy):
        def new_ctx(self) -> list[int]:
            return [0]

        def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
            p = peers[ctx[0]]
            ctx[0] += 1
            return p

        def fail_to_connect(self, session: Any, peer: Any, ctx: Any, e: Any) -> Any:
            e.retry = True
            return e

    _, c = cap
    h = harness(cap, Retry())
    down, _ = h.accept()
    c1 = connect_id(h.data(down, GET))
    h.now += 0.001
    c2 = connect_id(h.connect_failed(c1))
    h.now += 0.003
    h.connected(c2)
    h.now += 0.002
    h.data(c2, OK)
    (e,) = c.entries
    assert [a[:2] for a in e.upstream] == [("127.0.0.1:1", 502), ("127.0.0.1:2", 200)]
    assert format_combined(e).endswith(
        "uaddr=127.0.0.1:1, 127.0.0.1:2 us=502, 200 uct=-, 0.003 uht=-, 0.005"
    )
    up = json.loads(format_json(e))["upstream"]
    assert up == [
        {"addr": "127.0.0.1:1", "status": 502, "connect_time": None, "header_time": None},
        {"addr": "127.0.0.1:2", "status": 200, "connect_time": 0.003, "header_time": 0.005},
    ]


class Filtering(Simple):
    def request_filter(self, session: Any, ctx: Any) -> bool:
        path = session.req_header.path
        if path == "/deny":
            session.respond(403, b"no\n")
            return True
        if path == "/boom":
            raise RuntimeError("boom")
        return False


class RaisingLogging(Simple):
    def logging(self, session: Any, error: Any, ctx: Any) -> None:
        raise RuntimeError("logging phase broke")


def test_proxy_answered_requests_get_records(cap: Any) -> None:
    _, c = cap
    h = harness(cap, Filtering())
    down, _ = h.accept()
    h.data(down, b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")
    h.data(down, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(e.status, e.request, e.upstream) for e in c.entries] == [
        (403, "GET /deny HTTP/1.1", ()),
        (500, "GET /boom HTTP/1.1", ()),
    ]
    assert c.entries[0].body_bytes_sent == 3


def test_a_raising_logging_phase_does_not_lose_the_record(cap: Any) -> None:
    _, c = cap
    h = harness(cap, RaisingLogging())
    _down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    assert [e.status for e in c.entries] == [200]


def test_client_gone_before_response_is_499_and_truncated_response_keeps_status(
    cap: Any,
) -> None:
    _, c = cap
    h = harness(cap)
    down, _up, _ = setup_request(h, GET)
    h.closed(down, "reset")
    down2, up2, _ = setup_request(h, GET)
    h.data(up2, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    acts = h.closed(up2, "reset")
    assert closed(acts, down2)
    a, b = c.entries
    assert a.status == 499 and a.upstream == (("127.0.0.1:9000", 0, 0.0, -1.0),)
    assert format_combined(a).endswith("us=- uct=0.000 uht=-")
    assert (b.status, b.body_bytes_sent) == (200, 5)


def test_basic_auth_user_is_remote_user(cap: Any) -> None:
    _, c = cap
    h = harness(cap)
    # "alice:secret"
    req = b"GET / HTTP/1.1\r\nHost: a\r\nauthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n"
    _, up, _ = setup_request(h, req)
    h.data(up, OK)
    (e,) = c.entries
    assert e.remote_user == "alice"
    assert format_combined(e).startswith("192.0.2.10 - alice [")


def test_off_by_default_and_replays_unchanged(cap: Any) -> None:
    logger, c = cap
    assert proxycore.Engine(Simple()).access_log is None
    # The same session with the access log on and off: the same actions (the log is not one).
    runs = []
    for access in (None, logger):
        h = Harness(Simple(), access_log=access)
        traces = record(h)
        down, up, _ = setup_request(h, GET)
        h.data(up, OK)
        h.closed(down)
        runs.append([repr(a) for a in h.log])
        assert_replays(traces[down], Simple())
    assert runs[0] == runs[1]
    assert len(c.entries) == 1


def test_disabled_logger_gets_nothing(cap: Any) -> None:
    logger, c = cap
    logger.setLevel(logging.WARNING)
    h = harness(cap)
    _down, up, _ = setup_request(h, GET)
    h.data(up, OK)
    assert c.records == []


# ---------------------------------------------------------------- formats


def entry(**kw: Any) -> AccessEntry:
    e = AccessEntry(
        kw.get("remote_addr", "10.0.0.1"),
        kw.get("head", GET),
        kw.get("status", 200),
        kw.get("sent", 53),
        kw.get("rt", 0.0125),
        kw.get("upstream", (("127.0.0.1:9000", 200, 0.0005, 0.012),)),
    )
    e.created = kw.get("created", 1764624037.25)
    return e


def test_combined_is_nginx_combined_plus_times() -> None:
    e = entry()
    expected = (
        f'10.0.0.1 - - [{time_local(e.created)}] "GET /a?b=1 HTTP/1.1" 200 53 "http://r/" "t/1" '
        "rt=0.013 uaddr=127.0.0.1:9000 us=200 uct=0.001 uht=0.012"
    )
    assert format_combined(e) == expected
    t = time.localtime(int(e.created))
    assert time_local(e.created) == time.strftime("%d/%b/%Y:%H:%M:%S %z", t)


def test_json_has_the_same_fields() -> None:
    e = entry()
    d = json.loads(format_json(e))
    assert d == {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(e.created))) + d["time"][-6:],
        "remote_addr": "10.0.0.1",
        "remote_user": None,
        "request": "GET /a?b=1 HTTP/1.1",
        "status": 200,
        "body_bytes_sent": 53,
        "http_referer": "http://r/",
        "http_user_agent": "t/1",
        "request_time": 0.013,
        "upstream": [
            {"addr": "127.0.0.1:9000", "status": 200, "connect_time": 0.001, "header_time": 0.012}
        ],
    }
    assert "\n" not in format_json(e)


def test_absent_fields_are_dashes_and_nulls() -> None:
    e = entry(head=b"GET / HTTP/1.0\r\n", upstream=(), rt=0.0)
    assert format_combined(e).endswith(
        '"GET / HTTP/1.0" 200 53 "-" "-" rt=0.000 uaddr=- us=- uct=- uht=-'
    )
    d = json.loads(format_json(e))
    assert (d["http_referer"], d["http_user_agent"], d["upstream"]) == (None, None, [])


def test_header_values_are_escaped_and_trimmed() -> None:
    head = b'GET / HTTP/1.1\r\nuser-agent:  a "b" \\c \xe9 \r\nREFERER:x\r\n\r\n'
    e = entry(head=head)
    assert '"x" "a \\x22b\\x22 \\x5Cc \\xE9"' in format_combined(e)
    assert request_fields(head)[2:] == ("x", 'a "b" \\c \xe9')
    assert json.loads(format_json(e))["http_user_agent"] == 'a "b" \\c \xe9'


def test_formatters_format_records_and_other_records() -> None:
    e = entry()
    rec = logging.makeLogRecord({"msg": "%s", "args": (e,)})
    rec.access = e
    assert CombinedFormatter().format(rec) == format_combined(e)
    assert JsonFormatter().format(rec) == format_json(e)
    plain = logging.makeLogRecord({"msg": "hello %s", "args": ("you",)})
    assert CombinedFormatter().format(plain) == "hello you"


# ---------------------------------------------------------------- the process's handler


def test_handler_fast_path_writes_whole_lines_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    logger = logging.getLogger("proxycore.access")
    saved = logger.handlers[:], logger.propagate, logger.level
    try:
        logger.handlers = []
        h = Harness(Simple(), access_log=access_logger(proxycore.ServerConf(access_log=str(path))))
        (handler,) = logger.handlers
        assert isinstance(handler, AccessLogHandler) and not logger.propagate
        down, up, _ = setup_request(h, GET)
        h.data(up, OK)
        for _ in range(AccessLogHandler.BATCH + 2):
            h.data(down, GET)
            h.data(up, OK)
        # BATCH lines are written at once; the rest by the flusher, soon.
        deadline = time.monotonic() + 5
        while path.read_text().count("\n") < AccessLogHandler.BATCH + 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lines = path.read_text().splitlines()
        assert all(line.endswith("us=200 uct=0.000 uht=0.000") for line in lines)
        # A program that adds a handler gets records too; the file keeps getting lines.
        c = Capture()
        logger.addHandler(c)
        h.data(down, GET)
        h.data(up, NOT_FOUND)
        handler.flush()
        assert len(c.records) == 1 and c.records[0].access.status == 404  # type: ignore[attr-defined]
        assert path.read_text().splitlines()[-1].split('"')[2] == " 404 3 "
        logger.removeHandler(c)
        handler.close()
        logger.removeHandler(handler)
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


def test_no_conf_and_no_handlers_means_off() -> None:
    logger = logging.getLogger("proxycore.access")
    saved = logger.handlers[:]
    try:
        logger.handlers = []
        assert access_logger(proxycore.ServerConf()) is None
        c = Capture()
        logger.addHandler(c)  # the program routes it: on
        assert access_logger(proxycore.ServerConf()) is logger
    finally:
        logger.handlers = saved


def test_pipe_writes_are_cut_at_line_ends(tmp_path: Path) -> None:
    r, w = os.pipe()
    handler = AccessLogHandler(str(tmp_path / "x.log"))
    handler.close()
    handler._own, handler.fd, handler._chunk = False, w, 100  # a pipe with a small PIPE_BUF
    pieces = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        pieces.append(data)
        return real_write(fd, data)

    os.write, saved = write, os.write  # type: ignore[assignment]
    try:
        handler._write("a" * 40 + "\n" + "b" * 40 + "\n" + "c" * 40 + "\n")
    finally:
        os.write = saved
        os.close(w)
    assert [len(p) for p in pieces] == [82, 41] and all(p.endswith(b"\n") for p in pieces)
    assert os.read(r, 1000).count(b"\n") == 3
    os.close(r)


def _reference_fields(head: bytes) -> tuple[str, str | None, str | None]:
    """The request line and the first Referer and User-Agent values, the plain way: every
    field line of the head split at its first colon, names compared lower-cased."""
    lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if sep and name.lower() not in found:
            found[name.lower()] = value.strip(" \t")
    return lines[0][:2048] or "-", found.get("referer"), found.get("user-agent")


def test_head_fields_match_a_plain_split_for_any_case_order_and_length() -> None:
    names = ["Host", "Accept", "User-Agent", "Referer", "Cookie", "Authorization", "A-B", "R"]
    rng = random.Random(26)
    for _ in range(2000):
        fields = []
        for _ in range(rng.randrange(0, 14)):  # beyond the lines looked at one by one
            name = rng.choice(names)
            name = "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in name)
            value = rng.choice(["", "x", " v 1 ", "\tt\t", "a:b", "Basic dTpw"])
            fields.append(f"{name}:{value}")
        head = ("GET /p HTTP/1.1\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()
        request, _user, referer, agent = request_fields(head)
        assert (request, referer, agent) == _reference_fields(head), head
    # a rejected head without its end, and nothing but a request line
    assert request_fields(b"GET / HTTP/1.1\r\nUser-agent: x")[3] == "x"
    assert request_fields(b"GET / HTTP/1.1") == ("GET / HTTP/1.1", None, None, None)


def test_large_heads_are_written_before_a_batch_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the flusher waits for a long time here: only the cap can have written the lines)
    monkeypatch.setattr(AccessLogHandler, "INTERVAL", 60.0)
    monkeypatch.setattr(AccessLogHandler, "MAX_BYTES", 10_000)
    path = tmp_path / "large.log"
    handler = AccessLogHandler(str(path))
    try:
        h = Harness(Simple(), access_log=handler.buffer)
        big = b"GET /big HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"b" * 4000 + b"\r\n\r\n"
        down, up, _ = setup_request(h, big)
        h.data(up, OK)
        for _ in range(2):
            h.data(down, big)
            h.data(up, OK)
        # three heads of 4 KB hold more than 10,000 bytes: written at once, long before
        # BATCH lines
        assert path.read_text().count("GET /big HTTP/1.1") == 3
    finally:
        handler.close()


def test_quiet_lines_arrive_within_the_interval_after_the_flusher_went_idle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "quiet.log"
    handler = AccessLogHandler(str(path))
    try:
        for k in range(3):  # each line alone; the flusher goes idle between them
            e = entry()
            e.created = 0.0
            e.at = time.monotonic()
            handler.buffer.put(e)
            deadline = time.monotonic() + 5
            while path.read_text().count("\n") < k + 1:
                assert time.monotonic() < deadline, f"line {k} not written"
                time.sleep(0.01)
            time.sleep(AccessLogHandler.INTERVAL * 3)
            assert not handler._armed  # idle until the next line
        for line in path.read_text().splitlines():  # stamped from the event time: now
            logged = time.mktime(time.strptime(line.split("[")[1][:20], "%d/%b/%Y:%H:%M:%S"))
            assert abs(logged - time.time()) < 60, line
    finally:
        handler.close()
