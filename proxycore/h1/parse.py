"""Parsing HTTP/1.1 heads and decoding message bodies (RFC 9112), strictly.

Theory of operation: the session keeps received bytes in a buffer and calls
:func:`find_head_end` until the blank line that ends a head is present, enforcing the size
limits while it waits (414 for a long request line, 431 for a large header section). The whole
head is then decoded once as latin-1 and checked with compiled regular expressions: one
validates the entire header block in one pass (so one bad byte anywhere rejects it), one finds,
in the lower-cased block, just the fields that decide framing and connection handling
(Content-Length, Transfer-Encoding, Connection, Host, Expect, Upgrade, the other hop-by-hop
fields, X-Forwarded-*). The full list of fields is built only if something asks for it
(:class:`proxycore.http.Headers` is lazy), so a head that is forwarded untouched costs no
per-field objects. In the compiled build the request and status lines, the header block, the
end of the head and the Host grammar are scanned by a small C extension (``_hscan.c``) that
decides exactly like the Python references here (``_request_line_py``, ``_status_line_py``,
``_scan_fields_py``, ``_head_end_py``, ``_valid_host_py``); the semantics (duplicates, Host,
framing) stay in this module either way.

We are deliberately stricter than RFC 9112's "MAY" allowances where leniency enables request
smuggling: no obs-fold (§5.2), no bare LF or bare CR (§2.2), no whitespace before the colon
(§5.1), no Content-Length with Transfer-Encoding (§6.1), no duplicate Content-Length even with
equal values (§6.3 permits rejecting). A rejected request raises :class:`HTTPParseError` whose
``status`` is the reply to send; the connection is then closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from proxycore.errors import HTTPParseError
from proxycore.http import (
    FIELD_VALUE_CHARS,
    TCHAR,
    Headers,
    RequestHeader,
    ResponseHeader,
    field_items,
)

# How a body is delimited and what a parse learned: protocol-neutral (proxycore.meta), used
# and re-exported here.
from proxycore.meta import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    RequestMeta,
    ResponseMeta,
)

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "UNDERSCORE_ACTIONS",
    "ChunkedDecoder",
    "Limits",
    "RequestMeta",
    "ResponseMeta",
    "find_head_end",
    "parse_request_head",
    "parse_response_head",
    "valid_host",
]


class Limits:
    """Size limits for heads and chunk lines.

    Defaults follow nginx's ``large_client_header_buffers 4 8k``: a request line over 8 KiB is
    414, a header section over 32 KiB (or more than 100 fields) is 431.
    """

    __slots__ = ("max_chunk_line", "max_header_bytes", "max_headers", "max_request_line")

    def __init__(
        self,
        max_request_line: int = 8192,
        max_header_bytes: int = 32768,
        max_headers: int = 100,
        max_chunk_line: int = 4096,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_chunk_line = max_chunk_line


DEFAULT_LIMITS: Final = Limits()

# One pass per header block, without extracting anything: a sequence of field lines (RFC 9112
# §5), each ending in CRLF. Since a value cannot contain CR or LF, a bare CR or LF anywhere,
# obs-fold, whitespace before a colon or a CTL in a value makes the full match fail. The
# quantifiers are possessive: the whitespace after the colon could belong to the value too, and
# backtracking through those splits line by line is exponential in the number of lines.
_FIELD_BLOCK_RE: Final = re.compile(rf"(?:[{TCHAR}]++:[ \t]*+[{FIELD_VALUE_CHARS}]*+\r\n)*+")
# The fields the parsers act on (framing, connection handling, forwarding), and the first
# letters of their names: a field line starting with another letter is skipped unexamined.
_FRAMING_NAMES: Final = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "expect",
        "upgrade",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
_FRAMING_INITIALS: Final = frozenset("cehkptuxCEHKPTUX")
# What the header-block scan appends to its list when a field name holds an underscore (no
# framing field is called "_"), and the reference's test for one: a line whose first "_" comes
# before its colon (the block is validated, so every line is name ":" value CRLF).
_UNDERSCORE_MARK: Final = ("_", "")
_UNDERSCORE_NAME_RE: Final = re.compile(r"^[^:_\r\n]*_", re.MULTILINE)
# Request header fields whose name holds an underscore: legal (RFC 9110 §5.6.2 tchar), but a
# CGI/WSGI-style origin maps "_" and "-" to the same variable, so "Transfer_Encoding" can frame
# a body there that this proxy framed by Content-Length (request smuggling). As Envoy's
# headers_with_underscores_action: forward them, drop them (nginx's underscores_in_headers off),
# or reject the request (400).
UNDERSCORE_ACTIONS: Final = ("allow", "drop", "reject")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"})
_DIGITS: Final = frozenset("0123456789")
# Status lines most origins send, looked up whole (the regular expression handles the rest):
# line -> (major, minor, status, reason).
_COMMON_STATUS_LINES: Final[dict[str, tuple[str, str, int, str]]] = {
    f"HTTP/1.{minor} {code} {reason}": ("1", str(minor), code, reason)
    for minor in (0, 1)
    for code, reason in (
        (200, "OK"),
        (201, "Created"),
        (204, "No Content"),
        (206, "Partial Content"),
        (301, "Moved Permanently"),
        (302, "Found"),
        (304, "Not Modified"),
        (307, "Temporary Redirect"),
        (308, "Permanent Redirect"),
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (500, "Internal Server Error"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    )
}
_REQUEST_LINE_RE: Final = re.compile(rf"([{TCHAR}]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# What can still become a request line (RFC 9112 §3) while its CRLF has not arrived: a
# lone CR (the first half of an empty line, §2.2), or a prefix of
# ``method SP request-target SP HTTP/d.d CR`` in the grammar of _REQUEST_LINE_RE.
_REQUEST_LINE_PREFIX_RE: Final = re.compile(
    rf"\r|[{TCHAR}]*+|[{TCHAR}]++ (?:[\x21-\x7e]++"
    r"(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?)?)?"
)
_STATUS_LINE_RE: Final = re.compile(
    rf"HTTP/([0-9])\.([0-9]) ([0-9]{{3}})(?: ([{FIELD_VALUE_CHARS}]*))?"
)
# RFC 3986 authority: reg-name / IPv4 / IP-literal, optional port.
_HOST_RE: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)(.*)")
# RFC 9112 §7.1.1 chunk-size [ chunk-ext ]; chunk-ext values are tokens or quoted-strings.
_QCHAR = r'(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])'
_QUOTED = rf'"{_QCHAR}*"'
_CHUNK_EXT = rf"(?:;[ \t]*[{TCHAR}]+(?:[ \t]*=[ \t]*(?:[{TCHAR}]+|{_QUOTED}))?[ \t]*)"
_CHUNK_LINE_RE: Final = re.compile(rf"([0-9A-Fa-f]{{1,16}})[ \t]*{_CHUNK_EXT}*")
# What can still become a chunk line while its CRLF has not arrived: a prefix of the grammar
# above, up to its CR. Anything else (a bare LF, a CTL, a 17th size digit...) fails at once.
_CHUNK_EXT_PREFIX = (
    rf'(?:;[ \t]*(?:[{TCHAR}]+(?:[ \t]*(?:=[ \t]*(?:[{TCHAR}]+|"{_QCHAR}*\\?)?)?)?)?)'
)
_CHUNK_LINE_PREFIX_RE: Final = re.compile(
    rf"(?:[0-9A-Fa-f]{{1,16}}[ \t]*{_CHUNK_EXT}*{_CHUNK_EXT_PREFIX}?\r?)?"
)
# The same for the line a trailer section is at (RFC 9112 §7.1.2, fields as in §5): a lone CR
# (the final empty line), or a prefix of ``field-name ":" OWS field-value CR``.
_FIELD_LINE_PREFIX_RE: Final = re.compile(
    rf"\r|[{TCHAR}]*+|[{TCHAR}]++:[ \t]*+[{FIELD_VALUE_CHARS}]*+\r?"
)


# Fields a Connection option cannot remove: Host (RFC 9112 §3.2: every HTTP/1.1 request carries
# it; nginx and HAProxy keep it too) and Content-Length (the framing of a message whose head is
# otherwise forwarded). Transfer-Encoding is hop-by-hop and re-framed by the proxy anyway.
_KEPT_FIELDS: Final = frozenset({"host", "content-length"})
_KEEP_ALIVE_TOKEN: Final = frozenset({"keep-alive"})
_CLOSE_TOKEN: Final = frozenset({"close"})


# Hop-by-hop fields not otherwise examined by the parsers (RFC 9110 §7.6.1).
_OTHER_HOP: Final = frozenset(
    {"keep-alive", "te", "proxy-connection", "proxy-authenticate", "proxy-authorization"}
)


def find_head_end(buf: bytes | bytearray, start: int, limits: Limits, request: bool) -> int:
    """Return the offset just past the head's final CRLFCRLF, or -1 if more bytes are needed.

    ``start`` is where to resume searching (bytes before it were already searched).
    Raises :class:`HTTPParseError` (414/431/400) when a limit is exceeded while waiting.
    """
    end = _HEAD_END(buf, start)
    if end >= 0:
        if end > limits.max_header_bytes + limits.max_request_line:
            raise HTTPParseError("header section too large", 431)
        if request and (end > limits.max_request_line or end > limits.max_header_bytes):
            line_end = buf.find(b"\r\n", 0, end)
            if line_end > limits.max_request_line:
                raise HTTPParseError("request line too long", 414)
            if end - line_end - 2 > limits.max_header_bytes:
                raise HTTPParseError("header section too large", 431)
        return end
    # RFC 9112 §2.2: we do not accept a bare LF as a line terminator (a smuggling vector), so
    # a head containing one can be refused now instead of waiting for a CRLFCRLF that may never
    # come. Only the bytes added since the last search are scanned.
    s = max(0, start - 1)
    n_lf = buf.count(b"\n", s)
    if n_lf:
        if buf[s : s + 1] == b"\n" and s > 0 and buf[s - 1] == 0x0D:
            n_lf -= 1
        if n_lf != buf.count(b"\r\n", s):
            raise HTTPParseError("bare LF line terminator (RFC 9112 §2.2)", 400 if request else 502)
    n = len(buf)
    if request:
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if n > limits.max_request_line:
                raise HTTPParseError("request line too long", 414)
        elif line_end > limits.max_request_line:
            raise HTTPParseError("request line too long", 414)
        elif n - line_end > limits.max_header_bytes:
            raise HTTPParseError("header section too large", 431)
        if line_end < 0 or line_end + 2 > start:  # (a line complete before was checked then)
            _check_request_line_so_far(buf)
    elif n > limits.max_header_bytes + limits.max_request_line:
        raise HTTPParseError("response head too large", 502)
    return -1


def _check_request_line_so_far(buf: bytes | bytearray) -> None:
    """Refuse an incomplete head at once when its request line cannot be valid: complete and
    malformed, or a beginning no request line has (a NUL, TLS, a bare CR...). Waiting for more
    would only end in the header timeout (nginx and HAProxy answer 400 at once too).

    Leading empty lines (RFC 9112 §2.2) are skipped here too, though the connection drops them
    before it asks."""
    start = 0
    while buf.startswith(b"\r\n", start):
        start += 2
    line_end = buf.find(b"\r\n", start)
    if line_end < 0:
        if _REQUEST_LINE_PREFIX_RE.fullmatch(bytes(buf[start:]).decode("latin-1")) is None:
            raise HTTPParseError("bytes that cannot begin a request line (RFC 9112 §3)")
        return
    text = bytes(buf[start:line_end]).decode("latin-1")
    if _REQUEST_LINE(text, len(text)) is None:
        raise HTTPParseError("malformed request line (RFC 9112 §3)")


def _persistent(connection: list[str], http10: bool) -> bool:
    """RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"."""
    if "close" in connection:
        return False
    return not http10 or "keep-alive" in connection


def _token_set(tokens: list[str]) -> frozenset[str]:
    """The Connection options as a set of the fields to remove when forwarding (RFC 9110
    §7.6.1), without the ones the proxy must send itself (``_KEPT_FIELDS``); the usual single
    ones are shared constants."""
    if len(tokens) == 1:
        if tokens[0] == "keep-alive":
            return _KEEP_ALIVE_TOKEN
        if tokens[0] == "close":
            return _CLOSE_TOKEN
    names = frozenset(tokens)
    return names if names.isdisjoint(_KEPT_FIELDS) else names - _KEPT_FIELDS


def _split_tokens(value: str) -> list[str]:
    if "," not in value:  # one token (the usual "keep-alive", "close", "chunked")
        t = value.strip(" \t").lower()
        return [t] if t else []
    return [t.strip(" \t").lower() for t in value.split(",") if t.strip(" \t")]


def _parse_fields(block: str, limits: Limits) -> list[tuple[str, str, str]]:
    """Every field of a header block (chunked trailers), validated like a head's block."""
    _framing_fields(block, limits)
    return field_items(block)


def _scan_fields_py(block: str) -> list[tuple[str, str]] | None:
    """None unless ``block`` is a valid header block (RFC 9112 §5, RFC 9110 §5.5); else, in
    order, the (lower-case name, value) of the fields that decide framing and connection
    handling (and X-Forwarded-*), then ``_UNDERSCORE_MARK`` if a field name holds an
    underscore. The reference for ``_hscan.scan_fields``."""
    if _FIELD_BLOCK_RE.fullmatch(block) is None:
        return None
    out: list[tuple[str, str]] = []
    pos = 0
    end = len(block)
    while pos < end:  # one field line per turn; validated, so CR only ends lines
        eol = block.find("\r", pos)
        if block[pos] in _FRAMING_INITIALS:
            colon = block.find(":", pos)  # (a token holds no colon)
            name = block[pos:colon].lower()
            if name in _FRAMING_NAMES or name.startswith("x-forwarded-"):
                out.append((name, block[colon + 1 : eol].strip(" \t")))
        pos = eol + 2
    if "_" in block and _UNDERSCORE_NAME_RE.search(block) is not None:
        out.append(_UNDERSCORE_MARK)
    return out


def _framing_fields(block: str, limits: Limits) -> list[tuple[str, str]]:
    """Validate a header block and its number of fields; return its framing fields."""
    out = _SCAN_FIELDS(block)
    if out is None:
        raise HTTPParseError("invalid header field (RFC 9112 §5, RFC 9110 §5.5)")
    if block.count("\n") > limits.max_headers:
        raise HTTPParseError("too many header fields", 431)
    return out


def _is_length(value: str) -> bool:
    """RFC 9110 §8.6: Content-Length = 1*DIGIT (ASCII digits; at most 18 of them here)."""
    return 0 < len(value) <= 18 and value.isdigit() and value.isascii()


def _request_line_py(text: str, line_end: int) -> tuple[str, str, str, str] | None:
    """(method, target, major, minor) of ``method SP request-target SP HTTP-version``
    (RFC 9112 §3), or None if malformed. A common method with HTTP/1.x is checked without the
    regular expression; anything else goes through it. The reference for
    ``_hscan.request_line``."""
    sp = text.find(" ", 0, line_end)
    if (
        sp > 0
        and line_end - sp > 10
        and text[line_end - 9] == " "
        and text.startswith("HTTP/1.", line_end - 8)
    ):
        method = text[:sp]
        target = text[sp + 1 : line_end - 9]
        minor = text[line_end - 1]
        if (
            method in _METHODS
            and minor in _DIGITS
            and " " not in target
            and target.isascii()
            and target.isprintable()  # with the two above: every character in 0x21-0x7e
        ):
            return method, target, "1", minor
    m = _REQUEST_LINE_RE.fullmatch(text, 0, line_end)
    if m is None:
        return None
    return m.group(1), m.group(2), m.group(3), m.group(4)


def _status_line_py(text: str, line_end: int) -> tuple[str, str, int, str] | None:
    """(major, minor, status, reason) of ``HTTP-version SP status-code [SP reason-phrase]``
    (RFC 9112 §4) over text[:line_end], or None if malformed; the reason is "" when absent.
    Common status lines are looked up whole. The reference for ``_hscan.status_line``."""
    common = _COMMON_STATUS_LINES.get(text[:line_end])
    if common is not None:
        return common
    m = _STATUS_LINE_RE.fullmatch(text, 0, line_end)
    if m is None:
        return None
    major, minor, status_s, reason_s = m.groups()
    return major, minor, int(status_s), reason_s or ""


def _head_end_py(buf: bytes | bytearray, start: int) -> int:
    """The offset just past the first CRLFCRLF at or after ``start``, or -1. The reference for
    ``_hscan.head_end``."""
    idx = buf.find(b"\r\n\r\n", start)
    return idx + 4 if idx >= 0 else -1


def _valid_host_py(text: str) -> bool:
    """A Host value or authority (RFC 9112 §3.2). The reference for ``_hscan.valid_host``."""
    return _HOST_RE.fullmatch(text) is not None


def _load_scanner() -> Any:
    """The C head scanner (built by ``pip install .`` with a C compiler), or None."""
    try:
        from proxycore.h1 import _hscan
    except ImportError:
        return None
    return _hscan


_HSCAN: Final = _load_scanner()
# The scanner's functions where it is built, the Python references otherwise (they decide
# identically: tests/test_h1_scan.py).
_REQUEST_LINE: Final[Callable[[str, int], tuple[str, str, str, str] | None]] = (
    _request_line_py if _HSCAN is None else _HSCAN.request_line
)
_SCAN_FIELDS: Final[Callable[[str], list[tuple[str, str]] | None]] = (
    _scan_fields_py if _HSCAN is None else _HSCAN.scan_fields
)
_STATUS_LINE: Final[Callable[[str, int], tuple[str, str, int, str] | None]] = (
    _status_line_py if _HSCAN is None else _HSCAN.status_line
)
_HEAD_END: Final[Callable[[bytes | bytearray, int], int]] = (
    _head_end_py if _HSCAN is None else _HSCAN.head_end
)
_VALID_HOST: Final[Callable[[str], bool]] = _valid_host_py if _HSCAN is None else _HSCAN.valid_host


def valid_host(text: str) -> bool:
    """A Host value or authority (RFC 9112 §3.2, RFC 9110 §4.2.3): host, optional port."""
    return _VALID_HOST(text)


def parse_request_head(
    head: bytes | bytearray | memoryview,
    limits: Limits = DEFAULT_LIMITS,
    underscores: str = "allow",
) -> tuple[RequestHeader, RequestMeta]:
    """Parse a complete request head (ending in CRLFCRLF, leading CRLFs already skipped).

    ``underscores``: what to do with fields whose name holds an underscore (one of
    ``UNDERSCORE_ACTIONS``): keep them (``"allow"``, RFC 9110's grammar), remove them from the
    head (``"drop"``; their names are then in ``meta.dropped``), or reject the request with 400
    (``"reject"``). The server's setting is ``ServerConf.headers_with_underscores``."""
    raw = head if type(head) is bytes else bytes(head)
    text = raw.decode("latin-1")
    line_end = text.find("\r\n")
    parts = _REQUEST_LINE(text, line_end)
    if parts is None:
        raise HTTPParseError("malformed request line (RFC 9112 §3)")
    method, target, major, minor = parts
    if major != "1":
        raise HTTPParseError("HTTP version not supported", 505)
    http10 = minor == "0"
    block = text[line_end + 2 : -2]
    framing = _framing_fields(block, limits)

    meta = RequestMeta()
    meta.head_size = len(text)
    meta.raw = raw
    content_length: str | None = None
    te: str | None = None
    hosts = 0
    host_value = ""
    connection: list[str] = []
    underscored = False
    for lname, value in framing:
        if lname == "content-length":
            if content_length is not None:
                raise HTTPParseError("duplicate Content-Length (RFC 9112 §6.3)")
            content_length = value
        elif lname == "transfer-encoding":
            te = value if te is None else te + "," + value
        elif lname == "host":
            hosts += 1
            host_value = value
        elif lname == "connection":
            connection.extend(_split_tokens(value))
        elif lname == "expect":
            if value.lower() == "100-continue":
                meta.expect_continue = True
            else:
                raise HTTPParseError("unsupported expectation (RFC 9110 §10.1.1)", 417)
        elif lname == "upgrade":
            meta.upgrade = value
        elif lname in _OTHER_HOP:
            meta.hop = True
        elif lname.startswith("x-forwarded-"):
            meta.forwarded = True
        elif lname == "_":  # the scan's _UNDERSCORE_MARK: a field name holds an underscore
            underscored = True
    headers = Headers._from_block(block)
    if underscored and underscores != "allow":
        _underscored_fields(headers, meta, underscores == "reject")
    if connection or te is not None or meta.upgrade is not None:
        meta.hop = True
    meta.has_host = hosts > 0

    # RFC 9112 §3.2: exactly one Host in HTTP/1.1; at most one in 1.0.
    if hosts > 1:
        raise HTTPParseError("duplicate Host (RFC 9112 §3.2)")
    if hosts == 0 and not http10:
        raise HTTPParseError("missing Host (RFC 9112 §3.2)")
    if hosts and not _VALID_HOST(host_value):
        raise HTTPParseError("invalid Host (RFC 9112 §3.2)")

    # Request target forms, RFC 9112 §3.2. A fragment is never part of a request-target.
    if "#" in target:
        raise HTTPParseError("fragment in request target (RFC 9112 §3.2)")
    scheme = authority = None
    path = target
    if target[0] != "/":
        if target == "*":
            if method != "OPTIONS":
                raise HTTPParseError("asterisk-form is only for OPTIONS (RFC 9112 §3.2.4)")
        elif method == "CONNECT":
            if not _VALID_HOST(target):
                raise HTTPParseError("invalid authority-form target (RFC 9112 §3.2.3)")
            authority = target
        else:
            am = _ABSOLUTE_RE.fullmatch(target)
            if am is None:
                raise HTTPParseError("invalid request target (RFC 9112 §3.2)")
            scheme = am.group(1).lower()
            if scheme != "http" and scheme != "https":
                # RFC 9112 §3.2.2 defines absolute-form for the http and https schemes; the
                # authority of another scheme names no server this proxy could ask.
                raise HTTPParseError(f"absolute-form target with scheme {scheme!r}")
            authority = am.group(2)
            if "@" in authority or not _VALID_HOST(authority):
                raise HTTPParseError("invalid authority in absolute-form target")
            rest = am.group(3)
            path = rest if rest.startswith("/") else "/" + rest
            # RFC 9112 §3.2.2: ignore the received Host and use the target's authority.
            headers.remove("host")
            headers.add("Host", authority)
            meta.has_host = True
            host_value = authority
            hosts = 1

    if hosts:
        meta.host = host_value

    # Message body framing, RFC 9112 §6.1-§6.3.
    if te is not None:
        if http10:
            raise HTTPParseError("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)")
        if content_length is not None:
            raise HTTPParseError("both Content-Length and Transfer-Encoding (RFC 9112 §6.1)")
        codings = _split_tokens(te)
        for c in codings:
            if c != "chunked":
                raise HTTPParseError(f"unsupported transfer coding {c!r}", 501)
        if codings != ["chunked"]:
            raise HTTPParseError("chunked must be applied exactly once, last (RFC 9112 §6.1)")
        meta.body = BODY_CHUNKED
    elif content_length is not None:
        if not _is_length(content_length):
            raise HTTPParseError("invalid Content-Length (RFC 9110 §8.6)")
        meta.length = int(content_length)
        if meta.length:
            meta.body = BODY_LENGTH

    if connection:
        meta.connection_tokens = _token_set(connection)
    meta.keep_alive = _persistent(connection, http10)
    version = "HTTP/1.0" if http10 else "HTTP/1.1"
    req = RequestHeader(method, path, headers, version, scheme=scheme, authority=authority)
    return req, meta


def _underscored_fields(headers: Headers, meta: RequestMeta, reject: bool) -> None:
    """Reject (400) a request head with fields whose name holds an underscore, or drop them
    (see UNDERSCORE_ACTIONS; nginx drops them by default, underscores_in_headers off)."""
    items = headers._items
    names = [n for k, n, _ in items if "_" in k]
    if reject:
        raise HTTPParseError(
            f"header field name with an underscore: {names[0]!r} (headers_with_underscores reject)"
        )
    headers._items = [it for it in items if "_" not in it[0]]
    meta.dropped = names
    meta.hop = True  # the head changed: it is re-serialized, not forwarded verbatim


def parse_response_head(
    head: bytes | bytearray | memoryview,
    request_method: str,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[ResponseHeader, ResponseMeta]:
    """Parse a complete upstream response head; raises HTTPParseError (status 502) if invalid."""
    raw = head if type(head) is bytes else bytes(head)
    text = raw.decode("latin-1")
    line_end = text.find("\r\n")
    parts = _STATUS_LINE(text, line_end)
    if parts is None:
        raise HTTPParseError("malformed status line", 502)
    major, minor, status, reason = parts
    if major != "1":
        raise HTTPParseError("unsupported HTTP version in response", 502)
    http10 = minor == "0"
    if status < 100:
        raise HTTPParseError("invalid status code", 502)
    block = text[line_end + 2 : -2]
    try:
        framing = _framing_fields(block, limits)
    except HTTPParseError as e:
        raise HTTPParseError(f"invalid response header: {e}", 502) from None

    meta = ResponseMeta()
    meta.head_size = len(text)
    meta.raw = raw
    content_length: str | None = None
    te: str | None = None
    connection: list[str] = []
    for lname, value in framing:
        if lname == "content-length":
            if content_length is not None and content_length != value:
                raise HTTPParseError("conflicting Content-Length in response", 502)
            content_length = value
        elif lname == "transfer-encoding":
            te = value if te is None else te + "," + value
        elif lname == "connection":
            connection.extend(_split_tokens(value))
            meta.connection_fields += 1
        elif lname in _OTHER_HOP or lname == "upgrade":
            meta.hop = meta.hop_other = True
    if te is not None:
        meta.hop = meta.hop_other = True
    if connection:
        meta.hop = True
    meta.content_length = content_length

    if connection:
        meta.connection_tokens = _token_set(connection)
    meta.keep_alive = _persistent(connection, http10)

    # RFC 9112 §6.3: HEAD, 1xx, 204 and 304 responses never have a body.
    if request_method == "HEAD" or status < 200 or status == 204 or status == 304:
        meta.body = BODY_NONE
        if content_length is not None and not _is_length(content_length):
            raise HTTPParseError("invalid Content-Length in response", 502)
    elif te is not None:
        if content_length is not None:
            # §6.3 rule 3: "ought to be handled as an error" — a smuggling signal.
            raise HTTPParseError("Content-Length with Transfer-Encoding in response", 502)
        codings = _split_tokens(te)
        if codings and codings[-1] == "chunked" and codings.count("chunked") == 1:
            if len(codings) > 1:
                raise HTTPParseError("unsupported transfer coding in response", 502)
            meta.body = BODY_CHUNKED
        else:
            meta.body = BODY_CLOSE
            meta.keep_alive = False
    elif content_length is not None:
        if not _is_length(content_length):
            raise HTTPParseError("invalid Content-Length in response", 502)
        meta.length = int(content_length)
        meta.body = BODY_LENGTH if meta.length else BODY_NONE
    else:
        meta.body = BODY_CLOSE
        meta.keep_alive = False
    version = "HTTP/1.0" if http10 else "HTTP/1.1"
    resp = ResponseHeader(status, Headers._from_block(block), reason, version)
    return resp, meta


class ChunkedDecoder:
    """Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).

    :meth:`feed` consumes bytes from the front of a buffer and returns decoded data pieces.
    When the last chunk and trailer section have been read, ``done`` is True and ``trailers``
    holds the trailer fields (possibly empty). Malformed input raises HTTPParseError.
    """

    __slots__ = (
        "_checked",
        "_error_status",
        "_limits",
        "_remaining",
        "_state",
        "done",
        "trailers",
    )

    _SIZE = 0
    _DATA = 1
    _DATA_CRLF = 2
    _TRAILERS = 3

    def __init__(self, limits: Limits = DEFAULT_LIMITS, error_status: int = 400) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._limits = limits
        self._error_status = error_status
        self._checked = 0  # bytes of the trailer section already validated (whole lines)
        self.done = False
        self.trailers: Headers | None = None

    def feed(self, buf: bytearray) -> list[bytes]:
        """Decode as much of ``buf`` as possible, deleting what was consumed."""
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        limits = self._limits
        try:
            while pos < n and not self.done:
                state = self._state
                if state == self._DATA:
                    take = min(self._remaining, n - pos)
                    out.append(bytes(buf[pos : pos + take]))
                    pos += take
                    self._remaining -= take
                    if self._remaining == 0:
                        self._state = self._DATA_CRLF
                elif state == self._SIZE:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        if n - pos > limits.max_chunk_line:
                            raise HTTPParseError("chunk size line too long", self._error_status)
                        partial = bytes(buf[pos:]).decode("latin-1")
                        if _CHUNK_LINE_PREFIX_RE.fullmatch(partial) is None:
                            raise HTTPParseError(
                                "invalid chunk size line (RFC 9112 §7.1)", self._error_status
                            )
                        break
                    line = bytes(buf[pos:eol]).decode("latin-1")
                    m = _CHUNK_LINE_RE.fullmatch(line)
                    if m is None:
                        raise HTTPParseError(
                            "invalid chunk size line (RFC 9112 §7.1)", self._error_status
                        )
                    size = int(m.group(1), 16)
                    pos = eol + 2
                    if size == 0:
                        self._state = self._TRAILERS
                        self._checked = 0
                    else:
                        self._remaining = size
                        self._state = self._DATA
                elif state == self._DATA_CRLF:
                    if n - pos < 2:
                        if buf[pos] != 0x0D:
                            raise HTTPParseError(
                                "chunk data not followed by CRLF", self._error_status
                            )
                        break
                    if buf[pos] != 0x0D or buf[pos + 1] != 0x0A:
                        raise HTTPParseError("chunk data not followed by CRLF", self._error_status)
                    pos += 2
                    self._state = self._SIZE
                else:  # trailer section, RFC 9112 §7.1.2
                    if buf.startswith(b"\r\n", pos):
                        pos += 2
                        self.done = True
                        self.trailers = self.trailers or Headers()
                        break
                    end = buf.find(b"\r\n\r\n", pos + max(0, self._checked - 2))
                    if end < 0:
                        if n - pos > limits.max_header_bytes:
                            raise HTTPParseError("trailer section too large", 431)
                        self._check_partial_trailers(buf, pos, limits)
                        break
                    block = bytes(buf[pos : end + 2]).decode("latin-1")
                    fields = _parse_fields(block, limits)
                    pos = end + 4
                    self.done = True
                    self.trailers = Headers._from_parsed(fields)
        finally:
            if pos:
                del buf[:pos]
        return out

    def _check_partial_trailers(self, buf: bytearray, pos: int, limits: Limits) -> None:
        """An incomplete trailer section from ``pos``: fail now if it can never become valid (a
        bare LF or CR, an invalid field line) instead of waiting for a CRLFCRLF that cannot
        help. Whole lines are validated once (``_checked``); the last, partial one each time."""
        last = buf.rfind(b"\r\n", pos + self._checked)
        if last >= 0:
            block = bytes(buf[pos + self._checked : last + 2]).decode("latin-1")
            try:
                _framing_fields(block, limits)
            except HTTPParseError as e:
                raise HTTPParseError(f"invalid trailer section: {e}", self._error_status) from None
            self._checked = last + 2 - pos
        partial = bytes(buf[pos + self._checked :]).decode("latin-1")
        if _FIELD_LINE_PREFIX_RE.fullmatch(partial) is None:
            raise HTTPParseError(
                "invalid trailer section (RFC 9112 §7.1.2, §2.2)", self._error_status
            )
