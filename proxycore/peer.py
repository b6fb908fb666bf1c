"""Where a request goes: an upstream peer and the options of the connection to it.

Theory of operation: ``upstream_peer`` returns a :class:`Peer`. Its :attr:`Peer.key` contains
every property that makes two connections non-interchangeable (address, scheme, SNI, ...); the
connection pool only hands out an idle connection whose key matches exactly.
"""

from __future__ import annotations

__all__ = ["Peer"]


class Peer:
    """An upstream address plus per-peer options.

    Timeouts are in seconds; ``None`` means "use the server default" (:class:`ServerConf`).
    ``idle_timeout=0`` disables pooling for this peer.
    """

    __slots__ = (
        "connect_timeout",
        "host",
        "idle_timeout",
        "key",
        "port",
        "read_timeout",
        "sni",
        "tls",
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
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        self.host = host
        self.port = port
        self.tls = tls
        self.sni = sni
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.key: tuple[object, ...] = (host, port, tls, sni)

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``host:port`` or ``[v6]:port`` (raises ValueError with the bad value)."""
        host, sep, port_s = text.rpartition(":")
        if not sep or not host or not port_s.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host, int(port_s))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Peer({self.address}{', tls' if self.tls else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)
