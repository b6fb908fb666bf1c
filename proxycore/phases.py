"""The filter API: a base class with Pingora's phases, and markers for phases that wait.

Theory of operation: a user subclasses :class:`Proxy` and overrides phases. The engine checks
once, when it starts, which phases are overridden and never calls the others (their defaults
are no-ops), so an unused phase costs nothing per request. A phase may be a plain function
(runs inline in the core, on every adapter), an ``async def`` (the core hands the coroutine to
the adapter as a RunFilter action and resumes on FilterDone), or a plain function marked
:func:`blocking` (run on a worker thread or greenlet by the adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from proxycore.errors import ProxyError

if TYPE_CHECKING:
    from proxycore.http import Headers, RequestHeader, ResponseHeader
    from proxycore.peer import Peer
    from proxycore.session import Session

__all__ = ["PHASES", "Proxy", "blocking", "nonblocking"]

F = TypeVar("F", bound=Callable[..., Any])


# Marks on methods of compiled classes (mypyc), whose method objects take no attributes:
# (defining module, qualified name) -> "blocking" / "nonblocking".
_COMPILED_MARKS: dict[tuple[str, str], str] = {}


def _mark(fn: F, kind: str) -> F:
    try:
        setattr(fn, f"__proxycore_{kind}__", True)
    except AttributeError:  # a compiled method (mypyc): remember it by name instead
        owner = getattr(fn, "__objclass__", None)
        module = owner.__module__ if owner is not None else getattr(fn, "__module__", "")
        _COMPILED_MARKS[(str(module), fn.__qualname__)] = kind
    return fn


def is_marked(fn: Any, kind: str) -> bool:
    """Whether ``fn`` (a function or method, bound or not) carries the ``kind`` mark."""
    if getattr(fn, f"__proxycore_{kind}__", False):
        return True
    if not _COMPILED_MARKS:
        return False
    owner = getattr(fn, "__objclass__", None)
    module = owner.__module__ if owner is not None else getattr(fn, "__module__", "")
    return _COMPILED_MARKS.get((str(module), getattr(fn, "__qualname__", ""))) == kind


def blocking(fn: F) -> F:
    """Mark a plain-function phase as one that may block (database call, file read...).

    The adapter runs it off the I/O loop (thread pool on asyncio and threads, a greenlet on
    gevent) and feeds the result back; other connections keep being served meanwhile.
    """
    return _mark(fn, "blocking")


def nonblocking(fn: F) -> F:
    """Mark a phase as never blocking, so it runs inline in the core even on adapters that
    run every phase off the I/O loop (gevent and threads, ``blocking_phases="all"``)."""
    return _mark(fn, "nonblocking")


class Proxy:
    """Subclass this and override phases. Only :meth:`upstream_peer` is required.

    Phases run in this order for one request (see the README's phase table)::

        early_request_filter → request_filter → proxy_upstream_filter → upstream_peer
        → connected_to_upstream → upstream_request_filter → request_body_filter*
        → upstream_response_filter → response_filter → upstream_response_body_filter*
        → response_body_filter* → response_trailer_filter → logging

    with ``fail_to_connect`` / ``error_while_proxy`` / ``fail_to_proxy`` on errors.
    """

    def services(self) -> list[Any]:
        """Background services to run in each worker's engine (for example a
        :class:`proxycore.health.HealthChecker`); called once per engine. Not a phase."""
        return []

    def configure(self, sections: dict[str, Any]) -> None:
        """Receive the configuration file's own sections (not a phase). ``proxycore run
        module:Class -c FILE`` builds the class, then calls this once, before serving and under
        ``-t``, with every top-level section of the file other than ``version``, ``server`` and
        ``listeners`` (name -> value as YAML gives it; ``{}`` when there are none). Raise
        :class:`proxycore.confschema.ConfigError` (``ConfigError(("greeting.text", "expected a
        string"), ...)``) to report problems at their line, or ValueError for one problem. The
        default accepts no section: each one given is reported as unknown."""
        if sections:
            from proxycore.confschema import ConfigError

            name = type(self).__name__
            raise ConfigError(
                *(
                    (s, f"unknown section ({name} takes no configuration: it would need a "
                     "configure() method)")
                    for s in sections
                )
            )  # fmt: skip

    def select_certificate(self, server_name: str | None, client_addr: tuple[str, int]) -> Any:
        """Pick the certificate for a TLS handshake (not a phase; runs inside the handshake,
        so it must not block). Return the name of a configured certificate (a ``--tls-sni-cert``
        NAME / ``TlsSettings.sni_certs`` key), None to apply the SNI rules (exact name,
        wildcard, default), or False to refuse the handshake (``unrecognized_name``)."""
        return None

    def new_ctx(self) -> Any:
        """A fresh per-request context object, passed to every phase as ``ctx``."""
        return None

    def early_request_filter(self, session: Session, ctx: Any) -> None:
        """First phase, right after the request head is parsed."""

    def request_filter(self, session: Session, ctx: Any) -> bool:
        """Return True if this phase already answered (``session.respond(...)``)."""
        return False

    def proxy_upstream_filter(self, session: Session, ctx: Any) -> bool:
        """Return False to not go upstream (502 unless a response was written)."""
        return True

    def upstream_peer(self, session: Session, ctx: Any) -> Peer | None:
        """Choose the upstream for this request; called again on every retry. Returning None
        means no upstream is available (502, logged)."""
        raise NotImplementedError("Proxy subclasses must implement upstream_peer")

    def connected_to_upstream(self, session: Session, reused: bool, peer: Peer, ctx: Any) -> None:
        """A new or pooled connection to ``peer`` is ready."""

    def upstream_request_filter(
        self, session: Session, upstream_request: RequestHeader, ctx: Any
    ) -> None:
        """Edit the copy of the request head that goes upstream."""

    def request_body_filter(
        self, session: Session, body: bytes, end_of_stream: bool, ctx: Any
    ) -> bytes | None:
        """Each request body chunk on its way upstream; return new bytes or None to keep it."""
        return None

    def upstream_response_filter(
        self, session: Session, upstream_response: ResponseHeader, ctx: Any
    ) -> None:
        """Edit the upstream response head (before caching)."""

    def response_filter(
        self, session: Session, upstream_response: ResponseHeader, ctx: Any
    ) -> None:
        """Edit the response head just before it goes downstream."""

    def upstream_response_body_filter(
        self, session: Session, body: bytes, end_of_stream: bool, ctx: Any
    ) -> bytes | None:
        """Each upstream response body chunk; return new bytes or None to keep it."""
        return None

    def response_body_filter(
        self, session: Session, body: bytes, end_of_stream: bool, ctx: Any
    ) -> bytes | None:
        """Each response body chunk on its way downstream; return new bytes or None."""
        return None

    def response_trailer_filter(self, session: Session, trailers: Headers, ctx: Any) -> None:
        """Edit response trailers (chunked responses, gRPC)."""

    def logging(self, session: Session, error: ProxyError | None, ctx: Any) -> None:
        """Always the last phase, on success or failure."""

    def fail_to_connect(
        self, session: Session, peer: Peer, ctx: Any, error: ProxyError
    ) -> ProxyError:
        """Connecting to ``peer`` failed; set ``error.retry = True`` to try upstream_peer again."""
        return error

    def error_while_proxy(
        self, session: Session, peer: Peer, ctx: Any, error: ProxyError, client_reused: bool
    ) -> ProxyError:
        """An I/O or protocol error after connecting. By default, retried only when the
        upstream connection came from the pool and no response byte had arrived (ReusedOnly).
        """
        return error

    def fail_to_proxy(self, session: Session, error: ProxyError, ctx: Any) -> int:
        """The request finally failed: write an error page and return the status sent.

        The default sends ``error.status`` with a short text body if no response head was
        sent yet; otherwise the downstream connection is closed.
        """
        status = error.status
        if not session.response_started and status < 600 and status != 499:
            session.respond(status, f"{status} {error.etype.value}\n".encode())
        return status


PHASES = (
    "new_ctx",
    "early_request_filter",
    "request_filter",
    "proxy_upstream_filter",
    "upstream_peer",
    "connected_to_upstream",
    "upstream_request_filter",
    "request_body_filter",
    "upstream_response_filter",
    "response_filter",
    "upstream_response_body_filter",
    "response_body_filter",
    "response_trailer_filter",
    "logging",
    "fail_to_connect",
    "error_while_proxy",
    "fail_to_proxy",
)
