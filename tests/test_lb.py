"""Load-balancing selectors (pure; no sockets)."""

from __future__ import annotations

import bisect
import zlib
from collections import Counter
from typing import Any

import pytest

from proxycore import Backend, LoadBalancer, Peer
from proxycore.lb import SELECTORS, FnvHash, XorShift, fnv1a64


def backends(*weights: int) -> list[Backend]:
    return [Backend(Peer("127.0.0.1", 9000 + i), w) for i, w in enumerate(weights)]


def names(picks: list[Backend | None]) -> str:
    return "".join("abcdefgh"[b.peer.port - 9000] if b else "-" for b in picks)


def test_smooth_weighted_round_robin_matches_nginx_sequence() -> None:
    lb = LoadBalancer(backends(5, 1, 1), "weighted")
    assert names([lb.select() for _ in range(7)]) == "aabacaa"  # nginx's documented order


def test_round_robin_skips_unhealthy_and_disabled() -> None:
    bs = backends(1, 1, 1)
    lb = LoadBalancer(bs, "round_robin")
    bs[1].healthy = False
    bs[2].enabled = False
    assert names([lb.select() for _ in range(4)]) == "aaaa"
    bs[0].healthy = False
    assert lb.select() is None


def test_exclude_and_predicate() -> None:
    bs = backends(1, 1, 1)
    lb = LoadBalancer(bs, "round_robin")
    assert lb.select(exclude=[bs[0], bs[1]]) is bs[2]
    assert lb.select(predicate=lambda b: b.peer.port == 9001) is bs[1]


@pytest.mark.parametrize("name", ["random", "weighted"])
def test_weights_respected_in_distribution(name: str) -> None:
    lb = LoadBalancer(backends(3, 1), name)
    counts = Counter(names([lb.select()]) for _ in range(4000))
    assert 2.2 < counts["a"] / counts["b"] < 4.0, counts


def test_hash_is_stable_and_moves_only_the_failed_backends_keys() -> None:
    bs = backends(1, 1, 1, 1)
    lb = LoadBalancer(bs, "hash")
    keys = [f"user{i}".encode() for i in range(2000)]
    before = {k: lb.select(k) for k in keys}
    assert before == {k: lb.select(k) for k in keys}
    bs[2].healthy = False
    after = {k: lb.select(k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert moved and all(before[k] is bs[2] for k in moved)


def test_consistent_hash_minimal_disruption_when_a_backend_goes() -> None:
    bs = backends(1, 1, 1, 1, 1)
    lb = LoadBalancer(bs, "consistent")
    keys = [f"k{i}".encode() for i in range(5000)]
    before = {k: lb.select(k) for k in keys}
    lb.set_backends([b for b in bs if b is not bs[3]])
    after = {k: lb.select(k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert all(before[k] is bs[3] for k in moved)
    assert 0.1 < len(moved) / len(keys) < 0.3  # about a fifth


def test_least_conn_prefers_idle_backends() -> None:
    bs = backends(1, 1, 1)
    lb = LoadBalancer(bs, "least_conn")
    bs[0].inflight, bs[1].inflight, bs[2].inflight = 5, 0, 2
    assert lb.select() is bs[1]
    bs[1].inflight = 9
    assert lb.select() is bs[2]


def test_p2c_is_deterministic_with_a_seed() -> None:
    a = LoadBalancer(backends(1, 1, 1, 1), SELECTORS["p2c"]())
    b = LoadBalancer(backends(1, 1, 1, 1), SELECTORS["p2c"]())
    assert names([a.select() for _ in range(50)]) == names([b.select() for _ in range(50)])


def test_set_backends_keeps_state_of_remaining_ones() -> None:
    bs = backends(1, 1)
    lb = LoadBalancer(bs, "round_robin")
    bs[0].healthy = False
    lb.set_backends([Backend(Peer("127.0.0.1", 9000), 2), Backend(Peer("127.0.0.1", 9005))])
    assert lb.backends[0] is bs[0] and not lb.backends[0].healthy and lb.backends[0].weight == 2


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="weight must be positive"):
        Backend(Peer("127.0.0.1", 1), 0)
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        LoadBalancer(backends(1), "nope")
    with pytest.raises(ValueError, match="at least one backend"):
        LoadBalancer([], "round_robin")


def test_helpers() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # published FNV-1a 64 test vector
    r = XorShift(42)
    assert all(0.0 <= r.random() < 1.0 for _ in range(1000))


# ------------------------------------------------------------------ retries (proxy_next_upstream)

KEYS = [f"user{i}".encode() for i in range(300)]


def _select_until_none(lb: LoadBalancer, key: bytes) -> list[Backend]:
    """What a request that keeps failing gets: each retry excludes every backend tried."""
    tried: list[Backend] = []
    while (b := lb.select(key, exclude=tried)) is not None:
        assert all(b is not t for t in tried), (b, tried)
        tried.append(b)
        assert len(tried) <= len(lb.backends)
    return tried


@pytest.mark.parametrize("name", list(SELECTORS))
def test_a_retry_goes_to_a_backend_not_tried_while_one_is_left(name: str) -> None:
    bs = backends(3, 1, 2, 1)
    lb = LoadBalancer(bs, name)
    for key in KEYS[:60]:
        tried = _select_until_none(lb, key)
        assert sorted(b.peer.port for b in tried) == [9000, 9001, 9002, 9003], (name, key)
    bs[2].healthy = False  # never offered, not even when everything else was tried
    for key in KEYS[:60]:
        assert sorted(b.peer.port for b in _select_until_none(lb, key)) == [9000, 9001, 9003]


def _ring_order(lb: LoadBalancer, key: bytes) -> list[int]:
    """Backend indexes in the order met walking the selector's ring from ``key``'s point."""
    sel: Any = lb.selector
    if isinstance(sel, FnvHash):
        owners = sel._slots
        start = fnv1a64(key) % len(owners)
    else:
        owners = sel._owners
        start = bisect.bisect_left(sel._hashes, zlib.crc32(key))
    order: list[int] = []
    for i in range(len(owners)):
        index = owners[(start + i) % len(owners)]
        if index not in order:
            order.append(index)
    return order


@pytest.mark.parametrize("name", ["hash", "consistent"])
def test_hash_retries_take_the_next_distinct_backend_on_the_ring(name: str) -> None:
    bs = backends(3, 1, 2, 1, 1)
    lb = LoadBalancer(bs, name)
    firsts = set()
    for key in KEYS:
        order = [bs.index(b) for b in _select_until_none(lb, key)]
        assert order == _ring_order(lb, key), key
        firsts.add(order[0])
        # A retry moves the key where a failed (unhealthy) first choice would have.
        bs[order[0]].healthy = False
        assert lb.select(key) is bs[order[1]]
        bs[order[0]].healthy = True
    assert len(firsts) == len(bs)  # the keys spread: the ring walk was not trivially the same
