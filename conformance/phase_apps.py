"""Proxy applications for the conformance tests of ``session.respond`` and ``async def`` phases
(``python -m proxycore run conformance.phase_apps:Name``); the upstream is ORIGIN_PORT."""

from __future__ import annotations

import asyncio
import contextlib

import anyio

from conformance.apps import Base


class RespondApp(Base):
    """request_filter answers with ``respond(200, body, headers)``: /map with a dict, /pairs
    with a list of pairs, /bad with an int (uncaught: a 500), /bad-caught with a list of str
    (the TypeError is caught and its message sent back in a 418)."""

    def request_filter(self, session, ctx):
        path = session.req_header.path
        if path == "/map":
            session.respond(200, b"map\n", {"X-A": "1", "X-B": "2"})
        elif path == "/pairs":
            session.respond(200, b"pairs\n", [("X-A", "1"), ("X-B", "2")])
        elif path == "/bad":
            session.respond(200, b"bad\n", 5)
        elif path == "/bad-caught":
            try:
                session.respond(200, b"bad\n", ["X-A: 1"])
            except TypeError as e:
                session.respond(418, f"{type(e).__name__}: {e}\n".encode())
        else:
            return False
        return True


class LoopApp(Base):
    """An async request_filter that sleeps with anyio (/anyio), asyncio (/asyncio) or trio
    (/trio), or waits a moment on an asyncio queue made once and kept (/asyncio-kept), then
    answers 200 with the path."""

    def __init__(self):
        super().__init__()
        self.queue = None

    async def request_filter(self, session, ctx):
        path = session.req_header.path
        if path == "/anyio":
            await anyio.sleep(0.01)
        elif path == "/asyncio":
            await asyncio.sleep(0.01)
        elif path == "/asyncio-kept":
            if self.queue is None:
                self.queue = asyncio.Queue()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.get(), 0.001)  # binds it to the running loop
        elif path == "/trio":
            import trio

            await trio.sleep(0.01)
        else:
            return False
        session.respond(200, path[1:].encode() + b"\n")
        return True
