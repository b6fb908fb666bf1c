"""The handover of listening sockets (adapters/upgrade.py) between two ends in one process:
the received descriptors are the very same kernel sockets (a connection queued before the
handover is accepted from the received one), the old end learns whether the new one serves,
and the waiting end refuses a second waiter and gives up after its patience."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from proxycore.adapters import upgrade
from proxycore.runner import StartupError


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _wait_for_socket(path: Path) -> None:
    for _ in range(200):
        if path.exists():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the waiting end never listened")


def _hand_over(path: Path, lst: socket.socket) -> tuple[Any, threading.Thread, dict[str, Any]]:
    """Both ends, each on a thread: the waiting end on ``path``, the old end sending ``lst``.
    Returns the new end's Handover once it has the sockets, and the old end's thread and
    outcome (``["value"]`` once joined)."""
    t, got = _in_thread(lambda: upgrade.Handover.wait(str(path), patience=10))
    _wait_for_socket(path)
    t2, sent = _in_thread(lambda: upgrade.hand_over(str(path), [lst]))
    t.join(10)
    return got["value"], t2, sent


def test_the_same_sockets_arrive_and_ready_tells_the_old_end(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    lst = _listener()
    port = lst.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))  # waits in the accept queue
    handover, t2, sent = _hand_over(path, lst)
    try:
        assert [s.getsockname()[1] for s in handover.sockets] == [port]
        assert handover.names == [f"127.0.0.1:{port}"]
        lst.close()  # the old end's descriptor goes; the socket lives on in the new one
        new = socket.socket(fileno=handover.sockets[0].detach())
        conn, _ = new.accept()  # the connection queued before the handover
        conn.close()
        new.close()
        handover.ready()
        t2.join(10)
        ok, message = sent["value"]
        assert ok, message
        assert f"serves on 127.0.0.1:{port}; draining" in message
        assert not path.exists()  # the waiting end removed its socket file
    finally:
        queued.close()


def test_a_failed_start_is_reported_to_the_old_end(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    lst = _listener()
    handover, t2, sent = _hand_over(path, lst)
    for s in handover.sockets:
        s.close()
    handover.failed("cannot listen on 127.0.0.1:1: permission denied")
    t2.join(10)
    assert sent["value"] == (
        False,
        "upgrade: the new process failed to start: cannot listen on 127.0.0.1:1: "
        "permission denied; still serving",
    )
    lst.close()


def test_a_new_end_that_exits_without_a_word_leaves_the_old_one_serving(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    lst = _listener()
    handover, t2, sent = _hand_over(path, lst)
    for s in handover.sockets:
        s.close()
    handover.conn.close()  # (as when the process dies)
    t2.join(10)
    assert sent["value"] == (
        False,
        "upgrade: the new process exited before serving; still serving",
    )
    lst.close()


def test_nobody_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upgrade, "CONNECT_PATIENCE", 0.2)
    lst = _listener()
    ok, message = upgrade.hand_over(str(tmp_path / "nobody.sock"), [lst])
    lst.close()
    assert not ok
    assert message.startswith(f"upgrade: no new process is waiting on {tmp_path}/nobody.sock (")
    assert message.endswith("); still serving")


def test_the_waiting_end_gives_up_after_its_patience(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no running process handed its listening sockets"):
        upgrade.Handover.wait(str(tmp_path / "u.sock"), patience=0.2)


def test_a_stale_socket_file_is_replaced_and_a_live_waiter_refused(tmp_path: Path) -> None:
    path = tmp_path / "u.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    live = upgrade._listen_on(str(path), None, None)  # replaces it
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(StartupError, match="another process is already waiting on"):
            upgrade._listen_on(str(path), None, None)
    finally:
        live.close()


def test_only_this_user_root_or_the_configured_user_may_hand_over() -> None:
    import os

    assert upgrade._allowed_uids(None) == {0, os.getuid(), os.geteuid()}
    assert 4242 in upgrade._allowed_uids(4242)
