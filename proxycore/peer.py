"""Where a request goes: an upstream peer and the options of the connection to it.

Theory of operation: ``upstream_peer`` returns a :class:`Peer`. Its :attr:`Peer.key` contains
every property that makes two connections non-interchangeable (address, TLS on or off, SNI,
verification settings, CA bundle, client certificate, ALPN); the connection pool only hands out
an idle connection whose key matches exactly, so a connection is never reused with another
identity.
"""

from __future__ import annotations

__all__ = ["PEER_OPTIONS", "Peer"]

# The constructor's keyword options (explicit: compiled classes have no __slots__ to read).
PEER_OPTIONS = (
    "tls", "sni", "connect_timeout", "read_timeout", "write_timeout", "idle_timeout", "verify",
    "verify_hostname", "ca", "client_cert", "alpn", "bind_to",
)  # fmt: skip


class Peer:
    """An upstream address plus per-peer options.

    Timeouts are in seconds; ``None`` means "use the server default" (:class:`ServerConf`).
    ``idle_timeout=0`` disables pooling for this peer.

    TLS (``tls=True``): ``sni`` is the server name sent and verified (default: ``host``;
    IP addresses are verified against the certificate's IP addresses and send no SNI);
    ``verify=False`` accepts any certificate; ``verify_hostname=False`` checks the chain but
    not the name; ``ca`` is a PEM bundle to trust instead of the system store; ``client_cert``
    is a ``(cert_file, key_file)`` pair for upstream mTLS; ``alpn`` the protocols offered.

    ``bind_to``: the local source address of connections to this peer, instead of the server's
    ``client_bind_to_ipv4/ipv6`` (Pingora's ``PeerOptions.bind_to``); it is part of the pool
    key, so a pooled connection is only reused from the same source. An address of the other
    family than the peer's is not used.
    """

    __slots__ = (
        "_address",
        "alpn",
        "bind_to",
        "ca",
        "client_cert",
        "connect_timeout",
        "host",
        "idle_timeout",
        "key",
        "port",
        "read_timeout",
        "sni",
        "tls",
        "verify",
        "verify_hostname",
        "write_timeout",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        sni: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        idle_timeout: float | None = None,
        verify: bool = True,
        verify_hostname: bool = True,
        ca: str | None = None,
        client_cert: tuple[str, str] | None = None,
        alpn: tuple[str, ...] = ("http/1.1",),
        bind_to: str | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        self.host = host
        self.port = port
        self._address = ""
        self.tls = tls
        self.sni = sni
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.verify = verify
        self.verify_hostname = verify_hostname
        self.ca = ca
        self.client_cert = tuple(client_cert) if client_cert is not None else None
        self.alpn = tuple(alpn)
        self.bind_to = bind_to
        key: tuple[object, ...] = (
            (host, port, True, sni, verify, verify_hostname, ca, self.client_cert, self.alpn)
            if tls
            else (host, port, False)
        )
        if bind_to is not None:
            key = (*key, "bind_to", bind_to)
        self.key = key

    @classmethod
    def parse(cls, text: str, **options: object) -> Peer:
        """Parse ``host:port``, ``[v6]:port``, ``http://host:port`` or ``https://host[:port]``
        (TLS; port 443 by default); raises ValueError naming the bad value. ``options`` are
        passed to the constructor (``sni=``, ``ca=``, ...)."""
        tls = False
        rest = text
        if text.startswith("https://"):
            tls, rest = True, text[8:]
        elif text.startswith("http://"):
            rest = text[7:]
        else:
            scheme, sep, _ = text.partition("://")
            if sep:
                raise ValueError(f"{text!r}: the scheme {scheme!r} is not supported (http, https)")
        rest = rest.rstrip("/")
        if tls and not rest.endswith("]") and ":" not in rest.rpartition("]")[2]:
            rest += ":443"
        host, sep, port_s = rest.rpartition(":")
        if not sep or not host or not port_s.isdigit():
            raise ValueError(f"expected HOST:PORT or https://HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host, int(port_s), tls=tls, **options)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Peer:
        """A copy with some options changed (``host=``, ``sni=``, ``ca=``, ...)."""
        kw: dict[str, object] = {name: getattr(self, name) for name in PEER_OPTIONS}
        kw.update(changes)
        host = kw.pop("host", self.host)
        port = kw.pop("port", self.port)
        return Peer(host, port, **kw)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """``https://host:port`` for TLS peers, ``host:port`` otherwise (as --to takes it)."""
        return f"https://{self.address}" if self.tls else self.address

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), computed once."""
        a = self._address
        if not a:
            host = f"[{self.host}]" if ":" in self.host else self.host
            a = self._address = f"{host}:{self.port}"
        return a

    def __repr__(self) -> str:
        return f"Peer({self.address}{', tls' if self.tls else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)
