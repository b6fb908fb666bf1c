"""The configuration file: schema, line numbers, every problem at once, flags over the file,
``-t``, ``config dump``, and the README's generated field table (no sockets: ``-t`` binds
nothing, and the files here name IP addresses only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from proxycore import cliconf, conffile
from proxycore.cli import _parser, main
from proxycore.confschema import FILE, markdown_table, validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "proxycore.yaml"

GOOD = """\
version: 1
server:
  threads: 2
  graceful_shutdown_timeout_seconds: 9
  connect_timeout: 3
  max_request_body_size: 512k
  max_headers: 50
listeners:
  - address: 127.0.0.1:8080
upstreams:
  api:
    backends:
      - 127.0.0.1:9001,weight=3
      - address: 127.0.0.1:9002
    timeouts: {read: 7}
routes:
  - upstream: api
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "proxycore.yaml"
    p.write_text(text)
    return str(p)


def problems_of(text: str) -> list[str]:
    cf = conffile.read(text, "f.yaml")
    _, problems = conffile.checked(cf)
    return [cf.describe(p) for p in conffile.by_line(cf, problems)]


def test_the_example_file_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reverse-proxy", "-c", str(EXAMPLE), "-t"]) == 0
    assert capsys.readouterr().out == "configuration ok\n"


def test_the_readme_table_is_generated_from_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- config-table -->\n(.*?)<!-- /config-table -->", readme, re.S)
    assert m, "README.md has no <!-- config-table --> block"
    assert m.group(1) == markdown_table(), (
        "README.md's configuration table is stale: paste `proxycore config table` into it"
    )


def test_every_field_has_a_row_and_a_meaning() -> None:
    table = markdown_table()
    for path in ["server.threads", "listeners[].tls.sni_certs.SERVER_NAME.cert",
                 "upstreams.NAME.backends[].weight", "routes[].return", "server.busy_poll"]:  # fmt: skip
        assert f"| `{path}` |" in table
    assert all(not line.endswith("|  |") for line in table.splitlines())


def test_defaults_are_pingoras_and_the_server_conf() -> None:
    from proxycore.config import ServerConf

    conf, problems = validate({})
    assert not problems
    s, sc = conf["server"], ServerConf()
    assert (s["threads"], s["daemon"], s["work_stealing"]) == (1, False, True)
    assert (s["grace_period_seconds"], s["graceful_shutdown_timeout_seconds"]) == (300, 5)
    assert (s["upstream_keepalive_pool_size"], s["max_retries"]) == (128, 16)
    for name in ("connect_timeout", "read_timeout", "keepalive_timeout", "busy_poll",
                 "headers_with_underscores", "read_buffer_limit", "linger_timeout"):  # fmt: skip
        assert s[name] == getattr(sc, name), name
    assert conf["listeners"][0]["address"] == "127.0.0.1:8080"
    assert FILE.fields["server"]


def test_every_problem_at_once_with_its_line() -> None:
    text = """\
server:
  threads: x
  bogus: 1
listeners:
  - address: nope
upstreams:
  api:
    backends:
      - 127.0.0.1:9001
      - address: 127.0.0.1:9002
      - address: 127.0.0.1:9003
        weight: "x"
    lb: hash
    health_check: {check: udp}
routes:
  - host: "a.*.com"
    upstream: api
  - upstream: missing
  - path: /x
  - return: 301
"""
    assert problems_of(text) == [
        'f.yaml:2: server.threads: expected a whole number from 1 to 256, got "x"',
        "f.yaml:3: server.bogus: unknown field",
        'f.yaml:5: listeners[0].address: expected HOST:PORT, got "nope"',
        "f.yaml:7: upstreams.api.hash_key: lb hash needs a hash_key",
        'f.yaml:12: upstreams.api.backends[2].weight: expected a positive integer, got "x"',
        'f.yaml:14: upstreams.api.health_check.check: expected tcp or http:/PATH for a health check, got "udp"',
        'f.yaml:16: routes[0].host: a route host is NAME or *.DOMAIN, got "a.*.com"',
        "f.yaml:18: routes[1].upstream: no upstream group 'missing' (api)",
        "f.yaml:19: routes[2]: a route needs exactly one of upstream and return",
        "f.yaml:20: routes[3].return: return 301 needs a URL, got 301",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes: [\n", "f.yaml:2:1: YAML syntax error: did not find expected node content"),
        (
            "a: 1\n b: 2\n",
            "f.yaml:2:3: YAML syntax error: mapping values are not allowed in this context",
        ),
        ("server:\n  threads: [1\n", "f.yaml:3:1: YAML syntax error"),
    ],
)
def test_yaml_syntax_errors_name_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(conffile.FileError) as e:
        conffile.read(text, "f.yaml")
    assert str(e.value).startswith(expected)


def test_wrong_types_and_duplicates() -> None:
    text = "server:\n  daemon: yes please\n  daemon: 1\nlisteners: {}\nroutes: 3\n"
    assert problems_of(text) == [
        "f.yaml:3: server.daemon: given twice in the same mapping",
        "f.yaml:3: server.daemon: expected true or false, got 1",
        "f.yaml:4: listeners: expected a list, got a mapping",
        "f.yaml:5: routes: expected a list, got 3",
    ]
    assert problems_of("- 1\n") == ["f.yaml:1: expected a mapping at the top, got a list"]


def test_listeners_must_share_one_tls_set_and_pairs_go_together() -> None:
    text = """\
listeners:
  - address: 127.0.0.1:8443
    tls: {cert: a.pem, key: a.key}
  - address: 127.0.0.1:9443
    tls: {cert: b.pem}
"""
    assert problems_of(text) == [
        "f.yaml:5: listeners[1].tls: every TLS listener must use the same tls settings (one set per process today)",
        "f.yaml:5: listeners[1].tls: cert and key go together",
    ]


def test_missing_file_and_certificates_that_do_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reverse-proxy", "-c", str(tmp_path / "nope.yaml"), "-t"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"proxycore reverse-proxy: error: {tmp_path}/nope.yaml: cannot read the configuration file: No such file or directory\n"
    )
    (tmp_path / "bad.pem").write_text("junk\n")
    path = write(tmp_path, GOOD.replace(
        "  - address: 127.0.0.1:8080\n",
        f"  - address: 127.0.0.1:8443\n    tls: {{cert: {tmp_path}/bad.pem, key: {tmp_path}/bad.pem}}\n",
    ) + "server2: 1\n")  # fmt: skip
    assert main(["reverse-proxy", "-c", path, "-t"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "server2: unknown field" in lines[0]  # schema problems first
    path = write(tmp_path, GOOD.replace(
        "  - address: 127.0.0.1:8080\n",
        f"  - address: 127.0.0.1:8443\n    tls: {{cert: {tmp_path}/bad.pem, key: {tmp_path}/bad.pem}}\n",
    ))  # fmt: skip
    assert main(["reverse-proxy", "-c", path, "-t"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and ":10: listeners[0].tls: " in lines[0] and "bad.pem" in lines[0], (
        lines
    )


def test_flags_typed_override_the_file_and_defaults_do_not(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    argv = ["reverse-proxy", "-c", path, "--workers", "4", "--listen", "127.0.0.1:7000",
            "--read-timeout", "11"]  # fmt: skip
    parser = _parser()
    args = parser.parse_args(argv)
    given = cliconf.given_flags(parser.commands["reverse-proxy"], argv[1:])
    assert given == {"conf", "workers", "listen", "read_timeout"}
    conf, problems = conffile.checked(conffile.load(path))
    assert not problems
    cliconf._override(conf, args, given)
    built = conffile.build(conf)
    assert built.workers == 4 and built.listen == ["http://127.0.0.1:7000"]
    assert (
        built.conf.shutdown_timeout == 9.0
    )  # --shutdown-timeout (default 5) not typed: the file's value stays
    assert built.conf.grace_period == 300.0
    sc = built.conf
    assert (sc.read_timeout, sc.connect_timeout, sc.max_request_body_size) == (11, 3, 512 << 10)
    assert sc.limits.max_headers == 50
    assert built.daemon == {"daemon": False, "pid_file": None,
                            "error_log": None, "user": None, "group": None}  # fmt: skip
    kw = conffile.routed_proxy_kwargs(conf)
    assert kw["upstreams"]["api"]["backends"] == [
        "127.0.0.1:9001,weight=3",
        "127.0.0.1:9002,weight=1",
    ]
    assert kw["upstreams"]["api"]["peer_options"] == {"read_timeout": 7.0}


def test_upstream_flags_with_a_file_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reverse-proxy", "-c", write(tmp_path, GOOD), "--to", "127.0.0.1:1", "-t"]) == 2
    assert "--to: with -c the upstreams and routes come from the file" in capsys.readouterr().err


def test_reverse_proxy_needs_a_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reverse-proxy", "-c", write(tmp_path, "server: {threads: 1}\n"), "-t"]) == 2
    assert capsys.readouterr().err.endswith(": routes: reverse-proxy needs at least one route\n")


def test_run_hands_other_sections_to_the_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORIGIN_PORT", "9")
    text = "server: {threads: 1}\ngreeting:\n  text: 3\n  upstream: 9\n  colour: red\n"
    assert main(["run", "conformance.apps:ConfiguredApp", "-c", write(tmp_path, text), "-t"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"proxycore run: error: {tmp_path}/proxycore.yaml:3: greeting.text: expected a string",
        f"proxycore run: error: {tmp_path}/proxycore.yaml:5: greeting.colour: unknown field",
    ]
    text = "greeting: {text: hi, upstream: 9}\n"
    assert main(["run", "conformance.apps:ConfiguredApp", "-c", write(tmp_path, text), "-t"]) == 0
    assert capsys.readouterr().out == "configuration ok\n"
    # a class without configure() accepts no section
    assert main(["run", "conformance.apps:HeaderApp", "-c", write(tmp_path, text), "-t"]) == 2
    assert (
        "proxycore.yaml:1: greeting: unknown section (HeaderApp takes no configuration"
        in capsys.readouterr().err
    )


def test_config_dump_is_a_complete_valid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "dump", "-c", write(tmp_path, GOOD)]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    conf, problems = validate(dumped)
    assert not problems and conf == dumped
    assert dumped["server"]["threads"] == 2 and dumped["server"]["max_retries"] == 16
    assert dumped["upstreams"]["api"]["passive_health"]["eject_for"] == 10.0
    assert main(["config", "table"]) == 0
    assert capsys.readouterr().out == markdown_table()


def test_test_flag_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reverse-proxy", "--to", "127.0.0.1:9", "-t"]) == 0
    assert capsys.readouterr().out == "configuration ok\n"


def test_tls_flags_make_the_files_listeners_tls(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - address: 127.0.0.1:8080\n",
        "  - address: 127.0.0.1:8443\n  - address: 127.0.0.1:8081\n",
    )
    path = write(tmp_path, text)
    argv = ["reverse-proxy", "-c", path, "--tls-cert", "c.pem", "--tls-key", "k.pem",
            "--tls-sni-cert", "a.test=a.pem,a.key"]  # fmt: skip
    parser = _parser()
    args = parser.parse_args(argv)
    conf, _ = conffile.checked(conffile.load(path))
    cliconf._override(conf, args, cliconf.given_flags(parser.commands["reverse-proxy"], argv[1:]))
    built = conffile.build(conf)
    assert built.listen == ["https://127.0.0.1:8443", "https://127.0.0.1:8081"]
    assert built.conf.tls is not None and built.conf.tls.cert == "c.pem"
    assert built.conf.tls.sni_certs == {"a.test": ("a.pem", "a.key")}
    # --listen with http:// stays plain; the others take the file's (here the flags') TLS
    argv += ["--listen", "http://127.0.0.1:8081", "--listen", "127.0.0.1:8443"]
    args = parser.parse_args(argv)
    conf, _ = conffile.checked(conffile.load(path))
    cliconf._override(conf, args, cliconf.given_flags(parser.commands["reverse-proxy"], argv[1:]))
    assert conffile.build(conf).listen == ["http://127.0.0.1:8081", "https://127.0.0.1:8443"]


def test_http2_switches_from_the_file_and_the_flags(tmp_path: Path) -> None:
    built = conffile.build(conffile.checked(conffile.read(GOOD, "f.yaml"))[0])
    assert (built.conf.h2c, built.conf.h2, built.conf.h2_max_concurrent_streams) == (
        True,
        True,
        100,
    )
    text = GOOD.replace(
        "  - address: 127.0.0.1:8080\n",
        "  - address: 127.0.0.1:8080\n    h2c: false\n    h2: false\n",
    ).replace("  max_headers: 50\n", "  max_headers: 50\n  h2_max_concurrent_streams: 7\n")
    built = conffile.build(conffile.checked(conffile.read(text, "f.yaml"))[0])
    assert (built.conf.h2c, built.conf.h2, built.conf.h2_max_concurrent_streams) == (
        False,
        False,
        7,
    )
    # the flags typed with -c switch HTTP/2 off on every listener, and set the stream limit
    path = write(tmp_path, GOOD)
    argv = ["reverse-proxy", "-c", path, "--no-h2c", "--h2-max-concurrent-streams", "3"]
    parser = _parser()
    args = parser.parse_args(argv)
    given = cliconf.given_flags(parser.commands["reverse-proxy"], argv[1:])
    conf, problems = conffile.checked(conffile.load(path))
    assert not problems
    cliconf._override(conf, args, given)
    built = conffile.build(conf)
    assert (built.conf.h2c, built.conf.h2, built.conf.h2_max_concurrent_streams) == (False, True, 3)


def test_listeners_must_agree_on_the_http2_switches() -> None:
    text = """\
listeners:
  - address: 127.0.0.1:8080
    h2c: false
  - address: 127.0.0.1:8081
  - address: 127.0.0.1:8082
    h2c: false
"""
    assert problems_of(text) == [
        "f.yaml:4: listeners[1].h2c: every listener has the same h2c today (the first says false)"
    ]
    text = """\
listeners:
  - address: 127.0.0.1:8443
    tls: {cert: a.pem, key: a.key, alpn: [h2, http/1.1, spdy/3]}
"""
    assert problems_of(text) == [
        'f.yaml:3: listeners[0].tls.alpn[2]: expected h2 or http/1.1, got "spdy/3"'
    ]
