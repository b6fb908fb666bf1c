"""What a message's parser learned about its framing and connection handling:
:class:`RequestMeta`, :class:`ResponseMeta` and the ``BODY_*`` framing values.

Theory of operation: a codec parses a message head into a :class:`proxycore.http.RequestHeader`
or :class:`proxycore.http.ResponseHeader` (what the message says) and one of these (how it is
framed and what its connection handling asks for). They are protocol-neutral: the HTTP/1.1
parser (:mod:`proxycore.h1.parse`) fills them from the bytes of a head, the HTTP/2 server
codec (:mod:`proxycore.h2.server`) from a HEADERS frame, and the exchange
(:mod:`proxycore.session`) and the codecs on both sides of it read them without importing any
protocol's module. Plain slotted records, no behaviour.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "RequestMeta",
    "ResponseMeta",
]

# How a message body is delimited (RFC 9112 §6.3; the client codec answers its framing in the
# same terms, ServerStream.send_response_head):
BODY_NONE: Final = 0  # no body
BODY_LENGTH: Final = 1  # Content-Length
BODY_CHUNKED: Final = 2  # delimited by the protocol (HTTP/1.1's chunked coding)
BODY_CLOSE: Final = 3  # read until the connection closes (responses only, RFC 9112 §6.3 rule 8)

_NO_TOKENS: Final[frozenset[str]] = frozenset()


class RequestMeta:
    """What the parser learned about a request's framing and connection handling."""

    __slots__ = (
        "body",
        "connection_tokens",
        "dropped",
        "expect_continue",
        "forwarded",
        "has_host",
        "head_size",
        "hop",
        "host",
        "keep_alive",
        "length",
        "raw",
        "upgrade",
    )

    def __init__(self) -> None:
        self.raw = b""  # the head exactly as received (for verbatim forwarding)
        # the names of the fields dropped for an underscore (UNDERSCORE_ACTIONS), or None
        self.dropped: list[str] | None = None
        self.body = BODY_NONE
        self.length = 0
        self.keep_alive = True
        self.expect_continue = False
        self.upgrade: str | None = None
        self.connection_tokens: frozenset[str] = _NO_TOKENS
        self.head_size = 0
        # a hop-by-hop field is present (must be stripped when forwarding), or fields were
        # dropped: either way the head cannot be forwarded verbatim
        self.hop = False
        self.forwarded = False  # an X-Forwarded-* field is present
        self.has_host = False
        self.host: str | None = None  # the effective Host (absolute-form authority wins)


class ResponseMeta:
    """What the parser learned about a response's framing."""

    __slots__ = (
        "body",
        "connection_fields",
        "connection_tokens",
        "content_length",
        "head_size",
        "hop",
        "hop_other",
        "keep_alive",
        "length",
        "raw",
    )

    def __init__(self) -> None:
        self.raw = b""
        self.hop_other = False  # a hop-by-hop field other than Connection is present
        self.connection_fields = 0
        self.body = BODY_NONE
        self.length = 0
        self.keep_alive = True
        self.connection_tokens: frozenset[str] = _NO_TOKENS
        self.head_size = 0
        self.hop = False
        self.content_length: str | None = None
