"""The configuration file's schema: every field, its type, default and meaning, in one table.

Theory of operation: the schema is data (:data:`FILE`, a tree of :class:`Section`,
:class:`ListOf`, :class:`MapOf` and :class:`Field`). :func:`validate` walks a parsed document
(plain Python values, as ``yaml.safe_load`` gives them) against it and returns the effective
configuration (every default filled in) plus every problem found, each as (path, message) with
paths written ``upstreams.api.backends[2].weight``; nothing stops at the first problem. The
loader (:mod:`proxycore.conffile`, which reads the file) turns paths into line numbers; the
README's field table is generated from the same tree (:func:`markdown_table`), so the two
cannot drift. No I/O here: checks that read files (certificates) live in the loader.

The server section keeps Pingora's field names and defaults (``threads``, ``pid_file``,
``upstream_keepalive_pool_size``, ``max_retries``, ...) next to proxycore's own settings (every
:class:`proxycore.config.ServerConf` field and timeout, the backend, busy polling, the access
log, recording).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from proxycore.builtin import HASH_KEYS, Route, parse_hash_key
from proxycore.health import HealthCheck
from proxycore.lb import SELECTORS, parse_backend

__all__ = [
    "FILE",
    "RESERVED",
    "ConfigError",
    "Field",
    "ListOf",
    "MapOf",
    "Problem",
    "Section",
    "describe",
    "format_path",
    "markdown_table",
    "parse_size",
    "validate",
]

Problem = tuple[tuple[str | int, ...], str]  # (path, message)
Check = Callable[[Any], str | None]  # None = fine, else "expected ..."

# Top-level sections proxycore reads itself; ``proxycore run`` hands every other top-level
# section to the user's class (Proxy.configure).
RESERVED = ("version", "server", "listeners", "upstreams", "routes", "admin")


class ConfigError(ValueError):
    """Raised by :meth:`proxycore.Proxy.configure` for problems in the sections it was given:
    each problem is (path, message), the path dotted from the top of the file
    (``"greeting.text"``), so the command line can name the file's line."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = list(problems)


def describe(value: Any) -> str:
    """A value as the message quotes it: ``"x"``, ``3``, ``true``, ``null``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_SIZE = re.compile(r"(\d+)([kmg]?)", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """Bytes, or with a k/m/g suffix (powers of 1024, as nginx); ``none`` = unlimited.
    ValueError names the value."""
    if text.lower() in ("none", "unlimited"):
        return None
    m = _SIZE.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValueError(
            f"expected a size such as 1048576, 512k, 10m or 1g (or none), got {text!r}"
        )
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


# -- value checks ---------------------------------------------------------------------------


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "expected a string"


def integer(low: int, high: int | None = None) -> Check:
    if high is not None:
        want = f"expected a whole number from {low} to {high}"
    elif low == 1:
        want = "expected a positive integer"
    else:
        want = f"expected a whole number of at least {low}"

    def check(v: Any) -> str | None:
        ok = _integer(v) and v >= low and (high is None or v <= high)
        return None if ok else want

    return check


def seconds(v: Any) -> str | None:
    return None if _number(v) and v > 0 else "expected a positive number of seconds"


def seconds_or_zero(v: Any) -> str | None:
    return None if _number(v) and v >= 0 else "expected 0 or a positive number of seconds"


def busy_poll(v: Any) -> str | None:
    return None if _number(v) and 0 <= v <= 1 else "expected 0 (off) to 1 seconds"


def choice(*options: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in options else f"expected one of {', '.join(options)}"

    return check


def size(v: Any) -> str | None:
    if _integer(v):
        return None if v > 0 else "expected a positive size"
    if isinstance(v, str):
        try:
            parse_size(v)
        except ValueError as e:
            return str(e).partition(", got")[0]
        return None
    return "expected a size such as 1048576, 512k, 10m or 1g (or none)"


def _cut(e: ValueError) -> str:
    """A ValueError's message without its own ", got ..." (the caller adds one)."""
    return str(e).partition(", got ")[0]


def _listen(v: Any) -> str | None:
    from proxycore.runner import listen_scheme, parse_listen

    if not isinstance(v, str):
        return "expected HOST:PORT"
    if listen_scheme(v):
        return "expected HOST:PORT without a scheme (a tls: block makes a TLS listener)"
    try:
        parse_listen(v)
    except ValueError:
        return "expected HOST:PORT"
    return None


def _backend_address(v: Any) -> str | None:
    if not isinstance(v, str):
        return "expected [https://]HOST:PORT"
    if "," in v:
        return "expected [https://]HOST:PORT (the weight is its own field)"
    try:
        parse_backend(v)
    except ValueError as e:
        return _cut(e)
    return None


def _hash_key(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"expected one of {', '.join(HASH_KEYS)}"
    try:
        parse_hash_key(v)
    except ValueError as e:
        return _cut(e)
    return None


def _health_check(v: Any) -> str | None:
    if not isinstance(v, str):
        return "expected tcp or http:/PATH"
    try:
        HealthCheck.parse(v)
    except ValueError as e:
        return _cut(e)
    return None


def _ip(version: int) -> Check:
    from proxycore.config import source_address_problem

    def check(v: Any) -> str | None:
        return source_address_problem(v, version)

    return check


def _route_host(v: Any) -> str | None:
    if not isinstance(v, str):
        return "expected a host name or *.DOMAIN"
    try:
        Route(v, "/", "x")
    except ValueError as e:
        return _cut(e)
    return None


def _route_path(v: Any) -> str | None:
    if not isinstance(v, str) or not v.startswith("/") or "?" in v:
        return "expected a path prefix starting with '/'"
    return None


def _route_return(v: Any) -> str | None:
    if _integer(v):
        v = str(v)
    if not isinstance(v, str):
        return "expected a status (and a URL for 301/302/303/307/308, or a text)"
    try:
        Route(None, "/", None, v)
    except ValueError as e:
        return _cut(e)
    return None


def _alpn(v: Any) -> str | None:
    return None if v in ("h2", "http/1.1") else "expected h2 or http/1.1"


# -- the tree ---------------------------------------------------------------------------------


class Field:
    """A leaf: ``check`` returns None or "expected ..."; ``nullable`` admits null."""

    def __init__(
        self,
        default: Any,
        check: Check,
        type_name: str,
        doc: str,
        *,
        nullable: bool = False,
        required: bool = False,
        scalar_list: bool = False,
    ) -> None:
        self.default = default
        self.check = check
        self.type_name = type_name
        self.doc = doc
        self.nullable = nullable
        self.required = required
        self.scalar_list = scalar_list  # a list of values, each checked by ``check``


class Section:
    """A mapping with known fields (unknown ones are problems); ``shorthand`` converts a
    scalar written in its place (a backend given as a string) or returns None."""

    def __init__(
        self,
        fields: dict[str, Node],
        doc: str,
        *,
        shorthand: Callable[[Any], dict[str, Any] | None] | None = None,
        type_name: str = "mapping",
    ) -> None:
        self.fields = fields
        self.doc = doc
        self.shorthand = shorthand
        self.type_name = type_name


class ListOf:
    def __init__(self, item: Node, doc: str, default: list[Any] | None = None) -> None:
        self.item = item
        self.doc = doc
        self.default = default or []


class MapOf:
    def __init__(self, value: Node, doc: str, key_name: str = "NAME") -> None:
        self.value = value
        self.doc = doc
        self.key_name = key_name


Node = Field | Section | ListOf | MapOf


def _s(doc: str) -> Field:
    return Field(None, seconds, "seconds", doc, nullable=True)


def _backend_shorthand(v: Any) -> dict[str, Any] | None:
    if not isinstance(v, str):
        return None
    address, _, opts = v.partition(",")
    out: dict[str, Any] = {"address": address}
    name, eq, weight = opts.partition("=")
    if opts:
        if name != "weight" or not eq:
            return None
        out["weight"] = int(weight) if weight.lstrip("-").isdigit() else weight
    return out


SERVER = Section(
    {
        # Pingora's fields (names and defaults as pingora-core's ServerConf).
        "daemon": Field(
            False, boolean, "bool", "Pingora: detach and run in the background (like -d)"
        ),
        "error_log": Field(
            None,
            text,
            "path",
            "Pingora: append stderr (in daemon mode stdout too) to this file",
            nullable=True,
        ),
        "pid_file": Field(
            None,
            text,
            "path",
            "Pingora: write the serving process's pid here (refused if it names a running "
            "process); null: /tmp/proxycore.pid in daemon mode (Pingora: /tmp/pingora.pid), "
            "none in the foreground",
            nullable=True,
        ),
        "upgrade_sock": Field(
            "/tmp/proxycore_upgrade.sock",
            text,
            "path",
            "Pingora: the Unix socket a new process started with -u waits on for the running "
            "one's listening sockets (sent on its SIGQUIT; Pingora: /tmp/pingora_upgrade.sock)",
        ),
        "user": Field(None, text, "str", "Pingora: user to switch to after binding", nullable=True),
        "group": Field(
            None, text, "str", "Pingora: group to switch to after binding", nullable=True
        ),
        "threads": Field(
            1, integer(1, 256), "int", "Pingora: worker threads; proxycore: worker processes"
        ),
        "work_stealing": Field(
            True,
            boolean,
            "bool",
            "Pingora: tokio work stealing; accepted, not applicable (one event loop per "
            "worker process)",
        ),
        "ca_file": Field(
            None,
            text,
            "path",
            "Pingora: CA bundle trusted for TLS to origins (a group's tls.ca overrides it; "
            "default: the system store)",
            nullable=True,
        ),
        "grace_period_seconds": Field(
            300,
            seconds_or_zero,
            "seconds",
            "Pingora: on SIGTERM, and in the old process after an upgrade, time the requests "
            "in flight get to finish before they are cut (like --grace-period)",
        ),
        "graceful_shutdown_timeout_seconds": Field(
            5,
            seconds_or_zero,
            "seconds",
            "Pingora: after the grace period, time connections still writing their last "
            "bytes get (like --shutdown-timeout)",
        ),
        "upstream_keepalive_pool_size": Field(
            128, integer(0), "int", "Pingora: idle upstream connections kept (0: no pooling)"
        ),
        "max_retries": Field(
            16, integer(0), "int", "Pingora: attempts after the first one for one request"
        ),
        "client_bind_to_ipv4": Field(
            [],
            _ip(4),
            "list of IPv4",
            "Pingora: local addresses that connections to IPv4 origins bind to before "
            "connecting; several: one per connection, spread by connection id (--client-bind-to)",
            scalar_list=True,
        ),
        "client_bind_to_ipv6": Field(
            [],
            _ip(6),
            "list of IPv6",
            "Pingora: as client_bind_to_ipv4, for IPv6 origins",
            scalar_list=True,
        ),
        # proxycore's own settings.
        "backend": Field(
            "asyncio",
            text,
            "str",
            "runtime adapter: asyncio, uvloop, gevent, threads, trio or an adapter's module path",
        ),
        "log_level": Field("info", choice("debug", "info", "warning", "error"), "str", "logging"),
        "connect_timeout": Field(60.0, seconds, "seconds", "upstream connect timeout"),
        "read_timeout": Field(60.0, seconds, "seconds", "upstream read timeout (between reads)"),
        "write_timeout": Field(60.0, seconds, "seconds", "upstream write timeout"),
        "header_timeout": Field(60.0, seconds, "seconds", "time to receive a request head"),
        "client_body_timeout": Field(
            60.0, seconds, "seconds", "time between two reads of a request body (408)"
        ),
        "send_timeout": Field(
            60.0, seconds, "seconds", "time a client may stop reading the response"
        ),
        "keepalive_timeout": Field(
            75.0, seconds, "seconds", "idle time between requests on a client connection"
        ),
        "upstream_idle_timeout": Field(
            60.0, seconds, "seconds", "idle time of a pooled upstream connection"
        ),
        "linger_timeout": Field(
            5.0, seconds, "seconds", "time to drain a client's unread body before closing"
        ),
        "upstream_keepalive_per_peer": Field(
            128, integer(0), "int", "idle upstream connections kept per origin"
        ),
        "retry_buffer_size": Field(
            65536, integer(0), "int", "request body bytes kept so the request can be retried"
        ),
        "max_request_body_size": Field(
            None,
            size,
            "size",
            "largest request body accepted, bytes or 512k/10m/1g (413); null: unlimited",
            nullable=True,
        ),
        "add_forwarded_headers": Field(
            True, boolean, "bool", "append X-Forwarded-For/-Proto/-Host"
        ),
        "headers_with_underscores": Field(
            "drop",
            choice("allow", "drop", "reject"),
            "str",
            "request header names with '_': forward, drop (nginx) or answer 400",
        ),
        "read_buffer_limit": Field(
            262144, integer(1), "int", "bytes buffered from a peer before reading pauses"
        ),
        "max_request_line": Field(8192, integer(1), "int", "longest request line (414)"),
        "max_header_bytes": Field(32768, integer(1), "int", "largest request head (431)"),
        "max_headers": Field(100, integer(1), "int", "most request header fields (431)"),
        "max_chunk_line": Field(4096, integer(1), "int", "longest chunk-size line"),
        "busy_poll": Field(
            0.0002,
            busy_poll,
            "seconds",
            "busy polling window after a read (0: off; see Busy polling)",
        ),
        "access_log": Field(
            None,
            text,
            "path",
            "one line per request to this file ('-': standard output); null: none",
            nullable=True,
        ),
        "access_log_format": Field(
            "combined", choice("combined", "json"), "str", "access log format"
        ),
        "record": Field(
            None,
            text,
            "path",
            "record one session trace per client connection into this directory",
            nullable=True,
        ),
        "h2_max_concurrent_streams": Field(
            100,
            integer(1),
            "int",
            "HTTP/2 streams a client connection may have open at once (more: REFUSED_STREAM)",
        ),
        "h2_max_resets": Field(
            100,
            integer(1),
            "int",
            "HTTP/2 streams a client connection may reset or have refused per flood window "
            "(more: GOAWAY ENHANCE_YOUR_CALM)",
        ),
        "h2_max_control_frames": Field(
            1000,
            integer(1),
            "int",
            "HTTP/2 PING, SETTINGS, PRIORITY, unearned WINDOW_UPDATE, empty DATA frames per "
            "flood window (more: GOAWAY ENHANCE_YOUR_CALM)",
        ),
        "h2_flood_window": Field(
            10.0, seconds, "seconds", "the window the HTTP/2 flood budgets count in"
        ),
        "h2_max_header_block": Field(
            65536,
            integer(1),
            "int",
            "an HTTP/2 header block's bytes across CONTINUATION frames (more: GOAWAY "
            "ENHANCE_YOUR_CALM)",
        ),
        "h2_header_table_size": Field(
            4096,
            integer(0, 1 << 20),
            "int",
            "the HPACK dynamic table HTTP/2 clients may use (SETTINGS_HEADER_TABLE_SIZE)",
        ),
        "reuse_port": Field(
            False,
            boolean,
            "bool",
            "bind with SO_REUSEPORT, so that other processes may bind the same port (with "
            "threads > 1 the supervisor binds once and every worker shares its sockets)",
        ),
    },
    "the process: Pingora's fields, then proxycore's",
)

TLS = Section(
    {
        "cert": Field(None, text, "path", "certificate chain (PEM)", nullable=True),
        "key": Field(None, text, "path", "its private key (PEM)", nullable=True),
        "sni_certs": MapOf(
            Section(
                {
                    "cert": Field(None, text, "path", "certificate chain (PEM)", required=True),
                    "key": Field(None, text, "path", "its private key (PEM)", required=True),
                },
                "certificate for a server name (exact or *.example.com)",
            ),
            "certificates chosen by SNI",
            key_name="SERVER_NAME",
        ),
        "client_ca": Field(
            None, text, "path", "verify client certificates (mTLS) against this CA", nullable=True
        ),
        "client_auth": Field(
            None,
            choice("none", "optional", "required"),
            "str",
            "client certificates: none, optional, required (null: required with client_ca)",
            nullable=True,
        ),
        "alpn": Field(
            ["h2", "http/1.1"],
            _alpn,
            "list of str",
            "protocols offered by ALPN, in order (h2 left out when the listener's h2 is off)",
            scalar_list=True,
        ),
        "handshake_timeout": Field(10.0, seconds, "seconds", "time to finish the handshake"),
    },
    "TLS termination (every TLS listener shares one set today)",
)

LISTENER = Section(
    {
        "address": Field(None, _listen, "HOST:PORT", "address to listen on", required=True),
        "tls": Section(TLS.fields, TLS.doc),
        "h2c": Field(
            True,
            boolean,
            "bool",
            "cleartext: take HTTP/2 by prior knowledge on this port (same for every listener)",
        ),
        "h2": Field(True, boolean, "bool", "TLS: offer h2 by ALPN (same for every listener)"),
    },
    "a listening address; later switches (PROXY protocol) join here",
)

BACKEND = Section(
    {
        "address": Field(
            None,
            _backend_address,
            "[https://]HOST:PORT",
            "origin address (a name is resolved again every discovery.interval)",
            required=True,
        ),
        "weight": Field(1, integer(1), "int", "share of the traffic"),
    },
    "an origin; also written as a string HOST:PORT[,weight=N]",
    shorthand=_backend_shorthand,
)

UPSTREAM = Section(
    {
        "backends": ListOf(BACKEND, "the origins"),
        "lb": Field("round_robin", choice(*SELECTORS), "str", "load-balancing selector"),
        "hash_key": Field(
            None,
            _hash_key,
            "str",
            "what hash/consistent hash on: header:NAME, uri, client_ip",
            nullable=True,
        ),
        "health_check": Section(
            {
                "check": Field(
                    None, _health_check, "str", "tcp or http:/PATH (expects 200)", nullable=True
                ),
                "interval": Field(5.0, seconds, "seconds", "time between two checks"),
            },
            "active health check of every backend",
        ),
        "discovery": Section(
            {
                "file": Field(
                    None,
                    text,
                    "path",
                    "also take backends from this file (one HOST:PORT[,weight=N] per line)",
                    nullable=True,
                ),
                "interval": Field(
                    10.0, seconds, "seconds", "how often names are re-resolved and the file read"
                ),
            },
            "backends: static addresses, DNS names (re-resolved) and a watched file",
        ),
        "tls": Section(
            {
                "sni": Field(
                    None,
                    text,
                    "str",
                    "server name sent and verified (default: the host)",
                    nullable=True,
                ),
                "ca": Field(
                    None,
                    text,
                    "path",
                    "CA bundle (default: server.ca_file, else the system store)",
                    nullable=True,
                ),
                "verify": Field(True, boolean, "bool", "verify the origin's certificate"),
                "verify_hostname": Field(True, boolean, "bool", "verify the name in it"),
                "cert": Field(None, text, "path", "client certificate (mTLS)", nullable=True),
                "key": Field(None, text, "path", "its private key", nullable=True),
            },
            "TLS to https:// backends",
        ),
        "timeouts": Section(
            {
                "connect": _s("connect timeout (null: server.connect_timeout)"),
                "read": _s("read timeout (null: server.read_timeout)"),
                "write": _s("write timeout (null: server.write_timeout)"),
                "idle": Field(
                    None,
                    seconds_or_zero,
                    "seconds",
                    "pooled idle time, 0: no pooling (null: server.upstream_idle_timeout)",
                    nullable=True,
                ),
            },
            "per-group timeouts",
        ),
        "passive_health": Section(
            {
                "eject_after": Field(
                    5, integer(1), "int", "eject after N consecutive failures of any kind"
                ),
                "eject_after_connect_failures": Field(
                    1, integer(1), "int", "eject after N consecutive failed connects"
                ),
                "eject_for": Field(
                    10.0, seconds_or_zero, "seconds", "how long a backend stays out (0: never)"
                ),
            },
            "outlier ejection (nginx max_fails/fail_timeout, Envoy outlier detection)",
        ),
    },
    "an upstream group",
)

ROUTE = Section(
    {
        "host": Field(
            None, _route_host, "str", "exact host or *.example.com (null: any)", nullable=True
        ),
        "path": Field("/", _route_path, "str", "path prefix"),
        "upstream": Field(None, text, "str", "the upstream group to send to", nullable=True),
        "return": Field(
            None,
            _route_return,
            "str",
            "answer by itself: 403, '200 text', '301 https://...' (nginx's return)",
            nullable=True,
        ),
    },
    "a route, matched in order; the first match wins",
)

ADMIN = Section(
    {
        "address": Field(
            None,
            _listen,
            "HOST:PORT",
            "the admin listener: /metrics (Prometheus), /healthz, /status and /status.json "
            "(like --admin; null: off)",
            nullable=True,
        ),
        "allow_non_loopback": Field(
            False,
            boolean,
            "bool",
            "allow an address that is not loopback (the admin listener shows the proxy's "
            "internals to whoever reaches it)",
        ),
    },
    "the admin listener",
)

FILE = Section(
    {
        "version": Field(1, integer(1, 1), "int", "Pingora: the file format's version"),
        "server": SERVER,
        "listeners": ListOf(LISTENER, "where to listen", default=[{"address": "127.0.0.1:8080"}]),
        "upstreams": MapOf(UPSTREAM, "upstream groups by name (reverse-proxy)"),
        "routes": ListOf(ROUTE, "routes in order (reverse-proxy)"),
        "admin": ADMIN,
    },
    "the file",
)


# -- validation -------------------------------------------------------------------------------


def _defaults(node: Node) -> Any:
    if isinstance(node, Field):
        return list(node.default) if isinstance(node.default, list) else node.default
    if isinstance(node, Section):
        return {k: _defaults(v) for k, v in node.fields.items() if _has_default(v)}
    if isinstance(node, ListOf):
        return [_fill(node.item, dict(d), ()) for d in node.default] if node.default else []
    return {}


def _has_default(node: Node) -> bool:
    return not (isinstance(node, Field) and node.required)


def _fill(node: Node, value: Any, path: tuple[str | int, ...]) -> Any:
    out: list[Problem] = []
    return _walk(node, value, path, out)


def _walk(node: Node, value: Any, path: tuple[str | int, ...], out: list[Problem]) -> Any:
    if isinstance(node, Field):
        if value is None and node.nullable:
            return None
        if node.scalar_list:
            if not isinstance(value, list):
                out.append((path, f"expected a list, got {describe(value)}"))
                return _defaults(node)
            for i, item in enumerate(value):
                problem = node.check(item)
                if problem:
                    out.append(((*path, i), f"{problem}, got {describe(item)}"))
            return list(value)
        problem = node.check(value)
        if problem:
            out.append((path, f"{problem}, got {describe(value)}"))
            return node.default
        return value
    if isinstance(node, Section):
        if node.shorthand is not None and not isinstance(value, dict):
            converted = node.shorthand(value)
            if converted is not None:
                value = converted
        if value is None:
            value = {}
        if not isinstance(value, dict):
            out.append((path, f"expected a {node.type_name}, got {describe(value)}"))
            return _defaults(node)
        result: dict[str, Any] = {}
        for key in value:
            if key not in node.fields:
                out.append(((*path, str(key)), _unknown(str(key), list(node.fields))))
        for name, child in node.fields.items():
            if name in value:
                result[name] = _walk(child, value[name], (*path, name), out)
            elif isinstance(child, Field) and child.required:
                out.append(((*path, name), "required field missing"))
            else:
                result[name] = _defaults(child)
        return result
    if isinstance(node, ListOf):
        if value is None:
            return []
        if not isinstance(value, list):
            out.append((path, f"expected a list, got {describe(value)}"))
            return []
        return [_walk(node.item, v, (*path, i), out) for i, v in enumerate(value)]
    if value is None:
        return {}
    if not isinstance(value, dict):
        out.append((path, f"expected a mapping of names, got {describe(value)}"))
        return {}
    return {str(k): _walk(node.value, v, (*path, str(k)), out) for k, v in value.items()}


def _unknown(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, 1)
    if close:
        return f"unknown field (did you mean {close[0]}?)"
    if len(known) <= 8:
        return f"unknown field (known here: {', '.join(known)})"
    return "unknown field"


def validate(doc: Any, *, app_sections: bool = False) -> tuple[dict[str, Any], list[Problem]]:
    """Check ``doc`` (the parsed file) → (effective configuration, problems). With
    ``app_sections`` (``proxycore run``), top-level sections other than :data:`RESERVED`
    are kept as written for the user's class instead of being refused; ``upstreams`` and
    ``routes`` are then the class's too."""
    problems: list[Problem] = []
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        return _defaults(FILE), [((), f"expected a mapping at the top, got {describe(doc)}")]
    own = {k: v for k, v in doc.items() if k in RESERVED}
    other = {str(k): v for k, v in doc.items() if k not in RESERVED}
    if app_sections:
        other.update({k: own.pop(k) for k in ("upstreams", "routes") if k in own})
    else:
        own.update(other)
        other = {}
    conf = _walk(FILE, own, (), problems)
    if not app_sections:  # a top-level section of a user's class, given to reverse-proxy
        problems = [
            (p, m + "; a section of your own is for proxycore run's class")
            if len(p) == 1
            and m.startswith("unknown field")
            and not m.startswith("unknown field (did")
            else (p, m)
            for p, m in problems
        ]
    if app_sections:
        del conf["upstreams"], conf["routes"]
        conf.update(other)
    else:
        bad = {p for p, _ in problems}
        problems += _cross_checks(conf, bad)
    return conf, problems


def _cross_checks(conf: dict[str, Any], bad: set[tuple[str | int, ...]]) -> list[Problem]:
    """What one field cannot say alone: routes name groups that exist, hash selectors have a
    key, a group has backends, pairs go together, TLS listeners agree."""
    out: list[Problem] = []
    groups: dict[str, Any] = conf["upstreams"]
    for i, r in enumerate(conf["routes"]):
        if any(p[:2] == ("routes", i) for p in bad):
            continue  # its own problem is reported already
        if (r["upstream"] is None) == (r["return"] is None):
            out.append((("routes", i), "a route needs exactly one of upstream and return"))
        elif r["upstream"] is not None and r["upstream"] not in groups:
            have = ", ".join(groups) or "none defined"
            out.append((("routes", i, "upstream"), f"no upstream group {r['upstream']!r} ({have})"))
    for name, g in groups.items():
        path: tuple[str | int, ...] = ("upstreams", name)
        if not g["backends"] and not g["discovery"]["file"]:
            out.append(((*path, "backends"), "a group needs backends (or discovery.file)"))
        if g["lb"] in ("hash", "consistent") and not g["hash_key"]:
            out.append(((*path, "hash_key"), f"lb {g['lb']} needs a hash_key"))
        if (g["tls"]["cert"] is None) != (g["tls"]["key"] is None):
            out.append(((*path, "tls"), "cert and key go together"))
    tls_blocks = [lst["tls"] for lst in conf["listeners"] if _tls_on(lst["tls"])]
    for i, lst in enumerate(conf["listeners"]):
        first = conf["listeners"][0]
        for switch in ("h2", "h2c"):  # (ServerConf.h2 / h2c: one value per process today)
            if lst[switch] != first[switch]:
                out.append(
                    (
                        ("listeners", i, switch),
                        f"every listener has the same {switch} today (the first says "
                        f"{str(first[switch]).lower()})",
                    )
                )
        t = lst["tls"]
        if _tls_on(t):
            if t != tls_blocks[0]:
                out.append(
                    (
                        ("listeners", i, "tls"),
                        "every TLS listener must use the same tls settings (one set per "
                        "process today)",
                    )
                )
            if (t["cert"] is None) != (t["key"] is None):
                out.append((("listeners", i, "tls"), "cert and key go together"))
            if t["client_auth"] not in (None, "none") and not t["client_ca"]:
                out.append((("listeners", i, "tls", "client_auth"), "needs client_ca"))
        elif t["client_ca"] or t["key"]:
            out.append((("listeners", i, "tls"), "TLS needs cert/key or sni_certs"))
    return out


def _tls_on(t: dict[str, Any]) -> bool:
    return bool(t["cert"] or t["sni_certs"])


# -- documentation ----------------------------------------------------------------------------


def _rows(node: Node, path: str) -> Iterator[tuple[str, str, str, str]]:
    if isinstance(node, Field):
        default = node.default
        shown = "required" if node.required else json.dumps(default)
        if isinstance(default, float) and default == int(default):
            shown = str(default)
        yield path, node.type_name + (" or null" if node.nullable else ""), shown, node.doc
        return
    if isinstance(node, Section):
        if path:
            yield path, node.type_name, "", node.doc
        for name, child in node.fields.items():
            yield from _rows(child, f"{path}.{name}" if path else name)
        return
    if isinstance(node, ListOf):
        yield path, "list", json.dumps(node.default) if node.default else "[]", node.doc
        yield from _rows(node.item, path + "[]")
        return
    yield path, "mapping", "{}", node.doc
    inner = node.value
    if isinstance(inner, Section):
        for name, child in inner.fields.items():
            yield from _rows(child, f"{path}.{node.key_name}.{name}")


def markdown_table() -> str:
    """The README's field table, generated from :data:`FILE`."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for path, type_name, default, doc in _rows(FILE, ""):
        cell = default.replace("|", "\\|")
        lines.append(f"| `{path}` | {type_name} | {f'`{cell}`' if cell else ''} | {doc} |")
    return "\n".join(lines) + "\n"
