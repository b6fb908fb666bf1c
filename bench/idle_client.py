"""Hold N idle keep-alive connections open to a proxy (helper for bench/run.py `idle`).

    python bench/idle_client.py --port P [--conns 10000] [--inflight 256] [--timeout 60]

Each connection sends one keep-alive `GET /small`, reads the whole response, then stays
open and idle. At most --inflight connections are being set up at once (no SYN-queue
overflow, no thundering herd). When all are idle (or --timeout passed) it prints one JSON
line {"ready": true, "open": n, ...} on stdout. Then, until stdin reaches EOF, it keeps
the sockets open; each "check" line on stdin answers with {"still_open": n} (connections
the proxy has not closed). On stdin EOF it closes everything and exits.

127.0.0.1 only; one process, non-blocking sockets + epoll. Raises its own RLIMIT_NOFILE
soft limit to the hard limit.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time
from typing import cast

HOST = "127.0.0.1"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--inflight", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--path", default="/small")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and a.conns + 32 > limit:
        print(json.dumps({"ready": False, "error": f"RLIMIT_NOFILE {limit} < {a.conns}+32"}))
        return 2

    req = f"GET {a.path} HTTP/1.1\r\nHost: {HOST}:{a.port}\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, bytearray] = {}  # connections being set up
    idle: list[socket.socket] = []
    errors: dict[str, int] = {}
    attempts = 0
    max_attempts = a.conns + max(100, a.conns // 10)
    t0 = time.monotonic()
    deadline = t0 + a.timeout

    def fail(s: socket.socket, why: str) -> None:
        errors[why] = errors.get(why, 0) + 1
        sel.unregister(s)
        state.pop(s, None)
        s.close()

    def response_complete(buf: bytearray) -> bool | None:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1").lower()
        if not head.startswith("http/1.1 200"):
            return None
        body = len(buf) - end - 4
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip() == "content-length":
                return body >= int(v)
            if k.strip() == "transfer-encoding" and "chunked" in v:
                return buf.endswith(b"0\r\n\r\n")
        return None  # no framing -> would close; not a keep-alive response

    while len(idle) < a.conns and time.monotonic() < deadline:
        while (
            len(state) < a.inflight and len(idle) + len(state) < a.conns and attempts < max_attempts
        ):
            attempts += 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((HOST, a.port))
            if rc not in (0, errno.EINPROGRESS):
                why = errno.errorcode.get(rc, str(rc))
                errors[why] = errors.get(why, 0) + 1
                s.close()
                continue
            state[s] = bytearray()
            sel.register(s, selectors.EVENT_WRITE)
        if not state:
            break  # out of attempts
        for key, ev in sel.select(timeout=0.5):
            s = cast(socket.socket, key.fileobj)
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(s, errno.errorcode.get(err, str(err)))
                    continue
                try:
                    s.send(req)  # ~50 bytes: one send on a fresh socket
                except OSError as e:
                    fail(s, type(e).__name__)
                    continue
                sel.modify(s, selectors.EVENT_READ)
            elif ev & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    fail(s, type(e).__name__)
                    continue
                if not data:
                    fail(s, "closed_before_response")
                    continue
                buf = state[s]
                buf += data
                done = response_complete(buf)
                if done is None:
                    fail(s, "bad_response")
                elif done:
                    sel.unregister(s)
                    del state[s]
                    idle.append(s)
    setup_s = time.monotonic() - t0
    for s in list(state):
        fail(s, "setup_timeout")

    print(
        json.dumps(
            {
                "ready": True,
                "open": len(idle),
                "wanted": a.conns,
                "attempts": attempts,
                "errors": errors,
                "setup_s": round(setup_s, 2),
            }
        ),
        flush=True,
    )

    # Hold. Watch the idle sockets for the proxy closing them, and stdin for commands.
    closed = 0
    for s in idle:
        sel.register(s, selectors.EVENT_READ)
    stdin_fd = sys.stdin.fileno()
    sel.register(stdin_fd, selectors.EVENT_READ)
    alive = set(idle)
    while True:
        for key, _ev in sel.select(timeout=1.0):
            if key.fd == stdin_fd:  # (stdin and the sockets are the only registrations)
                line = sys.stdin.readline()  # the harness writes whole lines
                if not line:
                    for s in idle:
                        s.close()
                    return 0
                if line.strip() == "check":
                    print(json.dumps({"still_open": len(alive), "closed": closed}), flush=True)
                continue
            s = cast(socket.socket, key.fileobj)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # (unexpected bytes on an idle keep-alive connection are ignored)
                sel.unregister(s)
                alive.discard(s)
                closed += 1


if __name__ == "__main__":
    sys.exit(main())
