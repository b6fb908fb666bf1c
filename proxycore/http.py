"""The HTTP message heads that filter phases see and edit.

Theory of operation: a head is parsed once from the wire into a :class:`RequestHeader` or
:class:`ResponseHeader` whose :class:`Headers` keep the received order and spelling, with
case-insensitive lookup. Filters edit these objects in place; the writer serializes them again.
Names and values are ``str`` decoded as ISO-8859-1 (RFC 9110 §5.5: field values are octets;
latin-1 maps each octet to one code point, so the round trip is lossless).

Received headers are lazy: the parser validates the whole header block and reads the few fields
that decide framing itself, and hands :class:`Headers` the block's text; the list of fields is
built the first time anything looks at it. A proxied request whose filters never read its
headers (the head goes upstream verbatim) builds no per-field objects at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = ["Headers", "RequestHeader", "ResponseHeader", "reason_phrase"]

# RFC 9110 §5.6.2 token; §5.5 field-value: VCHAR / obs-text / SP / HTAB (no CTLs, no DEL).
TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
FIELD_VALUE_CHARS = r"\t\x20-\x7e\x80-\xff"
# One field line (RFC 9112 §5): name, colon, optional whitespace, value, CRLF. MULTILINE ``^``
# anchors each match at a line start.
FIELD_LINE_RE: Final = re.compile(
    rf"^([{TCHAR}]+):[ \t]*([{FIELD_VALUE_CHARS}]*)\r\n", re.MULTILINE
)


def field_items(block: str) -> list[tuple[str, str, str]]:
    """(lower-case name, name, value) for each field line of a header block already validated
    by the parser (trailing whitespace is not part of a value, RFC 9112 §5.1)."""
    return [(n.lower(), n, v.rstrip(" \t")) for n, v in FIELD_LINE_RE.findall(block)]


class Headers:
    """An ordered, case-insensitive multi-map of header fields.

    ``headers["x"] = "v"`` replaces every field named x; :meth:`add` appends one more;
    ``del headers["x"]`` removes all of them; :meth:`get_all` returns every value in order.
    """

    __slots__ = ("_block", "_list")

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
        # Each item is (lowercase name, name as received, value).
        self._list: list[tuple[str, str, str]] | None = (
            [] if items is None else [(n.lower(), n, v) for n, v in items]
        )
        self._block = ""

    # Static, not class methods: in the compiled core ``Headers()`` is then a direct call.
    @staticmethod
    def _from_parsed(items: list[tuple[str, str, str]]) -> Headers:
        h = Headers()
        h._list = items
        return h

    @staticmethod
    def _from_block(block: str) -> Headers:
        """Headers of a validated header block, parsed into fields on first use."""
        h = Headers()
        h._list = None
        h._block = block
        return h

    @property
    def _items(self) -> list[tuple[str, str, str]]:
        items = self._list
        if items is None:
            items = self._list = field_items(self._block)
            self._block = ""
        return items

    @_items.setter
    def _items(self, items: list[tuple[str, str, str]]) -> None:
        self._list = items
        self._block = ""

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = name.lower()
        for k, _, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, _, v in self._items if k == key]

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower()
        items = self._items
        for i, (k, _, _) in enumerate(items):
            if k == key:
                items[i] = (key, name, value)
                self._items = [it for j, it in enumerate(items) if j <= i or it[0] != key]
                return
        items.append((key, name, value))

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any existing ones with the same name."""
        self._items.append((name.lower(), name, value))

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self._items = [it for it in self._items if it[0] != key]

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (no error if absent)."""
        key = name.lower()
        self._items = [it for it in self._items if it[0] != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(k == key for k, _, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        return (n for _, n, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        """All (name, value) pairs in order, names as received."""
        return [(n, v) for _, n, v in self._items]

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._items))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class RequestHeader:
    """A request head: method, origin-form path, version and headers.

    ``path`` is always origin-form (``/a?b``) or ``*``; when the client sent absolute-form
    (``GET http://h/a``), ``scheme`` and ``authority`` hold its parts and the Host header was
    replaced by the authority (RFC 9112 §3.2.2).
    """

    __slots__ = ("authority", "headers", "method", "path", "scheme", "version")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        version: str = "HTTP/1.1",
        *,
        scheme: str | None = None,
        authority: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.version = version
        self.scheme = scheme
        self.authority = authority

    @property
    def host(self) -> str | None:
        return self.authority if self.authority is not None else self.headers.get("host")

    def copy(self) -> RequestHeader:
        return RequestHeader(
            self.method,
            self.path,
            self.headers.copy(),
            self.version,
            scheme=self.scheme,
            authority=self.authority,
        )

    def __repr__(self) -> str:
        return f"RequestHeader({self.method} {self.path} {self.version}, {self.headers!r})"


class ResponseHeader:
    """A response head: status, reason phrase, version and headers."""

    __slots__ = ("headers", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        headers: Headers | Iterable[tuple[str, str]] = (),
        reason: str | None = None,
        version: str = "HTTP/1.1",
    ) -> None:
        self.status = status
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.reason = reason if reason is not None else reason_phrase(status)
        self.version = version

    def copy(self) -> ResponseHeader:
        return ResponseHeader(self.status, self.headers.copy(), self.reason, self.version)

    def __repr__(self) -> str:
        return f"ResponseHeader({self.status} {self.reason}, {self.headers!r})"


_REASONS: Final = {
    100: "Continue",
    101: "Switching Protocols",
    103: "Early Hints",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (RFC 9110 §15), or ``""``."""
    return _REASONS.get(status, "")
