"""TLS on every backend: termination (SNI, wildcard, default, ALPN, versions, resumption,
mTLS), bad input (plain HTTP, unknown name, stalled handshake, missing client certificate),
hot reload on SIGHUP, TLS to origins (verification, SNI, mTLS, insecure) and start-up errors.

Certificates come from trustme (one CA per module, plus an untrusted one); clients are curl
(--resolve), httpx, ``openssl s_client`` and Python's ssl module; origins speak real TLS.
"""

from __future__ import annotations

import datetime
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trustme

from conformance.origins import HOST, EchoOrigin
from conformance.proxy import PROCESS_CWD, process_env, python_cmd

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CURL = shutil.which("curl") or "/usr/bin/curl"


# ---------------------------------------------------------------- certificates


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca = trustme.CA()
        self.ca.cert_pem.write_to_path(str(d / "ca.pem"))
        self.issue("default", "localhost", "example.test", "127.0.0.1")
        self.issue("other", "other.test")
        self.issue("wild", "*.wild.test")
        self.issue("origin", "origin.test")
        self.issue("client", "client-1")
        old = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        self.issue("expired", "origin.test", not_after=old)
        rogue = trustme.CA()  # a CA nobody trusts
        c = rogue.issue_cert("origin.test", common_name="origin.test")
        c.cert_chain_pems[0].write_to_path(str(d / "rogue.pem"))
        c.private_key_pem.write_to_path(str(d / "rogue.key"))
        self.self_signed("selfsigned", "origin.test")

    def self_signed(self, name: str, host: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        (self.dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.dir / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def issue(self, name: str, *hosts: str, **kw) -> None:
        c = self.ca.issue_cert(*hosts, common_name=hosts[0], **kw)
        c.cert_chain_pems[0].write_to_path(str(self.dir / f"{name}.pem"))
        c.private_key_pem.write_to_path(str(self.dir / f"{name}.key"))

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)

    def pair(self, name: str) -> list[str]:
        return ["--tls-cert", self[f"{name}.pem"], "--tls-key", self[f"{name}.key"]]

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self["ca.pem"])
        if cert:
            ctx.load_cert_chain(self[f"{cert}.pem"], self[f"{cert}.key"])
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def sni_flags(pki: Pki) -> list[str]:
    return [
        "--tls-sni-cert",
        f"other.test={pki['other.pem']},{pki['other.key']}",
        "--tls-sni-cert",
        f"*.wild.test={pki['wild.pem']},{pki['wild.key']}",
    ]


class TlsEchoOrigin(EchoOrigin):
    """EchoOrigin behind a TLS handshake (records handshake errors and client certificates)."""

    name = "tls-echo"

    def __init__(self, context: ssl.SSLContext, **kw) -> None:
        self.context = context
        self.handshake_errors: list[str] = []
        self.client_certs: list[dict] = []
        super().__init__(**kw)

    def _run_conn(self, sock, conn_id):
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.lock:
                self.handshake_errors.append(str(e))
            sock.close()
            return
        with self.lock:
            self._conns.discard(sock)
            self._conns.add(tls)
            self.client_certs.append(tls.getpeercert() or {})
        super()._run_conn(tls, conn_id)


def origin_context(pki: Pki, cert: str = "origin", client_ca: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}.key"])
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca.pem"])
    return ctx


# ---------------------------------------------------------------- clients


def tls_get(
    port: int,
    ctx: ssl.SSLContext,
    sni: str = "localhost",
    path: str = "/",
    session: ssl.SSLSession | None = None,
) -> tuple[int, dict, ssl.SSLSocket]:
    """One GET over a fresh TLS connection; returns (status, echoed JSON, open socket)."""
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise
    try:
        return (*tls_request(s, path), s)
    except BaseException:
        s.close()
        raise


def tls_request(s: ssl.SSLSocket, path: str = "/") -> tuple[int, dict]:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed; got {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (
            int(v)
            for k, _, v in (x.partition(": ") for x in lines[1:])
            if k.lower() == "content-length"
        ),
        0,
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"raw": body.decode("latin-1")}


def s_client(port: int, *args: str, stdin: bytes = b"", brief: bool = True) -> str:
    """``openssl s_client`` output (-brief has no ALPN line: brief=False for that)."""
    r = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", *(["-brief"] if brief else []), *args],
        input=stdin,
        capture_output=True,
        timeout=10,
        check=False,
    )
    return (r.stdout + r.stderr).decode("latin-1")


def peer_cn(ctx: ssl.SSLContext, port: int, sni: str | None) -> str:
    raw = socket.create_connection((HOST, port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise
    with s:
        cert = s.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def header(body: dict, name: str) -> str | None:
    for k, v in body["headers"]:
        if k.lower() == name.lower():
            return v
    return None


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------- termination


def test_termination_sni_alpn_versions(backend, pki, proxy, echo):
    p = proxy(mode="run", app="conformance.apps:TlsApp", env={"ORIGIN_PORT": echo.port},
              extra=[*pki.pair("default"), *sni_flags(pki)])  # fmt: skip
    ctx = pki.client_context()
    status, body, s = tls_get(p.port, ctx, sni="localhost")
    assert status == 200
    assert header(body, "X-TLS") == "yes" and header(body, "X-TLS-SNI") == "localhost"
    assert header(body, "X-TLS-Version") == "TLSv1.3"
    assert header(body, "X-Forwarded-Proto") == "https"
    status, body = tls_request(s)  # keep-alive over TLS
    assert status == 200
    s.close()
    # Certificates by SNI: exact, case-insensitive, wildcard (one label), default, hook.
    nocheck = pki.client_context()
    nocheck.check_hostname = False
    assert peer_cn(nocheck, p.port, "other.test") == "other.test"
    assert peer_cn(nocheck, p.port, "OTHER.TEST") == "other.test"
    assert peer_cn(nocheck, p.port, "a.wild.test") == "*.wild.test"
    assert peer_cn(nocheck, p.port, "a.b.wild.test") == "localhost"
    assert peer_cn(nocheck, p.port, "unknown.test") == "localhost"
    assert peer_cn(nocheck, p.port, None) == "localhost"
    assert peer_cn(nocheck, p.port, "pick.test") == "other.test"  # select_certificate
    with pytest.raises(ssl.SSLError):
        peer_cn(nocheck, p.port, "refuse.test")
    # ALPN and versions, seen by openssl s_client.
    out = s_client(p.port, "-servername", "other.test", "-alpn", "h2,http/1.1",
                   "-CAfile", pki["ca.pem"], brief=False)  # fmt: skip
    assert "ALPN protocol: h2" in out and "Verify return code: 0 (ok)" in out, out
    out = s_client(p.port, "-tls1_2", "-servername", "localhost", "-CAfile", pki["ca.pem"])
    assert "Protocol version: TLSv1.2" in out and "Ciphersuite: ECDHE-" in out, out
    out = s_client(p.port, "-tls1_1", "-servername", "localhost")
    assert "Protocol version" not in out  # TLS 1.1 refused
    out = s_client(p.port, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "localhost")
    assert "Protocol version" not in out  # no non-forward-secret suites
    # curl with --resolve and real verification; httpx.
    r = subprocess.run(
        [CURL, "-sS", "--max-time", "10", "--cacert", pki["ca.pem"], "--resolve",
         f"other.test:{p.port}:127.0.0.1", f"https://other.test:{p.port}/curl"],
        capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert header(json.loads(r.stdout), "X-TLS-SNI") == "other.test"
    with httpx.Client(verify=pki.client_context()) as c:
        resp = c.get(f"https://localhost:{p.port}/httpx")
        assert resp.status_code == 200 and resp.json()["target"] == "/httpx"
        assert c.get(f"https://localhost:{p.port}/again").status_code == 200
    p.check_alive()


def test_session_resumption(backend, pki, proxy, echo):
    p = proxy(mode="run", app="conformance.apps:TlsApp", env={"ORIGIN_PORT": echo.port},
              extra=pki.pair("default"))  # fmt: skip
    ctx = pki.client_context()
    status, _, s = tls_get(p.port, ctx)  # tickets arrive with the first response
    session = s.session
    s.close()
    assert status == 200 and session is not None
    status, body, s2 = tls_get(p.port, ctx, session=session)
    assert status == 200 and s2.session_reused
    assert header(body, "X-TLS-Reused") == "True"
    s2.close()


def test_mtls_required_and_optional(backend, pki, proxy, echo):
    p = proxy(mode="run", app="conformance.apps:TlsApp", env={"ORIGIN_PORT": echo.port},
              extra=[*pki.pair("default"), "--tls-client-ca", pki["ca.pem"],
                     "--tls-client-auth", "required"])  # fmt: skip
    status, body, s = tls_get(p.port, pki.client_context("client"))
    assert status == 200 and header(body, "X-TLS-Client") == "client-1"
    s.close()
    # No certificate: TLS 1.3 reports certificate_required when the client first reads.
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        tls_get(p.port, pki.client_context())
    out = s_client(p.port, "-tls1_2", "-servername", "localhost")
    assert "Protocol version" not in out and "alert" in out.lower(), out
    status, _, s = tls_get(p.port, pki.client_context("client"))  # still serving
    assert status == 200
    s.close()
    q = proxy(mode="run", app="conformance.apps:TlsApp", env={"ORIGIN_PORT": echo.port},
              extra=[*pki.pair("default"), "--tls-client-ca", pki["ca.pem"],
                     "--tls-client-auth", "optional"])  # fmt: skip
    status, body, s = tls_get(q.port, pki.client_context())
    assert status == 200 and header(body, "X-TLS-Client") == "-"
    s.close()
    status, body, s = tls_get(q.port, pki.client_context("client"))
    assert header(body, "X-TLS-Client") == "client-1"
    s.close()


def test_bad_tls_input(backend, pki, proxy, echo):
    p = proxy(to=[echo.port], extra=[*pki.pair("default"), "--tls-handshake-timeout", "1"])
    # Plain HTTP on the TLS port: a plain 400, then close.
    with socket.create_connection((HOST, p.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and b"HTTPS port" in data
    # Garbage that looks like a TLS record: an alert, then close.
    with socket.create_connection((HOST, p.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data[:1] == b"\x15"  # alert record
    # A client that stalls mid-handshake is cut off after the handshake timeout, and nobody
    # else waits for it meanwhile.
    stalled = socket.create_connection((HOST, p.port), timeout=5)
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
    t0 = time.monotonic()
    status, _, s = tls_get(p.port, pki.client_context())
    assert status == 200 and time.monotonic() - t0 < 0.9
    s.close()
    assert stalled.recv(10) == b""  # closed by the proxy
    assert 0.8 < time.monotonic() - t0 < 4
    stalled.close()
    p.check_alive()


def test_unknown_name_without_default(backend, pki, proxy, echo):
    p = proxy(to=[echo.port], extra=sni_flags(pki))
    out = s_client(p.port, "-servername", "unknown.test")
    assert "unrecognized name" in out.lower() or "unrecognised name" in out.lower(), out
    out = s_client(p.port, "-noservername")
    assert "Protocol version" not in out
    ctx = pki.client_context()
    raw = socket.create_connection((HOST, p.port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="other.test")
    assert tls_request(s)[0] == 200
    s.close()


def test_reload_on_sighup(backend, pki, proxy, echo, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki["default.pem"], cert)
    shutil.copy(pki["default.key"], key)
    p = proxy(to=[echo.port], extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    nocheck = pki.client_context()
    nocheck.check_hostname = False
    status, _, old = tls_get(p.port, pki.client_context())
    assert status == 200 and peer_cn(nocheck, p.port, "x.test") == "localhost"
    shutil.copy(pki["other.pem"], cert)
    shutil.copy(pki["other.key"], key)
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "proxycore tls reloaded" not in p.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "proxycore tls reloaded" in p.stdout(), p.report()
    assert peer_cn(nocheck, p.port, "x.test") == "other.test"  # new handshakes: new cert
    assert tls_request(old)[0] == 200  # the open connection was not dropped
    old.close()
    # A broken replacement keeps the current certificate.
    cert.write_text("garbage")
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "proxycore tls reload failed" not in p.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "not a PEM certificate" in p.stderr()
    assert peer_cn(nocheck, p.port, "x.test") == "other.test"
    p.check_alive()


# ---------------------------------------------------------------- origination


def test_upstream_tls(backend, pki, proxy, origins):
    good = origins(TlsEchoOrigin, origin_context(pki))
    base = ["--to", f"https://127.0.0.1:{good.port}", "--upstream-ca", pki["ca.pem"]]
    p = proxy(extra=[*base, "--upstream-sni", "origin.test"])
    with httpx.Client() as c:
        for i in range(3):
            r = c.get(f"http://127.0.0.1:{p.port}/u{i}")
            assert r.status_code == 200 and r.json()["target"] == f"/u{i}"
    assert good.snapshot()[0] == 1  # one TLS connection, reused from the pool
    # Wrong name, unknown CA, expired certificate: 502 and a log line naming the reason.
    cases = [
        (["--to", f"https://127.0.0.1:{good.port}", "--upstream-ca", pki["ca.pem"],
          "--upstream-sni", "wrong.test"], "Hostname mismatch"),
        (["--to", f"https://127.0.0.1:{good.port}", "--upstream-sni", "origin.test"],
         "unable to get local issuer certificate"),
    ]  # fmt: skip
    expired = origins(TlsEchoOrigin, origin_context(pki, "expired"))
    rogue = origins(TlsEchoOrigin, origin_context(pki, "rogue"))
    selfsigned = origins(TlsEchoOrigin, origin_context(pki, "selfsigned"))
    cases += [
        (["--to", f"https://127.0.0.1:{selfsigned.port}", "--upstream-ca", pki["ca.pem"],
          "--upstream-sni", "origin.test"], "self-signed certificate"),
        (["--to", f"https://127.0.0.1:{expired.port}", "--upstream-ca", pki["ca.pem"],
          "--upstream-sni", "origin.test"], "certificate has expired"),
        (["--to", f"https://127.0.0.1:{rogue.port}", "--upstream-ca", pki["ca.pem"],
          "--upstream-sni", "origin.test"], "unable to get local issuer certificate"),
    ]  # fmt: skip
    for extra, reason in cases:
        q = proxy(extra=extra)
        r = httpx.get(f"http://127.0.0.1:{q.port}/v", timeout=5)
        assert r.status_code == 502
        deadline = time.monotonic() + 3
        while reason not in q.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reason in q.stderr(), q.report()
        assert "certificate verify failed" in q.stderr()
    # --upstream-insecure accepts the untrusted certificate.
    q = proxy(extra=["--to", f"https://127.0.0.1:{rogue.port}", "--upstream-insecure"])
    assert httpx.get(f"http://127.0.0.1:{q.port}/w", timeout=5).status_code == 200


def test_upstream_mtls_and_tls_both_sides(backend, pki, proxy, origins):
    strict = origins(TlsEchoOrigin, origin_context(pki, client_ca=True))
    to = ["--to", f"https://127.0.0.1:{strict.port}", "--upstream-ca", pki["ca.pem"],
          "--upstream-sni", "origin.test"]  # fmt: skip
    p = proxy(extra=to)
    assert httpx.get(f"http://127.0.0.1:{p.port}/a", timeout=5).status_code == 502
    p = proxy(extra=[*to, "--upstream-cert", pki["client.pem"], "--upstream-key",
                     pki["client.key"], *pki.pair("default")])  # fmt: skip
    status, body, s = tls_get(p.port, pki.client_context(), path="/both")
    assert status == 200 and body["target"] == "/both"
    s.close()
    cn = dict(x[0] for x in strict.client_certs[-1]["subject"])["commonName"]
    assert cn == "client-1"


# ---------------------------------------------------------------- start-up errors


def _start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*python_cmd(), "-m", "proxycore", "reverse-proxy", "--listen", "127.0.0.1:0",
         "--to", "127.0.0.1:9", *args],
        capture_output=True, timeout=20, check=False, cwd=PROCESS_CWD, env=process_env(),
    )  # fmt: skip


def test_bad_certificates_exit_2(pki, tmp_path):
    unreadable = tmp_path / "unreadable.pem"
    shutil.copy(pki["default.pem"], unreadable)
    unreadable.chmod(0)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    no_key = "holds no usable private key"
    cases = [
        (["--tls-cert", pki["default.pem"], "--tls-key", str(garbage)],
         f"key {str(garbage)!r} {no_key}"),
        (["--tls-cert", pki["default.pem"], "--tls-key", pki["default.pem"]],
         f"key {pki['default.pem']!r} {no_key}"),
        (["--to", "https://127.0.0.1:9", "--upstream-cert", pki["default.pem"],
          "--upstream-key", str(garbage)], f"upstream client key {str(garbage)!r} {no_key}"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", pki["default.key"]],
         "no such file"),
        (["--tls-cert", pki["default.pem"], "--tls-key", pki["other.key"]], "do not match"),
        (["--tls-cert", pki["expired.pem"], "--tls-key", pki["expired.key"]], "expired on"),
        (["--tls-cert", pki["default.pem"]], "--tls-cert and --tls-key go together"),
        ([*pki.pair("default"), "--tls-client-auth", "required"], "needs --tls-client-ca"),
        (["--tls-sni-cert", "bad"], "expected NAME=CERT,KEY"),
        (["--upstream-ca", str(tmp_path / "none.pem"), "--to", "https://127.0.0.1:9"],
         "no such file"),
    ]  # fmt: skip
    import os

    if os.geteuid() != 0:  # root reads anything
        cases.append((["--tls-cert", str(unreadable), "--tls-key", pki["default.key"]],
                      "permission denied"))  # fmt: skip
    for args, message in cases:
        r = _start(*args)
        assert r.returncode == 2, (args, r.stderr.decode())
        assert message in r.stderr.decode(), (args, r.stderr.decode())
        assert "Traceback" not in r.stderr.decode() and "PEM lib" not in r.stderr.decode()


def test_reload_reaches_every_worker(pki, tmp_path):
    """With --workers 2 the supervisor forwards SIGHUP: both workers reload (one backend is
    enough here: the forwarding is the supervisor's, the reload is the same code everywhere)."""
    from conformance.proxy import start_proxy

    echo = EchoOrigin()
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki["default.pem"], cert)
    shutil.copy(pki["default.key"], key)
    p = start_proxy(
        "asyncio",
        to=[echo.port],
        extra=["--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key)],
    )
    try:
        nocheck = pki.client_context()
        nocheck.check_hostname = False
        deadline = time.monotonic() + 8
        while p.stdout().count("proxycore ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.copy(pki["other.pem"], cert)
        shutil.copy(pki["other.key"], key)
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 8
        while p.stdout().count("proxycore tls reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.stdout().count("proxycore tls reloaded") == 2, p.report()
        # SO_REUSEPORT spreads new connections over both workers: all see the new certificate.
        assert {peer_cn(nocheck, p.port, "x.test") for _ in range(12)} == {"other.test"}
    finally:
        p.stop()
        p.close_files()
        echo.stop()
