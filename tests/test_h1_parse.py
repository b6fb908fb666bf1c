"""The HTTP/1.1 codec: heads, chunked bodies, limits; every input whole, byte by byte and in
random splits."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxycore.errors import HTTPParseError
from proxycore.h1.parse import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    ChunkedDecoder,
    Limits,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from proxycore.h1.write import encode_chunk, serialize_request_head, serialize_trailers
from proxycore.testing import Harness
from tests.helpers import Simple, connect_id

LIMITS = Limits()


def test_request_head_fields_and_framing() -> None:
    req, meta = parse_request_head(
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nX-A:  v  \r\n\r\n"
    )
    assert (req.method, req.path, req.version) == ("POST", "/p", "HTTP/1.1")
    assert req.headers["x-a"] == "v"  # OWS trimmed (RFC 9110 §5.5)
    assert meta.body == BODY_LENGTH and meta.length == 12 and meta.keep_alive


def test_framing_fields_are_found_in_any_case_and_place() -> None:
    req, meta = parse_request_head(
        b"POST /p HTTP/1.1\r\nX-Forwarded-FOR: 1.2.3.4\r\nhOsT: h:1\r\nTE: trailers\r\n"
        b"cOnTeNt-LeNgTh:\t7 \r\nUPGRADE: websocket\r\nconnection: Upgrade, TE\r\n\r\n"
    )
    assert meta.length == 7 and meta.body == BODY_LENGTH and meta.host == "h:1"
    assert meta.upgrade == "websocket" and meta.hop and meta.forwarded
    assert meta.connection_tokens == {"upgrade", "te"}
    # the full field list is built on first use, names and values as received
    assert req.headers.items()[0] == ("X-Forwarded-FOR", "1.2.3.4")
    assert req.headers["content-length"] == "7" and len(req.headers) == 6
    with pytest.raises(HTTPParseError, match="Content-Length"):
        parse_request_head(
            b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 1\r\nCONTENT-LENGTH: 1\r\n\r\n"
        )
    _, rmeta = parse_response_head(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: 5\r\nCONTENT-length: 3\r\n\r\n", "GET"
    )
    assert rmeta.length == 3 and rmeta.hop_other


def test_whitespace_heavy_header_block_is_judged_in_linear_time() -> None:
    # The whitespace after a colon could be matched as part of the value as well; a validator
    # that backtracks through those splits is exponential in the number of lines.
    lines = b"A:" + b" " * 40 + b"b\r\n"
    t = time.perf_counter()
    with pytest.raises(HTTPParseError):
        parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\n" + lines * 90 + b"x y: z\r\n\r\n")
    with pytest.raises(HTTPParseError):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + lines * 90 + b"x\x01: z\r\n\r\n", "GET")
    assert time.perf_counter() - t < 1.0  # (microseconds when linear; hours when not)


def test_http10_defaults_to_close() -> None:
    _, meta = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert not meta.keep_alive
    _, meta = parse_request_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert meta.keep_alive


def test_higher_minor_version_is_treated_as_11() -> None:
    req, _ = parse_request_head(b"GET / HTTP/1.7\r\nHost: a\r\n\r\n")
    assert req.version == "HTTP/1.1"


def test_obs_text_allowed_in_values() -> None:
    req, _ = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n")
    assert req.headers["x"] == "caf\xe9"


@pytest.mark.parametrize(
    ("resp", "method", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "GET", BODY_LENGTH),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", BODY_CHUNKED),
        (b"HTTP/1.1 200 OK\r\n\r\n", "GET", BODY_CLOSE),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET", BODY_CLOSE),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD", BODY_NONE),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", "GET", BODY_NONE),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", BODY_NONE),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET", BODY_NONE),
    ],
)
def test_response_framing(resp: bytes, method: str, body: int) -> None:
    _, meta = parse_response_head(resp, method)
    assert meta.body == body


def test_find_head_end_incremental() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest"
    for cut in range(len(data) - 4):
        assert find_head_end(data[:cut], 0, LIMITS, True) == -1
    assert find_head_end(data, 0, LIMITS, True) == len(data) - 4


def test_limits_while_incomplete() -> None:
    with pytest.raises(HTTPParseError) as e:
        find_head_end(b"GET /" + b"a" * 9000, 0, LIMITS, True)
    assert e.value.status == 414
    with pytest.raises(HTTPParseError) as e:
        find_head_end(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 40000, 0, LIMITS, True)
    assert e.value.status == 431


CHUNKED = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"


def _decode_in_pieces(data: bytes, cuts: list[int]) -> tuple[bytes, ChunkedDecoder, bytes]:
    dec = ChunkedDecoder()
    buf = bytearray()
    out = b""
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        buf += data[prev:cut]
        prev = cut
        out += b"".join(dec.feed(buf))
    return out, dec, bytes(buf)


def test_chunked_byte_by_byte() -> None:
    out, dec, rest = _decode_in_pieces(CHUNKED + b"NEXT", list(range(len(CHUNKED) + 4)))
    assert out == b"hello world" and dec.done and rest == b"NEXT"
    assert dec.trailers is not None and dec.trailers["x-t"] == "1"


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=8))
def test_chunked_random_splits(cuts: list[int]) -> None:
    out, dec, rest = _decode_in_pieces(CHUNKED, cuts)
    assert out == b"hello world" and dec.done and rest == b""


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\n",
        b"0x5\r\n",
        b"-1\r\n",
        b" 5\r\n",
        b"5\r\nhelloXX",
        b"5\nhello\r\n",
        b"11111111111111111\r\n",
        b"5;\x00\r\n",
    ],
)
def test_chunked_rejects(bad: bytes) -> None:
    dec = ChunkedDecoder()
    with pytest.raises(HTTPParseError):
        dec.feed(bytearray(bad + b"\r\n" * 3))


@given(st.lists(st.binary(min_size=0, max_size=50), max_size=10))
def test_chunk_encode_decode_roundtrip(pieces: list[bytes]) -> None:
    wire = b"".join(encode_chunk(p) for p in pieces) + serialize_trailers([])
    dec = ChunkedDecoder()
    assert b"".join(dec.feed(bytearray(wire))) == b"".join(pieces) and dec.done


def test_serializer_refuses_injection() -> None:
    with pytest.raises(ValueError):
        serialize_request_head("GET", "/", [("X", "a\r\nY: b")])
    with pytest.raises(ValueError):
        serialize_request_head("GET", "/ HTTP/1.1\r\nX:", [])


REQUEST = (
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
)


def _proxy_with_splits(cuts: list[int]) -> bytes:
    """Feed REQUEST to the core split at ``cuts``; return what reaches the upstream."""
    h = Harness(Simple())
    down, _ = h.accept()
    prev = 0
    up = None
    out = b""
    for cut in [*sorted(set(cuts)), len(REQUEST)]:
        acts = h.data(down, REQUEST[prev:cut])
        prev = cut
        if up is None and Harness.connects(acts):
            up = connect_id(acts)
            acts = h.connected(up)
        if up is not None:
            out += Harness.sent(acts, up)
    assert up is not None
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    return out + Harness.sent(acts, up)


def test_request_whole_vs_byte_by_byte() -> None:
    whole = _proxy_with_splits([])
    assert b"POST /up" in whole and b"GET /next" in whole
    assert _proxy_with_splits(list(range(len(REQUEST)))).replace(b"", b"") != b""
    # Chunk boundaries may differ; compare the decoded body and the heads.
    one = _proxy_with_splits(list(range(len(REQUEST))))
    assert one.count(b"POST /up") == 1 and one.count(b"GET /next") == 1
    assert _body_of(one) == _body_of(whole) == b"abcdefg"


def _body_of(wire: bytes) -> bytes:
    head_end = wire.index(b"\r\n\r\n") + 4
    dec = ChunkedDecoder()
    return b"".join(dec.feed(bytearray(wire[head_end:])))


@settings(max_examples=60)
@given(st.lists(st.integers(min_value=0, max_value=len(REQUEST)), max_size=12))
def test_request_random_splits_same_result(cuts: list[int]) -> None:
    out = _proxy_with_splits(cuts)
    assert out.count(b"POST /up HTTP/1.1") == 1 and out.count(b"GET /next HTTP/1.1") == 1
    assert _body_of(out) == b"abcdefg"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\nHost: a\n", b"GET / HTTP/1.1\r\nHost: a\n"])
def test_bare_lf_rejected_before_head_completes(data: bytes) -> None:
    with pytest.raises(HTTPParseError) as e:
        find_head_end(data, 0, LIMITS, True)
    assert e.value.status == 400


def test_crlf_split_across_reads_is_not_bare_lf() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n"
    for cut in range(1, len(head)):
        # resume the search the way the downstream connection does (3 bytes of overlap)
        assert find_head_end(head[:cut], 0, LIMITS, True) == -1
        assert find_head_end(head, max(0, cut - 3), LIMITS, True) == -1


# The request-line and status-line fast paths must decide exactly like the regular expressions
# they shortcut (RFC 9112 §3, §4).
_METHOD = st.sampled_from(["GET", "POST", "CONNECT", "get", "G@T", "", "GET "])
_SEP = st.sampled_from([" ", "  ", "\t", ""])
_TARGET = st.text(alphabet=" \t\x00\x7f\xe9/a?*%:#", max_size=6)
_VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "HTTP/1.", "HTTP/1.10"])


@given(_METHOD, _SEP, _TARGET, _SEP, _VERSION)
@settings(max_examples=500, deadline=None)
def test_request_line_fast_path_matches_the_grammar(
    method: str, sep1: str, target: str, sep2: str, version: str
) -> None:
    from proxycore.h1.parse import _REQUEST_LINE_RE, _request_line_py

    line = method + sep1 + target + sep2 + version
    m = _REQUEST_LINE_RE.fullmatch(line)
    assert _request_line_py(line + "\r\n", len(line)) == (m.groups() if m else None)


def test_common_status_lines_match_the_grammar() -> None:
    from proxycore.h1.parse import _COMMON_STATUS_LINES, _STATUS_LINE_RE

    for line, (major, minor, status, reason) in _COMMON_STATUS_LINES.items():
        m = _STATUS_LINE_RE.fullmatch(line)
        assert m is not None and m.groups() == (major, minor, str(status), reason)
