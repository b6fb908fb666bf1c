"""The command line's argument handling, without starting a server: errors print one short
usage line and the message (status 2), the ServerConf flags reach ServerConf, sizes parse, and
argument combinations the proxy cannot serve are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxycore.cli import _body_size, _conf, _parser, main
from proxycore.runner import StartupError, load_backend

SUBCOMMANDS = ["reverse-proxy", "run", "replay", "demo"]


def _error_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("argv", "prog", "message"),
    [
        (["reverse-proxy", "--to", "127.0.0.1:1", "--connect-timeout", "x"],
         "proxycore reverse-proxy", "argument --connect-timeout: expected seconds, got 'x'"),
        (["reverse-proxy", "--bogus"], "proxycore reverse-proxy",
         "unrecognized arguments: --bogus"),
        (["run"], "proxycore run", "the following arguments are required: module:Class"),
        (["run", "m:C", "--listen", "nowhere"], "proxycore run",
         "argument --listen: expected HOST:PORT, got 'nowhere'"),
        (["demo", "--backend", "nope"], "proxycore demo", "unknown backend 'nope'"),
        (["replay"], "proxycore replay", "the following arguments are required: DIR_OR_FILE"),
        ([], "proxycore", "the following arguments are required: command"),
        (["serve"], "proxycore", "invalid choice: 'serve'"),
    ],
)  # fmt: skip
def test_argument_error_is_one_usage_line_and_the_message(
    argv: list[str], prog: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    usage, error = _error_lines(argv, capsys)
    assert usage.startswith(f"usage: {prog} ") and len(usage) < 80, usage
    assert error.startswith(f"{prog}: error: ") and message in error, error


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_still_lists_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: proxycore {command} ")
    assert "--help" in out and ("--listen" in out or command == "replay")


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("512k", 512 << 10), ("10m", 10 << 20), ("10M", 10 << 20),
     ("1g", 1 << 30), ("1", 1), ("none", None), ("unlimited", None)],
)  # fmt: skip
def test_body_sizes(text: str, size: int | None) -> None:
    assert _body_size(text) == size


@pytest.mark.parametrize("bad", ["0", "0k", "-1", "10mb", "1.5m", "", "lots"])
def test_bad_body_size_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = _error_lines(
        ["reverse-proxy", "--to", "127.0.0.1:1", "--max-request-body-size", bad], capsys
    )
    assert "--max-request-body-size" in error and "expected a size" in error


@pytest.mark.parametrize("command", [["reverse-proxy", "--to", "127.0.0.1:1"], ["run", "m:C"]])
def test_server_conf_flags_reach_server_conf(command: list[str]) -> None:
    args = _parser().parse_args(
        [*command, "--max-request-body-size", "10m", "--client-body-timeout", "7.5",
         "--send-timeout", "3"]
    )  # fmt: skip
    conf = _conf(args)
    assert conf.max_request_body_size == 10 << 20
    assert conf.client_body_timeout == 7.5
    assert conf.send_timeout == 3.0
    defaults = _conf(_parser().parse_args(command))
    assert defaults.max_request_body_size is None  # unlimited
    assert defaults.client_body_timeout == 60.0 and defaults.send_timeout == 60.0


@pytest.mark.parametrize("flag", ["--client-body-timeout", "--send-timeout"])
@pytest.mark.parametrize("bad", ["0", "-2", "soon"])
def test_timeouts_must_be_positive(flag: str, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, error = _error_lines(["reverse-proxy", "--to", "127.0.0.1:1", flag, bad], capsys)
    assert f"argument {flag}" in error


@pytest.mark.parametrize("lb", ["hash", "consistent"])
def test_hash_selectors_need_a_hash_key(lb: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before anything starts: main returns (a server would block here).
    assert main(["reverse-proxy", "--to", "127.0.0.1:1", "--lb", lb]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"proxycore reverse-proxy: error: --lb {lb} needs --hash-key "
        "(header:NAME, uri or client_ip)"
    )


def test_registered_backends_load() -> None:
    for name in ("asyncio", "threads"):
        module, _ = load_backend(name)
        assert callable(module.serve)


def test_adapter_module_that_cannot_load_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match=r"cannot load backend 'proxycore\.adapters\.nope'"):
        load_backend("proxycore.adapters.nope")


def test_missing_to_prints_the_usage_line(capsys: pytest.CaptureFixture[str]) -> None:
    usage, error = _error_lines(["reverse-proxy", "--listen", "127.0.0.1:0"], capsys)
    assert usage.startswith("usage: proxycore reverse-proxy --to HOST:PORT"), usage
    assert error == (
        "proxycore reverse-proxy: error: give at least one --to HOST:PORT (or --backends-file, "
        "or -c FILE)"
    )


@pytest.mark.parametrize(
    ("to", "words"),
    [("ftp://127.0.0.1:21", "the scheme 'ftp' is not supported (http, https)"),
     ("ws://127.0.0.1:80,weight=2", "the scheme 'ws' is not supported (http, https)")],
)  # fmt: skip
def test_unsupported_upstream_scheme_is_named(
    to: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, error = _error_lines(["reverse-proxy", "--to", to], capsys)
    assert error.startswith("proxycore reverse-proxy: error: argument --to: ") and words in error


def test_unsupported_scheme_in_a_backends_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "backends"
    listed.write_text("127.0.0.1:9000\nftp://127.0.0.1:21\n")
    assert main(["reverse-proxy", "--backends-file", str(listed)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"proxycore reverse-proxy: error: --backends-file {str(listed)!r}: line 2: "
        "'ftp://127.0.0.1:21': the scheme 'ftp' is not supported (http, https)"
    )


def test_replay_names_the_app_given_when_it_cannot_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_replay import Tagging, _record

    trace = tmp_path / "one.pctrace"
    trace.write_bytes(next(iter(_record(Tagging()).values())))
    assert main(["replay", str(trace), "--app", "tests.test_replay:Tagging"]) == 0
    capsys.readouterr()
    for spec, words in [
        ("nosuchmod:X", "cannot load --app 'nosuchmod:X': No module named 'nosuchmod'"),
        ("tests.test_replay:Nope", "cannot load --app 'tests.test_replay:Nope': "),
        ("tests.test_replay", "cannot load --app 'tests.test_replay': expected module:Class"),
        ("tests.test_replay:ORIGIN", "--app 'tests.test_replay:ORIGIN' is not a proxycore.Proxy"),
    ]:
        assert main(["replay", str(trace), "--app", spec]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("proxycore replay: error: ") and words in line, line
        assert "recorded" not in line and "pass the app" not in line, line
