"""The C head scanner (proxycore/h1/_hscan.c) decides exactly like its Python references in
parse.py (_request_line_py, _scan_fields_py), which the rest of the suite pins to the RFC
grammar and to h11. The editable checkout runs pure Python, so this compiles the C file itself
(one gcc call, ~1 s) and feeds both the same generated inputs: valid blocks, blocks with one
byte changed anywhere, and request lines built from the pieces that matter."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxycore.h1.parse import (
    _head_end_py,
    _request_line_py,
    _scan_fields_py,
    _status_line_py,
    _valid_host_py,
)
from tests.helpers import HSCAN_SOURCE as SOURCE
from tests.helpers import compile_hscan


@pytest.fixture(scope="module")
def hscan(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    out = compile_hscan(tmp_path_factory.mktemp("hscan"))
    if out is None:
        pytest.skip("no C compiler")
    spec = importlib.util.spec_from_file_location("_hscan", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Names that matter (every framing name in odd cases, X-Forwarded-*, near misses) and others.
_NAMES = st.sampled_from(
    [
        "Host", "HOST", "content-length", "Content-Length", "CONTENT-LENGTH", "Content-Lengt",
        "Content-Length2", "Transfer-Encoding", "tRANSFER-eNCODING", "Connection", "Expect",
        "Upgrade", "Keep-Alive", "TE", "te", "T", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "Proxy-Authorizations", "X-Forwarded-For", "x-forwarded-proto",
        "X-Forwarded-", "X-Forwarded", "X-Forwarded-Host", "Accept", "User-Agent", "Cookie",
        "x", "!#$%&'*+-.^_`|~", "Ho st", "Host\t", "", "Content-Length ", "H\xe9st",
        "Transfer_Encoding", "content_length", "X_A", "_", "X-Forwarded_For", "Host_",
    ]
)  # fmt: skip
_VALUES = st.text(alphabet=st.sampled_from(" \t\x00\x01\x7f\x80\xff\r\n:,abcXYZ019-_"), max_size=12)


@st.composite
def _blocks(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
    block = "".join(f"{n}:{v}\r\n" for n, v in lines)
    if block and draw(st.booleans()):  # one character replaced or inserted anywhere
        i = draw(st.integers(0, len(block) - 1))
        c = draw(st.sampled_from(" \t\r\n:\x00\x7f\x80\xffAa-"))
        block = block[:i] + c + block[i + (1 if draw(st.booleans()) else 0) :]
    return block


@given(_blocks())
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_scan_fields_agrees_with_the_reference(hscan: ModuleType, block: str) -> None:
    assert hscan.scan_fields(block) == _scan_fields_py(block)


@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=60))
@settings(max_examples=2000, deadline=None)
def test_scan_fields_agrees_on_arbitrary_latin1(hscan: ModuleType, block: str) -> None:
    assert hscan.scan_fields(block) == _scan_fields_py(block)


def test_scan_fields_known_cases(hscan: ModuleType) -> None:
    cases = [
        "",
        "Host: a\r\n",
        "Host:a\r\n",
        "Host: a \t\r\n",
        "Host:\r\n",
        "Host: a\r\n b\r\n",  # obs-fold
        "Host : a\r\n",
        "Host: a\n",
        "Host: a\r",
        "Host: a",
        ":a\r\n",
        "Host: a\rb\r\n",
        "Host: caf\xe9\r\n",
        "X-Forwarded-For: 1, 2\r\nX-FORWARDED-PROTO: http\r\nTE: trailers\r\n",
        "Content-Length: 5\r\ncontent-length: 6\r\n",
        "X_A: 1\r\n",
        "X-A: a_b\r\n",  # an underscore in a value only
        "Host: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n",
        "X_A: 1\r\nX_B: 2\r\n",
        "X_A : 1\r\n",  # invalid: no mark, None
    ]
    for block in cases:
        assert hscan.scan_fields(block) == _scan_fields_py(block), block
    out = hscan.scan_fields("X-Forwarded-For: 1\r\nConnection: close\r\n")
    assert out == [("x-forwarded-for", "1"), ("connection", "close")]
    # A name with an underscore adds one ("_", "") at the end, whatever the number of them.
    out = hscan.scan_fields("Host: a\r\nTransfer_Encoding: chunked\r\nX_B: 1\r\n")
    assert out == [("host", "a"), ("_", "")]
    assert hscan.scan_fields("User-Agent: x86_64\r\n") == []


_METHOD = st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS", "PATCH", "PURGE", "M-SEARCH",
                           "G(T", "", "get", "GET\t", "\xe9"])  # fmt: skip
_SEP = st.sampled_from([" ", "  ", "\t", ""])
_TARGET = st.sampled_from(["/", "/a?b=c", "*", "http://a/b", "a b", "/\x7f", "/\xe9", "", "/%20",
                           "HTTP/1.1"])  # fmt: skip
_VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "HTTP/1.", "HTTP/1.10",
                            "http/1.1", "HTTP/11", "HTTP/1.1 "])  # fmt: skip


@given(_METHOD, _SEP, _TARGET, _SEP, _VERSION, st.sampled_from(["\r\n", "\r\nHost: a\r\n\r\n"]))
@settings(max_examples=3000, deadline=None)
def test_request_line_agrees_with_the_reference(
    hscan: ModuleType, method: str, sep1: str, target: str, sep2: str, version: str, rest: str
) -> None:
    line = method + sep1 + target + sep2 + version
    text = line + rest
    assert hscan.request_line(text, len(line)) == _request_line_py(text, len(line))


@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40), st.integers(-2, 45))
@settings(max_examples=2000, deadline=None)
def test_request_line_agrees_on_arbitrary_latin1(hscan: ModuleType, text: str, end: int) -> None:
    ref = _request_line_py(text, end) if 0 <= end <= len(text) else None
    assert hscan.request_line(text, end) == ref


_STATUS = st.tuples(
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "HTTP/11", "http/1.1", ""]),
    st.sampled_from([" ", "  ", "\t", ""]),
    st.sampled_from(["200", "404", "099", "2000", "20", "2x0", ""]),
    st.sampled_from(["", " ", " OK", " Not Found", " OK ", "\tOK", " O\x00K", " caf\xe9", " \x7f"]),
).map("".join)


@given(_STATUS, st.sampled_from(["\r\n", "\r\nServer: x\r\n\r\n"]))
@settings(max_examples=3000, deadline=None)
def test_status_line_agrees_with_the_reference(hscan: ModuleType, line: str, rest: str) -> None:
    text = line + rest
    assert hscan.status_line(text, len(line)) == _status_line_py(text, len(line))


@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=30), st.integers(-2, 35))
@settings(max_examples=2000, deadline=None)
def test_status_line_agrees_on_arbitrary_latin1(hscan: ModuleType, text: str, end: int) -> None:
    text = "HTTP/1.1 200" + text
    ref = _status_line_py(text, end) if 0 <= end <= len(text) else None
    assert hscan.status_line(text, end) == ref


@given(
    st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"\r\n")),
    st.integers(0, 45),
    st.sampled_from([bytes, bytearray]),
)
@settings(max_examples=2000, deadline=None)
def test_head_end_agrees_with_the_reference(
    hscan: ModuleType, data: bytes, start: int, kind: type
) -> None:
    buf = kind(data)
    assert hscan.head_end(buf, start) == _head_end_py(buf, start)
    assert hscan.head_end(buf + b"\r\n\r\n", start) == _head_end_py(buf + b"\r\n\r\n", start)


def test_head_end_refuses_a_negative_start(hscan: ModuleType) -> None:
    with pytest.raises(ValueError):
        hscan.head_end(b"a\r\n\r\n", -1)


_HOSTS = st.text(alphabet=st.sampled_from("[]:.09afAFgz-_~!$&'()*+,;=%@ /\x00\xe9"), max_size=12)


@given(_HOSTS)
@settings(max_examples=3000, deadline=None)
def test_valid_host_agrees_with_the_reference(hscan: ModuleType, text: str) -> None:
    assert hscan.valid_host(text) is _valid_host_py(text)


def test_valid_host_known_cases(hscan: ModuleType) -> None:
    good = ["a", "", "a.example:8080", "127.0.0.1:", "[::1]", "[::1]:80", "%41:1", "a:"]
    bad = ["[", "[]", "[::1", "[::1]x", "a b", "a:b", "a:1:2", "[g]", "a@b", "\xe9"]
    for text in good:
        assert hscan.valid_host(text) is True is _valid_host_py(text), text
    for text in bad:
        assert hscan.valid_host(text) is False is _valid_host_py(text), text


def test_only_latin1_text_is_accepted(hscan: ModuleType) -> None:
    with pytest.raises(TypeError):
        hscan.scan_fields("Host: \u20ac\r\n")
    with pytest.raises(TypeError):
        hscan.scan_fields(b"Host: a\r\n")


def test_the_scanner_does_no_io() -> None:
    """Core purity for the one C file: it includes only Python.h and string.h and calls no
    libc I/O, clock or randomness function."""
    src = SOURCE.read_text()
    assert set(re.findall(r"#include\s*[<\"]([^>\"]+)", src)) == {"Python.h", "string.h"}
    banned = (
        r"\b(f?open|read|write|send|recv|socket|printf|fprintf|time|clock_gettime|rand|getenv)\s*\("
    )
    assert re.search(banned, re.sub(r"/\*.*?\*/", "", src, flags=re.S)) is None


def test_the_parser_uses_the_scanner_where_it_is_built() -> None:
    from proxycore.h1 import parse

    built = importlib.util.find_spec("proxycore.h1._hscan") is not None
    assert (parse._HSCAN is not None) == built
    if not built:
        assert parse._SCAN_FIELDS is _scan_fields_py and parse._REQUEST_LINE is _request_line_py
        assert parse._HEAD_END is _head_end_py and parse._VALID_HOST is _valid_host_py
        assert parse._STATUS_LINE is _status_line_py
    assert sys.modules["proxycore.h1.parse"] is parse


_ASAN_FUZZ = r"""
import random, sys
sys.path.insert(0, sys.argv[1])
import _hscan
from proxycore.h1.parse import (
    _head_end_py, _request_line_py, _scan_fields_py, _status_line_py, _valid_host_py,
)
rng = random.Random(int(sys.argv[2]))
alpha = list(b" \t\r\n:,;=-_/.[]%0123456789ABCabcHTTPGETXxForwardedHostContent-Length\x00\x7f\x80\xff")
for i in range(int(sys.argv[3])):
    b = bytes(rng.choice(alpha) for _ in range(rng.randint(0, rng.choice((8, 40, 200)))))
    t = b.decode("latin-1")
    e = rng.randint(-3, len(t) + 3)
    inside = 0 <= e <= len(t)
    assert _hscan.scan_fields(t) == _scan_fields_py(t), t
    assert _hscan.request_line(t, e) == (_request_line_py(t, e) if inside else None), (t, e)
    assert _hscan.status_line(t, e) == (_status_line_py(t, e) if inside else None), (t, e)
    s = rng.randint(0, len(b) + 2)
    assert _hscan.head_end(b, s) == _head_end_py(b, s) == _hscan.head_end(bytearray(b), s)
    assert _hscan.valid_host(t) is _valid_host_py(t), t
print("ok")
"""


@pytest.mark.slow
def test_the_scanner_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """Memory safety of the C code that reads untrusted bytes: built with ASan + UBSan, fed
    300,000 random heads-like inputs (and compared with the references on each). ~1 min; runs
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
    out = tmp_path / ("_hscan" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
         f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    # PYTHONMALLOC=malloc: objects come from malloc, so ASan sees their bounds (not pymalloc)
    env = dict(
        os.environ, ASAN_OPTIONS="detect_leaks=0", LD_PRELOAD=" ".join(libs), PYTHONMALLOC="malloc"
    )
    run = subprocess.run(
        [sys.executable, "-c", _ASAN_FUZZ, str(tmp_path), "1", "300000"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
