"""A plain aiohttp (+uvloop) reverse proxy: the "typical Python proxy" baseline.

Deliberately unremarkable: aiohttp's web server, one shared ClientSession with a
keep-alive connector, request body and response body streamed through, hop-by-hop
headers dropped. No tricks (no raw transports, no response caching, no header
shortcuts) -- this is what someone would write in an afternoon.

    python bench/aiohttp_proxy.py --listen 127.0.0.1:8081 --to 127.0.0.1:8080 [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

# RFC 9110 7.6.1 connection-specific headers, plus the ones aiohttp recomputes itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
CHUNK = 64 * 1024


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def serve(listen: str, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
    session = aiohttp.ClientSession(
        base_url=f"http://{upstream}",
        connector=connector,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.body_exists else None
        async with session.request(
            request.method,
            request.rel_url,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream_resp:
            resp = web.StreamResponse(status=upstream_resp.status, reason=upstream_resp.reason)
            for k, v in upstream_resp.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            async for chunk in upstream_resp.content.iter_chunked(CHUNK):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = _split(listen)
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT to listen on")
    ap.add_argument("--to", required=True, help="upstream HOST:PORT")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args.listen, args.to))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
