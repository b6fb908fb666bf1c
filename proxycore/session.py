"""One request's journey through the proxy, and the object filter phases receive as ``session``.

Theory of operation: a :class:`Session` is created by the downstream connection when a request
head has been parsed. It runs the phases in Pingora's order; each phase is called through
:meth:`Session._call`, which runs a plain function inline, or hands an awaitable / blocking call
to the adapter as a RunFilter action and parks the continuation until FilterDone arrives. The
core therefore never waits, and the same code path serves sync and async phases.

Proxying, in order: choose a peer → take an idle pooled connection or Connect → decide the
upstream head (hop-by-hop fields removed, X-Forwarded-* appended) → stream the request body the
client stream pushes while keeping up to ``retry_buffer_size`` bytes for a retry → the response
head (1xx relayed) → response phases → the client's response head (framed by the client codec)
→ stream the body through the body filters → trailers → hand the upstream back (to the pool if
it can carry another request) → ``logging`` → tell the client stream (next pipelined request or
close).

Both wires belong to codecs: the client side is a :class:`proxycore.codec.ServerStream`, the
origin side an :class:`proxycore.upcodec.OriginStream` (HTTP/1.1: the connection,
:class:`proxycore.upstream.Upstream`, which frames the request, parses the response heads,
decodes the body and decides reuse). The session is that codec's
:class:`proxycore.upcodec.UpstreamOwner`: it is handed the 1xx and final heads and the body
pieces while it takes them (``takes_response_body``), and says when the response should pause
(``wants_response_paused``).

Where the exchange is, is one state of :mod:`proxycore.exchange_states` (``_state``), and where
its request body is, one state of a second table (``_body``): every change goes through
``_go(event)`` / ``_go_body(event)``, which check it against the table.

Errors: a connect failure goes through ``fail_to_connect`` (retry if marked), an error after
connecting through ``error_while_proxy`` (retried by default only on a reused pooled connection
before any response byte, Pingora's ReusedOnly), and a final failure through ``fail_to_proxy``.
Once a response head has gone downstream an error can only truncate: the connection is closed
without the final chunk, so a client never mistakes a broken body for a complete one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from inspect import isawaitable
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Final

from proxycore.accesslog import AccessEntry, Attempt, log_session
from proxycore.actions import RunFilter
from proxycore.codec import NO_BODY, SIZED_BODY, ServerStream
from proxycore.errors import ErrorSource, ErrorType, HTTPParseError, ProxyError
from proxycore.exchange_states import (
    ANSWERED,
    AWAITING_HEAD,
    BODY_RECEIVED,
    CONNECT,
    CONNECTED,
    END,
    ENDING,
    FAIL,
    FINISH,
    FORWARD,
    FORWARDING,
    HAND_BACK,
    HEAD_RECEIVED,
    HEAD_SENT,
    HELD,
    LOGGED,
    LOGGING,
    LOGGING_DONE,
    PICK_PEER,
    READ,
    REQUEST_PHASES,
    REQUEST_SENT,
    RESPOND,
    RESPONSE_PHASES,
    RETRY,
    SENDING,
    SKIP,
    SKIPPING,
    STOP,
    STREAMING,
    UNREAD,
    UPSTREAM_ERROR,
    exchange_allows,
)
from proxycore.exchange_states import BODY_NEXT as _BN
from proxycore.exchange_states import EXCHANGE_NEXT as _XN
from proxycore.exchange_states import N_BODY_EVENTS as _NB
from proxycore.exchange_states import N_EXCHANGE_EVENTS as _NX
from proxycore.exchange_states import refuse_body as _refused_body
from proxycore.exchange_states import refuse_exchange as _refused
from proxycore.http import Headers, RequestHeader, ResponseHeader
from proxycore.peer import Peer
from proxycore.semantics import (
    append_forwarded,
    end_to_end,
    error_body,
    trailer_fields,
)
from proxycore.upcodec import BODY_CLOSE, BODY_LENGTH, BODY_NONE, OriginStream, UpstreamOwner

if TYPE_CHECKING:
    from proxycore.engine import PhaseTable
    from proxycore.meta import RequestMeta, ResponseMeta
    from proxycore.tls import TlsInfo

__all__ = ["Session"]

# Types of phase results known not to be awaitable (skips inspect.isawaitable on the hot path):
# seeded with the usual ones, then every type isawaitable said no to (a type is awaitable or
# not for all its instances, except generators, which are never remembered).
_PLAIN_RESULTS: Final[set[type]] = {bool, int, str, bytes, Peer, ProxyError, dict, list, tuple}
_MAX_PLAIN_TYPES: Final = 1024

# The phases a session calls, by continuation code (Session._call / _resume).
_PHASE_NAMES: Final = (
    "new_ctx",
    "upstream_peer",
    "logging",
    "early_request_filter",
    "request_filter",
    "proxy_upstream_filter",
    "fail_to_connect",
    "connected_to_upstream",
    "upstream_request_filter",
    "upstream_response_filter",
    "response_filter",
    "response_trailer_filter",
    "error_while_proxy",
    "fail_to_proxy",
    "request_body_filter",
    "response_body_filter",
    "upstream_response_body_filter",
)
_K_NEW_CTX: Final = 0
_K_UPSTREAM_PEER: Final = 1
_K_LOGGING: Final = 2
_K_EARLY_REQUEST_FILTER: Final = 3
_K_REQUEST_FILTER: Final = 4
_K_PROXY_UPSTREAM_FILTER: Final = 5
_K_FAIL_TO_CONNECT: Final = 6
_K_CONNECTED_TO_UPSTREAM: Final = 7
_K_UPSTREAM_REQUEST_FILTER: Final = 8
_K_UPSTREAM_RESPONSE_FILTER: Final = 9
_K_RESPONSE_FILTER: Final = 10
_K_RESPONSE_TRAILER_FILTER: Final = 11
_K_ERROR_WHILE_PROXY: Final = 12
_K_FAIL_TO_PROXY: Final = 13
_K_REQUEST_BODY_FILTER: Final = 14  # the body filters run through a _BodyPipe
_K_RESPONSE_BODY_FILTER: Final = 15
_K_UPSTREAM_RESPONSE_BODY_FILTER: Final = 16
# The phases whose continuation deals with a respond() made in them (the request phases,
# fail_to_proxy); after any other, a respond() ends the exchange (Session._resume).
_ANSWERS_HANDLED: Final = frozenset(
    {
        _K_NEW_CTX,
        _K_EARLY_REQUEST_FILTER,
        _K_REQUEST_FILTER,
        _K_PROXY_UPSTREAM_FILTER,
        _K_FAIL_TO_PROXY,
    }
)
# The exchange's timers, by the names it gives them on its stream (ServerStream.arm).
_REQUEST_TIMERS: Final = ("connect", "read", "write", "send", "body")
_UPSTREAM_TIMERS: Final = ("connect", "read", "write")

# Past this many unread request-body bytes after an early response, close instead of skipping.
_MAX_DISCARD: Final = 1 << 20
_TIMEOUTS: Final = frozenset(
    {ErrorType.CONNECT_TIMEDOUT, ErrorType.READ_TIMEDOUT, ErrorType.WRITE_TIMEDOUT}
)

_CONNECT_ERRORS: Final = {
    "refused": ErrorType.CONNECT_REFUSED,
    "timeout": ErrorType.CONNECT_TIMEDOUT,
    "tls": ErrorType.TLS_HANDSHAKE_FAILURE,
    "cert": ErrorType.INVALID_CERT,
}


class _BodyPipe:
    """Runs one body filter over a stream of pieces, one at a time, allowing the filter to be
    deferred (async/blocking): while a piece is in flight, the producer stops pumping."""

    __slots__ = ("_cur", "_fn", "_k", "_running", "_session", "_sink", "busy", "on_idle")

    def __init__(
        self,
        session: Session,
        fn: Callable[..., Any],
        k: int,
        sink: Callable[[bytes, bool], None],
        on_idle: Callable[[], None],
    ) -> None:
        self._session = session
        self._fn = fn
        self._k = k
        self._sink = sink
        self.on_idle = on_idle
        self.busy = False
        self._running = False
        self._cur: tuple[bytes, bool] = (b"", False)

    def push(self, piece: bytes, eos: bool) -> None:
        s = self._session
        self._cur = (piece, eos)
        self.busy = True
        self._running = True
        s._call(self._fn, (s, piece, eos, s.ctx), self._k, self)
        self._running = False

    def _done(self, result: Any) -> None:
        piece, eos = self._cur
        self.busy = False
        if result is not None:
            if not isinstance(result, (bytes, bytearray, memoryview)):
                name = _PHASE_NAMES[self._k]
                raise TypeError(f"{name} must return bytes or None, not {type(result)}")
            piece = bytes(result)
        self._sink(piece, eos)
        if not self._running and self._session._state < LOGGING:
            self.on_idle()


class Session(UpstreamOwner):
    """The request in flight, as filter phases see it.

    Useful attributes: ``req_header`` (the request as received; editable in the early phases),
    ``client_addr``, ``server_addr``, ``scheme``, ``peer``, ``upstream_reused``, ``retries``,
    ``response_started``, ``response_status``, ``request_body_bytes``,
    ``response_body_bytes``, ``start_time``, ``error``.
    """

    __slots__ = (
        "_body",
        "_cont",
        "_cont_pipe",
        "_down_mode",
        "_fresh_only",
        "_held_request",
        "_held_trailers",
        "_keep_alive",
        "_last_client_read",
        "_meta",
        "_pending",
        "_req_kind",
        "_req_pipe",
        "_resp",
        "_resp_meta",
        "_resp_pipes",
        "_retry_buf",
        "_retry_size",
        "_state",
        "_t_conn",
        "_t_head",
        "_t_peer",
        "_tries",
        "_up_failure",
        "ctx",
        "down",
        "engine",
        "error",
        "peer",
        "phases",
        "req_header",
        "request_body_bytes",
        "response_body_bytes",
        "response_header",
        "response_started",
        "response_status",
        "retries",
        "start_time",
        "upstream",
        "upstream_group",
        "upstream_reused",
    )

    def __init__(self, down: ServerStream, req: RequestHeader, meta: RequestMeta) -> None:
        engine = down.engine
        self.down = down
        self.engine = engine
        # The app's phases, fixed for this exchange: a reload (Reconfigure) installs a new
        # table for new exchanges; this one finishes with the app that made its ctx.
        self.phases: PhaseTable = engine.phases
        self.req_header = req
        self._meta = meta
        self.ctx: Any = None
        self.start_time = engine.now
        self.peer: Peer | None = None
        self.upstream: OriginStream | None = None
        self.upstream_reused = False
        # The upstream group's name, for the metrics' ``group`` label: set by the built-in
        # ReverseProxy (its ``name``; RoutedProxy's groups are named by the file); "-" if none.
        self.upstream_group = "-"
        self.retries = 0
        self.error: ProxyError | None = None
        self.response_started = False
        self.response_status = 0
        self.response_header: ResponseHeader | None = None
        self.request_body_bytes = 0
        self.response_body_bytes = 0
        self._pending = 0
        self._cont = -1  # the deferred phase's continuation (_resume), -1: none
        self._held_request: RequestHeader | None = None  # for upstream_request_filter's sequel
        self._held_trailers: Headers | None = None  # for response_trailer_filter's sequel
        self._cont_pipe: _BodyPipe | None = None  # the deferred body filter's pipe
        # where the exchange is, and its request body (proxycore.exchange_states: one table
        # each; every change goes through _go / _go_body, which check it)
        self._state = REQUEST_PHASES
        self._fresh_only = False
        # the client connection's disposition: whether it can carry another request after
        # this one (an outcome many steps decide, not a step of the exchange)
        self._keep_alive = meta.keep_alive
        # request body
        self._req_kind = down.request_body_kind()
        self._body = READ if self._req_kind == NO_BODY else UNREAD
        self._req_pipe: _BodyPipe | None = None
        self._last_client_read = engine.now
        self._up_failure: str | None = None  # the upstream's WriteFailed, in words
        self._retry_buf: list[bytes] | None = []
        self._retry_size = 0
        # response
        self._resp: ResponseHeader | None = None
        self._resp_meta: ResponseMeta | None = None
        self._resp_pipes: _BodyPipe | None = None
        self._down_mode = BODY_NONE
        # for the access log (proxycore.accesslog): the current upstream attempt's start,
        # connect and response-head times (-1: not yet), and the earlier attempts
        self._t_peer = -1.0
        self._t_conn = -1.0
        self._t_head = -1.0
        self._tries: list[Attempt] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def client_addr(self) -> tuple[str, int]:
        return self.down.client_addr

    @property
    def server_addr(self) -> tuple[str, int]:
        return self.down.server_addr

    @property
    def scheme(self) -> str:
        return self.down.scheme

    @property
    def tls(self) -> TlsInfo | None:
        """The client connection's TLS parameters (SNI, ALPN, version, verified client
        certificate), or None for plain HTTP."""
        return self.down.tls

    @property
    def request_host(self) -> str | None:
        """The request's host: the absolute-form authority, else the Host field (None without
        either), as ``req_header.host``; while no early phase can have edited the head, the
        parsed value, without building the header list (route matching reads it)."""
        ph = self.phases
        if ph.early_request_filter is None and ph.request_filter is None:
            return self._meta.host
        return self.req_header.host

    @property
    def http_version(self) -> str:
        """The client's HTTP version: ``"1.0"``, ``"1.1"`` or ``"2"``."""
        return self.req_header.version[5:]

    @property
    def downstream_requests(self) -> int:
        """How many requests this client connection served before this one."""
        return self.down.requests

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Send a complete response from a filter (typically ``request_filter``, then return
        True). ``headers``: a :class:`Headers`, a mapping of names to values (``{"X-A": "1"}``)
        or an iterable of (name, value) pairs, all ``str``; anything else is a TypeError, raised
        here. Content-Length is set from ``body``; a text/plain Content-Type is added when the
        body is not empty and no Content-Type is given."""
        if self.response_started:
            raise RuntimeError("a response was already started for this request")
        if status < 200:
            raise ValueError("respond() sends final responses only")
        if not exchange_allows(self._state, RESPOND):
            raise RuntimeError("respond() after the exchange ended (the client has its answer)")
        h = _respond_headers(headers)
        no_body = status == 204 or status == 304
        if not no_body:
            if body and "content-type" not in h:
                h.add("Content-Type", "text/plain; charset=utf-8")
            h["Content-Length"] = str(len(body))
        h.remove("transfer-encoding")
        h.remove("connection")
        # A request body we have not read yet makes the connection unusable, unless we can
        # discard it; with Expect: 100-continue the client will not send it at all.
        req_body = self._body
        if req_body != READ and (self._meta.expect_continue or req_body == FORWARDING):
            self._keep_alive = False
        if not self._keep_alive or self.engine.draining:
            self._keep_alive = False
        send = bytes(body) if body and not no_body and self.req_header.method != "HEAD" else b""
        self.down.send_local_response(self, status, h, send, self._keep_alive)
        self.response_body_bytes += len(send)
        self.response_started = True
        self.response_status = status
        self.response_header = ResponseHeader(status, h)
        self._go(RESPOND)
        if req_body == UNREAD or req_body == HELD:
            self._go_body(SKIP)  # whatever of it comes is read and dropped

    def request_read(self) -> bool:
        """Whether the whole request body was read from the client (or there was none)."""
        return self._body == READ

    def client_conn(self) -> int:
        """The id of the connection that carries this exchange's client side."""
        return self.down.id

    def raw_request_head(self) -> bytes:
        """The request head as it was received (request line and fields, bytes)."""
        return self._meta.raw

    def fill_upstream(self, entry: AccessEntry) -> None:
        """Fill an access-log entry's upstream fields: the earlier attempts in ``tries``, the
        current one (see :meth:`_attempt`) in ``uaddr``, ``ustatus``, ``uct``, ``uht``."""
        tries = self._tries
        if self._t_peer >= 0.0:
            if tries:
                entry.tries = tuple(tries)
            entry.uaddr, entry.ustatus, entry.uct, entry.uht = self._attempt(self.error)
        elif tries:
            entry.upstream = tuple(tries)

    def attempts_logged(self) -> int:
        """The upstream attempts the access log shows: 0 none, 1 the current one only (see
        :meth:`upstream_attempt`), 2 earlier ones too (see :meth:`fill_upstream`)."""
        if self._tries:
            return 2
        return 1 if self._t_peer >= 0.0 else 0

    def upstream_attempt(self) -> Attempt:
        """The current upstream attempt: (address, upstream status, connect time, header time)
        as the access log shows it (see :meth:`_attempt`)."""
        return self._attempt(self.error)

    def _attempt(self, err: ProxyError | None) -> Attempt:
        """The current upstream attempt as the access log shows it: (address, upstream status,
        connect time, header time). Times run from the attempt's start (``upstream_peer``
        answered) as nginx's do (connect time 0 on a pooled connection; below 0 when absent).
        The status is the upstream's (not what a filter made of it); an attempt that got no
        response head shows 504 if it timed out and 502 for any other upstream error, as nginx
        does, and 0 if it was cut short otherwise (the client left)."""
        start = self._t_peer
        resp = self._resp
        if resp is not None:
            status = resp.status
        elif err is not None and err.source is ErrorSource.UPSTREAM:
            status = 504 if err.etype in _TIMEOUTS else 502
        else:
            status = 0
        conn = self._t_conn
        head = self._t_head
        peer = self.peer
        return (
            peer.address if peer is not None else "-",
            status,
            conn - start if conn >= 0.0 else -1.0,
            head - start if head >= 0.0 else -1.0,
        )

    def __repr__(self) -> str:
        r = self.req_header
        return f"<Session {r.method} {r.path} from {self.client_addr}>"

    # ------------------------------------------------------------------ state

    # Every change of _state / _body takes an event in its table (exchange_states): _go and
    # _go_body, or, on the hot path, where a call would cost more than the check in the pure
    # build, the same written out:
    #     self._state = _XN[self._state * _NX + EVENT] or _refused(self._state, EVENT)
    # (the flattened table holds 0 where it has no row; _refused raises ExchangeStateError).

    def _go(self, event: int) -> None:
        """Take ``event`` in the exchange's transition table (raises if it has no such row)."""
        self._state = _XN[self._state * _NX + event] or _refused(self._state, event)

    def _go_body(self, event: int) -> None:
        """Take ``event`` in the request body's transition table."""
        self._body = _BN[self._body * _NB + event] or _refused_body(self._body, event)

    def _stop_forwarding(self) -> None:
        if self._body == FORWARDING:
            self._go_body(STOP)

    # ------------------------------------------------------------------ phase calls

    def _call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], k: int, pipe: _BodyPipe | None = None
    ) -> None:
        """Run phase ``_PHASE_NAMES[k]`` (a body filter: for ``pipe``); carry on with
        ``_resume(k, result, pipe)`` now or when the adapter reports back."""
        blocking = self.phases.blocking
        if blocking and _PHASE_NAMES[k] in blocking:
            self._defer(RunFilter(self.down.id, 0, lambda: fn(*args), "blocking"), k, pipe)
            return
        try:
            result = fn(*args)
        except Exception as exc:
            self._phase_raised(_PHASE_NAMES[k], exc)
            return
        if result is not None and type(result) not in _PLAIN_RESULTS:
            if isawaitable(result):
                self._defer(RunFilter(self.down.id, 0, lambda: result, "async"), k, pipe)
                return
            if type(result) is not GeneratorType and len(_PLAIN_RESULTS) < _MAX_PLAIN_TYPES:
                _PLAIN_RESULTS.add(type(result))
        try:
            self._resume(k, result, pipe)
        except Exception as exc:  # a continuation found the phase's result unusable
            self._phase_raised(_PHASE_NAMES[k], exc)

    def _resume(self, k: int, result: Any, pipe: _BodyPipe | None) -> None:
        """The continuation of phase ``k`` (direct calls: in the compiled core a stored bound
        method would be a generic call and an allocation per phase)."""
        if self._state == ANSWERED and k not in _ANSWERS_HANDLED:
            # A phase past the request phases answered with respond(): that is the answer,
            # and the exchange ends here (the request phases and fail_to_proxy see to it
            # themselves).
            self._finish(None)
            return
        if k == _K_NEW_CTX:
            self._after_new_ctx(result)
        elif k == _K_UPSTREAM_PEER:
            self._after_peer(result)
        elif k == _K_LOGGING:
            self._after_logging(result)
        elif k == _K_EARLY_REQUEST_FILTER:
            self._run_request_filter(result)
        elif k == _K_REQUEST_FILTER:
            self._after_request_filter(result)
        elif k == _K_PROXY_UPSTREAM_FILTER:
            self._after_proxy_upstream_filter(result)
        elif k == _K_FAIL_TO_CONNECT:
            self._after_fail_to_connect(result)
        elif k == _K_CONNECTED_TO_UPSTREAM:
            self._build_upstream_request(result)
        elif k == _K_UPSTREAM_REQUEST_FILTER:
            up_req = self._held_request
            assert up_req is not None
            self._held_request = None
            self._send_upstream_head(up_req, True)
        elif k == _K_UPSTREAM_RESPONSE_FILTER:
            self._run_response_filter(result)
        elif k == _K_RESPONSE_FILTER:
            self._write_response_head(result)
        elif k == _K_RESPONSE_TRAILER_FILTER:
            trailers = self._held_trailers
            assert trailers is not None
            self._held_trailers = None
            self._send_trailers(trailers)
        elif k == _K_ERROR_WHILE_PROXY:
            self._after_error_while_proxy(result)
        elif k == _K_FAIL_TO_PROXY:
            self._after_fail_to_proxy(result)
        elif k >= _K_REQUEST_BODY_FILTER:
            assert pipe is not None
            pipe._done(result)
        else:
            raise AssertionError(f"unknown continuation {k}")

    def _defer(self, action: RunFilter, k: int, pipe: _BodyPipe | None) -> None:
        e = self.engine
        token = self.down.filter_token(self)
        action.token = token
        self._pending = token
        self._cont = k
        self._cont_pipe = pipe
        e.emit(action)

    def on_filter_done(self, token: int, result: Any, error: BaseException | None) -> None:
        if token != self._pending or self._cont < 0:
            return  # stale (request already finished or aborted)
        k, pipe = self._cont, self._cont_pipe
        self._pending = 0
        self._cont = -1
        self._cont_pipe = None
        if error is not None:
            if isinstance(error, Exception):
                name = _PHASE_NAMES[k]
                hint = "" if name in self.phases.blocking else _async_hint(error)
                self._phase_raised(name, error, hint)
            return
        try:
            self._resume(k, result, pipe)
        except Exception as exc:
            self._phase_raised(_PHASE_NAMES[k], exc)

    def _phase_raised(self, name: str, exc: Exception, hint: str = "") -> None:
        """Log the phase's exception (with ``hint``, the likely cause in words, if any) and
        answer 500, or end the request as far as it got."""
        e = self.engine
        e.log.error(
            "phase %s raised %s: %s (%s %s)%s",
            name,
            type(exc).__name__,
            exc,
            self.req_header.method,
            self.req_header.path,
            hint,
            exc_info=exc,
        )
        if isinstance(exc, ProxyError):
            err = exc
        else:
            err = ProxyError(
                ErrorType.FILTER_ERROR,
                ErrorSource.INTERNAL,
                f"{name} raised {type(exc).__name__}: {exc}",
                cause=exc,
            )
        if name == "logging":
            self._after_logging(None)
        elif name == "fail_to_proxy":
            if not self.response_started:
                self._respond_error(500)
            self._finish(err)
        elif self._state >= LOGGING:
            return
        else:
            self._fail(err)

    # ------------------------------------------------------------------ request phases

    def start(self) -> None:
        ph = self.phases
        if ph.new_ctx is not None:
            self._call(ph.new_ctx, (), _K_NEW_CTX)
        else:
            self._after_new_ctx(None)

    def _after_new_ctx(self, ctx: Any) -> None:
        self.ctx = ctx
        ph = self.phases
        if ph.early_request_filter is not None:
            self._call(
                ph.early_request_filter,
                (self, ctx),
                _K_EARLY_REQUEST_FILTER,
            )
        else:
            self._run_request_filter(None)

    def _run_request_filter(self, _: Any) -> None:
        ph = self.phases
        if ph.request_filter is not None:
            self._call(ph.request_filter, (self, self.ctx), _K_REQUEST_FILTER)
        else:
            self._after_request_filter(False)

    def _after_request_filter(self, answered: Any) -> None:
        if answered or self._state == ANSWERED:
            if self._state != ANSWERED:
                self._respond_error(500)
            self._finish(None)
            return
        if self.req_header.method == "CONNECT":
            self._fail(ProxyError.http_status(405, "CONNECT is not supported"))
            return
        ph = self.phases
        if ph.proxy_upstream_filter is not None:
            self._call(
                ph.proxy_upstream_filter,
                (self, self.ctx),
                _K_PROXY_UPSTREAM_FILTER,
            )
        else:
            self._state = _XN[self._state * _NX + PICK_PEER] or _refused(self._state, PICK_PEER)
            self._choose_peer()

    def _after_proxy_upstream_filter(self, go: Any) -> None:
        if go is False or self._state == ANSWERED:
            if self._state != ANSWERED:
                self._fail(
                    ProxyError(
                        ErrorType.NO_UPSTREAM,
                        ErrorSource.INTERNAL,
                        "proxy_upstream_filter declined",
                    )
                )
            else:
                self._finish(None)
            return
        self._state = _XN[self._state * _NX + PICK_PEER] or _refused(self._state, PICK_PEER)
        self._choose_peer()

    def _choose_peer(self) -> None:
        ph = self.phases
        self._call(ph.upstream_peer, (self, self.ctx), _K_UPSTREAM_PEER)

    def _after_peer(self, peer: Any) -> None:
        if not isinstance(peer, Peer):
            if peer is None:
                self._fail(
                    ProxyError(
                        ErrorType.NO_UPSTREAM,
                        ErrorSource.INTERNAL,
                        "upstream_peer returned no peer",
                    )
                )
                return
            raise TypeError(f"upstream_peer must return a Peer, not {type(peer).__name__}")
        self.peer = peer
        e = self.engine
        self._t_peer = e.now
        self._t_conn = -1.0
        self._t_head = -1.0
        # After a pooled connection died before answering (ReusedOnly), retry on a fresh one.
        up = None if self._fresh_only else e.acquire_upstream(peer)
        if up is not None:
            self._state = _XN[self._state * _NX + CONNECTED] or _refused(self._state, CONNECTED)
            up.begin(self, True, e.now)
            self._use_upstream(up, True)
            return
        self._go(CONNECT)
        up = e.open_upstream(peer)
        up.bind(self)
        timeout = (
            peer.connect_timeout if peer.connect_timeout is not None else e.conf.connect_timeout
        )
        self.down.arm("connect", e.now + timeout)
        self.upstream = up

    def on_upstream_connected(self, up: OriginStream) -> None:
        self.down.disarm("connect")
        self._state = _XN[self._state * _NX + CONNECTED] or _refused(self._state, CONNECTED)
        up.begin(self, False, self.engine.now)
        self._use_upstream(up, False)

    def on_upstream_connect_failed(self, up: OriginStream, reason: str, message: str) -> None:
        self.down.disarm("connect")
        self.upstream = None
        etype = _CONNECT_ERRORS.get(reason, ErrorType.CONNECT_ERROR)
        addr = up.peer.address
        if reason == "refused":
            text = f"upstream {addr} refused the connection"
        elif reason == "tls" or reason == "cert":
            text = f"upstream {addr}: {message}"  # "TLS handshake failed: ..."
        else:
            text = f"upstream {addr} {message or 'could not be connected to'}"
        err = ProxyError(etype, ErrorSource.UPSTREAM, text)
        self.engine.log.warning("%s", err.message)
        self._connect_failed(err)

    def _connect_failed(self, err: ProxyError) -> None:
        self._go(UPSTREAM_ERROR)
        ph = self.phases
        peer = self.peer
        assert peer is not None
        if ph.fail_to_connect is not None:
            self._call(
                ph.fail_to_connect,
                (self, peer, self.ctx, err),
                _K_FAIL_TO_CONNECT,
            )
        else:
            self._after_fail_to_connect(err)

    def _after_fail_to_connect(self, err: Any) -> None:
        if not isinstance(err, ProxyError):
            raise TypeError("fail_to_connect must return the ProxyError")
        if err.retry and self.retries < self.engine.conf.max_retries:
            self.retries += 1
            self._tried(err)
            self._go(RETRY)
            self._choose_peer()
        else:
            self._fail(err)

    def _use_upstream(self, up: OriginStream, reused: bool) -> None:
        self.upstream = up
        self.upstream_reused = reused
        self._t_conn = self.engine.now
        ph = self.phases
        if ph.connected_to_upstream is not None:
            self._call(
                ph.connected_to_upstream,
                (self, reused, up.peer, self.ctx),
                _K_CONNECTED_TO_UPSTREAM,
            )
        else:
            self._build_upstream_request(None)

    def _build_upstream_request(self, _: Any) -> None:
        req = self.req_header
        meta = self._meta
        e = self.engine
        ph = self.phases
        # The parser's flags describe the head as received; if an early phase could have
        # edited it, take the general path.
        edited = ph.early_request_filter is not None or ph.request_filter is not None
        if (
            not edited
            and ph.upstream_request_filter is None
            and not meta.hop
            and meta.has_host
            and req.authority is None
            and req.version == "HTTP/1.1"
            and not (meta.forwarded and e.conf.add_forwarded_headers)
        ):
            # Nothing can have changed the head and nothing in it is hop-by-hop: forward the
            # received bytes verbatim, plus our X-Forwarded-* fields.
            up = self.upstream
            if up is None:
                return
            up.send_received_head(
                e,
                req.method,
                meta.raw,
                self.down.forwarded_fields() if e.conf.add_forwarded_headers else None,
                meta.host,
                meta.length if self._req_kind == SIZED_BODY else -1,
            )
            self._upstream_head_ready()
            return
        items = end_to_end(req.headers._items, meta.hop, meta.connection_tokens, edited)
        if e.conf.add_forwarded_headers:
            host = req.headers.get("host") if edited else meta.host
            if meta.forwarded or edited:
                h = Headers._from_parsed(items)
                append_forwarded(h, "X-Forwarded-For", self.down.client_addr[0])
                append_forwarded(h, "X-Forwarded-Proto", self.down.scheme)
                if host:
                    append_forwarded(h, "X-Forwarded-Host", host)
                items = h._items
            else:
                items.append(("x-forwarded-for", "X-Forwarded-For", self.down.client_addr[0]))
                items.append(("x-forwarded-proto", "X-Forwarded-Proto", self.down.scheme))
                if host:
                    items.append(("x-forwarded-host", "X-Forwarded-Host", host))
        if (not meta.has_host or edited) and self.upstream is not None:
            if not any(it[0] == "host" for it in items):
                items.append(("host", "Host", self.upstream.peer.address))
        up_req = RequestHeader(
            req.method,
            req.path,
            Headers._from_parsed(items),
            "HTTP/1.1",
            scheme=req.scheme,
            authority=req.authority,
        )
        if ph.upstream_request_filter is not None:
            self._held_request = up_req
            self._call(
                ph.upstream_request_filter,
                (self, up_req, self.ctx),
                _K_UPSTREAM_REQUEST_FILTER,
            )
        else:
            self._send_upstream_head(up_req, False)

    def _send_upstream_head(self, up_req: RequestHeader, filtered: bool) -> None:
        up = self.upstream
        if up is None or self._state >= LOGGING:
            return
        # (how the body is framed, chunked or by its Content-Length, is the codec's choice)
        up.send_request_head(
            self.engine, self.req_header.method, up_req, self._req_kind != NO_BODY, filtered
        )
        self._upstream_head_ready()

    def _upstream_head_ready(self) -> None:
        """The upstream head is on its way: the body follows (or the wait for the answer)."""
        e = self.engine
        read = self._body == READ
        if read:
            self._arm_read_timeout()
        if self._retry_buf:
            for piece in self._retry_buf:
                self._write_upstream_piece(piece, False)
        if read:
            if self._req_kind != NO_BODY:
                self._end_upstream_body()
            else:
                self._state = _XN[self._state * _NX + REQUEST_SENT] or _refused(
                    self._state, REQUEST_SENT
                )
            return
        self._body = _BN[self._body * _NB + FORWARD] or _refused_body(self._body, FORWARD)
        self._last_client_read = e.now
        self.down.arm("body", e.now + e.conf.client_body_timeout)
        ph = self.phases
        if ph.request_body_filter is not None and self._req_pipe is None:
            self._req_pipe = _BodyPipe(
                self,
                ph.request_body_filter,
                _K_REQUEST_BODY_FILTER,
                self._req_sink,
                self._pump_request_body,
            )
        self._pump_request_body()

    # ------------------------------------------------------------------ request body

    def on_client_bytes(self) -> bool:
        """The client sent bytes (body or pipelined requests): the body timer counts from
        here. True if the session takes body pieces straight away (no filter, no buffer)."""
        self._last_client_read = self.engine.now
        return self._body == FORWARDING and self._req_pipe is None and self.upstream is not None

    def takes_request_body(self) -> bool:
        """Whether the stream may hand over a body piece now."""
        pipe = self._req_pipe
        return self._body == FORWARDING and not (pipe is not None and pipe.busy)

    def request_data_buffered(self) -> None:
        """The stream buffered client bytes it did not hand over."""
        body = self._body
        if body == FORWARDING:
            self._pump_request_body()
        elif body == SKIPPING:
            self._skip_request_body()

    def _pump_request_body(self) -> None:
        if self._body != FORWARDING or self._state >= LOGGING:
            return
        down = self.down
        if down.push_request_body(self):
            down.request_pause_changed()

    def on_request_trailers(self, tr: Headers) -> bool:
        """The request's trailer section arrived; False if it failed the request."""
        if self.engine.conf.headers_with_underscores != "allow":
            return self._underscored_trailers(tr)
        return True

    def on_request_body_error(self, err: HTTPParseError) -> None:
        self._bad_request_body(err)

    def on_request_body(self, piece: bytes, eos: bool) -> None:
        """A piece of the request body from the stream (``eos``: the last one)."""
        self.request_body_bytes += len(piece)
        limit = self.engine.conf.max_request_body_size
        if limit is not None and self.request_body_bytes > limit:
            self._bad_request_body(HTTPParseError("request body too large", 413))
            return
        if eos:
            self._body = _BN[self._body * _NB + END] or _refused_body(self._body, END)
            self.down.disarm("body")
        pipe = self._req_pipe
        if pipe is not None:
            pipe.push(piece, eos)
        else:
            self._req_sink(piece, eos)

    def _req_sink(self, piece: bytes, eos: bool) -> None:
        if piece:
            rb = self._retry_buf
            if rb is not None:
                if self._retry_size + len(piece) <= self.engine.conf.retry_buffer_size:
                    rb.append(piece)
                    self._retry_size += len(piece)
                else:
                    self._retry_buf = None
            self._write_upstream_piece(piece, False)
        if eos:
            self._end_upstream_body()

    def _write_upstream_piece(self, piece: bytes, _eos: bool) -> None:
        up = self.upstream
        if up is None:
            return
        up.send_body(self.engine, piece)

    def _arm_read_timeout(self) -> None:
        """Start waiting for the response (proxy_read_timeout runs from here, once the whole
        request is on its way; while the client is still sending, client_body_timeout rules)."""
        up = self.upstream
        if up is None:
            return
        e = self.engine
        up.mark_read(e.now)
        timeout = up.peer.read_timeout
        self.down.arm("read", e.now + (timeout if timeout is not None else e.conf.read_timeout))

    def _end_upstream_body(self) -> None:
        up = self.upstream
        if up is None:
            return
        st = self._state
        if not self.down.armed("read") and st != ENDING and st != ANSWERED:
            self._arm_read_timeout()
        fields = None
        if up.sends_trailers():
            tr = self.down.request_trailers()
            fields = trailer_fields(tr) if tr else []
        if not up.end_request(self.engine, fields):
            self._fail(
                ProxyError(
                    ErrorType.INTERNAL,
                    ErrorSource.INTERNAL,
                    f"request body is {up.request_sent()} bytes but Content-Length "
                    f"says {up.request_length()} (remove it when changing the body)",
                )
            )
            return
        self._state = _XN[self._state * _NX + REQUEST_SENT] or _refused(self._state, REQUEST_SENT)

    def _underscored_trailers(self, tr: Headers) -> bool:
        """Request trailer fields whose name holds an underscore, under headers_with_underscores
        drop or reject, as in the head (proxycore.h1.parse.UNDERSCORE_ACTIONS): dropped, or the
        request fails with 400 (the origin never gets the last chunk). False if it failed."""
        items = tr._items
        names = [n for k, n, _ in items if "_" in k]
        if not names:
            return True
        e = self.engine
        if e.conf.headers_with_underscores == "reject":
            self._bad_request_body(
                HTTPParseError(
                    f"trailer field name with an underscore: {names[0]!r} "
                    "(headers_with_underscores reject)"
                )
            )
            return False
        tr._items = [it for it in items if "_" not in it[0]]
        e.log.info(
            "client %s: dropped %d request trailer field(s) with an underscore in the name "
            "(headers_with_underscores drop): %s",
            self.down.peer_name(),
            len(names),
            ", ".join(names),
        )
        return True

    def _bad_request_body(self, err: HTTPParseError) -> None:
        self.engine.log.info("client %s: bad request body: %s", self.down.peer_name(), err)
        self._stop_forwarding()
        self._keep_alive = False
        if self.upstream is not None:
            self.upstream.abort(self.engine)
            self.upstream = None
        if not self.response_started:
            self._respond_error(err.status)
            self._finish(
                ProxyError(
                    ErrorType.INVALID_HTTP_HEADER,
                    ErrorSource.DOWNSTREAM,
                    str(err),
                    status=err.status,
                )
            )
        else:
            self._abort_downstream(
                ProxyError(ErrorType.INVALID_HTTP_HEADER, ErrorSource.DOWNSTREAM, str(err))
            )

    def _skip_request_body(self) -> None:
        """After an early response (SKIPPING): read and drop the rest of the request body so
        the connection can carry the next request; once it is all read (or turns out
        malformed: the connection closes), a finished exchange hands the connection back."""
        r = self.down.discard_request_body()
        if r == 0:
            return  # more to come
        if r < 0:
            self._keep_alive = False
        else:
            self._go_body(END)
        if self._state == LOGGED:
            self._hand_back()

    def on_downstream_eof(self) -> None:
        if self._body != READ:
            self._client_gone(
                f"client {self.down.peer_name()} closed the connection before the request body "
                "ended"
            )
            return
        self._keep_alive = False  # finish the response, then close

    def on_downstream_gone(self, reason: str) -> None:
        if self._state >= LOGGING:
            return
        self._client_gone(reason)

    def on_stop(self, grace: float) -> bool:
        """The shutdown cuts this exchange (its grace period ran out, or a fast shutdown; the
        engine closes the connections): it ends now with a SHUTDOWN error, so its access-log
        entry is written, flagged as cut. False if it had already ended."""
        if self._state >= LOGGING:
            return False
        why = f"the grace period of {grace:g} s ran out" if grace > 0 else "a fast shutdown"
        self._keep_alive = False
        self._stop_forwarding()
        # (_finish closes the upstream connection, unfinished, before the log entry is written)
        self._finish(ProxyError(ErrorType.SHUTDOWN, ErrorSource.INTERNAL, f"cut: {why}"))
        return True

    def on_client_lost(self, words: str) -> None:
        """The client connection broke: ``words`` say how ("reset the connection")."""
        if self._state >= LOGGING:
            return
        if self._body != READ:
            when = "before the request body ended"
        elif self.response_started:
            when = "while the response was being sent"
        else:
            when = "before the response was ready"
        self._client_gone(f"client {self.down.peer_name()} {words} {when}")

    def _client_gone(self, reason: str) -> None:
        err = ProxyError(ErrorType.CLIENT_ABORTED, ErrorSource.DOWNSTREAM, reason)
        self._keep_alive = False
        self._stop_forwarding()
        if self.upstream is not None:
            self.upstream.abort(self.engine)
            self.upstream = None
        self._finish(err)
        self.down.client_gone(self)

    def wants_request_paused(self) -> bool:
        up = self.upstream
        if self._body == FORWARDING:
            return (up is not None and up.writing_paused()) or (
                self._req_pipe is not None and self._req_pipe.busy
            )
        return False

    def on_upstream_write_paused(self, paused: bool) -> None:
        e = self.engine
        if paused:
            up = self.upstream
            timeout = up.peer.write_timeout if up is not None else None
            self.down.arm(
                "write", e.now + (timeout if timeout is not None else e.conf.write_timeout)
            )
        else:
            self.down.disarm("write")
        self.down.request_pause_changed()

    # ------------------------------------------------------------------ response

    # the codec's calls (UpstreamOwner): the response head

    def on_invalid_response(self, err: HTTPParseError, words: str) -> None:
        self._upstream_error(ErrorType.INVALID_RESPONSE, words)

    def on_informational(self, resp: ResponseHeader, meta: ResponseMeta) -> bool:
        if resp.status == 101:
            self._upstream_error(
                ErrorType.INVALID_RESPONSE,
                "answered 101 Switching Protocols to a request without Upgrade",
            )
            return False
        # RFC 9110 §15.2: forward 1xx (the codec knows who cannot take one).
        if not self.response_started:
            self.down.send_informational(self, resp, meta.connection_tokens)
        return True

    def on_response_head(self, resp: ResponseHeader, meta: ResponseMeta) -> None:
        """The final response head (the codec set up its body's decoding)."""
        self._state = _XN[self._state * _NX + HEAD_RECEIVED] or _refused(self._state, HEAD_RECEIVED)
        self._resp = resp
        self._resp_meta = meta
        self._t_head = self.engine.now
        ph = self.phases
        if ph.upstream_response_filter is not None:
            self._call(
                ph.upstream_response_filter,
                (self, resp, self.ctx),
                _K_UPSTREAM_RESPONSE_FILTER,
            )
        else:
            self._run_response_filter(None)

    def _run_response_filter(self, _: Any) -> None:
        ph = self.phases
        if ph.response_filter is not None:
            assert self._resp is not None
            self._call(
                ph.response_filter,
                (self, self._resp, self.ctx),
                _K_RESPONSE_FILTER,
            )
        else:
            self._write_response_head(None)

    def _write_response_head(self, _: Any) -> None:
        up = self.upstream
        if self._state != RESPONSE_PHASES or up is None:
            return  # (the exchange ended, or failed over, while a response phase ran)
        resp = self._resp
        meta = self._resp_meta
        assert resp is not None and meta is not None
        e = self.engine
        ph = self.phases
        edited = ph.upstream_response_filter is not None or ph.response_filter is not None
        keep = self._keep_alive and not e.draining and not self.down.peer_eof
        if self._body != READ and (
            (self._meta.expect_continue and up.request_sent() == 0)  # no body will come to skip
            or self.down.request_body_left() > _MAX_DISCARD
        ):
            keep = False  # an early answer (RFC 9112 §9.5): announce the close that follows
        # What the head says is decided; how it is framed is the client codec's (it may have
        # to end the body by closing the connection).
        mode = self.down.send_response_head(self, resp, meta, edited, keep)
        self._down_mode = mode
        self._keep_alive = keep and mode != BODY_CLOSE
        self._response_head_ready(resp)

    def _response_head_ready(self, resp: ResponseHeader) -> None:
        ph = self.phases
        meta = self._resp_meta
        assert meta is not None
        status = resp.status
        self._state = _XN[self._state * _NX + HEAD_SENT] or _refused(self._state, HEAD_SENT)
        self.response_started = True
        self.response_status = status
        self.response_header = resp
        ur, rr = ph.upstream_response_body_filter, ph.response_body_filter
        if rr is not None:
            self._resp_pipes = _BodyPipe(
                self, rr, _K_RESPONSE_BODY_FILTER, self._write_down_piece, self._pump_response_body
            )
        if ur is not None:
            final = self._resp_pipes
            sink = final.push if final is not None else self._write_down_piece
            self._resp_pipes = _BodyPipe(
                self, ur, _K_UPSTREAM_RESPONSE_BODY_FILTER, sink, self._pump_response_body
            )
            if final is not None:
                # the second pipe's idle callback must also resume pumping
                final.on_idle = self._pump_response_body
        if meta.body == BODY_NONE:
            self.on_response_body(b"", True)
        else:
            if self.down.write_paused:
                self.on_downstream_write_paused(True)
            self._pump_response_body()

    def _pump_response_body(self) -> None:
        up = self.upstream
        if up is None or self._state != STREAMING:
            return
        # (the codec hands over what we take, then re-evaluates pausing; a malformed body: it
        # told us, on_invalid_response)
        up.push_response_body(self.engine)

    # the codec's calls (UpstreamOwner): the response body, pushed

    def takes_response_data(self) -> bool:
        return self._resp_pipes is None and self._down_mode == BODY_LENGTH and self.response_started

    def takes_response_body(self) -> bool:
        pipes = self._resp_pipes
        # (not once the whole response came, nor after the exchange ended: a decoded batch's
        # remaining pieces are not handed to a finished exchange)
        return not (pipes is not None and pipes.busy) and self._state < ENDING

    def response_data_buffered(self) -> None:
        if self.response_started:
            self._pump_response_body()
        self._update_upstream_pause()

    def wants_response_paused(self) -> bool:
        pipes = self._resp_pipes
        return self.down.write_paused or (pipes is not None and pipes.busy)

    def on_response_body(self, piece: bytes, eos: bool) -> None:
        if self._state >= LOGGING:
            return  # (the rest of a decoded batch, after the exchange was cut short)
        pipes = self._resp_pipes
        if eos:
            self._state = _XN[self._state * _NX + BODY_RECEIVED] or _refused(
                self._state, BODY_RECEIVED
            )
        if pipes is not None:
            pipes.push(piece, eos)
        else:
            self._write_down_piece(piece, eos)

    def _write_down_piece(self, piece: bytes, eos: bool) -> None:
        if self._state >= LOGGING:
            return
        if piece:
            self.response_body_bytes += len(piece)
            if not self.down.send_body(piece):
                self._abort_downstream(
                    ProxyError(
                        ErrorType.INTERNAL,
                        ErrorSource.INTERNAL,
                        "response body longer than its Content-Length "
                        "(remove Content-Length in response_filter when changing the body)",
                    )
                )
                return
        if eos:
            self._end_response_body()

    def _end_response_body(self) -> None:
        down = self.down
        if down.takes_trailers():
            up = self.upstream
            tr = up.response_trailers() if up is not None else None
            trailers = tr if tr else Headers()
            ph = self.phases
            if ph.response_trailer_filter is not None and len(trailers):
                self._held_trailers = trailers
                self._call(
                    ph.response_trailer_filter,
                    (self, trailers, self.ctx),
                    _K_RESPONSE_TRAILER_FILTER,
                )
                return
            self._send_trailers(trailers)
            return
        if not down.end_response(None):
            self._abort_downstream(
                ProxyError(
                    ErrorType.INTERNAL,
                    ErrorSource.INTERNAL,
                    f"response body is {down.response_sent()} bytes but Content-Length says "
                    f"{down.response_length()} (remove Content-Length in response_filter when "
                    "changing the body)",
                )
            )
            return
        self._response_complete()

    def _send_trailers(self, trailers: Headers) -> None:
        self.down.end_response(trailers)
        self._response_complete()

    def _response_complete(self) -> None:
        up = self.upstream
        sent = 0
        read = self._body == READ
        if up is not None:
            if not read:
                sent = up.request_sent()
            self.upstream = None
            # back to the pool if the wire allows another exchange (the codec knows); a request
            # body still coming (an early answer) leaves the connection unusable
            up.end(self.engine, read)
        if not read:
            # Early response: stop forwarding; skip the rest of the body if the client sends it.
            self._go_body(SKIP)
            if self._meta.expect_continue and sent == 0:
                self._keep_alive = False
        self._finish(None)

    def on_downstream_write_paused(self, paused: bool) -> None:
        e = self.engine
        if paused:
            self.down.arm("send", e.now + e.conf.send_timeout)
        else:
            self.down.disarm("send")
        self._update_upstream_pause()

    def _update_upstream_pause(self) -> None:
        up = self.upstream
        if up is not None:
            up.response_pause_changed(self.engine)

    # ------------------------------------------------------------------ upstream failures

    def on_upstream_eof(self, error: str | None) -> None:
        up = self.upstream
        st = self._state
        if up is None or st >= LOGGING:
            return
        if RESPONSE_PHASES <= st <= ENDING and self._resp_meta is not None:
            if self._resp_meta.body == BODY_CLOSE and error is None:
                if self.response_started:
                    self._pump_response_body()
                return
            if st == ENDING:
                return
        failure = self._up_failure  # a failed write came first: it says what happened
        etype = ErrorType.CONNECTION_RESET if failure or error else ErrorType.CONNECTION_CLOSED
        words = failure or error or "closed the connection"
        self._upstream_error(etype, f"{words} {self._stage()}")

    def _stage(self) -> str:
        """Where this request was when its upstream connection ended, for messages."""
        if RESPONSE_PHASES <= self._state <= ENDING:
            return "while the response body was being received"
        if self._up_failure is not None or self._body == FORWARDING:
            if self._body == READ:
                return "while the request was being sent"
            return "while the request body was being sent"
        up = self.upstream
        if up is not None and up.response_bytes():
            return "in the middle of the response head"
        return "before sending a response head"

    def on_upstream_write_failed(self, error: str) -> None:
        """The origin stopped taking the request, typically because it answered early and
        closed without reading the body (RFC 9112 §9.5: a client must be ready for that). Stop
        sending and keep reading: an answer that arrives is relayed, with the client connection
        closed after it (the rest of the body has nowhere to go); EOF without an answer is the
        error, named after this failed write. Neither counts as a failure before it happens."""
        up = self.upstream
        st = self._state
        if up is None or st >= LOGGING:
            return
        self._up_failure = error
        down = self.down
        down.disarm("write")
        if self._body == FORWARDING:
            self._go_body(STOP)
            down.disarm("body")
        if self._body != READ:
            self._keep_alive = False
        if st < RESPONSE_PHASES and not down.armed("read"):
            self._arm_read_timeout()
        if st == SENDING or st == AWAITING_HEAD or RESPONSE_PHASES <= st <= ENDING:
            self._go(REQUEST_SENT)  # as far as it goes
        self.down.request_pause_changed()

    def on_timer(self, name: str) -> None:
        e = self.engine
        now = e.now
        if name == "connect":
            up = self.upstream
            if up is not None and not up.in_use():
                up.abort(e)
                self.upstream = None
                peer = up.peer
                t = peer.connect_timeout
                err = ProxyError(
                    ErrorType.CONNECT_TIMEDOUT,
                    ErrorSource.UPSTREAM,
                    f"upstream {peer.address} did not accept the connection within "
                    f"{t if t is not None else e.conf.connect_timeout:g}s (connect timeout)",
                )
                e.log.warning("%s", err.message)
                self._connect_failed(err)
        elif name == "read":
            up = self.upstream
            st = self._state
            if up is None or st == ENDING or st == ANSWERED:
                return
            t = up.peer.read_timeout
            timeout = t if t is not None else e.conf.read_timeout
            if up.reading_paused():
                self.down.arm("read", now + timeout)
            elif now >= up.last_read + timeout:
                self._upstream_error(
                    ErrorType.READ_TIMEDOUT, f"sent nothing for {timeout:g}s {self._stage()}"
                )
            else:
                self.down.arm("read", up.last_read + timeout)
        elif name == "write":
            up = self.upstream
            if up is not None and up.writing_paused():
                t = up.peer.write_timeout
                timeout = t if t is not None else e.conf.write_timeout
                self._upstream_error(
                    ErrorType.WRITE_TIMEDOUT, f"stopped reading the request for {timeout:g}s"
                )
        elif name == "send":
            if self.down.write_paused:
                err = ProxyError(
                    ErrorType.WRITE_TIMEDOUT,
                    ErrorSource.DOWNSTREAM,
                    "client stopped reading (send_timeout)",
                )
                self._keep_alive = False
                self._abort_downstream(err)
        elif name == "body":
            if self._body != FORWARDING:
                return
            timeout = e.conf.client_body_timeout
            if now >= self._last_client_read + timeout:
                self._bad_request_body(HTTPParseError("client body timeout", 408))
            else:
                self.down.arm("body", self._last_client_read + timeout)

    def _upstream_error(self, etype: ErrorType, what: str) -> None:
        """Fail over the upstream: ``what`` it did, in words ("reset the connection while the
        response body was being received")."""
        up = self.upstream
        if self._state >= LOGGING:
            return
        peer = up.peer if up is not None else self.peer
        peer_addr = peer.address if peer is not None else "?"
        err = ProxyError(etype, ErrorSource.UPSTREAM, f"upstream {peer_addr} {what}")
        self.engine.log.warning("%s", err.message)
        if up is not None:
            up.abort(self.engine)
            self.upstream = None
        if self.response_started:
            self._abort_downstream(err)
            return
        received = up.response_bytes() if up is not None else 0
        if (
            self.upstream_reused
            and received == 0
            and self._retry_buf is not None
            and etype in (ErrorType.CONNECTION_CLOSED, ErrorType.CONNECTION_RESET)
        ):
            err.retry = True  # ReusedOnly: the pooled connection died before answering
            self._fresh_only = True
        self._go(UPSTREAM_ERROR)
        ph = self.phases
        peer = self.peer
        if ph.error_while_proxy is not None and peer is not None:
            self._call(
                ph.error_while_proxy,
                (self, peer, self.ctx, err, self.down.requests > 0),
                _K_ERROR_WHILE_PROXY,
            )
        else:
            self._after_error_while_proxy(err)

    def _after_error_while_proxy(self, err: Any) -> None:
        if not isinstance(err, ProxyError):
            raise TypeError("error_while_proxy must return the ProxyError")
        if (
            err.retry
            and self.retries < self.engine.conf.max_retries
            and self._retry_buf is not None
        ):
            self.retries += 1
            self._tried(err)
            self._reset_response_state()
            self._go(RETRY)
            self._choose_peer()
        else:
            self._fail(err)

    def _tried(self, err: ProxyError) -> None:
        """Keep the attempt that just failed for the access log (a retry follows)."""
        tries = self._tries
        if tries is None:
            tries = self._tries = []
        tries.append(self._attempt(err))

    def _reset_response_state(self) -> None:
        self._resp = None
        self._resp_meta = None
        self._stop_forwarding()
        self._up_failure = None

    # ------------------------------------------------------------------ ending

    def _respond_error(self, status: int) -> None:
        body = error_body(status)
        self._keep_alive = self._keep_alive and self._body == READ
        self.respond(status, body)

    def _fail(self, err: ProxyError) -> None:
        st = self._state
        if st >= LOGGING:
            return
        self.error = err
        self._stop_forwarding()
        up = self.upstream
        if up is not None:
            up.abort(self.engine)
            self.upstream = None
        self.down.disarm_all(_UPSTREAM_TIMERS)
        if st == ANSWERED:
            self._finish(err)
            return
        if self.response_started:
            self._abort_downstream(err)
            return
        if self._body != READ:
            self._keep_alive = False
        self._go(FAIL)
        ph = self.phases
        self._call(ph.fail_to_proxy_fn, (self, err, self.ctx), _K_FAIL_TO_PROXY)

    def _after_fail_to_proxy(self, status: Any) -> None:
        err = self.error
        if not self.response_started:
            if err is not None and err.status == 499:
                self._keep_alive = False
                self._finish(err)
                self.down.client_gone(self)
                return
            self._respond_error(err.status if err is not None else 500)
        if isinstance(status, int) and self.response_status == 0:
            self.response_status = status
        self._finish(err)

    def _abort_downstream(self, err: ProxyError) -> None:
        """After the response head went out, an error can only cut the response short."""
        self.error = err
        self._keep_alive = False
        self.engine.log.warning(
            "response to client %s cut short: %s", self.down.peer_name(), err.message
        )
        up = self.upstream
        if up is not None:
            up.abort(self.engine)
            self.upstream = None
        self._finish(err)
        self.down.abort_response(self)

    def _finish(self, err: ProxyError | None) -> None:
        if self._state >= LOGGING:
            return
        self._state = _XN[self._state * _NX + FINISH] or _refused(self._state, FINISH)
        if err is not None and self.error is None:
            self.error = err
        self._pending = 0
        self._cont = -1
        self._cont_pipe = None
        self._held_request = None
        self._held_trailers = None
        self.down.disarm_all(_REQUEST_TIMERS)
        up = self.upstream
        if up is not None:
            up.abort(self.engine)
            self.upstream = None
        access = self.engine.access_log
        if access is not None:
            log_session(access, self)
        metrics = self.engine.metrics
        if metrics is not None:
            metrics.exchange_done(self)
        ph = self.phases
        if ph.logging is not None:
            self._call(ph.logging, (self, self.error, self.ctx), _K_LOGGING)
        else:
            self._after_logging(None)

    def _after_logging(self, _: Any) -> None:
        down = self.down
        if not down.closed and self._body != READ:
            if down.request_body_left() > _MAX_DISCARD:
                self._keep_alive = False
            if self._keep_alive:
                # Read and drop the rest of the request body, then carry on (LOGGED:
                # _skip_request_body hands the connection back once it is all read).
                self._go(LOGGING_DONE)
                if self._body != SKIPPING:
                    self._go_body(SKIP)
                self._skip_request_body()
                return
        self._hand_back()

    def _hand_back(self) -> None:
        """The exchange is over: the client stream has its connection back."""
        self._state = _XN[self._state * _NX + HAND_BACK] or _refused(self._state, HAND_BACK)
        self.down.exchange_done(self, self._keep_alive)


# What asyncio says when a coroutine uses it with no asyncio loop running (get_running_loop,
# and get_event_loop outside the main thread), and what trio says outside a trio run.
_NO_ASYNCIO_LOOP: Final = "no running event loop"
_NO_CURRENT_LOOP: Final = "There is no current event loop in thread"
_NO_TRIO_RUN: Final = "must be called from async context"
_ASYNCIO_ONLY: Final = (
    ": an asyncio-only call in an async def phase, on a backend that does not run async phases "
    "on an asyncio loop (trio runs them as trio tasks); anyio code runs on every backend, "
    "asyncio code on asyncio, uvloop, gevent and threads"
)
# ...and when an asyncio object is used on a loop other than its own (a closed one, too).
_OTHER_LOOP: Final = ("attached to a different loop", "bound to a different event loop")
_LOOP_CLOSED: Final = "Event loop is closed"
_ANOTHER_LOOP: Final = (
    ": an asyncio object made on another event loop: gevent and threads run each async phase "
    "call on a new asyncio loop of its own, so asyncio objects (client sessions, locks) cannot "
    "outlive one call there; create them inside the call, or use --backend asyncio or uvloop "
    "(one loop for everything)"
)
_TRIO_ONLY: Final = (
    ": a trio-only call in an async def phase, on a backend that does not run async phases as "
    "trio tasks (only trio does); anyio code runs on every backend"
)


def _async_hint(exc: Exception) -> str:
    """The cause in words when a deferred async phase failed because it used one event-loop
    library's own calls on a backend that runs async phases on another; else ""."""
    if not isinstance(exc, RuntimeError):
        return ""
    msg = str(exc)
    if msg == _NO_ASYNCIO_LOOP or msg.startswith(_NO_CURRENT_LOOP):
        return _ASYNCIO_ONLY
    if msg == _NO_TRIO_RUN:
        return _TRIO_ONLY
    if msg == _LOOP_CLOSED or _OTHER_LOOP[0] in msg or _OTHER_LOOP[1] in msg:
        return _ANOTHER_LOOP
    return ""


_RESPOND_HEADERS: Final = (
    "respond() headers are a proxycore.Headers, a mapping of str names to str values, or an "
    "iterable of (name, value) pairs of str"
)


def _respond_headers(headers: object) -> Headers:
    """A new :class:`Headers` from what :meth:`Session.respond` was given, or a TypeError
    naming what it accepts."""
    if headers is None:
        return Headers()
    if isinstance(headers, Headers):
        return headers.copy()
    if isinstance(headers, Mapping):
        pairs: Iterable[object] = list(headers.items())
    elif isinstance(headers, (str, bytes, bytearray)) or not isinstance(headers, Iterable):
        raise TypeError(f"{_RESPOND_HEADERS}; got {type(headers).__name__} {headers!r:.60}")
    else:
        pairs = headers
    h = Headers()
    for pair in pairs:
        if (
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            h.add(pair[0], pair[1])
        else:
            raise TypeError(f"{_RESPOND_HEADERS}; got the item {pair!r:.60}")
    return h
