"""The reverse proxy's retries and passive health (no sockets): a retry goes to a backend the
request has not tried, with every selector; one failed connect ejects a backend for 10 s by
default (nginx's max_fails=1 fail_timeout=10s), 5xx answers after five in a row; the clock is
the events' ``now``."""

from __future__ import annotations

import pytest

from proxycore.builtin import ReverseProxy
from proxycore.cli import main
from proxycore.lb import SELECTORS
from proxycore.testing import Harness
from tests.helpers import sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
# serve() answers with Connection: close, so each request connects (and a dead one refuses)
DONE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
E503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def request(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode()


def serve(h: Harness, path: str, dead: set[int], answer: bytes = DONE) -> list[int]:
    """One request on a new connection; backends whose port is in ``dead`` refuse the
    connection, the others answer ``answer``. Returns the ports connected to, in order."""
    down, _ = h.accept()
    acts = h.data(down, request(path))
    ports: list[int] = []
    while True:
        conns = Harness.connects(acts)
        if not conns:  # answered by the proxy (502)
            break
        c = conns[0]
        ports.append(c.peer.port)
        if c.peer.port in dead:
            acts = h.connect_failed(c.conn)
            continue
        h.connected(c.conn)
        h.data(c.conn, answer)
        break
    h.closed(down)
    return ports


def app_of(h: Harness) -> ReverseProxy:
    app: ReverseProxy = h.engine.app  # type: ignore[assignment]
    return app


def test_defaults_are_nginx_like() -> None:
    app = ReverseProxy([A])
    assert (app.eject_after_connect_failures, app.eject_for, app.eject_after) == (1, 10.0, 5)
    assert app.trace_init()["eject_after_connect_failures"] == 1
    again = ReverseProxy(**{**app.trace_init(), "eject_after_connect_failures": 3})
    assert again.eject_after_connect_failures == 3 and again.eject_for == 10.0


@pytest.mark.parametrize("lb", list(SELECTORS))
def test_one_refused_connect_ejects_at_once_with_every_selector(lb: str) -> None:
    """A dead backend among three is connected to once; every request is answered."""
    h = Harness(ReverseProxy([A, B, C], lb=lb, hash_key="uri"))
    dead = {9002}
    tried = [serve(h, f"/k{i}", dead) for i in range(60)]
    assert all(t[-1] != 9002 for t in tried)  # every request ended on a live backend
    assert sum(t.count(9002) for t in tried) == 1, tried
    assert all(len(t) == len(set(t)) for t in tried)  # no backend twice in one request
    assert app_of(h)._ejected_until[B] == pytest.approx(10.0)  # now was 0


def test_ejection_runs_out_after_eject_for_by_the_event_clock() -> None:
    h = Harness(ReverseProxy([A, B]))
    seen = [p for i in range(4) for p in serve(h, f"/{i}", {9001})]
    assert seen.count(9001) == 1
    h.now += 9.999
    assert 9001 not in [p for i in range(4) for p in serve(h, f"/{i}", {9001})]
    h.now += 0.001  # 10 s after the failure: tried again, and ejected again at once
    seen = [p for i in range(4) for p in serve(h, f"/{i}", {9001})]
    assert seen.count(9001) == 1
    assert app_of(h)._ejected_until[A] == pytest.approx(h.now + 10.0)


def test_a_connect_timeout_counts_like_a_refusal() -> None:
    h = Harness(ReverseProxy([A, B]))
    down, _ = h.accept()
    c = Harness.connects(h.data(down, request()))[0]
    assert c.peer.port == 9001
    acts = h.advance(60.0, down)  # nginx's proxy_connect_timeout default
    retry = Harness.connects(acts)[0]
    assert retry.peer.port == 9002
    h.connected(retry.conn)
    assert sent(h.data(retry.conn, OK), down).startswith(b"HTTP/1.1 200")
    assert app_of(h)._ejected_until[A] == pytest.approx(70.0)


def test_eject_after_connect_failures_counts_consecutive_failed_connects() -> None:
    h = Harness(ReverseProxy([A], eject_after_connect_failures=2))
    app = app_of(h)
    assert serve(h, "/1", {9001}) == [9001]  # a 502: the only backend refused
    assert not app._ejected_until and app._connect_failures == {A: 1}
    assert serve(h, "/2", set()) == [9001]  # it answered: its count starts over
    assert not app._connect_failures and not app._failures
    assert serve(h, "/3", {9001}) == [9001]
    assert not app._ejected_until
    assert serve(h, "/4", {9001}) == [9001]  # the second in a row
    assert app._ejected_until == {A: 10.0}


def test_5xx_answers_still_need_eject_after_in_a_row() -> None:
    h = Harness(ReverseProxy([A], eject_after_connect_failures=2))
    app = app_of(h)
    for i in range(4):
        serve(h, f"/{i}", set(), E503)
    assert not app._ejected_until and app._failures[A] == 4
    serve(h, "/ok", set())
    assert not app._failures  # an answer below 500 starts the count over
    for i in range(4):
        serve(h, f"/{i}", set(), E503)
    assert serve(h, "/x", {9001}) == [9001]  # a failed connect is a failure of any kind
    assert set(app._ejected_until) == {A} and not app._connect_failures


def test_an_answer_between_failed_connects_breaks_the_run() -> None:
    h = Harness(ReverseProxy([A], eject_after_connect_failures=2))
    app = app_of(h)
    serve(h, "/1", {9001})
    serve(h, "/2", set(), E503)  # it connected: failed connects are no longer consecutive
    serve(h, "/3", {9001})
    assert not app._ejected_until and app._connect_failures == {A: 1} and app._failures[A] == 3


def test_eject_for_zero_never_ejects() -> None:
    h = Harness(ReverseProxy([A, B], eject_for=0))
    tried = [serve(h, f"/{i}", {9001}) for i in range(6)]
    # Round robin offers it first to every request (the retry moves the rotation past it).
    assert tried == [[9001, 9002]] * 6
    assert not app_of(h)._ejected_until


def test_every_backend_ejected_all_are_tried_again_once_per_request() -> None:
    h = Harness(ReverseProxy([A, B]))
    assert sorted(serve(h, "/1", {9001, 9002})) == [9001, 9002]  # a 502, both ejected
    assert set(app_of(h)._ejected_until) == {A, B}
    h.now += 1
    assert sorted(serve(h, "/2", {9001})) == [9001, 9002]  # panic mode: B answers
    assert serve(h, "/3", set()) == [9002]  # A ejected again, B live: B only


def test_a_retry_takes_an_ejected_backend_rather_than_answer_502() -> None:
    h = Harness(ReverseProxy([A, B], eject_after_connect_failures=2))
    app = app_of(h)
    app._ejected_until[B] = 5.0
    down, _ = h.accept()
    c = Harness.connects(h.data(down, request()))[0]
    assert c.peer.port == 9001  # the live one first
    retry = Harness.connects(h.connect_failed(c.conn))[0]
    assert retry.peer.port == 9002  # A was tried and is not ejected; B is the one left
    h.connected(retry.conn)
    assert sent(h.data(retry.conn, OK), down).startswith(b"HTTP/1.1 200")


def test_a_retry_prefers_a_live_backend_to_an_ejected_one() -> None:
    h = Harness(ReverseProxy([A, B, C]))
    app_of(h)._ejected_until[B] = 5.0
    assert serve(h, "/", {9001}) == [9001, 9003]


def _pooled_connection_dies(backends: list[str], lb: str) -> tuple[Harness, list[int], bytes]:
    """Every backend answers once (so each has a pooled connection); the next request is sent
    on a pooled one, which dies before answering. Returns the retry's ports and the answer."""
    h = Harness(ReverseProxy(backends, lb=lb))
    for i in range(len(backends)):
        serve(h, f"/warm{i}", set(), OK)  # kept alive: pooled
    down, _ = h.accept()
    acts = h.data(down, request("/again"))
    assert not Harness.connects(acts)
    up = next(a.conn for a in acts if getattr(a, "data", b"").startswith(b"GET"))
    acts = h.closed(up, "reset the connection")
    conns = Harness.connects(acts)
    ports = [c.peer.port for c in conns]
    if conns:
        h.connected(conns[0].conn)
        acts = h.data(conns[0].conn, OK)
    answer = sent(acts, down)
    h.closed(down)
    return h, ports, answer


@pytest.mark.parametrize("lb", ["round_robin", "least_conn"])
def test_a_pooled_connection_that_died_is_retried_and_released(lb: str) -> None:
    h, ports, answer = _pooled_connection_dies([A], lb)
    assert ports == [9001] and answer.startswith(b"HTTP/1.1 200")  # a fresh connection
    h, ports, answer = _pooled_connection_dies([A, B], lb)
    assert len(ports) == 1 and answer.startswith(b"HTTP/1.1 200")  # the other backend
    app = app_of(h)
    assert [b.inflight for b in app.lb.backends] == [0, 0]  # the first attempt released too
    assert not app._failures and not app._ejected_until  # a keep-alive race is no failure


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eject-after-connect-failures", "0"], "at least 1, got '0'"),
        (["--eject-after-connect-failures", "x"], "at least 1, got 'x'"),
        (["--eject-after", "0"], "at least 1, got '0'"),
        (["--eject-for", "-1"], "expected a positive number of seconds, got '-1'"),
    ],
)
def test_cli_bad_passive_health_values_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["reverse-proxy", "--to", A, *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_code_setting_bad_values_are_refused() -> None:
    for kwargs in ({"eject_after_connect_failures": 0}, {"eject_after": 0}, {"eject_for": -1}):
        with pytest.raises(ValueError, match="eject"):
            ReverseProxy([A], **kwargs)  # type: ignore[arg-type]
