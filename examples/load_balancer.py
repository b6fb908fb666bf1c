"""Pingora's load-balancer example, in proxycore.

Pingora's `examples/load_balancer.rs` round-robins over two upstreams with a TCP health check
run as a background service. Same here (plain HTTP upstreams; start two origins first, e.g.
`python -m http.server 9001` and `python -m http.server 9002`):

    python examples/load_balancer.py            # listens on 127.0.0.1:6188 like Pingora's
    curl -i http://127.0.0.1:6188/

Stop one origin: within a health-check interval it is marked unhealthy and skipped; start it
again and it rejoins.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import proxycore
from proxycore.health import HealthCheck, HealthChecker

UPSTREAMS = ["127.0.0.1:9001", "127.0.0.1:9002"]


class LB(proxycore.Proxy):
    def __init__(self) -> None:
        self.lb = proxycore.LoadBalancer(
            [proxycore.Backend(proxycore.Peer.parse(a)) for a in UPSTREAMS], "round_robin"
        )

    def services(self) -> list[Any]:
        # Pingora: `upstreams.set_health_check(TcpHealthCheck::new())`, frequency 1 s.
        return [HealthChecker(self.lb, HealthCheck("tcp", interval=1.0))]

    def upstream_peer(self, session: proxycore.Session, ctx: Any) -> proxycore.Peer | None:
        backend = self.lb.select()  # skips unhealthy backends
        return backend.peer if backend else None  # None: 502 with a log line

    def upstream_request_filter(
        self, session: proxycore.Session, request: proxycore.RequestHeader, ctx: Any
    ) -> None:
        request.headers["Host"] = "one.one.one.one"  # as in Pingora's example


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    backend = sys.argv[1] if len(sys.argv) > 1 else "uvloop"
    proxycore.run(LB(), listen=["127.0.0.1:6188"], backend=backend)
