"""The HTTP/1.1 upstream codec (proxycore/upstream.py) on its own, behind its native base
(proxycore/upcodec.py): an owner that records what the codec tells it stands for the exchange;
the engine routes the connection's events, no sockets."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from proxycore.actions import Action, PauseReading, ResumeReading, Send
from proxycore.errors import HTTPParseError
from proxycore.http import Headers, RequestHeader, ResponseHeader
from proxycore.testing import Harness
from proxycore.upcodec import BODY_CHUNKED, BODY_CLOSE, BODY_LENGTH, OriginStream, UpstreamOwner
from proxycore.upstream import Upstream
from tests.helpers import ORIGIN, Simple

ROOT = Path(__file__).resolve().parent.parent


class Owner(UpstreamOwner):
    """Records the codec's calls; takes body pieces while ``taking``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.taking = True
        self.fast = False
        self.paused = False

    def on_upstream_connected(self, up: OriginStream) -> None:
        self.calls.append(("connected",))

    def on_upstream_connect_failed(self, up: OriginStream, reason: str, message: str) -> None:
        self.calls.append(("connect failed", reason))

    def on_upstream_eof(self, error: str | None) -> None:
        self.calls.append(("eof", error))

    def on_upstream_write_paused(self, paused: bool) -> None:
        self.calls.append(("write paused", paused))

    def on_upstream_write_failed(self, error: str) -> None:
        self.calls.append(("write failed", error))

    def on_informational(self, resp: ResponseHeader, meta: Any) -> bool:
        self.calls.append(("1xx", resp.status))
        return True

    def on_response_head(self, resp: ResponseHeader, meta: Any) -> None:
        self.calls.append(("head", resp.status, meta.body))

    def on_invalid_response(self, err: HTTPParseError, words: str) -> None:
        self.calls.append(("invalid", words))

    def takes_response_data(self) -> bool:
        return self.fast

    def takes_response_body(self) -> bool:
        return self.taking

    def on_response_body(self, piece: bytes, eos: bool) -> None:
        self.calls.append(("body", piece, eos))

    def response_data_buffered(self) -> None:
        self.calls.append(("buffered",))

    def wants_response_paused(self) -> bool:
        return self.paused


def exchange() -> tuple[Harness, Upstream, Owner]:
    """An established connection carrying one exchange of ``owner`` (its head not sent)."""
    h = Harness(Simple())
    e = h.engine
    up = e.open_upstream(ORIGIN)
    owner = Owner()
    up.bind(owner)
    h.connected(up.id)
    assert owner.calls == [("connected",)]
    owner.calls.clear()
    up.begin(owner, False, e.now)
    e._flush()
    return h, up, owner


def wire(h: Harness, up: Upstream) -> bytes:
    """What the codec wrote to the connection since the last look."""
    acts: list[Action] = h.engine._flush()
    return b"".join(a.data for a in acts if isinstance(a, Send) and a.conn == up.id)


def send_head(h: Harness, up: Upstream, fields: list[tuple[str, str]], body: bool) -> bytes:
    req = RequestHeader("POST", "/p", Headers(fields))
    up.send_request_head(h.engine, "POST", req, body, True)
    return wire(h, up)


# ---------------------------------------------------------------------- the request


def test_a_body_without_content_length_goes_chunked_with_its_trailers() -> None:
    h, up, _ = exchange()
    head = send_head(h, up, [("Host", "o"), ("Transfer-Encoding", "gzip")], True)
    assert head == b"POST /p HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert up.sends_trailers()
    up.send_body(h.engine, b"abc")
    up.send_body(h.engine, b"")  # nothing, and not the last chunk
    assert up.end_request(h.engine, [("X-Sum", "1")])
    assert wire(h, up) == b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
    assert up.request_sent() == 3 and up.request_length() == -1


def test_a_content_length_body_is_sent_as_is_and_checked_at_its_end() -> None:
    h, up, _ = exchange()
    head = send_head(h, up, [("Host", "o"), ("Content-Length", "5")], True)
    assert head.endswith(b"Content-Length: 5\r\n\r\n") and not up.sends_trailers()
    up.send_body(h.engine, b"abc")
    assert wire(h, up) == b"abc"
    assert not up.end_request(h.engine, None)  # 3 of 5 bytes: the exchange is told
    assert (up.request_sent(), up.request_length()) == (3, 5)
    assert not up.reusable()


def test_an_invalid_content_length_is_replaced_by_chunked() -> None:
    h, up, _ = exchange()
    head = send_head(h, up, [("Content-Length", "5x")], True)
    assert head == b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_the_received_head_gets_the_forwarded_fields_before_its_blank_line() -> None:
    h, up, _ = exchange()
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    up.send_received_head(h.engine, "GET", raw, b"X-Forwarded-For: 1.2.3.4\r\n", "a", -1)
    assert wire(h, up) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: a\r\n\r\n"
    )
    up.send_received_head(h.engine, "GET", raw, None, "a", -1)
    assert wire(h, up) == raw  # verbatim


def test_a_head_that_cannot_be_serialized_raises() -> None:
    h, up, _ = exchange()
    with pytest.raises(ValueError):
        send_head(h, up, [("X-A", "1\r\nX-B: 2")], False)


# ---------------------------------------------------------------------- the response


def test_informational_heads_then_the_final_one_across_reads() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n")
    assert owner.calls == [("1xx", 100)]
    h.data(up.id, b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")
    assert owner.calls[1:] == [("1xx", 103), ("head", 200, BODY_LENGTH)]
    assert up.response_bytes() > 0


def test_the_body_is_pushed_while_the_owner_takes_it() -> None:
    h, up, owner = exchange()
    owner.taking = False
    h.data(up.id, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    h.data(up.id, b"de")
    assert owner.calls == [("head", 200, BODY_LENGTH), ("buffered",)]
    owner.taking = True
    assert up.push_response_body(h.engine)
    h.data(up.id, b"f")
    assert owner.calls[2:] == [("body", b"abcde", False), ("buffered",)]
    assert up.push_response_body(h.engine)
    assert owner.calls[-1] == ("body", b"f", True)
    assert up.reusable()


def test_a_sized_piece_goes_straight_through_when_the_owner_allows() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    owner.fast = True
    h.data(up.id, b"ab")
    h.data(up.id, b"cd")
    assert owner.calls[1:] == [("body", b"ab", False), ("body", b"cd", True)]


def test_bytes_past_the_content_length_make_the_connection_unusable() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabEXTRA")
    up.push_response_body(h.engine)
    assert ("body", b"ab", True) in owner.calls
    assert not up.reusable()


def test_a_chunked_body_with_its_trailers() -> None:
    h, up, owner = exchange()
    h.data(
        up.id,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    )
    assert owner.calls[0] == ("head", 200, BODY_CHUNKED)
    assert up.push_response_body(h.engine)
    assert owner.calls[1:] == [("body", b"abc", True)]
    tr = up.response_trailers()
    assert tr is not None and tr.get("x-t") == "1"
    assert up.reusable()


def test_a_malformed_chunked_body_is_reported_in_words() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert not up.push_response_body(h.engine)
    assert owner.calls[-1][0] == "invalid"
    assert owner.calls[-1][1].startswith("sent an invalid chunked body: ")


def test_a_malformed_head_is_reported_in_words() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 2000 OK\r\n\r\n")
    assert owner.calls[0][0] == "invalid"
    assert owner.calls[0][1].startswith("sent an invalid head: ")


def test_a_close_delimited_body_ends_at_eof_and_is_never_reused() -> None:
    h, up, owner = exchange()
    h.data(up.id, b"HTTP/1.1 200 OK\r\n\r\nab")
    assert owner.calls[0] == ("head", 200, BODY_CLOSE)
    up.push_response_body(h.engine)
    h.eof(up.id)
    assert owner.calls[1:] == [("body", b"ab", False), ("eof", None)]
    up.push_response_body(h.engine)
    assert owner.calls[-1] == ("body", b"", True)
    assert not up.reusable()


def test_a_head_response_has_no_body() -> None:
    h, up, owner = exchange()
    up.send_request_head(h.engine, "HEAD", RequestHeader("HEAD", "/", Headers()), False, False)
    h.data(up.id, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert owner.calls == [("head", 200, 0)]


def test_a_failed_write_leaves_it_readable_but_not_reusable() -> None:
    h, up, owner = exchange()
    h.write_failed(up.id)
    assert owner.calls == [("write failed", "reset the connection")]
    h.data(up.id, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert owner.calls[-1] == ("head", 200, 0)
    assert not up.reusable()


def test_reading_pauses_for_the_owner_and_over_the_buffer_limit() -> None:
    h, up, owner = exchange()
    e = h.engine
    owner.paused = True
    up.response_pause_changed(e)
    owner.paused = False
    up.response_pause_changed(e)
    assert e._flush() == [PauseReading(up.id), ResumeReading(up.id)]
    owner.taking = False
    h.data(up.id, b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * e.conf.read_buffer_limit)
    up.response_pause_changed(e)
    assert e._flush() == [PauseReading(up.id)] and up.reading_paused()


def test_bytes_on_an_idle_connection_drop_it() -> None:
    h, up, _ = exchange()
    h.data(up.id, b"HTTP/1.1 204 No Content\r\n\r\n")
    up.end(h.engine, up.reusable())
    assert up.id in h.engine.upstreams  # pooled
    h.data(up.id, b"HTTP/1.1 200 OK\r\n\r\n")  # RFC 9112 §9.3
    assert up.id not in h.engine.upstreams


# ---------------------------------------------------------------------- the seam


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def _all_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, ``if TYPE_CHECKING:`` blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_the_exchange_leaves_the_wire_format_to_the_codecs() -> None:
    session = ROOT / "proxycore" / "session.py"
    # nothing from the HTTP/1.1 modules, not even for type checking (the parse records are
    # protocol-neutral: proxycore.meta)
    assert not [m for m in _all_imports(session) if m.startswith("proxycore.h1")]
    assert "proxycore.meta" in _all_imports(session)
    assert "proxycore.upstream" not in _runtime_imports(session)
    # and it touches none of the connection's buffers or flags (read from the source: a
    # compiled class keeps no __slots__)
    upstream = ast.parse((ROOT / "proxycore" / "upstream.py").read_text())
    slots = next(
        ast.literal_eval(n.value)
        for n in ast.walk(upstream)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__slots__"
    )
    tree = ast.parse(session.read_text())
    touched = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "up"
        and n.attr in slots
    }
    assert touched <= {"peer", "last_read", "id"}, touched
    assert "buf" in slots and "write_failed" in slots  # (the check looks at the right list)


def test_health_probes_own_their_connection_through_the_same_base() -> None:
    from proxycore.health import _Probe

    assert issubclass(_Probe, UpstreamOwner)
    assert not [m for m in _runtime_imports(ROOT / "proxycore" / "health.py") if "h1" in m]
