"""Zero-downtime upgrades: handing the listening sockets to a new process over a Unix socket.

Theory of operation (Pingora's procedure, the same socket and flag names): the new process is
started with ``-u`` (``upgrade=True``) and the same configuration. Before it binds anything it
listens on ``upgrade_sock`` (:func:`wait_for_listeners`) and waits for the running process.
The running process, on SIGQUIT, connects there (:func:`hand_over`) and sends every listening
socket it owns in one message (``SCM_RIGHTS``: the new process gets descriptors of the very
same kernel sockets, with their accept queues, so no connection is refused or reset at any
moment), then waits for the answer. The new process takes the sockets whose address it is
configured for (binding the others afresh, closing those it no longer wants), starts serving
on them and answers ``R`` (ready). Only then does the old process stop accepting and drain
as on SIGTERM; its closed descriptors do not close the sockets, which the new process holds.
Until then both processes accept on the shared sockets.

If no new process is waiting (nothing listens on ``upgrade_sock`` within
:data:`CONNECT_PATIENCE`), or the new one fails before it serves (it answers ``E`` and its
reason, or its end of the socket closes), the old process logs that and goes on serving.
The new process accepts the handover only from a process of its own user (or root, or the
``user`` it is configured to switch to): ``SO_PEERCRED``, so no other local user can hand it
sockets.

With ``--workers N`` the supervisor owns the listeners (it binds them before forking; every
worker serves the same sockets), so the supervisor hands them over and the new supervisor's
workers take them; workers ignore SIGQUIT.

This module does blocking I/O with short timeouts: the old process runs :func:`hand_over`
on a worker thread (its event loop keeps serving), the new one runs
:func:`wait_for_listeners` before its loop starts.
"""

from __future__ import annotations

import _socket
import contextlib
import json
import logging
import os
import socket  # (send_fds/recv_fds only: they work on the C sockets below)
import struct
import time
from collections.abc import Sequence
from typing import Any

from proxycore.runner import StartupError

__all__ = ["CONNECT_PATIENCE", "READY_PATIENCE", "WAIT_PATIENCE", "Handover", "hand_over"]

log = logging.getLogger("proxycore")

# The old process retries connecting this long (the new one may still be starting).
CONNECT_PATIENCE = 3.0
# The old process waits this long for the new one to say it serves.
READY_PATIENCE = 60.0
# The new process waits this long for a running process to hand its sockets over.
WAIT_PATIENCE = 60.0

_MAGIC = b"proxycore-listeners 1 "
_MAX_FDS = 253  # SCM_MAX_FD is 253 on Linux


def _show(name: Any) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hand_over(path: str, socks: Sequence[Any]) -> tuple[bool, str]:
    """In the running process (SIGQUIT): send ``socks`` to the new process waiting on ``path``
    and wait until it serves. Returns (True, what happened) when the new process serves and
    this one must drain, (False, why not) when this one must keep serving. Blocking: call it
    off the event loop."""
    if not socks:
        return False, "upgrade: no listening socket to hand over"
    if len(socks) > _MAX_FDS:
        return (
            False,
            f"upgrade: {len(socks)} listening sockets, at most {_MAX_FDS} can be handed over",
        )
    deadline = time.monotonic() + CONNECT_PATIENCE
    conn: Any = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # (send_fds takes it)
    try:
        while True:
            try:
                conn.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if time.monotonic() >= deadline:
                    return False, (
                        f"upgrade: no new process is waiting on {path} "
                        f"({os.strerror(e.errno or 0).lower()}); still serving"
                    )
                time.sleep(0.05)
            except OSError as e:
                return False, f"upgrade: cannot connect to {path}: {e.strerror}; still serving"
        names = [list(s.getsockname()[:2]) for s in socks]
        header = _MAGIC + json.dumps({"pid": os.getpid(), "listeners": names}).encode()
        conn.settimeout(READY_PATIENCE)
        try:
            socket.send_fds(conn, [header], [s.fileno() for s in socks])
            answer = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                answer += data
                if answer.startswith(b"R"):
                    break
        except TimeoutError:
            return False, (
                f"upgrade: the new process did not start serving within {READY_PATIENCE:g} s; "
                "still serving"
            )
        except OSError as e:
            return False, f"upgrade: handing over failed: {e.strerror or e}; still serving"
        if answer.startswith(b"R"):
            shown = ", ".join(_show(n) for n in names)
            peer = answer[1:].decode("ascii", "replace").strip()
            return True, f"upgrade: the new process (pid {peer or '?'}) serves on {shown}; draining"
        if answer.startswith(b"E"):
            why = answer[1:].decode("utf-8", "replace").strip()
            return False, f"upgrade: the new process failed to start: {why}; still serving"
        return False, "upgrade: the new process exited before serving; still serving"
    finally:
        conn.close()


def _allowed_uids(user_uid: int | None) -> set[int]:
    uids = {0, os.getuid(), os.geteuid()}
    if user_uid is not None:
        uids.add(user_uid)
    return uids


class Handover:
    """In the new process (``-u``): the listening sockets received from the old process.

    ``Handover.wait(path, ...)`` listens on ``path`` and blocks until a running process hands
    its sockets over (a :class:`StartupError` if none does within :data:`WAIT_PATIENCE`).
    ``sockets`` are the received listening sockets; call :meth:`ready` once serving on them
    (the old process then drains), or :meth:`failed` with the reason (it keeps serving)."""

    def __init__(self, conn: Any, sockets: list[Any], names: list[str], peer_pid: int) -> None:
        self.conn: Any = conn
        self.sockets = sockets
        self.names = names
        self.peer_pid = peer_pid

    @classmethod
    def wait(
        cls,
        path: str,
        patience: float = WAIT_PATIENCE,
        user_uid: int | None = None,
        user_gid: int | None = None,
    ) -> Handover:
        server = _listen_on(path, user_uid, user_gid)
        print(f"proxycore upgrade waiting on {path}", flush=True)
        log.info("upgrade: waiting on %s for the running process (send it SIGQUIT)", path)
        deadline = time.monotonic() + patience
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StartupError(
                        f"upgrade: no running process handed its listening sockets over on {path} "
                        f"within {patience:g} s (send SIGQUIT to the running proxycore)"
                    )
                server.settimeout(left)
                try:
                    fd, _ = server._accept()
                except TimeoutError:
                    continue
                conn = _socket.socket(fileno=fd)
                got = cls._receive(conn, user_uid)
                if got is not None:
                    return got
        finally:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    @classmethod
    def _receive(cls, conn: Any, user_uid: int | None) -> Handover | None:
        creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in _allowed_uids(user_uid):
            log.warning("upgrade: refused a handover from pid %d (uid %d)", pid, uid)
            conn.close()
            return None
        conn.settimeout(10.0)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, _MAX_FDS)
        except OSError as e:
            log.warning("upgrade: receiving from pid %d failed: %s", pid, e)
            conn.close()
            return None
        socks = [_socket.socket(fileno=fd) for fd in fds]
        if not msg.startswith(_MAGIC) or not socks:
            for s in socks:
                s.close()
            log.warning("upgrade: pid %d sent no listening socket", pid)
            conn.close()
            return None
        try:
            info = json.loads(msg[len(_MAGIC) :])
        except ValueError:
            info = {}
        names = [_show(s.getsockname()) for s in socks]
        log.info("upgrade: pid %s handed over %s", info.get("pid", pid), ", ".join(names))
        return cls(conn, socks, names, int(info.get("pid", pid)))

    def ready(self) -> None:
        """Serving on the sockets: the old process may drain."""
        self._answer(b"R %d" % os.getpid())

    def failed(self, reason: str) -> None:
        """Could not start: the old process keeps serving."""
        self._answer(b"E" + reason.encode("utf-8", "replace"))

    def _answer(self, data: bytes) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(OSError):
            conn.sendall(data)
        conn.close()


def _listen_on(path: str, uid: int | None, gid: int | None) -> Any:
    """A Unix listening socket at ``path`` (a stale socket file is replaced; one a live
    process listens on is refused)."""
    if os.path.exists(path):
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
        else:
            raise StartupError(f"upgrade: another process is already waiting on {path}")
        finally:
            probe.close()
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            server.bind(path)
        finally:
            os.umask(old)
        if uid is not None and os.geteuid() == 0:
            os.chown(path, uid, -1 if gid is None else gid)
        server.listen(4)
    except OSError as e:
        server.close()
        raise StartupError(f"upgrade: cannot listen on {path}: {e.strerror or e}") from None
    return server
