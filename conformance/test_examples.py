"""Every example in examples/ runs as users run it — ``python examples/X.py --listen ...
--origin ... --backend B``, a real process on every backend, in front of real origins — and
does what its docstring and the README promise.

A test of example ``X`` is named ``test_X_...`` and starts ``examples/X.py``;
test_every_example_has_a_test fails for an example without one, so none goes untested.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from conformance.client import get
from conformance.conftest import _Proxies
from conformance.origins import HOST, EchoOrigin

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0  # for a log line or a health-check change; polled


def wait_for(pred, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class BrandedOrigin(EchoOrigin):
    """An echo origin that names itself in a Server header (the gateway removes it)."""

    @staticmethod
    def head_bytes(status, reason, headers, version="HTTP/1.1"):
        return EchoOrigin.head_bytes(status, reason, [*headers, ("Server", "origin/1")], version)


# -- examples/gateway.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw_origin():
    o = BrandedOrigin(name="gw-origin")
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gateway(backend, gw_origin):
    """One gateway per backend, shared by the gateway tests (they compare counters)."""
    f = _Proxies(backend)
    p = f.script("examples/gateway.py", ["--origin", f"{HOST}:{gw_origin.port}"])
    yield p
    crashed = f.stop_all()
    if crashed:
        pytest.fail("the gateway died:\n" + "\n".join(crashed), pytrace=False)


def test_gateway_denies_admin_without_asking_the_origin(gateway, gw_origin):
    _, heads, _ = gw_origin.snapshot()
    for target in ("/admin", "/admin/users?id=1"):
        r = get(gateway.port, target)
        assert r.status == 403, r
        assert r.body == b"forbidden\n"
    r = get(gateway.port, "/after-admin")
    assert r.status == 200, r
    assert gw_origin.snapshot()[1] == heads + 1  # only /after-admin reached the origin
    assert gw_origin.last().path == "/after-admin"


def test_gateway_rewrites_the_request(gateway, gw_origin):
    sent = time.time()
    r = get(gateway.port, "/req", headers=[("Cookie", "session=secret"), ("X-Keep", "1")])
    assert r.status == 200, r
    seen = gw_origin.last()
    assert seen.path == "/req"
    assert not seen.has("Cookie")
    assert seen.header("X-Keep") == "1"
    m = re.fullmatch(r"t=(\d+\.\d{3})", seen.header("X-Request-Start") or "")
    assert m, seen.headers
    assert abs(float(m.group(1)) - sent) < 5  # the wall clock of the request's arrival


def test_gateway_rewrites_the_response(gateway, gw_origin):
    assert get(gw_origin.port, "/direct").header("Server") == "origin/1"  # what it removes
    r = get(gateway.port, "/resp")
    assert r.status == 200, r
    assert r.header("X-Gateway") == "proxycore"
    assert r.header("Server") is None
    assert r.header("X-Origin") == "gw-origin"  # the origin's other headers pass


def test_gateway_logs_one_line_per_request(gateway):
    tag = f"{time.monotonic_ns()}"
    expect = {f"/log-{tag}-{i}": 200 for i in range(3)} | {f"/admin-{tag}": 403}
    for target, status in expect.items():
        assert get(gateway.port, target).status == status

    def lines(target: str) -> list[str]:
        return [ln for ln in gateway.stderr().splitlines() if f" {target} " in ln]

    assert wait_for(lambda: all(lines(t) for t in expect)), gateway.stderr()
    for target, status in expect.items():
        [line] = lines(target)  # exactly one line per request
        assert re.fullmatch(
            rf"INFO:gateway:GET {re.escape(target)} -> {status} in \d+\.\d\d ms", line
        ), line


def test_gateway_serves_under_proxycore_run(proxy):
    # The README's other way to run it: the class with its defaults, proxycore's options.
    p = proxy(mode="run", app="examples.gateway:Gateway")
    r = get(p.port, "/admin")  # answered by the gateway, whether 127.0.0.1:9000 is up or not
    assert r.status == 403 and r.body == b"forbidden\n", r


# -- examples/load_balancer.py -------------------------------------------------------------


def test_load_balancer_round_robin_and_health_check(proxy, origins):
    a = origins(EchoOrigin, name="a")
    b = origins(EchoOrigin, name="b")
    upstreams = ["--origin", f"{HOST}:{a.port}", "--origin", f"{HOST}:{b.port}"]
    lb = proxy.script("examples/load_balancer.py", [*upstreams, "--health-interval", "0.1"])

    def served_by(n: int) -> list[str]:
        out = []
        for i in range(n):
            r = get(lb.port, f"/{i}")
            assert r.status == 200, r
            out.append(r.header("X-Origin"))
        return out

    first = served_by(4)
    assert set(first) == {"a", "b"} and first[:2] * 2 == first, first  # alternate
    assert a.last().header("Host") == "one.one.one.one"  # as in Pingora's example

    b.stop()  # the health check takes it out; requests keep succeeding on the other
    down = f"backend {HOST}:{b.port} is now unhealthy"
    assert wait_for(lambda: down in lb.stderr()), lb.stderr()
    assert served_by(4) == ["a"] * 4

    origins(EchoOrigin, name="b", port=b.port)  # back where it was: it rejoins
    up = f"backend {HOST}:{b.port} is now healthy"
    assert wait_for(lambda: up in lb.stderr()), lb.stderr()
    assert set(served_by(4)) == {"a", "b"}


def test_load_balancer_starts_under_proxycore_run(proxy):
    p = proxy(mode="run", app="examples.load_balancer:LB")  # default origins, maybe not up
    get(p.port, "/")  # some answer (502 if 127.0.0.1:9001 and :9002 are down)
    p.check_alive()


# -- every example has a test ------------------------------------------------------------


def test_every_example_has_a_test():
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if p.stem != "__init__")
    assert "gateway" in examples  # the directory is where this test thinks it is
    source = Path(__file__).read_text()
    tests = [name for name in globals() if name.startswith("test_")]
    untested = [
        e
        for e in examples
        if not any(t.startswith(f"test_{e}_") for t in tests) or f'"examples/{e}.py"' not in source
    ]
    assert not untested, (
        f"examples without a test in {Path(__file__).name} (a test_NAME_... that starts "
        f"examples/NAME.py): {untested}"
    )
