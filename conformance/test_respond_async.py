"""``session.respond`` with each accepted form of headers and with a wrong one; ``async def``
phases with anyio, asyncio-only and trio-only calls: what works on which backend is what the
README's Adapters section says, and a failure's log line names the cause."""

from __future__ import annotations

import time

from conformance.client import get

# Where async def phases run (README, Adapters): asyncio and uvloop on the server's loop, gevent
# and threads on a private asyncio loop per call in a worker thread, trio as trio tasks. An
# adapter from elsewhere (--backends mypkg.adapter) may do either: both outcomes are checked.
RUNS_ON = {
    "asyncio": "asyncio",
    "uvloop": "asyncio",
    "gevent": "asyncio",
    "threads": "asyncio",
    "trio": "trio",
}


def run_app(proxy, name, origin):
    return proxy(mode="run", app=f"conformance.phase_apps:{name}", env={"ORIGIN_PORT": origin.port})


def wait_stderr(p, text, timeout=3.0):
    deadline = time.monotonic() + timeout
    while text not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    return p.stderr()


def test_respond_with_a_mapping_or_pairs(backend, echo, proxy):
    p = run_app(proxy, "RespondApp", echo)
    for path in ("/map", "/pairs"):
        r = get(p.port, path)
        assert r.status == 200 and r.body == path[1:].encode() + b"\n", r
        assert r.header("x-a") == "1" and r.header("x-b") == "2", r
    assert echo.request_count == 0


def test_respond_with_anything_else_is_a_type_error_at_the_call(backend, echo, proxy):
    p = run_app(proxy, "RespondApp", echo)
    r = get(p.port, "/bad-caught")
    assert r.status == 418, r
    assert r.body.startswith(b"TypeError: respond() headers are a proxycore.Headers, a mapping"), r
    assert b"got the item 'X-A: 1'" in r.body, r
    r = get(p.port, "/bad")
    assert r.status == 500, r
    err = wait_stderr(p, "got int 5")
    assert "phase request_filter raised TypeError: respond() headers are a" in err, err
    assert "got int 5" in err, err
    assert get(p.port, "/map").status == 200  # still serving


def test_anyio_works_on_every_backend(backend, echo, proxy):
    p = run_app(proxy, "LoopApp", echo)
    r = get(p.port, "/anyio")
    assert r.status == 200 and r.body == b"anyio\n", r


def test_asyncio_only_call_works_or_names_the_cause(backend, echo, proxy):
    p = run_app(proxy, "LoopApp", echo)
    r = get(p.port, "/asyncio")
    if RUNS_ON.get(backend) == "asyncio" or (backend not in RUNS_ON and r.status == 200):
        assert r.status == 200 and r.body == b"asyncio\n", r
        return
    assert r.status == 500, r
    err = wait_stderr(p, "anyio code runs on every backend")
    line = next(ln for ln in err.splitlines() if "phase request_filter raised" in ln)
    assert "RuntimeError: no running event loop (GET /asyncio)" in line, line
    assert "an asyncio-only call in an async def phase" in line, line
    assert "anyio code runs on every backend" in line, line
    assert get(p.port, "/anyio").status == 200  # still serving


def test_trio_only_call_works_on_trio_or_names_the_cause(backend, echo, proxy):
    p = run_app(proxy, "LoopApp", echo)
    r = get(p.port, "/trio")
    if RUNS_ON.get(backend) == "trio" or (backend not in RUNS_ON and r.status == 200):
        assert r.status == 200 and r.body == b"trio\n", r
        return
    assert r.status == 500, r
    err = wait_stderr(p, "anyio code runs on every backend")
    line = next(ln for ln in err.splitlines() if "phase request_filter raised" in ln)
    assert "a trio-only call in an async def phase" in line, line


def test_asyncio_object_kept_between_calls(backend, echo, proxy):
    # asyncio and uvloop run every call on the server's loop; gevent and threads give each call
    # a new loop, so a queue bound by the first call fails in the second; trio has no asyncio.
    p = run_app(proxy, "LoopApp", echo)
    first, second = get(p.port, "/asyncio-kept"), get(p.port, "/asyncio-kept")
    if backend in ("asyncio", "uvloop"):
        assert first.status == 200 and second.status == 200, (first, second)
    elif backend in ("gevent", "threads"):
        assert first.status == 200 and second.status == 500, (first, second)
        err = wait_stderr(p, "an asyncio object made on another event loop")
        line = next(ln for ln in err.splitlines() if "phase request_filter raised" in ln)
        assert "bound to a different event loop" in line, line
        assert "an asyncio object made on another event loop" in line, line
    elif backend == "trio":
        assert first.status == 500 and second.status == 500, (first, second)
