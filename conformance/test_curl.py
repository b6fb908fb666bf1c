"""Real-client interop: curl."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conformance.origins import pattern, pattern_sha256

CURL = shutil.which("curl") or "/usr/bin/curl"

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")


def curl(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CURL, "-sS", "--noproxy", "*", "--max-time", "10", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


def test_curl_get(echo, echo_proxy):
    r = curl(f"http://127.0.0.1:{echo_proxy.port}/x")
    assert r.returncode == 0, r.stderr.decode()
    body = json.loads(r.stdout)
    assert body["method"] == "GET" and body["target"] == "/x"


def test_curl_http10(echo, echo_proxy):
    r = curl("--http1.0", f"http://127.0.0.1:{echo_proxy.port}/ten")
    assert r.returncode == 0, r.stderr.decode()
    body = json.loads(r.stdout)
    assert body["target"] == "/ten" and body["version"] == "HTTP/1.1"


def test_curl_expect_100_continue_upload(echo, echo_proxy, tmp_path):
    size = 3 << 20
    f = tmp_path / "big.bin"
    f.write_bytes(pattern(size))
    r = curl(
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        f"@{f}",
        f"http://127.0.0.1:{echo_proxy.port}/upload",
    )
    assert r.returncode == 0, r.stderr.decode()
    body = json.loads(r.stdout)
    assert body["body_len"] == size and body["body_sha256"] == pattern_sha256(size)
    assert b"HTTP/1.1 100 Continue" in r.stderr, "curl never saw 100 Continue"


def test_curl_keepalive_multiple_urls(echo, echo_proxy):
    base = f"http://127.0.0.1:{echo_proxy.port}"
    r = curl("-v", f"{base}/a", f"{base}/b", f"{base}/c")
    assert r.returncode == 0, r.stderr.decode()
    assert (
        r.stderr.count(b"Re-using existing connection") + r.stderr.count(b"Reusing existing") >= 2
    ), r.stderr.decode()[-2000:]


def test_curl_chunked_upload(echo, echo_proxy):
    r = curl(
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "chunked-payload",
        f"http://127.0.0.1:{echo_proxy.port}/cu",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["body"] == "chunked-payload"
    assert echo.last().body == b"chunked-payload"
