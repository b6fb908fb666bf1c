"""A small origin for ``proxycore demo``: answers every request with a JSON description of
what it received (so you can see what the proxy forwarded). Runs in a background thread.
The banner that tells what to try is printed once the proxy's listener is bound (a hook of the
shared socket driver), so a proxy that cannot start never invites you to curl it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["announce_when_listening", "start_demo_origin"]


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


def announce_when_listening(origin: tuple[str, int], backend: str) -> None:
    """Print the demo's banner (with the address actually bound) once the proxy listens."""
    from proxycore.adapters._sockets import listening_hooks

    def banner(bound: list[tuple[str, int]]) -> None:
        listening_hooks.remove(banner)
        host, port = bound[0]
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(f"demo origin listening on http://{origin[0]}:{origin[1]}/")
        print(f"proxycore ({backend}) listening on http://{addr}/ — try:")
        print(f"    curl -i http://{addr}/hello")
        print(f"    curl -i -d 'some body' http://{addr}/echo")
        print("Ctrl-C to stop.", flush=True)

    listening_hooks.append(banner)
