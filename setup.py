"""Optional compiled build of the core (everything else is in pyproject.toml).

    PROXYCORE_COMPILE=1 pip install .        # the core compiled with mypyc: ~2.4x faster core
    pip install .                            # pure Python (the default; what CI tests)

The compiled build needs a C compiler and mypy (mypyc) at build time. It compiles only the pure
core modules; the filter API base class (phases.py) stays interpreted so user classes can
subclass it, and the adapters stay Python. See docs/performance.md for the numbers.
"""

from __future__ import annotations

import os

from setuptools import setup

CORE = [
    "proxycore/h1/parse.py",
    "proxycore/h1/write.py",
    "proxycore/http.py",
    "proxycore/session.py",
    "proxycore/downstream.py",
    "proxycore/engine.py",
    "proxycore/pool.py",
    "proxycore/upstream.py",
    "proxycore/events.py",
    "proxycore/actions.py",
    "proxycore/peer.py",
    "proxycore/errors.py",
    "proxycore/config.py",
    "proxycore/trace.py",
    "proxycore/replay.py",
]

ext_modules = []
if os.environ.get("PROXYCORE_COMPILE", "") not in ("", "0"):
    from mypyc.build import mypycify

    ext_modules = mypycify(CORE, opt_level="3")

setup(ext_modules=ext_modules)
