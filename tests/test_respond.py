"""``session.respond(status, body, headers)``: the forms of ``headers`` it accepts (a Headers,
a mapping, pairs) and the TypeError, raised at the call, for anything else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import proxycore
from proxycore.testing import Harness
from tests.helpers import ORIGIN, sent

GET = b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n"


class Responder(proxycore.Proxy):
    """request_filter answers with ``respond(200, b"x", make())``; if that raises TypeError,
    the error is kept and the answer is a 418 instead (so the test sees where it was raised)."""

    def __init__(self, make: Callable[[], Any], catch: bool = True) -> None:
        self.make = make
        self.catch = catch
        self.error: TypeError | None = None

    def request_filter(self, session: Any, ctx: Any) -> bool:
        try:
            session.respond(200, b"x", self.make())
        except TypeError as e:
            if not self.catch:
                raise
            self.error = e
            session.respond(418, b"")
        return True

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def answer(app: Responder) -> bytes:
    h = Harness(app, logger=logging.getLogger("proxycore.test"))
    down, _ = h.accept()
    return sent(h.data(down, GET), down)


def _pairs_gen() -> Any:
    return (p for p in [("X-A", "1"), ("X-B", "2")])


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"X-A": "1", "X-B": "2"},
        lambda: [("X-A", "1"), ("X-B", "2")],
        lambda: (("X-A", "1"), ["X-B", "2"]),
        _pairs_gen,
        lambda: proxycore.Headers([("X-A", "1"), ("X-B", "2")]),
    ],
    ids=["dict", "list of tuples", "tuple of pairs", "generator", "Headers"],
)
def test_accepted_forms(make: Callable[[], Any]) -> None:
    app = Responder(make)
    out = answer(app)
    assert app.error is None, app.error
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out
    assert b"\r\nX-A: 1\r\nX-B: 2\r\n" in out, out
    assert out.endswith(b"Content-Length: 1\r\n\r\nx"), out


def test_mapping_keeps_order_and_no_headers_is_fine() -> None:
    out = answer(Responder(lambda: {"Z": "1", "A": "2"}))
    assert out.index(b"Z: 1") < out.index(b"A: 2")
    out = answer(Responder(lambda: None))
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nx")


def test_headers_object_is_not_changed() -> None:
    given = proxycore.Headers([("X-A", "1")])
    answer(Responder(lambda: given))
    assert given.items() == [("X-A", "1")]  # respond() adds Content-Length to its own copy


@pytest.mark.parametrize(
    ("make", "got"),
    [
        (lambda: 5, "got int 5"),
        (lambda: "X-A: 1", "got str 'X-A: 1'"),
        (lambda: b"X-A: 1", "got bytes b'X-A: 1'"),
        (lambda: ["X-A: 1"], "got the item 'X-A: 1'"),
        (lambda: [("X-A", "1", "2")], "got the item ('X-A', '1', '2')"),
        (lambda: {"X-A": 1}, "got the item ('X-A', 1)"),
        (lambda: [(b"X-A", b"1")], "got the item (b'X-A', b'1')"),
    ],
    ids=["int", "str", "bytes", "list of str", "triple", "int value", "bytes pair"],
)
def test_anything_else_is_a_type_error_at_the_call(make: Callable[[], Any], got: str) -> None:
    app = Responder(make)
    out = answer(app)
    assert out.startswith(b"HTTP/1.1 418 "), out  # raised in respond(), caught by the filter
    assert app.error is not None
    msg = str(app.error)
    assert "a proxycore.Headers, a mapping of str names to str values, or an iterable" in msg
    assert got in msg, msg


def test_uncaught_type_error_is_a_500_whose_log_line_says_what_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, "proxycore"):
        out = answer(Responder(lambda: [("X-A",)], catch=False))
    assert out.startswith(b"HTTP/1.1 500 "), out
    line = caplog.records[-1].getMessage()
    assert "phase request_filter raised TypeError: respond() headers are a" in line, line
