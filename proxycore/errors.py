"""Errors that flow through the proxy, and how each maps to an HTTP status.

Theory of operation: every failure the core observes (a malformed request, a refused upstream,
a timeout, a filter that raised) becomes one :class:`ProxyError`. Filter phases receive it
(`fail_to_connect`, `error_while_proxy`, `fail_to_proxy`, `logging`), may mark it retryable or
change its status, and `fail_to_proxy` turns it into the response the client sees. The mapping
follows Pingora's defaults, plus 504 for upstream timeouts (Pingora issue #980).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["ErrorSource", "ErrorType", "HTTPParseError", "ProxyError"]


class ErrorSource(enum.Enum):
    """Which side of the proxy the error came from."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ErrorType(enum.Enum):
    """What went wrong. The value is a short stable name used in logs."""

    CONNECT_REFUSED = "ConnectRefused"
    CONNECT_TIMEDOUT = "ConnectTimedout"
    CONNECT_ERROR = "ConnectError"
    READ_TIMEDOUT = "ReadTimedout"
    WRITE_TIMEDOUT = "WriteTimedout"
    CONNECTION_CLOSED = "ConnectionClosed"
    CONNECTION_RESET = "ConnectionReset"
    INVALID_HTTP_HEADER = "InvalidHTTPHeader"
    INVALID_RESPONSE = "InvalidResponse"
    HTTP_STATUS = "HTTPStatus"
    NO_UPSTREAM = "NoUpstream"
    FILTER_ERROR = "FilterError"
    INTERNAL = "InternalError"
    CLIENT_ABORTED = "ClientAborted"
    TLS_HANDSHAKE_FAILURE = "TLSHandshakeFailure"
    INVALID_CERT = "InvalidCert"


_STATUS_BY_TYPE: Final = {
    ErrorType.CONNECT_REFUSED: 502,
    ErrorType.CONNECT_TIMEDOUT: 504,
    ErrorType.CONNECT_ERROR: 502,
    ErrorType.READ_TIMEDOUT: 504,
    ErrorType.WRITE_TIMEDOUT: 504,
    ErrorType.CONNECTION_CLOSED: 502,
    ErrorType.CONNECTION_RESET: 502,
    ErrorType.INVALID_HTTP_HEADER: 400,
    ErrorType.INVALID_RESPONSE: 502,
    ErrorType.NO_UPSTREAM: 502,
    ErrorType.FILTER_ERROR: 500,
    ErrorType.INTERNAL: 500,
    ErrorType.CLIENT_ABORTED: 499,
    ErrorType.TLS_HANDSHAKE_FAILURE: 502,
    ErrorType.INVALID_CERT: 502,
}


class ProxyError(Exception):
    """One failure while proxying a request.

    ``retry`` may be set by ``fail_to_connect`` / ``error_while_proxy`` to ask for another
    attempt (``upstream_peer`` is called again). ``status`` is the HTTP status the client gets
    if the request finally fails; set it to override the default mapping.
    """

    def __init__(
        self,
        etype: ErrorType,
        source: ErrorSource,
        message: str = "",
        *,
        status: int | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message or etype.value)
        self.etype = etype
        self.source = source
        self.message = message or etype.value
        self.retry = False
        self.cause = cause
        self._status = status

    @property
    def status(self) -> int:
        """The HTTP status a client should see for this error."""
        if self._status is not None:
            return self._status
        return _STATUS_BY_TYPE.get(self.etype, 500)

    @status.setter
    def status(self, value: int) -> None:
        self._status = value

    @classmethod
    def http_status(cls, status: int, message: str = "") -> ProxyError:
        """An explicit HTTP status error (for example raised from a filter to answer 403)."""
        return cls(ErrorType.HTTP_STATUS, ErrorSource.INTERNAL, message, status=status)

    def __repr__(self) -> str:
        return (
            f"ProxyError({self.etype.value}, {self.source.value}, {self.message!r}, "
            f"status={self.status}, retry={self.retry})"
        )


class HTTPParseError(Exception):
    """A message that violates HTTP/1.1 framing or syntax.

    ``status`` is the reply a server should send for a bad request (400, 413, 414, 431, 501,
    505), following h11's ``error_status_hint``. For upstream responses the proxy answers 502.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
