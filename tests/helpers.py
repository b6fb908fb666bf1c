"""Shared pieces for the core's unit tests (no sockets)."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import proxycore
from proxycore.actions import Action, Close, Connect, Send
from proxycore.testing import Harness

ORIGIN = proxycore.Peer("127.0.0.1", 9000)


class Simple(proxycore.Proxy):
    def upstream_peer(self, session: Any, ctx: Any) -> proxycore.Peer:
        return ORIGIN


def sent(actions: list[Action], conn: int) -> bytes:
    return Harness.sent(actions, conn)


def closed(actions: list[Action], conn: int) -> bool:
    return any(isinstance(a, Close) and a.conn == conn for a in actions)


def connect_id(actions: list[Action]) -> int:
    cs = [a for a in actions if isinstance(a, Connect)]
    assert len(cs) == 1, actions
    return cs[0].conn


def setup_request(h: Harness, request: bytes) -> tuple[int, int, list[Action]]:
    """Accept, send ``request``, connect upstream; returns (down id, up id, actions after
    Connected)."""
    down, _ = h.accept()
    acts = h.data(down, request)
    up = connect_id(acts)
    return down, up, h.connected(up)


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


HSCAN_SOURCE = Path(__file__).resolve().parent.parent / "proxycore" / "h1" / "_hscan.c"


def compile_hscan(out_dir: Path) -> Path | None:
    """Build the C head scanner into ``out_dir`` as setup.py would (None: no C compiler)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    out = out_dir / ("_hscan" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wno-unused-parameter",
         f"-I{sysconfig.get_paths()['include']}", str(HSCAN_SOURCE), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return out
