"""The ``h2`` library's connection, refusing streams past the limit instead of failing.

``h2`` treats a stream opened past our SETTINGS_MAX_CONCURRENT_STREAMS as a connection error;
RFC 9113 §5.1.2 lets a server answer it with RST_STREAM(REFUSED_STREAM) instead, which a client
retries (§8.7): the connection lives on. The header block is still decoded, so the HPACK
state stays in step (RFC 9113 §4.3). This module stays interpreted (it subclasses a class of
the pure-Python ``h2`` package).
"""

from __future__ import annotations

from typing import Any

from h2.connection import H2Connection
from h2.errors import ErrorCodes


class ServerConnection(H2Connection):
    """An ``h2`` server connection; ``refused`` counts the streams refused so far."""

    _lift = False
    refused = 0

    @property
    def open_inbound_streams(self) -> int:
        if self._lift:
            return 0
        return super().open_inbound_streams

    def _receive_headers_frame(self, frame: Any) -> Any:
        sid = frame.stream_id
        if sid in self.streams or self._lift:
            return super()._receive_headers_frame(frame)
        if self.open_inbound_streams < self.local_settings.max_concurrent_streams:
            return super()._receive_headers_frame(frame)
        self._lift = True
        try:
            frames, _events = super()._receive_headers_frame(frame)
        finally:
            self._lift = False
        self.refused += 1
        self.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        return frames, []
