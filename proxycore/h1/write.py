"""Serializing HTTP/1.1 heads, chunks and trailers (RFC 9112).

Theory of operation: heads are built as one ``str`` and encoded as latin-1 in a single call.
Header values may have been set by user filters, so before anything reaches the wire we prove
the head has exactly one CRLF per line and no NUL: a filter can never inject a header or split
a response (RFC 9110 §5.5 forbids CR, LF and NUL in field values).
"""

from __future__ import annotations

from collections.abc import Iterable

from proxycore.semantics import HOP_BY_HOP  # (defined with the other RFC 9110 rules)

__all__ = [
    "HOP_BY_HOP",
    "encode_chunk",
    "serialize_request_fields",
    "serialize_request_head",
    "serialize_response_fields",
    "serialize_response_head",
    "serialize_trailers",
]


def _finish(lines: list[str], nlines: int) -> bytes:
    s = "".join(lines)
    if s.count("\n") != nlines or s.count("\r") != nlines or "\x00" in s:
        raise ValueError("header name or value contains CR, LF or NUL")
    return s.encode("latin-1")


def serialize_request_head(
    method: str, path: str, fields: Iterable[tuple[str, str]], version: str = "HTTP/1.1"
) -> bytes:
    """Encode a request head. Raises ValueError/UnicodeEncodeError on unsafe content."""
    lines = [f"{method} {path} {version}\r\n"]
    lines.extend([f"{n}: {v}\r\n" for n, v in fields])
    lines.append("\r\n")
    if " " in method or " " in path:
        raise ValueError("method or path contains a space")
    return _finish(lines, len(lines))


def serialize_response_head(
    status: int, reason: str, fields: Iterable[tuple[str, str]], version: str = "HTTP/1.1"
) -> bytes:
    """Encode a response head. Raises ValueError/UnicodeEncodeError on unsafe content."""
    lines = [f"{version} {status} {reason}\r\n"]
    lines.extend([f"{n}: {v}\r\n" for n, v in fields])
    lines.append("\r\n")
    return _finish(lines, len(lines))


def serialize_request_fields(
    method: str, path: str, items: list[tuple[str, str, str]], version: str = "HTTP/1.1"
) -> bytes:
    """Like :func:`serialize_request_head` for the core's (lowercase, name, value) items."""
    lines = [f"{method} {path} {version}\r\n"]
    lines.extend([f"{n}: {v}\r\n" for _, n, v in items])
    lines.append("\r\n")
    if " " in method or " " in path:
        raise ValueError("method or path contains a space")
    return _finish(lines, len(lines))


def serialize_response_fields(
    status: int, reason: str, items: list[tuple[str, str, str]], version: str = "HTTP/1.1"
) -> bytes:
    """Like :func:`serialize_response_head` for the core's (lowercase, name, value) items."""
    lines = [f"{version} {status} {reason}\r\n"]
    lines.extend([f"{n}: {v}\r\n" for _, n, v in items])
    lines.append("\r\n")
    return _finish(lines, len(lines))


def serialize_trailers(fields: Iterable[tuple[str, str]]) -> bytes:
    """The last chunk plus a trailer section (RFC 9112 §7.1.2)."""
    lines = ["0\r\n"]
    lines.extend([f"{n}: {v}\r\n" for n, v in fields])
    lines.append("\r\n")
    return _finish(lines, len(lines))


def encode_chunk(data: bytes) -> bytes:
    """One chunk of the chunked coding; empty data encodes to nothing (not the last chunk)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
