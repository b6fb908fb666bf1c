"""HTTP/2 frames (RFC 9113 §4, §6): the numbers of the wire format and the frames a server
sends, serialized.

Theory of operation: a frame is a 9-byte header (24-bit length, 8-bit type, 8-bit flags, a
reserved bit and a 31-bit stream identifier, §4.1) and its payload. Reading frames is the
connection's inner loop (:mod:`proxycore.h2.connection` slices them out of its buffer in
place); this module holds the constants both directions share and builds the frames a server
sends, each as one ``bytes``. Nothing here keeps state.
"""

from __future__ import annotations

from typing import Final

# Frame types (RFC 9113 §6; §5.5: a type not listed here is ignored).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags (§6).
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (§7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
CONNECT_ERROR: Final = 0xA
ENHANCE_YOUR_CALM: Final = 0xB
INADEQUATE_SECURITY: Final = 0xC
HTTP_1_1_REQUIRED: Final = 0xD

# Settings (§6.5.2; RFC 8441 §3 for ENABLE_CONNECT_PROTOCOL).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6
ENABLE_CONNECT_PROTOCOL: Final = 0x8

DEFAULT_WINDOW: Final = 65535  # §6.9.2
MAX_WINDOW: Final = (1 << 31) - 1  # §6.9.1
MIN_FRAME_SIZE: Final = 16384  # §4.2 (and SETTINGS_MAX_FRAME_SIZE's initial value)
MAX_FRAME_SIZE_LIMIT: Final = (1 << 24) - 1  # §6.5.2


def head(length: int, kind: int, flags: int, sid: int) -> bytes:
    """A frame header (§4.1)."""
    return bytes(
        (
            length >> 16,
            (length >> 8) & 0xFF,
            length & 0xFF,
            kind,
            flags,
            (sid >> 24) & 0x7F,
            (sid >> 16) & 0xFF,
            (sid >> 8) & 0xFF,
            sid & 0xFF,
        )
    )


def u32_at(data: bytes, i: int) -> int:
    """The 32-bit big-endian integer at ``data[i:i + 4]`` (a stream id is its low 31 bits)."""
    return (data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]


def u32(value: int) -> bytes:
    return bytes(((value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))


def settings(values: list[tuple[int, int]]) -> bytes:
    """A SETTINGS frame (§6.5) carrying ``values`` in order."""
    out = bytearray(head(6 * len(values), SETTINGS, 0, 0))
    for code, value in values:
        out += bytes((code >> 8, code & 0xFF))
        out += u32(value)
    return bytes(out)


SETTINGS_ACK: Final = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def window_update(sid: int, increment: int) -> bytes:
    """WINDOW_UPDATE (§6.9)."""
    return head(4, WINDOW_UPDATE, 0, sid) + u32(increment)


def rst_stream(sid: int, code: int) -> bytes:
    """RST_STREAM (§6.4)."""
    return head(4, RST_STREAM, 0, sid) + u32(code)


def goaway(last_sid: int, code: int) -> bytes:
    """GOAWAY (§6.8), no debug data."""
    return head(8, GOAWAY, 0, 0) + u32(last_sid) + u32(code)


def ping(data: bytes, ack: bool) -> bytes:
    """PING (§6.7) with its 8 bytes of opaque data."""
    return head(8, PING, ACK if ack else 0, 0) + data


def header_block(sid: int, block: bytes, end_stream: bool, max_size: int) -> bytes:
    """HEADERS and, past ``max_size``, CONTINUATION frames carrying ``block`` (§6.2, §6.10)."""
    flags = END_STREAM if end_stream else 0
    n = len(block)
    if n <= max_size:
        return head(n, HEADERS, flags | END_HEADERS, sid) + block
    out = bytearray(head(max_size, HEADERS, flags, sid))
    out += block[:max_size]
    i = max_size
    while i < n:
        piece = block[i : i + max_size]
        i += max_size
        out += head(len(piece), CONTINUATION, END_HEADERS if i >= n else 0, sid)
        out += piece
    return bytes(out)
