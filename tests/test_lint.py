"""ruff (lint + format) and mypy (strict on proxycore/) are part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("proxycore", "adapters", "tests", "conformance", "examples", "bench")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed ([test] extra)")
def test_ruff_lint_and_format() -> None:
    r = _run("ruff", "check", *LINTED)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run("ruff", "format", "--check", *LINTED)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_core() -> None:
    pytest.importorskip("mypy")
    r = _run(sys.executable, "-m", "mypy")
    assert r.returncode == 0, r.stdout + r.stderr
