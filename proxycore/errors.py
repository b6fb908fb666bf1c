"""Errors that flow through the proxy, and how each maps to an HTTP status.

Theory of operation: every failure the core observes (a malformed request, a refused upstream,
a timeout, a filter that raised) becomes one :class:`ProxyError`. Filter phases receive it
(`fail_to_connect`, `error_while_proxy`, `fail_to_proxy`, `logging`), may mark it retryable or
change its status, and `fail_to_proxy` turns it into the response the client sees. The mapping
follows Pingora's defaults, plus 504 for upstream timeouts (Pingora issue #980).

Messages are sentences in words: "upstream 127.0.0.1:9000 reset the connection while the
response body was being received", never an exception's repr. What the network did reaches the
core as a phrase whose subject is the peer (:func:`socket_error_words`, which the adapters use
for the ``error`` of Closed and WriteFailed and the ``message`` of ConnectFailed); the core adds
who the peer is and what was going on.
"""

from __future__ import annotations

import enum
import errno
from typing import Final

__all__ = [
    "ErrorSource",
    "ErrorType",
    "HTTPParseError",
    "ProxyError",
    "os_error_reason",
    "socket_error_words",
]


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
    SHUTDOWN = "Shutdown"  # cut when the shutdown's grace period ran out (or a fast stop)
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
    ErrorType.SHUTDOWN: 444,  # nginx's code for a connection closed without a response
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


# errno -> what the peer (or the network on its way) did, as a phrase that follows its name.
_ERRNO_WORDS: Final = {
    errno.ECONNRESET: "reset the connection",
    errno.EPIPE: "closed the connection",
    errno.ECONNREFUSED: "refused the connection",
    errno.ECONNABORTED: "aborted the connection",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "is unreachable (no route to host)",
    errno.ENETUNREACH: "is unreachable (network unreachable)",
    errno.EHOSTDOWN: "is unreachable (host is down)",
    errno.ENETDOWN: "is unreachable (network is down)",
    errno.EADDRNOTAVAIL: "is unreachable (address not available)",
    errno.ENOTCONN: "is not connected",
}
# The same by exception class, for errors raised without an errno.
_CLASS_WORDS: Final = {
    "ConnectionResetError": "reset the connection",
    "BrokenPipeError": "closed the connection",
    "ConnectionRefusedError": "refused the connection",
    "ConnectionAbortedError": "aborted the connection",
    "TimeoutError": "timed out",
    "timeout": "timed out",
}


def os_error_reason(e: BaseException | int) -> str:
    """What an OS error (or errno) means, as a lower-case noun phrase without its number:
    "too many open files", "no such file or directory: 'x.txt'", "name or service not known"."""
    if isinstance(e, int):
        return f"error {e}"  # (adapters pass the OSError, with its text, where they can)
    strerror = getattr(e, "strerror", None)
    if isinstance(strerror, str) and strerror:
        text = strerror[0].lower() + strerror[1:]
        filename = getattr(e, "filename", None)
        if filename is not None:
            text += f": {filename!r}"
        return text
    return str(e) or type(e).__name__


def socket_error_words(e: BaseException | int) -> str:
    """What a peer did, from the OS error a socket call raised (or its errno), as a phrase that
    follows the peer's name: "reset the connection", "closed the connection", "refused the
    connection", "timed out", "is unreachable (no route to host)", "could not be resolved
    (name or service not known)", otherwise "failed (<the reason in words>)"."""
    code = e if isinstance(e, int) else getattr(e, "errno", None)
    if isinstance(code, int):
        words = _ERRNO_WORDS.get(code)
        if words is not None:
            return words
    if isinstance(e, BaseException):
        name = type(e).__name__
        if name == "gaierror":
            return f"could not be resolved ({os_error_reason(e)})"
        words = _CLASS_WORDS.get(name)
        if words is not None:
            return words
    return f"failed ({os_error_reason(e)})"
