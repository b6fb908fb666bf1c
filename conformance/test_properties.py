"""Property-based checks (hypothesis) through one shared proxy per backend: whatever valid
headers, bodies, chunkings and write splits a client uses, the upstream sees the same
message and the client gets a correctly framed answer. Bounded: few examples, no database."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.client import Conn, build_request, chunked
from conformance.origins import pattern, pattern_sha256

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
names = st.text(alphabet=TCHAR, min_size=1, max_size=20).map(lambda s: "X-P-" + s)
value_chars = st.sampled_from([chr(c) for c in range(0x21, 0x7F)] + ["\xe9", "\xff"])
values = st.builds(
    lambda a, mid, b: a + mid + b if mid else a,
    value_chars,
    st.text(alphabet=st.one_of(value_chars, st.just(" "), st.just("\t")), max_size=40),
    value_chars,
)


@SETTINGS
@given(fields=st.lists(st.tuples(names, values), max_size=12))
def test_end_to_end_headers_round_trip(shared_proxy, shared_echo, fields):
    with Conn(shared_proxy.port) as c:
        c.send(build_request("GET", "/prop-headers", fields))
        r = c.read_response()
    assert r.status == 200, r
    seen = [(k.lower(), v) for k, v in shared_echo.last().headers if k.lower().startswith("x-p-")]
    # Names with an underscore are dropped by default (headers_with_underscores drop, as nginx).
    assert seen == [(k.lower(), v) for k, v in fields if "_" not in k]


@SETTINGS
@given(
    size=st.integers(0, 300_000),
    use_chunked=st.booleans(),
    piece=st.integers(1, 70_000),
    splits=st.lists(st.integers(1, 5000), max_size=4),
)
def test_request_body_round_trip(shared_proxy, shared_echo, size, use_chunked, piece, splits):
    body = pattern(size)
    if use_chunked:
        raw = build_request(
            "POST", "/prop-body", [("Transfer-Encoding", "chunked")], body=chunked(body, piece)
        )
    else:
        raw = build_request("POST", "/prop-body", [("Content-Length", str(size))]) + body
    with Conn(shared_proxy.port, timeout=10) as c:
        pos = 0
        for n in splits:  # a few small writes with pauses: incremental parsing
            c.send(raw[pos : pos + n])
            pos += n
            time.sleep(0.002)
        c.send(raw[pos:])
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["body_len"] == size
    assert r.json()["body_sha256"] == pattern_sha256(size)


@SETTINGS
@given(size=st.integers(0, 400_000), use_chunked=st.booleans(), head=st.booleans())
def test_response_body_round_trip(shared_proxy, size, use_chunked, head):
    method = "HEAD" if head else "GET"
    target = f"/{'chunked' if use_chunked else 'bytes'}/{size}"
    with Conn(shared_proxy.port, timeout=10) as c:
        for _ in range(2):  # twice on one connection: framing must leave nothing behind
            c.send(build_request(method, target))
            r = c.read_response(method)
            assert r.status == 200, r
            if head:
                assert r.body_len == 0
            else:
                assert r.complete and r.body_len == size and r.sha256 == pattern_sha256(size)
