"""Backends and load-balancing selectors (pure; randomness is handed in).

Theory of operation: a :class:`LoadBalancer` holds a list of :class:`Backend` and a selection
algorithm. ``select()`` returns the next backend that is enabled and not excluded, so a retry can
ask for "another backend than the ones that failed". Round robin is the default, as for
``proxycore reverse-proxy --to A --to B``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from proxycore.peer import Peer

__all__ = ["Backend", "LoadBalancer", "RoundRobin"]


class Backend:
    """An upstream address with a weight and free-form metadata."""

    __slots__ = ("enabled", "metadata", "peer", "weight")

    def __init__(self, peer: Peer, weight: int = 1, metadata: dict[str, object] | None = None):
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self.peer = peer
        self.weight = weight
        self.enabled = True
        self.metadata = metadata or {}

    def __repr__(self) -> str:
        return f"Backend({self.peer.address}, weight={self.weight})"


class RoundRobin:
    """Plain round robin over the backends in order."""

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, backends: Sequence[Backend], accept: Callable[[Backend], bool]
    ) -> Backend | None:
        n = len(backends)
        for i in range(n):
            b = backends[(self._next + i) % n]
            if accept(b):
                self._next = (self._next + i + 1) % n
                return b
        return None


class LoadBalancer:
    """Chooses a backend per request, skipping disabled ones and any the caller excludes."""

    def __init__(self, backends: Iterable[Backend], selector: RoundRobin | None = None) -> None:
        self.backends = list(backends)
        if not self.backends:
            raise ValueError("a load balancer needs at least one backend")
        self.selector = selector or RoundRobin()

    def select(
        self,
        exclude: Iterable[Backend] = (),
        predicate: Callable[[Backend], bool] | None = None,
    ) -> Backend | None:
        excluded = set(map(id, exclude))

        def accept(b: Backend) -> bool:
            return b.enabled and id(b) not in excluded and (predicate is None or predicate(b))

        return self.selector.pick(self.backends, accept)
