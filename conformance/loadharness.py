"""Continuous client load for lifecycle tests (upgrades, reloads): kinds of clients that run
in threads against a proxy port until stopped, each request checked and recorded.

A test starts a :class:`Load` with the client kinds it wants, does its handovers or reloads,
then stops it and asserts on :attr:`Load.failures` (must be empty) and the records. A new kind
of client (HTTP/2, WebSocket) is a subclass of :class:`Client` with its own ``one``.

What counts as a failure: any request that did not get its complete, correct response — a
refused or reset connection, a connection closed before the response was complete, a wrong
status or body. One exception, which RFC 9112 §9.3.1 makes the client's job: a request sent
on a *reused* keep-alive connection that the server closed (while idle) before reading it —
the connection ended without a single byte of response — may be retried once on a new
connection, as every browser and HTTP library does for idempotent requests; such retries are
counted (``retried``), and a retry that fails is a failure. New connections and uploads are
never retried. On HTTP/2 (:class:`H2Streams`) the one retry is that of RFC 9113 §6.8/§8.1.4:
a request on a stream above the last stream id of a GOAWAY the server sent was not processed,
and is sent again on a new connection (counted in ``retried`` too); any other reset or cut
stream is a failure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

HOST = "127.0.0.1"
TIMEOUT = 20.0


@dataclass
class Record:
    kind: str
    started: float  # time.monotonic()
    ended: float
    origin: str  # X-Origin of the response


@dataclass
class Load:
    """Run ``clients`` against ``port`` in threads from :meth:`start` to :meth:`stop`."""

    port: int
    clients: list[Client]
    records: list[Record] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for c in self.clients:
            c.load = self
            for i in range(c.threads):
                t = threading.Thread(target=c.run, args=(i,), daemon=True)
                self.threads.append(t)
                t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(TIMEOUT + 5)
        stuck = [t for t in self.threads if t.is_alive()]
        if stuck:
            self.fail("load", f"{len(stuck)} client threads did not finish")

    def fail(self, kind: str, what: str) -> None:
        with self.lock:
            self.failures.append(f"{kind}: {what}")

    def record(self, kind: str, started: float, origin: str) -> None:
        with self.lock:
            self.records.append(Record(kind, started, time.monotonic(), origin))

    def count(self, kind: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.records if kind is None or r.kind == kind)

    def summary(self) -> str:
        with self.lock:
            kinds: dict[str, int] = {}
            for r in self.records:
                kinds[r.kind] = kinds.get(r.kind, 0) + 1
        parts = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        return (
            f"{sum(kinds.values())} requests ({parts}), {len(self.failures)} failed, "
            f"{self.retried} retried (HTTP/1.1: on a closed idle keep-alive connection; "
            "HTTP/2: above a GOAWAY's last stream id)"
        )


class Client:
    """One kind of client: ``threads`` threads each call :meth:`one` until the load stops."""

    kind = "client"
    threads = 1
    load: Load

    def __init__(self, threads: int = 1, pause: float = 0.0) -> None:
        self.threads = threads
        self.pause = pause

    def run(self, index: int) -> None:
        state: dict[str, object] = {}
        try:
            while not self.load.stopping.is_set():
                try:
                    self.one(state)
                except Exception as e:  # a failure of this request: recorded, go on
                    self.load.fail(self.kind, f"{type(e).__name__}: {e}")
                    self.reset(state)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            self.reset(state)

    def reset(self, state: dict[str, object]) -> None:
        conn = state.pop("conn", None)
        if isinstance(conn, http.client.HTTPConnection):
            conn.close()

    def one(self, state: dict[str, object]) -> None:
        raise NotImplementedError

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.load.port, timeout=TIMEOUT)

    def check(self, resp: http.client.HTTPResponse, body: bytes, expect: str) -> str:
        """The response's origin name; raises on a wrong status or body."""
        if resp.status != 200:
            raise AssertionError(f"status {resp.status}: {body[:200]!r}")
        info = json.loads(body)
        if info.get("target") != expect:
            raise AssertionError(f"answer for {info.get('target')!r}, asked {expect!r}")
        return resp.getheader("X-Origin") or "?"


class KeepAlive(Client):
    """GET after GET on one persistent connection (a new one when the server closes it)."""

    kind = "keepalive"

    def one(self, state: dict[str, object]) -> None:
        conn = state.get("conn")
        reused = isinstance(conn, http.client.HTTPConnection) and conn.sock is not None
        if not isinstance(conn, http.client.HTTPConnection):
            conn = state["conn"] = self.connection()
        n = int(state.get("n", 0)) + 1  # type: ignore[call-overload]
        state["n"] = n
        target = f"/keepalive/{n}"
        started = time.monotonic()
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            if not reused:
                raise
            # RFC 9112 §9.3.1: closed while idle, the request unread: retry once, new connection
            with self.load.lock:
                self.load.retried += 1
            conn.close()
            conn = state["conn"] = self.connection()
            started = time.monotonic()
            try:
                conn.request("GET", target)
                resp = conn.getresponse()
            except Exception as again:
                raise AssertionError(f"retry after {e!r} failed: {again!r}") from None
        body = resp.read()
        origin = self.check(resp, body, target)
        if resp.will_close:
            conn.close()
            state["conn"] = self.connection()
        self.load.record(self.kind, started, origin)


class NewConnections(Client):
    """One GET per new connection (``Connection: close``)."""

    kind = "new-connection"

    def one(self, state: dict[str, object]) -> None:
        conn = self.connection()
        started = time.monotonic()
        try:
            target = "/new"
            conn.request("GET", target, headers={"Connection": "close"})
            resp = conn.getresponse()
            origin = self.check(resp, resp.read(), target)
        finally:
            conn.close()
        self.load.record(self.kind, started, origin)


class Uploads(Client):
    """POST with a ``size``-byte body on a new connection; the origin's hash is checked."""

    kind = "upload"

    def __init__(self, threads: int = 1, pause: float = 0.0, size: int = 256 * 1024) -> None:
        super().__init__(threads, pause)
        self.size = size

    def one(self, state: dict[str, object]) -> None:
        n = int(state.get("n", 0)) + 1  # type: ignore[call-overload]
        state["n"] = n
        body = (b"%08d" % n) * (self.size // 8)
        conn = self.connection()
        started = time.monotonic()
        try:
            target = f"/upload/{n}"
            conn.request("POST", target, body=body, headers={"Content-Type": "application/x"})
            resp = conn.getresponse()
            answer = resp.read()
            origin = self.check(resp, answer, target)
            info = json.loads(answer)
            if info.get("body_sha256") != hashlib.sha256(body).hexdigest():
                raise AssertionError(f"upload {n}: the origin got other bytes: {info}")
        finally:
            conn.close()
        self.load.record(self.kind, started, origin)


class Slow:
    """One slow request (the origin answers after ``delay`` seconds) started on demand, e.g.
    just before a handover: :meth:`start`, then :meth:`result` (raises if it failed)."""

    def __init__(self, port: int, delay: float = 2.0) -> None:
        self.port = port
        self.delay = delay
        self.outcome: str | BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Slow:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        target = f"/delay/{self.delay:g}"
        conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or json.loads(body).get("target") != target:
                raise AssertionError(f"slow request: status {resp.status}, {body[:200]!r}")
            self.outcome = resp.getheader("X-Origin") or "?"
        except BaseException as e:
            self.outcome = e
        finally:
            conn.close()

    def result(self) -> str:
        assert self.thread is not None
        self.thread.join(TIMEOUT + 5)
        if isinstance(self.outcome, BaseException):
            raise AssertionError(f"the slow request in flight failed: {self.outcome!r}")
        if self.outcome is None:
            raise AssertionError("the slow request in flight did not finish")
        return self.outcome


class _GoawayTolerant(h2.connection.H2ConnectionStateMachine):
    """``h2``'s client state machine, except that a GOAWAY leaves the connection open: RFC
    9113 §6.8 lets the streams at or below its last stream id complete, which ``h2`` (4.x)
    would treat as a protocol error (so would httpx/httpcore, which use it)."""

    _transitions = dict(h2.connection.H2ConnectionStateMachine._transitions)
    for _state in (h2.connection.ConnectionState.IDLE, h2.connection.ConnectionState.CLIENT_OPEN):
        _transitions[(_state, h2.connection.ConnectionInputs.RECV_GOAWAY)] = (None, _state)
    del _state


@dataclass
class _H2Request:
    target: str
    started: float
    status: int = 0
    origin: str = "?"
    body: bytearray = field(default_factory=bytearray)


class H2ClientConnection:
    """One h2c (prior knowledge) connection of :class:`H2Streams`."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.state_machine = _GoawayTolerant()
        self.h2.initiate_connection()
        self.streams: dict[int, _H2Request] = {}
        self.last: int | None = None  # the last stream id of the GOAWAY received
        self.ended = False
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, target: str) -> None:
        sid = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", b"GET"),
            (b":path", target.encode()),
            (b":scheme", b"http"),
            (b":authority", f"{HOST}".encode()),
        ]
        self.h2.send_headers(sid, fields, end_stream=True)
        self.streams[sid] = _H2Request(target, time.monotonic())

    def close(self) -> None:
        self.ended = True
        self.sock.close()


class H2Streams(Client):
    """HTTP/2 (h2c, prior knowledge): ``inflight`` GETs at a time on one connection, a new
    stream as each one ends; on GOAWAY no new stream on that connection (a new connection
    for the next ones), the streams at or below its last stream id awaited, those above it
    sent again on the new connection (the only retry allowed, RFC 9113 §6.8/§8.1.4)."""

    kind = "h2"

    def __init__(self, threads: int = 1, pause: float = 0.0, inflight: int = 4) -> None:
        super().__init__(threads, pause)
        self.inflight = inflight

    def reset(self, state: dict[str, object]) -> None:
        conn = state.pop("h2", None)
        if isinstance(conn, H2ClientConnection):
            conn.close()

    def one(self, state: dict[str, object]) -> None:
        """Fill the connection up to ``inflight`` streams, then read until one ends."""
        retry = state.setdefault("retry", [])
        assert isinstance(retry, list)
        conn = state.get("h2")
        if (
            not isinstance(conn, H2ClientConnection)
            or conn.ended
            or (conn.last is not None and not conn.streams)
        ):
            if isinstance(conn, H2ClientConnection):
                conn.close()
            conn = state["h2"] = H2ClientConnection(self.load.port)
        if conn.last is None:
            while len(conn.streams) < self.inflight:
                if retry:
                    conn.request(retry.pop(0))
                else:
                    n = int(state.get("n", 0)) + 1  # type: ignore[call-overload]
                    state["n"] = n
                    conn.request(f"/h2/{n}")
            conn.flush()
        done = 0
        while not done and conn.streams:
            data = conn.sock.recv(65536)
            if not data:
                conn.ended = True
                self._cut(conn, retry, "the connection closed")
                return
            events = conn.h2.receive_data(data)
            for ev in events:
                done += self._event(conn, ev, retry)
            conn.flush()

    def _event(self, conn: H2ClientConnection, ev: object, retry: list[str]) -> int:
        if isinstance(ev, h2.events.ResponseReceived):
            rq = conn.streams.get(ev.stream_id)
            if rq is not None:
                hdrs = dict(ev.headers)
                rq.status = int(hdrs.get(b":status", b"0"))
                rq.origin = hdrs.get(b"x-origin", b"?").decode()
        elif isinstance(ev, h2.events.DataReceived):
            rq = conn.streams.get(ev.stream_id)
            if rq is not None:
                rq.body += ev.data
            conn.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            rq = conn.streams.pop(ev.stream_id, None)
            if rq is not None:
                self._check(rq)
                return 1
        elif isinstance(ev, h2.events.StreamReset):
            rq = conn.streams.pop(ev.stream_id, None)
            if rq is not None:
                if conn.last is not None and ev.stream_id > conn.last:
                    self._retry(rq, retry)
                else:
                    self.load.fail(
                        self.kind, f"{rq.target}: stream {ev.stream_id} reset ({ev.error_code!r})"
                    )
                return 1
        elif isinstance(ev, h2.events.ConnectionTerminated):
            last = ev.last_stream_id if ev.last_stream_id is not None else 0
            conn.last = last if conn.last is None else min(conn.last, last)
            if ev.error_code:
                self.load.fail(self.kind, f"GOAWAY {ev.error_code!r} ({ev.additional_data!r})")
            for sid in [sid for sid in conn.streams if sid > conn.last]:
                self._retry(conn.streams.pop(sid), retry)
            return 1 if not conn.streams else 0
        return 0

    def _check(self, rq: _H2Request) -> None:
        try:
            if rq.status != 200:
                raise AssertionError(f"status {rq.status}: {bytes(rq.body[:200])!r}")
            target = json.loads(rq.body).get("target")
            if target != rq.target:
                raise AssertionError(f"answer for {target!r}, asked {rq.target!r}")
        except Exception as e:
            self.load.fail(self.kind, f"{rq.target}: {type(e).__name__}: {e}")
            return
        self.load.record(self.kind, rq.started, rq.origin)

    def _retry(self, rq: _H2Request, retry: list[str]) -> None:
        with self.load.lock:
            self.load.retried += 1
        retry.append(rq.target)

    def _cut(self, conn: H2ClientConnection, retry: list[str], why: str) -> None:
        """The connection ended: streams above a GOAWAY's last id are retried, any other
        stream still open failed."""
        lost = []
        for sid, rq in sorted(conn.streams.items()):
            if conn.last is not None and sid > conn.last:
                self._retry(rq, retry)
            else:
                lost.append(f"{rq.target} (stream {sid})")
        conn.streams.clear()
        if lost:
            self.load.fail(self.kind, f"{why} with {len(lost)} streams open: {', '.join(lost)}")
