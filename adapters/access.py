"""The access log's I/O: the handler that writes the lines, set up once per worker process.

Theory of operation: the core builds one entry per request (:mod:`proxycore.accesslog`) and
hands it to what the engine was given. :func:`access_logger` (called by ``make_engine``, so
every backend gets the same) decides what that is: ``ServerConf.access_log`` set (a path, or
``-`` for standard output) installs an :class:`AccessLogHandler` on the ``proxycore.access``
logger, sets it to INFO, stops propagation (the access log does not mix with the error log)
and gives the engine the handler's buffer; without it, the access log is on only if the
program attached handlers of its own to ``proxycore.access`` (it routes the log: the engine
gets the logger); otherwise the engine gets None and pays nothing.

Writing: the engine gets the handler's :class:`~proxycore.accesslog.AccessBuffer` (not the
logger), so a request costs one list append in the core; lines are formatted and written in
batches, each batch with one ``write`` of whole lines: at once when ``BATCH`` entries are
queued (a busy proxy) or their request heads hold ``MAX_BYTES``, else by a flusher thread
within ``INTERVAL`` seconds (a quiet one), and on ``flush()``/``close()``:
``logging.shutdown`` at exit (after a SIGTERM's drain, and
workers call it before they exit), so no line of a finished request is lost. One lock
covers taking a batch, writing it and closing the file, so a flush at exit waits for the
flusher's write in progress and the file is never closed under it. Before each batch the
handler checks the ``proxycore.access`` logger: while it is the logger's only way out (no
other handler, no filter, propagation off, its own formatter and level) the batch goes
straight to the file; otherwise each entry goes through ``Logger.handle`` as a standard
record, so handlers and filters a program adds take effect from the next batch on. Records
that come the usual way (:meth:`emit`, an engine given the logger) are written at once,
after what is queued, so lines stay in order. The descriptor is opened with ``O_APPEND``:
with ``--workers N`` each worker opens the file itself and the kernel keeps each write
whole, so lines never interleave; for a pipe (standard output) writes are cut at line ends
to at most ``PIPE_BUF`` bytes, the size a pipe keeps whole.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from proxycore.accesslog import (
    FORMATS,
    AccessBuffer,
    AccessEntry,
    batch_entries,
    format_batch,
    formatter,
)

__all__ = [
    "LOGGER",
    "AccessLogHandler",
    "access_logger",
    "check_access_log",
    "reload_access_log",
    "reopen_access_log",
]

LOGGER = "proxycore.access"

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_PIPE_BUF = getattr(os, "PIPE_BUF", None) or 4096  # (select.PIPE_BUF on Linux: 4096)


class AccessLogHandler(logging.Handler):
    """Writes access lines to ``path`` (``-``: standard output) as ``fmt`` (``combined`` or
    ``json``), appending, whole lines per write. ``buffer`` is what the engine gets;
    ``clock`` is the engine's event clock (every adapter's is ``time.monotonic``)."""

    # Queued entries that trigger a write at once: a busy proxy writes in batches of this many
    # lines (each write, and each batch's formatting set-up, costs about as much as a few
    # dozen lines: bench/accesslog_cost.py measured 0.926x the requests/second of the log off
    # with 64, 0.955x with 256), or sooner when their request heads hold MAX_BYTES (large heads
    # wait in memory until written: this bounds them).
    BATCH = 256
    MAX_BYTES = 1 << 20
    INTERVAL = 0.1  # seconds a queued line may wait for the flusher

    def __init__(
        self, path: str, fmt: str = "combined", clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._formatter = formatter(fmt)
        self.setFormatter(self._formatter)
        self._json = fmt == "json"
        self.key = ("-" if path == "-" else os.path.abspath(path), fmt)
        self.clock = clock
        self.logger: logging.Logger | None = None  # the logger it serves (access_logger)
        # combined lines: a usual request's fields are queued, not an entry (in C, if built)
        self.buffer = AccessBuffer(
            self._notify, self.BATCH, fields=fmt == "combined", max_bytes=self.MAX_BYTES
        )
        self._own = path != "-"
        self._stream: Any = None
        if self._own:
            self.fd = os.open(path, _FLAGS, 0o644)
        else:
            try:
                self.fd = sys.stdout.fileno()
                sys.stdout.flush()
            except (AttributeError, OSError, ValueError):  # a stream without a descriptor
                self.fd = -1
                self._stream = sys.stdout
        self._chunk = 0  # write at most this many bytes at once (0: no limit)
        if self.fd >= 0 and not stat.S_ISREG(os.fstat(self.fd).st_mode):
            self._chunk = _PIPE_BUF
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._armed = False  # the flusher is counting down to a flush (see _notify)
        self._closed = False
        if hasattr(os, "register_at_fork"):  # a thread does not survive a fork
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._flusher = None
        self._armed = False
        self._wake = threading.Event()
        self.buffer.take()  # the parent's queue is the parent's to write

    # ---------------------------------------------------------------- batches

    def _notify(self, n: int) -> None:
        """The buffer's call: ``BATCH`` entries queued (write now), or the first of a batch
        (the flusher writes it, and what follows, within ``INTERVAL``). A busy proxy wakes
        the flusher thread once, not once per batch: while lines keep coming it flushes every
        ``INTERVAL`` (a thread switch costs more than a line), and it goes back to waiting
        when a turn finds nothing queued."""
        if n >= self.BATCH:
            self.flush()
            return
        if not self._armed:
            self._armed = True
            if self._flusher is None:
                self._start_flusher()
            self._wake.set()

    def _start_flusher(self) -> None:
        t = threading.Thread(target=self._flush_loop, name="proxycore-access-log", daemon=True)
        self._flusher = t
        t.start()

    def _flush_loop(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait()
            wake.clear()
            while not self._closed:
                time.sleep(self.INTERVAL)
                if not len(self.buffer):
                    self._armed = False  # idle: the next line wakes it again ...
                    if not len(self.buffer):  # ... unless one came in between
                        break
                    self._armed = True
                self.flush()

    def _direct(self) -> bool:
        """Whether this handler is the only way out of its logger (see the module
        docstring)."""
        logger = self.logger
        if logger is None:
            return True
        handlers = logger.handlers
        return (
            len(handlers) == 1
            and handlers[0] is self
            and not logger.propagate
            and not logger.filters
            and not self.filters
            and self.level <= logging.INFO
            and self.formatter is self._formatter
        )

    # ---------------------------------------------------------------- writing

    def flush(self) -> None:
        """Write every queued line (and wait for a write in progress)."""
        with self.lock:  # type: ignore[union-attr]
            entries = self.buffer.take_batch()
            if not len(entries):
                return
            offset = time.time() - self.clock()
            logger = self.logger
            try:
                if self._direct():
                    if logger is None or logger.isEnabledFor(logging.INFO):
                        self._write(format_batch(entries, self._json, offset))
                elif logger is not None:
                    self._route(logger, batch_entries(entries), offset)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "access log write failed"}))

    def _route(self, logger: logging.Logger, entries: list[AccessEntry], offset: float) -> None:
        """A batch as standard records (a program routes the log)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        for e in entries:
            if e.created == 0.0:
                e.created = e.at + offset
            rec = logger.makeRecord(logger.name, logging.INFO, __file__, 0, e, (), None)
            rec.created = e.created
            rec.msecs = e.created % 1.0 * 1000.0
            rec.access = e
            logger.handle(rec)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            self.flush()
            self._write(line)
        except Exception:
            self.handleError(record)

    def _write(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
            return
        fd = self.fd
        if fd < 0:  # closed: nothing is written after close()
            return
        data = text.encode("utf-8", "backslashreplace")
        chunk = self._chunk
        while data:
            piece = data
            if chunk and len(data) > chunk:
                cut = data.rfind(b"\n", 0, chunk) + 1
                piece = data[: cut or chunk]  # (a line longer than a pipe keeps whole: cut it)
            n = os.write(fd, piece)
            data = data[n:]

    def reopen(self) -> None:
        """Open the path again (SIGHUP): after logrotate renamed the file away, lines go to a
        new file at the path; what is queued is written to the old one first. Raises OSError
        (the current file stays) when the path cannot be opened."""
        if not self._own:
            return
        with self.lock:  # type: ignore[union-attr]
            fd = os.open(self.key[0], _FLAGS, 0o644)
            self.flush()
            old, self.fd = self.fd, fd
            self._chunk = 0 if stat.S_ISREG(os.fstat(fd).st_mode) else _PIPE_BUF
            if old >= 0:
                os.close(old)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.flush()
            self._closed = True
            if self._own and self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        self._wake.set()
        super().close()


def reopen_access_log() -> None:
    """Reopen the files of this process's access log handlers (SIGHUP without a
    configuration file); a path that cannot be opened is logged and its file kept."""
    for h in logging.getLogger(LOGGER).handlers:
        if isinstance(h, AccessLogHandler):
            try:
                h.reopen()
            except OSError as e:
                logging.getLogger("proxycore").error(
                    "cannot reopen the access log %r: %s", h.key[0], e.strerror
                )


def reload_access_log(conf: Any) -> AccessBuffer | logging.Logger | None:
    """What the engine gets after a reload (:mod:`proxycore.adapters.reload`) for
    ``conf.access_log``: the same path and format reopen the current handler's file (so
    logrotate works), a new path or format replaces the handler (the old one is flushed and
    closed), none removes it. Raises OSError or ValueError, with nothing changed, when the
    new log cannot be opened."""
    logger = logging.getLogger(LOGGER)
    path = conf.access_log
    key = None if path is None else ("-" if path == "-" else os.path.abspath(path))
    key = None if key is None else (key, conf.access_log_format)
    mine = [h for h in logger.handlers if isinstance(h, AccessLogHandler)]
    same = [h for h in mine if h.key == key]
    if same:
        same[0].reopen()
    elif path is not None:
        if conf.access_log_format not in FORMATS:
            raise ValueError(f"unknown access log format {conf.access_log_format!r}")
        handler = AccessLogHandler(path, conf.access_log_format)
        handler.logger = logger
        logger.addHandler(handler)
    for h in mine:
        if h not in same:
            logger.removeHandler(h)
            h.close()
    return access_logger(conf)


def check_access_log(path: str) -> str | None:
    """Start-up check: None if ``path`` can be opened for appending (creating it), else a
    message naming the path and the reason."""
    if path == "-":
        return None
    try:
        os.close(os.open(path, _FLAGS, 0o644))
    except OSError as e:
        return f"cannot open --access-log {path!r}: {e.strerror}"
    return None


def access_logger(conf: Any) -> AccessBuffer | logging.Logger | None:
    """What the engine hands its access entries to: the buffer of the process's own handler
    when ``conf.access_log`` is set, the logger when only a program's handlers are on it, or
    None for no access log (see the module docstring)."""
    logger = logging.getLogger(LOGGER)
    path = conf.access_log
    if path is None:
        if any(not isinstance(h, AccessLogHandler) for h in logger.handlers):
            return logger  # the program routes it
        return None
    fmt = conf.access_log_format
    if fmt not in FORMATS:
        raise ValueError(f"unknown access log format {fmt!r}; choose from {', '.join(FORMATS)}")
    key = ("-" if path == "-" else os.path.abspath(path), fmt)
    mine = [h for h in logger.handlers if isinstance(h, AccessLogHandler) and h.key == key]
    handler = mine[0] if mine else AccessLogHandler(path, fmt)
    if not mine:
        logger.addHandler(handler)
    handler.logger = logger
    logger.propagate = False
    if logger.level == logging.NOTSET or not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    return handler.buffer
