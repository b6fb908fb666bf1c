"""HTTP/2 from clients (h2c by prior knowledge, RFC 9113 §3.3) in front of an HTTP/1.1 origin,
on every backend: curl, httpx with http2=True, and raw h2 on a socket."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest

from conformance.origins import HOST, pattern_sha256
from conformance.test_tls import Pki

CURL = shutil.which("curl") or "/usr/bin/curl"
needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CURL, "-sS", "--noproxy", "*", "--max-time", "20", *args],
        capture_output=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


@needs_curl
def test_curl_h2c_prior_knowledge_and_http11_on_one_port(echo, echo_proxy):
    url = f"http://{HOST}:{echo_proxy.port}/x?y=1"
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", url)
    assert r.returncode == 0, r.stderr.decode()
    body, version = r.stdout.rsplit(b"\n", 1)
    assert version == b"2"
    seen = json.loads(body)
    assert seen["method"] == "GET" and seen["target"] == "/x?y=1"
    assert seen["version"] == "HTTP/1.1"  # HTTP/1.1 to the origin
    host = [v for k, v in seen["headers"] if k.lower() == "host"]
    assert host == [f"{HOST}:{echo_proxy.port}"]  # from :authority
    r = curl("--http1.1", "-w", "\n%{http_version}", url)
    assert r.returncode == 0 and r.stdout.endswith(b"\n1.1"), r.stderr.decode()


@needs_curl
def test_curl_h2c_upload_and_chunked_download_with_trailers(echo, echo_proxy, tmp_path):
    f = tmp_path / "up.bin"
    f.write_bytes(b"u" * 300_000)
    base = f"http://{HOST}:{echo_proxy.port}"
    r = curl("--http2-prior-knowledge", "--data-binary", f"@{f}", f"{base}/up")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["body_len"] == 300_000
    n = 1_000_000
    r = curl("--http2-prior-knowledge", "-v", f"{base}/chunked/{n}")
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout) == n
    assert f"x-checksum: {pattern_sha256(n)}".encode() in r.stderr.lower()


def test_httpx_http2_100_concurrent_streams_on_one_connection(echo, echo_proxy):
    """httpx speaks h2c by prior knowledge with http1=False, http2=True; with http2=True
    alone it speaks HTTP/1.1 to a cleartext URL: both on the same port."""

    async def run(http1: bool) -> list[httpx.Response]:
        async with httpx.AsyncClient(http1=http1, http2=True, timeout=20) as c:
            base = f"http://{HOST}:{echo_proxy.port}"
            return await asyncio.gather(*(c.get(f"{base}/s{i}") for i in range(100)))

    rs = asyncio.run(run(False))
    assert [r.http_version for r in rs] == ["HTTP/2"] * 100
    assert [json.loads(r.content)["target"] for r in rs] == [f"/s{i}" for i in range(100)]
    rs = asyncio.run(run(True))
    assert {r.http_version for r in rs} == {"HTTP/1.1"}
    assert {r.status_code for r in rs} == {200}


def _h2_socket(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = socket.create_connection((HOST, port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def _pump(s: socket.socket, c: h2.connection.H2Connection, until) -> list:
    events: list = []
    while not until(events):
        data = s.recv(65536)
        if not data:
            break
        events += c.receive_data(data)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    return events


def test_refused_stream_past_the_limit_and_rst_in_mid_body(echo, proxy):
    p = proxy(to=[echo.port], extra=["--h2-max-concurrent-streams", "2"])
    s, c = _h2_socket(p.port)
    with s:
        _pump(s, c, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        auth = f"{HOST}:{p.port}"
        hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", auth)]
        c.send_headers(1, [*hdrs, (":path", "/delay/1")], end_stream=True)
        c.send_headers(3, [*hdrs, (":path", "/bytes/5000000")], end_stream=True)
        s.sendall(c.data_to_send())
        # a third stream past the limit: the client library knows the limit, so go around it
        c.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS][0] = 10
        c.send_headers(5, [*hdrs, (":path", "/x")], end_stream=True)
        s.sendall(c.data_to_send())
        ev = _pump(
            s,
            c,
            lambda ev: (
                any(isinstance(e, h2.events.StreamReset) and e.stream_id == 5 for e in ev)
                and any(isinstance(e, h2.events.DataReceived) and e.stream_id == 3 for e in ev)
            ),
        )
        reset = [e for e in ev if isinstance(e, h2.events.StreamReset) and e.stream_id == 5]
        assert reset[0].error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        # RST_STREAM in the middle of stream 3's body; stream 1 goes on
        c.reset_stream(3)
        s.sendall(c.data_to_send())
        ev = _pump(
            s,
            c,
            lambda ev: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in ev),
        )
        assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 1 for e in ev)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in ev)
    assert p.alive()


@needs_curl
def test_no_h2c_answers_the_preface_with_505(echo, proxy):
    p = proxy(to=[echo.port], extra=["--no-h2c"])
    r = curl("--http2-prior-knowledge", f"http://{HOST}:{p.port}/x")
    assert r.returncode != 0
    with socket.create_connection((HOST, p.port), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 505 ")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@needs_curl
def test_curl_http2_over_tls_by_alpn_and_no_h2(echo, proxy, pki):
    """TLS listeners offer h2 then http/1.1 by ALPN (RFC 9113 §3.2); --no-h2 offers only
    http/1.1."""
    for extra, want in (([], b"2"), (["--no-h2"], b"1.1")):
        p = proxy(to=[echo.port], extra=[*pki.pair("default"), *extra])
        r = curl(
            "--http2", "--cacert", pki["ca.pem"], "-w", "\n%{http_version}",
            "--resolve", f"localhost:{p.port}:127.0.0.1", f"https://localhost:{p.port}/t",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        body, version = r.stdout.rsplit(b"\n", 1)
        assert version == want
        seen = json.loads(body)
        assert seen["target"] == "/t"
        assert ["X-Forwarded-Proto", "https"] in seen["headers"]


H2LOAD = shutil.which("h2load")


@pytest.mark.skipif(H2LOAD is None, reason="h2load not installed (nghttp2-client)")
def test_h2load_no_failed_requests(echo, echo_proxy):
    r = subprocess.run(
        [H2LOAD, "-n", "2000", "-c", "4", "-m", "10", f"http://{HOST}:{echo_proxy.port}/x"],
        capture_output=True, timeout=60, check=False, text=True,
    )  # fmt: skip
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in r.stdout, r.stdout + r.stderr


def test_50mib_each_way_on_one_stream_while_others_flow(echo, echo_proxy):
    size = 50 << 20
    base = f"http://{HOST}:{echo_proxy.port}"
    small_done: list[float] = []
    big_done: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(http1=False, http2=True, timeout=60) as c:

            async def download() -> None:
                n = 0
                h = hashlib.sha256()
                async with c.stream("GET", f"{base}/bytes/{size}") as r:
                    async for piece in r.aiter_bytes():
                        n += len(piece)
                        h.update(piece)
                        await asyncio.sleep(0.002)  # (a reader that takes seconds over it)
                assert n == size and h.hexdigest() == pattern_sha256(size)
                big_done.append(loop.time())

            async def upload() -> None:
                async def body():
                    for _ in range(size // 65536):
                        yield b"u" * 65536
                        await asyncio.sleep(0.003)  # (a sender that takes seconds over it)

                r = await c.post(f"{base}/up", content=body())
                assert json.loads(r.content)["body_len"] == size
                big_done.append(loop.time())

            async def small() -> None:
                await asyncio.sleep(0.2)
                for i in range(20):
                    r = await c.get(f"{base}/small{i}")
                    assert r.status_code == 200 and r.http_version == "HTTP/2"
                small_done.append(loop.time())

            await asyncio.gather(download(), upload(), small())

    asyncio.run(main())
    assert len(big_done) == 2
    assert small_done[0] < min(big_done)  # the small streams were not held behind the big ones


def test_slow_reader_on_one_stream_does_not_stall_the_others(echo, echo_proxy):
    s, c = _h2_socket(echo_proxy.port)
    auth = f"{HOST}:{echo_proxy.port}"
    hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", auth)]
    with s:
        c.send_headers(1, [*hdrs, (":path", "/bytes/20000000")], end_stream=True)
        s.sendall(c.data_to_send())
        got = 0
        done: set[int] = set()
        sid = 3
        while len(done) < 10:
            data = s.recv(65536)
            assert data, "the proxy closed the connection"
            for e in c.receive_data(data):
                if isinstance(e, h2.events.DataReceived):
                    if e.stream_id == 1:
                        got += len(e.data)
                        # stream 1's window stays shut; the connection's re-opens
                        c.increment_flow_control_window(e.flow_controlled_length)
                    else:
                        c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, h2.events.StreamEnded):
                    done.add(e.stream_id)
            if got >= 65535 and sid < 23:  # stream 1 is stalled: the others must go on
                c.send_headers(sid, [*hdrs, (":path", f"/o{sid}")], end_stream=True)
                sid += 2
            s.sendall(c.data_to_send())
        assert 1 not in done and got == 65535


@pytest.mark.parametrize("fmt", ["combined", "json"])
def test_access_log_lines_of_requests_refused_before_their_exchange(echo, proxy, tmp_path, fmt):
    """A 431, 413 and 501 the HTTP/2 connection answers itself get an access-log line, as an
    HTTP/1.1 head the connection rejects does; a proxied request its usual line."""
    log = tmp_path / "access.log"
    extra = ["--access-log", str(log), "--access-log-format", fmt]
    p = proxy(to=[echo.port], extra=[*extra, "--max-request-body-size", "10"])
    s, c = _h2_socket(p.port)
    with s:
        auth = f"{HOST}:{p.port}"
        ua = ("user-agent", "conf-h2")
        hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", auth)]
        c.send_headers(1, [*hdrs, (":path", "/ok"), ua], end_stream=True)
        c.send_headers(3, [*hdrs, (":path", "/big"), ua, *((f"x-f{i}", "v") for i in range(101))])
        post = [(":method", "POST"), (":scheme", "http"), (":authority", auth)]
        c.send_headers(5, [*post, (":path", "/up"), ua, ("content-length", "11")])
        c.send_headers(7, [(":method", "CONNECT"), (":authority", "example.com:443"), ua])
        s.sendall(c.data_to_send())
        ev = _pump(
            s,
            c,
            lambda ev: (
                {e.stream_id for e in ev if isinstance(e, h2.events.StreamEnded)} >= {1, 3, 5, 7}
            ),
        )
        status = {
            e.stream_id: dict(e.headers)[b":status"]
            for e in ev
            if isinstance(e, h2.events.ResponseReceived)
        }
        assert status == {1: b"200", 3: b"431", 5: b"413", 7: b"501"}
    want = {
        "GET /ok HTTP/2.0": 200,
        "GET /big HTTP/2.0": 431,
        "POST /up HTTP/2.0": 413,
        "CONNECT example.com:443 HTTP/2.0": 501,
    }
    deadline = time.monotonic() + 5
    while True:
        lines = (
            [line for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
        )
        if len(lines) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(lines) == 4, lines
    got = {}
    for line in lines:
        if fmt == "json":
            d = json.loads(line)
            got[d["request"]] = d["status"]
            assert d["http_user_agent"] == "conf-h2"
            assert d["upstream"] == [] or d["status"] == 200
        else:
            request, rest = line.split('"', 2)[1:]
            got[request] = int(rest.split()[0])
            assert '"conf-h2" rt=' in line
            assert rest.endswith(" uaddr=- us=- uct=- uht=-") or '" 200 ' in line
    assert got == want
    assert p.alive()
