"""An ``async def`` phase that fails because it used one event-loop library's own calls where
the backend runs async phases on another: the 500's log line names that cause. The coroutines
are really run here on the library each backend uses (trio for trio, a fresh asyncio loop for
gevent and threads), so the messages checked are the libraries' own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

import proxycore
from proxycore.actions import RunFilter
from proxycore.testing import Harness
from tests.helpers import ORIGIN, sent

trio = pytest.importorskip("trio")
anyio = pytest.importorskip("anyio")

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
ASYNCIO_ONLY = "an asyncio-only call in an async def phase"
TRIO_ONLY = "a trio-only call in an async def phase"
ANOTHER_LOOP = "an asyncio object made on another event loop"
EVERYWHERE = "anyio code runs on every backend"


class Sleeper(proxycore.Proxy):
    def __init__(self, sleep: Callable[[], Any]) -> None:
        self.sleep = sleep

    async def request_filter(self, session: Any, ctx: Any) -> bool:
        await self.sleep()
        session.respond(204)
        return True

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def run_on(runner: str, rf: RunFilter) -> tuple[Any, BaseException | None]:
    """Run the deferred phase as that kind of backend would: a trio task, or a coroutine on a
    fresh asyncio loop (gevent, threads; asyncio and uvloop use their server's loop)."""

    async def call() -> Any:
        return await rf.call()

    try:
        if runner == "trio":
            return trio.run(call), None
        return asyncio.run(call()), None
    except Exception as e:
        return None, e


def serve(app: proxycore.Proxy, runner: str, caplog: pytest.LogCaptureFixture) -> bytes:
    h = Harness(app, logger=logging.getLogger("proxycore.test"))
    down, _ = h.accept()
    (rf,) = [a for a in h.data(down, GET) if isinstance(a, RunFilter)]
    result, error = run_on(runner, rf)
    with caplog.at_level(logging.ERROR, "proxycore"):
        return sent(h.filter_done(down, rf.token, result, error), down)


@pytest.mark.parametrize("runner", ["asyncio", "trio"])
def test_anyio_sleep_works_on_both(runner: str, caplog: pytest.LogCaptureFixture) -> None:
    out = serve(Sleeper(lambda: anyio.sleep(0.001)), runner, caplog)
    assert out.startswith(b"HTTP/1.1 204 "), out
    assert not caplog.records


def test_asyncio_sleep_on_trio_logs_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    out = serve(Sleeper(lambda: asyncio.sleep(0.001)), "trio", caplog)
    assert out.startswith(b"HTTP/1.1 500 "), out
    (rec,) = caplog.records
    line = rec.getMessage()
    assert "phase request_filter raised RuntimeError: no running event loop (GET /x)" in line
    assert ASYNCIO_ONLY in line and EVERYWHERE in line, line


def test_asyncio_sleep_on_a_private_asyncio_loop_works(caplog: pytest.LogCaptureFixture) -> None:
    out = serve(Sleeper(lambda: asyncio.sleep(0.001)), "asyncio", caplog)
    assert out.startswith(b"HTTP/1.1 204 "), out


def test_trio_sleep_on_asyncio_logs_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    out = serve(Sleeper(lambda: trio.sleep(0.001)), "asyncio", caplog)
    assert out.startswith(b"HTTP/1.1 500 "), out
    line = caplog.records[-1].getMessage()
    assert "must be called from async context" in line and TRIO_ONLY in line, line


def test_an_asyncio_object_of_another_loop_logs_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On gevent and threads every async phase call gets a new loop: an asyncio object that a
    # first call bound to its loop fails in the next one.
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def wait_a_little() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.get(), 0.001)

    assert serve(Sleeper(wait_a_little), "asyncio", caplog).startswith(b"HTTP/1.1 204 ")
    out = serve(Sleeper(wait_a_little), "asyncio", caplog)
    assert out.startswith(b"HTTP/1.1 500 "), out
    line = caplog.records[-1].getMessage()
    assert "bound to a different event loop" in line and ANOTHER_LOOP in line, line


def test_other_errors_get_no_hint(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise RuntimeError("no running event loop, says the app")  # not asyncio's words

    out = serve(Sleeper(boom), "trio", caplog)
    assert out.startswith(b"HTTP/1.1 500 "), out
    line = caplog.records[-1].getMessage()
    assert line.endswith("(GET /x)"), line


def test_a_blocking_phase_gets_no_async_hint(caplog: pytest.LogCaptureFixture) -> None:
    class Blocking(proxycore.Proxy):
        @proxycore.blocking
        def request_filter(self, session: Any, ctx: Any) -> bool:
            asyncio.get_running_loop()  # no loop in a worker thread: not an async-phase matter
            return False

        def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
            return ORIGIN

    h = Harness(Blocking(), logger=logging.getLogger("proxycore.test"))
    down, _ = h.accept()
    (rf,) = [a for a in h.data(down, GET) if isinstance(a, RunFilter)]
    with pytest.raises(RuntimeError) as e:
        rf.call()
    with caplog.at_level(logging.ERROR, "proxycore"):
        out = sent(h.filter_done(down, rf.token, None, e.value), down)
    assert out.startswith(b"HTTP/1.1 500 "), out
    assert caplog.records[-1].getMessage().endswith("(GET /x)")
