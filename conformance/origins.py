"""Origin servers for the conformance suite: small threaded raw-socket HTTP/1.1 servers.

Every origin listens on 127.0.0.1 on an ephemeral port, handles each TCP connection in its own
daemon thread, and records what it saw so tests can check what reached the upstream:

- ``accepts``: TCP connections accepted
- ``heads``: request heads parsed (incremented as soon as a head arrives)
- ``requests``: complete requests (head + whole body) as :class:`Request` records
- ``head_event``: set whenever a head arrives (tests of request-body streaming)

A new kind of origin subclasses :class:`Origin` and overrides :meth:`Origin.respond` (called
once per complete request, returns False to close the connection) or :meth:`Origin.handle`
(the whole connection). Every blocking call has a timeout; :meth:`Origin.stop` closes all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
IO_TIMEOUT = 10.0  # any single recv/send in an origin
MAX_HEAD = 1 << 20

BLOCK = bytes(range(256)) * 256  # 64 KiB deterministic pattern for large bodies


def pattern(size: int) -> bytes:
    """The first ``size`` bytes of the repeating pattern (for small sizes)."""
    reps = size // len(BLOCK) + 1
    return (BLOCK * reps)[:size]


def pattern_chunks(size: int, piece: int = 65536):
    """Yield the pattern of ``size`` bytes in pieces of ``piece`` bytes (piece divides 64K)."""
    sent = 0
    while sent < size:
        n = min(piece, size - sent)
        off = sent % len(BLOCK)
        if off + n <= len(BLOCK):
            yield BLOCK[off : off + n]
        else:
            yield (BLOCK[off:] + BLOCK)[:n]
        sent += n


def pattern_sha256(size: int) -> str:
    h = hashlib.sha256()
    for c in pattern_chunks(size):
        h.update(c)
    return h.hexdigest()


class ClientGone(Exception):
    """The proxy closed or reset the upstream connection."""


class BadRequest(Exception):
    """The origin could not parse what the proxy sent."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    conn_id: int = 0
    index_on_conn: int = 0

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has(self, name: str) -> bool:
        return self.header(name) is not None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def to_json(self) -> bytes:
        d = {
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": self.headers,
            "body_len": len(self.body),
            "body_sha256": hashlib.sha256(self.body).hexdigest(),
            "body": self.body[:4096].decode("latin-1"),
            "chunked": self.chunked,
            "trailers": self.trailers,
            "conn_id": self.conn_id,
            "index_on_conn": self.index_on_conn,
        }
        return json.dumps(d).encode()


class Stream:
    """A buffered reader over a socket with a per-recv timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> None:
        try:
            data = self.sock.recv(262144)
        except (OSError, ValueError) as e:
            raise ClientGone(str(e)) from None
        if not data:
            raise ClientGone("eof")
        self.buf += data

    def read_until(self, delim: bytes, limit: int = MAX_HEAD) -> bytes:
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            start = max(0, len(self.buf) - len(delim) + 1)
            self.fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, max_n: int) -> bytes:
        if not self.buf:
            self.fill()
        out = bytes(self.buf[:max_n])
        del self.buf[:max_n]
        return out


def parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obs-fold")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad field line {line!r}")
        out.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return out


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the kernel sends a TCP RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Origin:
    """Base: accept loop, per-connection threads, request parsing, bookkeeping."""

    name = "origin"

    def __init__(self, name: str | None = None, port: int = 0):
        if name:
            self.name = name
        self.lock = threading.Lock()
        self.accepts = 0
        self.heads = 0
        self.requests: list[Request] = []
        self.head_event = threading.Event()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))  # port: restart an origin where it was
        self.listener.listen(4096)  # many concurrent upstream connects must not drop SYNs
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-accept", daemon=True
        )
        self._accept_thread.start()

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def snapshot(self) -> tuple[int, int, int]:
        """(accepts, heads, complete requests)."""
        with self.lock:
            return self.accepts, self.heads, len(self.requests)

    def wait_requests(self, n: int, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request_count >= n:
                return True
            time.sleep(0.01)
        return self.request_count >= n

    def last(self) -> Request:
        with self.lock:
            assert self.requests, f"origin {self.name} received no complete request"
            return self.requests[-1]

    # -- server loop -------------------------------------------------------------------
    def _accept_loop(self) -> None:
        conn_id = 0
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn_id += 1
            sock.settimeout(IO_TIMEOUT)
            with self.lock:
                self.accepts += 1
                self._conns.add(sock)
            t = threading.Thread(
                target=self._run_conn,
                args=(sock, conn_id),
                name=f"{self.name}-c{conn_id}",
                daemon=True,
            )
            self._threads.append(t)
            t.start()

    def _run_conn(self, sock: socket.socket, conn_id: int) -> None:
        try:
            self.handle(sock, Stream(sock), conn_id)
        except (ClientGone, TimeoutError, OSError):
            pass
        except BadRequest as e:
            with self.lock:
                self.errors.append(str(e))
            with contextlib.suppress(OSError):
                sock.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
        except Exception as e:  # never let a thread exception escape (filterwarnings=error)
            with self.lock:
                self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            with self.lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self._accept_thread.join(2)
        with self.lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(2)

    # -- HTTP --------------------------------------------------------------------------
    def read_head(self, st: Stream) -> tuple[str, str, str, list[tuple[str, str]]]:
        head = st.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise BadRequest(f"bad request line {lines[0]!r}")
        method, target, version = (p.decode("latin-1") for p in parts)
        headers = parse_fields(lines[1:])
        with self.lock:
            self.heads += 1
        self.head_event.set()
        return method, target, version, headers

    def read_body(self, st: Stream, req: Request, sock: socket.socket) -> None:
        te = ",".join(req.header_all("transfer-encoding")).lower()
        if te:
            if te.replace(" ", "").split(",")[-1] != "chunked":
                raise BadRequest(f"unsupported transfer-encoding {te!r}")
            req.chunked = True
            body = bytearray()
            while True:
                line = st.read_until(b"\r\n", 4096)
                size_s = line[:-2].split(b";", 1)[0].strip()
                if not size_s or any(c not in b"0123456789abcdefABCDEF" for c in size_s):
                    raise BadRequest(f"bad chunk size {line!r}")
                size = int(size_s, 16)
                if size == 0:
                    break
                body += st.read_exact(size)
                if st.read_exact(2) != b"\r\n":
                    raise BadRequest("chunk without CRLF")
            tlines = []
            while True:
                line = st.read_until(b"\r\n", 65536)
                if line == b"\r\n":
                    break
                tlines.append(line[:-2])
            req.trailers = parse_fields(tlines)
            req.body = bytes(body)
            return
        cls = req.header_all("content-length")
        if cls:
            if len(cls) != 1 or not cls[0].isdigit():
                raise BadRequest(f"bad content-length {cls!r}")
            n = int(cls[0])
            if n > 0 and "100-continue" in (req.header("expect") or "").lower():
                self.send_continue(sock, req)
            req.body = st.read_exact(n)

    def send_continue(self, sock: socket.socket, req: Request) -> None:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read_request(self, st: Stream, sock: socket.socket, conn_id: int, idx: int) -> Request:
        method, target, version, headers = self.read_head(st)
        req = Request(method, target, version, headers, conn_id=conn_id, index_on_conn=idx)
        self.before_body(sock, req)
        self.read_body(st, req, sock)
        with self.lock:
            self.requests.append(req)
        return req

    def before_body(self, sock: socket.socket, req: Request) -> None:
        """Hook: called after the head, before the body is read."""

    def handle(self, sock: socket.socket, st: Stream, conn_id: int) -> None:
        idx = 0
        while not self._stop.is_set():
            try:
                if not st.buf:
                    st.fill()
            except ClientGone:
                return
            req = self.read_request(st, sock, conn_id, idx)
            idx += 1
            keep = self.respond(sock, req)
            if (
                req.version == "HTTP/1.0"
                and "keep-alive" not in (req.header("connection") or "").lower()
            ):
                keep = False
            if "close" in (req.header("connection") or "").lower():
                keep = False
            if not keep:
                return

    def respond(self, sock: socket.socket, req: Request) -> bool:
        raise NotImplementedError

    @staticmethod
    def head_bytes(
        status: int, reason: str, headers: list[tuple[str, str]], version: str = "HTTP/1.1"
    ) -> bytes:
        lines = [f"{version} {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


HOP_RESPONSE_HEADERS = [
    ("Connection", "X-Hop-Resp"),
    ("X-Hop-Resp", "1"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("Proxy-Authenticate", 'Basic realm="x"'),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "foo/1"),
    ("TE", "trailers"),
    ("X-End-To-End", "yes"),
]


class EchoOrigin(Origin):
    """Normal keep-alive HTTP/1.1 origin. Answers every request with a JSON description of
    what it received (method, target, headers, body length/hash, trailers).

    Paths with special meaning:
      /status/NNN    answer status NNN (204 and 304 without a body)
      /hop           add hop-by-hop headers (HOP_RESPONSE_HEADERS) to the response
      /close         answer with Connection: close and close
      /delay/S       sleep S seconds (at most 3) before answering
      /bytes/N       N pattern bytes with Content-Length
      /chunked/N     N pattern bytes, chunked, with trailer X-Checksum: <sha256>
    HEAD gets the headers (incl. Content-Length) GET would get, without a body.
    """

    name = "echo"

    def respond(self, sock: socket.socket, req: Request) -> bool:
        path = req.path
        if path.startswith("http://"):
            path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
        base = [("X-Origin", self.name), ("X-Origin-Conn", str(req.conn_id))]
        if path.startswith("/delay/"):
            self._stop.wait(min(float(path.split("/")[2]), 3.0))
        head_only = req.method == "HEAD"
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            if status in (204, 304):
                extra = [("ETag", '"abc"')] if status == 304 else []
                sock.sendall(self.head_bytes(status, "X", base + extra))
                return True
        else:
            status = 200
        if path.startswith("/bytes/"):
            n = int(path.split("/")[2])
            sock.sendall(
                self.head_bytes(
                    status,
                    "OK",
                    [*base, ("Content-Length", str(n)), ("Content-Type", "application/x")],
                )
            )
            if not head_only:
                for c in pattern_chunks(n):
                    sock.sendall(c)
            return True
        if path.startswith("/chunked/"):
            n = int(path.split("/")[2])
            sock.sendall(
                self.head_bytes(
                    status,
                    "OK",
                    [*base, ("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")],
                )
            )
            if not head_only:
                for c in pattern_chunks(n, 16384):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(c), c))
                sock.sendall(f"0\r\nX-Checksum: {pattern_sha256(n)}\r\n\r\n".encode())
            return True
        body = req.to_json()
        headers = [*base, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if path == "/hop":
            headers += HOP_RESPONSE_HEADERS
        keep = True
        if path == "/close":
            headers.append(("Connection", "close"))
            keep = False
        sock.sendall(self.head_bytes(status, "OK", headers) + (b"" if head_only else body))
        return keep


class InfoOrigin(EchoOrigin):
    """Sends ``103 Early Hints`` (Link header) before every final response, and
    ``100 Continue`` when the request has ``Expect: 100-continue``."""

    name = "info"

    def respond(self, sock: socket.socket, req: Request) -> bool:
        sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        return super().respond(sock, req)


class SlowOrigin(EchoOrigin):
    """Sleeps ``head_delay`` before the response head, then sends ``chunks`` pieces of
    ``piece`` bytes (Content-Length framing), sleeping ``chunk_delay`` between pieces."""

    name = "slow"

    def __init__(self, head_delay=0.0, chunk_delay=0.0, chunks=3, piece=1000, name=None):
        self.head_delay = head_delay
        self.chunk_delay = chunk_delay
        self.chunks = chunks
        self.piece = piece
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        if self._stop.wait(self.head_delay):
            return False
        total = self.chunks * self.piece
        sock.sendall(
            self.head_bytes(200, "OK", [("Content-Length", str(total)), ("X-Origin", self.name)])
        )
        data = pattern(total)
        for i in range(self.chunks):
            if i and self._stop.wait(self.chunk_delay):
                return False
            sock.sendall(data[i * self.piece : (i + 1) * self.piece])
        return True


class ResetOrigin(Origin):
    """Resets the connection (SO_LINGER 0) at a chosen point:
    mode="before_head"        after reading the request, before any response byte
    mode="eof_before_head"    same point, but a clean close (FIN) instead of a reset
    mode="mid_body_length"    after the head (Content-Length: total) and ``sent`` bytes
    mode="mid_body_chunked"   after a chunked head and one chunk of ``sent`` bytes
    """

    name = "reset"

    def __init__(self, mode: str, total: int = 100000, sent: int = 1000, name=None):
        assert mode in ("before_head", "eof_before_head", "mid_body_length", "mid_body_chunked")
        self.mode = mode
        self.total = total
        self.sent = sent
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        if self.mode == "mid_body_length":
            sock.sendall(
                self.head_bytes(200, "OK", [("Content-Length", str(self.total))])
                + pattern(self.sent)
            )
        elif self.mode == "mid_body_chunked":
            sock.sendall(
                self.head_bytes(200, "OK", [("Transfer-Encoding", "chunked")])
                + b"%x\r\n%s\r\n" % (self.sent, pattern(self.sent))
            )
        if self.mode == "eof_before_head":
            sock.shutdown(socket.SHUT_RDWR)
            return False
        if self.mode != "before_head":
            time.sleep(0.2)  # let the proxy forward what it got before the RST
        rst_close(sock)
        return False


class GarbageOrigin(Origin):
    """Answers every request with bytes that are not HTTP, then closes."""

    name = "garbage"

    def respond(self, sock: socket.socket, req: Request) -> bool:
        sock.sendall(b"SSH-2.0-OpenSSH_9.0 this is not http\r\n\x00\x01\x02\r\n\r\n")
        return False


class Http10Origin(EchoOrigin):
    """An HTTP/1.0 origin: ``HTTP/1.0 200 OK`` with no Content-Length; the body ends when
    the connection closes (read-until-close). Body: ``size`` pattern bytes."""

    name = "http10"

    def __init__(self, size: int = 200000, name=None):
        self.size = size
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        sock.sendall(
            self.head_bytes(
                200,
                "OK",
                [("Content-Type", "application/x"), ("X-Origin", self.name)],
                version="HTTP/1.0",
            )
        )
        for c in pattern_chunks(self.size, 8192):
            sock.sendall(c)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return False


class LargeOrigin(EchoOrigin):
    """Streams ``size`` pattern bytes for any path (Content-Length, or chunked when
    ``chunked=True``), writing as fast as the proxy reads."""

    name = "large"

    def __init__(self, size: int = 32 << 20, chunked: bool = False, name=None):
        self.size = size
        self.chunked = chunked
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        if self.chunked:
            sock.sendall(self.head_bytes(200, "OK", [("Transfer-Encoding", "chunked")]))
            for c in pattern_chunks(self.size):
                sock.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            sock.sendall(b"0\r\n\r\n")
        else:
            sock.sendall(self.head_bytes(200, "OK", [("Content-Length", str(self.size))]))
            for c in pattern_chunks(self.size):
                sock.sendall(c)
        return True


class RawOrigin(Origin):
    """Answers every request with fixed raw bytes (any framing, valid or not), then keeps
    the connection (``close=False``) or closes it."""

    name = "raw"

    def __init__(self, raw: bytes, close: bool = True, name=None):
        self.raw = raw
        self.close = close
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        sock.sendall(self.raw)
        if self.close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        return not self.close


class SilentOrigin(Origin):
    """Reads the request and never answers (until stopped)."""

    name = "silent"

    def respond(self, sock: socket.socket, req: Request) -> bool:
        self._stop.wait(30)
        return False


class WatchOrigin(Origin):
    """Reads the request, never answers, and records in ``closes`` how the proxy then closed
    the connection: "reset" (a TCP RST) or "fin" (an orderly close)."""

    name = "watch"

    def __init__(self, name=None):
        self.closes: list[str] = []
        super().__init__(name)

    def respond(self, sock: socket.socket, req: Request) -> bool:
        sock.settimeout(10)
        try:
            how = "fin" if not sock.recv(1) else "data"
        except ConnectionResetError:
            how = "reset"
        with self.lock:
            self.closes.append(how)
        return False


# free_port hands out ports that a process started later binds, so two pytest-xdist workers
# (or the kernel, for an outgoing connection or a bind to port 0) must never hand out the same
# one in between: each worker takes ports from its own block below the ephemeral range
# (net.ipv4.ip_local_port_range starts at 32768), in turn, skipping any that are taken.
_PORT_BLOCK = 2000
_PORT_BASE = 12000
_port_next = 0


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # "gw0", "gw1", ... or unset
    digits = name[2:] if name.startswith("gw") else ""
    return int(digits) % 10 if digits.isdigit() else 0


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening, from this test worker's own block."""
    global _port_next
    base = _PORT_BASE + _worker_index() * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + _port_next
        _port_next = (_port_next + 1) % _PORT_BLOCK
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
        try:
            s.bind((HOST, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1}")
