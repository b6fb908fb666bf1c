"""HTTP/1.1 wire format (RFC 9112): head parsing, body framing and serialization.

This package is the fast codec used on the hot path. h11 is the reference implementation; the
differential tests in ``tests/test_h1_differential.py`` feed both the same inputs.
"""

from proxycore.h1.parse import (
    BODY_CHUNKED,
    BODY_CLOSE,
    BODY_LENGTH,
    BODY_NONE,
    ChunkedDecoder,
    Limits,
    RequestMeta,
    ResponseMeta,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from proxycore.h1.write import (
    HOP_BY_HOP,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
    serialize_trailers,
)

__all__ = [
    "BODY_CHUNKED",
    "BODY_CLOSE",
    "BODY_LENGTH",
    "BODY_NONE",
    "HOP_BY_HOP",
    "ChunkedDecoder",
    "Limits",
    "RequestMeta",
    "ResponseMeta",
    "encode_chunk",
    "find_head_end",
    "parse_request_head",
    "parse_response_head",
    "serialize_request_head",
    "serialize_response_head",
    "serialize_trailers",
]
