"""TLS: the throwaway ECDSA certificate (make_tls_files), the wrk no-resume shim for full
handshakes (build_noresume_shim), and HandshakeProbe, a TCP relay that classifies each server
flight (classify_server_flight: full or resumed handshake) from the TLS records it relays."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from .common import HOST
from .install import _find

# --------------------------------------------------------------------------- TLS

TLS_CERT_DESC = "ECDSA P-256 (secp256r1) leaf, ecdsa-with-SHA256, signed by a throwaway CA"


def make_tls_files(workdir: Path) -> dict[str, Any]:
    """One ECDSA P-256 server certificate (+ its CA) for the whole run, valid for
    127.0.0.1 and localhost; every TLS target is given the same files."""
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    d = workdir / "tls"
    d.mkdir()
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)
    cert, key, cafile = d / "server.crt", d / "server.key", d / "ca.crt"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    cafile.write_bytes(ca.cert_pem.bytes())
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    pub = c.public_key()
    if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
        raise RuntimeError(f"trustme made a {type(pub).__name__} key, expected ECDSA P-256")
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "cert": str(cert),
        "key": str(key),
        "ca": str(cafile),
        "description": TLS_CERT_DESC,
        "san": [str(n.value) for n in san],
        "generated_by": f"trustme {trustme.__version__}",
    }


# LD_PRELOAD shim for wrk: wrk keeps one SSL object per connection slot and calls
# SSL_shutdown + SSL_clear before reconnecting, which keeps the session, so every
# reconnect resumes it (TLS 1.3 PSK from a session ticket) instead of doing a full
# handshake. The shim drops the session after SSL_clear -> full handshake every time.
_NORESUME_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
typedef struct ssl_st SSL;
int SSL_clear(SSL *s) {
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, void *);
    if (!real_clear) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    int r = real_clear(s);
    if (set_session)
        set_session(s, NULL);
    return r;
}
"""


def build_noresume_shim(workdir: Path) -> tuple[str | None, str]:
    """Compile the shim with cc; (path, "") or (None, why not)."""
    cc = _find("cc") or _find("gcc")
    if not cc:
        return None, "no C compiler (cc) for the wrk no-resume shim: full handshakes not measured"
    src, so = workdir / "wrk_noresume.c", workdir / "wrk_noresume.so"
    src.write_text(_NORESUME_C)
    r = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None, f"building the wrk no-resume shim failed: {r.stderr.strip()[-300:]}"
    return str(so), ""


_TLS_VERSIONS = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0x0302: "TLSv1.1", 0x0301: "TLSv1"}
_TLS_CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS_GROUPS = {0x001D: "x25519", 0x0017: "secp256r1", 0x0018: "secp384r1", 0x001E: "x448"}


def classify_server_flight(data: bytes) -> dict[str, Any] | None:
    """Classify a TLS handshake from the first bytes the *server* sent (its plaintext
    part): None = need more bytes. TLS 1.3: resumed iff the ServerHello carries
    pre_shared_key (41). TLS 1.2: full iff a Certificate (11) comes before the
    ChangeCipherSpec record."""
    hs, pos, ccs = b"", 0, False
    while pos + 5 <= len(data):
        ctype, length = data[pos], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(data):
            break
        frag, pos = data[pos + 5 : pos + 5 + length], pos + 5 + length
        if ctype == 22:
            hs += frag
        elif ctype == 21:
            return {"kind": "alert"}
        else:  # 20 ChangeCipherSpec, 23 encrypted: the plaintext handshake is over
            ccs = True
            break
    info: dict[str, Any] = {}
    i = 0
    while i + 4 <= len(hs):
        mtype, mlen = hs[i], int.from_bytes(hs[i + 1 : i + 4], "big")
        if i + 4 + mlen > len(hs):
            return None
        body, i = hs[i + 4 : i + 4 + mlen], i + 4 + mlen
        if mtype == 2:  # ServerHello
            version = int.from_bytes(body[0:2], "big")
            j = 34 + 1 + body[34]  # version, random, session id
            cipher = int.from_bytes(body[j : j + 2], "big")
            j += 3  # cipher suite, compression
            exts: dict[int, bytes] = {}
            end = j + 2 + int.from_bytes(body[j : j + 2], "big") if j + 2 <= len(body) else j
            j += 2
            while j + 4 <= end:
                et, el = (
                    int.from_bytes(body[j : j + 2], "big"),
                    int.from_bytes(body[j + 2 : j + 4], "big"),
                )
                exts[et] = body[j + 4 : j + 4 + el]
                j += 4 + el
            if exts.get(43, b"")[:2] == b"\x03\x04":
                version = 0x0304
            info = {
                "version": _TLS_VERSIONS.get(version, hex(version)),
                "cipher": _TLS_CIPHERS.get(cipher, hex(cipher)),
            }
            if 51 in exts:
                group = int.from_bytes(exts[51][:2], "big")
                info["group"] = _TLS_GROUPS.get(group, hex(group))
            if version == 0x0304:
                return {**info, "kind": "resumed" if 41 in exts else "full"}
        elif mtype == 11 and info:  # TLS 1.2 Certificate: a full handshake
            return {**info, "kind": "full"}
    if ccs and info:  # TLS 1.2 abbreviated handshake: no Certificate before CCS
        return {**info, "kind": "resumed"}
    return {"kind": "unknown"} if ccs else None


class HandshakeProbe:
    """A TCP relay on 127.0.0.1 (asyncio, in a thread of this harness) in front of one TLS
    target. It counts the connections a client opens through it and classifies each
    one's handshake (resumed / full, version, cipher, group) from the server's plaintext
    ServerHello. Used with a short wrk run to check what wrk really does."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.connections = 0
        self.kinds: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self.upstream_errors = 0

    def __enter__(self) -> HandshakeProbe:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, HOST, 0, backlog=1024), self.loop
        ).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            self.server.close()
            # wrk has exited, so every relayed connection ends within ~1 s (see _handle);
            # loop, as a connection still in the accept queue may start a handler late.
            deadline = time.monotonic() + 3
            while tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                _, pending = await asyncio.wait(
                    tasks, timeout=max(0.1, deadline - time.monotonic())
                )
                if pending and time.monotonic() >= deadline:
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _record(self, res: dict[str, Any]) -> None:
        kind = res.get("kind", "unknown")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if "version" in res:
            p = " ".join(str(res[k]) for k in ("version", "cipher", "group") if k in res)
            self.params[p] = self.params.get(p, 0) + 1

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            ur, uw = await asyncio.open_connection(HOST, self.target)
        except OSError:
            self.upstream_errors += 1
            cw.close()
            return

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, inspect: bool) -> None:
            buf, done = b"", not inspect
            try:
                while data := await r.read(65536):
                    if not done:
                        buf += data
                        res = classify_server_flight(buf)
                        if res is not None or len(buf) > 65536:
                            self._record(res or {"kind": "unknown"})
                            done = True
                    w.write(data)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()
            except (OSError, RuntimeError):
                pass
            finally:
                if not done:
                    self._record({"kind": "unknown" if buf else "no-handshake"})

        pipes = [
            asyncio.ensure_future(pipe(cr, uw, False)),
            asyncio.ensure_future(pipe(ur, cw, True)),
        ]
        try:
            # When one side is done, give the other 1 s (e.g. wrk closed a connection it
            # opened as it stopped and the server waits for a ClientHello): no stragglers.
            _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=1)
        except asyncio.CancelledError:
            pass  # shutting down; returning normally keeps asyncio from logging it
        finally:
            for t in pipes:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pipes, return_exceptions=True)
            for w in (cw, uw):
                w.close()

    def result(self, requests: int) -> dict[str, Any]:
        # "no-handshake": opened as wrk stopped, closed before the server said anything
        n = sum(v for k, v in self.kinds.items() if k != "no-handshake")
        resumed = self.kinds.get("resumed", 0)
        share = resumed / n if n else None
        if share is None:
            kind = "none"
        else:
            kind = "resumed" if share >= 0.95 else "full" if share <= 0.05 else "mixed"
        return {
            "connections": self.connections,
            "requests": requests,
            "handshakes": dict(self.kinds),
            "resumed_share": None if share is None else round(share, 4),
            "kind": kind,
            "negotiated": dict(self.params),
            "upstream_errors": self.upstream_errors,
        }
