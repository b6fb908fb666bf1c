"""Building SSL contexts from certificate files (start-up and reload; not the core).

Theory of operation: this module reads files and the clock, so it sits beside the core, like
``cli.py``: the adapters call :func:`load_server_tls` when they start and on SIGHUP, and hand
the result to the engine (whose TLS layer, :mod:`proxycore.tls`, only ever touches memory BIOs).
:class:`ClientContextCache` builds one client context per distinct set of upstream TLS
parameters, on first use, and keeps it.

Why the standard ``ssl`` module rather than pyOpenSSL: ``ssl.SSLObject`` over ``MemoryBIO`` is
OpenSSL's sans-I/O mode, with SNI selection (``sni_callback`` switching ``SSLObject.context``),
client-certificate verification, ALPN, TLS 1.3 session tickets and session reuse on the client,
everywhere Python runs, with no extra dependency (pyOpenSSL's own documentation steers new code
to ``ssl`` and ``cryptography``). ``cryptography`` reads certificate expiry dates, which ``ssl``
cannot do for a file without a handshake.

Server settings follow Mozilla's "intermediate" profile (v5.7): TLS 1.2 and 1.3 only; for 1.2,
ECDHE (and DHE) with AES-GCM or ChaCha20-Poly1305; the client's cipher order; no compression;
no renegotiation; session tickets on (resumption).
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxycore.config import TlsSettings
from proxycore.peer import Peer
from proxycore.tls import ServerTls

__all__ = [
    "INTERMEDIATE_CIPHERS",
    "ClientContextCache",
    "TlsConfigError",
    "check_certificate",
    "load_server_tls",
]

# Mozilla intermediate configuration, TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)


class TlsConfigError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} {path!r}: no such file") from None
    except PermissionError:
        raise TlsConfigError(f"{what} {path!r}: permission denied") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{what} {path!r}: is a directory") from None
    except OSError as e:
        raise TlsConfigError(f"{what} {path!r}: {e.strerror or e}") from None


def check_certificate(path: str, now: datetime.datetime | None = None) -> None:
    """Raise TlsConfigError if the first certificate in ``path`` is unreadable, not PEM, not
    yet valid or expired."""
    from cryptography import x509

    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsConfigError(f"certificate {path!r}: not a PEM certificate ({e})") from None
    now = now or datetime.datetime.now(datetime.UTC)
    leaf = certs[0]
    if leaf.not_valid_after_utc < now:
        raise TlsConfigError(
            f"certificate {path!r}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise TlsConfigError(
            f"certificate {path!r}: not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


def _no_passphrase(what: str) -> Callable[[], str]:
    """A password callback for load_cert_chain: without one, OpenSSL would prompt for the pass
    phrase of an encrypted key on the terminal."""

    def refuse() -> str:
        raise TlsConfigError(f"{what} is encrypted; give an unencrypted key file")

    return refuse


def _load_cert_chain(ctx: ssl.SSLContext, cert: str, key: str, what: str, key_what: str) -> None:
    """``ctx.load_cert_chain(cert, key)`` (OpenSSL decides what loads), with its failures in
    words naming the file: a key that does not match, a key file that holds no usable
    private key (OpenSSL's own words for that are ``[SSL] PEM lib``), an encrypted key."""
    data = _read(key, key_what)
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase(f"{key_what} {key!r}"))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise TlsConfigError(f"{what} {cert!r} and {key_what} {key!r} do not match") from None
        if not _holds_private_key(data):
            raise TlsConfigError(
                f"{key_what} {key!r} holds no usable private key (expected a PEM private key, "
                "-----BEGIN ... PRIVATE KEY-----)"
            ) from None
        raise TlsConfigError(f"{what} {cert!r} / {key_what} {key!r}: {e}") from None


def _holds_private_key(data: bytes) -> bool:
    """Whether ``data`` holds a PEM private key that ``cryptography`` can load (asked only
    after OpenSSL refused the pair, to say which file is at fault)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: usable with its pass phrase (refused with its own message)
        return True
    except Exception:  # ValueError, UnsupportedAlgorithm: not a key cryptography can read
        return False
    return True


def _server_context(settings: TlsSettings, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # intermediate: the client's order
    if settings.alpn:
        ctx.set_alpn_protocols(list(settings.alpn))
    if cert is not None:
        if key is None:
            raise TlsConfigError(f"certificate {cert!r}: no key file given")
        check_certificate(cert)
        _load_cert_chain(ctx, cert, key, "certificate", "key")
    if settings.client_auth != "none":
        assert settings.client_ca is not None  # checked by load_server_tls
        try:
            ctx.load_verify_locations(cafile=settings.client_ca)
        except ssl.SSLError as e:
            raise TlsConfigError(f"client CA {settings.client_ca!r}: {e}") from None
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
        )
    return ctx


def load_server_tls(settings: TlsSettings, h2: bool = True) -> ServerTls:
    """Read every certificate and key in ``settings`` and build the contexts; raises
    TlsConfigError naming the first file that cannot be used. ``h2`` False (``--no-h2``):
    ALPN does not offer ``h2`` (RFC 9113 §3.2)."""
    if not h2 and "h2" in settings.alpn:
        settings = replace(settings, alpn=tuple(p for p in settings.alpn if p != "h2"))
    if settings.cert is None and not settings.sni_certs:
        raise TlsConfigError("TLS needs a certificate (cert/key or at least one SNI certificate)")
    if settings.client_auth not in ("none", "optional", "required"):
        raise TlsConfigError(
            f"client_auth must be none, optional or required, not {settings.client_auth!r}"
        )
    if settings.client_auth != "none":
        if not settings.client_ca:
            raise TlsConfigError("client certificate verification needs a CA bundle (client_ca)")
        _read(settings.client_ca, "client CA")
    named: dict[str, ssl.SSLContext] = {}
    for name, (cert, key) in settings.sni_certs.items():
        if not name or name != name.strip() or "*" in name.lstrip("*."):
            raise TlsConfigError(f"invalid certificate name {name!r}")
        named[name.lower()] = _server_context(settings, cert, key)
    if settings.cert is not None:
        base = _server_context(settings, settings.cert, settings.key)
    else:
        base = _server_context(settings, None, None)  # no default: unknown names are refused
    return ServerTls(
        base,
        named,
        has_default=settings.cert is not None,
        ports=set(settings.ports),
        handshake_timeout=settings.handshake_timeout,
    )


class ClientContextCache:
    """Client SSL contexts for upstream peers, one per distinct set of TLS parameters
    (verification, CA bundle, client certificate, ALPN); implements
    :class:`proxycore.tls.ClientContexts`."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], ssl.SSLContext] = {}

    def get(self, peer: Peer) -> ssl.SSLContext:
        params = (peer.verify, peer.verify_hostname, peer.ca, peer.client_cert, peer.alpn)
        ctx = self._cache.get(params)
        if ctx is None:
            ctx = self._cache[params] = self.build(peer)
        return ctx

    @staticmethod
    def build(peer: Peer) -> ssl.SSLContext:
        if peer.verify:
            if peer.ca is not None:
                _read(peer.ca, "upstream CA")
            ctx = ssl.create_default_context(cafile=peer.ca)
            ctx.check_hostname = peer.verify_hostname
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if peer.client_cert is not None:
            cert, key = peer.client_cert
            _read(cert, "upstream client certificate")
            _load_cert_chain(ctx, cert, key, "upstream client certificate", "upstream client key")
        if peer.alpn:
            ctx.set_alpn_protocols(list(peer.alpn))
        return ctx
