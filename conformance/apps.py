"""Small proxy applications for ``python -m proxycore run conformance.apps:Name``.

Each reads its upstream from the environment: ORIGIN_PORT (and DEAD_PORT where noted).
"""

from __future__ import annotations

import os
import sys
import time

import anyio

import proxycore


def _port(name: str = "ORIGIN_PORT") -> int:
    return int(os.environ[name])


class Base(proxycore.Proxy):
    def __init__(self):
        self.port = _port()

    def new_ctx(self):
        return {}

    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", self.port)


class HeaderApp(Base):
    """Adds X-Via: pc upstream and X-Resp: 1 downstream; /deny answered 403 directly."""

    def request_filter(self, session, ctx):
        if session.req_header.path.startswith("/deny"):
            session.respond(403, b"no\n", headers=[("X-A", "1")])
            return True
        return False

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.headers["X-Via"] = "pc"

    def response_filter(self, session, upstream_response, ctx):
        upstream_response.headers["X-Resp"] = "1"


RAISE_MARKER = "conformance-boom-marker"


class RaisingApp(Base):
    """``/raise/<phase>`` makes that phase raise RuntimeError(RAISE_MARKER)."""

    def _maybe(self, session, phase):
        if session.req_header.path == f"/raise/{phase}":
            raise RuntimeError(f"{RAISE_MARKER} in {phase}")

    def early_request_filter(self, session, ctx):
        self._maybe(session, "early_request_filter")

    def request_filter(self, session, ctx):
        self._maybe(session, "request_filter")
        return False

    def upstream_peer(self, session, ctx):
        self._maybe(session, "upstream_peer")
        return super().upstream_peer(session, ctx)

    def upstream_request_filter(self, session, upstream_request, ctx):
        self._maybe(session, "upstream_request_filter")

    def upstream_response_filter(self, session, upstream_response, ctx):
        self._maybe(session, "upstream_response_filter")

    def response_filter(self, session, upstream_response, ctx):
        self._maybe(session, "response_filter")


class RetryApp(Base):
    """First upstream_peer → DEAD_PORT (nothing listening); fail_to_connect marks the error
    retryable; the second call → ORIGIN_PORT. Upstream sees X-Tries and X-Reused."""

    def __init__(self):
        super().__init__()
        self.dead = _port("DEAD_PORT")

    def new_ctx(self):
        return {"tries": 0, "failed": []}

    def upstream_peer(self, session, ctx):
        ctx["tries"] += 1
        port = self.dead if ctx["tries"] == 1 else self.port
        return proxycore.Peer("127.0.0.1", port, connect_timeout=2, read_timeout=5)

    def fail_to_connect(self, session, peer, ctx, error):
        ctx["failed"].append(peer.port)
        error.retry = True
        return error

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.headers["X-Tries"] = str(ctx["tries"])
        upstream_request.headers["X-Failed"] = ",".join(map(str, ctx["failed"]))


class AsyncApp(Base):
    """``async def`` phases, written with anyio so they run on every backend (asyncio, uvloop,
    trio natively; gevent and threads on a private asyncio loop): /deny answered 403 after an
    await."""

    async def request_filter(self, session, ctx):
        await anyio.sleep(0.001)
        if session.req_header.path.startswith("/deny"):
            session.respond(403, b"async no\n", headers=[("X-A", "async")])
            return True
        return False

    async def upstream_peer(self, session, ctx):
        await anyio.sleep(0.001)
        return proxycore.Peer("127.0.0.1", self.port)

    async def upstream_request_filter(self, session, upstream_request, ctx):
        await anyio.sleep(0)
        upstream_request.headers["X-Async"] = "yes"


class BlockingApp(Base):
    """A ``@proxycore.blocking`` phase that sleeps 0.3 s for /slow: it must not hold up other
    requests. Under gevent the blocking call is gevent's (that is what gevent users write)."""

    @proxycore.blocking
    def request_filter(self, session, ctx):
        if session.req_header.path.startswith("/slow"):
            if os.environ.get("PROXYCORE_TEST_SLEEP") == "gevent":
                import gevent

                gevent.sleep(0.3)
            else:
                time.sleep(0.3)
        return False


class BodyApp(Base):
    """Request body upper-cased on its way up, response body lower-cased on its way down
    (same lengths, so Content-Length framing still holds)."""

    def request_body_filter(self, session, body, end_of_stream, ctx):
        return body.upper() if body else None

    def response_body_filter(self, session, body, end_of_stream, ctx):
        return body.lower() if body else None


class HeaderViewApp(Base):
    """Checks the request-header multimap API; answers 200 with what it saw (no upstream)."""

    def request_filter(self, session, ctx):
        h = session.req_header.headers
        parts = [
            f"method={session.req_header.method}",
            f"path={session.req_header.path}",
            f"get={h.get('x-multi')}",
            f"all={'|'.join(h.get_all('X-MULTI'))}",
            f"in={'x-multi' in h}",
            f"missing={h.get('x-nothing', 'dflt')}",
        ]
        h["X-Set"] = "1"
        h.add("X-Set", "2")
        parts.append(f"set={'|'.join(h.get_all('x-set'))}")
        h.remove("x-set")
        parts.append(f"removed={'x-set' not in h}")
        session.respond(200, ("\n".join(parts) + "\n").encode(), headers=[("X-View", "1")])
        return True


class LifecycleApp(Base):
    """Exercises connected_to_upstream, proxy_upstream_filter, fail_to_proxy and logging.

    /noup      proxy_upstream_filter → False without a response (502)
    /noup-resp proxy_upstream_filter answers 202 itself and returns False
    /dead      upstream_peer → DEAD_PORT; fail_to_proxy writes a custom 503 page
    Upstream sees X-Reused (from connected_to_upstream); every request logs a LOGPHASE line.
    """

    def __init__(self):
        super().__init__()
        self.dead = _port("DEAD_PORT")

    def proxy_upstream_filter(self, session, ctx):
        path = session.req_header.path
        if path == "/noup-resp":
            session.respond(202, b"answered in proxy_upstream_filter\n")
            return False
        return path != "/noup"

    def upstream_peer(self, session, ctx):
        if session.req_header.path == "/dead":
            return proxycore.Peer("127.0.0.1", self.dead)
        return proxycore.Peer("127.0.0.1", self.port)

    def connected_to_upstream(self, session, reused, peer, ctx):
        ctx["reused"] = reused
        ctx["peer_port"] = peer.port

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.headers["X-Reused"] = str(ctx.get("reused"))
        upstream_request.headers["X-Peer-Port"] = str(ctx.get("peer_port"))

    def upstream_response_filter(self, session, upstream_response, ctx):
        upstream_response.headers["X-Upstream-Filter"] = "1"

    def fail_to_proxy(self, session, error, ctx):
        if session.req_header.path == "/dead":
            session.respond(503, b"custom failure page\n", headers=[("X-Custom", "1")])
            return 503
        return super().fail_to_proxy(session, error, ctx)

    def logging(self, session, error, ctx):
        name = type(error).__name__ if error is not None else "None"
        print(f"LOGPHASE {session.req_header.path} {name}", file=sys.stderr, flush=True)


class PeerTimeoutApp(Base):
    """Per-peer read timeout of 0.5s (the server default stays long)."""

    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", self.port, connect_timeout=1, read_timeout=0.5)


class TlsApp(Base):
    """Copies what filters see of the client's TLS connection (``session.tls``) into upstream
    request headers; ``select_certificate`` serves the ``other.test`` certificate for SNI
    ``pick.test`` and refuses ``refuse.test``. Upstream from ORIGIN_PORT."""

    def select_certificate(self, server_name, client_addr):
        if server_name == "refuse.test":
            return False
        return "other.test" if server_name == "pick.test" else None

    def upstream_request_filter(self, session, upstream_request, ctx):
        t = session.tls
        h = upstream_request.headers
        if t is None:
            h["X-TLS"] = "none"
            return
        h["X-TLS"] = "yes"
        h["X-TLS-SNI"] = t.sni or "-"
        h["X-TLS-Version"] = t.version or "-"
        h["X-TLS-ALPN"] = t.alpn or "-"
        h["X-TLS-Client"] = t.client_subject.get("commonName", "-")
        h["X-TLS-Reused"] = str(t.session_reused)


class ConfiguredApp(proxycore.Proxy):
    """Configured from the file (``proxycore run conformance.apps:ConfiguredApp -c FILE``):
    its ``greeting`` section holds ``text`` (answered on /hello) and ``upstream`` (a port every
    other request goes to)."""

    def configure(self, sections):
        from proxycore.confschema import ConfigError

        g = sections.get("greeting")
        if not isinstance(g, dict):
            raise ConfigError(("greeting", "expected a mapping with text and upstream"))
        problems = [(f"greeting.{k}", "unknown field") for k in g if k not in ("text", "upstream")]
        if not isinstance(g.get("text"), str):
            problems.append(("greeting.text", "expected a string"))
        if not isinstance(g.get("upstream"), int):
            problems.append(("greeting.upstream", "expected a port number"))
        if problems:
            raise ConfigError(*problems)
        self.text, self.port = g["text"], g["upstream"]

    def request_filter(self, session, ctx):
        if session.req_header.path == "/hello":
            session.respond(200, self.text.encode())
            return True
        return False

    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", self.port)


class BindToApp(Base):
    """Every upstream connection from the source address in BIND_TO (Peer(bind_to=...))."""

    def upstream_peer(self, session, ctx):
        return proxycore.Peer("127.0.0.1", self.port, bind_to=os.environ["BIND_TO"])
