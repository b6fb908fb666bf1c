"""The test command as the README documents it: ``PROXYCORE_PYTHON`` may be a path relative to
where the command is typed (``scripts/test`` and the conformance launcher make it absolute
before anything runs in another directory), a bad one is refused with one line, and the line
naming the core under test is printed even with ``-q``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(python: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROXYCORE_PYTHON", None)
    if python is not None:
        env["PROXYCORE_PYTHON"] = python
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_scripts_test_refuses_a_bad_relative_interpreter_before_installing(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "test")],
        cwd=tmp_path,
        env=_env("no/such/python"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        f"scripts/test: PROXYCORE_PYTHON={tmp_path}/no/such/python is not an executable"
    ]


def test_a_relative_interpreter_is_made_absolute_without_resolving_links(tmp_path: Path) -> None:
    # A virtualenv's interpreter is a symlink: resolving it would leave the virtualenv.
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(sys.executable)
    code = "from conformance.proxy import INSTALLED_PYTHON; print(INSTALLED_PYTHON)"
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env("venv/bin/python"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == f"{tmp_path}/venv/bin/python", r.stderr


def _pytest_quiet(cwd: Path, python: str | None) -> subprocess.CompletedProcess[str]:
    args = ["-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"]
    args += ["--rootdir", str(ROOT), str(ROOT / "conformance" / "test_startup.py")]
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(python),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quiet_run_names_the_core_under_test(tmp_path: Path) -> None:
    (tmp_path / "py").symlink_to(sys.executable)
    r = _pytest_quiet(tmp_path, "./py")
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("proxycore under test: "), r.stdout
    assert "cannot import" not in first, first


def test_conformance_refuses_an_interpreter_that_is_not_one(tmp_path: Path) -> None:
    r = _pytest_quiet(tmp_path, "no/such/python")
    assert r.returncode != 0
    assert (
        f"PROXYCORE_PYTHON='no/such/python' is not an executable ({tmp_path}/no/such/python)"
        in (r.stdout + r.stderr)
    )
