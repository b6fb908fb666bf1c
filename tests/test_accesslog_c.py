"""The access log's C line formatter (proxycore/_alogfmt.c) writes exactly the text of its
Python reference (accesslog._combined, through accesslog._format_batch_py), byte for byte,
on random entries: heads with and without the three fields, in any case, past the first six
field lines, with quotes, backslashes, tabs, control and non-ASCII bytes, rejected heads,
long request lines, Basic auth (left to the reference), retries, cut exchanges, odd numbers
and times. The editable checkout runs pure Python, so this compiles the C file itself (one
gcc call) as tests/test_h1_scan.py does for the head scanner."""

from __future__ import annotations

import base64
import importlib.util
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import proxycore
from proxycore import accesslog
from proxycore.accesslog import (
    AccessEntry,
    _clock,
    _entry,
    _format_batch_py,
    _json_opt,
    _json_secs,
    _json_str,
    _line,
    format_json,
    request_fields,
    time_iso8601,
)
from proxycore.accesslog import (
    _secs as secs,
)
from proxycore.testing import Harness
from tests.helpers import connect_id, setup_request
from tests.test_accesslog import GET, NOT_FOUND, OK, Capture, Filtering

SOURCE = Path(accesslog.__file__).with_name("_alogfmt.c")


def build(out_dir: Path, *flags: str) -> Path | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    out = out_dir / ("_alogfmt" + sysconfig.get_config_var("EXT_SUFFIX"))
    run = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-ffp-contract=off", "-Wall", "-Werror",
         "-Wno-unused-parameter", *flags, f"-I{sysconfig.get_paths()['include']}",
         str(SOURCE), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def cfmt(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = build(tmp_path_factory.mktemp("alogfmt"))
    if out is None:
        pytest.skip("no C compiler")
    spec = importlib.util.spec_from_file_location("_alogfmt", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_NAMES = [
    "User-Agent", "user-agent", "USER-AGENT", "uSER-aGENT", "User-Agen", "User-Agent2",
    "Referer", "REFERER", "referer", "Referrer", "Authorization", "Authorizatio",
    "Host", "Accept", "X", "R", "U", "A", "Range", "Upgrade", "Accept-Encoding", "Cookie",
]  # fmt: skip
_ALPHA = list(b' \t"\\\x00\x01\x1f\x7f\x80\xe9\xff:;/=-_.,abcXYZ019')


def _value(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.choice([b"wrk", b"curl/8.5.0", b"http://r/x?y=1", b" t/1 ", b"\tx\t", b""])
    return bytes(rng.choice(_ALPHA) for _ in range(rng.randint(0, rng.choice((4, 30)))))


def _auth(rng: random.Random) -> bytes:
    user = bytes(rng.choice(_ALPHA) for _ in range(rng.randint(0, 6)))
    creds = base64.b64encode(user + rng.choice([b":pw", b"", b":"]))
    return rng.choice([b"Basic ", b"basic ", b"Bearer ", b"Basic"]) + creds


def random_head(rng: random.Random) -> bytes:
    target = rng.choice([b"/", b"/a?b=1", b"/" + b"p" * rng.choice((10, 2100)), b'/"q\\'])
    line = rng.choice([b"GET ", b"POST ", b"", b"G\x80T "]) + target + b" HTTP/1.1"
    lines = [line]
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.05:
            lines.append(b"")  # an empty line in the middle
        elif r < 0.1:
            lines.append(_value(rng))  # no name at all
        else:
            name = rng.choice(_NAMES).encode()
            auth = name.lower() == b"authorization" and r < 0.3
            value = _auth(rng) if auth else _value(rng)
            lines.append(name + rng.choice([b":", b": ", b":\t", b" :"]) + value)
    head = b"\r\n".join(lines)
    end = rng.random()
    if end < 0.8:
        head += b"\r\n\r\n"
    elif end < 0.9:
        head += b"\r\n"
    if rng.random() < 0.05:
        head = head.replace(b"\r\n", b"\n", 1)  # a bare LF (a rejected head)
    return head


def _num(rng: random.Random) -> int:
    if rng.random() < 0.03:
        return rng.choice([10**20, 2**63 - 1, -(2**63)])  # (10**20: left to the reference)
    return rng.choice([0, 200, 404, 499, 502, 999, 1000, 12345, -1])


def _secs(rng: random.Random) -> float:
    if rng.random() < 0.03:
        return rng.choice([1e14, 1e15, 1e300, -math.inf])  # (1e15 up: left to the reference)
    return rng.choice(
        [-1.0, 0.0, 0.0005, 0.0004999, 0.0125, 0.9995, 1.0, 3.14159, 999.9995, rng.random(),
         rng.random() * 100, -rng.random()]
    )  # fmt: skip


def random_entry(rng: random.Random, ascii_only: bool) -> AccessEntry:
    addrs = ["10.0.0.1", "::1", "127.0.0.1:9000", "-", ""] + ([] if ascii_only else ["h\xe9"])
    upstream = tuple(
        (rng.choice(addrs), rng.choice([0, 200, 502, 504, 1000, -7]), _secs(rng), _secs(rng))
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3)))
    )
    e = AccessEntry(rng.choice(addrs), random_head(rng), _num(rng), _num(rng), _secs(rng), upstream)
    e.parsed = rng.random() < 0.7
    e.cut = rng.random() < 0.1
    e.at = rng.choice([12.5, 1000.999, 0.0])
    e.created = rng.choice([0.0, 0.0, 1764624037.25, 1764624038.0, 1764624099.75])
    return e


def twins(seed: int, n: int, ascii_only: bool = True) -> tuple[list[Any], list[Any]]:
    """The same random batch twice (format_batch stamps the entries it formats)."""
    return (
        [random_entry(random.Random(seed * 1000 + i), ascii_only) for i in range(n)],
        [random_entry(random.Random(seed * 1000 + i), ascii_only) for i in range(n)],
    )


def test_c_batches_equal_the_reference(cfmt: ModuleType) -> None:
    rng = random.Random(26)
    for seed in range(600):
        a, b = twins(seed, rng.choice((1, 7, 64)))
        offset = rng.choice((0.0, 1764624000.5))
        got = cfmt.combined_batch(a, offset, _clock.get, _line)
        assert got == _format_batch_py(b, False, offset), seed
        assert [e.created for e in a] == [e.created for e in b]


def test_non_ascii_batches_are_left_to_the_reference(cfmt: ModuleType) -> None:
    """A piece that is not ASCII (an address here: the head's bytes are escaped) returns
    None, and format_batch formats that batch in Python."""
    left = 0
    for seed in range(300):
        a, b = twins(seed, 8, ascii_only=False)
        got = cfmt.combined_batch(a, 5.0, _clock.get, _line)
        want = _format_batch_py(b, False, 5.0)
        if got is None:
            left += 1
            assert not want.isascii()
        else:
            assert got == want, seed
    assert left > 50


def test_values_python_refuses_raise_the_same_way(cfmt: ModuleType) -> None:
    for bad in (math.nan, math.inf):
        a, b = twins(1, 1)
        a[0].request_time = b[0].request_time = bad
        with pytest.raises((ValueError, OverflowError)) as want:
            _format_batch_py(b, False, 0.0)
        with pytest.raises(want.type):
            cfmt.combined_batch(a, 0.0, _clock.get, _line)


def test_a_real_line_the_way_the_log_writes_it(cfmt: ModuleType) -> None:
    e = AccessEntry(
        "10.0.0.1",
        b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nReferer: http://r/\r\nUser-Agent: t/1\r\n\r\n",
        200,
        53,
        0.0125,
        (("127.0.0.1:9000", 200, 0.0005, 0.012),),
    )
    e.created = 1764624037.25
    assert cfmt.combined_batch([e], 0.0, _clock.get, _line) == (
        f'10.0.0.1 - - [{accesslog.time_local(e.created)}] "GET /a?b=1 HTTP/1.1" 200 53 '
        '"http://r/" "t/1" rt=0.013 uaddr=127.0.0.1:9000 us=200 uct=0.001 uht=0.012\n'
    )


_JSON_CUT = ',"cut":true'


def _json_before(e: AccessEntry) -> str:
    """format_json as it was before entries kept their last attempt in fields (read through
    ``upstream``, one tuple per attempt): the reference for the JSON lines."""
    attempts = ",".join(
        [
            f'{{"addr":{_json_str(addr)},"status":{str(status) if status else "null"},'
            f'"connect_time":{_json_secs(ct)},"header_time":{_json_secs(ht)}}}'
            for addr, status, ct, ht in e.upstream
        ]
    )
    request, user, referer, agent = request_fields(e.head)
    return (
        f'{{"time":"{time_iso8601(e.created)}","remote_addr":{_json_str(e.remote_addr)},'
        f'"remote_user":{_json_opt(user)},"request":{_json_str(request)},'
        f'"status":{e.status},"body_bytes_sent":{e.body_bytes_sent},'
        f'"http_referer":{_json_opt(referer)},"http_user_agent":{_json_opt(agent)},'
        f'"request_time":{secs(e.request_time)},"upstream":[{attempts}]'
        f"{_JSON_CUT if e.cut else ''}}}"
    )


def test_json_batches_equal_the_reference() -> None:
    for seed in range(400):
        a, b = twins(seed, 7, ascii_only=seed % 3 != 0)
        for e in b:
            if e.created == 0.0:
                e.created = e.at + 4.0
        want = "".join(_json_before(e) + "\n" for e in b if not _raises(e))
        if len(want.splitlines()) == len(b):
            assert accesslog.format_batch(a, True, 4.0) == want, seed


def _raises(e: AccessEntry) -> bool:
    try:
        _json_before(e)
    except (ValueError, OverflowError):
        return True
    return False


class _Plain:
    """An object with an AccessEntry's attributes in a __dict__ (no slot descriptors)."""

    def __init__(self, e: AccessEntry) -> None:
        for name in ("at", "body_bytes_sent", "created", "cut", "head", "parsed",
                     "remote_addr", "request_time", "status", "tries", "uaddr", "ustatus",
                     "uct", "uht"):  # fmt: skip
            setattr(self, name, getattr(e, name))


def test_attributes_read_through_any_type(cfmt: ModuleType) -> None:
    """The C code reads attributes through the type's own descriptors, found again when the
    type changes within a batch; a type without such descriptors is read the generic way."""
    for seed in range(100):
        a, b = twins(seed, 9)
        probe, _ = twins(seed, 9)
        mine = [i for i in range(9) if _line_is_c(cfmt, probe[i])]  # (no call to the reference)
        mixed: list[Any] = [_Plain(a[i]) if i % 3 else a[i] for i in mine]
        ref = [b[i] for i in mine]
        assert cfmt.combined_batch(mixed, 2.0, _clock.get, _line) == _format_batch_py(
            ref, False, 2.0
        ), seed
        assert [e.created for e in mixed] == [e.created for e in ref]


def _line_is_c(cfmt: ModuleType, e: Any) -> bool:
    """Whether the C code formats ``e`` itself (it never calls ``line`` for it)."""

    def refuse(_: object) -> str:
        raise LookupError

    try:
        cfmt.combined_batch([e], 0.0, _clock.get, refuse)
    except LookupError:
        return False
    return True


def test_format_batch_uses_the_c_formatter_where_it_is_built() -> None:
    built = importlib.util.find_spec("proxycore._alogfmt") is not None
    assert (accesslog._C_BATCH is not None) == built
    a, b = twins(7, 64)
    assert accesslog.format_batch(a, False, 3.0) == _format_batch_py(b, False, 3.0)
    a, b = twins(8, 64)
    assert accesslog.format_batch(a, True, 3.0) == "".join(
        format_json(e) + "\n" for e in _stamped(b, 3.0)
    )


def _stamped(entries: list[AccessEntry], offset: float) -> list[AccessEntry]:
    for e in entries:
        if e.created == 0.0:
            e.created = e.at + offset
    return entries


# ---------------------------------------------------------------- the C queue (AccessBuffer)

_SLOTS = ("at", "body_bytes_sent", "created", "cut", "head", "parsed", "remote_addr",
          "request_time", "status", "tries", "uaddr", "ustatus", "uct", "uht")  # fmt: skip


def _fields(e: AccessEntry) -> tuple[Any, ...] | None:
    """The arguments of Queue.add for ``e``, or None when the engine would queue the entry
    itself (retries, a cut exchange, a rejected head, a line stamped already)."""
    if e.tries or e.cut or not e.parsed or e.created != 0.0:
        return None
    if e.uaddr is None:
        return (e.remote_addr, e.head, e.status, e.body_bytes_sent, e.request_time, e.at,
                None, 0, -1.0, -1.0)  # fmt: skip
    return (e.remote_addr, e.head, e.status, e.body_bytes_sent, e.request_time, e.at,
            e.uaddr, e.ustatus, e.uct, e.uht)  # fmt: skip


def _queued(cfmt: ModuleType, entries: list[AccessEntry]) -> tuple[Any, int]:
    """A queue of ``entries`` in order, each as its fields where Queue.add takes them, else
    as the entry; and how many went as fields."""
    q = cfmt.Queue()
    added = 0
    for e in entries:
        f = _fields(e)
        n = q.add(*f) if f is not None else -1
        if n < 0:
            assert q.put(e) == len(q)
        else:
            assert n == len(q)
            added += 1
    return q, added


def test_queued_fields_format_as_their_entries(cfmt: ModuleType) -> None:
    """A queue of fields (add) and entries (put) writes the reference's text for the same
    entries, byte for byte, with the same stamps; its entries() are the same entries."""
    rng = random.Random(2626)
    added = total = 0
    for seed in range(600):
        a, b = twins(seed, rng.choice((1, 7, 64)))
        offset = rng.choice((0.0, 1764624000.5))
        q, n = _queued(cfmt, a)
        added += n
        total += len(a)
        got = q.combined(offset, _clock.get, _line, accesslog._entry)
        assert got == _format_batch_py(b, False, offset), seed
        made = _stamped(q.entries(accesslog._entry), offset)  # (fields: no stamp to keep)
        assert [tuple(getattr(e, k) for k in _SLOTS) for e in made] == [
            tuple(getattr(e, k) for k in _SLOTS) for e in b
        ], seed
        assert q.entries(accesslog._entry) == made  # made once: the same objects again
    assert added > total // 10  # (~2,000 lines from fields)


def test_a_queue_with_a_line_that_is_not_ascii_is_left_to_the_reference(
    cfmt: ModuleType,
) -> None:
    left = 0
    for seed in range(300):
        a, b = twins(seed, 8, ascii_only=False)
        q, _ = _queued(cfmt, a)
        got = q.combined(5.0, _clock.get, _line, accesslog._entry)
        want = _format_batch_py(b, False, 5.0)
        if got is None:
            left += 1
            assert not want.isascii()
            assert accesslog.format_batch(q, False, 5.0) == want
        else:
            assert got == want, seed
    assert left > 50


def test_add_takes_only_what_it_formats_itself(cfmt: ModuleType) -> None:
    q = cfmt.Queue()
    ok = ("10.0.0.1", b"GET / HTTP/1.1\r\n\r\n", 200, 5, 0.5, 3.0, "u:1", 200, 0.1, 0.2)
    assert q.add(*ok) == 1
    for k, bad in [(0, "h\xe9"), (0, b"1"), (1, "GET /"), (1, bytearray(b"GET /")),
                   (2, 10**20), (2, True), (3, 2.0), (4, math.inf), (4, 1e15), (4, 1),
                   (5, math.nan), (5, math.inf), (6, "h\xe9"), (7, 10**20), (8, math.nan),
                   (9, 1e15)]:  # fmt: skip
        args = list(ok)
        args[k] = bad
        assert q.add(*args) == -1, (k, bad)
    assert len(q) == 1
    # no upstream: the attempt's other fields are not read
    assert q.add("10.0.0.1", b"GET / HTTP/1.1\r\n\r\n", 200, 5, -3.0, 3.0, None, "x", None, 0) == 2
    (e1, e2) = q.entries(accesslog._entry)
    assert (e2.uaddr, e2.ustatus, e2.uct, e2.uht, e2.request_time) == (None, 0, -1.0, -1.0, 0.0)
    assert (e1.uaddr, e1.ustatus, e1.uct, e1.uht, e1.at) == ("u:1", 200, 0.1, 0.2, 3.0)
    t = q.take()
    assert (len(t), len(q)) == (2, 0)
    with pytest.raises(TypeError):
        q.add(1, 2)
    # (a queue being read cannot change: what the reader holds stays valid)
    q.add(*ok)

    def meddle(*args: Any) -> Any:
        q.add(*ok)

    for read in (lambda: q.entries(meddle), lambda: q.combined(0.0, meddle, _line, _entry)):
        with pytest.raises(RuntimeError):
            read()
        assert len(q) == 1


def test_a_queue_of_large_heads_asks_to_be_written_early(cfmt: ModuleType) -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"y" * 20 + b"\r\n\r\n"  # 44 bytes
    fields = ("10.0.0.1", head, 200, 5, 0.5, 1.0, None, 0, -1.0, -1.0)
    q = cfmt.Queue(max_bytes=100)
    assert [q.add(*fields) for _ in range(3)] == [1, 2, sys.maxsize]  # 132 >= 100 bytes
    assert q.add(*fields) == sys.maxsize  # (until it is taken)
    assert len(q.take()) == 4 and q.add(*fields) == 1  # the cap stays with the live queue
    for uncapped in (cfmt.Queue(), cfmt.Queue(0), cfmt.Queue(-5)):
        assert [uncapped.add(*fields) for _ in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(TypeError):
        cfmt.Queue("many")


def test_an_access_buffer_without_the_c_queue_caps_its_heads_too() -> None:
    calls: list[int] = []
    buf = accesslog.AccessBuffer(calls.append, limit=100, fields=False, max_bytes=50)
    assert buf.queue is None

    def entry() -> AccessEntry:
        return AccessEntry("10.0.0.1", b"GET / HTTP/1.1\r\n\r\n", 200, 0, 0.0)  # 18 bytes

    for _ in range(3):
        buf.put(entry())
    assert calls == [1, sys.maxsize]  # the first of a batch, then 54 >= 50 bytes
    assert len(buf.take()) == 3
    buf.put(entry())
    assert calls[-1] == 1  # a new batch counts from nothing


def test_an_access_buffer_keeps_fields_and_entries_in_order(
    cfmt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "_C_QUEUE", cfmt.Queue)
    calls: list[int] = []
    buf = accesslog.AccessBuffer(calls.append, limit=3)
    assert buf.add is not None
    assert accesslog.AccessBuffer(calls.append, 3, fields=False).add is None
    a, b = twins(5, 5)
    for e in a:
        f = _fields(e)
        n = buf.add(*f) if f is not None else -1
        if n < 0:
            buf.put(e)
        elif n == 1 or n >= buf.limit:
            buf.notify(n)
    assert calls == [1, 3, 4, 5] and len(buf) == 5
    batch = buf.take_batch()
    assert len(buf) == 0
    assert accesslog.format_batch(batch, False, 2.0) == _format_batch_py(b, False, 2.0)
    assert [e.request_time for e in accesslog.batch_entries(batch)] == [e.request_time for e in b]
    buf.put(a[0])
    assert buf.take() == [a[0]] and buf.take() == []


def _scenarios(access: Any) -> None:
    """Requests of every kind through one engine: proxied, pooled, rejected, refused,
    timed out, retried, answered by a filter, raising, left by the client, Basic auth."""
    peers = [proxycore.Peer("127.0.0.1", 1), proxycore.Peer("127.0.0.1", 2)]

    class Retry(Filtering):
        def new_ctx(self) -> list[int]:
            return [0]

        def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
            p = peers[ctx[0] % 2]
            ctx[0] += 1
            return p

        def fail_to_connect(self, session: Any, peer: Any, ctx: Any, e: Any) -> Any:
            e.retry = session.req_header.path == "/retry"
            return e

    def fresh() -> Harness:
        return Harness(Retry(), proxycore.ServerConf(connect_timeout=1.0), access_log=access)

    h = fresh()
    down, up, _ = setup_request(h, GET)
    h.now += 0.0125
    h.data(up, OK)
    h.now += 1.0
    h.data(down, GET)
    h.now += 0.002
    h.data(up, NOT_FOUND)
    h = fresh()
    down, _ = h.accept()
    h.data(down, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    down, _ = h.accept()
    h.connect_failed(connect_id(h.data(down, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")))
    down, _ = h.accept()
    connect_id(h.data(down, b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.advance(1.5, down)
    h = fresh()
    down, _ = h.accept()
    c1 = connect_id(h.data(down, b"GET /retry HTTP/1.1\r\nHost: a\r\n\r\n"))
    h.now += 0.001
    c2 = connect_id(h.connect_failed(c1))
    h.connected(c2)
    h.data(c2, OK)
    down, _ = h.accept()
    h.data(down, b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")
    h.data(down, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    h = fresh()
    down, _, _ = setup_request(h, GET)
    h.closed(down, "reset")
    h = fresh()
    _, up, _ = setup_request(
        h, b"GET / HTTP/1.1\r\nHost: a\r\nauthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n"
    )
    h.data(up, OK)


def test_the_engine_hands_the_queue_the_fields_of_its_entries(
    cfmt: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests logged through a logger (an entry each) and through an
    AccessBuffer with a C queue (fields where the engine can): the same entries, the same
    lines; the usual requests went as fields."""
    logger = logging.getLogger("test.access.queue")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    cap = Capture()
    logger.addHandler(cap)
    try:
        _scenarios(logger)
    finally:
        logger.removeHandler(cap)
    monkeypatch.setattr(accesslog, "_C_QUEUE", cfmt.Queue)
    buf = accesslog.AccessBuffer(lambda n: None, limit=1000)
    _scenarios(buf)
    want = cap.entries
    batch = buf.take_batch()
    assert len(batch) == len(want) == 10
    fields = batch.entries(lambda *a: a)  # (the slots that went as fields stay tuples)
    assert [isinstance(f, tuple) for f in fields] == [
        e.tries == () and e.parsed and not e.cut for e in want
    ]
    assert sum(isinstance(f, tuple) for f in fields) == 8
    buf2 = accesslog.AccessBuffer(lambda n: None, limit=1000)
    _scenarios(buf2)
    batch = buf2.take_batch()
    text = accesslog.format_batch(batch, False, 7.0)
    for e in want:
        e.created = 0.0
    assert text == _format_batch_py(want, False, 7.0)
    got = _stamped(accesslog.batch_entries(batch), 7.0)
    assert [tuple(getattr(e, k) for k in _SLOTS) for e in got] == [
        tuple(getattr(e, k) for k in _SLOTS) for e in want
    ]


def test_the_formatter_does_no_io() -> None:
    src = SOURCE.read_text()
    banned = (
        r"\b(f?open|read|write|send|recv|socket|printf|fprintf|time|clock_gettime|rand|getenv)\s*\("
    )
    assert re.search(banned, re.sub(r"/\*.*?\*/", "", src, flags=re.S)) is None


_ASAN_FUZZ = r"""
import random, sys
sys.path.insert(0, sys.argv[1])
import _alogfmt
from proxycore.accesslog import _clock, _entry, _format_batch_py, _line
from tests.test_accesslog_c import _queued, twins
rng = random.Random(int(sys.argv[2]))
for seed in range(int(sys.argv[3])):
    ascii_only = seed % 4 != 0
    n = rng.choice((1, 7, 64))
    a, b = twins(seed, n, ascii_only)
    got = _alogfmt.combined_batch(a, 2.5, _clock.get, _line)
    want = _format_batch_py(b, False, 2.5)
    assert got == want or (got is None and not want.isascii()), seed
    a, _ = twins(seed, n, ascii_only)
    q, _ = _queued(_alogfmt, a)
    got = q.combined(2.5, _clock.get, _line, _entry)
    assert got == want or (got is None and not want.isascii()), seed
    assert len(q.entries(_entry)) == n and len(q.take()) == n and len(q) == 0
print("ok")
"""


@pytest.mark.slow
def test_the_formatter_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """Memory safety of the C code that reads untrusted heads: built with ASan + UBSan and
    fed ~100,000 random entries as lists and as queues of fields and entries (compared with
    the reference on each batch). ~1 min; runs
    with ``scripts/test -m slow``."""
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("needs gcc")
    libs = [
        subprocess.run([cc, f"-print-file-name={n}"], capture_output=True, text=True).stdout.strip()
        for n in ("libasan.so", "libubsan.so")
    ]
    if not all(Path(lib).is_file() for lib in libs):
        pytest.skip("gcc's sanitizer runtimes are not installed")
    out = build(tmp_path, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer")  # fmt: skip
    assert out is not None
    env = dict(
        os.environ, ASAN_OPTIONS="detect_leaks=0", LD_PRELOAD=" ".join(libs), PYTHONMALLOC="malloc"
    )
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-c", _ASAN_FUZZ, str(tmp_path), "1", "3000"],
        capture_output=True, text=True, timeout=900, env=env, cwd=root,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
