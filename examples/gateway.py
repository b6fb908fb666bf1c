"""The README's worked example: an API gateway with auth, header rewriting and logging.

Run it (an origin must listen on 127.0.0.1:9000, e.g. `python -m http.server 9000`):

    python examples/gateway.py                       # asyncio
    python examples/gateway.py uvloop                # or any backend name
    proxycore run examples.gateway:Gateway --listen 127.0.0.1:8080 --backend uvloop

Then: curl -i http://127.0.0.1:8080/            (200 from the origin, with X-Gateway)
      curl -i http://127.0.0.1:8080/admin       (403 from the gateway, origin never sees it)
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import proxycore

log = logging.getLogger("gateway")


class Ctx:
    def __init__(self) -> None:
        self.started = time.monotonic()


class Gateway(proxycore.Proxy):
    def __init__(self, origin: str = "127.0.0.1:9000") -> None:
        self.origin = proxycore.Peer.parse(origin)

    def new_ctx(self) -> Ctx:
        return Ctx()

    def request_filter(self, session: proxycore.Session, ctx: Ctx) -> bool:
        # Answer directly: the origin never sees /admin.
        if session.req_header.path.startswith("/admin"):
            session.respond(403, b"forbidden\n")
            return True
        return False

    def upstream_peer(self, session: proxycore.Session, ctx: Ctx) -> proxycore.Peer:
        return self.origin

    def upstream_request_filter(
        self, session: proxycore.Session, request: proxycore.RequestHeader, ctx: Ctx
    ) -> None:
        request.headers["X-Request-Start"] = f"t={ctx.started:.3f}"
        request.headers.remove("Cookie")  # the origin is cookie-free

    def response_filter(
        self, session: proxycore.Session, response: proxycore.ResponseHeader, ctx: Ctx
    ) -> None:
        response.headers["X-Gateway"] = "proxycore"
        response.headers.remove("Server")

    def logging(self, session: proxycore.Session, error: Any, ctx: Ctx) -> None:
        ms = (time.monotonic() - ctx.started) * 1000
        req = session.req_header
        log.info(
            "%s %s -> %d in %.2f ms%s",
            req.method,
            req.path,
            session.response_status,
            ms,
            f" error={error.etype.value}" if error else "",
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    proxycore.run(Gateway(), listen=["127.0.0.1:8080"], backend=backend)
