"""The access log: one record per request, in nginx's combined format or as JSON.

Theory of operation: the core decides and formats, the process does the I/O. The engine is
handed an access logger (``Engine(access_log=logging.getLogger("proxycore.access"))``, set up
by the adapters from ``ServerConf.access_log``; None, the default, turns it off, and then the
only per-request cost is one ``is None`` check). When a request ends — proxied or answered by
the proxy itself (a rejected head, a ``request_filter`` response, a 502/504, a filter's 500),
successfully or not — the session builds an :class:`AccessEntry` from what it recorded on the
way (the event times of the request head, of each upstream attempt's start, connect and
response head, and of the end) and the head as received, and :func:`emit` hands it to the
logger. It is written when the request ends, just before the ``logging`` phase is called (so a
deferred or raising ``logging`` phase cannot lose it).

Two ways out, with the same lines. The fast one (what ``--access-log`` sets up): the engine
is handed an :class:`AccessBuffer` instead of a logger, and each entry is appended to it (a
list append: no logging call, no formatting, no clock, no I/O per request); the process's
writer (``proxycore.adapters.access``) takes the queued entries in batches, formats them with
:func:`format_batch` and writes each batch at once, so the per-request cost is building the
entry and its share of one format-and-write per batch. The writer checks the
``proxycore.access`` logger once per batch: while its own handler is the logger's only way out
(no other handler, no filter, propagation off) the batch goes straight to the file; otherwise
(a program added handlers or filters: it routes the log) each entry becomes a standard INFO
``LogRecord`` whose ``access`` attribute is the entry and whose message (``str(entry)``) is
the combined line, handed to ``Logger.handle``, as an engine given a logger does for every
entry (:func:`emit`); :class:`CombinedFormatter` and :class:`JsonFormatter` format such
records for any handler.

Where the compiled install is built with its C extensions, :func:`format_batch` formats
combined lines with ``proxycore._alogfmt`` (C, no I/O): the same bytes as :func:`_combined`,
which stays the reference and formats, one line at a time, what the C code leaves to it (Basic
auth, retries, values of an unexpected type or range); tests/test_accesslog_c.py compares the
two on random entries. There an :class:`AccessBuffer` for combined lines is a C queue, and
the session hands it the fields of a usual request's line (:func:`log_session`: no retries,
not cut) instead of an entry: nothing is built, read back through getters and freed per
request; an :class:`AccessEntry` is made from the fields (:func:`batch_entries`) only when a
program routes the log or the reference writes the line.

Times: durations come from the event clock (the ``now`` of the events, which the core already
has). The wall-clock time of a line (nginx's ``$time_local``: when the request was logged) is
stamped outside the core: for a record, when it is made (``LogRecord.created``); for an entry
in an :class:`AccessBuffer`, the entry keeps the event time it was logged at (``at``) and the
writer adds the offset between its wall clock and the event clock once per batch
(:func:`format_batch`), which gives the same second as a clock read per line. The log is
output, not an action: a replayed session produces the same actions whether the access log
is on or off (replays run with it off), and the wall-clock time is the one value in a line
that a replay could not reproduce.

Field semantics follow nginx's variables: times are seconds with millisecond resolution,
``-`` (JSON: null) when absent; the request line and the Referer, User-Agent and Basic-auth
user come from the head as received (not as filters edited it); with retries the upstream
fields list every attempt in order (combined: ``", "``-separated, as nginx writes
``$upstream_addr``); strings are escaped as nginx does (``"``, ``\\`` and bytes outside
printable ASCII as ``\\xHH``).
"""

from __future__ import annotations

import logging
import sys
from binascii import Error as _B64Error
from binascii import a2b_base64
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import TYPE_CHECKING, Any, Final

from proxycore.errors import ErrorType

if TYPE_CHECKING:
    from proxycore.downstream import Downstream
    from proxycore.session import Session

__all__ = [
    "FORMATS",
    "AccessBuffer",
    "AccessEntry",
    "Attempt",
    "CombinedFormatter",
    "JsonFormatter",
    "batch_entries",
    "emit",
    "format_batch",
    "format_combined",
    "format_json",
    "formatter",
    "log_rejected",
    "log_session",
    "request_fields",
    "time_iso8601",
    "time_local",
]

FORMATS: Final = ("combined", "json")
_INFO: Final = logging.INFO
_MAX_LINE: Final = 2048  # a logged request line is cut here (the head limits are larger)
_MAX_HEAD: Final = 65536  # what is kept of a rejected head without an end
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_JSON_CUT: Final = ',"cut":true'  # (JSON) an exchange the shutdown cut
_MILLIS: Final = tuple(f".{i:03d}" for i in range(1000))
_UNDER_A_SECOND: Final = tuple(f"0.{i:03d}" for i in range(1000))
_NUMBERS: Final = tuple(str(i) for i in range(1000))  # status codes without a str() per line
_SCAN_LINES: Final = 6  # field lines of a head looked at one by one (see _head_fields)
# Pieces of the combined line that come together (fewer pieces per line to join): a status
# with its quote and spaces, an upstream status with its field names.
_STATUS_PIECES: Final = tuple(f'" {i} ' for i in range(1000))
_US_PIECES: Final = tuple(f" us={i if i else '-'} uct=" for i in range(1000))
_NO_REFERER: Final = ' "-" "'

# One upstream attempt: (address, status or 0 for none, connect time, header time); a time
# below 0 means absent.
Attempt = tuple[str, int, float, float]


class AccessEntry:
    """What one request's line says. ``head``: the request head as received (bytes; for a
    rejected head, what had arrived of it), from which the request line and the Basic-auth
    user, Referer and User-Agent fields are read when the line is formatted (properties
    below); ``created``: the wall-clock time of the line (seconds since the epoch), stamped
    outside the core (0.0 until then); ``at``: the event-clock time the line was logged at
    (the engine's ``now``; below 0 when unknown), from which a writer stamps ``created``;
    ``request_time`` and the upstream times are seconds; an attempt's status is 0 and its
    times below 0 when absent. ``upstream`` (every attempt, in order) is kept as the
    attempts before the last (``tries``) and the last one's fields (``uaddr``, None when
    nothing went upstream, ``ustatus``, ``uct``, ``uht``): a request that went upstream once
    builds no tuple for its line."""

    __slots__ = (
        "at",
        "body_bytes_sent",
        "created",
        "cut",
        "head",
        "parsed",
        "remote_addr",
        "request_time",
        "status",
        "tries",
        "uaddr",
        "uct",
        "uht",
        "ustatus",
    )

    def __init__(
        self,
        remote_addr: str,
        head: bytes,
        status: int,
        body_bytes_sent: int,
        request_time: float,
        upstream: tuple[Attempt, ...] = (),
    ) -> None:
        self.remote_addr = remote_addr
        self.head = head
        self.status = status
        self.body_bytes_sent = body_bytes_sent
        self.request_time = request_time if request_time > 0.0 else 0.0
        self.tries: tuple[Attempt, ...] = ()
        self.uaddr: str | None = None
        self.ustatus = 0
        self.uct = -1.0
        self.uht = -1.0
        if upstream:
            self.upstream = upstream
        self.created = 0.0
        self.at = -1.0
        self.parsed = True  # False: a rejected head (it may hold any byte)
        self.cut = False  # True: the shutdown cut the exchange (its grace period ran out)

    @property
    def upstream(self) -> tuple[Attempt, ...]:
        """Every upstream attempt, in order: (address, status or 0, connect time, header
        time); ``()`` when nothing went upstream."""
        uaddr = self.uaddr
        if uaddr is None:
            return self.tries
        return (*self.tries, (uaddr, self.ustatus, self.uct, self.uht))

    @upstream.setter
    def upstream(self, attempts: tuple[Attempt, ...]) -> None:
        if not attempts:
            self.tries = ()
            self.uaddr = None
            self.ustatus = 0
            self.uct = self.uht = -1.0
            return
        self.tries = tuple(attempts[:-1])
        self.uaddr, self.ustatus, self.uct, self.uht = attempts[-1]

    @property
    def request(self) -> str:
        """The request line as received (nginx's ``$request``), ``-`` if none."""
        return request_fields(self.head)[0]

    @property
    def remote_user(self) -> str | None:
        """The user name of ``Authorization: Basic`` credentials (``$remote_user``)."""
        return request_fields(self.head)[1]

    @property
    def referer(self) -> str | None:
        return request_fields(self.head)[2]

    @property
    def user_agent(self) -> str | None:
        return request_fields(self.head)[3]

    def __str__(self) -> str:
        return format_combined(self)

    def __repr__(self) -> str:
        return f"<AccessEntry {format_combined(self)}>"


class AccessBuffer:
    """The fast way out: the entries of a process's own access-log file, queued in order until
    its writer takes them (see the module docstring). ``notify`` (the writer's) is called with
    the queue's length when an entry starts a batch (1: the writer arranges a write soon) and
    when ``limit`` entries are queued (the writer writes now), or with ``sys.maxsize`` when the
    queued request heads hold ``max_bytes`` or more (0: no cap; large heads make a batch
    written early, so what waits for the writer stays bounded). :meth:`take_batch` hands the
    queue over in one step (a new one replaces it), so a writer thread never sees half a
    batch. No I/O and no clock here.

    With ``fields`` (combined lines) and the C formatter built, the queue is a
    ``proxycore._alogfmt.Queue`` and :attr:`add` its ``add``: the engine hands it a usual
    request's fields (:func:`log_session`) and no :class:`AccessEntry` is built for it; an
    entry is made from them only if a program routes the log or the line needs the Python
    formatter. Otherwise (``add`` None) entries are queued in a list."""

    __slots__ = ("add", "entries", "head_bytes", "limit", "max_bytes", "notify", "queue")

    def __init__(
        self,
        notify: Callable[[int], None],
        limit: int = 64,
        fields: bool = True,
        max_bytes: int = 0,
    ) -> None:
        self.entries: list[AccessEntry] = []  # the queue when there is no C queue
        self.head_bytes = 0  # (the list's heads, for max_bytes)
        self.notify = notify
        self.limit = limit
        self.max_bytes = max_bytes
        queue = _C_QUEUE(max_bytes) if fields and _C_QUEUE is not None else None
        self.queue: Any = queue
        # queue.add(remote_addr, head, status, body_bytes_sent, request_time, at, uaddr,
        # ustatus, uct, uht) -> the queue's length, or -1: not queued (put an entry)
        self.add: Callable[..., int] | None = queue.add if queue is not None else None

    def put(self, entry: AccessEntry) -> None:
        queue = self.queue
        if queue is not None:
            n: int = queue.put(entry)
        else:
            entries = self.entries
            entries.append(entry)
            n = len(entries)
            cap = self.max_bytes
            if cap:
                self.head_bytes += len(entry.head)
                if self.head_bytes >= cap:
                    n = _FULL
        if n == 1 or n >= self.limit:
            self.notify(n)

    def __len__(self) -> int:
        queue = self.queue
        return len(self.entries) if queue is None else len(queue)

    def take_batch(self) -> Any:
        """The queued entries, oldest first, for :func:`format_batch` and
        :func:`batch_entries`: a list of entries, or a C queue; the queue is empty
        afterwards."""
        queue = self.queue
        if queue is not None:
            return queue.take()
        fresh: list[AccessEntry] = []
        entries = self.entries
        self.entries = fresh
        self.head_bytes = 0
        return entries

    def take(self) -> list[AccessEntry]:
        """The queued entries as :class:`AccessEntry` objects, oldest first; the queue is
        empty afterwards."""
        return batch_entries(self.take_batch())


def batch_entries(batch: Any) -> list[AccessEntry]:
    """A batch of :meth:`AccessBuffer.take_batch` as :class:`AccessEntry` objects."""
    if isinstance(batch, list):
        return batch
    entries: list[AccessEntry] = batch.entries(_entry)
    return entries


def _entry(
    remote_addr: str,
    head: bytes,
    status: int,
    body_bytes_sent: int,
    request_time: float,
    at: float,
    uaddr: str | None,
    ustatus: int,
    uct: float,
    uht: float,
) -> AccessEntry:
    """The entry that the fields of a C queue's ``add`` describe."""
    e = AccessEntry(remote_addr, head, status, body_bytes_sent, request_time)
    if uaddr is not None:
        e.uaddr = uaddr
        e.ustatus = ustatus
        e.uct = uct
        e.uht = uht
    e.at = at
    return e


def emit(logger: Any, entry: AccessEntry) -> None:
    """Hand ``entry`` to ``logger``: queued if it is an :class:`AccessBuffer`, else as a
    standard record if the logger is enabled for INFO (see the module docstring)."""
    if isinstance(logger, AccessBuffer):
        logger.put(entry)
        return
    if not logger.isEnabledFor(_INFO):
        return
    # makeRecord + handle: Logger.info would also search the stack for the calling frame.
    rec = logger.makeRecord(logger.name, _INFO, __file__, 0, entry, None, None)
    entry.created = rec.created
    rec.access = entry
    logger.handle(rec)


# ---------------------------------------------------------------- entries from the core


def log_session(logger: Any, s: Session) -> None:
    """The record of a request that had a session (everything but rejected heads)."""
    err = s.error
    now = s.engine.now
    status = s.response_status or (err.status if err is not None else 0)
    cut = err is not None and err.etype is ErrorType.SHUTDOWN
    if not cut and isinstance(logger, AccessBuffer):
        add = logger.add  # a C queue's: the fields, not an entry
        kind = s.attempts_logged() if add is not None else 2
        if add is not None and kind < 2:  # (retries: an entry)
            if kind:
                uaddr, ustatus, uct, uht = s.upstream_attempt()
                n = add(
                    s.client_addr[0], s.raw_request_head(), status, s.response_body_bytes,
                    now - s.start_time, now, uaddr, ustatus, uct, uht,
                )  # fmt: skip
            else:
                n = add(
                    s.client_addr[0], s.raw_request_head(), status, s.response_body_bytes,
                    now - s.start_time, now, None, 0, -1.0, -1.0,
                )  # fmt: skip
            if n > 0:
                if n == 1 or n >= logger.limit:
                    logger.notify(n)
                return
    entry = AccessEntry(
        s.client_addr[0],
        s.raw_request_head(),
        status,
        s.response_body_bytes,
        now - s.start_time,
    )
    s.fill_upstream(entry)  # the attempts, in the entry's fields (no tuple for one attempt)
    entry.at = now
    entry.cut = cut
    emit(logger, entry)


def log_rejected(
    logger: Any, down: Downstream, status: int, raw: bytes | bytearray, sent: int, start: float
) -> None:
    """The record of a request head the connection rejected (400, 408, 413, 414, 431, 501...):
    what was received of it, nothing upstream."""
    end = raw.find(b"\r\n\r\n")
    head = bytes(raw[: end + 2 if end >= 0 else min(len(raw), _MAX_HEAD)])
    now = down.engine.now
    entry = AccessEntry(down.client_addr[0], head, status, sent, now - start)
    entry.parsed = False
    entry.at = now
    emit(logger, entry)


# ---------------------------------------------------------------- fields from the head


def request_fields(head: bytes) -> tuple[str, str | None, str | None, str | None]:
    """From a request head as received: the request line (nginx's ``$request``, cut at
    2048 characters, ``-`` if empty), the Basic-auth user (``$remote_user``), and the first
    Referer and User-Agent values (None when absent). Latin-1, one character per byte."""
    request, auth, referer, agent = _head_fields(head.decode("latin-1"))
    return (
        request,
        _basic_user(auth) if auth is not None else None,
        referer,
        agent,
    )


def _head_fields(text: str) -> tuple[str, str | None, str | None, str | None]:
    """The request line (cut, ``-`` if empty) and the first Authorization, Referer and
    User-Agent values (trimmed, None when absent) of a head decoded as latin-1. Field names
    are case-insensitive (RFC 9110 §5.1). This runs once per request: the first field lines
    are looked at one by one, each by its first letter (one search for its end, a character
    comparison only for a line that may be one of the three); past ``_SCAN_LINES`` lines the
    rest of the head is lower-cased once and searched by name."""
    n = len(text)
    end = text.find("\r\n")
    if end < 0:
        end = n
    request = text[: min(end, _MAX_LINE)] or "-"
    auth: str | None = None
    referer: str | None = None
    agent: str | None = None
    i = end + 2
    lines = 0
    while i < n:
        if lines == _SCAN_LINES:  # a long head: search the rest by name
            low = text.lower()
            return (
                request,
                auth if auth is not None else _field(text, low, "\r\nauthorization:", i - 2),
                referer if referer is not None else _field(text, low, "\r\nreferer:", i - 2),
                agent if agent is not None else _field(text, low, "\r\nuser-agent:", i - 2),
            )
        c = ord(text[i])
        if c == 0x0D and i + 1 < n and ord(text[i + 1]) == 0x0A:  # the empty line: the end
            break
        j = text.find("\r\n", i)
        if j < 0:
            j = n
        c |= 0x20
        if c == 0x75:  # u
            if agent is None and _named(text, i, j, "user-agent:"):
                agent = _trim(text, i + 11, j)
        elif c == 0x72:  # r
            if referer is None and _named(text, i, j, "referer:"):
                referer = _trim(text, i + 8, j)
        elif c == 0x61 and auth is None and _named(text, i, j, "authorization:"):  # a
            auth = _trim(text, i + 14, j)
        i = j + 2
        lines += 1
    return request, auth, referer, agent


def _named(text: str, i: int, j: int, name: str) -> bool:
    """Whether the line ``text[i:j]`` starts with ``name`` (lower case) in any case."""
    k = len(name)
    if j - i < k:
        return False
    for m in range(k):
        ch = ord(text[i + m])
        o = ord(name[m])
        if ch != o and (o < 0x61 or ch != o - 0x20):
            return False
    return True


def _field(text: str, low: str, name: str, start: int) -> str | None:
    i = low.find(name, start)
    if i < 0:
        return None
    i += len(name)
    j = text.find("\r\n", i)
    return _trim(text, i, j if j >= 0 else len(text))


def _trim(text: str, i: int, j: int) -> str:
    """``text[i:j]`` without leading and trailing spaces and tabs (RFC 9112 §5: OWS)."""
    while i < j and (text[i] == " " or text[i] == "\t"):
        i += 1
    while j > i and (text[j - 1] == " " or text[j - 1] == "\t"):
        j -= 1
    return text[i:j]


def _basic_user(authorization: str) -> str | None:
    if authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = a2b_base64(authorization[6:].strip().encode("latin-1")).decode("latin-1")
    except (_B64Error, UnicodeEncodeError, ValueError):
        return None
    user, sep, _ = decoded.partition(":")
    return user if sep and user else None


# ---------------------------------------------------------------- formatting


def _plain(text: str) -> bool:
    """True if nginx's escaping leaves ``text`` as it is."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _escape(text: str) -> str:
    """nginx's access-log escaping: ``"``, ``\\`` and characters outside printable ASCII
    become ``\\xHH``."""
    if _plain(text):
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o > 0x7E or ch == '"' or ch == "\\":
            out.append(f"\\x{o:02X}" if o < 0x100 else f"\\u{o:04X}")
        else:
            out.append(ch)
    return "".join(out)


def _secs(t: float) -> str:
    """Seconds with millisecond resolution (``0.012``), ``-`` when below 0."""
    if t < 0.0:
        return "-"
    ms = int(t * 1000.0 + 0.5)
    if ms < 1000:
        return _UNDER_A_SECOND[ms]
    return f"{ms // 1000}{_MILLIS[ms % 1000]}"


def _json_secs(t: float) -> str:
    return _secs(t) if t >= 0.0 else "null"


class _Clock:
    """The wall-clock strings of the last second formatted (one conversion per second, not
    per line), kept as one tuple so threads always see a consistent one."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: tuple[int, str, str, str] = (-1, "", "", "")

    def get(self, created: float) -> tuple[int, str, str, str]:
        second = int(created)
        last = self.last
        if last[0] == second:
            return last
        # logging's converter (time.localtime unless a program changed it): local time, like
        # nginx's $time_local and $time_iso8601.
        t = logging.Formatter.converter(second)
        off = t.tm_gmtoff or 0
        sign = "-" if off < 0 else "+"
        hh, mm = divmod(abs(off) // 60, 60)
        local = (
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hh:02d}{mm:02d}"
        )
        iso = (
            f"{t.tm_year}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}{sign}{hh:02d}:{mm:02d}"
        )
        # the combined line's text around $time_local when there is no $remote_user
        last = self.last = (second, local, iso, f' - - [{local}] "')
        return last


_clock: Final = _Clock()


def time_local(created: float) -> str:
    """``created`` as nginx's ``$time_local``: ``01/Dec/2026:21:20:37 +0000``."""
    return _clock.get(created)[1]


def time_iso8601(created: float) -> str:
    """``created`` as nginx's ``$time_iso8601``: ``2026-12-01T21:20:37+00:00``."""
    return _clock.get(created)[2]


def _upstream_tail(up: tuple[Attempt, ...]) -> str:
    if not up:
        return " uaddr=- us=- uct=- uht=-"
    return (
        f" uaddr={', '.join([a[0] for a in up])}"
        f" us={', '.join([_status(a[1]) for a in up])}"
        f" uct={', '.join([_secs(a[2]) for a in up])}"
        f" uht={', '.join([_secs(a[3]) for a in up])}"
    )


def _status(status: int) -> str:
    if 0 < status < 1000:
        return _NUMBERS[status]
    return "-" if status == 0 else str(status)


def format_combined(e: AccessEntry) -> str:
    """nginx's ``combined`` format followed by ``rt=$request_time uaddr=$upstream_addr
    us=$upstream_status uct=$upstream_connect_time uht=$upstream_header_time``."""
    return _combined(e, "")


def _combined(e: AccessEntry, nl: str) -> str:
    """``e``'s combined line followed by ``nl`` (a batch's lines end in a newline: one string
    per line, not two)."""
    text = e.head.decode("latin-1")
    request, auth, referer, agent = _head_fields(text)
    # A parsed head holds no control character but HTAB (RFC 9112 §5.5), so one look at the
    # whole head tells whether any field needs escaping (isascii is O(1) on a str).
    if not (
        e.parsed and '"' not in text and "\\" not in text and "\t" not in text and text.isascii()
    ):
        request = _escape(request)
        if referer is not None:
            referer = _escape(referer)
        if agent is not None:
            agent = _escape(agent)
    user = "-"
    if auth is not None:
        name = _basic_user(auth)
        if name:
            user = _escape(name)
    status = e.status
    sent = e.body_bytes_sent
    up = e.upstream
    addr = e.remote_addr
    if user == "-":
        start = _clock.get(e.created)[3]
    else:
        start = f" - {user} [{_clock.get(e.created)[1]}] " + '"'
    st = _STATUS_PIECES[status] if 0 <= status < 1000 else f'" {status} '
    size = _NUMBERS[sent] if 0 <= sent < 1000 else str(sent)
    ref = _NO_REFERER if referer is None else f' "{referer}" "'
    if agent is None:
        agent = "-"
    if len(up) == 1 and not e.cut:  # the usual case, in one string build
        uaddr, ustatus, ct, ht = up[0]
        us = _US_PIECES[ustatus] if 0 <= ustatus < 1000 else f" us={ustatus} uct="
        return (
            f'{addr}{start}{request}{st}{size}{ref}{agent}" rt={_secs(e.request_time)}'
            f" uaddr={uaddr}{us}{_secs(ct)} uht={_secs(ht)}{nl}"
        )
    return (
        f'{addr}{start}{request}{st}{size}{ref}{agent}" rt={_secs(e.request_time)}'
        f"{_upstream_tail(up)}{' cut=1' if e.cut else ''}{nl}"
    )


def _line(e: AccessEntry) -> str:
    return _combined(e, "\n")


def _load_c() -> Any:
    """The C line formatter (built by ``pip install .`` with a C compiler,
    proxycore/_alogfmt.c), or None."""
    try:
        from proxycore import _alogfmt
    except ImportError:
        return None
    return _alogfmt


# Where it is built, combined batches are formatted in C (the same text as _combined, which
# it calls for the lines it leaves to Python: tests/test_accesslog_c.py), and an
# AccessBuffer for combined lines queues the fields of usual requests in a C queue.
_C: Final[Any] = _load_c()
_C_BATCH: Final[Callable[[list[AccessEntry], float, Any, Any], str | None] | None] = (
    _C.combined_batch if _C is not None else None
)
_C_QUEUE: Final[Any] = _C.Queue if _C is not None else None
# What a queue's add returns (the C queue's, and AccessBuffer.put's count) once its heads hold
# max_bytes or more: more than any limit, so the writer writes at once.
_FULL: Final = sys.maxsize


def format_batch(entries: Any, json: bool, offset: float = 0.0) -> str:
    """Lines for ``entries`` (a list of entries, or a batch of
    :meth:`AccessBuffer.take_batch`), each ending in a newline. An entry not stamped yet
    (``created`` 0) is stamped ``at + offset``: ``offset`` is the writer's wall clock minus the
    event clock."""
    if not isinstance(entries, list):  # a C queue
        if not json:
            text: str | None = entries.combined(offset, _clock.get, _line, _entry)
            if text is not None:
                return text
        return _format_batch_py(batch_entries(entries), json, offset)
    c_batch = _C_BATCH
    if not json and c_batch is not None:
        text = c_batch(entries, offset, _clock.get, _line)
        if text is not None:
            return text
    return _format_batch_py(entries, json, offset)


def _format_batch_py(entries: list[AccessEntry], json: bool, offset: float) -> str:
    """:func:`format_batch` in Python (the reference for the C formatter's batches)."""
    out: list[str] = []
    for e in entries:
        if e.created == 0.0:
            e.created = e.at + offset
        out.append(format_json(e) + "\n" if json else _combined(e, "\n"))
    return "".join(out)


def _json_opt(text: str | None) -> str:
    return "null" if text is None else _json_str(text)


def _json_attempt(addr: str, status: int, ct: float, ht: float) -> str:
    return (
        f'{{"addr":{_json_str(addr)},"status":{str(status) if status else "null"},'
        f'"connect_time":{_json_secs(ct)},"header_time":{_json_secs(ht)}}}'
    )


def format_json(e: AccessEntry) -> str:
    """One JSON object (one line) with the combined format's fields: ``time`` (ISO 8601,
    local), ``remote_addr``, ``remote_user``, ``request``, ``status``, ``body_bytes_sent``,
    ``http_referer``, ``http_user_agent``, ``request_time`` (seconds), and ``upstream``: one
    object per attempt, in order (``addr``, ``status``, ``connect_time``, ``header_time``;
    ``[]`` when nothing went upstream). Absent values are null."""
    uaddr = e.uaddr
    if e.tries:
        attempts = ",".join([_json_attempt(a[0], a[1], a[2], a[3]) for a in e.upstream])
    elif uaddr is not None:  # one attempt: no tuple built for it
        attempts = _json_attempt(uaddr, e.ustatus, e.uct, e.uht)
    else:
        attempts = ""
    request, user, referer, agent = request_fields(e.head)
    return (
        f'{{"time":"{time_iso8601(e.created)}","remote_addr":{_json_str(e.remote_addr)},'
        f'"remote_user":{_json_opt(user)},"request":{_json_str(request)},'
        f'"status":{e.status},"body_bytes_sent":{e.body_bytes_sent},'
        f'"http_referer":{_json_opt(referer)},"http_user_agent":{_json_opt(agent)},'
        f'"request_time":{_secs(e.request_time)},"upstream":[{attempts}]'
        f"{_JSON_CUT if e.cut else ''}}}"
    )


class CombinedFormatter(logging.Formatter):
    """Formats access records as combined lines (other records as a plain Formatter does)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = getattr(record, "access", None)
        if isinstance(entry, AccessEntry):
            return format_combined(entry)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """Formats access records as JSON lines (other records as a plain Formatter does)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = getattr(record, "access", None)
        if isinstance(entry, AccessEntry):
            return format_json(entry)
        return super().format(record)


def formatter(name: str) -> logging.Formatter:
    """The formatter for ``ServerConf.access_log_format`` (``combined`` or ``json``)."""
    if name == "combined":
        return CombinedFormatter()
    if name == "json":
        return JsonFormatter()
    raise ValueError(f"unknown access log format {name!r}; choose from {', '.join(FORMATS)}")
