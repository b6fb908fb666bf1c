"""The ``proxycore`` command: reverse-proxy, run, demo.

Exit status 2 for any invalid argument (a short usage line and a message naming the bad value;
nothing is started) and for any start-up failure (one line on stderr, no traceback: a listen
address that cannot be bound, a backend package that is not installed, a worker that fails
before serving; see :class:`proxycore.runner.StartupError`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from proxycore._version import __version__
from proxycore.builtin import parse_backend, parse_hash_key
from proxycore.config import ServerConf, TlsSettings, source_address_problem
from proxycore.confschema import parse_size
from proxycore.health import HealthCheck
from proxycore.lb import SELECTORS
from proxycore.peer import Peer
from proxycore.phases import Proxy
from proxycore.runner import (
    BACKENDS,
    StartupError,
    assign_tls_ports,
    parse_listen,
    resolve_backend,
    run,
)

__all__ = ["main"]


def _number_of_seconds(text: str, ok: Callable[[float], bool], expected: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return v


def _seconds(text: str) -> float:
    return _number_of_seconds(text, lambda v: v > 0, "a positive number of seconds")


def _non_negative_seconds(text: str) -> float:
    return _number_of_seconds(text, lambda v: v >= 0, "0 or a positive number of seconds")


def _busy_poll(text: str) -> float:
    return _number_of_seconds(text, lambda v: 0 <= v <= 1, "0 (off) to 1 seconds")


def _body_size(text: str) -> int | None:
    """Bytes, or with a k/m/g suffix (powers of 1024, as nginx); ``none`` = unlimited."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers from 1 to 256, got {text!r}"
        )
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _backend(text: str) -> str:
    try:
        module_name, _ = resolve_backend(text)
        if text not in BACKENDS:
            importlib.import_module(module_name)
    except (ValueError, ImportError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _source_address(text: str) -> str:
    """A unicast IPv4 or IPv6 address (``--client-bind-to``), as written."""
    problem = source_address_problem(text, 6 if ":" in text else 4)
    if problem is not None:
        if problem.startswith("expected an IPv"):
            problem = "expected an IPv4 or IPv6 address"
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


def split_families(addrs: list[str]) -> tuple[list[str], list[str]]:
    """``--client-bind-to`` values -> (IPv4 addresses, IPv6 addresses), in order."""
    return [a for a in addrs if ":" not in a], [a for a in addrs if ":" in a]


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that runs ``check`` (which raises ValueError naming the bad value) and
    keeps the text."""

    def validate(text: str) -> str:
        try:
            check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return validate


_listen = _checked(parse_listen)
_backend_spec = _checked(parse_backend)
_health_check = _checked(HealthCheck.parse)
_hash_key = _checked(parse_hash_key)


def _access_log(text: str) -> str:
    from proxycore.adapters.access import check_access_log

    problem = check_access_log(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _parse_sni_cert(text: str) -> tuple[str, tuple[str, str]]:
    name, eq, files = text.partition("=")
    cert, comma, key = files.partition(",")
    if not eq or not name or not comma or not cert or not key:
        raise ValueError(f"expected NAME=CERT,KEY, got {text!r}")
    return name, (cert, key)


_sni_cert = _checked(_parse_sni_cert)


def _selector(text: str) -> str:
    if text not in SELECTORS:
        raise argparse.ArgumentTypeError(
            f"unknown selector {text!r}; choose from {', '.join(SELECTORS)}"
        )
    return text


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--conf",
        metavar="FILE",
        help="configuration file (YAML; see the README's Configuration file section); flags "
        "given as well override its values",
    )
    p.add_argument(
        "-t",
        "--test",
        action="store_true",
        help="check the configuration (every field, certificates, addresses, routes) and exit: "
        "'configuration ok' and status 0, or one line per problem and status 2",
    )
    p.add_argument(
        "-u",
        "--upgrade",
        action="store_true",
        help="zero-downtime upgrade: take the listening sockets over from the running proxycore "
        "instead of binding them (wait on --upgrade-sock, then send SIGQUIT to the running "
        "one; it drains once this one serves)",
    )
    p.add_argument(
        "--listen",
        action="append",
        type=_listen,
        metavar="HOST:PORT",
        help="address to listen on (repeatable; default 127.0.0.1:8080). With --tls-cert or "
        "--tls-sni-cert every address speaks TLS unless written http://HOST:PORT",
    )
    p.add_argument("--tls-cert", metavar="PEM", help="TLS certificate (chain) for the listeners")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--tls-sni-cert",
        action="append",
        default=[],
        type=_sni_cert,
        metavar="NAME=CERT,KEY",
        help="certificate for a server name (exact or *.example.com); repeatable",
    )
    p.add_argument(
        "--tls-client-ca", metavar="PEM", help="verify client certificates against this CA bundle"
    )
    p.add_argument(
        "--tls-client-auth",
        choices=["optional", "required"],
        help="client certificates: optional or required (default required with --tls-client-ca)",
    )
    p.add_argument(
        "--tls-handshake-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="time a client may take to complete the TLS handshake (default 10)",
    )
    p.add_argument(
        "--backend",
        default="asyncio",
        type=_backend,
        metavar="NAME",
        help=f"runtime adapter: {', '.join(BACKENDS)}, or the module path of an adapter "
        "(default asyncio)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_seconds,
        metavar="S",
        help="upstream connect timeout (default 60)",
    )
    p.add_argument(
        "--read-timeout",
        type=_seconds,
        metavar="S",
        help="upstream read timeout between two reads (default 60)",
    )
    p.add_argument(
        "--write-timeout", type=_seconds, metavar="S", help="upstream write timeout (default 60)"
    )
    p.add_argument(
        "--header-timeout",
        type=_seconds,
        metavar="S",
        help="time allowed to receive a request head (default 60)",
    )
    p.add_argument(
        "--client-body-timeout",
        type=_seconds,
        metavar="S",
        help="time allowed between two reads of a request body → 408 (default 60)",
    )
    p.add_argument(
        "--send-timeout",
        type=_seconds,
        metavar="S",
        help="time a client may stop reading the response before it is cut off (default 60)",
    )
    p.add_argument(
        "--max-request-body-size",
        type=_body_size,
        metavar="SIZE",
        help="largest request body accepted, in bytes or with k/m/g → 413 (default none)",
    )
    p.add_argument(
        "--keepalive-timeout",
        type=_seconds,
        metavar="S",
        help="idle time allowed between requests on a client connection (default 75)",
    )
    p.add_argument(
        "--upstream-idle-timeout",
        type=_seconds,
        metavar="S",
        help="idle time of a pooled upstream connection (default 60)",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        metavar="N",
        help="idle upstream connections kept (default 128; 0 disables pooling)",
    )
    p.add_argument(
        "--busy-poll",
        type=_busy_poll,
        metavar="S",
        help="busy polling: after a read, keep polling instead of sleeping for an adaptive window "
        "of at most S seconds (cuts wake-up latency, mostly on VMs; costs CPU on back-to-back "
        "traffic; default 0.0002; 0 = off)",
    )
    p.add_argument(
        "--client-bind-to",
        action="append",
        type=_source_address,
        metavar="ADDR",
        help="local source address for connections to origins, bound before connecting "
        "(repeatable; IPv4 and IPv6, each used for origins of its family; several of a family: "
        "one per connection; Pingora's client_bind_to_ipv4/ipv6; default: the kernel chooses)",
    )
    p.add_argument(
        "--no-forwarded-headers",
        action="store_true",
        help="do not append X-Forwarded-For/-Proto/-Host",
    )
    p.add_argument(
        "--headers-with-underscores",
        choices=["allow", "drop", "reject"],
        help="request header fields with '_' in the name: forward, drop, or answer 400 "
        "(default drop, as nginx)",
    )
    p.add_argument(
        "--no-h2c",
        action="store_true",
        help="do not take HTTP/2 by prior knowledge on cleartext listeners (the connection "
        "preface then gets a 505; default: HTTP/1.1 and h2c on the same port)",
    )
    p.add_argument(
        "--no-h2",
        action="store_true",
        help="do not offer HTTP/2 (ALPN h2) on TLS listeners (default: h2, then http/1.1)",
    )
    p.add_argument(
        "--h2-max-concurrent-streams",
        type=_count,
        metavar="N",
        help="HTTP/2 streams one client connection may have open at once; more are refused "
        "with REFUSED_STREAM (default 100)",
    )
    p.add_argument(
        "--h2-max-resets",
        type=_count,
        metavar="N",
        help="HTTP/2 streams a client connection may reset (or have refused) per flood window; "
        "more: GOAWAY ENHANCE_YOUR_CALM and close (rapid reset; default 100)",
    )
    p.add_argument(
        "--h2-max-control-frames",
        type=_count,
        metavar="N",
        help="HTTP/2 PING, SETTINGS, PRIORITY, unearned WINDOW_UPDATE, empty DATA and "
        "RST_STREAM on closed streams a client connection may send per flood window; more: "
        "GOAWAY ENHANCE_YOUR_CALM and close (default 1000)",
    )
    p.add_argument(
        "--h2-flood-window",
        type=float,
        metavar="SECONDS",
        help="the window the HTTP/2 flood budgets count in (default 10)",
    )
    p.add_argument(
        "--h2-max-header-block",
        type=_count,
        metavar="BYTES",
        help="an HTTP/2 header block's size across CONTINUATION frames; more: GOAWAY "
        "ENHANCE_YOUR_CALM and close (default 65536)",
    )
    p.add_argument(
        "--h2-header-table-size",
        type=int,
        metavar="BYTES",
        help="the HPACK dynamic table HTTP/2 clients may use (SETTINGS_HEADER_TABLE_SIZE, "
        "default 4096)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes sharing the listening ports, supervised (default 1)",
    )
    p.add_argument(
        "-d",
        "--daemon",
        action="store_true",
        help="detach and run in the background; exits 0 once serving, 2 with the start-up "
        "error (pid file default /tmp/proxycore.pid)",
    )
    p.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the server's pid to PATH (refused if it names a running process; "
        "removed on exit; default /tmp/proxycore.pid with --daemon, none otherwise)",
    )
    p.add_argument(
        "--error-log",
        metavar="PATH",
        help="append stderr (the log; with --daemon stdout too) to PATH (default: stderr, "
        "or /dev/null with --daemon)",
    )
    p.add_argument(
        "--user",
        metavar="NAME",
        help="switch to this user after binding the listeners (needs root; ports below 1024 "
        "then work)",
    )
    p.add_argument(
        "--group",
        metavar="NAME",
        help="switch to this group after binding (default: --user's primary group)",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="record one session trace per client connection into DIR (see proxycore replay)",
    )
    p.add_argument(
        "--access-log",
        type=_access_log,
        metavar="PATH",
        help="write one line per request to PATH (appended; - for standard output) through "
        "the proxycore.access logger (default: no access log)",
    )
    p.add_argument(
        "--access-log-format",
        choices=["combined", "json"],
        default="combined",
        help="nginx's combined format plus request and upstream times, or one JSON object per "
        "line (default combined)",
    )
    p.add_argument(
        "--grace-period",
        "--grace",
        dest="grace_period",
        type=_non_negative_seconds,
        default=300.0,
        metavar="S",
        help="on SIGTERM (and in the old process after an upgrade), time the requests in flight "
        "get to finish before they are cut (default 300, Pingora's grace_period_seconds)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_non_negative_seconds,
        default=5.0,
        metavar="S",
        help="after the grace period, time connections still writing their last bytes get "
        "(default 5, Pingora's graceful_shutdown_timeout_seconds)",
    )
    p.add_argument(
        "--admin",
        type=_listen,
        metavar="HOST:PORT",
        help="the admin listener: /metrics (Prometheus) and /healthz; a loopback address "
        "(another needs the file's admin.allow_non_loopback)",
    )
    p.add_argument(
        "--upgrade-sock",
        default="/tmp/proxycore_upgrade.sock",
        metavar="PATH",
        help="the Unix socket of the zero-downtime upgrade: a new process started with -u "
        "waits there for the running one's listening sockets, sent on its SIGQUIT "
        "(default /tmp/proxycore_upgrade.sock)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default info",
    )


def _config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser(
        "config",
        prog="proxycore config",
        help="print the effective configuration (dump) or the README's field table (table)",
        usage="%(prog)s {dump,table} [-c FILE] [--run]",
    )
    c.add_argument("action", choices=["dump", "table"])
    c.add_argument("-c", "--conf", metavar="FILE", help="the file (default: defaults only)")
    c.add_argument(
        "--run",
        action="store_true",
        help="read the file as proxycore run does (sections for the class kept as written)",
    )


def _conf(args: argparse.Namespace) -> ServerConf:
    conf = ServerConf()
    for opt, attr in [
        ("connect_timeout", "connect_timeout"),
        ("read_timeout", "read_timeout"),
        ("write_timeout", "write_timeout"),
        ("header_timeout", "header_timeout"),
        ("client_body_timeout", "client_body_timeout"),
        ("send_timeout", "send_timeout"),
        ("max_request_body_size", "max_request_body_size"),  # (none: the default, unlimited)
        ("keepalive_timeout", "keepalive_timeout"),
        ("upstream_idle_timeout", "upstream_idle_timeout"),
        ("pool_size", "upstream_keepalive_pool_size"),
        ("busy_poll", "busy_poll"),
        ("headers_with_underscores", "headers_with_underscores"),
    ]:
        v = getattr(args, opt)
        if v is not None:
            setattr(conf, attr, v)
    conf.add_forwarded_headers = not args.no_forwarded_headers
    if args.client_bind_to:
        conf.client_bind_to_ipv4, conf.client_bind_to_ipv6 = split_families(args.client_bind_to)
    conf.h2c = not args.no_h2c
    conf.h2 = not args.no_h2
    if args.h2_max_concurrent_streams is not None:
        conf.h2_max_concurrent_streams = args.h2_max_concurrent_streams
    for name in (
        "h2_max_resets",
        "h2_max_control_frames",
        "h2_flood_window",
        "h2_max_header_block",
    ):
        if getattr(args, name) is not None:
            setattr(conf, name, getattr(args, name))
    conf.record_dir = args.record
    conf.grace_period, conf.shutdown_timeout = args.grace_period, args.shutdown_timeout
    conf.upgrade_sock = args.upgrade_sock
    conf.admin = args.admin
    conf.access_log, conf.access_log_format = args.access_log, args.access_log_format
    if args.tls_cert or args.tls_key or args.tls_sni_cert:
        conf.tls = TlsSettings(
            cert=args.tls_cert,
            key=args.tls_key,
            sni_certs=dict(_parse_sni_cert(s) for s in args.tls_sni_cert),
            client_ca=args.tls_client_ca,
            client_auth=args.tls_client_auth or ("required" if args.tls_client_ca else "none"),
            handshake_timeout=args.tls_handshake_timeout,
        )
    return conf


def _check_tls(args: argparse.Namespace, conf: ServerConf) -> str | None:
    """Start-up TLS checks: every certificate and key must load (exists, readable, PEM, not
    expired, matching its key); returns a message naming the bad file, or None."""
    from proxycore.tlsconfig import ClientContextCache, TlsConfigError, load_server_tls

    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if (args.tls_client_ca or args.tls_client_auth) and conf.tls is None:
        return "--tls-client-ca/--tls-client-auth need --tls-cert (or --tls-sni-cert)"
    if args.tls_client_auth and not args.tls_client_ca:
        return "--tls-client-auth needs --tls-client-ca"
    try:
        if conf.tls is not None:
            load_server_tls(conf.tls, conf.h2)
        for peer in getattr(args, "tls_peers", []):
            ClientContextCache.build(peer)
    except TlsConfigError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"upstream TLS: {e}"
    return None


def _check_backends(args: argparse.Namespace) -> str | None:
    """Start-up checks the core cannot do: DNS names must resolve, a backends file must be
    readable and valid. Returns a message naming the bad value, or None."""
    import socket

    from proxycore.discovery import parse_backend_lines

    specs = list(args.to)
    if args.backends_file:
        try:
            with open(args.backends_file, encoding="utf-8") as f:
                listed = parse_backend_lines(f.read())
        except OSError as e:
            return f"cannot read --backends-file {args.backends_file!r}: {e.strerror}"
        except ValueError as e:
            return f"--backends-file {args.backends_file!r}: {e}"
        specs += [f"{p.address},weight={w}" for p, w in listed]
        if not listed and not args.to:
            return f"--backends-file {args.backends_file!r} lists no backend"
    for spec in args.to:
        peer, _ = parse_backend(spec)
        try:
            socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
        except OSError:
            return f"--to {spec!r}: the name {peer.host!r} does not resolve"
    if args.backends_file and not args.to:
        args.to = specs
    return None


def _load_app(spec: str) -> Proxy:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:Class, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr, None)
    if obj is None:
        raise ValueError(f"{module_name} has no attribute {attr!r}")
    app = obj() if isinstance(obj, type) else obj
    if not isinstance(app, Proxy):
        raise ValueError(f"{spec} is not a proxycore.Proxy subclass or instance")
    return app


class _Parser(argparse.ArgumentParser):
    """An error prints the command's one-line usage (given as ``usage=``, not the generated
    list of every option) and the message, and exits with status 2."""

    commands: Mapping[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n")


def _parser() -> _Parser:
    p = _Parser(
        prog="proxycore",
        description="programmable HTTP proxy",
        usage="%(prog)s {reverse-proxy,run,config,replay,demo} [options]",
    )
    p.add_argument("--version", action="version", version=f"proxycore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    p.commands = sub.choices
    rp = sub.add_parser(
        "reverse-proxy",
        prog="proxycore reverse-proxy",
        help="proxy to one or more upstreams, no code needed",
        usage="%(prog)s --to HOST:PORT [--to ...] | -c FILE [options]",
    )
    rp.add_argument(
        "--to",
        action="append",
        default=[],
        type=_backend_spec,
        metavar="[https://]HOST:PORT[,weight=N]",
        help="upstream (repeat for several; balanced by --lb); https:// speaks TLS to it",
    )
    rp.add_argument(
        "--upstream-ca",
        metavar="PEM",
        help="verify https:// upstreams against this CA bundle (default: the system store)",
    )
    rp.add_argument(
        "--upstream-sni",
        metavar="NAME",
        help="server name sent to and verified for https:// upstreams (default: their host)",
    )
    rp.add_argument(
        "--upstream-insecure",
        action="store_true",
        help="do not verify https:// upstream certificates at all",
    )
    rp.add_argument(
        "--upstream-no-verify-hostname",
        action="store_true",
        help="verify the upstream certificate chain but not the name in it",
    )
    rp.add_argument("--upstream-cert", metavar="PEM", help="client certificate for upstream mTLS")
    rp.add_argument("--upstream-key", metavar="PEM", help="private key of --upstream-cert")
    rp.add_argument(
        "--backends-file",
        metavar="PATH",
        help="also take backends from PATH (one HOST:PORT[,weight=N] per line), re-read "
        "every --discovery-interval",
    )
    rp.add_argument(
        "--discovery-interval",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="how often DNS names in --to are re-resolved and --backends-file re-read (default 10)",
    )
    rp.add_argument(
        "--lb",
        default="round_robin",
        type=_selector,
        metavar="NAME",
        help=f"load-balancing selector: {', '.join(SELECTORS)} (default round_robin)",
    )
    rp.add_argument(
        "--hash-key",
        type=_hash_key,
        metavar="KEY",
        help="what hash/consistent hash on: header:NAME, uri or client_ip (default: nothing)",
    )
    rp.add_argument(
        "--health-check",
        type=_health_check,
        metavar="CHECK",
        help="active health check of every backend: tcp or http:/PATH (expects 200)",
    )
    rp.add_argument(
        "--health-interval",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds between health checks (default 5)",
    )
    rp.add_argument(
        "--eject-after",
        type=_count,
        default=5,
        metavar="N",
        help="passive health: eject a backend after N consecutive failures of any kind "
        "(failed connects, errors, 5xx answers; default 5)",
    )
    rp.add_argument(
        "--eject-after-connect-failures",
        type=_count,
        default=1,
        metavar="N",
        help="passive health: eject a backend after N consecutive failed connects (refused, "
        "timed out; default 1, like nginx's max_fails=1)",
    )
    rp.add_argument(
        "--eject-for",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="passive health: how long an ejected backend stays out (default 10, like "
        "nginx's fail_timeout=10s)",
    )
    _add_server_options(rp)
    r = sub.add_parser(
        "run",
        prog="proxycore run",
        help="serve a Proxy class: module:Class",
        usage="%(prog)s module:Class [-c FILE] [options]",
    )
    r.add_argument("app", metavar="module:Class")
    _add_server_options(r)
    rp2 = sub.add_parser(
        "replay",
        prog="proxycore replay",
        help="replay recorded session traces and compare actions",
        usage="%(prog)s DIR_OR_FILE [...] [options]",
    )
    rp2.add_argument("traces", nargs="+", metavar="DIR_OR_FILE", help="trace files or dirs")
    rp2.add_argument(
        "--app",
        metavar="module:Class",
        help="proxy class to replay against (default: the class named in each trace)",
    )
    rp2.add_argument(
        "--force",
        action="store_true",
        help="replay even if the trace was recorded with another proxy class",
    )
    rp2.add_argument(
        "--update",
        action="store_true",
        help="rewrite each trace's expected actions from this replay (on purpose)",
    )
    _config_parser(sub)
    d = sub.add_parser(
        "demo",
        prog="proxycore demo",
        help="start a demo origin and a proxy in front of it",
        usage="%(prog)s [--listen HOST:PORT] [--backend NAME]",
    )
    d.add_argument("--listen", type=_listen, default="127.0.0.1:8080", metavar="HOST:PORT")
    d.add_argument("--backend", default="asyncio", type=_backend, metavar="NAME")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # blamed on the subcommand, with its usage line
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "reverse-proxy" and not (args.to or args.backends_file or args.conf):
        parser.commands[args.command].error(
            "give at least one --to HOST:PORT (or --backends-file, or -c FILE)"
        )
    try:
        if args.command == "config":
            from proxycore.cliconf import config_command

            return config_command(args)
        if args.command in ("reverse-proxy", "run") and args.conf is not None:
            from proxycore.cliconf import given_flags, run_with_file

            argv = list(sys.argv[1:] if argv is None else argv)
            rest = argv[argv.index(args.command) + 1 :]
            return run_with_file(args, given_flags(parser.commands[args.command], rest))
        return _main(args)
    except StartupError as e:
        print(f"proxycore {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2


def _main(args: argparse.Namespace) -> int:
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "demo":
        from proxycore.adapters.asyncio.demo import announce_when_listening, start_demo_origin
        from proxycore.builtin import ReverseProxy

        host, port = start_demo_origin()
        announce_when_listening((host, port), args.backend)  # once the proxy is bound
        run(ReverseProxy([Peer(host, port)]), [args.listen], args.backend, exit_on_error=False)
        return 0
    if args.command == "replay":
        from proxycore.replaycli import run_replay

        return run_replay(args.traces, args.app, force=args.force, update=args.update)
    conf = _conf(args)
    listen = args.listen or ["127.0.0.1:8080"]
    if args.command == "reverse-proxy":
        from proxycore.builtin import ReverseProxy

        problem = _check_backends(args)
        if problem is None and args.lb in ("hash", "consistent") and not args.hash_key:
            problem = f"--lb {args.lb} needs --hash-key (header:NAME, uri or client_ip)"
        if problem:
            print(f"proxycore reverse-proxy: error: {problem}", file=sys.stderr)
            return 2
        if (args.upstream_cert is None) != (args.upstream_key is None):
            print(
                "proxycore reverse-proxy: error: --upstream-cert and --upstream-key go together",
                file=sys.stderr,
            )
            return 2
        upstream_tls: dict[str, object] = {}
        if args.upstream_ca:
            upstream_tls["ca"] = args.upstream_ca
        if args.upstream_sni:
            upstream_tls["sni"] = args.upstream_sni
        if args.upstream_insecure:
            upstream_tls["verify"] = False
        if args.upstream_no_verify_hostname:
            upstream_tls["verify_hostname"] = False
        if args.upstream_cert:
            upstream_tls["client_cert"] = (args.upstream_cert, args.upstream_key)

        app: Proxy = ReverseProxy(
            args.to,
            lb=args.lb,
            hash_key=args.hash_key,
            eject_after=args.eject_after,
            eject_for=args.eject_for,
            eject_after_connect_failures=args.eject_after_connect_failures,
            health_check=args.health_check,
            health_interval=args.health_interval,
            backends_file=args.backends_file,
            discovery_interval=args.discovery_interval,
            upstream_tls=upstream_tls,
        )
        args.tls_peers = [b.peer for b in app.lb.backends if b.peer.tls]  # type: ignore[attr-defined]
    else:
        try:
            app = _load_app(args.app)
        except (ImportError, ValueError) as e:
            print(f"proxycore: error: {e}", file=sys.stderr)
            return 2
    problem = _check_tls(args, conf)
    if problem is None and conf.admin is not None:
        from proxycore.conffile import admin_address_problem

        problem = admin_address_problem(conf.admin, False)
        if problem is not None:
            problem = f"--admin {conf.admin}: {problem}"
    if problem is None:
        try:
            assign_tls_ports(listen, [parse_listen(a) for a in listen], conf)
        except ValueError as e:
            problem = str(e)
    if problem:
        print(f"proxycore {args.command}: error: {problem}", file=sys.stderr)
        return 2
    if args.test:
        print("configuration ok", flush=True)
        return 0
    run(
        app,
        listen,
        args.backend,
        conf,
        workers=args.workers,
        exit_on_error=False,
        daemon=args.daemon,
        pid_file=args.pid_file,
        error_log=args.error_log,
        user=args.user,
        group=args.group,
        upgrade=args.upgrade,
    )
    return 0
