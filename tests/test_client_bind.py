"""Source addresses for connections to origins (Pingora's ``client_bind_to_ipv4/ipv6``): the
core's choice (proxycore.bind) on the Connect action, the 502 and log line when the adapter
cannot bind, replays, the ServerConf check, the flag and the file."""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import proxycore
from proxycore.actions import Connect
from proxycore.bind import SourceAddresses, is_ipv4
from proxycore.cli import _conf, _parser
from proxycore.config import ServerConf
from proxycore.events import ConnectFailed
from proxycore.replay import load_trace, replay
from proxycore.testing import Harness, record
from tests.helpers import Simple, sent

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class To(proxycore.Proxy):
    def __init__(self, peer: proxycore.Peer) -> None:
        self.peer = peer

    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return self.peer


def _connects(h: Harness, n: int) -> list[Connect]:
    """``n`` client connections, each sending a request (so each opens an upstream)."""
    out = []
    for _ in range(n):
        down, _ = h.accept()
        out += [a for a in h.data(down, GET) if isinstance(a, Connect)]
    assert len(out) == n
    return out


@pytest.mark.parametrize(
    ("host", "v4"),
    [("127.0.0.1", True), ("255.255.255.255", True), ("0.0.0.0", True), ("1.2.3", False),
     ("1.2.3.256", False), ("01.2.3.4", False), ("1.2.3.4.5", False), ("example.com", False),
     ("\uff11.2.3.4", False), ("::1", False), ("", False)],
)  # fmt: skip
def test_is_ipv4_agrees_with_ipaddress(host: str, v4: bool) -> None:
    import ipaddress

    assert is_ipv4(host) is v4
    try:
        expected = ipaddress.ip_address(host).version == 4
    except ValueError:
        expected = False
    assert expected is v4


def test_the_family_of_the_origin_chooses_the_list() -> None:
    both = SourceAddresses(["127.0.0.2"], ["::2"])
    assert both.choose(7, "127.0.0.1") == ("127.0.0.2",)
    assert both.choose(7, "::1") == ("::2",)
    assert both.choose(7, "origin.example") == ("127.0.0.2", "::2")  # the adapter resolves
    only4 = SourceAddresses(["127.0.0.2"], [])
    assert only4.choose(7, "::1") == ()  # no IPv6 source listed: the kernel chooses
    assert only4.choose(7, "origin.example") == ("127.0.0.2",)
    assert SourceAddresses([], ["::2"]).choose(7, "10.0.0.1") == ()


@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_several_addresses_are_spread_evenly_and_deterministically(stride: int) -> None:
    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    s = SourceAddresses(addrs, [])
    ids = range(2, 2 + 3000 * stride, stride)  # upstream ids interleave with clients' ids
    counts = collections.Counter(s.choose(i, "127.0.0.1")[0] for i in ids)
    assert set(counts) == set(addrs)
    assert min(counts.values()) >= 900, counts  # 1000 each when perfectly even
    assert [s.choose(i, "127.0.0.1") for i in ids] == [s.choose(i, "127.0.0.1") for i in ids]


def test_connect_carries_the_choice_and_nothing_when_off() -> None:
    conf = ServerConf(client_bind_to_ipv4=["127.0.0.2", "127.0.0.3"], client_bind_to_ipv6=["::1"])
    connects = _connects(Harness(Simple(), conf), 40)  # Simple: 127.0.0.1:9000
    binds = collections.Counter(c.bind for c in connects)
    assert set(binds) == {("127.0.0.2",), ("127.0.0.3",)}, binds
    for c in connects:
        assert c.bind == SourceAddresses(["127.0.0.2", "127.0.0.3"], []).choose(c.conn, "x.1")[:1]
    assert _connects(Harness(To(proxycore.Peer("::1", 9000)), conf), 1)[0].bind == ("::1",)
    named = _connects(Harness(To(proxycore.Peer("localhost", 9000)), conf), 1)[0]
    assert len(named.bind) == 2 and named.bind[1] == "::1"
    off = _connects(Harness(Simple()), 3)
    assert [c.bind for c in off] == [(), (), ()]


def test_a_bind_that_fails_is_a_502_and_a_log_line_naming_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conf = ServerConf(client_bind_to_ipv4=["192.0.2.1"], max_retries=0)
    logger = logging.getLogger("test.client_bind")
    h = Harness(Simple(), conf, logger=logger)
    down, _ = h.accept()
    (c,) = [a for a in h.data(down, GET) if isinstance(a, Connect)]
    assert c.bind == ("192.0.2.1",)
    words = "could not be connected from source address 192.0.2.1: cannot assign requested address"
    with caplog.at_level(logging.WARNING, "test.client_bind"):
        out = h.feed(ConnectFailed(c.conn, h.now, "error", words))
    assert sent(out, down).startswith(b"HTTP/1.1 502 "), sent(out, down)[:60]
    assert f"upstream 127.0.0.1:9000 {words}" in caplog.text


def test_traces_replay_the_same_source_addresses() -> None:
    conf = ServerConf(client_bind_to_ipv4=["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    h = Harness(Simple(), conf)
    traces = record(h)
    for _ in range(6):
        down, _ = h.accept()
        (c,) = [a for a in h.data(down, GET) if isinstance(a, Connect)]
        h.connected(c.conn)
        h.data(c.conn, OK)
        h.closed(c.conn)
        h.closed(down)
    assert len(traces) == 6
    seen = set()
    for data in traces.values():
        trace = load_trace(data)
        payloads = [json.loads(p) for g in trace.groups for k, _, p in g.actions if k == 67]
        assert len(payloads) == 1 and len(payloads[0]["bind"]) == 1
        seen.add(payloads[0]["bind"][0])
        result = replay(trace)
        assert result.ok, result.report()
    assert len(seen) > 1  # the replays reproduced different choices, not one constant


@pytest.mark.parametrize(
    ("field", "value"),
    [("client_bind_to_ipv4", "::1"), ("client_bind_to_ipv6", "127.0.0.1"),
     ("client_bind_to_ipv4", "localhost"), ("client_bind_to_ipv4", "127.0.0.1:80"),
     ("client_bind_to_ipv4", "224.0.0.1"), ("client_bind_to_ipv4", "255.255.255.255"),
     ("client_bind_to_ipv6", "ff02::1")],
)  # fmt: skip
def test_server_conf_refuses_what_cannot_be_a_source_address(field: str, value: str) -> None:
    conf = ServerConf(**{field: [value]})
    with pytest.raises(ValueError, match=f"{field}: expected an? .*, got '{value}'"):
        conf.check()
    ServerConf(client_bind_to_ipv4=["127.0.0.2", "0.0.0.0"], client_bind_to_ipv6=["::1"]).check()


def test_a_peers_bind_to_overrides_the_list_and_keys_the_pool() -> None:
    conf = ServerConf(client_bind_to_ipv4=["127.0.0.2"])
    own = proxycore.Peer("127.0.0.1", 9000, bind_to="127.0.0.9")
    assert _connects(Harness(To(own), conf), 1)[0].bind == ("127.0.0.9",)
    assert _connects(Harness(To(own)), 1)[0].bind == ("127.0.0.9",)
    plain = proxycore.Peer("127.0.0.1", 9000)
    assert own.key != plain.key and own != plain
    assert own.replace(bind_to="127.0.0.9") == own and own.replace(bind_to=None) == plain
    from proxycore.trace import peer_from_json, peer_to_json

    assert "bind_to" not in peer_to_json(plain)  # traces recorded before the option: the same
    assert peer_from_json(peer_to_json(own)) == own


@pytest.mark.parametrize("command", [["reverse-proxy", "--to", "127.0.0.1:1"], ["run", "m:C"]])
def test_the_flag_sorts_addresses_by_family(command: list[str]) -> None:
    args = _parser().parse_args(
        [*command, "--client-bind-to", "127.0.0.2", "--client-bind-to", "::1",
         "--client-bind-to", "127.0.0.3"]
    )  # fmt: skip
    conf = _conf(args)
    assert conf.client_bind_to_ipv4 == ["127.0.0.2", "127.0.0.3"]
    assert conf.client_bind_to_ipv6 == ["::1"]
    default = _conf(_parser().parse_args(command))
    assert default.client_bind_to_ipv4 == [] and default.client_bind_to_ipv6 == []


@pytest.mark.parametrize(
    ("bad", "words"),
    [("lo", "expected an IPv4 or IPv6 address"), ("127.0.0.1:80", "expected an IPv4 or IPv6"),
     ("224.0.0.1", "expected a unicast address"), ("ff02::1", "expected a unicast address")],
)  # fmt: skip
def test_the_flag_refuses_what_cannot_be_a_source_address(
    bad: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["reverse-proxy", "--to", "127.0.0.1:1", "--client-bind-to", bad])
    assert e.value.code == 2
    assert f"{words}" in capsys.readouterr().err


def test_the_file_sets_them_and_the_flag_replaces_both(tmp_path: Path) -> None:
    from proxycore import cliconf, conffile

    path = tmp_path / "p.yaml"
    path.write_text(
        "server:\n  client_bind_to_ipv4: [127.0.0.2]\n  client_bind_to_ipv6: ['::1']\n"
        "listeners:\n  - address: 127.0.0.1:8080\n"
        "upstreams:\n  g:\n    backends: [127.0.0.1:9001]\nroutes:\n  - upstream: g\n"
    )
    conf, problems = conffile.checked(conffile.load(str(path)))
    assert not problems
    sc = conffile.build(conf).conf
    assert (sc.client_bind_to_ipv4, sc.client_bind_to_ipv6) == (["127.0.0.2"], ["::1"])
    argv = ["reverse-proxy", "-c", str(path), "--client-bind-to", "127.0.0.5"]
    parser = _parser()
    args = parser.parse_args(argv)
    given = cliconf.given_flags(parser.commands["reverse-proxy"], argv[1:])
    cliconf._override(conf, args, given)
    sc = conffile.build(conf).conf
    assert (sc.client_bind_to_ipv4, sc.client_bind_to_ipv6) == (["127.0.0.5"], [])
