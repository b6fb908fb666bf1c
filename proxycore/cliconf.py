"""The command line's configuration-file side: ``-c FILE`` on ``reverse-proxy`` and ``run``,
``-t`` (check and exit), flags over the file, and ``proxycore config dump|table``.

Theory of operation: the file is loaded and validated (:mod:`proxycore.conffile`); the flags
the user actually typed (not argparse's defaults) then replace the file's values; then every
check that needs the machine runs. Problems are printed one per line, ``proxycore COMMAND:
error: FILE:LINE: PATH: message``, all of them, and the exit status is 2; nothing has been
bound, forked or created by then. A process entry point, like ``cli.py``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from proxycore import conffile
from proxycore.confschema import RESERVED, ConfigError, Problem, markdown_table, validate

__all__ = ["GROUP_FLAGS", "Loaded", "config_command", "given_flags", "load_file", "run_with_file"]

# --dest -> server.<field> (the flag's value, already converted by argparse).
SERVER_FLAGS = {
    "connect_timeout": "connect_timeout",
    "read_timeout": "read_timeout",
    "write_timeout": "write_timeout",
    "header_timeout": "header_timeout",
    "client_body_timeout": "client_body_timeout",
    "send_timeout": "send_timeout",
    "keepalive_timeout": "keepalive_timeout",
    "upstream_idle_timeout": "upstream_idle_timeout",
    "max_request_body_size": "max_request_body_size",
    "pool_size": "upstream_keepalive_pool_size",
    "busy_poll": "busy_poll",
    "headers_with_underscores": "headers_with_underscores",
    "h2_max_concurrent_streams": "h2_max_concurrent_streams",
    "h2_max_resets": "h2_max_resets",
    "h2_max_control_frames": "h2_max_control_frames",
    "h2_flood_window": "h2_flood_window",
    "h2_max_header_block": "h2_max_header_block",
    "h2_header_table_size": "h2_header_table_size",
    "workers": "threads",
    "record": "record",
    "access_log": "access_log",
    "access_log_format": "access_log_format",
    "grace_period": "grace_period_seconds",
    "shutdown_timeout": "graceful_shutdown_timeout_seconds",
    "upgrade_sock": "upgrade_sock",
    "log_level": "log_level",
    "backend": "backend",
    # the daemon flags (added with daemon mode): the same names as the file's fields
    "daemon": "daemon",
    "pid_file": "pid_file",
    "error_log": "error_log",
    "user": "user",
    "group": "group",
}
TLS_FLAGS = {
    "tls_cert": "cert",
    "tls_key": "key",
    "tls_client_ca": "client_ca",
    "tls_client_auth": "client_auth",
    "tls_handshake_timeout": "handshake_timeout",
}
# reverse-proxy's upstream flags: with -c the groups come from the file.
GROUP_FLAGS = (
    "to", "upstream_ca", "upstream_sni", "upstream_insecure", "upstream_no_verify_hostname",
    "upstream_cert", "upstream_key", "backends_file", "discovery_interval", "lb", "hash_key",
    "health_check", "health_interval", "eject_after", "eject_after_connect_failures",
    "eject_for",
)  # fmt: skip


def given_flags(sub: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the options typed in ``argv`` (the subcommand's arguments), as opposed to
    argparse's defaults: parsed again with every default suppressed, so an option that was not
    typed leaves no attribute."""
    saved = [(a, a.default) for a in sub._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = sub.parse_known_args(list(argv))
    finally:
        for a, default in saved:
            a.default = default
    return set(vars(ns))


def _override(conf: dict[str, Any], args: argparse.Namespace, given: set[str]) -> None:
    """The typed flags replace the file's values."""
    server = conf["server"]
    for dest, name in SERVER_FLAGS.items():
        if dest in given:
            server[name] = getattr(args, dest)
    if "no_forwarded_headers" in given and args.no_forwarded_headers:
        server["add_forwarded_headers"] = False
    if "client_bind_to" in given:  # replaces both of the file's lists
        from proxycore.cli import split_families

        v4, v6 = split_families(args.client_bind_to)
        server["client_bind_to_ipv4"], server["client_bind_to_ipv6"] = v4, v6
    if "admin" in given:
        conf.setdefault("admin", {})["address"] = args.admin
    listeners = conf["listeners"]
    for flag, switch in (("no_h2c", "h2c"), ("no_h2", "h2")):  # on every listener
        if flag in given and getattr(args, flag):
            for lst in listeners:
                lst[switch] = False
    file_tls = next((lst["tls"] for lst in listeners if conffile.tls_settings(lst["tls"])), None)
    plain_tls = _plain()
    tls_given = any(d in given for d in (*TLS_FLAGS, "tls_sni_cert"))
    if tls_given:
        base = dict(file_tls or plain_tls)
        for dest, name in TLS_FLAGS.items():
            if dest in given:
                base[name] = getattr(args, dest)
        if "tls_sni_cert" in given:
            from proxycore.cli import _parse_sni_cert

            base["sni_certs"] = {
                n: {"cert": c, "key": k}
                for n, (c, k) in (_parse_sni_cert(s) for s in args.tls_sni_cert)
            }
        file_tls = base
    if "listen" in given:
        from proxycore.runner import listen_scheme

        new = []
        for text in args.listen:
            scheme = listen_scheme(text)
            address = text[len(scheme) + 3 :] if scheme else text
            tls = file_tls if scheme == "https" or (scheme is None and file_tls) else None
            new.append(
                {
                    "address": address,
                    "tls": dict(tls or plain_tls),
                    # the file's switches (one value for every listener), or the flags'
                    "h2c": listeners[0]["h2c"] if listeners else True,
                    "h2": listeners[0]["h2"] if listeners else True,
                }
            )
        conf["listeners"] = new
    elif tls_given and file_tls is not None:
        # the listeners that were TLS, or with none, all of them (as the flags do alone)
        was_tls = [conffile.tls_settings(lst["tls"]) is not None for lst in listeners]
        for lst, tls in zip(listeners, was_tls, strict=True):
            if tls or not any(was_tls):
                lst["tls"] = dict(file_tls)


def _plain() -> dict[str, Any]:
    from proxycore.confschema import TLS, _defaults

    plain: dict[str, Any] = _defaults(TLS)
    return plain


def _path(text: str) -> tuple[str | int, ...]:
    """``"a.b[2].c"`` -> ("a", "b", 2, "c")."""
    out: list[str | int] = []
    for part in text.split("."):
        m = re.fullmatch(r"([^\[]*)((?:\[\d+\])*)", part)
        if m is None:
            out.append(part)
            continue
        if m.group(1):
            out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(out)


def _report(command: str, lines: list[str]) -> int:
    for line in lines:
        print(f"proxycore {command}: error: {line}", file=sys.stderr)
    sys.stderr.flush()
    return 2


class Loaded:
    """A configuration file read, checked and built as start-up does (:func:`load_file`):
    ``problems`` (the lines start-up prints) or the ``app``, :class:`conffile.RunArgs`
    ``built`` and the effective configuration ``conf`` (the file with the flags over it)."""

    def __init__(
        self,
        problems: list[str],
        app: Any = None,
        built: conffile.RunArgs | None = None,
        conf: dict[str, Any] | None = None,
    ) -> None:
        self.problems = problems
        self.app = app
        self.built = built
        self.conf = conf or {}


def run_with_file(args: argparse.Namespace, given: set[str]) -> int:
    """``proxycore reverse-proxy|run -c FILE [flags] [-t]``."""
    from proxycore.runner import run

    command = args.command
    loaded = load_file(args, given)
    if loaded.problems:
        return _report(command, loaded.problems)
    built, app = loaded.built, loaded.app
    assert built is not None
    if args.test:
        print("configuration ok", flush=True)
        return 0
    logging.basicConfig(
        level=built.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from proxycore.adapters.reload import set_source

    set_source(lambda: load_file(args, given), built, loaded.conf, command, args.conf)
    run(
        app,
        built.listen,
        built.backend,
        built.conf,
        workers=built.workers,
        exit_on_error=False,
        upgrade=args.upgrade,
        **built.daemon,
    )
    return 0


def load_file(args: argparse.Namespace, given: set[str]) -> Loaded:
    """Read ``args.conf``, check it, apply the typed flags (``given``) and build the app: what
    start-up does before it binds, and what a reload (SIGHUP) does again in each worker."""
    from proxycore.runner import assign_tls_ports, parse_listen

    command = args.command
    routed = command == "reverse-proxy"
    if routed:
        stray = [d for d in GROUP_FLAGS if d in given]
        if stray:
            flags = ", ".join("--" + d.replace("_", "-") for d in stray)
            return Loaded([f"{flags}: with -c the upstreams and routes come from the file"])
    try:
        cf = conffile.load(args.conf)
    except conffile.FileError as e:
        return Loaded([str(e)])
    conf, problems = conffile.checked(cf, app_sections=not routed)
    if routed and not problems and not conf["routes"]:
        problems.append((("routes",), "reverse-proxy needs at least one route"))
    if not problems:
        _override(conf, args, given)
        _, again = validate(_plain_copy(conf), app_sections=not routed)
        problems += again  # a flag's value the file's schema refuses (e.g. --listen https://)
    if not conf["listeners"]:
        problems.append((("listeners",), "at least one listener is needed"))
    app: Any = None
    if not problems:
        problems += conffile.check_files(conf, routes=routed)
    if not problems:
        built = conffile.build(conf)
        try:
            assign_tls_ports(built.listen, [parse_listen(a) for a in built.listen], built.conf)
            built.conf.check()
        except ValueError as e:
            problems.append((("listeners",), str(e)))
        if routed:
            from proxycore.builtin import RoutedProxy

            try:
                app = RoutedProxy(**conffile.routed_proxy_kwargs(conf))
            except ValueError as e:
                problems.append((("upstreams",), str(e)))
        else:
            app, more = _configure_app(args.app, conf)
            problems += more
    if problems:
        return Loaded([cf.describe(p) for p in conffile.by_line(cf, problems)])
    return Loaded([], app, built, conf)


def _plain_copy(conf: dict[str, Any]) -> dict[str, Any]:
    """The effective configuration without run's class sections, to validate again."""
    return {k: v for k, v in conf.items() if k in RESERVED}


def _configure_app(spec: str, conf: dict[str, Any]) -> tuple[Any, list[Problem]]:
    """Build the user's class and hand it the file's other sections (Proxy.configure)."""
    from proxycore.cli import _load_app

    sections = {
        k: v for k, v in conf.items() if k not in ("version", "server", "listeners", "admin")
    }
    first: tuple[str | int, ...] = (next(iter(sections)),) if sections else ()
    try:
        app = _load_app(spec)
    except (ImportError, ValueError) as e:
        return None, [((), f"{spec}: {e}")]
    except Exception as e:  # the user's constructor: named, never a traceback
        return None, [((), f"{spec}: {type(e).__name__}: {e}")]
    try:
        app.configure(sections)
    except ConfigError as e:
        return app, [(_path(p), m) for p, m in e.problems]
    except ValueError as e:
        return app, [(first, str(e))]
    except Exception as e:
        return app, [(first, f"{spec}.configure: {type(e).__name__}: {e}")]
    return app, []


def config_command(args: argparse.Namespace) -> int:
    """``proxycore config dump [-c FILE] [--run]`` / ``proxycore config table``."""
    import yaml

    if args.action == "table":
        sys.stdout.write(markdown_table())
        return 0
    if args.conf is None:
        conf, _ = validate({})
    else:
        try:
            cf = conffile.load(args.conf)
        except conffile.FileError as e:
            return _report("config", [str(e)])
        conf, problems = conffile.checked(cf, app_sections=args.run)
        if problems:
            return _report("config", [cf.describe(p) for p in conffile.by_line(cf, problems)])
    sys.stdout.write(yaml.safe_dump(conf, sort_keys=False, default_flow_style=False))
    return 0
