"""Backends and load-balancing selectors (pure: randomness and load come in as inputs).

Theory of operation: a :class:`LoadBalancer` holds :class:`Backend` objects (address, weight,
metadata, health flags, requests in flight) and one selector. ``select(key)`` asks the selector
for a backend, skipping backends that are disabled, unhealthy, excluded by the caller (a retry
asks for one it has not tried: every selector offers one while any is left, ``hash`` and
``consistent`` the next distinct backend on the ring, as nginx's ``proxy_next_upstream``) or
refused by a predicate. Selectors:

* ``round_robin`` — in order; ``weighted`` — nginx's smooth weighted round robin;
* ``random`` — weighted, from a random source handed in (``rng.random()``);
* ``hash`` — FNV-1a 64 of the key over the weight-expanded backend list;
* ``consistent`` — Ketama exactly as nginx's ``hash $key consistent`` (160 points per weight
  unit, CRC32 of ``host \\0 port prev_hash``), so both pick the same backend for a key;
* ``least_conn`` — fewest requests in flight (weighted); ``p2c`` — power of two random choices
  on requests in flight.

The core never imports ``random``: :class:`XorShift` is a small seeded generator for callers
that want determinism (replays), and any object with ``random() -> float`` works.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from mypy_extensions import mypyc_attr

from proxycore.peer import Peer

__all__ = [
    "SELECTORS",
    "Backend",
    "Consistent",
    "FnvHash",
    "LeastConn",
    "LoadBalancer",
    "PowerOfTwo",
    "RandomSelector",
    "RoundRobin",
    "Selector",
    "WeightedRoundRobin",
    "XorShift",
    "fnv1a64",
    "parse_backend",
]


class RandomSource(Protocol):
    def random(self) -> float: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class XorShift:
    """A tiny deterministic generator (xorshift64*), so the core needs no ``random`` module."""

    def __init__(self, seed: int = 0x9E3779B97F4A7C15) -> None:
        self.state = (seed or 1) & 0xFFFFFFFFFFFFFFFF

    def random(self) -> float:
        x = self.state
        x ^= (x >> 12) & 0xFFFFFFFFFFFFFFFF
        x ^= (x << 25) & 0xFFFFFFFFFFFFFFFF
        x ^= (x >> 27) & 0xFFFFFFFFFFFFFFFF
        self.state = x
        return ((x * 0x2545F4914F6CDD1D) & 0xFFFFFFFFFFFFFFFF) / 2.0**64


@mypyc_attr(allow_interpreted_subclasses=True)
class Backend:
    """An upstream with a weight and free-form metadata, plus health and load state."""

    __slots__ = ("current_weight", "enabled", "healthy", "inflight", "metadata", "peer", "weight")

    def __init__(self, peer: Peer, weight: int = 1, metadata: dict[str, object] | None = None):
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self.peer = peer
        self.weight = weight
        self.enabled = True
        self.healthy = True
        self.inflight = 0  # requests in flight (least_conn, p2c)
        self.current_weight = 0  # smooth weighted round robin state
        self.metadata = metadata or {}

    @property
    def address(self) -> str:
        return self.peer.address

    def __repr__(self) -> str:
        return f"Backend({self.peer.address}, weight={self.weight})"


Accept = Callable[[Backend], bool]


def _usable(b: Backend) -> bool:
    return b.enabled and b.healthy


@mypyc_attr(allow_interpreted_subclasses=True)
class Selector:
    """Chooses among ``backends``; ``accept`` says which are eligible right now."""

    name = ""

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        raise NotImplementedError

    def rebuild(self, backends: Sequence[Backend]) -> None:
        """Called when the backend set changes (precomputed tables are rebuilt here)."""


@mypyc_attr(allow_interpreted_subclasses=True)
class RoundRobin(Selector):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        n = len(backends)
        for i in range(n):
            b = backends[(self._next + i) % n]
            if accept(b):
                self._next = (self._next + i + 1) % n
                return b
        return None


@mypyc_attr(allow_interpreted_subclasses=True)
class WeightedRoundRobin(Selector):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a (not a a a a a b c)."""

    name = "weighted"

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        best: Backend | None = None
        total = 0
        for b in backends:
            if not accept(b):
                continue
            b.current_weight += b.weight
            total += b.weight
            if best is None or b.current_weight > best.current_weight:
                best = b
        if best is not None:
            best.current_weight -= total
        return best


@mypyc_attr(allow_interpreted_subclasses=True)
class RandomSelector(Selector):
    """Weighted random choice among eligible backends."""

    name = "random"

    def __init__(self, rng: RandomSource | None = None) -> None:
        self.rng = rng or XorShift()

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        eligible = [b for b in backends if accept(b)]
        if not eligible:
            return None
        point = self.rng.random() * sum(b.weight for b in eligible)
        for b in eligible:
            point -= b.weight
            if point < 0:
                return b
        return eligible[-1]


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits."""
    h = 0xCBF29CE484222325
    for c in data:
        h = ((h ^ c) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@mypyc_attr(allow_interpreted_subclasses=True)
class FnvHash(Selector):
    """Key → FNV-1a 64 → an index into the weight-expanded list; an ineligible backend is
    skipped by probing the next slots (so one failure moves only its own keys)."""

    name = "hash"

    def __init__(self) -> None:
        self._slots: list[int] = []

    def rebuild(self, backends: Sequence[Backend]) -> None:
        self._slots = [i for i, b in enumerate(backends) for _ in range(b.weight)]

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        slots = self._slots
        if not slots:
            return None
        start = fnv1a64(key) % len(slots)
        for i in range(len(slots)):
            b = backends[slots[(start + i) % len(slots)]]
            if accept(b):
                return b
        return None


@mypyc_attr(allow_interpreted_subclasses=True)
class Consistent(Selector):
    """Ketama consistent hashing, point for point what nginx's ``hash $key consistent`` does
    (ngx_http_upstream_hash_module.c): for each server, ``160 * weight`` points whose hashes
    are CRC32(host ``\\0`` port prev_hash_le32), sorted and deduplicated; a key maps to the
    first point whose hash ≥ CRC32(key), wrapping around. An ineligible backend passes the key
    to the next point's backend."""

    name = "consistent"

    def __init__(self) -> None:
        self._hashes: list[int] = []
        self._owners: list[int] = []

    def rebuild(self, backends: Sequence[Backend]) -> None:
        points: list[tuple[int, int]] = []
        for index, b in enumerate(backends):
            base = _ketama_base(b.address)
            prev = 0
            for _ in range(160 * b.weight):
                h = zlib.crc32(prev.to_bytes(4, "little"), base)
                points.append((h, index))
                prev = h
        points.sort(key=lambda p: p[0])  # stable, like nginx's sort on hash only
        hashes: list[int] = []
        owners: list[int] = []
        for h, index in points:
            if not hashes or hashes[-1] != h:
                hashes.append(h)
                owners.append(index)
        self._hashes, self._owners = hashes, owners

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        hashes = self._hashes
        if not hashes:
            return None
        n = len(hashes)
        start = bisect.bisect_left(hashes, zlib.crc32(key))
        tried: set[int] = set()
        for i in range(n):
            index = self._owners[(start + i) % n]
            if index in tried:
                continue
            b = backends[index]
            if accept(b):
                return b
            tried.add(index)
            if len(tried) == len(backends):
                break
        return None


def _ketama_base(server: str) -> int:
    """CRC32 state after ``host \\0 port`` as nginx splits the server name (port = trailing
    digits after the last colon)."""
    host, port = server, ""
    i = server.rfind(":")
    if i >= 0 and server[i + 1 :].isdigit():
        host, port = server[:i], server[i + 1 :]
    return zlib.crc32(host.encode() + b"\x00" + port.encode())


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastConn(Selector):
    """Fewest requests in flight relative to weight; ties broken round robin."""

    name = "least_conn"

    def __init__(self) -> None:
        self._rr = 0

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        best: Backend | None = None
        n = len(backends)
        for i in range(n):
            b = backends[(self._rr + i) % n]
            if accept(b) and (best is None or b.inflight * best.weight < best.inflight * b.weight):
                best = b
        self._rr = (self._rr + 1) % max(n, 1)
        return best


@mypyc_attr(allow_interpreted_subclasses=True)
class PowerOfTwo(Selector):
    """Two random eligible backends; the one with fewer requests in flight (per weight) wins."""

    name = "p2c"

    def __init__(self, rng: RandomSource | None = None) -> None:
        self.rng = rng or XorShift()

    def pick(self, backends: Sequence[Backend], accept: Accept, key: bytes) -> Backend | None:
        eligible = [b for b in backends if accept(b)]
        if len(eligible) <= 1:
            return eligible[0] if eligible else None
        a = eligible[int(self.rng.random() * len(eligible))]
        b = eligible[int(self.rng.random() * len(eligible))]
        return a if a.inflight * b.weight <= b.inflight * a.weight else b


SELECTORS: dict[str, Callable[[], Selector]] = {
    "round_robin": RoundRobin,
    "weighted": WeightedRoundRobin,
    "random": RandomSelector,
    "hash": FnvHash,
    "consistent": Consistent,
    "least_conn": LeastConn,
    "p2c": PowerOfTwo,
}


def parse_backend(text: str, **tls_options: object) -> tuple[Peer, int]:
    """``HOST:PORT``, ``https://HOST[:PORT]``, each optionally followed by ``,weight=N``
    (N ≥ 1); ValueError names the bad value. ``tls_options`` (``sni``, ``ca``, ``verify``,
    ``client_cert``, ...) apply to ``https://`` backends."""
    addr, _, opts = text.partition(",")
    peer = Peer.parse(addr)
    if peer.tls and tls_options:
        peer = peer.replace(**tls_options)
    weight = 1
    if opts:
        name, eq, value = opts.partition("=")
        if name != "weight" or not eq:
            raise ValueError(f"unknown backend option {opts!r} in {text!r} (expected weight=N)")
        if not value.lstrip("-").isdigit() or int(value) <= 0:
            raise ValueError(f"weight must be a positive integer, got {value!r} in {text!r}")
        weight = int(value)
    return peer, weight


@mypyc_attr(allow_interpreted_subclasses=True)
class LoadBalancer:
    """Chooses a backend per request, skipping disabled/unhealthy ones and any the caller
    excludes. ``select(key)``: ``key`` matters for ``hash`` and ``consistent``."""

    def __init__(self, backends: Iterable[Backend], selector: Selector | str | None = None):
        self.backends = list(backends)
        if not self.backends:
            raise ValueError("a load balancer needs at least one backend")
        if isinstance(selector, str):
            if selector not in SELECTORS:
                raise ValueError(
                    f"unknown selector {selector!r}; choose from {', '.join(SELECTORS)}"
                )
            selector = SELECTORS[selector]()
        self.selector = selector or RoundRobin()
        self.selector.rebuild(self.backends)

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Swap the backend set (discovery); backends with the same address keep their
        health and load state."""
        old = {b.address: b for b in self.backends}
        new = []
        for b in backends:
            kept = old.get(b.address)
            if kept is not None:
                kept.weight, kept.metadata = b.weight, b.metadata
                new.append(kept)
            else:
                new.append(b)
        self.backends = new
        self.selector.rebuild(new)

    def select(
        self,
        key: bytes = b"",
        exclude: Iterable[Backend] = (),
        predicate: Callable[[Backend], bool] | None = None,
    ) -> Backend | None:
        if predicate is None and not exclude:
            return self.selector.pick(self.backends, _usable, key)
        excluded = {id(b) for b in exclude}

        def accept(b: Backend) -> bool:
            return (
                b.enabled
                and b.healthy
                and id(b) not in excluded
                and (predicate is None or predicate(b))
            )

        return self.selector.pick(self.backends, accept, key)
