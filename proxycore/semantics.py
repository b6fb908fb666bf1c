"""HTTP rules that hold for every version of the protocol (RFC 9110), shared by the exchange and
the codecs.

Theory of operation: the exchange (:mod:`proxycore.session`) decides *what* a message says —
its status, its fields after the filters, whether it may have a body — and a codec decides how
that is framed on its wire (HTTP/1.1: Content-Length, chunked, close-delimited, Connection
lines; HTTP/2: frames). The rules here are the ones both need and neither owns: which fields
are hop-by-hop and never forwarded, which fields a trailer section must not carry, which
responses have no body, what an error page says, how ``X-Forwarded-*`` values are appended.
Plain functions and constants, no state.
"""

from __future__ import annotations

from typing import Final

from proxycore.http import Headers, reason_phrase

__all__ = [
    "HOP_BY_HOP",
    "NOT_IN_TRAILERS",
    "append_forwarded",
    "end_to_end",
    "error_body",
    "response_has_body",
]

# RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones every proxy strips.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# RFC 9110 §6.5.1: fields a trailer section must not carry (framing, routing, content format,
# and the hop-by-hop ones); they are dropped rather than forwarded, so a trailer can never
# re-frame a message for the next hop.
NOT_IN_TRAILERS: Final = HOP_BY_HOP | {
    "content-length", "host", "trailer", "content-encoding", "content-type", "content-range",
    "expect", "max-forwards", "cache-control", "authorization", "set-cookie", "cookie",
}  # fmt: skip


def response_has_body(method: str, status: int) -> bool:
    """RFC 9110 §6.4.1 / §9.3.2: a response to HEAD, a 1xx, 204 or 304 has no content."""
    return not (method == "HEAD" or status == 204 or status == 304 or status < 200)


def end_to_end(
    items: list[tuple[str, str, str]], hop: bool, tokens: frozenset[str], edited: bool
) -> list[tuple[str, str, str]]:
    """A new list of the fields without hop-by-hop ones (RFC 9110 §7.6.1: the fixed set plus
    those the Connection field names, ``tokens``); a plain copy when the parser saw none
    (``hop`` False) and no filter edited the fields."""
    if hop or edited:
        return [it for it in items if it[0] not in HOP_BY_HOP and it[0] not in tokens]
    return items.copy()


def trailer_fields(trailers: Headers) -> list[tuple[str, str]]:
    """The (name, value) pairs of a trailer section that may be forwarded (RFC 9110 §6.5.1)."""
    return [(n, v) for k, n, v in trailers._items if k not in NOT_IN_TRAILERS]


def error_body(status: int) -> bytes:
    """The short text body of an error response the proxy makes itself."""
    return f"{status} {reason_phrase(status)}\n".encode()


def append_forwarded(h: Headers, name: str, value: str) -> None:
    """Add ``value`` to a list-valued forwarding field (``X-Forwarded-For``: one line, the
    values joined by ", ", RFC 9110 §5.3), creating it if absent."""
    existing = h.get_all(name)
    if existing:
        h[name] = ", ".join([*existing, value])
    else:
        h.add(name, value)
