"""The core compiled with mypyc (what ``pip install .`` builds when a C compiler exists) passes
the unit tests and a conformance subset on the uvloop backend (about a minute: the compile is
~20 s). Skipped where mypyc or a C compiler is missing. The editable checkout the rest of the
suite runs against stays pure Python; this builds a compiled copy in a temporary directory."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import compile_hscan

ROOT = Path(__file__).resolve().parent.parent

# Conformance files run against the compiled build: the ones that exercise the most core code
# per second (messages and framing, bad input, TLS, filter phases, headers, load balancing,
# record/replay, curl).
CONFORMANCE_SUBSET = [
    "conformance/test_tls.py",
    "conformance/test_bad_requests.py",
    "conformance/test_apps.py",
    "conformance/test_headers.py",
    "conformance/test_curl.py",
    "conformance/test_lb.py",
    "conformance/test_record_replay.py",
    "conformance/test_properties.py",
]


def _core_modules() -> list[str]:
    """The module list setup.py compiles (read, not imported: importing runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CORE"
    )


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_compiled_core_passes_unit_tests_and_conformance(tmp_path: Path) -> None:
    pytest.importorskip("mypyc")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    for name in ("proxycore", "tests", "conformance", "adapters", "bench", "examples"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "proxycore" / "adapters").symlink_to("../adapters")  # as package-dir maps it
    build = _run(["-m", "mypyc", *_core_modules()], tmp_path, 600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert compile_hscan(tmp_path / "proxycore" / "h1") is not None  # setup.py's C extension
    where = _run(["-c", "import proxycore.session as s; print(s.__file__)"], tmp_path, 60)
    assert where.stdout.strip().endswith(".so"), where.stdout + where.stderr
    scan = _run(["-c", "import proxycore.h1.parse as p; print(p._HSCAN.__file__)"], tmp_path, 60)
    assert scan.stdout.strip().endswith(".so"), scan.stdout + scan.stderr
    unit = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
         "--deselect", "tests/test_lint.py", "--deselect", "tests/test_core_purity.py",
         "--deselect", "tests/test_compiled.py"],
        tmp_path, 600,
    )  # fmt: skip
    assert unit.returncode == 0, unit.stdout[-3000:]
    conf = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--backends", "uvloop",
         *CONFORMANCE_SUBSET],
        tmp_path, 600,
    )  # fmt: skip
    assert conf.returncode == 0, conf.stdout[-3000:]
