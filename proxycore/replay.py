"""Replaying a recorded session trace against a proxy class, with no network.

Theory of operation: :func:`load_trace` parses a trace (see :mod:`proxycore.trace` for the
format) into groups of (event, pool answers, recorded actions). :func:`replay` builds a
:class:`ReplayEngine` — an ordinary engine whose three sources of non-determinism are taken from
the trace instead: upstream connection ids and filter tokens are handed out in the order they
were recorded, and the pool answers "which idle connection is reused" as it did then. It then
feeds every recorded event (re-running the user's plain-function phases; deferred phases get
their recorded results) and compares the actions for the recorded connections with the recorded
actions. The first difference is reported with the event, the expected and the actual actions,
and a hexdump diff of the bytes.

Cross-adapter comparisons use :func:`normalized`, which joins bytes per connection so that how
an adapter chunked its reads does not matter, while content and order still do.
"""

from __future__ import annotations

import difflib
import json
import struct
from collections import deque
from collections.abc import Iterable
from typing import Any

from proxycore.actions import RunFilter
from proxycore.config import ServerConf
from proxycore.engine import Engine, NullLog
from proxycore.events import DataReceived, Event
from proxycore.peer import Peer
from proxycore.phases import Proxy
from proxycore.trace import (
    FORMAT_VERSION,
    MAGIC,
    POOL_ANSWER,
    RECORD,
    conf_from_json,
    decode_event,
    encode_action,
    h2_version,
)
from proxycore.upstream import IDLE, Upstream

__all__ = [
    "ReplayEngine",
    "ReplayResult",
    "Trace",
    "TraceError",
    "hexdump_diff",
    "load_trace",
    "normalized",
    "replay",
]

EncodedAction = tuple[int, int, bytes]
_ACTION_NAMES = {
    64: "Send", 65: "Close", 66: "ShutdownWrite", 67: "Connect", 68: "PauseReading",
    69: "ResumeReading", 70: "SetTimer", 71: "RunFilter",
}  # fmt: skip


class TraceError(Exception):
    """A trace that cannot be used: truncated, corrupted, from an unknown format version, or
    recorded with another proxy class. The message names the trace and the problem."""


class Group:
    __slots__ = ("actions", "event", "pool")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.pool: list[int] = []
        self.actions: list[EncodedAction] = []


class Trace:
    """A parsed trace: its header (a dict) and its groups."""

    def __init__(self, name: str, header: dict[str, Any], groups: list[Group]) -> None:
        self.name = name
        self.header = header
        self.groups = groups

    @property
    def app(self) -> str:
        return str(self.header.get("app", ""))

    @property
    def conf(self) -> ServerConf:
        return conf_from_json(self.header.get("conf") or {})


def load_trace(data: bytes, name: str = "<trace>") -> Trace:
    """Parse trace bytes; raises :class:`TraceError` naming ``name`` and the problem."""
    if not data.startswith(MAGIC):
        raise TraceError(f"{name}: not a proxycore trace (bad magic)")
    pos = len(MAGIC)
    if len(data) < pos + 4:
        raise TraceError(f"{name}: truncated (no header)")
    (hlen,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if len(data) < pos + hlen:
        raise TraceError(f"{name}: truncated header")
    try:
        header = json.loads(data[pos : pos + hlen])
    except ValueError as e:
        raise TraceError(f"{name}: corrupted header ({e})") from None
    pos += hlen
    if not isinstance(header, dict) or header.get("format") != "proxycore-trace":
        raise TraceError(f"{name}: header is not a proxycore trace header")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise TraceError(
            f"{name}: trace format version {version!r}; this proxycore reads version "
            f"{FORMAT_VERSION} (recorded by proxycore {header.get('proxycore')})"
        )
    groups: list[Group] = []
    size = RECORD.size
    n = len(data)
    index = 0
    while pos < n:
        if n - pos < size:
            raise TraceError(f"{name}: truncated record #{index} at byte {pos}")
        kind, conn, now, plen = RECORD.unpack_from(data, pos)
        pos += size
        if n - pos < plen:
            raise TraceError(f"{name}: truncated record #{index} at byte {pos - size}")
        payload = data[pos : pos + plen]
        pos += plen
        try:
            if kind < 64:
                groups.append(Group(decode_event(kind, conn, now, payload)))
            elif not groups:
                raise ValueError("an action or pool answer before any event")
            elif kind == POOL_ANSWER:
                groups[-1].pool.append(conn)
            elif kind in _ACTION_NAMES:
                groups[-1].actions.append((kind, conn, payload))
            else:
                raise ValueError(f"unknown record kind {kind}")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise TraceError(f"{name}: corrupted record #{index} at byte {pos}: {e}") from None
        index += 1
    return Trace(name, header, groups)


class ReplayEngine(Engine):
    """An engine whose ids, tokens and pool answers come from a recording."""

    def __init__(self, app: Proxy, conf: ServerConf, trace: Trace, logger: Any = None) -> None:
        super().__init__(app, conf, logger, tls=False)  # traces hold plaintext
        self._ids: deque[int] = deque()
        self._tokens: deque[int] = deque()
        self._pool_answers: deque[int] = deque()
        self._fresh = 1 << 30
        for g in trace.groups:
            self._pool_answers.extend(g.pool)
            for kind, conn, payload in g.actions:
                if kind == 67:
                    self._ids.append(conn)
                elif kind == 71:
                    self._tokens.append(json.loads(payload)[0])

    def _fresh_id(self) -> int:
        self._fresh += 1
        return self._fresh

    def new_id_upstream(self) -> int:
        return self._ids.popleft() if self._ids else self._fresh_id()

    def new_token(self) -> int:
        return self._tokens.popleft() if self._tokens else self._fresh_id()

    def acquire_upstream(self, peer: Peer) -> Upstream | None:
        up_id = self._pool_answers.popleft() if self._pool_answers else 0
        if not up_id:
            return None
        up = self.upstreams.get(up_id)
        if up is None or up.state != IDLE:
            # The connection was opened by another client connection in the recording.
            up = Upstream(up_id, peer, self.now)
            self.upstreams[up_id] = up
        else:
            self.pool.discard(up)
        up.state = IDLE
        return up


class ReplayResult:
    """The outcome of a replay: ``ok``, and on a difference where and what."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.ok = True
        self.index = -1
        self.event: Event | None = None
        self.expected: list[EncodedAction] = []
        self.actual: list[EncodedAction] = []
        self.events = 0
        self.all_actual: list[tuple[Event, list[EncodedAction]]] = []
        self.note = version_note(trace)

    def __bool__(self) -> bool:
        return self.ok

    def report(self) -> str:
        """A readable account of the first divergence (or of success)."""
        note = f"\n  note: {self.note}" if self.note else ""
        if self.ok:
            return (
                f"{self.trace.name}: OK ({self.events} events replayed, actions identical)" + note
            )
        lines = [
            f"{self.trace.name}: DIVERGED at event #{self.index} of {len(self.trace.groups)}"
            + note,
            f"  event:    {_describe_event(self.event)}",
            "  expected actions:",
            *[f"    {describe_action(a)}" for a in self.expected],
            "  actual actions:",
            *[f"    {describe_action(a)}" for a in self.actual],
        ]
        for exp, act in zip(self.expected, self.actual, strict=False):
            if exp != act:
                lines.append(f"  first differing action: expected {describe_action(exp)}")
                lines.append(f"                          actual   {describe_action(act)}")
                if exp[0] == act[0] and exp[2] != act[2]:
                    lines.append("  bytes (- expected, + actual):")
                    lines.extend("    " + ln for ln in hexdump_diff(exp[2], act[2]))
                break
        return "\n".join(lines)


def version_note(trace: Trace) -> str | None:
    """What differs between the recording and this replay that may change the bytes: the
    HTTP/2 framing of a connection's output (its version is in the header of such a trace:
    ``proxycore-h2/N``, or the ``h2`` library's version in traces recorded before proxycore
    framed HTTP/2 itself). None when nothing does."""
    recorded = trace.header.get("h2")
    if recorded is None:
        return None
    current = h2_version()
    if recorded == current:
        return None
    return (
        f"recorded with HTTP/2 framing {recorded}, replayed with {current}: "
        "HTTP/2 frames may differ for that reason alone"
    )


def _describe_event(ev: Event | None) -> str:
    if isinstance(ev, DataReceived):
        data = ev.data
        shown = repr(data[:120]) + ("..." if len(data) > 120 else "")
        return f"DataReceived(conn={ev.conn}, now={ev.now}, {len(data)} bytes: {shown})"
    return repr(ev)


def describe_action(a: EncodedAction) -> str:
    kind, conn, payload = a
    name = _ACTION_NAMES.get(kind, str(kind))
    if kind == 64:
        shown = repr(payload[:100]) + ("..." if len(payload) > 100 else "")
        return f"{name}(conn={conn}, {len(payload)} bytes: {shown})"
    return f"{name}(conn={conn}{', ' + payload.decode() if payload else ''})"


def hexdump_diff(expected: bytes, actual: bytes, width: int = 16) -> list[str]:
    """A unified diff of two hexdumps (only the differing region, with context)."""

    def dump(b: bytes) -> list[str]:
        out = []
        for i in range(0, len(b), width):
            chunk = b[i : i + width]
            text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
            out.append(f"{i:08x}  {chunk.hex(' '):<{width * 3}} {text}")
        return out

    diff = difflib.unified_diff(
        dump(expected), dump(actual), "expected", "actual", lineterm="", n=2
    )
    return list(diff)[2:]


def replay(
    trace: Trace,
    app: Proxy | None = None,
    *,
    allow_other_app: bool = False,
    full: bool = False,
) -> ReplayResult:
    """Feed ``trace`` to a fresh engine running ``app`` and compare the actions.

    ``app`` defaults to an instance of the class named in the trace (built with no arguments).
    A trace recorded with another class raises :class:`TraceError` unless ``allow_other_app``.
    With ``full``, every event is replayed even after a difference (``result.all_actual`` then
    holds the new expectations, see :func:`write_trace`).
    """
    if app is None:
        app = load_app(trace.app, trace.name, trace.header.get("app_init"))
    cls = type(app)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if name != trace.app and not allow_other_app:
        raise TraceError(
            f"{trace.name}: recorded with proxy class {trace.app}, but replaying with {name} "
            "(pass allow_other_app / --force to replay anyway)"
        )
    engine = ReplayEngine(app, trace.conf, trace, logger=NullLog())
    result = ReplayResult(trace)
    ids: set[int] = {int(trace.header.get("conn", 0))}
    for i, g in enumerate(trace.groups):
        for kind, conn, _ in g.actions:
            if kind == 67:
                ids.add(conn)
        ids.update(p for p in g.pool if p)
        produced = engine.feed(g.event)
        for a in produced:
            if isinstance(a, RunFilter) and a.kind == "async":
                _discard_awaitable(a.call())  # recorded results stand in for deferred phases
        actual = [enc for enc in (encode_action(a) for a in produced) if enc[1] in ids]
        result.events = i + 1
        result.all_actual.append((g.event, actual))
        if actual != g.actions and result.ok:
            result.ok = False
            result.index = i
            result.event = g.event
            result.expected = g.actions
            result.actual = actual
            if not full:
                return result
    return result


def load_app(
    spec: str,
    trace_name: str = "<trace>",
    init: dict[str, Any] | None = None,
    *,
    given: bool = False,
) -> Proxy:
    """Instantiate ``module:Class`` (with the recorded ``trace_init()`` keyword arguments, if
    the class provides that method, else none); TraceError if that is not possible.
    ``given``: ``spec`` is the one the user passed (``--app``), not the trace's recorded
    class, and the message says so."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    try:
        if not sep or not module_name or not attr:
            raise ValueError("expected module:Class")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        app = obj(**(init or {})) if isinstance(obj, type) else obj
    except Exception as e:
        if given:
            raise TraceError(f"cannot load --app {spec!r}: {e}") from None
        raise TraceError(
            f"{trace_name}: cannot build the recorded proxy class {spec!r} ({e}); "
            "pass the app explicitly (--app module:Class)"
        ) from None
    if not isinstance(app, Proxy):
        if given:
            raise TraceError(f"--app {spec!r} is not a proxycore.Proxy subclass or instance")
        raise TraceError(f"{trace_name}: {spec} is not a proxycore.Proxy")
    return app


def normalized(groups: Iterable[tuple[Event, list[EncodedAction]]]) -> dict[str, Any]:
    """A chunking-independent view of a session: bytes in and out joined per connection (in
    order of first appearance), and the sequence of connection-level actions."""
    roles: dict[int, str] = {}

    def role(conn: int) -> str:
        if conn not in roles:
            roles[conn] = "down" if not roles else f"up{len(roles)}"
        return roles[conn]

    data_in: dict[str, bytearray] = {}
    data_out: dict[str, bytearray] = {}
    steps: list[str] = []
    for ev, actions in groups:
        if isinstance(ev, DataReceived):
            data_in.setdefault(role(ev.conn), bytearray()).extend(ev.data)
        else:
            role(ev.conn)
        for kind, conn, payload in actions:
            r = role(conn)
            if kind == 64:
                data_out.setdefault(r, bytearray()).extend(payload)
            elif kind in (65, 66, 67):
                steps.append(f"{_ACTION_NAMES[kind]}({r})")
    return {
        "in": {k: bytes(v) for k, v in data_in.items()},
        "out": {k: bytes(v) for k, v in data_out.items()},
        "steps": steps,
    }


def groups_of(trace: Trace) -> list[tuple[Event, list[EncodedAction]]]:
    return [(g.event, g.actions) for g in trace.groups]


def write_trace(trace: Trace, groups: list[tuple[Event, list[EncodedAction]]]) -> bytes:
    """Serialize a trace with new expected actions (used to re-record expectations)."""
    from proxycore.trace import encode_event

    header = json.dumps(trace.header).encode()
    buf = bytearray(MAGIC)
    buf += struct.pack("<I", len(header))
    buf += header
    for (ev, actions), g in zip(groups, trace.groups, strict=False):
        kind, payload = encode_event(ev)
        buf += RECORD.pack(kind, ev.conn, ev.now, len(payload))
        buf += payload
        for p in g.pool:
            buf += RECORD.pack(POOL_ANSWER, p, ev.now, 0)
        for k, c, p2 in actions:
            buf += RECORD.pack(k, c, ev.now, len(p2))
            buf += p2
    return bytes(buf)


def _discard_awaitable(aw: Any) -> None:
    close = getattr(aw, "close", None)
    if close is not None:
        close()
