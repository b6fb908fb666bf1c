"""The compiled core (what ``pip install .`` builds when a C compiler exists) passes the unit
tests.

``scripts/test`` installs the default (compiled) build into a virtualenv and names its
interpreter in ``PROXYCORE_PYTHON``; the whole conformance suite then runs its proxy processes
on that install (conformance/proxy.py), and this test runs the unit tests (this interpreter,
this checkout's tests) against the installed compiled package instead of the source tree.

Without ``PROXYCORE_PYTHON`` (a developer's plain ``pytest``), it builds a compiled copy of the
core in a temporary directory with mypyc (about a minute) and runs the unit tests and a
conformance subset on the uvloop backend against it. Skipped where mypyc or a C compiler is
missing.
"""

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

# Unit tests that check the source tree itself rather than the core's behaviour.
_SOURCE_ONLY = ["tests/test_lint.py", "tests/test_core_purity.py", "tests/test_compiled.py"]

# Conformance files run against a locally built copy (only without PROXYCORE_PYTHON).
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


def _run(
    args: list[str], cwd: Path, timeout: float, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(cwd)
    env.pop("PROXYCORE_PYTHON", None)  # conformance runs below use the copy on PYTHONPATH
    return subprocess.run(
        [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_compiled(where: Path) -> None:
    core = _run(["-c", "import proxycore.session as s; print(s.__file__)"], where, 60)
    assert core.stdout.strip().endswith(".so"), core.stdout + core.stderr
    scan = _run(["-c", "import proxycore.h1.parse as p; print(p._HSCAN.__file__)"], where, 60)
    assert scan.stdout.strip().endswith(".so"), scan.stdout + scan.stderr
    fmt = _run(["-c", "import proxycore.accesslog as a; print(a._C_BATCH)"], where, 60)
    assert "built-in function combined_batch" in fmt.stdout, fmt.stdout + fmt.stderr


def _unit_tests(where: Path) -> None:
    deselect = [arg for name in _SOURCE_ONLY for arg in ("--deselect", name)]
    unit = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", *deselect], where, 600)
    assert unit.returncode == 0, unit.stdout[-3000:]


def test_the_installed_compiled_core_passes_the_unit_tests(tmp_path: Path) -> None:
    # (imported here: the copy the unit tests run in below holds tests/, not conformance/)
    from conformance.proxy import installed_python

    installed = installed_python()
    if not installed:
        pytest.skip("PROXYCORE_PYTHON not set (scripts/test sets it); see the next test")
    site = subprocess.run(
        [installed, "-c", "import proxycore, pathlib; print(pathlib.Path(proxycore.__file__).parent.parent)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True,
    ).stdout.strip()  # fmt: skip
    # The installed package (and mypyc's shared group module beside it) and this checkout's
    # tests and test apps, nothing else: ``import proxycore`` must find the install.
    (tmp_path / "proxycore").symlink_to(Path(site) / "proxycore")
    for so in Path(site).glob("*__mypyc*"):
        (tmp_path / so.name).symlink_to(so)
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    # (test-side apps some unit tests name, e.g. `proxycore run conformance.apps:...`)
    (tmp_path / "conformance").symlink_to(ROOT / "conformance")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    _assert_compiled(tmp_path)
    _unit_tests(tmp_path)


def test_a_locally_compiled_core_passes_unit_tests_and_conformance(tmp_path: Path) -> None:
    if os.environ.get("PROXYCORE_PYTHON"):
        pytest.skip("the conformance suite and the test above run on the installed build")
    pytest.importorskip("mypyc")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    for name in ("proxycore", "tests", "conformance", "adapters", "bench", "examples", "scripts"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.so"))
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(ROOT / name, tmp_path)
    (tmp_path / "proxycore" / "adapters").symlink_to("../adapters")  # as package-dir maps it
    build = _run(["-m", "mypyc", *_core_modules()], tmp_path, 600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert compile_hscan(tmp_path / "proxycore" / "h1") is not None  # setup.py's C extensions
    from tests.test_accesslog_c import build as compile_alogfmt

    assert compile_alogfmt(tmp_path / "proxycore") is not None
    _assert_compiled(tmp_path)
    _unit_tests(tmp_path)
    conf = _run(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--backends", "uvloop",
         *CONFORMANCE_SUBSET],
        tmp_path, 600,
    )  # fmt: skip
    assert conf.returncode == 0, conf.stdout[-3000:]
