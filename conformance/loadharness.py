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
never retried.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from dataclasses import dataclass, field

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
            f"{self.retried} retried on a closed idle keep-alive connection"
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
