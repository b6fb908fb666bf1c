"""TLS as bytes in / bytes out: the layer between the adapter and the engine.

Theory of operation: every adapter feeds its events to :meth:`TlsLayer.feed` (the engine's
``feed`` is this layer's ``feed`` once a layer is installed). Connections that do not speak TLS
pass straight through: one dict lookup per event. For a TLS connection the layer owns an
``ssl.SSLObject`` with two ``ssl.MemoryBIO`` buffers — the standard library's sans-I/O TLS
(OpenSSL with memory BIOs): ciphertext from the adapter goes into the incoming BIO, plaintext
comes out of ``read()`` and is fed to the engine as an ordinary DataReceived; the engine's Send
actions for that connection are encrypted on the way out. So the engine, the recorder and the
replay only ever see plaintext, and every adapter gets identical TLS without a line of TLS code.

Downstream (termination): a connection accepted on a TLS port (``ServerTls.ports``) is not
announced to the engine until its handshake completes; then the engine receives Accepted with
``scheme="https"`` and a :class:`TlsInfo` (SNI, ALPN, version, cipher, verified client
certificate), which filter phases read as ``session.tls``. While handshaking the layer owns the
connection's timer (the handshake timeout). The certificate is chosen in OpenSSL's SNI callback:
the app's ``select_certificate`` hook if it overrides it, else exact name, else wildcard
(``*.example.com`` matches one label, RFC 6125 §6.4.3), else the default certificate, else the
handshake fails with an ``unrecognized_name`` alert (RFC 6066 §3). Plain HTTP sent to a TLS
port gets a plain-text 400, as nginx does.

Upstream (origination): the engine registers a connection to a ``Peer(tls=True)`` when it asks
for it (:meth:`TlsLayer.client_open`). The adapter's Connected starts the handshake; the engine
sees Connected only when it has completed (the session's connect timeout covers it), or
ConnectFailed with reason ``"cert"`` (verification failed: expired, self-signed, wrong name) or
``"tls"`` (any other handshake failure) — 502 with a log line naming the reason. Sessions are
remembered per pool key and offered on the next connection (resumption).

No sockets, files or clocks here: SSL contexts are built outside the core
(:mod:`proxycore.tlsconfig`, at start-up and on reload) and handed in; ``ssl`` is used only for
in-memory objects (a test enforces the allowed names).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from proxycore.actions import Action, Close, Send, SetTimer, ShutdownWrite
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    DataReceived,
    EofReceived,
    Event,
    TimerFired,
    WriteFailed,
)
from proxycore.phases import Proxy

if TYPE_CHECKING:
    from proxycore.engine import Engine
    from proxycore.peer import Peer

__all__ = ["ClientContexts", "ServerTls", "TlsInfo", "TlsLayer", "match_wildcard"]

_READ: Final = 16384  # one TLS record of plaintext at most (RFC 8446 §5.1); larger sizes cost a big
# allocation per read (SSLObject.read allocates its size, then shrinks)
_PLAIN_HTTP_BODY = b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
_PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_PLAIN_HTTP_BODY)).encode() + b"\r\n\r\n" + _PLAIN_HTTP_BODY
)

HANDSHAKE: Final = 0
OPEN: Final = 1
SHUT: Final = 2  # close_notify sent; input is no longer decrypted


class TlsInfo:
    """What filter phases see of a TLS connection (``session.tls``; None for plain HTTP).

    ``version`` ("TLSv1.3"), ``cipher``, ``sni`` (the server name the client asked for, or
    None), ``alpn`` (the negotiated protocol or None), ``session_reused``, and the client
    certificate when one was presented and verified (mTLS): ``client_cert`` (the decoded
    form of ``ssl.SSLObject.getpeercert()``), ``client_cert_der`` and ``client_subject``
    (the certificate subject as ``{"commonName": ..., ...}``).
    """

    __slots__ = (
        "alpn",
        "cipher",
        "client_cert",
        "client_cert_der",
        "session_reused",
        "sni",
        "version",
    )

    def __init__(
        self,
        version: str | None = None,
        cipher: str | None = None,
        sni: str | None = None,
        alpn: str | None = None,
        session_reused: bool = False,
        client_cert: dict[str, Any] | None = None,
        client_cert_der: bytes | None = None,
    ) -> None:
        self.version = version
        self.cipher = cipher
        self.sni = sni
        self.alpn = alpn
        self.session_reused = session_reused
        self.client_cert = client_cert
        self.client_cert_der = client_cert_der

    @property
    def client_subject(self) -> dict[str, str]:
        """The client certificate's subject as a flat dict (empty without a certificate)."""
        out: dict[str, str] = {}
        for rdn in (self.client_cert or {}).get("subject", ()):
            for key, value in rdn:
                out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        d = {s: getattr(self, s) for s in _INFO_FIELDS}
        if self.client_cert_der is not None:
            d["client_cert_der"] = self.client_cert_der.hex()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TlsInfo:
        d = dict(d)
        der = d.pop("client_cert_der", None)
        cert = d.pop("client_cert", None)
        return cls(
            client_cert=_tuplify(cert) if cert is not None else None,
            client_cert_der=bytes.fromhex(der) if der else None,
            **d,
        )

    def __repr__(self) -> str:
        who = self.client_subject.get("commonName")
        return (
            f"TlsInfo({self.version}, sni={self.sni!r}, alpn={self.alpn!r}"
            + (f", client={who!r}" if who else "")
            + ")"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TlsInfo) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]


# Explicit (compiled classes have no __slots__ attribute to read).
_INFO_FIELDS = (
    "version", "cipher", "sni", "alpn", "session_reused", "client_cert", "client_cert_der",
)  # fmt: skip


def _tuplify(v: Any) -> Any:
    """JSON turned getpeercert()'s nested tuples into lists; turn them back."""
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuplify(x) for k, x in v.items()}
    return v


def match_wildcard(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.3: ``*.example.com`` matches exactly one left-most label."""
    if not pattern.startswith("*."):
        return pattern == name
    head, dot, rest = name.partition(".")
    return bool(head) and bool(dot) and rest == pattern[2:]


class ServerTls:
    """The certificates of the TLS listeners, as built SSL contexts (see
    :func:`proxycore.tlsconfig.load_server_tls`).

    ``base`` is the context every handshake starts with (the default certificate's, or a
    certificate-less one when there is no default); ``named`` maps lower-case server names and
    ``*.`` wildcards to contexts; ``ports`` are the local ports whose connections speak TLS.
    All contexts share the protocol settings (versions, ciphers, ALPN, client verification).
    """

    def __init__(
        self,
        base: ssl.SSLContext,
        named: dict[str, ssl.SSLContext],
        *,
        has_default: bool,
        ports: frozenset[int] | set[int],
        handshake_timeout: float = 10.0,
    ) -> None:
        self.base = base
        self.named = {k.lower(): v for k, v in named.items()}
        self.exact = {k: v for k, v in self.named.items() if not k.startswith("*.")}
        self.wild = {k[2:]: v for k, v in self.named.items() if k.startswith("*.")}
        self.has_default = has_default
        self.ports = frozenset(ports)
        self.handshake_timeout = handshake_timeout

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for ``server_name``: exact, then wildcard, then the default."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            head, dot, rest = name.partition(".")
            if head and dot:
                ctx = self.wild.get(rest)
                if ctx is not None:
                    return ctx
        return self.base if self.has_default else None


class ClientContexts(Protocol):
    """Builds (and caches) the SSL context for an upstream peer's TLS parameters; provided by
    the adapter glue (:class:`proxycore.tlsconfig.ClientContextCache`), since loading a CA
    bundle reads files."""

    def get(self, peer: Peer) -> ssl.SSLContext: ...


class _Tls:
    """One TLS connection's state."""

    __slots__ = (
        "client",
        "client_addr",
        "error",
        "incoming",
        "key",
        "obj",
        "outgoing",
        "server_addr",
        "sni",
        "state",
    )

    def __init__(
        self, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, client: bool
    ) -> None:
        self.obj = obj
        self.incoming = incoming
        self.outgoing = outgoing
        self.client = client  # True: we are the client (an upstream connection)
        self.state = HANDSHAKE
        self.sni: str | None = None
        self.error: str | None = None  # a client context that could not be built
        self.key: tuple[object, ...] = ()  # upstream: the pool key (session reuse)
        # Downstream: the addresses of the Accepted held back until the handshake is done.
        self.client_addr: tuple[str, int] = ("", 0)
        self.server_addr: tuple[str, int] = ("", 0)


class TlsLayer:
    """Terminates and originates TLS for one engine (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        server: ServerTls | None = None,
        client: ClientContexts | None = None,
    ) -> None:
        self.engine = engine
        # What events go on to (plaintext): the engine, unless replaced (tests inject faults).
        self.inner: Callable[[Event], list[Action]] | None = None
        self.conns: dict[int, _Tls] = {}
        self.client = client
        self.sessions: dict[tuple[object, ...], ssl.SSLSession] = {}
        self.server: ServerTls | None = None
        self._select_hook: Callable[..., Any] | None = None
        self.set_app(engine.app)
        self._handshaking: _Tls | None = None  # whose handshake OpenSSL is running (SNI)
        # client-side (listener) handshakes completed and failed, for the metrics
        self.handshakes = 0
        self.failures = 0
        self.set_server(server)

    # ------------------------------------------------------------------ configuration

    def set_app(self, app: Proxy) -> None:
        """The app whose ``select_certificate`` chooses certificates (again on reload)."""
        hook: Callable[..., Any] | None = None
        if type(app).select_certificate is not Proxy.select_certificate:
            hook = app.select_certificate
        self._select_hook = hook

    def set_server(self, server: ServerTls | None) -> None:
        """Install (or replace, on reload) the listener certificates. Handshakes that start
        afterwards use them; open connections keep the context they were made with."""
        if server is not None:
            server.base.sni_callback = self._on_sni
        self.server = server

    # ------------------------------------------------------------------ entry point

    def feed(self, ev: Event) -> list[Action]:
        conn = ev.conn
        st = self.conns.get(conn)
        if st is None:
            t = type(ev)
            if t is Accepted:
                server = self.server
                if server is not None and ev.server[1] in server.ports:  # type: ignore[attr-defined]
                    return self._guarded(ev, None)
            out = self._pass(ev)
            return self._outgoing(out) if self.conns else out
        return self._guarded(ev, st)

    def _pass(self, ev: Event) -> list[Action]:
        inner = self.inner
        if inner is None:
            return self.engine._recorded_feed(ev)  # a direct call when compiled
        return inner(ev)

    def _guarded(self, ev: Event, st: _Tls | None) -> list[Action]:
        """TLS work for one event; a bug here costs that connection, never the worker."""
        try:
            if st is None:
                return self._accept(ev)  # type: ignore[arg-type]
            if st.state != HANDSHAKE:
                t = type(ev)
                if t is DataReceived:
                    return self._data(st, ev.conn, ev.data, ev.now)  # type: ignore[attr-defined]
                if t is Closed:
                    self._forget(ev.conn)
                return self._outgoing(self._pass(ev))
            return self._handshake_event(st, ev)
        except Exception:
            self.engine.log.exception("internal error in the TLS layer while handling %r", ev)
            e = self.engine
            known = type(ev) is not Closed and (ev.conn in e.downstreams or ev.conn in e.upstreams)
            return self._fail(ev.conn, ev.now, "TLS layer error", [], tell_engine=known)

    def _fail(
        self, conn: int, now: float, why: str, first: list[Action], tell_engine: bool = True
    ) -> list[Action]:
        """End an established connection: forget its state, tell the engine it closed (nothing
        it answers for that connection goes out, least of all in clear text), abort it."""
        self.conns.pop(conn, None)
        out = first
        if tell_engine:
            rest = [a for a in self._pass(Closed(conn, now, why)) if a.conn != conn]
            out += self._outgoing(rest)
        out.append(Close(conn, True))
        return out

    def _client_failed(
        self, conn: int, now: float, kind: str, msg: str, first: list[Action], close: bool = True
    ) -> list[Action]:
        """An upstream connection failed before the engine saw Connected: ConnectFailed to the
        engine (which never closes a connection it thinks was not made), Close to the adapter."""
        self.conns.pop(conn, None)
        out = first
        if close:
            out.append(Close(conn, True))
        out += self._outgoing(self._pass(ConnectFailed(conn, now, kind, msg)))
        return out

    # ------------------------------------------------------------------ outgoing

    def _outgoing(self, out: list[Action]) -> list[Action]:
        conns = self.conns
        result: list[Action] | None = None
        for i, a in enumerate(out):
            st = conns.get(a.conn)
            if st is None:
                if result is not None:
                    result.append(a)
                continue
            t = type(a)
            if t is Send:
                if result is None:
                    result = out[:i]
                if st.state == OPEN:
                    try:
                        st.obj.write(a.data)  # type: ignore[attr-defined]
                    except ssl.SSLError as e:  # the session broke: nothing more can be sent
                        self.engine.log.info("TLS write failed on %d: %s", a.conn, _reason(e))
                        st.state = SHUT
                        result.append(Close(a.conn, True))
                        continue
                    data = st.outgoing.read()
                    if data:
                        result.append(Send(a.conn, data))
            elif t is Close or t is ShutdownWrite:
                if result is None:
                    result = out[:i]
                if st.state == OPEN and not getattr(a, "abort", False):
                    self._close_notify(st)
                    data = st.outgoing.read()
                    if data:
                        result.append(Send(a.conn, data))
                if t is Close:
                    self._forget(a.conn)
                result.append(a)
            elif result is not None:
                result.append(a)
        return out if result is None else result

    @staticmethod
    def _close_notify(st: _Tls) -> None:
        st.state = SHUT
        try:
            st.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):
            pass  # the alert is in the outgoing BIO; we do not wait for the peer's

    def _forget(self, conn: int) -> None:
        st = self.conns.pop(conn, None)
        if st is not None and st.client and st.state != HANDSHAKE:
            self._save_session(st)

    def _save_session(self, st: _Tls) -> None:
        try:
            sess = st.obj.session
        except (ValueError, ssl.SSLError):
            return
        if sess is not None and (sess.has_ticket or st.obj.version() == "TLSv1.2"):
            self.sessions[st.key] = sess

    # ------------------------------------------------------------------ reading

    def _read_plain(self, st: _Tls) -> tuple[bytes, bool]:
        """Decrypt what the incoming BIO holds: (plaintext, the peer sent close_notify)."""
        obj = st.obj
        incoming = st.incoming
        chunks: list[bytes] = []
        eof = False
        try:
            while True:
                chunk = obj.read(_READ)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
                if not incoming.pending and not obj.pending():
                    break  # all consumed: spare the SSLWantReadError of one more read
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return data, eof

    def _data(self, st: _Tls, conn: int, data: bytes, now: float) -> list[Action]:
        if st.state == SHUT:
            return []  # after our close_notify, input is discarded (lingering close)
        st.incoming.write(data)
        try:
            plain, eof = self._read_plain(st)
        except ssl.SSLError as e:
            # A corrupt record or a fatal alert from the peer: the session is over.
            self.engine.log.info("TLS error on connection %d: %s", conn, _reason(e))
            return self._fail(conn, now, f"TLS error: {_reason(e)}", self._flush_pre(st, conn))
        pre = self._flush_pre(st, conn)  # TLS 1.3 tickets, key updates, alerts
        out: list[Action] = []
        if plain:
            out = self._pass(DataReceived(conn, plain, now))
        if eof:
            out += self._pass(EofReceived(conn, now))
        if not out:
            return pre
        out = self._outgoing(out)
        return pre + out if pre else out

    def _flush_pre(self, st: _Tls, conn: int) -> list[Action]:
        data = st.outgoing.read()
        return [Send(conn, data)] if data else []

    # ------------------------------------------------------------------ termination

    def _accept(self, ev: Accepted) -> list[Action]:
        server = self.server
        assert server is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = server.base.wrap_bio(incoming, outgoing, server_side=True)
        st = _Tls(obj, incoming, outgoing, client=False)
        st.client_addr, st.server_addr = ev.client, ev.server
        self.conns[ev.conn] = st
        return [SetTimer(ev.conn, ev.now + server.handshake_timeout)]

    def _handshake_event(self, st: _Tls, ev: Event) -> list[Action]:
        conn = ev.conn
        t = type(ev)
        if t is DataReceived:
            data: bytes = ev.data  # type: ignore[attr-defined]
            if not st.client and not st.incoming.pending and _looks_like_http(data):
                return self._plain_http(conn)
            st.incoming.write(data)
            return self._handshake(st, conn, ev.now)
        if t is Connected and st.client:
            return self._handshake(st, conn, ev.now)
        if t is TimerFired and not st.client:
            self.engine.log.info("TLS handshake timeout on connection %d", conn)
            self.conns.pop(conn, None)
            return [Close(conn, False)]
        if t is EofReceived or t is Closed or t is WriteFailed:
            gone = t is Closed  # (the adapter still holds the socket after the other two)
            if st.client:
                msg = "connection closed during the TLS handshake"
                if t is WriteFailed:
                    msg = f"TLS handshake failed: the peer {ev.error}"  # type: ignore[attr-defined]
                return self._client_failed(conn, ev.now, "tls", msg, [], close=not gone)
            self.conns.pop(conn, None)
            return [] if gone else [Close(conn, True)]
        if t is ConnectFailed:
            self.conns.pop(conn, None)
            return self._outgoing(self._pass(ev))
        if st.client:
            return self._outgoing(self._pass(ev))
        return []  # write pause/resume before the engine knows the connection

    def _plain_http(self, conn: int) -> list[Action]:
        self.engine.log.info("plain HTTP request on a TLS port (connection %d)", conn)
        self.conns.pop(conn, None)
        return [SetTimer(conn, None), Send(conn, _PLAIN_HTTP_RESPONSE), Close(conn, False)]

    def _handshake(self, st: _Tls, conn: int, now: float) -> list[Action]:
        if st.error is not None:
            return self._client_failed(conn, now, "tls", st.error, [])
        obj = st.obj
        self._handshaking = st
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            return self._flush_pre(st, conn)
        except (ssl.SSLError, ValueError) as e:
            return self._handshake_failed(st, conn, now, e)
        finally:
            self._handshaking = None
        st.state = OPEN
        pre = self._flush_pre(st, conn)
        if st.client:
            out = self._pass(Connected(conn, now))
        else:
            self.handshakes += 1
            info = TlsInfo(
                version=obj.version(),
                cipher=(obj.cipher() or ("",))[0],
                sni=st.sni,
                alpn=obj.selected_alpn_protocol(),
                session_reused=obj.session_reused,
                client_cert=obj.getpeercert() or None,
                client_cert_der=obj.getpeercert(True),
            )
            pre.insert(0, SetTimer(conn, None))
            out = self._pass(Accepted(conn, now, st.client_addr, st.server_addr, "https", info))
        out = pre + self._outgoing(out)
        if st.incoming.pending:  # data sent right behind the handshake (a request, a ticket)
            out += self._data(st, conn, b"", now)
        return out

    def _handshake_failed(self, st: _Tls, conn: int, now: float, e: BaseException) -> list[Action]:
        out = self._flush_pre(st, conn)  # the alert, if OpenSSL produced one
        reason = _reason(e)
        if st.client:
            kind = "cert" if isinstance(e, ssl.SSLCertVerificationError) else "tls"
            return self._client_failed(conn, now, kind, f"TLS handshake failed: {reason}", out)
        self.conns.pop(conn, None)
        self.failures += 1
        client = st.client_addr
        self.engine.log.info("TLS handshake failed from %s:%s: %s", client[0], client[1], reason)
        out.append(SetTimer(conn, None))
        out.append(Close(conn, False))
        return out

    def _on_sni(self, obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> Any:
        st = self._handshaking
        server = self.server
        if st is None or server is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        st.sni = server_name
        chosen: ssl.SSLContext | None = None
        hook = self._select_hook
        if hook is not None:
            try:
                name = hook(server_name, st.client_addr)
            except Exception:
                self.engine.log.exception("select_certificate raised")
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            if isinstance(name, str):
                chosen = server.named.get(name.lower())
                if chosen is None:
                    self.engine.log.error("select_certificate returned unknown name %r", name)
                    return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            elif name is False:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is None:
            chosen = server.select(server_name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if chosen is not obj.context:
            obj.context = chosen
        return None

    # ------------------------------------------------------------------ origination

    def client_open(self, conn: int, peer: Peer) -> None:
        """Register an upstream connection that will speak TLS (called by the engine when it
        emits Connect). A context that cannot be built fails the connection when it connects
        (ConnectFailed, reason "tls"), like any other handshake failure."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        error: str | None = None
        obj: Any = None
        factory = self.client
        if factory is None:
            error = "TLS to upstreams is not configured in this engine"
        else:
            name = peer.sni if peer.sni is not None else peer.host
            try:
                ctx = factory.get(peer)
                obj = ctx.wrap_bio(
                    incoming,
                    outgoing,
                    server_side=False,
                    server_hostname=name or None,
                    session=self.sessions.get(peer.key),
                )
            except Exception as e:  # a CA bundle or client certificate that cannot be loaded
                error = f"TLS client configuration: {e}"
        st = _Tls(obj, incoming, outgoing, client=True)
        st.error = error
        st.key = peer.key
        self.conns[conn] = st


def _looks_like_http(data: bytes) -> bool:
    """A TLS record starts with 0x16 (handshake); an HTTP request with an ASCII method."""
    head = data[:8]
    return bool(head) and head[0] != 0x16 and head.split(b" ", 1)[0].isalpha()


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason).lower().replace("_", " ")
    return str(e) or type(e).__name__
