"""The core does no I/O: no module under proxycore/ (except the process entry points and the
adapters, which live in adapters/) imports an I/O, clock, thread or randomness module, or calls
open()/print()/input(). One reasoned exception: tls.py runs TLS on memory BIOs, so it may
import ``ssl`` but use only the in-memory names listed in SSL_IN_MEMORY (no sockets, no
certificate or CA files: contexts are built in tlsconfig.py, outside the core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "proxycore"
# Not the core: process entry points (argv, reading/writing trace files) and the pytest helper
# that loads a user's trace file. Everything else under proxycore/ is checked.
# tlsconfig.py reads certificate files at start-up and on reload (called by the adapters).
EXEMPT = {
    "cli.py", "cliconf.py", "conffile.py", "__main__.py", "replaycli.py", "testing.py", "tlsconfig.py",
}  # fmt: skip
SSL_USERS = {"tls.py"}
SSL_IN_MEMORY = {
    "MemoryBIO", "SSLObject", "SSLContext", "SSLSession", "SSLError", "SSLWantReadError",
    "SSLZeroReturnError", "SSLCertVerificationError", "ALERT_DESCRIPTION_UNRECOGNIZED_NAME",
    "ALERT_DESCRIPTION_INTERNAL_ERROR",
}  # fmt: skip
BANNED_MODULES = {
    "socket",
    "selectors",
    "ssl",
    "asyncio",
    "gevent",
    "threading",
    "_thread",
    "time",
    "random",
    "secrets",
    "os",
    "io",
    "subprocess",
    "multiprocessing",
    "concurrent",
    "signal",
    "select",
    "trio",
    "anyio",
    "uvloop",
    "datetime",
    "pathlib",
    "shutil",
    "tempfile",
}
BANNED_CALLS = {"open", "print", "input", "exec", "eval", "breakpoint"}

CORE_FILES = sorted(p for p in CORE.rglob("*.py") if p.name not in EXEMPT)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top == "ssl" and path.name in SSL_USERS and isinstance(node, ast.Import):
                continue
            if top in BANNED_MODULES:
                found.append(f"{path.name}:{node.lineno} imports {name}")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "ssl"
            and node.attr not in SSL_IN_MEMORY
        ):
            found.append(f"{path.name}:{node.lineno} uses ssl.{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in BANNED_CALLS
        ):
            found.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and (node.func.id == "__import__")
        ):
            found.append(f"{path.name}:{node.lineno} calls __import__")
    return found


def test_core_files_found() -> None:
    assert len(CORE_FILES) >= 10


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_does_no_io(path: Path) -> None:
    assert _violations(path) == []


def test_the_checker_catches_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom socket import socket\nopen('x')\nimport os.path\n")
    assert len(_violations(bad)) == 4


def test_event_and_action_field_lists_match_their_slots() -> None:
    """``_fields_`` drive repr/equality (compiled classes expose no __slots__); keep them true."""
    import proxycore.actions as actions
    import proxycore.events as events

    for module, base in ((events, events.Event), (actions, actions.Action)):
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, base):
                slots = [s for c in reversed(cls.__mro__) for s in getattr(c, "__slots__", ())]
                assert set(cls._fields_) == set(slots), cls


def test_ssl_rule_catches_file_and_socket_use(tmp_path: Path) -> None:
    bad = tmp_path / "tls.py"
    bad.write_text("import ssl\nctx = ssl.create_default_context()\nssl.SSLSocket\n")
    assert sorted(_violations(bad)) == [
        "tls.py:2 uses ssl.create_default_context",
        "tls.py:3 uses ssl.SSLSocket",
    ]
