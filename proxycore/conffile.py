"""Reading the configuration file (``-c FILE``): YAML in, the effective configuration and every
problem out, each problem one line with the file's line number.

Theory of operation: :func:`load` reads the file with PyYAML's safe loader (the C loader,
``CSafeLoader``, when PyYAML was built with libyaml), keeping the node tree so every value's
path (``upstreams.api.backends[2].weight``) maps to its line. :func:`proxycore.confschema.validate`
checks types, ranges, unknown fields and cross references; :func:`check_files` then does what
needs the machine (certificates loaded and matched to their keys, backend packages importable,
names resolvable, files readable, log and record paths usable), without binding or creating
anything. :func:`build` turns a clean configuration into the arguments of
:func:`proxycore.run` and, for ``reverse-proxy``, a :class:`proxycore.builtin.RoutedProxy`.
This module reads files: it is a process entry point like ``cli.py``, not the core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxycore.config import ServerConf, TlsSettings
from proxycore.confschema import Problem, format_path, validate
from proxycore.h1.parse import Limits

__all__ = [
    "ConfFile",
    "FileError",
    "RunArgs",
    "build",
    "by_line",
    "check_files",
    "load",
    "read",
]

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Loader = yaml.SafeLoader


class FileError(Exception):
    """The file cannot be read or parsed; ``str(e)`` is one line with the line and column."""


@dataclass
class ConfFile:
    """A parsed file: ``data`` as ``yaml.safe_load`` gives it, ``lines`` path -> line (1-based),
    ``duplicates`` the paths of keys given twice."""

    path: str
    data: Any
    lines: dict[tuple[str | int, ...], int] = field(default_factory=dict)
    duplicates: list[tuple[str | int, ...]] = field(default_factory=list)

    def line_of(self, path: tuple[str | int, ...]) -> int:
        """The line of ``path``, or of its nearest ancestor written in the file."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    def describe(self, problem: Problem) -> str:
        """``FILE:LINE: PATH: message``."""
        path, message = problem
        where = f"{self.path}:{self.line_of(path)}"
        return f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}"


def read(text: str, path: str = "<string>") -> ConfFile:
    """Parse YAML ``text``; FileError names the line and column of a syntax error."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise FileError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise FileError(f"{path}: YAML error: {e}") from None
    finally:
        loader.dispose()
    conf = ConfFile(path, data)
    if node is not None:
        _map_lines(node, (), conf)
    return conf


def _map_lines(node: Any, path: tuple[str | int, ...], conf: ConfFile) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            child = (*path, name)
            if name in seen:
                conf.duplicates.append(child)
            seen.add(name)
            conf.lines[child] = key.start_mark.line + 1
            _map_lines(value, child, conf)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            conf.lines[(*path, i)] = item.start_mark.line + 1
            _map_lines(item, (*path, i), conf)


def load(path: str) -> ConfFile:
    """Read and parse ``path``; FileError is one line naming the file and why."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise FileError(f"{path}: cannot read the configuration file: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise FileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return read(text, path)


def checked(cf: ConfFile, *, app_sections: bool = False) -> tuple[dict[str, Any], list[Problem]]:
    """Schema validation plus duplicate keys (YAML keeps the last silently; we refuse)."""
    conf, problems = validate(cf.data, app_sections=app_sections)
    dup: list[Problem] = [(p, "given twice in the same mapping") for p in cf.duplicates]
    return conf, dup + problems


def by_line(cf: ConfFile, problems: list[Problem]) -> list[Problem]:
    """``problems`` in the order of the file's lines (stable within a line)."""
    return sorted(problems, key=lambda p: cf.line_of(p[0]))


# -- checks that need the machine -------------------------------------------------------------


def _writable(path: str, is_dir: bool = False) -> str | None:
    if os.path.exists(path):
        if is_dir != os.path.isdir(path):
            return f"{path!r} is {'not ' if is_dir else ''}a directory"
        return None if os.access(path, os.W_OK) else f"{path!r}: permission denied"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{path!r}: the directory {parent!r} does not exist"
    return None if os.access(parent, os.W_OK) else f"{path!r}: permission denied"


def _readable(path: str) -> str | None:
    if not os.path.isfile(path):
        return f"{path!r}: no such file"
    return None if os.access(path, os.R_OK) else f"{path!r}: permission denied"


def admin_address_problem(address: str, allow_non_loopback: bool) -> str | None:
    """Why the admin listener may not listen on ``address`` (HOST:PORT), or None: a name that
    does not resolve, or an address that is not loopback unless explicitly allowed."""
    import ipaddress
    import socket

    from proxycore.runner import parse_listen

    host, _ = parse_listen(address)
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as e:
        return f"cannot resolve {host!r}: {e}"
    if not allow_non_loopback and not all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
        return (
            f"{host} is not a loopback address: the admin listener shows the proxy's "
            "internals to whoever reaches it (set admin.allow_non_loopback: true in the "
            "configuration file to allow it)"
        )
    return None


def check_files(conf: dict[str, Any], *, routes: bool = True) -> list[Problem]:
    """Everything the schema cannot see (nothing is bound or created): the backend loads,
    certificates and keys load and match, CA bundles and discovery files are readable and
    valid, backend names resolve, the access log and record paths are usable."""
    import importlib
    import socket

    from proxycore.discovery import parse_backend_lines
    from proxycore.lb import parse_backend
    from proxycore.runner import (
        BACKENDS,
        StartupError,
        load_backend,
        resolve_backend,
    )
    from proxycore.tlsconfig import ClientContextCache, TlsConfigError, load_server_tls

    out: list[Problem] = []
    admin = conf.get("admin") or {}
    if admin.get("address"):
        problem = admin_address_problem(admin["address"], bool(admin.get("allow_non_loopback")))
        if problem is not None:
            out.append((("admin", "address"), problem))
    server = conf["server"]
    try:
        module_name, _ = resolve_backend(server["backend"])
        if server["backend"] in BACKENDS:
            load_backend(server["backend"])
        else:
            importlib.import_module(module_name)
    except (ValueError, ImportError, StartupError) as e:
        out.append((("server", "backend"), str(e)))
    for name in ("access_log",):
        if server[name] not in (None, "-"):
            problem = _writable(server[name])
            if problem:
                out.append((("server", name), f"cannot write {problem}"))
    if server["record"] is not None:
        problem = _writable(server["record"], is_dir=True)
        if problem:
            out.append((("server", "record"), f"cannot record into {problem}"))
    if server["ca_file"] is not None:
        problem = _readable(server["ca_file"])
        if problem:
            out.append((("server", "ca_file"), problem))
    for i, listener in enumerate(conf["listeners"]):
        settings = tls_settings(listener["tls"])
        if settings is not None and (i == 0 or listener["tls"] != conf["listeners"][0]["tls"]):
            try:
                load_server_tls(settings)
            except TlsConfigError as e:
                out.append((("listeners", i, "tls"), str(e)))
    if not routes:
        return out
    for name, g in conf["upstreams"].items():
        path: tuple[str | int, ...] = ("upstreams", name)
        tls = upstream_tls(g, server)
        for j, b in enumerate(g["backends"]):
            peer, _ = parse_backend(b["address"], **tls)
            try:
                socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
            except OSError:
                out.append(((*path, "backends", j, "address"), f"{peer.host!r} does not resolve"))
            if peer.tls and (j == 0 or not any(p.tls for p in _peers(g["backends"][:j]))):
                try:
                    ClientContextCache.build(peer)
                except TlsConfigError as e:
                    out.append(((*path, "tls"), str(e)))
                except (OSError, ValueError) as e:
                    out.append(((*path, "tls"), f"upstream TLS: {e}"))
        listed = g["discovery"]["file"]
        if listed is not None:
            try:
                with open(listed, encoding="utf-8") as f:
                    parse_backend_lines(f.read())
            except OSError as e:
                out.append(((*path, "discovery", "file"), f"cannot read {listed!r}: {e.strerror}"))
            except ValueError as e:
                out.append(((*path, "discovery", "file"), f"{listed!r}: {e}"))
    return out


def _peers(backends: list[dict[str, Any]]) -> list[Any]:
    from proxycore.lb import parse_backend

    return [parse_backend(b["address"])[0] for b in backends]


# -- building ---------------------------------------------------------------------------------


def tls_settings(t: dict[str, Any]) -> TlsSettings | None:
    """A listener's tls block as :class:`TlsSettings`, or None for a plain listener."""
    if not (t["cert"] or t["sni_certs"]):
        return None
    auth = t["client_auth"] or ("required" if t["client_ca"] else "none")
    return TlsSettings(
        cert=t["cert"],
        key=t["key"],
        sni_certs={n: (c["cert"], c["key"]) for n, c in t["sni_certs"].items()},
        client_ca=t["client_ca"],
        client_auth=auth,
        alpn=tuple(t["alpn"]),
        handshake_timeout=float(t["handshake_timeout"]),
    )


def upstream_tls(g: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """A group's tls block as the Peer options of its ``https://`` backends."""
    t = g["tls"]
    out: dict[str, Any] = {}
    if t["sni"]:
        out["sni"] = t["sni"]
    ca = t["ca"] or server["ca_file"]
    if ca:
        out["ca"] = ca
    if not t["verify"]:
        out["verify"] = False
    if not t["verify_hostname"]:
        out["verify_hostname"] = False
    if t["cert"]:
        out["client_cert"] = (t["cert"], t["key"])
    return out


def _group_kwargs(g: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """A group as :class:`proxycore.builtin.ReverseProxy` keyword arguments (a discovery file
    given, its backends are the first set, as ``--backends-file`` does)."""
    from proxycore.discovery import parse_backend_lines

    backends = [f"{b['address']},weight={b['weight']}" for b in g["backends"]]
    tls = upstream_tls(g, server)
    listed = g["discovery"]["file"]
    if listed is not None:
        with open(listed, encoding="utf-8") as f:
            backends += [f"{p.address},weight={w}" for p, w in parse_backend_lines(f.read())]
    t = g["timeouts"]
    names = {"connect": "connect_timeout", "read": "read_timeout", "write": "write_timeout"}
    names["idle"] = "idle_timeout"
    ph = g["passive_health"]
    return {
        "backends": backends,
        "lb": g["lb"],
        "hash_key": g["hash_key"],
        "health_check": g["health_check"]["check"],
        "health_interval": float(g["health_check"]["interval"]),
        "backends_file": listed,
        "discovery_interval": float(g["discovery"]["interval"]),
        "upstream_tls": tls,
        "eject_after": ph["eject_after"],
        "eject_after_connect_failures": ph["eject_after_connect_failures"],
        "eject_for": float(ph["eject_for"]),
        "peer_options": {names[k]: float(v) for k, v in t.items() if v is not None},
    }


@dataclass
class RunArgs:
    """What :func:`proxycore.run` gets from a configuration."""

    listen: list[str]
    backend: str
    conf: ServerConf
    workers: int
    log_level: str
    daemon: dict[str, Any]  # daemon, pid_file, error_log, user, group
    stored: dict[str, Any]  # accepted and stored, not acted on (work_stealing)


def build(conf: dict[str, Any]) -> RunArgs:
    """The arguments of :func:`proxycore.run` for a clean configuration."""
    s = conf["server"]
    sc = ServerConf()
    for name in (
        "connect_timeout", "read_timeout", "write_timeout", "header_timeout",
        "client_body_timeout", "send_timeout", "keepalive_timeout", "upstream_idle_timeout",
        "linger_timeout", "busy_poll", "h2_flood_window",
    ):  # fmt: skip
        setattr(sc, name, float(s[name]))
    for name in (
        "upstream_keepalive_pool_size", "upstream_keepalive_per_peer", "max_retries",
        "retry_buffer_size", "read_buffer_limit", "add_forwarded_headers",
        "headers_with_underscores", "access_log", "access_log_format", "reuse_port",
        "h2_max_concurrent_streams", "h2_max_resets", "h2_max_control_frames",
        "h2_max_header_block", "h2_header_table_size",
    ):  # fmt: skip
        setattr(sc, name, s[name])
    size = s["max_request_body_size"]
    if isinstance(size, str):
        from proxycore.confschema import parse_size

        size = parse_size(size)
    sc.max_request_body_size = size
    sc.record_dir = s["record"]
    sc.grace_period = float(s["grace_period_seconds"])
    sc.shutdown_timeout = float(s["graceful_shutdown_timeout_seconds"])
    sc.upgrade_sock = s["upgrade_sock"]
    admin = conf.get("admin") or {}
    sc.admin = admin.get("address")
    sc.admin_allow_non_loopback = bool(admin.get("allow_non_loopback", False))
    sc.client_bind_to_ipv4 = list(s["client_bind_to_ipv4"])
    sc.client_bind_to_ipv6 = list(s["client_bind_to_ipv6"])
    sc.limits = Limits(s["max_request_line"], s["max_header_bytes"], s["max_headers"])
    sc.limits.max_chunk_line = s["max_chunk_line"]
    listen: list[str] = []
    if conf["listeners"]:
        sc.h2c = conf["listeners"][0]["h2c"]
        sc.h2 = conf["listeners"][0]["h2"]
    for listener in conf["listeners"]:
        settings = tls_settings(listener["tls"])
        if settings is not None:
            sc.tls = sc.tls or settings
        listen.append(("https://" if settings else "http://") + listener["address"])
    return RunArgs(
        listen=listen,
        backend=s["backend"],
        conf=sc,
        workers=s["threads"],
        log_level=s["log_level"],
        daemon={k: s[k] for k in ("daemon", "pid_file", "error_log", "user", "group")},
        stored={k: s[k] for k in _STORED},
    )


# Accepted, checked and kept, not acted on yet (see the README's field table).
_STORED = ("work_stealing",)


def routed_proxy_kwargs(conf: dict[str, Any]) -> dict[str, Any]:
    """The :class:`proxycore.builtin.RoutedProxy` arguments of a clean configuration."""
    server = conf["server"]
    upstreams = {n: _group_kwargs(g, server) for n, g in conf["upstreams"].items()}
    routes = []
    for r in conf["routes"]:
        route = {"host": r["host"], "path": r["path"]}
        if r["upstream"] is not None:
            route["upstream"] = r["upstream"]
        else:
            route["return"] = str(r["return"])
        routes.append(route)
    return {"upstreams": upstreams, "routes": routes}
