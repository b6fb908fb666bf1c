"""What the core counts for the admin listener (proxycore/metrics.py): each exchange once, by
status class, method, protocol and upstream group; durations and upstream times in fixed
buckets; bytes; per-backend requests and errors; gauges read at snapshot time; and the sum of
several workers' snapshots."""

from __future__ import annotations

import json

import proxycore
from proxycore.builtin import ReverseProxy, RoutedProxy
from proxycore.metrics import BUCKETS, Histogram, Metrics, merge
from proxycore.testing import Harness
from tests.helpers import connect_id

GET = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST = b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nbody"
BREW = b"BREW /pot HTTP/1.1\r\nHost: example.com\r\n\r\n"
# (the origin closes after each answer: every exchange connects anew)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
FAIL = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _exchange(h: Harness, request: bytes, answer: bytes, took: float = 0.02) -> None:
    down, _ = h.accept()
    acts = h.data(down, request)
    up = connect_id(acts)
    h.now += 0.001
    h.connected(up)
    h.now += took
    h.data(up, answer)


def test_each_exchange_is_counted_once_by_class_method_protocol_and_group() -> None:
    h = Harness(ReverseProxy(["127.0.0.1:9001"]), metrics=True)
    m = h.engine.metrics
    assert isinstance(m, Metrics)
    _exchange(h, GET, OK)
    _exchange(h, POST, OK)
    _exchange(h, GET, FAIL, took=0.3)
    _exchange(h, BREW, OK)
    assert {k: c.n for k, c in m.requests.items()} == {
        ("2xx", "GET", "HTTP/1.1", "default"): 1,
        ("2xx", "POST", "HTTP/1.1", "default"): 1,
        ("5xx", "GET", "HTTP/1.1", "default"): 1,
        ("2xx", "other", "HTTP/1.1", "default"): 1,
    }
    m.duration.fold()
    m.connect.fold()
    m.first_byte.fold()
    assert sum(m.duration.counts) == 4
    assert m.duration.counts[BUCKETS.index(0.25) + 1] == 1  # the 0.3 s one: in (0.25, 0.5]
    assert m.bytes_in == 4 and m.bytes_out == 15
    assert {a: (c.n, c.errors) for a, c in m.backends.items()} == {"127.0.0.1:9001": (4, 1)}
    assert ["2xx", "GET", "1.1", "default", 1] in m.snapshot(h.engine)["requests"]
    assert sum(m.connect.counts) == 4 and sum(m.first_byte.counts) == 4


def test_a_routed_group_is_named_and_a_local_answer_has_no_group() -> None:
    app = RoutedProxy(
        upstreams={"api": {"backends": ["127.0.0.1:9001"]}},
        routes=[{"path": "/deny", "return": "403"}, {"upstream": "api"}],
    )
    h = Harness(app, metrics=True)
    _exchange(h, GET, OK)
    down, _ = h.accept()
    h.data(down, b"GET /deny HTTP/1.1\r\nHost: x\r\n\r\n")
    m = h.engine.metrics
    assert m is not None
    assert {k: c.n for k, c in m.requests.items()} == {
        ("2xx", "GET", "HTTP/1.1", "api"): 1,
        ("4xx", "GET", "HTTP/1.1", "-"): 1,
    }
    snap = m.snapshot(h.engine)
    assert snap["health"] == [
        {
            "group": "api",
            "address": "127.0.0.1:9001",
            "weight": 1,
            "healthy": True,
            "ejected": False,
            "ejections": 0,
            "in_flight": 0,
        }
    ]
    json.dumps(snap)  # plain data


def test_without_the_admin_listener_nothing_is_counted() -> None:
    h = Harness(ReverseProxy(["127.0.0.1:9001"]))
    _exchange(h, GET, OK)
    assert h.engine.metrics is None


def test_a_failed_connect_counts_as_a_backend_error() -> None:
    h = Harness(ReverseProxy(["127.0.0.1:9001"]), proxycore.ServerConf(max_retries=0), metrics=True)
    down, _ = h.accept()
    up = connect_id(h.data(down, GET))
    h.connect_failed(up)
    m = h.engine.metrics
    assert m is not None
    assert {k: c.n for k, c in m.requests.items()} == {("5xx", "GET", "HTTP/1.1", "default"): 1}
    assert {a: (c.n, c.errors) for a, c in m.backends.items()} == {"127.0.0.1:9001": (1, 1)}


def test_histogram_buckets_and_merge_of_worker_snapshots() -> None:
    hist = Histogram()
    for v in (0.001, 0.005, 0.006, 11.0):
        hist.observe(v)
    hist.fold()
    assert hist.counts[0] == 2 and hist.counts[1] == 1 and hist.counts[-1] == 1
    a = {
        "requests": [["2xx", "GET", "1.1", "default", 3]],
        "duration": hist.data(),
        "backends": {"b:1": [3, 0]},
        "pools": {"b:1": [1, 1]},
        "in_flight": 1,
        "draining": False,
        "health": [{"group": "default", "address": "b:1"}],
        "process": {"pid": 1},
    }
    b = {
        "requests": [["2xx", "GET", "1.1", "default", 2], ["5xx", "GET", "2", "default", 1]],
        "duration": hist.data(),
        "backends": {"b:1": [3, 1]},
        "pools": {"b:1": [2, 0]},
        "in_flight": 2,
        "draining": True,
        "health": [],
        "process": {"pid": 2},
    }
    out = merge([a, b])
    assert sorted(out["requests"]) == [
        ["2xx", "GET", "1.1", "default", 5],
        ["5xx", "GET", "2", "default", 1],
    ]
    assert out["duration"]["counts"][0] == 4 and out["duration"]["sum"] == 2 * hist.sum
    assert out["backends"] == {"b:1": [6, 1]} and out["pools"] == {"b:1": [3, 1]}
    assert out["in_flight"] == 3 and out["draining"] is True
    assert out["health"] == a["health"] and [p["pid"] for p in out["processes"]] == [1, 2]
    assert merge([]) == {}
