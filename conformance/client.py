"""A raw-socket HTTP/1.x client that reports exactly what came over the wire.

:class:`Conn` reads responses with their framing (Content-Length, chunked + trailers,
close-delimited, no body for HEAD/204/304/1xx), records 1xx interim responses, and reports an
incomplete body (``complete=False``) instead of raising when the connection ends early.
Every socket operation has a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"


class Closed(Exception):
    """The connection ended (EOF or reset) before a complete response head."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_len: int = 0
    sha256: str = ""
    framing: str = "none"  # none | length | chunked | close
    complete: bool = True
    trailers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[Response] = field(default_factory=list)
    end: str = ""  # how a close-delimited / incomplete body ended: eof | reset | timeout

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def connection_tokens(self) -> set[str]:
        return {
            t.strip().lower()
            for v in self.header_all("connection")
            for t in v.split(",")
            if t.strip()
        }

    def json(self) -> dict:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return (
            f"<Response {self.version} {self.status} {self.reason!r} headers={self.headers} "
            f"framing={self.framing} body_len={self.body_len} complete={self.complete} "
            f"body={self.body[:200]!r}>"
        )


class Conn:
    """One client TCP connection to the proxy."""

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((HOST, port))
        except BaseException:
            self.sock.close()
            raise
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, returning False if the peer already closed/reset."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    # -- low level ---------------------------------------------------------------------
    def _fill(self, n: int = 262144) -> bool:
        """Read more into the buffer; False on EOF or reset. Raises TimeoutError."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(n)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill():
                raise Closed("connection ended inside a line")

    # -- responses ---------------------------------------------------------------------
    def read_head(self) -> Response:
        """Read one response head (may be a 1xx). Raises Closed if the connection ends."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(self.buf) > (1 << 20):
                raise ValueError("response head too long")
            if not self._fill():
                raise Closed(
                    f"connection {'reset' if self.reset else 'closed'} before a "
                    f"complete response head (got {bytes(self.buf[:200])!r})"
                )
        head = bytes(self.buf[:i])
        del self.buf[: i + 4]
        lines = head.split(b"\r\n")
        parts = lines[0].decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"bad status line {lines[0]!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k.decode("latin-1"), v.strip(b" \t").decode("latin-1")))
        return Response(version, status, reason, headers)

    def read_response(
        self, method: str = "GET", keep_body: bool = True, skip_1xx: bool = True, sink=None
    ) -> Response:
        """Read a complete response (1xx interim responses go to ``.informational``)."""
        interim = []
        while True:
            resp = self.read_head()
            if skip_1xx and 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.informational = interim
        self.read_body(resp, method, keep_body, sink)
        return resp

    def read_body(
        self, resp: Response, method: str = "GET", keep_body: bool = True, sink=None
    ) -> None:
        h = hashlib.sha256()
        parts: list[bytes] = []
        total = 0

        def take(data: bytes) -> None:
            nonlocal total
            total += len(data)
            h.update(data)
            if sink is not None:
                sink(data)
            if keep_body:
                parts.append(data)

        def take_buf(limit: int) -> int:
            n = min(limit, len(self.buf))
            if n:
                take(bytes(self.buf[:n]))
                del self.buf[:n]
            return n

        te = ",".join(resp.header_all("transfer-encoding")).lower().replace(" ", "")
        cl = resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
            resp.framing = "none"
        elif te:
            if te.split(",")[-1] == "chunked":
                resp.framing = "chunked"
                resp.complete = self._read_chunked(resp, take, take_buf)
            else:
                resp.framing = "close"
                self._read_to_close(resp, take_buf)
        elif cl is not None:
            resp.framing = "length"
            remaining = int(cl)
            while remaining > 0:
                if not self.buf and not self._fill():
                    resp.complete = False
                    resp.end = "reset" if self.reset else "eof"
                    break
                remaining -= take_buf(remaining)
        else:
            resp.framing = "close"
            self._read_to_close(resp, take_buf)
        resp.body = b"".join(parts)
        resp.body_len = total
        resp.sha256 = h.hexdigest()

    def _read_to_close(self, resp: Response, take_buf) -> None:
        while True:
            take_buf(len(self.buf))
            if not self._fill():
                break
        resp.end = "reset" if self.reset else "eof"

    def _read_chunked(self, resp: Response, take, take_buf) -> bool:
        try:
            while True:
                line = self._read_line(65536)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                remaining = size
                while remaining > 0:
                    if not self.buf and not self._fill():
                        raise Closed("inside chunk")
                    remaining -= take_buf(remaining)
                if self._read_line(8) != b"":
                    raise ValueError("chunk data not followed by CRLF")
            while True:
                line = self._read_line(65536)
                if not line:
                    return True
                k, _, v = line.partition(b":")
                resp.trailers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        except Closed:
            resp.end = "reset" if self.reset else "eof"
            return False

    # -- connection state --------------------------------------------------------------
    def wait_closed(self, timeout: float = 2.0) -> bool:
        """True if the peer closes (EOF or RST) within ``timeout``; extra bytes that arrive
        meanwhile are kept in ``self.buf``."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                try:
                    if not self._fill():
                        return True
                except TimeoutError:
                    return False
                except OSError:
                    self.eof = True
                    return True
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(old)

    def is_open(self, wait: float = 0.3) -> bool:
        """True if the connection is still open after ``wait`` seconds of quiet."""
        return not self.wait_closed(wait)


def build_request(
    method: str = "GET",
    target: str = "/",
    headers=None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
    host: str | None = "example.test",
    content_length: bool = True,
) -> bytes:
    """Serialize a request. ``headers`` is a list of (name, value) pairs."""
    lines = [f"{method} {target} {version}"]
    hs = list(headers or [])
    names = {k.lower() for k, _ in hs}
    if host is not None and "host" not in names:
        hs.insert(0, ("Host", host))
    if (
        body
        and content_length
        and "content-length" not in names
        and "transfer-encoding" not in names
    ):
        hs.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in hs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, piece: int = 1000, trailers=None) -> bytes:
    out = bytearray()
    for i in range(0, len(body), piece):
        c = body[i : i + piece]
        out += b"%x\r\n%s\r\n" % (len(c), c)
    out += b"0\r\n"
    for k, v in trailers or []:
        out += f"{k}: {v}\r\n".encode("latin-1")
    out += b"\r\n"
    return bytes(out)


def request(port: int, data: bytes, method: str = "GET", timeout: float = 5.0) -> Response:
    """One request on a fresh connection."""
    with Conn(port, timeout) as c:
        c.send(data)
        return c.read_response(method)


def get(port: int, target: str = "/", headers=None, timeout: float = 5.0) -> Response:
    return request(port, build_request("GET", target, headers), timeout=timeout)


def assert_serving(port: int, target: str = "/still-serving") -> Response:
    """A normal request on a fresh connection must get a 200."""
    r = get(port, target)
    assert r.status == 200, f"proxy no longer serves normal requests: {r!r}"
    return r
