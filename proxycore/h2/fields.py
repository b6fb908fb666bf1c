"""The fields of an HTTP/2 request and its trailers, checked once (RFC 9113 §8.1-8.3).

Theory of operation: the connection (:mod:`proxycore.h2.connection`) decodes a header block
(HPACK) and hands the field list over as it came; the checks are made here once (the ``h2``
library, which framed HTTP/2 before, ran them as a chain of generators, most of a request's
cost in the library, and turned every failure into a connection error).
:func:`check_request` walks the list once, decoding each name and value (Latin-1) and
checking it as it goes:

- field names are lower-case tokens (§8.2, §8.2.1; RFC 9110 §5.1), values hold no NUL, CR, LF
  or other control character and do not start or end with a space or tab (§8.2.1; RFC 9110
  §5.5);
- no connection-specific field (``connection``, ``proxy-connection``, ``keep-alive``,
  ``transfer-encoding``, ``upgrade``), and ``te`` only as ``trailers`` (§8.2.2);
- pseudo-header fields only the four of a request, each at most once, all before the regular
  fields; ``:method`` always; ``:scheme`` and a ``:path`` beginning with ``/`` (``*`` for
  OPTIONS) unless CONNECT; CONNECT with ``:authority`` and neither ``:scheme`` nor ``:path``
  (§8.3, §8.3.1, §8.5); ``:protocol`` only where extended CONNECT was offered, which it is not
  (RFC 8441 §3);
- ``:authority`` and ``Host`` a valid host and port (RFC 9110 §4.2.3, the HTTP/1.1 parser's
  rule), ``Host`` at most once and naming the same authority as ``:authority`` (§8.3.1);
- ``content-length`` digits only, every copy the same (RFC 9110 §8.6); the connection checks it
  against the DATA that follows (§8.1.1).

A request that breaks one of these is *malformed* (§8.1.1): :class:`Malformed` carries the
reason and the connection resets that stream alone with RST_STREAM(PROTOCOL_ERROR); the
connection and its other streams live on. What is valid HTTP/2 but refused by policy (sizes,
underscores, a request with no authority at all) is answered by the connection with a status.
:func:`check_trailers` applies the same rules to a trailer section, where no pseudo-header
field may appear (§8.1).
"""

from __future__ import annotations

import re
from typing import Final

from proxycore.h1.parse import valid_host

__all__ = ["Malformed", "RequestFields", "check_request", "check_trailers"]

# A field name: a token (RFC 9110 §5.1) in lower case (RFC 9113 §8.2).
_NAME_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# A field value (RFC 9110 §5.5): visible characters, spaces and tabs inside, none at either end
# (RFC 9113 §8.2.1), no control character.
_VALUE_RE: Final = re.compile(
    r"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"
)
_METHOD_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")  # RFC 3986 §3.1
_PATH_RE: Final = re.compile(r"/[\x21-\x7e]*")  # the request-target's characters (RFC 9112 §3.2)
# Fields a message must not carry on HTTP/2 (RFC 9113 §8.2.2).
CONNECTION_SPECIFIC: Final = frozenset(
    {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"}
)


class Malformed(Exception):
    """A malformed request or trailer section (RFC 9113 §8.1.1); the message is the reason."""


class RequestFields:
    """A request's fields, checked: the pseudo-header fields, the regular fields in order
    (``cookie`` crumbs apart, RFC 9113 §8.2.3), what they weigh against the HTTP/1.1 limits
    (``size``: name and value plus 4 per field, as a head line; ``count``: regular fields), the
    ``content-length`` (-1: none) and the ``host`` field (None: none)."""

    def __init__(self) -> None:
        self.method = ""
        self.scheme = ""
        self.authority = ""
        self.path = ""
        self.has_authority = False
        self.items: list[tuple[str, str, str]] = []
        self.cookies: list[str] = []
        self.size = 0
        self.count = 0
        self.length = -1
        self.host: str | None = None
        self.underscored = False  # a regular field name holds "_"


def _regular(name: str, value: str) -> None:
    """The rules every regular field follows, in a request and in trailers."""
    if _NAME_RE.fullmatch(name) is None:
        if name and name.lower() != name and _NAME_RE.fullmatch(name.lower()) is not None:
            raise Malformed(f"upper-case field name {name!r} (RFC 9113 §8.2)")
        raise Malformed(f"invalid field name {name!r} (RFC 9113 §8.2.1)")
    if _VALUE_RE.fullmatch(value) is None:
        raise Malformed(f"invalid value of field {name!r} (RFC 9113 §8.2.1)")
    if name in CONNECTION_SPECIFIC:
        raise Malformed(f"connection-specific field {name!r} (RFC 9113 §8.2.2)")
    if name == "te" and value.lower() != "trailers":
        raise Malformed("te other than 'trailers' (RFC 9113 §8.2.2)")


def _pseudo(f: RequestFields, name: str, value: str, seen: int) -> int:
    """One pseudo-header field of a request (RFC 9113 §8.3.1); returns ``seen`` with its bit."""
    if name == ":method":
        bit = 1
        if _METHOD_RE.fullmatch(value) is None:
            raise Malformed("invalid :method (RFC 9113 §8.3.1)")
        f.method = value
    elif name == ":path":
        bit = 2
        f.path = value
    elif name == ":scheme":
        bit = 4
        if _SCHEME_RE.fullmatch(value) is None:
            raise Malformed("invalid :scheme (RFC 9113 §8.3.1)")
        f.scheme = value
    elif name == ":authority":
        bit = 8
        if not value or "@" in value or not valid_host(value):
            raise Malformed("invalid :authority (RFC 9113 §8.3.1)")
        f.authority = value
        f.has_authority = True
    elif name == ":protocol":
        raise Malformed(":protocol without extended CONNECT (RFC 8441 §3)")
    elif name == ":status":
        raise Malformed(":status in a request (RFC 9113 §8.3)")
    else:
        raise Malformed(f"unknown pseudo-header field {name!r} (RFC 9113 §8.3)")
    if seen & bit:
        raise Malformed(f"{name} twice (RFC 9113 §8.3)")
    return seen | bit


def check_request(headers: list[tuple[bytes, bytes]]) -> RequestFields:
    """Check a request's decoded header block (RFC 9113 §8.2-8.3); raise :class:`Malformed`."""
    f = RequestFields()
    seen = 0  # pseudo-header fields seen, a bit each (1 :method, 2 :path, 4 :scheme, 8 :authority)
    regular = False
    items = f.items
    size = 0
    for name_b, value_b in headers:
        name = name_b.decode("latin-1")
        value = value_b.decode("latin-1")
        size += len(name) + len(value) + 4
        if name[:1] == ":":
            if regular:
                raise Malformed(f"pseudo-header field {name} after a regular field (RFC 9113 §8.3)")
            seen = _pseudo(f, name, value, seen)
            continue
        regular = True
        _regular(name, value)
        f.count += 1
        if name == "cookie":
            f.cookies.append(value)
            continue
        if name == "content-length":
            if not (value.isascii() and value.isdigit()):
                raise Malformed("invalid content-length (RFC 9110 §8.6)")
            n = int(value)
            if f.length >= 0 and n != f.length:
                raise Malformed("conflicting content-length fields (RFC 9110 §8.6)")
            f.length = n
        elif name == "host":
            if f.host is not None:
                raise Malformed("more than one host field (RFC 9110 §7.2)")
            if not value or "@" in value or not valid_host(value):
                raise Malformed("invalid host field (RFC 9110 §7.2)")
            f.host = value
        if "_" in name:
            f.underscored = True
        items.append((name, name, value))
    f.size = size
    if not seen & 1:
        raise Malformed("no :method (RFC 9113 §8.3.1)")
    if f.method == "CONNECT":
        if seen & 6:
            raise Malformed("CONNECT with :scheme or :path (RFC 9113 §8.5)")
        if not seen & 8:
            raise Malformed("CONNECT without :authority (RFC 9113 §8.5)")
    else:
        if seen & 6 != 6:
            raise Malformed("no :scheme or no :path (RFC 9113 §8.3.1)")
        path = f.path
        if _PATH_RE.fullmatch(path) is None and not (path == "*" and f.method == "OPTIONS"):
            raise Malformed("invalid :path (RFC 9113 §8.3.1)")
    host = f.host
    if host is not None and f.has_authority and host.lower() != f.authority.lower():
        raise Malformed("host field naming another authority than :authority (RFC 9113 §8.3.1)")
    return f


def check_trailers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Check a trailer section (RFC 9113 §8.1: no pseudo-header field; §8.2 as a request's
    fields); raise :class:`Malformed`."""
    out: list[tuple[str, str]] = []
    for name_b, value_b in headers:
        name = name_b.decode("latin-1")
        value = value_b.decode("latin-1")
        if name[:1] == ":":
            raise Malformed(f"pseudo-header field {name} in trailers (RFC 9113 §8.1)")
        _regular(name, value)
        out.append((name, value))
    return out
