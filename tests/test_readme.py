"""The README's code that quotes an example is that example, so the two cannot drift apart:
the "Worked example" block is examples/gateway.py after its docstring, byte for byte, and the
"Testing your proxy" snippet (which tests that Gateway) passes against it."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import proxycore

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block of the README section that starts with ``heading``."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    m = re.search(r"\n```python\n(.*?\n)```\n", section, re.S)
    assert m, f"no python block under {heading!r} in README.md"
    return m.group(1)


def after_docstring(path: Path) -> str:
    """The file's text after its module docstring (and the blank lines that follow it)."""
    text = path.read_text()
    doc = ast.parse(text).body[0]
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant), path
    return "".join(text.splitlines(keepends=True)[doc.end_lineno :]).lstrip("\n")


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worked_example_is_the_example_file() -> None:
    shown = python_block("## Worked example")
    assert shown == after_docstring(ROOT / "examples" / "gateway.py"), (
        "README.md's worked example differs from examples/gateway.py: copy the file's code "
        "(everything after the docstring) into the README block"
    )


def test_testing_snippet_passes_against_the_worked_example() -> None:
    ns = {"Gateway": load_example("gateway").Gateway, "proxycore": proxycore}
    exec(python_block("## Testing your proxy (no sockets)"), ns)
    ns["test_goes_upstream"]()
