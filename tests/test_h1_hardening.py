"""The core's side of issue 14's HTTP/1.1 items, scripted with no sockets: Connection options
that name Host or Content-Length, chunked framing that can never become valid, early answers
after a failed upstream write (WriteFailed), non-http schemes, bytes that cannot begin a
request line, and error messages in words."""

from __future__ import annotations

import errno
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxycore
from proxycore.actions import ShutdownWrite
from proxycore.builtin import ReverseProxy
from proxycore.errors import HTTPParseError, os_error_reason, socket_error_words
from proxycore.events import WriteFailed
from proxycore.h1.parse import (
    _CHUNK_LINE_PREFIX_RE,
    _CHUNK_LINE_RE,
    _FIELD_BLOCK_RE,
    _FIELD_LINE_PREFIX_RE,
    _REQUEST_LINE_PREFIX_RE,
    _REQUEST_LINE_RE,
    ChunkedDecoder,
    Limits,
    find_head_end,
    parse_request_head,
)
from proxycore.testing import Harness
from proxycore.trace import decode_event, encode_event
from tests.helpers import Simple, closed, connect_id, sent, setup_request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
EARLY = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"


class Logs:
    """A logger that keeps its messages (the engine's log calls, formatted)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _log(self, msg: str, *args: object, **_: object) -> None:
        self.lines.append(msg % args if args else msg)

    info = warning = error = debug = exception = _log


# ------------------------------------------------------------------ 1. Connection options


def test_connection_option_naming_host_keeps_host() -> None:
    h = Harness(Simple())
    _, up, acts = setup_request(
        h, b"GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: host\r\n\r\n"
    )
    head = sent(acts, up)
    assert b"\r\nHost: example.test\r\n" in head and b"Connection" not in head, head


def test_connection_option_naming_other_fields_still_removes_them() -> None:
    h = Harness(Simple())
    _, up, acts = setup_request(
        h, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret, Host\r\nX-Secret: 1\r\n\r\n"
    )
    head = sent(acts, up)
    assert b"X-Secret" not in head and b"\r\nHost: a\r\n" in head, head


def test_connection_option_naming_content_length_keeps_the_framing() -> None:
    h = Harness(Simple())
    req = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: content-length\r\n\r\nabc"
    )
    down, up, acts = setup_request(h, req)
    assert b"Content-Length: 3\r\n" in sent(acts, up) and sent(acts, up).endswith(b"\r\n\r\nabc")
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n")
    acts += h.data(up, b"hello")
    out = sent(acts, down)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 5\r\n" in out, out
    assert out.endswith(b"\r\n\r\nhello") and not closed(acts, down)


# ------------------------------------------------------------------ 2. chunked framing

BAD_CHUNKED = [
    b"5\r\nhello\r\n0\n\n",
    b"5\r\nhello\r\n0\r\n\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\n",
    b"5\r\nhello\r\n0\r\n\rX",
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded",
    b"5\r\nhello\r\n0\r\n: no name",
    b"5\r\nhello\r\n0\r\nX T: 1",
    b"5\nhello",
    b"5\r\r",
    b"\r",
    b"5;ext=\x01",
    b"5 x",
    b"00000000000000005",
    b'5;a="unterminated\x00',
]


@pytest.mark.parametrize("body", BAD_CHUNKED)
@pytest.mark.parametrize("status", [400, 502])
def test_chunked_bytes_that_cannot_become_valid_fail_at_once(body: bytes, status: int) -> None:
    dec = ChunkedDecoder(error_status=status)
    with pytest.raises(HTTPParseError) as e:
        dec.feed(bytearray(body))
    assert e.value.status == status, e.value


GOOD_CHUNKED = [
    b'5;name=value;q="a \\" b"\r\nhello\r\n6 ; x \r\n world\r\n0\r\nX-T: 1\r\nY:\r\n\r\n',
    b"0\r\n\r\n",
    b"A\r\n0123456789\r\n0;last\r\n\r\n",
]


@pytest.mark.parametrize("body", GOOD_CHUNKED)
def test_valid_chunked_bodies_decode_at_every_split(body: bytes) -> None:
    whole = ChunkedDecoder()
    expect = b"".join(whole.feed(bytearray(body)))
    assert whole.done
    for cut in range(len(body) + 1):
        for step in (1, 3):
            dec = ChunkedDecoder()
            buf = bytearray()
            out = b""
            pieces = [body[:cut]] + [body[i : i + step] for i in range(cut, len(body), step)]
            for piece in pieces:
                buf += piece
                out += b"".join(dec.feed(buf))
            assert dec.done and out == expect, (cut, step)
            assert dec.trailers is not None and len(dec.trailers) == len(whole.trailers or ())


def test_slow_trailers_are_validated_once() -> None:
    """Whole trailer lines are checked as they arrive, once (no rescans growing with size)."""
    dec = ChunkedDecoder(Limits(max_headers=1000))
    buf = bytearray(b"0\r\n")
    dec.feed(buf)
    for i in range(200):
        buf += b"X-%d: v\r\n" % i
        dec.feed(buf)
        assert not dec.done
    assert dec._checked == len(buf)
    buf += b"\r\n"
    dec.feed(buf)
    assert dec.done and len(dec.trailers or ()) == 200


# The prefix grammars must never refuse what can still become valid: every prefix of a valid
# line passes (soundness), checked on lines built from the full grammars' alphabets.
_LINE_CHARS = st.sampled_from(list('GETPOST get/?a=1% \t;="\\:HTTP/1.01\x00\x7f\xe9xX-'))


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE_CHARS, max_size=24).map("".join))
def test_prefix_grammars_accept_every_prefix_of_a_valid_line(text: str) -> None:
    for full, prefix, end in (
        (_REQUEST_LINE_RE, _REQUEST_LINE_PREFIX_RE, "\r"),
        (_CHUNK_LINE_RE, _CHUNK_LINE_PREFIX_RE, "\r"),
    ):
        if full.fullmatch(text):
            for cut in range(len(text) + 1):
                assert prefix.fullmatch(text[:cut]), (text, cut)
            assert prefix.fullmatch(text + end)
    if _FIELD_BLOCK_RE.fullmatch(text + "\r\n"):
        for cut in range(len(text) + 2):
            assert _FIELD_LINE_PREFIX_RE.fullmatch((text + "\r")[:cut]), (text, cut)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "GET / HTTP/1.1",
            "POST /a?b=c HTTP/1.0",
            "OPTIONS * HTTP/1.1",
            "PATCH http://a.test/x HTTP/1.1",
            "M-SEARCH /x HTTP/2.0",
        ]
    ),
    st.lists(_LINE_CHARS, max_size=12).map("".join),
)
def test_prefix_grammars_are_exact_on_request_lines(line: str, noise: str) -> None:
    """A prefix is refused exactly when no request line starts with it: for the valid line
    itself every prefix passes; with noise spliced in, a refused prefix has no valid
    completion (the noisy line with its version restored does not parse)."""
    for cut in range(len(line) + 1):
        assert _REQUEST_LINE_PREFIX_RE.fullmatch(line[:cut])
    noisy = line[:5] + noise
    if not _REQUEST_LINE_PREFIX_RE.fullmatch(noisy):
        assert not _REQUEST_LINE_RE.fullmatch(noisy + line[5:])
        assert not _REQUEST_LINE_RE.fullmatch(noisy + " HTTP/1.1")


# ------------------------------------------------------------------ 4. absolute-form schemes


@pytest.mark.parametrize(
    "target", ["ftp://other.test/x", "gopher://a/", "ws://a/b", "x-y+z.1://a/"]
)
def test_absolute_form_with_a_scheme_other_than_http_is_400(target: str) -> None:
    with pytest.raises(HTTPParseError) as e:
        parse_request_head(f"GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    assert e.value.status == 400 and "scheme" in str(e.value)


@pytest.mark.parametrize("target", ["http://a.test/x", "HTTPS://a.test", "Http://a.test?q"])
def test_absolute_form_http_and_https_accepted(target: str) -> None:
    req, meta = parse_request_head(f"GET {target} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    assert meta.host == "a.test" and req.path.startswith("/")


# ------------------------------------------------------------------ 5. garbage request lines

LIMITS = Limits()


@pytest.mark.parametrize(
    "data",
    [b"\x00", b" ", b"\r\r", b"\x16\x03\x01", b"GET\x00", b"GET  /", b"GET / http/1.1",
     b"GET / HTTP/1.1 ", b"GET / HTTP/11", b"GET /\x7f", b"GARBAGE\r\n", b"GET / HTTP/1.1\r\r",
     b"\r\n\x00"],
)  # fmt: skip
def test_bytes_that_cannot_begin_a_request_line_are_refused_at_once(data: bytes) -> None:
    with pytest.raises(HTTPParseError) as e:
        find_head_end(data, 0, LIMITS, True)
    assert e.value.status == 400


@pytest.mark.parametrize(
    "data",
    [b"\r", b"G", b"GET", b"GET ", b"GET /x?y", b"GET /x HTTP/1.", b"GET / HTTP/1.1\r",
     b"GET / HTTP/1.1\r\nHost: a", b"\r\nGET /", b"OPTIONS * HTTP/1.1\r\n"],
)  # fmt: skip
def test_the_beginnings_of_requests_wait_for_more(data: bytes) -> None:
    assert find_head_end(data, 0, LIMITS, True) == -1


def test_garbage_after_a_keep_alive_request_is_answered_400_and_closed() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sent(h.data(up, OK), down).endswith(b"hello")
    acts = h.data(down, b"\x00")
    assert sent(acts, down).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert ShutdownWrite(down) in acts  # a lingering close, as for every rejected request


def test_empty_lines_between_requests_are_ignored() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.data(up, OK)
    for piece in (b"\r", b"\n\r", b"\n", b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"):
        acts = h.data(down, piece)
        assert not sent(acts, down), piece
    assert sent(acts, up).startswith(b"GET /b HTTP/1.1\r\n")


# ------------------------------------------------------------------ 3. early answers


BIG_POST = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000


def test_write_failed_then_early_answer_is_relayed_and_the_client_closed_after() -> None:
    logs = Logs()
    h = Harness(Simple(), logger=logs)
    down, up, _ = setup_request(h, BIG_POST)
    acts = h.write_failed(up)
    assert not sent(acts, down) and not closed(acts, down) and not closed(acts, up)
    acts = h.data(down, b"x" * 5000)  # more body: not forwarded any more
    assert not sent(acts, up)
    acts = h.data(up, EARLY)
    out = sent(acts, down)
    assert out.startswith(b"HTTP/1.1 413 Content Too Large\r\n") and out.endswith(b"big!"), out
    assert b"Connection: close\r\n" in out
    assert closed(acts, up) and ShutdownWrite(down) in acts  # lingers: the client still sends
    assert not [ln for ln in logs.lines if "upstream" in ln], logs.lines


def test_early_answer_then_write_failed_still_relays() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, BIG_POST)
    acts = h.data(up, b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 10\r\n\r\n")
    out = sent(acts, down)
    assert out.startswith(b"HTTP/1.1 401") and b"Connection: close\r\n" in out, out
    acts = h.write_failed(up)
    assert not closed(acts, down)
    acts = h.data(up, b"0123456789")
    assert sent(acts, down) == b"0123456789" and ShutdownWrite(down) in acts


def test_write_failed_then_eof_without_answer_is_502_in_words() -> None:
    logs = Logs()
    h = Harness(Simple(), logger=logs)
    down, up, _ = setup_request(h, BIG_POST)
    h.write_failed(up, "reset the connection")
    acts = h.closed(up, "reset the connection")
    assert sent(acts, down).startswith(b"HTTP/1.1 502 ")
    assert (
        "upstream 127.0.0.1:9000 reset the connection while the request body was being sent"
        in logs.lines
    ), logs.lines


def test_write_failed_without_answer_times_out_504() -> None:
    h = Harness(Simple(), proxycore.ServerConf(read_timeout=3.0))
    down, up, _ = setup_request(h, BIG_POST)
    h.write_failed(up)
    acts = h.advance(3.5, down)
    assert sent(acts, down).startswith(b"HTTP/1.1 504 ")


def test_write_failed_on_a_reused_connection_before_an_answer_is_retried() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.data(up, OK)
    acts = h.data(down, b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sent(acts, up).startswith(b"GET /again")  # on the pooled connection
    h.write_failed(up, "closed the connection")
    acts = h.eof(up)
    fresh = connect_id(acts)
    assert fresh != up
    acts = h.connected(fresh)
    assert sent(acts, fresh).startswith(b"GET /again")


def test_a_connection_whose_write_failed_is_never_pooled() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.write_failed(up)
    acts = h.data(up, OK)
    assert sent(acts, down).endswith(b"hello") and not closed(acts, down)  # the client stays
    assert closed(acts, up) and len(h.engine.pool) == 0


def test_early_answer_is_not_a_backend_failure() -> None:
    app = ReverseProxy(["127.0.0.1:9001", "127.0.0.1:9002"], eject_after=1, eject_for=30.0)
    h = Harness(app)
    for _ in range(4):
        down, _ = h.accept()
        up = connect_id(h.data(down, BIG_POST))
        h.connected(up)
        h.write_failed(up)
        acts = h.data(up, EARLY)
        assert sent(acts, down).startswith(b"HTTP/1.1 413")
        h.closed(down)
    assert not app._ejected_until and not app._failures


def test_write_failed_on_a_client_ends_its_request() -> None:
    h = Harness(Simple())
    down, up, _ = setup_request(h, BIG_POST)
    acts = h.write_failed(down, "reset the connection")
    assert closed(acts, down) and closed(acts, up) and ShutdownWrite(down) not in acts


def test_write_failed_is_recorded_and_replayed() -> None:
    ev = WriteFailed(7, 1.5, "reset the connection")
    kind, payload = encode_event(ev)
    assert decode_event(kind, 7, 1.5, payload) == ev


# ------------------------------------------------------------------ 11. words


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "closed the connection"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "reset the connection"),
        (errno.ECONNREFUSED, "refused the connection"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "is unreachable (no route to host)"),
        (TimeoutError(), "timed out"),
        (socket.gaierror(-2, "Name or service not known"),
         "could not be resolved (name or service not known)"),
        (OSError(errno.EMFILE, "Too many open files"), "failed (too many open files)"),
        (OSError("odd"), "failed (odd)"),
    ],
)  # fmt: skip
def test_socket_errors_in_words(exc: BaseException | int, words: str) -> None:
    assert socket_error_words(exc) == words
    assert not re.search(r"Errno|Error\(|\d{2,}", socket_error_words(exc))


def test_os_error_reasons_in_words() -> None:
    assert os_error_reason(FileNotFoundError(2, "No such file or directory", "/x")) == (
        "no such file or directory: '/x'"
    )
    assert os_error_reason(OSError(errno.EMFILE, "Too many open files")) == "too many open files"


def test_messages_name_the_peer_and_the_stage() -> None:
    logs = Logs()
    h = Harness(Simple(), logger=logs)
    _down, up, _ = setup_request(h, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    h.closed(up, "reset the connection")
    assert (
        "upstream 127.0.0.1:9000 reset the connection while the response body was being received"
        in logs.lines
    ), logs.lines
    down2, _ = h.accept()
    up2 = connect_id(h.data(down2, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.connected(up2)
    h.eof(up2)
    assert (
        "upstream 127.0.0.1:9000 closed the connection before sending a response head" in logs.lines
    ), logs.lines
    down3, _ = h.accept()
    up3 = connect_id(h.data(down3, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.connect_failed(up3, "refused")
    assert "upstream 127.0.0.1:9000 refused the connection" in logs.lines, logs.lines
    assert not [ln for ln in logs.lines if re.search(r"Error\(|Errno|\(\'", ln)], logs.lines
