"""Daemon mode, the pid file, the error log and the privilege drop (``proxycore.run(daemon=True,
pid_file=..., error_log=..., user=..., group=...)``; ``-d/--daemon``, ``--pid-file``,
``--error-log``, ``--user``, ``--group`` on the command line; Pingora's fields of the same names).

Theory of operation: :class:`Lifecycle` wraps the start of the server (one adapter's ``serve``,
or the ``--workers`` supervisor) in three steps.

1. :meth:`Lifecycle.prepare`, in the process the user started, before anything binds or forks:
   the user and group are looked up (an unknown name is a
   :class:`~proxycore.runner.StartupError`, and so is a switch only root can make when not
   running as root), the pid file is checked (one naming a running process refuses the start;
   one naming a dead process is stale and will be replaced; its directory must take a file),
   and the error log is opened for appending (as the starting user, so root may write it
   where the dropped user could not).
2. :meth:`Lifecycle.run`. With ``daemon``, the process detaches the classic way: fork (the
   parent stays to hear how the start went), ``setsid`` (a new session, no controlling
   terminal), fork again (the daemon can never acquire one), stdin from ``/dev/null``,
   stdout and stderr to the error log (or ``/dev/null``). The working directory is kept (so
   relative paths given on the command line keep their meaning). The daemon writes the pid
   file (owned by ``user`` when one is given, so the daemon can still remove it from a sticky
   directory such as /tmp after dropping privileges) and starts serving. The parent waits on a
   pipe: ``R`` once the daemon serves (every listener bound, or with ``--workers`` every
   worker serving) and it exits 0; ``E`` and the one-line message of a start-up error and it
   raises that StartupError (the command line prints the line and exits 2, as nginx and
   Pingora's daemon start do); the pipe closing without either is a start-up error naming
   the error log. Without ``daemon`` the same start runs in the foreground: the pid file
   (only if one was given) names this process, stderr goes to the error log if one was given
   (a start-up error still reaches the original stderr: it is restored first).
3. The privilege drop: a hook at the front of
   :data:`proxycore.adapters._sockets.listening_hooks`, so it runs in each process that
   serves, right after that process has bound its listeners and before it accepts (a port
   below 1024 works when started as root): supplementary groups cleared, then the group,
   then the user (``setgroups([])``, ``setgid``, ``setuid``: real, effective and saved ids,
   so it cannot be undone). With ``--workers`` the supervisor keeps its identity (it binds
   nothing, but it restarts workers, which bind again) and each worker drops after binding,
   as nginx's master and workers do.

When the server returns (SIGTERM: graceful drain; SIGINT: fast, exactly as in the
foreground), the pid file is removed if it still names this process.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import sys
from collections.abc import Callable

from proxycore.adapters._sockets import listening_hooks
from proxycore.errors import os_error_reason
from proxycore.runner import StartupError

__all__ = [
    "DEFAULT_PID_FILE",
    "Lifecycle",
    "check_pid_file",
    "drop_privileges",
    "resolve_identity",
]

log = logging.getLogger("proxycore")

# Pingora's default is /tmp/pingora.pid; used only in daemon mode when no pid_file is given.
DEFAULT_PID_FILE = "/tmp/proxycore.pid"


def _reason(e: OSError) -> str:
    e.filename = None  # (the path is named by the caller)
    return os_error_reason(e)


def resolve_identity(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """(uid, gid) to switch to after binding; None for what stays as it is. ``group``
    defaults to ``user``'s primary group. A name that does not exist, or a switch only root
    can make while not running as root, raises :class:`StartupError`."""
    uid: int | None = None
    gid: int | None = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise StartupError(f"unknown user {user!r} (--user / user)") from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"unknown group {group!r} (--group / group)") from None
    euid, egid = os.geteuid(), os.getegid()
    if euid != 0:
        if uid is not None and uid != euid:
            raise StartupError(
                f"cannot switch to user {user!r}: only root can (running as uid {euid})"
            )
        if gid is not None and gid != egid:
            name = repr(group) if group is not None else f"{gid} (the primary group of {user!r})"
            raise StartupError(
                f"cannot switch to group {name}: only root can (running as uid {euid})"
            )
        return None, None  # already that user and group: nothing to drop
    return uid, gid


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """Clear the supplementary groups and switch to ``gid`` then ``uid`` (real, effective and
    saved ids). Raises :class:`StartupError` if the kernel refuses."""
    try:
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            if gid is None:
                os.setgroups([])
            os.setuid(uid)
    except OSError as e:
        raise StartupError(f"cannot drop privileges to uid {uid} gid {gid}: {_reason(e)}") from None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_pid_file(path: str, upgrade: bool = False) -> None:
    """Refuse (:class:`StartupError`) a pid file that names a running process other than this
    one (unless ``upgrade``: that is the process this one replaces), or whose directory cannot
    take the file. A missing file, or one naming a process that is gone (or holding no pid),
    is fine: it will be replaced."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise StartupError(f"pid file {path!r} is a directory") from None
        raise StartupError(f"cannot read pid file {path!r}: {_reason(e)}") from None
    if (
        not upgrade
        and text.isdigit()
        and int(text) > 0
        and int(text) != os.getpid()
        and _running(int(text))
    ):
        raise StartupError(
            f"pid file {path!r} names a running process (pid {text}): is proxycore already "
            "running? (stop it, or remove the file if that process is not proxycore)"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(f"cannot write pid file {path!r}: no directory {directory!r}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"cannot write pid file {path!r}: {directory!r} is not writable")


class Lifecycle:
    """See the module docstring. ``prepare()`` first, then ``run(start, hooks)``: ``start``
    serves until shutdown; with ``hooks`` True it binds in this process (its
    :data:`listening_hooks` say when it serves), else it calls :meth:`ready` itself (the
    ``--workers`` supervisor, once every worker serves)."""

    def __init__(
        self,
        daemon: bool = False,
        pid_file: str | None = None,
        error_log: str | None = None,
        user: str | None = None,
        group: str | None = None,
        upgrade: bool = False,
    ) -> None:
        self.daemon = daemon
        # -u: the pid file names the process this one replaces until this one serves; it is
        # written then (ready), not before.
        self.upgrade = upgrade
        self.pid_file = pid_file if pid_file is not None or not daemon else DEFAULT_PID_FILE
        self.error_log = error_log
        self.user = user
        self.group = group
        self.uid: int | None = None
        self.gid: int | None = None
        self._log_fd: int | None = None
        self._report: int | None = None  # the daemon's end of the pipe to the parent
        self._wrote_pid: int | None = None

    def prepare(self) -> None:
        """Every check that can fail before anything binds or forks (StartupError)."""
        self.uid, self.gid = resolve_identity(self.user, self.group)
        if self.pid_file is not None:
            check_pid_file(self.pid_file, self.upgrade)
        if self.error_log is not None:
            try:
                self._log_fd = os.open(
                    self.error_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
                )
            except OSError as e:
                raise StartupError(
                    f"cannot open error log {self.error_log!r}: {_reason(e)}"
                ) from None

    def run(self, start: Callable[[], None], hooks: bool) -> None:
        saved_stderr: int | None = None
        if self.daemon:
            self._detach()  # returns in the daemon only
        elif self._log_fd is not None:
            _flush()
            saved_stderr = os.dup(2)
            os.dup2(self._log_fd, 2)
        added: list[Callable[[list[tuple[str, int]]], None]] = []
        if self.uid is not None or self.gid is not None:
            uid, gid = self.uid, self.gid
            added.append(lambda _addrs: drop_privileges(uid, gid))
            listening_hooks.insert(0, added[-1])  # before anyone is told we serve
        if hooks:
            added.append(self._ready_hook)
            listening_hooks.append(added[-1])
            if self.upgrade and self.pid_file is not None:  # (while still allowed to write it)
                path = self.pid_file
                added.append(lambda _addrs: self._write_pid_file(path))
                listening_hooks.insert(0, added[-1])
        try:
            if self.pid_file is not None and not self.upgrade:
                self._write_pid_file(self.pid_file)
            start()
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            for hook in added:
                with contextlib.suppress(ValueError):
                    listening_hooks.remove(hook)
            self._remove_pid_file()
            if saved_stderr is not None:  # (a start-up error goes where the user started us)
                _flush()
                os.dup2(saved_stderr, 2)
                os.close(saved_stderr)
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None

    # ------------------------------------------------------------------ readiness

    def _ready_hook(self, _addrs: list[tuple[str, int]]) -> None:
        self.ready()

    def ready(self) -> None:
        """The server serves: tell the waiting parent (daemon mode), once. After an upgrade,
        the pid file is written now."""
        if self.upgrade and self.pid_file is not None and self._wrote_pid is None:
            try:
                self._write_pid_file(self.pid_file)
            except StartupError as e:
                log.error("%s", e)
        fd, self._report = self._report, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"R")
            os.close(fd)

    def _fail(self, e: BaseException) -> None:
        fd, self._report = self._report, None
        if fd is None:
            return
        if isinstance(e, StartupError):
            message = str(e)
        elif isinstance(e, SystemExit):
            message = f"the daemon exited with status {e.code} before serving"
        else:
            message = f"the daemon failed before serving: {e!r}"
        with contextlib.suppress(OSError):
            os.write(fd, b"E" + message.encode("utf-8", "replace"))
        os.close(fd)

    # ------------------------------------------------------------------ detaching

    def _detach(self) -> None:
        """Fork twice; only the daemon returns. The starting process exits 0 when the daemon
        reports that it serves, or raises the daemon's StartupError."""
        _flush()
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid != 0:  # the process the user started
            os.close(wfd)
            self._parent(pid, rfd)
        os.close(rfd)
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)  # the session leader goes: the daemon cannot get a terminal
            null = os.open(os.devnull, os.O_RDWR)
            out = self._log_fd if self._log_fd is not None else null
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(null)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(wfd, b"E" + f"cannot detach: {e!r}".encode())
            os._exit(2)
        self._report = wfd

    def _parent(self, child: int, rfd: int) -> None:
        data = b""
        while not data.startswith(b"R"):
            try:
                chunk = os.read(rfd, 4096)
            except InterruptedError:
                continue
            if not chunk:
                break
            data += chunk
        os.close(rfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)  # the intermediate child, gone at once
        if data.startswith(b"R"):
            _flush()
            raise SystemExit(0)
        if data.startswith(b"E"):
            raise StartupError(data[1:].decode("utf-8", "replace").strip())
        where = f"see {self.error_log!r}" if self.error_log else "no error_log was given"
        raise StartupError(f"the daemon exited before serving ({where})")

    # ------------------------------------------------------------------ the pid file

    def _write_pid_file(self, path: str) -> None:
        pid = os.getpid()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{pid}\n".encode())
                if self.uid is not None or self.gid is not None:
                    os.fchown(
                        fd,
                        -1 if self.uid is None else self.uid,
                        -1 if self.gid is None else self.gid,
                    )
            finally:
                os.close(fd)
        except OSError as e:
            raise StartupError(f"cannot write pid file {path!r}: {_reason(e)}") from None
        self._wrote_pid = pid

    def _remove_pid_file(self) -> None:
        path = self.pid_file
        if path is None or self._wrote_pid != os.getpid():
            return  # not written, or a forked child (a worker) unwinding
        self._wrote_pid = None
        try:  # (bytes: after a privilege drop, a codec module may not be importable)
            with open(path, "rb") as f:
                if f.read(64).strip() != b"%d" % os.getpid():
                    return  # replaced by someone else: theirs now
            os.unlink(path)
        except OSError as e:
            log.warning("cannot remove pid file %r: %s", path, _reason(e))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
