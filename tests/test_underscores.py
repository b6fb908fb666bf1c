"""Request header fields whose name holds an underscore (``ServerConf.headers_with_underscores``:
allow, drop — the default, as nginx — or reject), in the parser and through the core."""

from __future__ import annotations

import logging

import h11
import pytest

import proxycore
from proxycore.actions import ShutdownWrite
from proxycore.cli import _conf, _parser, main
from proxycore.errors import HTTPParseError
from proxycore.h1.parse import UNDERSCORE_ACTIONS, parse_request_head
from proxycore.testing import Harness
from proxycore.trace import conf_from_json, conf_to_json
from tests.helpers import Simple, closed, sent

# The smuggling case: a CGI/WSGI-style origin reads Transfer_Encoding as HTTP_TRANSFER_ENCODING
# and may frame the body as chunked, where this proxy framed it by Content-Length.
SMUGGLE = (
    b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n"
    b"X_Api_Key: k\r\nUser-Agent: x86_64\r\n\r\nhello"
)
HEAD_END = SMUGGLE.index(b"\r\n\r\n") + 4


def test_actions() -> None:
    assert UNDERSCORE_ACTIONS == ("allow", "drop", "reject")
    assert proxycore.ServerConf().headers_with_underscores == "drop"


def test_parser_allow_keeps_them_and_agrees_with_h11() -> None:
    req, meta = parse_request_head(SMUGGLE[:HEAD_END])  # the codec's default: RFC 9110 grammar
    names = [n for n, _ in req.headers.items()]
    assert names == ["Host", "Transfer_Encoding", "Content-Length", "X_Api_Key", "User-Agent"]
    assert meta.dropped is None and not meta.hop and meta.length == 5
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(SMUGGLE)
    ev = conn.next_event()
    assert isinstance(ev, h11.Request)
    assert [n.decode() for n, _ in ev.headers.raw_items()] == names


def test_parser_drop_removes_exactly_those_fields() -> None:
    req, meta = parse_request_head(SMUGGLE[:HEAD_END], underscores="drop")
    assert req.headers.items() == [
        ("Host", "a"),
        ("Content-Length", "5"),
        ("User-Agent", "x86_64"),  # an underscore in a value is nothing
    ]
    assert meta.dropped == ["Transfer_Encoding", "X_Api_Key"]
    assert meta.hop  # so the head is re-serialized, not forwarded as received
    assert meta.length == 5


def test_parser_reject_is_a_400_naming_the_field() -> None:
    with pytest.raises(HTTPParseError) as e:
        parse_request_head(SMUGGLE[:HEAD_END], underscores="reject")
    assert e.value.status == 400
    assert str(e.value) == (
        "header field name with an underscore: 'Transfer_Encoding' (headers_with_underscores "
        "reject)"
    )


@pytest.mark.parametrize("action", UNDERSCORE_ACTIONS)
def test_no_underscore_in_a_name_is_left_alone(action: str) -> None:
    head = b"GET /a_b HTTP/1.1\r\nHost: a_b\r\nCookie: s_id=1\r\nX-A-B: c_d\r\n\r\n"
    req, meta = parse_request_head(head, underscores=action)
    assert meta.dropped is None and not meta.hop
    assert len(req.headers) == 3


def test_parser_drop_with_absolute_form_and_name_underscore_only() -> None:
    head = b"GET http://h/p HTTP/1.1\r\nHost: h\r\n_: 1\r\nHost_: evil\r\n\r\n"
    req, meta = parse_request_head(head, underscores="drop")
    assert req.headers.items() == [("Host", "h")]
    assert meta.dropped == ["_", "Host_"]


def proxied(action: str | None, caplog: pytest.LogCaptureFixture) -> tuple[bytes, bytes, bool]:
    """(what went upstream, what the client got, client connection closed) for SMUGGLE."""
    conf = proxycore.ServerConf()
    if action is not None:
        conf.headers_with_underscores = action
    h = Harness(Simple(), conf, logger=logging.getLogger("proxycore.test"))
    down, _ = h.accept()
    with caplog.at_level(logging.INFO, "proxycore"):
        acts = h.data(down, SMUGGLE)
    ups = Harness.connects(acts)
    if not ups:
        ending = closed(acts, down) or any(
            isinstance(a, ShutdownWrite) and a.conn == down for a in acts
        )
        return b"", sent(acts, down), ending
    up = ups[0].conn
    upstream = sent(h.connected(up), up)
    acts = h.data(up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return upstream, sent(acts, down), closed(acts, down)


def test_default_drops_and_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    upstream, answer, was_closed = proxied(None, caplog)
    assert b"Transfer_Encoding" not in upstream and b"X_Api_Key" not in upstream
    assert upstream.startswith(b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n")
    assert upstream.endswith(b"\r\n\r\nhello")
    assert b"User-Agent: x86_64\r\n" in upstream and b"X-Forwarded-For: " in upstream
    assert answer.endswith(b"\r\n\r\nok") and not was_closed
    (line,) = [r.getMessage() for r in caplog.records if "underscore" in r.getMessage()]
    assert line == (
        "client 192.0.2.10:50000: dropped 2 request header field(s) with an underscore in the "
        "name (headers_with_underscores drop): Transfer_Encoding, X_Api_Key"
    )


def test_allow_forwards_the_head_as_received(caplog: pytest.LogCaptureFixture) -> None:
    upstream, answer, _ = proxied("allow", caplog)
    assert upstream.startswith(SMUGGLE[: HEAD_END - 2])  # verbatim, then X-Forwarded-*
    assert upstream.endswith(b"\r\n\r\nhello") and answer.endswith(b"\r\n\r\nok")
    assert not [r for r in caplog.records if "underscore" in r.getMessage()]


def test_reject_answers_400_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    upstream, answer, was_closed = proxied("reject", caplog)
    assert upstream == b""  # nothing went upstream
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in answer
    assert was_closed  # (a lingering close: the write side first)
    assert any(
        "rejected request: header field name with an underscore: 'Transfer_Encoding'"
        in r.getMessage()
        for r in caplog.records
    )


def test_a_filter_sees_the_head_without_them() -> None:
    seen: list[list[str]] = []

    class Looks(Simple):
        def request_filter(self, session: object, ctx: object) -> bool:
            seen.append(list(session.req_header.headers))  # type: ignore[attr-defined]
            return False

    h = Harness(Looks())
    down, _ = h.accept()
    h.data(down, SMUGGLE)
    assert seen == [["Host", "Content-Length", "User-Agent"]]


def test_an_unknown_action_is_a_value_error_naming_the_choices() -> None:
    conf = proxycore.ServerConf(headers_with_underscores="ignore")
    with pytest.raises(ValueError, match="must be one of allow, drop, reject, not 'ignore'"):
        Harness(Simple(), conf)


def test_traces_keep_their_setting_and_older_ones_replay_as_allow() -> None:
    conf = proxycore.ServerConf(headers_with_underscores="reject")
    assert conf_from_json(conf_to_json(conf)).headers_with_underscores == "reject"
    old = conf_to_json(proxycore.ServerConf())
    del old["headers_with_underscores"]  # recorded before the setting existed
    assert conf_from_json(old).headers_with_underscores == "allow"


CHUNKED = (
    b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX_Sig: s\r\nX-Ok: 1\r\n\r\n"
)


def chunked_upstream(action: str, caplog: pytest.LogCaptureFixture) -> tuple[bytes, bytes, bool]:
    """(what went upstream, what the client got, upstream aborted) for CHUNKED."""
    conf = proxycore.ServerConf(headers_with_underscores=action)
    h = Harness(Simple(), conf, logger=logging.getLogger("proxycore.test"))
    down, _ = h.accept()
    with caplog.at_level(logging.INFO, "proxycore"):
        up = Harness.connects(h.data(down, CHUNKED[:60]))[0].conn
        upstream = sent(h.connected(up), up)
        acts = h.data(down, CHUNKED[60:])
    upstream += sent(acts, up)
    return upstream, sent(acts, down), closed(acts, up)


def test_request_trailers_drop(caplog: pytest.LogCaptureFixture) -> None:
    upstream, _, aborted = chunked_upstream("drop", caplog)
    assert upstream.endswith(b"5\r\nhello\r\n0\r\nX-Ok: 1\r\n\r\n"), upstream
    assert not aborted
    assert any(
        "dropped 1 request trailer field(s) with an underscore in the name "
        "(headers_with_underscores drop): X_Sig" in r.getMessage()
        for r in caplog.records
    )


def test_request_trailers_allow(caplog: pytest.LogCaptureFixture) -> None:
    upstream, _, _ = chunked_upstream("allow", caplog)
    assert upstream.endswith(b"0\r\nX_Sig: s\r\nX-Ok: 1\r\n\r\n"), upstream


def test_request_trailers_reject_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    upstream, answer, aborted = chunked_upstream("reject", caplog)
    assert aborted and b"\r\n0\r\n" not in upstream  # the origin never gets the last chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert any(
        "trailer field name with an underscore: 'X_Sig'" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("command", [["reverse-proxy", "--to", "127.0.0.1:1"], ["run", "m:C"]])
def test_the_flag_reaches_server_conf(command: list[str]) -> None:
    assert _conf(_parser().parse_args(command)).headers_with_underscores == "drop"
    for action in UNDERSCORE_ACTIONS:
        args = _parser().parse_args([*command, "--headers-with-underscores", action])
        assert _conf(args).headers_with_underscores == action


def test_a_bad_flag_value_is_the_usage_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["reverse-proxy", "--to", "127.0.0.1:1", "--headers-with-underscores", "ignore"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: proxycore reverse-proxy"), err
    assert err[-1].startswith(
        "proxycore reverse-proxy: error: argument --headers-with-underscores: invalid choice: "
        "'ignore' (choose from "
    ), err
    assert all(a in err[-1] for a in UNDERSCORE_ACTIONS), err


def test_run_refuses_an_unknown_action_before_anything_starts() -> None:
    conf = proxycore.ServerConf(headers_with_underscores="ignore")
    with pytest.raises(ValueError, match="headers_with_underscores must be one of"):
        proxycore.run(Simple(), ["127.0.0.1:0"], "asyncio", conf)
