"""The core compiled with mypyc still passes the unit tests (slow: ~1 min; run on its own with
``python -m pytest -m slow tests/test_compiled.py``). The compiled build is opt-in
(``PROXYCORE_COMPILE=1 pip install .``); this keeps the source compatible with it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_unit_tests_pass_on_the_mypyc_compiled_core(tmp_path: Path) -> None:
    pytest.importorskip("mypyc")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    for name in ("proxycore", "tests", "bench"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # The module list the opt-in build compiles (read, not imported: importing runs setup()).
    tree = ast.parse((ROOT / "setup.py").read_text())
    core = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CORE"
    )
    build = subprocess.run(
        [sys.executable, "-m", "mypyc", *core],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
            "--deselect",
            "tests/test_lint.py",
            "--deselect",
            "tests/test_core_purity.py",
            "--deselect",
            "tests/test_compiled.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert (
        ".so"
        in subprocess.run(
            [sys.executable, "-c", "import proxycore.session as s; print(s.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
