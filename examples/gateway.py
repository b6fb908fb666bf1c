"""The README's worked example: an API gateway that denies /admin, rewrites headers both ways
and logs one line per request (to stderr).

Start an origin, then the gateway in front of it:

    python -m http.server 9000 &
    python examples/gateway.py --listen 127.0.0.1:8080 --origin 127.0.0.1:9000 --backend uvloop

or, with the defaults (127.0.0.1:9000) and proxycore's own command-line options:

    proxycore run examples.gateway:Gateway --listen 127.0.0.1:8080 --backend uvloop

Then: curl -i http://127.0.0.1:8080/        (200 from the origin, with X-Gateway)
      curl -i http://127.0.0.1:8080/admin   (403 from the gateway; the origin never sees it)

The README's "Worked example" is this file from the first import on, verbatim
(tests/test_readme.py checks it); conformance/test_examples.py runs it on every backend.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import proxycore

log = logging.getLogger("gateway")


class Ctx:
    def __init__(self) -> None:
        self.arrived = time.time()  # wall clock, for the origin
        self.started = time.monotonic()  # for the duration


class Gateway(proxycore.Proxy):
    def __init__(self, origin: str = "127.0.0.1:9000") -> None:
        self.origin = proxycore.Peer.parse(origin)

    def new_ctx(self) -> Ctx:
        return Ctx()

    def request_filter(self, session: proxycore.Session, ctx: Ctx) -> bool:
        if session.req_header.path.startswith("/admin"):
            session.respond(403, b"forbidden\n")  # answer directly: the origin never sees it
            return True
        return False

    def upstream_peer(self, session: proxycore.Session, ctx: Ctx) -> proxycore.Peer:
        return self.origin

    def upstream_request_filter(
        self, session: proxycore.Session, request: proxycore.RequestHeader, ctx: Ctx
    ) -> None:
        request.headers["X-Request-Start"] = f"t={ctx.arrived:.3f}"
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="an API gateway in front of one origin")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument("--origin", default="127.0.0.1:9000", metavar="HOST:PORT")
    p.add_argument("--backend", default="asyncio", choices=proxycore.BACKENDS)
    args = p.parse_args(argv)
    try:
        app = Gateway(args.origin)
    except ValueError as e:
        p.error(f"--origin: {e}")
    logging.basicConfig(level=logging.INFO)
    proxycore.run(app, listen=[args.listen], backend=args.backend)


if __name__ == "__main__":
    main()
