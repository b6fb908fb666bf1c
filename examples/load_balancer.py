"""Pingora's load-balancer example, in proxycore.

Pingora's `examples/load_balancer.rs` round-robins over two upstreams with a TCP health check
run as a background service. Same here, over plain HTTP upstreams. Start two origins, then the
balancer in front of them (the defaults are these addresses; 6188 is Pingora's port):

    python -m http.server 9001 & python -m http.server 9002 &
    python examples/load_balancer.py --listen 127.0.0.1:6188 \
        --origin 127.0.0.1:9001 --origin 127.0.0.1:9002 --backend uvloop
    curl -i http://127.0.0.1:6188/

or `proxycore run examples.load_balancer:LB --listen 127.0.0.1:6188` (default origins).
Stop one origin: within a health-check interval (`--health-interval`, 1 s) it is marked
unhealthy (a log line) and skipped; start it again and it rejoins.
conformance/test_examples.py runs it on every backend.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

import proxycore
from proxycore.health import HealthCheck, HealthChecker

ORIGINS = ("127.0.0.1:9001", "127.0.0.1:9002")


class LB(proxycore.Proxy):
    def __init__(self, origins: Sequence[str] = ORIGINS, health_interval: float = 1.0) -> None:
        self.lb = proxycore.LoadBalancer(
            [proxycore.Backend(proxycore.Peer.parse(a)) for a in origins], "round_robin"
        )
        # Pingora: `upstreams.set_health_check(TcpHealthCheck::new())`, frequency 1 s.
        self.check = HealthCheck("tcp", interval=health_interval)

    def services(self) -> list[Any]:
        return [HealthChecker(self.lb, self.check)]

    def upstream_peer(self, session: proxycore.Session, ctx: Any) -> proxycore.Peer | None:
        backend = self.lb.select()  # skips unhealthy backends
        return backend.peer if backend else None  # None: 502 with a log line

    def upstream_request_filter(
        self, session: proxycore.Session, request: proxycore.RequestHeader, ctx: Any
    ) -> None:
        request.headers["Host"] = "one.one.one.one"  # as in Pingora's example


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="round robin over origins with a TCP health check")
    p.add_argument("--listen", default="127.0.0.1:6188", metavar="HOST:PORT")
    p.add_argument(
        "--origin",
        action="append",
        metavar="HOST:PORT",
        help=f"an upstream (repeatable; default: {' and '.join(ORIGINS)})",
    )
    p.add_argument("--health-interval", type=float, default=1.0, metavar="S")
    p.add_argument("--backend", default="asyncio", choices=proxycore.BACKENDS)
    args = p.parse_args(argv)
    if not args.health_interval > 0:
        p.error("--health-interval: expected a positive number of seconds")
    try:
        app = LB(args.origin or ORIGINS, args.health_interval)
    except ValueError as e:
        p.error(f"--origin: {e}")
    logging.basicConfig(level=logging.INFO)
    proxycore.run(app, listen=[args.listen], backend=args.backend)


if __name__ == "__main__":
    main()
