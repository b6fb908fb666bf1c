"""Session traces: the recorded inputs (and outputs) of one downstream connection.

Theory of operation: when a :class:`Recorder` is attached to an engine, every event fed to the
engine is attributed to the downstream connection it concerns (directly, or through the upstream
connection its request owns) and appended, with its time, to that connection's trace, followed
by the pool's answers during that event (which idle connection, if any, was reused) and the
actions the event produced for that connection and its upstreams. When the downstream connection
is gone, the finished trace is handed to a ``sink`` callable (the adapter writes it to a file;
this module does no I/O). Because the core is deterministic given its inputs, feeding the events
of a trace to a fresh engine running the same proxy class reproduces the recorded actions byte
for byte (:mod:`proxycore.replay`).

Format, version 1 (all integers little-endian)::

    file    := MAGIC  u32:header_len  header  record*
    MAGIC   := b"PCTRACE\\n"
    header  := UTF-8 JSON object: format, version, proxycore, app, app_version, conf, conn,
               and ``h2`` (the version of the HTTP/2 framing) in the trace of an HTTP/2 connection
    record  := u8:kind  u32:conn  f64:now  u32:payload_len  payload

Kinds 1-15 are events, 64-79 actions, 96 a pool answer (``conn`` = the reused upstream id, or
0 for "no idle connection"). A group is one event record followed by its pool answers and
action records. DataReceived and Send payloads are the raw bytes; other payloads are small JSON
values. Readers must reject a ``version`` they do not know.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxycore._version import __version__
from proxycore.actions import (
    Action,
    Close,
    Connect,
    PauseReading,
    ResumeReading,
    RunFilter,
    Send,
    SetTimer,
    ShutdownWrite,
)
from proxycore.config import ServerConf, TlsSettings
from proxycore.errors import ErrorSource, ErrorType, ProxyError
from proxycore.events import (
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    DataReceived,
    Drain,
    EofReceived,
    Event,
    FilterDone,
    Stop,
    TimerFired,
    WriteFailed,
    WritePaused,
    WriteResumed,
)
from proxycore.h1.parse import Limits
from proxycore.http import Headers
from proxycore.peer import PEER_OPTIONS, Peer
from proxycore.tls import TlsInfo

if TYPE_CHECKING:
    from proxycore.engine import Engine

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Recorder",
    "conf_from_json",
    "conf_to_json",
    "decode_value",
    "encode_action",
    "encode_value",
]

MAGIC = b"PCTRACE\n"
FORMAT_VERSION = 1
RECORD = struct.Struct("<BIdI")
POOL_ANSWER = 96

EVENT_KINDS: dict[type[Event], int] = {
    Accepted: 1, DataReceived: 2, EofReceived: 3, Closed: 4, Connected: 5, ConnectFailed: 6,
    WritePaused: 7, WriteResumed: 8, TimerFired: 9, FilterDone: 10, Drain: 11, WriteFailed: 12,
    Stop: 13,
}  # fmt: skip
ACTION_KINDS: dict[type[Action], int] = {
    Send: 64, Close: 65, ShutdownWrite: 66, Connect: 67, PauseReading: 68, ResumeReading: 69,
    SetTimer: 70, RunFilter: 71,
}  # fmt: skip


# ---------------------------------------------------------------- values (filter results)


def encode_value(v: Any) -> Any:
    """A JSON-able form of a filter result (what FilterDone carries)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, Peer):
        return {"$peer": peer_to_json(v)}
    if isinstance(v, ProxyError):
        return {"$proxy_error": [v.etype.value, v.source.value, v.message, v.status, v.retry]}
    if isinstance(v, Headers):
        return {"$headers": v.items()}
    if isinstance(v, (list, tuple)):
        return [encode_value(x) for x in v]
    if isinstance(v, BaseException):
        return {"$exception": [type(v).__name__, str(v)]}
    return {"$unreplayable": f"{type(v).__module__}.{type(v).__qualname__}: {v!r}"[:300]}


class RecordedException(Exception):
    """Stands in, during a replay, for an exception a deferred filter raised when recorded."""


def decode_value(v: Any) -> Any:
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "$bytes" in v:
        return base64.b64decode(v["$bytes"])
    if "$peer" in v:
        return peer_from_json(v["$peer"])
    if "$proxy_error" in v:
        etype, source, message, status, retry = v["$proxy_error"]
        err = ProxyError(ErrorType(etype), ErrorSource(source), message, status=status)
        err.retry = retry
        return err
    if "$headers" in v:
        return Headers([tuple(x) for x in v["$headers"]])
    if "$exception" in v:
        name, message = v["$exception"]
        return RecordedException(f"{name}: {message}")
    raise ValueError(f"cannot replay a filter result that was not recordable: {v}")


# Explicit field lists (compiled classes have no __slots__ attribute to read them from).
_PEER_FIELDS = ("host", "port", *PEER_OPTIONS)
_LIMIT_FIELDS = ("max_request_line", "max_header_bytes", "max_headers", "max_chunk_line")


def peer_to_json(p: Peer) -> dict[str, Any]:
    d = {s: getattr(p, s) for s in _PEER_FIELDS}
    if d["bind_to"] is None:
        del d["bind_to"]  # as traces recorded before the option existed
    return d


def peer_from_json(d: dict[str, Any]) -> Peer:
    host, port = d.pop("host"), d.pop("port")
    if d.get("alpn") is not None:
        d["alpn"] = tuple(d["alpn"])
    return Peer(host, port, **{k: v for k, v in d.items() if k in _PEER_FIELDS})


def conf_to_json(conf: ServerConf) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in conf.__dataclass_fields__:
        v = getattr(conf, name)
        if isinstance(v, Limits):
            v = {s: getattr(v, s) for s in _LIMIT_FIELDS}
        elif isinstance(v, TlsSettings):
            v = {s: getattr(v, s) for s in TlsSettings.__dataclass_fields__}
        out[name] = v
    return out


def conf_from_json(d: dict[str, Any]) -> ServerConf:
    known = {k: v for k, v in d.items() if k in ServerConf.__dataclass_fields__}
    # Recorded before the setting existed: such fields were forwarded then, so replay that.
    known.setdefault("headers_with_underscores", "allow")
    if isinstance(known.get("limits"), dict):
        known["limits"] = Limits(**known["limits"])
    if isinstance(known.get("tls"), dict):
        t = {k: v for k, v in known["tls"].items() if k in TlsSettings.__dataclass_fields__}
        t["sni_certs"] = {k: tuple(v) for k, v in t.get("sni_certs", {}).items()}
        t["alpn"] = tuple(t.get("alpn", ()))
        known["tls"] = TlsSettings(**t)
    return ServerConf(**known)


# ---------------------------------------------------------------- events and actions


def encode_event(ev: Event) -> tuple[int, bytes]:
    t = type(ev)
    kind = EVENT_KINDS[t]
    if t is DataReceived:
        d: Any = ev
        return kind, d.data
    if t is Accepted:
        a: Any = ev
        payload: Any = [list(a.client), list(a.server), a.scheme]
        if a.tls is not None:
            payload.append(a.tls.to_json())
    elif t is Closed or t is WriteFailed:
        c: Any = ev
        payload = c.error
    elif t is ConnectFailed:
        cf: Any = ev
        payload = [cf.reason, cf.message]
    elif t is Stop:
        st: Any = ev
        payload = st.grace
    elif t is FilterDone:
        f: Any = ev
        payload = {"token": f.token, "result": encode_value(f.result)}
        if f.error is not None:
            payload["error"] = encode_value(f.error)
    else:
        return kind, b""
    return kind, json.dumps(payload, separators=(",", ":")).encode()


def decode_event(kind: int, conn: int, now: float, payload: bytes) -> Event:
    if kind == 2:
        return DataReceived(conn, payload, now)
    v: Any = json.loads(payload) if payload else None
    if kind == 1:
        tls = TlsInfo.from_json(v[3]) if len(v) > 3 and v[3] is not None else None
        return Accepted(conn, now, (v[0][0], v[0][1]), (v[1][0], v[1][1]), v[2], tls)
    if kind == 4:
        return Closed(conn, now, v)
    if kind == 12:
        return WriteFailed(conn, now, v)
    if kind == 13:
        return Stop(conn, now, float(v))
    if kind == 6:
        return ConnectFailed(conn, now, v[0], v[1])
    if kind == 10:
        err = decode_value(v["error"]) if "error" in v else None
        result = None if err is not None else decode_value(v["result"])
        return FilterDone(conn, v["token"], now, result, err)
    simple: dict[int, type[Event]] = {
        3: EofReceived, 5: Connected, 7: WritePaused, 8: WriteResumed, 9: TimerFired, 11: Drain,
    }  # fmt: skip
    if kind not in simple:
        raise ValueError(f"unknown event kind {kind}")
    return simple[kind](conn, now)


def encode_action(a: Action) -> tuple[int, int, bytes]:
    """(kind, conn, payload): the comparable form of an action (RunFilter's callable and
    SetTimer's exact deadline float are kept; the callable is not)."""
    t = type(a)
    kind = ACTION_KINDS[t]
    conn = a.conn
    x: Any = a
    if t is Send:
        return kind, conn, x.data
    if t is Close:
        return kind, conn, b"1" if x.abort else b"0"
    if t is Connect:
        payload: Any = peer_to_json(x.peer)
        if x.bind:  # the source address (client_bind_to_ipv4/6); absent when the setting is off
            payload["bind"] = list(x.bind)
    elif t is SetTimer:
        payload = x.deadline
    elif t is RunFilter:
        payload = [x.token, x.kind]
    else:
        return kind, conn, b""
    return kind, conn, json.dumps(payload, separators=(",", ":")).encode()


# ---------------------------------------------------------------- recording


class _Open:
    __slots__ = ("buf", "head", "ids")

    def __init__(self, header: bytes, owner: int) -> None:
        self.buf = bytearray(MAGIC)
        self.buf += struct.pack("<I", len(header))
        self.buf += header
        self.head = len(self.buf)  # where the header ends (0 once handed to the sink)
        self.ids = {owner}


def h2_version() -> str | None:
    """The version of what frames HTTP/2: proxycore's own connection
    (:data:`proxycore.h2.connection.FRAMING`; traces recorded before it name the ``h2``
    library's version)."""
    from proxycore.h2.connection import FRAMING

    return FRAMING


class Recorder:
    """Attach with ``engine.recorder = Recorder(engine, sink)``.

    ``sink(conn_id, data)`` receives each connection's trace in order: a long-lived connection's
    trace is handed over in pieces whenever more than ``flush_bytes`` are pending (so recording
    never holds more than that per connection), the rest when it ends. Concatenating the pieces
    for one connection gives the trace file."""

    flush_bytes = 262144

    def __init__(
        self, engine: Engine, sink: Callable[[int, bytes], None], *, backend: str = ""
    ) -> None:
        self._backend = backend
        self._header_base: dict[str, Any] = {}
        self.describe(engine)
        self.sink = sink
        self.open: dict[int, _Open] = {}
        self._pool: list[int] = []
        self._h2: set[int] = set()  # connections that became HTTP/2 before their first record

    def pool_answer(self, up_id: int) -> None:
        self._pool.append(up_id)

    def http2(self, conn: int) -> None:
        """Connection ``conn`` speaks HTTP/2 (ALPN, or the preface before its first request):
        its trace's header names the version of the HTTP/2 framing of its output (a replay
        under another version says so, :mod:`proxycore.replay`)."""
        t = self.open.get(conn)
        if t is None:
            self._h2.add(conn)  # (its Accepted is being recorded: _write adds the field)
            return
        if not t.head:
            return  # the header was handed over already (not for a preface: it comes first)
        (hlen,) = struct.unpack_from("<I", t.buf, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(bytes(t.buf[start : start + hlen]))
        header["h2"] = h2_version()
        data = json.dumps(header).encode()
        t.buf[len(MAGIC) : t.head] = struct.pack("<I", len(data)) + data
        t.head = start + len(data)

    def describe(self, engine: Engine) -> None:
        """The header of the traces that begin from now on: the engine's app and conf (again
        after a reload; a connection's trace keeps the header it began with)."""
        app = engine.app
        cls = type(app)
        self._header_base = {
            "format": "proxycore-trace",
            "version": FORMAT_VERSION,
            "proxycore": __version__,
            "app": f"{cls.__module__}:{cls.__qualname__}",
            "app_version": getattr(app, "version", None),
            "app_init": app.trace_init() if hasattr(app, "trace_init") else None,
            "backend": self._backend,
            "conf": conf_to_json(engine.conf),
        }

    def _owner(self, engine: Engine, ev: Event) -> int | None:
        conn = ev.conn
        if conn in engine.downstreams or type(ev) is Accepted:
            return conn
        up = engine.upstreams.get(conn)
        if up is not None and up.session is not None:
            owner: int = up.session.client_conn()
            return owner
        if type(ev) is ConnectFailed:
            for owner, t in self.open.items():
                if conn in t.ids:
                    return owner
        return None

    def feed(self, engine: Engine, ev: Event) -> list[Action]:
        owner = self._owner(engine, ev)
        self._pool = []
        actions = engine._feed(ev)
        if type(ev) is Drain or type(ev) is Stop:  # every open trace sees it
            for o in list(self.open):
                self._write(engine, o, ev, actions)
            return actions
        if owner is not None:
            self._write(engine, owner, ev, actions)
        return actions

    def _write(self, engine: Engine, owner: int, ev: Event, actions: list[Action]) -> None:
        t = self.open.get(owner)
        if t is None:
            if type(ev) is not Accepted:
                return  # a connection accepted before recording began
            header = dict(self._header_base, conn=owner)
            if owner in self._h2:
                self._h2.discard(owner)
                header["h2"] = h2_version()
            t = self.open[owner] = _Open(json.dumps(header).encode(), owner)
        buf = t.buf
        pack = RECORD.pack
        now = ev.now
        if type(ev) is DataReceived:  # the common case, inline
            data = ev.data
            buf += pack(2, ev.conn, now, len(data))
            buf += data
        else:
            kind, payload = encode_event(ev)
            buf += pack(kind, ev.conn, now, len(payload))
            buf += payload
        ids = t.ids
        if self._pool:
            for up_id in self._pool:
                buf += pack(POOL_ANSWER, up_id, now, 0)
                if up_id:
                    ids.add(up_id)
        for a in actions:
            ta = type(a)
            if ta is Send:  # the common case, inline
                if a.conn in ids:
                    data = a.data  # type: ignore[attr-defined]
                    buf += pack(64, a.conn, now, len(data))
                    buf += data
                continue
            if ta is Connect:
                ids.add(a.conn)
            if a.conn in ids:
                k, c, p = encode_action(a)
                buf += pack(k, c, now, len(p))
                buf += p
        if owner not in engine.downstreams:
            del self.open[owner]
            self.sink(owner, bytes(buf))
        elif len(buf) > self.flush_bytes:
            self.sink(owner, bytes(buf))
            buf.clear()
            t.head = 0

    def flush_all(self) -> None:
        """Hand over what is pending of unfinished traces (at shutdown)."""
        for owner, t in list(self.open.items()):
            if t.buf:
                self.sink(owner, bytes(t.buf))
        self.open.clear()
