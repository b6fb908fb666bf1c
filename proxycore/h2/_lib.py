"""The ``h2`` library's connection, refusing streams past the limit instead of failing, and
the per-connection budgets that cut off the known HTTP/2 floods; its streams leave the
checks of a request's fields and length to :mod:`proxycore.h2.fields` and
:mod:`proxycore.h2.server`, which make a malformed request a stream error (RFC 9113 §8.1.1).

``h2`` treats a stream opened past our SETTINGS_MAX_CONCURRENT_STREAMS as a connection error;
RFC 9113 §5.1.2 lets a server answer it with RST_STREAM(REFUSED_STREAM) instead, which a client
retries (§8.7): the connection lives on. The header block is still decoded, so the HPACK
state stays in step (RFC 9113 §4.3). This module stays interpreted (it subclasses a class of
the pure-Python ``h2`` package).

Floods (RFC 9113 §10.5: "an endpoint MAY treat activity that is suspicious as a connection
error of type ENHANCE_YOUR_CALM") are counted frame by frame, before ``h2`` acts on a frame,
by :class:`FloodGuard` (the budgets, one fixed window of ``h2_flood_window`` seconds) and
:class:`BoundedFrameBuffer` (the header block's size across CONTINUATION frames). Past a
budget, :class:`Flood` is raised inside ``receive_data``: ``h2`` queues GOAWAY with
ENHANCE_YOUR_CALM and the connection is closed (``H2Conn.on_data``).
"""

from __future__ import annotations

from typing import Any

from h2.connection import ConnectionInputs, H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, StreamState
from hpack import HPACKError
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxycore.h2.hpackcodec import Decoder, Encoder


class CompressionError(ProtocolError):
    """A field block that does not decode: a connection error of type COMPRESSION_ERROR (RFC
    9113 §4.3; ``h2`` reports it as PROTOCOL_ERROR)."""

    error_code = ErrorCodes.COMPRESSION_ERROR


# What ``h2`` turns into a plain ProtocolError when a field block does not decode.
_HPACK_FAILURES = (HPACKError, IndexError, TypeError, UnicodeDecodeError)


class Flood(ProtocolError):
    """A budget of :class:`FloodGuard` is spent: GOAWAY(ENHANCE_YOUR_CALM), RFC 9113 §10.5."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM


# What each kind of frame costs (the budget it counts against), RFC 9113 §10.5.
RESET = 0  # a stream the client reset (RST_STREAM on an open stream; rapid reset,
#            CVE-2023-44487) or one we refused past SETTINGS_MAX_CONCURRENT_STREAMS
CONTROL = 1  # PING, SETTINGS, PRIORITY, WINDOW_UPDATE not earned by our DATA, DATA with
#              no payload and no END_STREAM, RST_STREAM on a stream not open
_KIND_NAMES = ("stream resets", "control frames")


class FloodGuard:
    """The budgets of one client connection: at most ``max_resets`` streams reset (by the
    client, or refused by us) and ``max_control`` unproductive control frames per window of
    ``window`` seconds (a fixed window, restarted by the first frame after it; time is the
    engine's ``now``, so a replay counts the same). Each DATA frame we send earns two
    WINDOW_UPDATE frames (the stream's and the connection's) that do not count."""

    __slots__ = ("clock", "counts", "credit", "limits", "start", "window")

    def __init__(self, max_resets: int, max_control: int, window: float, clock: Any) -> None:
        self.limits = (max_resets, max_control)
        self.window = window
        self.clock = clock  # anything with a ``now`` (the engine)
        self.counts = [0, 0]
        self.start = clock.now
        self.credit = 0  # WINDOW_UPDATE frames our DATA frames earned

    def hit(self, kind: int) -> None:
        now = self.clock.now
        if now - self.start >= self.window:
            self.start = now
            self.counts = [0, 0]
        n = self.counts[kind] + 1
        self.counts[kind] = n
        if n > self.limits[kind]:
            msg = (
                f"too many {_KIND_NAMES[kind]}: more than {self.limits[kind]} "
                f"in {self.window:g} s (RFC 9113 §10.5)"
            )
            raise Flood(msg)

    def frame(self, conn: H2Connection, f: Any) -> None:
        """Count the received frame ``f`` against its budget (the table above)."""
        cls = f.__class__
        if cls is DataFrame:
            if not f.data and "END_STREAM" not in f.flags:
                self.hit(CONTROL)
        elif cls is WindowUpdateFrame:
            if self.credit > 0:
                self.credit -= 1
            else:
                self.hit(CONTROL)
        elif cls is RstStreamFrame:
            st = conn.streams.get(f.stream_id)
            self.hit(RESET if st is not None and not st.closed else CONTROL)
        elif cls is PingFrame or cls is SettingsFrame or cls is PriorityFrame:
            if cls is not SettingsFrame or "ACK" not in f.flags:
                self.hit(CONTROL)


class BoundedFrameBuffer(FrameBuffer):
    """``h2``'s frame buffer with the header block bounded in size across CONTINUATION
    frames (CVE-2024-27316): the frame that takes the block past ``limit`` bytes is a
    :class:`Flood`, before it is kept (``h2`` alone keeps up to 64 frames of 16 KiB)."""

    def __init__(self, limit: int) -> None:
        super().__init__(server=True)
        self.limit = limit
        self.block = 0

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except ProtocolError as err:
            # SETTINGS with ACK and a payload: FRAME_SIZE_ERROR (RFC 9113 §6.5; h2 says
            # PROTOCOL_ERROR). The frame is still first in the buffer.
            if (
                type(err) is ProtocolError
                and isinstance(err.__cause__, InvalidDataError)
                and self._data[3:5] == b"\x04\x01"
            ):
                raise FrameDataMissingError("SETTINGS with ACK and a payload") from err
            raise

    def _update_header_buffer(self, f: Any) -> Any:
        cls = f.__class__
        if cls is ContinuationFrame or (cls is HeadersFrame and "END_HEADERS" not in f.flags):
            self.block += len(f.data)
            if self.block > self.limit:
                msg = f"header block over {self.limit} bytes across CONTINUATION frames"
                raise Flood(msg)
        elif cls is HeadersFrame and len(f.data) > self.limit:
            raise Flood(f"header block over {self.limit} bytes")
        out = super()._update_header_buffer(f)
        if not self._headers_buffer:
            self.block = 0
        return out


class LaxStream(H2Stream):
    """``h2``'s stream without its content-length checks: :mod:`proxycore.h2.server` checks the
    DATA against ``content-length`` itself and makes a mismatch a stream error (RFC 9113
    §8.1.1), where ``h2`` makes it a connection error."""

    def _initialize_content_length(self, headers: Any) -> None:
        pass

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        pass


class TrailersNotLast(Event):
    """A HEADERS frame after the request head without END_STREAM (RFC 9113 §8.1: malformed).
    The stream is reset with PROTOCOL_ERROR already; the connection lives on."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class ServerConnection(H2Connection):
    """An ``h2`` server connection; ``refused`` counts the streams refused so far;
    ``last_sid`` is the last stream id of the GOAWAY sent on a graceful shutdown
    (:meth:`send_goaway`): a stream opened above it is refused."""

    _lift = False
    refused = 0
    last_sid = 1 << 31
    terminated = False  # a connection error's GOAWAY is queued or sent
    guard: FloodGuard | None = None

    def limit_floods(self, guard: FloodGuard, max_header_block: int) -> None:
        """Count every frame against ``guard`` and bound the header block."""
        self.guard = guard
        self.incoming_buffer = BoundedFrameBuffer(max_header_block)

    def use_compiled_hpack(self) -> None:
        """Decode and encode field blocks with proxycore's compiled HPACK codec
        (:mod:`proxycore.h2.hpackcodec`: the same interface, values, bytes and exceptions as
        ``hpack``'s, several times faster compiled); before any frame was exchanged."""
        old = self.decoder
        dec = Decoder(old.max_header_list_size)
        dec.max_allowed_table_size = old.max_allowed_table_size
        dec.header_table_size = old.header_table_size
        self.decoder = dec  # type: ignore[assignment]  # (hpack.Decoder's interface, not its class)
        self.encoder = Encoder()  # type: ignore[assignment]  # (the same for hpack.Encoder)

    def _receive_frame(self, frame: Any) -> Any:
        guard = self.guard
        if guard is not None:
            guard.frame(self, frame)
        try:
            return super()._receive_frame(frame)
        except ProtocolError as err:
            if type(err) is ProtocolError and isinstance(err.__cause__, _HPACK_FAILURES):
                raise CompressionError(str(err)) from err
            raise

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        guard = self.guard
        if guard is not None:
            guard.credit += 2  # the stream's and the connection's WINDOW_UPDATE it earns
        super().send_data(stream_id, data, end_stream=end_stream, pad_length=pad_length)

    def _terminate_connection(self, error_code: Any) -> None:
        self.terminated = True
        super()._terminate_connection(error_code)

    def close_connection(self, error_code: Any = 0, *args: Any, **kw: Any) -> None:
        """After a connection error (the GOAWAY carrying its code is queued), closing sends
        no second GOAWAY (one with NO_ERROR would hide the error's code)."""
        if not self.terminated:
            super().close_connection(error_code, *args, **kw)

    @property
    def open_inbound_streams(self) -> int:
        if self._lift:
            return 0
        return super().open_inbound_streams

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        st = super()._begin_new_stream(stream_id, allowed_ids)
        st.__class__ = LaxStream
        return st

    def _receive_headers_frame(self, frame: Any) -> Any:
        sid = frame.stream_id
        st = self.streams.get(sid)
        if st is not None and not self._lift:
            if "END_STREAM" not in frame.flags and st.state_machine.state == StreamState.OPEN:
                # Trailers that do not end the stream: a stream error (``h2``: a connection
                # error). The block is decoded all the same (HPACK state, RFC 9113 §4.3).
                _decode_headers(self.decoder, frame.data)
                self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
                self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
                return [], [TrailersNotLast(sid)]
            return super()._receive_headers_frame(frame)
        if self._lift:
            return super()._receive_headers_frame(frame)
        if sid > self.last_sid:
            return self._refuse(frame)
        if self.open_inbound_streams < self.local_settings.max_concurrent_streams:
            return super()._receive_headers_frame(frame)
        self._lift = True
        try:
            frames, _events = super()._receive_headers_frame(frame)
        finally:
            self._lift = False
        self.refused += 1
        self.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        if self.guard is not None:
            self.guard.hit(RESET)
        return frames, []

    def count_stream_error(self) -> str | None:
        """Count a stream we reset for a malformed request (RFC 9113 §8.1.1) against the reset
        budget, as a client's own reset: stream errors a client provokes at will are rapid
        reset by other means ("MadeYouReset", CVE-2025-8671). Past the budget, GOAWAY
        (ENHANCE_YOUR_CALM) is queued and the reason returned: the connection must close."""
        guard = self.guard
        if guard is not None:
            try:
                guard.hit(RESET)
            except Flood as err:
                self._terminate_connection(ErrorCodes.ENHANCE_YOUR_CALM)
                return str(err)
        return None

    # -- graceful shutdown (RFC 9113 §6.8)

    def send_goaway(self, last_stream_id: int) -> None:
        """Queue GOAWAY(NO_ERROR, ``last_stream_id``) and refuse streams opened above it,
        leaving the connection open for the streams at or below it. (``close_connection``
        moves ``h2``'s state machine to CLOSED, where no frame of an open stream is taken any
        more; a graceful shutdown sends GOAWAY twice and keeps serving.)"""
        self.last_sid = last_stream_id
        self._prepare_for_sending(
            [GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=0)]
        )

    def _refuse(self, frame: Any) -> Any:
        """Refuse the stream ``frame`` opens with RST_STREAM(REFUSED_STREAM) (RFC 9113 §8.7:
        not processed, the client may retry it), its header block decoded all the same."""
        self._lift = True
        try:
            frames, _events = super()._receive_headers_frame(frame)
        finally:
            self._lift = False
        self.reset_stream(frame.stream_id, ErrorCodes.REFUSED_STREAM)
        if self.guard is not None:
            self.guard.hit(RESET)  # (a client that keeps opening them is cut off)
        return frames, []
