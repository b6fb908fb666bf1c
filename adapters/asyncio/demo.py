"""A small origin for ``proxycore demo``: answers every request with a JSON description of
what it received (so you can see what the proxy forwarded). Runs in a background thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["start_demo_origin"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "proxycore-demo-origin"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        payload = {
            "origin": "demo",
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body_bytes": len(body),
        }
        out = (json.dumps(payload, indent=2) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_demo_origin(host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
    """Start the demo origin in a daemon thread; returns its (host, port)."""
    httpd = ThreadingHTTPServer((host, port), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="demo-origin", daemon=True).start()
    addr = httpd.server_address
    return str(addr[0]), int(addr[1])
