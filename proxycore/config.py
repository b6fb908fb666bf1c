"""Server settings that the core obeys: timeouts, limits, pool size, retries.

Theory of operation: one :class:`ServerConf` is handed to the engine. Field names follow
Pingora's configuration where Pingora has the setting (``upstream_keepalive_pool_size``,
``max_retries``); timeouts follow nginx's defaults (``proxy_connect_timeout 60s``,
``proxy_read_timeout 60s``, ``proxy_send_timeout 60s``, ``client_header_timeout 60s``,
``client_body_timeout 60s``, ``send_timeout 60s``, ``keepalive_timeout 75s``, upstream
``keepalive_timeout 60s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxycore.h1.parse import UNDERSCORE_ACTIONS, Limits

__all__ = ["ServerConf", "TlsSettings", "source_address_problem"]


@dataclass
class TlsSettings:
    """TLS termination for the listeners (file paths; the files are read outside the core by
    :mod:`proxycore.tlsconfig` at start-up and on reload).

    ``cert``/``key``: the default certificate (optional when ``sni_certs`` is given: then a
    client hello for an unknown name, or without SNI, is refused with ``unrecognized_name``).
    ``sni_certs``: server name (exact, or ``*.example.com``) -> (cert, key).
    ``client_ca``/``client_auth``: mTLS, ``"none"``, ``"optional"`` or ``"required"``.
    ``ports``: the local ports that speak TLS (set by :func:`proxycore.run` from the listen
    addresses). ``handshake_timeout``: seconds a client may take to finish the handshake.
    """

    cert: str | None = None
    key: str | None = None
    sni_certs: dict[str, tuple[str, str]] = field(default_factory=dict)
    client_ca: str | None = None
    client_auth: str = "none"
    alpn: tuple[str, ...] = ("h2", "http/1.1")  # (h2 left out when ServerConf.h2 is off)
    handshake_timeout: float = 10.0
    ports: list[int] = field(default_factory=list)


@dataclass
class ServerConf:
    """Everything the core needs to know about limits and timing (seconds, bytes)."""

    connect_timeout: float = 60.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    upstream_idle_timeout: float = 60.0
    linger_timeout: float = 5.0
    upstream_keepalive_pool_size: int = 128
    upstream_keepalive_per_peer: int = 128
    max_retries: int = 16
    retry_buffer_size: int = 65536
    max_request_body_size: int | None = None
    add_forwarded_headers: bool = True
    # Request header fields whose name holds "_": "allow" (forward), "drop" (remove; nginx's
    # underscores_in_headers off) or "reject" (400), as Envoy's headers_with_underscores_action.
    headers_with_underscores: str = "drop"
    read_buffer_limit: int = 262144
    # HTTP/2 from clients (proxycore.h2): h2c by prior knowledge on cleartext listeners
    # (RFC 9113 §3.3), "h2" offered by ALPN on TLS listeners (§3.2), and the streams one
    # connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; more are refused
    # with REFUSED_STREAM).
    h2c: bool = True
    h2: bool = True
    h2_max_concurrent_streams: int = 100
    # HTTP/2 floods (RFC 9113 §10.5; proxycore.h2.connection.FloodGuard): per client connection and
    # window of h2_flood_window seconds, at most h2_max_resets streams reset by the client or
    # refused (rapid reset, CVE-2023-44487) and h2_max_control_frames PING, SETTINGS, PRIORITY,
    # unearned WINDOW_UPDATE, empty DATA and RST_STREAM on closed streams; a header block is at
    # most h2_max_header_block bytes across CONTINUATION frames (CVE-2024-27316). Past any:
    # GOAWAY(ENHANCE_YOUR_CALM) and close.
    h2_max_resets: int = 100
    h2_max_control_frames: int = 1000
    h2_flood_window: float = 10.0
    h2_max_header_block: int = 65536
    # HPACK (RFC 7541): the dynamic table the client's encoder may use
    # (SETTINGS_HEADER_TABLE_SIZE); a decoded header list over twice limits.max_header_bytes
    # (SETTINGS_MAX_HEADER_LIST_SIZE) is GOAWAY(ENHANCE_YOUR_CALM), over limits is a 431.
    h2_header_table_size: int = 4096
    limits: Limits = field(default_factory=Limits)
    record_dir: str | None = None  # write one session trace per client connection here
    reuse_port: bool = False  # bind listeners with SO_REUSEPORT (set when running workers)
    tls: TlsSettings | None = None  # TLS termination (see TlsSettings)
    # Adapters only: after a read, keep the event loop polling (zero timeout) for an adaptive
    # window of at most this many seconds instead of sleeping (proxycore.adapters.BusyPoll).
    # 0 = off.
    busy_poll: float = 0.0002
    # Adapters only: the access log (proxycore.accesslog), one line per request to this path
    # ("-": standard output) through the "proxycore.access" logger; None = off.
    access_log: str | None = None
    access_log_format: str = "combined"  # or "json"
    # Pingora's client_bind_to_ipv4/ipv6: local addresses that connections to origins bind to
    # before connecting, one per connection of the origin address's family (proxycore.bind).
    client_bind_to_ipv4: list[str] = field(default_factory=list)
    client_bind_to_ipv6: list[str] = field(default_factory=list)
    # Adapters only: the shutdown (SIGTERM, and the old process after an upgrade): exchanges in
    # flight get grace_period seconds (Pingora's grace_period_seconds), then connections still
    # writing their last bytes shutdown_timeout more (graceful_shutdown_timeout_seconds).
    grace_period: float = 300.0
    shutdown_timeout: float = 5.0
    # Adapters only: the Unix socket of the zero-downtime upgrade (proxycore.adapters.upgrade).
    upgrade_sock: str = "/tmp/proxycore_upgrade.sock"
    # Adapters only: the admin listener (HOST:PORT; /metrics, /healthz; proxycore.metrics and
    # proxycore.adapters.admin), None = off; a non-loopback address only if allowed.
    admin: str | None = None
    admin_allow_non_loopback: bool = False

    def check(self) -> None:
        """Raise ValueError naming a setting whose value the core cannot use (the engine calls
        this, and :func:`proxycore.run` before anything starts)."""
        for name, version in (("client_bind_to_ipv4", 4), ("client_bind_to_ipv6", 6)):
            for addr in getattr(self, name):
                problem = source_address_problem(addr, version)
                if problem is not None:
                    raise ValueError(f"{name}: {problem}, got {addr!r}")
        streams = self.h2_max_concurrent_streams
        if streams < 1:
            raise ValueError(f"h2_max_concurrent_streams must be at least 1, not {streams}")
        self._check_h2_floods()
        action = self.headers_with_underscores
        if action not in UNDERSCORE_ACTIONS:
            raise ValueError(
                f"headers_with_underscores must be one of {', '.join(UNDERSCORE_ACTIONS)}, "
                f"not {action!r}"
            )

    def _check_h2_floods(self) -> None:
        for name in ("h2_max_resets", "h2_max_control_frames", "h2_max_header_block"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        if not 0 <= self.h2_header_table_size <= 1 << 20:
            raise ValueError(
                f"h2_header_table_size must be from 0 to 1048576, not {self.h2_header_table_size}"
            )
        if not self.h2_flood_window > 0:
            raise ValueError(f"h2_flood_window must be positive, not {self.h2_flood_window}")


def source_address_problem(text: object, version: int) -> str | None:
    """Why ``text`` cannot be a source address of IP ``version`` (None: it can), without the
    value. A multicast or broadcast address is refused: Linux lets a TCP socket bind to one,
    then connects from another address as if there had been no bind."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        return f"expected an IPv{version} address"
    if ip.is_multicast or (version == 4 and text == "255.255.255.255"):
        return "expected a unicast address (a multicast or broadcast one cannot be a source)"
    return None
