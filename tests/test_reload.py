"""Reloading the configuration (SIGHUP): the engine's Reconfigure event (no sockets), the file
loaded again as start-up loads it (flags over the file), and the adapter-side reload
(proxycore.adapters.reload) driven with a stand-in driver: applied, refused, upgrade-only
settings named, unchanged upstream groups kept, the access log reopened."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxycore.actions import Close, SetTimer
from proxycore.builtin import RoutedProxy
from proxycore.cli import _parser
from proxycore.cliconf import given_flags, load_file
from proxycore.config import ServerConf
from proxycore.events import Reconfigure, Started, TimerFired
from proxycore.testing import Harness
from tests.helpers import sent

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def routed(port: int, **group: Any) -> RoutedProxy:
    return RoutedProxy(
        {"g": {"backends": [f"127.0.0.1:{port}"], **group}}, [{"path": "/", "upstream": "g"}]
    )


def reconfigure(h: Harness, app: Any, conf: ServerConf | None = None, **kw: Any) -> list[Any]:
    return h.feed(Reconfigure(0, h.now, app, conf or ServerConf(), **kw))


def start_request(h: Harness) -> tuple[int, int, int]:
    down, _ = h.accept()
    (c,) = Harness.connects(h.data(down, GET))
    h.connected(c.conn)
    return down, c.conn, c.peer.port


# -- the engine ------------------------------------------------------------------------------


def test_new_exchanges_use_the_new_app_in_flight_ones_finish_on_theirs() -> None:
    h = Harness(routed(9001))
    down, up, port = start_request(h)
    assert port == 9001
    reconfigure(h, routed(9002))
    # the exchange in flight ends on the old app (its ctx, its group's bookkeeping)
    out = sent(h.data(up, OK), down)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"ok")
    # the same keep-alive connection's next request, and a new connection: the new app
    (c,) = Harness.connects(h.data(down, GET))
    assert c.peer.port == 9002
    assert start_request(h)[2] == 9002


def test_new_timeouts_apply_to_what_is_armed_afterwards() -> None:
    h = Harness(routed(9001), ServerConf(read_timeout=60.0))
    reconfigure(h, routed(9001), ServerConf(read_timeout=3.0))
    down, _ = h.accept()
    (c,) = Harness.connects(h.data(down, GET))
    acts = h.connected(c.conn)
    deadlines = [a.deadline for a in acts if isinstance(a, SetTimer) and a.conn == down]
    assert deadlines and min(deadlines) == pytest.approx(h.now + 3.0), acts
    h.now += 3.0
    out = sent(h.feed(TimerFired(down, h.now)), down)
    assert out.startswith(b"HTTP/1.1 504 ")


def test_pool_limits_follow_the_conf() -> None:
    h = Harness(routed(9001))
    reconfigure(h, routed(9001), ServerConf(upstream_keepalive_pool_size=0))
    assert h.engine.pool.max_idle == 0


def test_health_checks_stop_and_start() -> None:
    check = {"health_check": "tcp", "health_interval": 1.0}
    h = Harness(routed(9001, **check))
    (old,) = h.engine.services
    h.feed(Started(0, h.now))
    (probe,) = Harness.connects(h.feed(TimerFired(old, h.now)))
    # a new group with another check: the old checker stops (its timer and probe with it)
    acts = reconfigure(h, routed(9002, **check))
    assert SetTimer(old, None) in acts and Close(probe.conn, True) in acts
    (new,) = h.engine.services
    assert new != old and SetTimer(new, h.now) in acts
    (c,) = Harness.connects(h.feed(TimerFired(new, h.now)))
    assert c.peer.port == 9002
    assert h.feed(TimerFired(old, h.now)) == []  # a late timer of the old one: ignored
    # no check any more: removed
    acts = reconfigure(h, routed(9002))
    assert not h.engine.services and SetTimer(new, None) in acts


def test_services_given_and_already_running_keep_running() -> None:
    app = routed(9001, health_check="tcp")
    h = Harness(app)
    (svc_id,) = h.engine.services
    svc = h.engine.services[svc_id]
    h.feed(Started(0, h.now))
    acts = reconfigure(h, routed(9001), services=[svc])
    assert h.engine.services == {svc_id: svc} and not [a for a in acts if a.conn == svc_id]


def test_keep_groups_takes_over_unchanged_groups_with_their_state() -> None:
    old = RoutedProxy(
        {"a": {"backends": ["127.0.0.1:9001"]}, "b": {"backends": ["127.0.0.1:9002"]}},
        [{"path": "/a", "upstream": "a"}, {"path": "/", "upstream": "b"}],
    )
    old.groups["a"].lb.backends[0].healthy = False
    new = RoutedProxy(
        {"a": {"backends": ["127.0.0.1:9001"]}, "b": {"backends": ["127.0.0.1:9003"]}},
        [{"path": "/", "upstream": "a"}, {"path": "/b", "upstream": "b"}],
    )
    kept = new.keep_groups(old)
    assert kept == [old.groups["a"]] and new.groups["a"] is old.groups["a"]
    assert new.groups["b"] is not old.groups["b"]
    assert new._route_groups == [new.groups["a"], new.groups["b"]]


def test_the_access_log_follows() -> None:
    h = Harness(routed(9001))
    sink = logging.getLogger("test.reload.access")
    reconfigure(h, routed(9001), access_log=sink)
    assert h.engine.access_log is sink
    reconfigure(h, routed(9001))
    assert h.engine.access_log is None


# -- the file, loaded again --------------------------------------------------------------------


def conf_file(tmp_path: Path, port: int = 9001, **server: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "server": {"read_timeout": 30, **server},
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {"g": {"backends": [f"127.0.0.1:{port}"]}},
        "routes": [{"path": "/", "upstream": "g"}],
    }


def write(path: Path, conf: dict[str, Any] | str) -> None:
    path.write_text(conf if isinstance(conf, str) else yaml.safe_dump(conf))


def args_for(path: Path, *flags: str) -> tuple[Any, set[str]]:
    argv = ["reverse-proxy", "-c", str(path), *flags]
    parser = _parser()
    args, _ = parser.parse_known_args(argv)
    return args, given_flags(parser.commands["reverse-proxy"], argv[1:])


def test_load_file_applies_the_flags_given_at_start_again(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, conf_file(tmp_path))
    args, given = args_for(path, "--connect-timeout", "7")
    loaded = load_file(args, given)
    assert not loaded.problems and isinstance(loaded.app, RoutedProxy)
    assert loaded.built.conf.connect_timeout == 7.0 and loaded.built.conf.read_timeout == 30.0
    write(path, conf_file(tmp_path, connect_timeout=99, read_timeout=4))
    again = load_file(args, given)
    assert again.built.conf.connect_timeout == 7.0 and again.built.conf.read_timeout == 4.0


def test_load_file_reports_what_start_up_prints(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, "version: 1\nserver: [\n")
    args, given = args_for(path)
    (problem,) = load_file(args, given).problems
    assert problem.startswith(f"{path}:") and "YAML" in problem
    conf = conf_file(tmp_path)
    conf["routes"][0]["upstream"] = "missing"
    write(path, conf)
    assert "missing" in " ".join(load_file(args, given).problems)


# -- the adapter side --------------------------------------------------------------------------


class Driver:
    """What reload() needs of a SocketDriver: the engine, feed, now, run_in_thread."""

    def __init__(self, app: Any, conf: ServerConf) -> None:
        self.h = Harness(app, conf)
        self.engine = self.h.engine
        self.actions: list[Any] = []

    def feed(self, ev: Any) -> None:
        self.actions += self.h.feed(ev)

    def now(self) -> float:
        return self.h.now

    def run_in_thread(self, fn: Any, done: Any) -> None:
        try:
            result = fn()
        except BaseException as e:
            done(error=e)
        else:
            done(result)


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """A proxy 'started' from a file: (driver, path, args, given); the reload source is
    registered as run_with_file does, and removed afterwards."""
    from proxycore.adapters import reload as reload_mod

    path = tmp_path / "p.yaml"
    write(path, conf_file(tmp_path))
    args, given = args_for(path)
    loaded = load_file(args, given)
    reload_mod.set_source(
        lambda: load_file(args, given), loaded.built, loaded.conf, "reverse-proxy", str(path)
    )
    yield Driver(loaded.app, loaded.built.conf), path
    reload_mod._source = None
    logging.getLogger().setLevel(logging.WARNING)


def test_reload_applies_a_good_file(served: Any, tmp_path: Path, capsys: Any) -> None:
    from proxycore.adapters import reload_config

    driver, path = served
    old_app = driver.engine.app
    write(path, conf_file(tmp_path, port=9002, read_timeout=3))
    reload_config(driver)
    assert "proxycore config reloaded" in capsys.readouterr().out
    assert driver.engine.app is not old_app and driver.engine.conf.read_timeout == 3.0
    assert start_request(driver.h)[2] == 9002


def test_reload_refuses_a_bad_file(served: Any, capsys: Any, caplog: Any) -> None:
    from proxycore.adapters import reload_config

    driver, path = served
    app, conf = driver.engine.app, driver.engine.conf
    path.write_text(path.read_text() + "routes: [\n")
    with caplog.at_level(logging.ERROR, "proxycore"):
        reload_config(driver)
    assert "proxycore config reload refused" in capsys.readouterr().out
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith(
        f"configuration reload refused, keeping the current configuration: {path}:"
    )
    assert driver.engine.app is app and driver.engine.conf is conf and not driver.actions


def test_upgrade_only_changes_are_named_and_the_rest_applied(
    served: Any, tmp_path: Path, capsys: Any, caplog: Any
) -> None:
    from proxycore.adapters import reload_config

    driver, path = served
    conf = conf_file(tmp_path, port=9002, backend="trio", busy_poll=0)
    conf["listeners"] = [{"address": "127.0.0.1:8081"}]
    write(path, conf)
    with caplog.at_level(logging.WARNING, "proxycore"):
        reload_config(driver)
    assert "proxycore config reloaded" in capsys.readouterr().out
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "needs an upgrade (proxycore reverse-proxy -c" in line and " -u)" in line
    assert line.endswith("not reloaded: listeners, backend, busy_poll"), line
    assert driver.engine.conf.busy_poll == ServerConf().busy_poll  # the running value stays
    assert start_request(driver.h)[2] == 9002  # the rest applied


def test_unchanged_groups_keep_their_health_checker(served: Any, tmp_path: Path) -> None:
    from proxycore.adapters import reload_config

    driver, path = served
    conf = conf_file(tmp_path)
    conf["upstreams"]["g"]["health_check"] = {"check": "tcp", "interval": 1}
    conf["upstreams"]["h"] = {"backends": ["127.0.0.1:9005"]}
    write(path, conf)
    reload_config(driver)
    (svc,) = driver.engine.services.values()
    driver.h.feed(Started(0, driver.h.now))
    conf["routes"].insert(0, {"path": "/h", "upstream": "h"})  # g unchanged
    write(path, conf)
    reload_config(driver)
    assert list(driver.engine.services.values()) == [svc]


def test_access_log_reopened_after_a_rename(tmp_path: Path) -> None:
    from proxycore.adapters.access import AccessLogHandler, reload_access_log

    logger = logging.getLogger("proxycore.access")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    path = tmp_path / "access.log"
    try:
        conf = ServerConf(access_log=str(path))
        reload_access_log(conf)
        (handler,) = [h for h in logger.handlers if isinstance(h, AccessLogHandler)]
        handler._write("one\n")
        os.rename(path, tmp_path / "access.log.1")
        reload_access_log(conf)  # same path and format: the same handler, reopened
        assert [h for h in logger.handlers if isinstance(h, AccessLogHandler)] == [handler]
        handler._write("two\n")
        assert path.read_text() == "two\n" and (tmp_path / "access.log.1").read_text() == "one\n"
        other = tmp_path / "other.log"
        reload_access_log(ServerConf(access_log=str(other), access_log_format="json"))
        (new,) = [h for h in logger.handlers if isinstance(h, AccessLogHandler)]
        assert new is not handler and handler.fd == -1  # replaced: the old one closed
        assert reload_access_log(ServerConf()) is None  # off
        assert not [h for h in logger.handlers if isinstance(h, AccessLogHandler)]
    finally:
        for h in list(logger.handlers):
            if h not in saved[0]:
                logger.removeHandler(h)
                h.close()
        logger.propagate, logger.level = saved[1], saved[2]


def test_traces_begun_after_a_reload_name_the_new_app() -> None:
    from proxycore.replay import load_trace
    from proxycore.trace import Recorder

    h = Harness(routed(9001))
    out: dict[int, bytes] = {}
    h.engine.recorder = Recorder(h.engine, lambda conn, data: out.update({conn: data}))
    first = start_request(h)[0]
    reconfigure(h, routed(9002))
    second = start_request(h)[0]
    h.engine.recorder.flush_all()

    def backends(conn: int) -> list[str]:
        backends: list[str] = load_trace(out[conn]).header["app_init"]["upstreams"]["g"]["backends"]
        return backends

    assert backends(first) == ["127.0.0.1:9001"] and backends(second) == ["127.0.0.1:9002"]
