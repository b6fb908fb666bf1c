"""The access log's I/O: the handler that writes the lines, set up once per worker process.

Theory of operation: the core builds one entry per request (:mod:`proxycore.accesslog`) and
hands it to the ``proxycore.access`` logger it was given. :func:`access_logger` (called by
``make_engine``, so every backend gets the same) decides whether there is one:
``ServerConf.access_log`` set (a path, or ``-`` for standard output) installs an
:class:`AccessLogHandler` on that logger, sets it to INFO and stops propagation (the access
log does not mix with the error log); without it, the access log is on only if the program
attached handlers of its own to ``proxycore.access`` (it routes the log); otherwise the
engine gets None and pays nothing.

Writing: on the fast path (:meth:`AccessLogHandler.write_access`, taken while this handler
is the logger's only way out) an entry is stamped with the wall-clock time and queued; lines
are formatted and written in batches: at once when ``BATCH`` entries are queued (a busy
proxy: one ``write`` per ``BATCH`` lines), else by a flusher thread within ``INTERVAL``
seconds (a quiet one), and on ``flush()``/``close()`` (``logging.shutdown`` at exit; workers
call it before they exit). Records that come the usual way (:meth:`emit`) are written at
once, after what is queued, so lines stay in order. The descriptor is opened with
``O_APPEND`` and every ``write`` holds whole lines: with ``--workers N`` each worker opens
the file itself and the kernel keeps each write whole, so lines never interleave; for a
pipe (standard output) writes are cut at line ends to at most ``PIPE_BUF`` bytes, the size a
pipe keeps whole.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import sys
import threading
import time
from typing import Any

from proxycore.accesslog import FORMATS, AccessEntry, format_batch, formatter

__all__ = ["LOGGER", "AccessLogHandler", "access_logger", "check_access_log"]

LOGGER = "proxycore.access"

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_PIPE_BUF = getattr(os, "PIPE_BUF", None) or 4096  # (select.PIPE_BUF on Linux: 4096)


class AccessLogHandler(logging.Handler):
    """Writes access lines to ``path`` (``-``: standard output) as ``fmt`` (``combined`` or
    ``json``), appending, whole lines per write."""

    BATCH = 64  # queued entries that trigger a write at once
    INTERVAL = 0.1  # seconds a queued line may wait for the flusher

    def __init__(self, path: str, fmt: str = "combined") -> None:
        super().__init__()
        self._formatter = formatter(fmt)
        self.setFormatter(self._formatter)
        self._json = fmt == "json"
        self.key = ("-" if path == "-" else os.path.abspath(path), fmt)
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
        self._queue: collections.deque[AccessEntry] = collections.deque()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False
        if hasattr(os, "register_at_fork"):  # a thread does not survive a fork
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._flusher = None
        self._wake = threading.Event()

    # ---------------------------------------------------------------- the fast path

    def write_access(self, entry: AccessEntry) -> bool:
        """Stamp and queue ``entry`` (see the module docstring); False if this handler has
        filters, a level above INFO or another formatter (then the caller makes a record and
        goes the usual way)."""
        if self.filters or self.level > logging.INFO or self.formatter is not self._formatter:
            return False
        entry.created = time.time()
        queue = self._queue
        queue.append(entry)
        n = len(queue)
        if n >= self.BATCH:
            self.flush()
        elif n == 1:  # the first line waiting: the flusher writes it (and what follows) soon
            if self._flusher is None:
                self._start_flusher()
            self._wake.set()
        return True

    def _start_flusher(self) -> None:
        t = threading.Thread(target=self._flush_loop, name="proxycore-access-log", daemon=True)
        self._flusher = t
        t.start()

    def _flush_loop(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait()
            wake.clear()
            time.sleep(self.INTERVAL)
            self.flush()

    # ---------------------------------------------------------------- writing

    def flush(self) -> None:
        """Write every queued line."""
        queue = self._queue
        if not queue:
            return
        with self.lock:  # type: ignore[union-attr]
            entries = []
            try:
                while True:
                    entries.append(queue.popleft())
            except IndexError:
                pass
            if entries:
                try:
                    self._write(format_batch(entries, self._json))
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "access log write failed"}))

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
        data = text.encode("utf-8", "backslashreplace")
        chunk = self._chunk
        fd = self.fd
        while data:
            piece = data
            if chunk and len(data) > chunk:
                cut = data.rfind(b"\n", 0, chunk) + 1
                piece = data[: cut or chunk]  # (a line longer than a pipe keeps whole: cut it)
            n = os.write(fd, piece)
            data = data[n:]

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()
        if self._own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


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


def access_logger(conf: Any) -> logging.Logger | None:
    """The logger the engine hands its access entries to, or None for no access log (see the
    module docstring)."""
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
    if not any(isinstance(h, AccessLogHandler) and h.key == key for h in logger.handlers):
        logger.addHandler(AccessLogHandler(path, fmt))
    logger.propagate = False
    if logger.level == logging.NOTSET or not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    return logger
