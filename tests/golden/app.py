"""The proxy classes the golden traces were recorded with (see tests/golden/INDEX.md).

What each does is keyed by the request path's first segment, so one class covers many
scenarios; the deferred classes differ only in how a phase runs (``async def`` or
``@proxycore.blocking``), which decides whether the core emits ``RunFilter`` actions.
Changing what these classes do changes the traces: regenerate them (``python -m
tests.golden.generate``) only with a commit message that says why.
"""

from __future__ import annotations

from typing import Any

import proxycore
from proxycore import Peer, ProxyError
from proxycore.http import Headers

ORIGIN = Peer("127.0.0.1", 9000)
SPARE = Peer("127.0.0.1", 9001)  # where /retry goes once ORIGIN refused


class GoldenProxy(proxycore.Proxy):
    """Sync phases only: everything runs inline in the core."""

    def new_ctx(self) -> dict[str, Any]:
        return {"tries": 0}

    def request_filter(self, session: Any, ctx: Any) -> bool:
        path = session.req_header.path
        if path.startswith("/respond"):
            session.respond(200, b"answered by the filter\n", [("X-Local", "1")])
            return True
        if path.startswith("/deny"):
            session.respond(403, b"", [("X-Denied", "yes")])
            return True
        if path.startswith("/raise"):
            raise RuntimeError("golden: a filter that raises")
        if path.startswith("/teapot"):
            raise ProxyError.http_status(418)
        return False

    def upstream_peer(self, session: Any, ctx: Any) -> Peer:
        ctx["tries"] += 1
        if session.req_header.path.startswith("/retry") and ctx["tries"] > 1:
            return SPARE
        return ORIGIN

    def fail_to_connect(self, session: Any, peer: Peer, ctx: Any, error: ProxyError) -> ProxyError:
        if session.req_header.path.startswith("/retry"):
            error.retry = True
        return error

    def upstream_request_filter(self, session: Any, request: Any, ctx: Any) -> None:
        if session.req_header.path.startswith("/edit"):
            request.headers["X-Golden"] = "edited"
            request.headers.remove("x-drop-me")
            request.path = request.path.replace("/edit", "/edited", 1)

    def response_filter(self, session: Any, response: Any, ctx: Any) -> None:
        if session.req_header.path.startswith("/edit"):
            response.headers["X-Golden-Response"] = "1"
            response.headers.remove("server")

    def response_body_filter(
        self, session: Any, body: bytes, end_of_stream: bool, ctx: Any
    ) -> bytes | None:
        if session.req_header.path.startswith("/upper"):
            return body.upper()
        return None

    def response_trailer_filter(self, session: Any, trailers: Headers, ctx: Any) -> None:
        if session.req_header.path.startswith("/edit"):
            trailers["X-Golden-Trailer"] = "1"


class GoldenAsync(GoldenProxy):
    """``async def`` phases: the core hands them to the adapter as RunFilter actions. A replay
    stands the recorded results in for deferred phases (it does not run them), so these phases
    act through what they return, not through side effects on the session."""

    async def request_filter(self, session: Any, ctx: Any) -> bool:  # type: ignore[override]
        if session.req_header.path.startswith("/raise"):
            raise RuntimeError("golden: an async filter that raises")
        return False

    async def upstream_peer(self, session: Any, ctx: Any) -> Peer:  # type: ignore[override]
        return GoldenProxy.upstream_peer(self, session, ctx)

    async def request_body_filter(  # type: ignore[override]
        self, session: Any, body: bytes, end_of_stream: bool, ctx: Any
    ) -> bytes | None:
        return body.upper()


class GoldenBlocking(GoldenProxy):
    """A ``@proxycore.blocking`` phase: run off the I/O loop by the adapter."""

    @proxycore.blocking
    def upstream_peer(self, session: Any, ctx: Any) -> Peer:
        return GoldenProxy.upstream_peer(self, session, ctx)
