"""Source addresses for connections to origins (Pingora's ``client_bind_to_ipv4/ipv6``).

Theory of operation: the server lists local addresses (:class:`proxycore.config.ServerConf`'s
``client_bind_to_ipv4`` and ``client_bind_to_ipv6``); every new upstream connection binds to one
of them before connecting, the one of the upstream address's family. The choice is made here,
in the core, and travels on the :class:`~proxycore.actions.Connect` action (``bind``); the
adapter only binds the socket to it (port 0: the kernel picks the port).

Which one, when several are listed: Pingora draws one at random per connection. proxycore draws
it from the connection's id through a multiplicative (Fibonacci) hash, so the choice spreads
evenly over the list and is still a pure function of the id: a replayed trace makes the same
choice, and the core needs no random number generator.

A peer whose host is an IP address gets the address of its family only (none if that family
has no list: the kernel chooses, as without the setting). A peer given by name is resolved by
the adapter, so the action carries one address of each listed family and the adapter binds to
the one whose family matches the address it connects to.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SourceAddresses", "is_ipv4"]

_GOLDEN: Final = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio
_MASK64: Final = 0xFFFFFFFFFFFFFFFF


def is_ipv4(host: str) -> bool:
    """``host`` is a dotted-quad IPv4 address (as the adapters' ``ipaddress`` would say)."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for p in parts:
        if not p.isdigit() or not p.isascii() or len(p) > 3 or int(p) > 255:
            return False
        if len(p) > 1 and p[0] == "0":
            return False
    return True


class SourceAddresses:
    """The listed source addresses and the choice of one per upstream connection."""

    __slots__ = ("v4", "v6")

    def __init__(self, v4: list[str] | tuple[str, ...], v6: list[str] | tuple[str, ...]) -> None:
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    @staticmethod
    def _pick(addrs: tuple[str, ...], conn: int) -> str:
        n = len(addrs)
        if n == 1:
            return addrs[0]
        # The top bits of a Fibonacci hash of the id, scaled to [0, n).
        return addrs[(((conn * _GOLDEN) & _MASK64) * n) >> 64]

    def choose(self, conn: int, host: str) -> tuple[str, ...]:
        """The source addresses for connection ``conn`` to ``host`` (at most one per family;
        empty: no bind)."""
        v4, v6 = self.v4, self.v6
        if ":" in host:  # an IPv6 address (a name never holds ':')
            return (self._pick(v6, conn),) if v6 else ()
        if is_ipv4(host):
            return (self._pick(v4, conn),) if v4 else ()
        out: tuple[str, ...] = ()
        if v4:
            out = (self._pick(v4, conn),)
        if v6:
            out = (*out, self._pick(v6, conn))
        return out
