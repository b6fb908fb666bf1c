"""The TLS layer without sockets: real OpenSSL handshakes over memory BIOs on both sides.

Clients and origins here are ``ssl.SSLObject``s pumped by hand; the proxy is an Engine with
certificates loaded by proxycore.tlsconfig from files trustme generates.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxycore import Peer, Proxy
from proxycore.actions import Action, Close, Connect, Send, SetTimer
from proxycore.config import ServerConf, TlsSettings
from proxycore.engine import Engine, NullLog
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    DataReceived,
    EofReceived,
    TimerFired,
)
from proxycore.tls import TlsInfo, match_wildcard
from proxycore.tlsconfig import ClientContextCache, TlsConfigError, load_server_tls
from proxycore.trace import decode_event, encode_event

CLIENT = ("192.0.2.7", 5555)
LISTEN = ("127.0.0.1", 8443)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class App(Proxy):
    def __init__(self, peer: Peer | None = None) -> None:
        self.peer = peer or Peer("127.0.0.1", 9000)
        self.seen: list[Any] = []
        self.picks: list[Any] = []

    def upstream_peer(self, session: Any, ctx: Any) -> Peer:
        self.seen.append(session.tls)
        return self.peer


class PickApp(App):
    def select_certificate(self, server_name: str | None, client_addr: tuple[str, int]) -> Any:
        self.picks.append((server_name, client_addr))
        if server_name == "refuse.test":
            return False
        return "other.test" if server_name == "pick.test" else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    out: dict[str, Any] = {"ca": ca, "dir": d}
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for name, hosts in {
        "default": ["example.test", "127.0.0.1"],
        "other": ["other.test"],
        "wild": ["*.wild.test"],
    }.items():
        cert = ca.issue_cert(*hosts)
        cert.cert_chain_pems[0].write_to_path(str(d / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
    client = ca.issue_cert("client-1", common_name="client-1")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return out


def settings(pki: dict[str, Any], **kw: Any) -> TlsSettings:
    d = pki["dir"]
    base: dict[str, Any] = {
        "cert": str(d / "default.pem"),
        "key": str(d / "default.key"),
        "sni_certs": {
            "other.test": (str(d / "other.pem"), str(d / "other.key")),
            "*.wild.test": (str(d / "wild.pem"), str(d / "wild.key")),
        },
        "ports": [LISTEN[1]],
    }
    base.update(kw)
    return TlsSettings(**base)


def make_engine(pki: dict[str, Any], app: App | None = None, **kw: Any) -> tuple[Engine, App]:
    app = app or App()
    server = load_server_tls(settings(pki, **kw))
    eng = Engine(app, ServerConf(), NullLog(), server_tls=server, client_tls=ClientContextCache())
    return eng, app


class TlsClient:
    """A TLS client over memory BIOs, talking to connection ``conn`` of an engine."""

    def __init__(
        self,
        pki: dict[str, Any],
        sni: str | None = "example.test",
        cert: str | None = None,
        alpn: list[str] | None = None,
        session: ssl.SSLSession | None = None,
        check_name: bool = True,
        ctx: ssl.SSLContext | None = None,
    ) -> None:
        ctx = ctx or ssl.create_default_context(cafile=str(pki["dir"] / "ca.pem"))
        if sni is None or not check_name:
            ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(str(pki["dir"] / f"{cert}.pem"), str(pki["dir"] / f"{cert}.key"))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=sni, session=session)
        self.done = False
        self.error: ssl.SSLError | None = None

    def step(self) -> bytes:
        if not self.done and self.error is None:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                self.error = e
        return self.out.read()

    def receive(self, actions: list[Action], conn: int) -> list[Action]:
        for a in actions:
            if isinstance(a, Send) and a.conn == conn:
                self.inc.write(a.data)
        return actions

    def read_all(self) -> bytes:
        chunks = []
        try:
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        return b"".join(chunks)


def handshake(eng: Engine, client: TlsClient, conn: int = 1) -> list[Action]:
    """Accept ``conn`` and pump bytes both ways until the client finished (or failed)."""
    seen = client.receive(eng.feed(Accepted(conn, 0.0, CLIENT, LISTEN)), conn)
    for _ in range(10):
        data = client.step()
        if data:
            seen += client.receive(eng.feed(DataReceived(conn, data, 0.1)), conn)
        elif client.done or client.error:
            break
    client.step()
    return seen


def request(eng: Engine, client: TlsClient, conn: int = 1) -> list[Action]:
    client.obj.write(b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n")
    return client.receive(eng.feed(DataReceived(conn, client.out.read(), 0.2)), conn)


def test_termination_end_to_end(pki: dict[str, Any]) -> None:
    eng, app = make_engine(pki)
    client = TlsClient(pki, alpn=["http/1.1"])
    first = handshake(eng, client)
    assert client.done and client.error is None
    assert first[0] == SetTimer(1, 10.0)  # the handshake timeout
    assert 1 in eng.downstreams and eng.downstreams[1].scheme == "https"
    acts = request(eng, client)
    connect = next(a for a in acts if isinstance(a, Connect))
    up = connect.conn
    acts = eng.feed(Connected(up, 0.3))
    sent = b"".join(a.data for a in acts if isinstance(a, Send) and a.conn == up)
    assert sent.startswith(b"GET /x HTTP/1.1\r\n") and b"X-Forwarded-Proto: https" in sent
    client.receive(eng.feed(DataReceived(up, RESPONSE, 0.4)), 1)
    assert client.read_all() == RESPONSE
    info = app.seen[0]
    assert isinstance(info, TlsInfo)
    assert (info.sni, info.alpn, info.version) == ("example.test", "http/1.1", "TLSv1.3")
    assert info.client_cert is None and info.client_subject == {}


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("example.test", "example.test"),
        ("other.test", "other.test"),
        ("OTHER.test", "other.test"),
        ("a.wild.test", "*.wild.test"),
        ("unknown.test", "example.test"),  # falls back to the default certificate
        (None, "example.test"),
    ],
)
def test_certificate_chosen_by_sni(pki: dict[str, Any], sni: str | None, expected: str) -> None:
    eng, _ = make_engine(pki)
    client = TlsClient(pki, sni=sni, check_name=sni != "unknown.test")
    handshake(eng, client)
    assert client.done, client.error
    cert = client.obj.getpeercert()
    names = [v for k, v in cert["subjectAltName"]]
    assert expected in names


def test_wildcard_matches_one_label_only(pki: dict[str, Any]) -> None:
    assert match_wildcard("*.wild.test", "a.wild.test")
    assert not match_wildcard("*.wild.test", "a.b.wild.test")
    assert not match_wildcard("*.wild.test", "wild.test")
    eng, _ = make_engine(pki, cert=None, key=None)  # no default certificate
    client = TlsClient(pki, sni="a.b.wild.test")
    handshake(eng, client)
    assert client.error is not None and "UNRECOGNIZED_NAME" in str(client.error).upper()


def test_unknown_name_without_default_gets_unrecognized_name(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki, cert=None, key=None)
    for sni in ("unknown.test", None):
        client = TlsClient(pki, sni=sni)
        acts = handshake(eng, client)
        assert client.error is not None
        assert "UNRECOGNIZED_NAME" in str(client.error).upper()
        assert any(isinstance(a, Close) for a in acts)
        assert not eng.downstreams and not eng.tls.conns  # type: ignore[union-attr]
    client = TlsClient(pki, sni="other.test")
    handshake(eng, client, conn=5)
    assert client.done


def test_select_certificate_hook(pki: dict[str, Any]) -> None:
    app = PickApp()
    eng, _ = make_engine(pki, app)
    client = TlsClient(pki, sni="pick.test", check_name=False)
    handshake(eng, client)
    assert client.done
    assert ("DNS", "other.test") in client.obj.getpeercert()["subjectAltName"]
    assert app.picks == [("pick.test", CLIENT)]
    client = TlsClient(pki, sni="refuse.test")
    handshake(eng, client, conn=3)
    assert client.error is not None


def test_mtls_required(pki: dict[str, Any]) -> None:
    ca = str(pki["dir"] / "ca.pem")
    eng, app = make_engine(pki, client_ca=ca, client_auth="required")
    client = TlsClient(pki, cert="client")
    handshake(eng, client)
    assert client.done
    request(eng, client)
    info = app.seen[0]
    assert info.client_subject["commonName"] == "client-1"
    assert info.client_cert_der and info.client_cert["subject"]
    # Without a certificate: TLS 1.3 fails after the client's Finished (certificate_required).
    client = TlsClient(pki)
    acts = handshake(eng, client, conn=7)
    acts += client.receive(eng.feed(DataReceived(7, client.out.read(), 0.2)), 7)
    assert any(isinstance(a, Close) and a.conn == 7 for a in acts)
    assert 7 not in eng.downstreams
    with pytest.raises(ssl.SSLError, match=r"CERTIFICATE_REQUIRED|certificate required"):
        client.obj.read(100)


def test_mtls_optional(pki: dict[str, Any]) -> None:
    ca = str(pki["dir"] / "ca.pem")
    eng, app = make_engine(pki, client_ca=ca, client_auth="optional")
    client = TlsClient(pki)
    handshake(eng, client)
    request(eng, client)
    assert app.seen[0].client_cert is None


def test_plain_http_on_tls_port_gets_400(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    eng.feed(Accepted(1, 0.0, CLIENT, LISTEN))
    acts = eng.feed(DataReceived(1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.1))
    sends = [a for a in acts if isinstance(a, Send)]
    assert sends[0].data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"plain HTTP request was sent to an HTTPS port" in sends[0].data
    assert acts[-1] == Close(1, False)
    assert not eng.downstreams and not eng.tls.conns  # type: ignore[union-attr]


def test_garbage_fails_handshake_with_alert(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    eng.feed(Accepted(1, 0.0, CLIENT, LISTEN))
    acts = eng.feed(DataReceived(1, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff", 0.1))
    assert isinstance(acts[-1], Close)
    alert = [a for a in acts if isinstance(a, Send)]
    assert alert and alert[0].data[0] == 0x15  # a TLS alert record
    assert not eng.downstreams


def test_handshake_timeout_and_stalled_client(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    client = TlsClient(pki)
    eng.feed(Accepted(1, 0.0, CLIENT, LISTEN))
    eng.feed(DataReceived(1, client.step()[:20], 0.1))  # half a ClientHello, then silence
    acts = eng.feed(TimerFired(1, 10.5))
    assert acts == [Close(1, False)]
    assert not eng.tls.conns  # type: ignore[union-attr]
    # EOF or a reset during the handshake: nothing reaches the engine.
    eng.feed(Accepted(2, 11.0, CLIENT, LISTEN))
    assert eng.feed(EofReceived(2, 11.1)) == [Close(2, True)]
    eng.feed(Accepted(3, 11.0, CLIENT, LISTEN))
    assert eng.feed(Closed(3, 11.1, "reset")) == []
    assert not eng.downstreams


def test_plain_listener_untouched(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    eng.feed(Accepted(1, 0.0, CLIENT, ("127.0.0.1", 8080)))
    acts = eng.feed(DataReceived(1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.1))
    assert any(isinstance(a, Connect) for a in acts)
    assert eng.downstreams[1].tls is None


def test_session_resumption(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    client = TlsClient(pki)
    handshake(eng, client)
    request(eng, client)
    client.read_all()  # TLS 1.3 tickets arrive after the handshake
    session = client.obj.session
    assert session is not None and session.has_ticket
    again = TlsClient(pki, session=session, ctx=client.obj.context)
    handshake(eng, again, conn=9)
    assert again.done and again.obj.session_reused
    assert eng.downstreams[9].tls.session_reused  # type: ignore[union-attr]


def test_reload_swaps_certificates_for_new_handshakes(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    old = TlsClient(pki)
    handshake(eng, old)
    d = pki["dir"]
    eng.tls.set_server(  # type: ignore[union-attr]
        load_server_tls(settings(pki, cert=str(d / "other.pem"), key=str(d / "other.key")))
    )
    new = TlsClient(pki, sni="example.test", check_name=False)
    handshake(eng, new, conn=2)
    assert ("DNS", "other.test") in new.obj.getpeercert()["subjectAltName"]
    # The connection made before the reload still works.
    acts = request(eng, old)
    assert any(isinstance(a, Connect) for a in acts)


def test_tls_info_survives_the_trace_format(pki: dict[str, Any]) -> None:
    info = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "a.test", "http/1.1", False,
                   {"subject": ((("commonName", "c"),),)}, b"\x30\x01")  # fmt: skip
    ev = Accepted(1, 2.0, CLIENT, LISTEN, "https", info)
    kind, payload = encode_event(ev)
    back = decode_event(kind, 1, 2.0, payload)
    assert back == ev and back.tls.client_subject == {"commonName": "c"}  # type: ignore[attr-defined]


class UpstreamTls:
    """An origin over memory BIOs."""

    def __init__(self, pki: dict[str, Any], cert: str = "default", client_ca: bool = False):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        d = pki["dir"]
        ctx.load_cert_chain(str(d / f"{cert}.pem"), str(d / f"{cert}.key"))
        ctx.set_alpn_protocols(["http/1.1"])
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(d / "ca.pem"))
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)


def upstream_exchange(eng: Engine, client: TlsClient, origin: UpstreamTls) -> list[Action]:
    acts = request(eng, client)
    up = next(a for a in acts if isinstance(a, Connect)).conn
    acts = eng.feed(Connected(up, 0.3))
    log: list[Action] = list(acts)
    for _ in range(10):
        for a in acts:
            if isinstance(a, Send) and a.conn == up:
                origin.inc.write(a.data)
        if any(isinstance(a, Close) and a.conn == up for a in acts):
            break
        try:
            origin.obj.do_handshake()
            data = origin.obj.read(65536)
            if data.startswith(b"GET"):
                origin.obj.write(RESPONSE)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass
        out = origin.out.read()
        if not out:
            break
        acts = eng.feed(DataReceived(up, out, 0.4))
        log += acts
        client.receive(acts, 1)
    return log


def test_upstream_tls_verified(pki: dict[str, Any]) -> None:
    peer = Peer("127.0.0.1", 9443, tls=True, sni="example.test", ca=str(pki["dir"] / "ca.pem"))
    eng, _ = make_engine(pki, App(peer))
    client = TlsClient(pki)
    handshake(eng, client)
    upstream_exchange(eng, client, UpstreamTls(pki))
    assert client.read_all() == RESPONSE


@pytest.mark.parametrize(
    ("peer_kw", "origin_cert", "reason"),
    [
        ({"sni": "wrong.test"}, "default", "Hostname mismatch"),
        ({"sni": "example.test", "ca": None}, "default", "unable to get local issuer"),
    ],
)
def test_upstream_verification_failure_is_502(
    pki: dict[str, Any], peer_kw: dict[str, Any], origin_cert: str, reason: str
) -> None:
    kw = {"ca": str(pki["dir"] / "ca.pem")}
    kw.update(peer_kw)
    logs: list[str] = []

    class Log:  # (not a NullLog subclass: NullLog is compiled in the mypyc build)
        def warning(self, msg: str, *args: Any) -> None:
            logs.append(msg % args)

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    peer = Peer("127.0.0.1", 9443, tls=True, **kw)
    app = App(peer)
    server = load_server_tls(settings(pki))
    eng = Engine(app, ServerConf(max_retries=0), Log(), server_tls=server,
                 client_tls=ClientContextCache())  # fmt: skip
    client = TlsClient(pki)
    handshake(eng, client)
    upstream_exchange(eng, client, UpstreamTls(pki, origin_cert))
    assert client.read_all().startswith(b"HTTP/1.1 502 ")
    assert any(reason in line and "certificate verify failed" in line for line in logs), logs


def test_upstream_insecure_and_pool_key(pki: dict[str, Any]) -> None:
    a = Peer("h", 443, tls=True, sni="a")
    assert a.key != Peer("h", 443, tls=True, sni="b").key
    assert a.key != Peer("h", 443, tls=True, sni="a", verify=False).key
    assert a.key != Peer("h", 443, tls=True, sni="a", ca="x.pem").key
    assert a.key != Peer("h", 443, tls=True, sni="a", client_cert=("c", "k")).key
    assert a.key != Peer("h", 443).key
    assert Peer.parse("https://example.test").key == Peer("example.test", 443, tls=True).key
    peer = Peer("127.0.0.1", 9443, tls=True, verify=False)
    eng, _ = make_engine(pki, App(peer))
    client = TlsClient(pki)
    handshake(eng, client)
    upstream_exchange(eng, client, UpstreamTls(pki, "other"))
    assert client.read_all() == RESPONSE


def test_upstream_mtls(pki: dict[str, Any]) -> None:
    d = pki["dir"]
    peer = Peer("127.0.0.1", 9443, tls=True, sni="example.test", ca=str(d / "ca.pem"),
                client_cert=(str(d / "client.pem"), str(d / "client.key")))  # fmt: skip
    eng, _ = make_engine(pki, App(peer))
    client = TlsClient(pki)
    handshake(eng, client)
    origin = UpstreamTls(pki, client_ca=True)
    upstream_exchange(eng, client, origin)
    assert client.read_all() == RESPONSE
    assert dict(x[0] for x in origin.obj.getpeercert()["subject"])["commonName"] == "client-1"


def test_config_errors_name_the_file(pki: dict[str, Any], tmp_path: Path) -> None:
    d = pki["dir"]
    with pytest.raises(TlsConfigError, match="no such file"):
        load_server_tls(settings(pki, cert=str(tmp_path / "missing.pem")))
    with pytest.raises(TlsConfigError, match="do not match"):
        load_server_tls(settings(pki, key=str(d / "other.key")))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="not a PEM certificate"):
        load_server_tls(settings(pki, cert=str(bad)))
    for key in (str(bad), str(d / "default.pem")):  # garbage; a certificate, not a key
        with pytest.raises(TlsConfigError, match=f"^key '{key}' holds no usable private key"):
            load_server_tls(settings(pki, key=key))
    expired = pki["ca"].issue_cert(
        "old.test", not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    )
    expired.cert_chain_pems[0].write_to_path(str(tmp_path / "old.pem"))
    expired.private_key_pem.write_to_path(str(tmp_path / "old.key"))
    with pytest.raises(TlsConfigError, match="expired on 2020-01-01"):
        load_server_tls(
            settings(pki, cert=str(tmp_path / "old.pem"), key=str(tmp_path / "old.key"))
        )
    with pytest.raises(TlsConfigError, match="CA bundle"):
        load_server_tls(settings(pki, client_auth="required"))


def test_verify_hostname_off_checks_only_the_chain(pki: dict[str, Any]) -> None:
    ca = str(pki["dir"] / "ca.pem")
    peer = Peer("127.0.0.1", 9443, tls=True, sni="wrong.test", ca=ca, verify_hostname=False)
    eng, _ = make_engine(pki, App(peer))
    client = TlsClient(pki)
    handshake(eng, client)
    upstream_exchange(eng, client, UpstreamTls(pki))
    assert client.read_all() == RESPONSE


def test_tls_session_records_plaintext_and_replays(pki: dict[str, Any]) -> None:
    from proxycore.replay import load_trace, replay
    from proxycore.trace import Recorder

    pieces: dict[int, bytes] = {}
    eng, _ = make_engine(pki)
    eng.recorder = Recorder(
        eng, lambda conn, data: pieces.update({conn: pieces.get(conn, b"") + data})
    )
    client = TlsClient(pki)
    handshake(eng, client)
    acts = request(eng, client)
    up = next(a for a in acts if isinstance(a, Connect)).conn
    eng.feed(Connected(up, 0.3))
    client.receive(eng.feed(DataReceived(up, RESPONSE, 0.4)), 1)
    eng.feed(Closed(1, 0.5, None))
    trace = load_trace(pieces[1], "tls.pctrace")
    first = trace.groups[0].event
    assert isinstance(first, Accepted) and first.scheme == "https"
    assert first.tls is not None and first.tls.sni == "example.test"
    data = [g.event for g in trace.groups if isinstance(g.event, DataReceived)]
    assert data[0].data.startswith(b"GET /x HTTP/1.1")  # plaintext, not TLS records
    result = replay(trace, App())
    assert result, result.report()


def test_a_bug_in_the_tls_layer_costs_one_connection(pki: dict[str, Any]) -> None:
    eng, _ = make_engine(pki)
    a, b = TlsClient(pki), TlsClient(pki)
    handshake(eng, a, conn=1)
    handshake(eng, b, conn=2)
    layer = eng.tls
    assert layer is not None
    real = eng._recorded_feed

    def broken(ev: Any) -> list[Action]:  # a bug below the layer, for connection 1 only
        if ev.conn == 1 and isinstance(ev, DataReceived):
            raise RuntimeError("boom")
        return real(ev)

    layer.inner = broken
    acts = request(eng, a, conn=1)
    assert acts[-1] == Close(1, True) and 1 not in eng.downstreams and 1 not in layer.conns
    acts = request(eng, b, conn=2)
    assert any(isinstance(x, Connect) for x in acts)


def test_encrypted_key_is_a_clear_error_not_a_prompt(pki: dict[str, Any], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    d = pki["dir"]
    key = serialization.load_pem_private_key((d / "default.key").read_bytes(), None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match="is encrypted"):
        load_server_tls(settings(pki, key=str(enc)))


def test_upstream_eof_during_handshake_closes_the_socket_and_502s(pki: dict[str, Any]) -> None:
    peer = Peer("127.0.0.1", 9443, tls=True, sni="example.test", ca=str(pki["dir"] / "ca.pem"))
    server = load_server_tls(settings(pki))
    eng = Engine(App(peer), ServerConf(max_retries=0), NullLog(), server_tls=server,
                 client_tls=ClientContextCache())  # fmt: skip
    client = TlsClient(pki)
    handshake(eng, client)
    up = next(a for a in request(eng, client) if isinstance(a, Connect)).conn
    hello = eng.feed(Connected(up, 0.3))
    assert any(isinstance(a, Send) and a.conn == up for a in hello)  # the ClientHello
    acts = client.receive(eng.feed(EofReceived(up, 0.4)), 1)
    assert Close(up, True) in acts  # the adapter's socket is not left open
    assert client.read_all().startswith(b"HTTP/1.1 502 ")


def test_alpn_offers_h2_unless_turned_off(pki: dict[str, Any]) -> None:
    """RFC 9113 §3.2: "h2" by ALPN makes the connection an HTTP/2 one; without it (or with
    h2 off: --no-h2) a client offering h2 and http/1.1 gets http/1.1."""
    from proxycore.h2.server import H2Conn

    eng, _ = make_engine(pki)
    client = TlsClient(pki, alpn=["h2", "http/1.1"])
    handshake(eng, client)
    assert client.obj.selected_alpn_protocol() == "h2"
    assert isinstance(eng.downstreams[1], H2Conn)
    server = load_server_tls(settings(pki), h2=False)
    eng = Engine(App(), ServerConf(), NullLog(), server_tls=server, client_tls=ClientContextCache())
    client = TlsClient(pki, alpn=["h2", "http/1.1"])
    handshake(eng, client)
    assert client.obj.selected_alpn_protocol() == "http/1.1"
    assert not isinstance(eng.downstreams[1], H2Conn)
