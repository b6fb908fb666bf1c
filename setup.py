"""The compiled build of the core (everything else is in pyproject.toml).

    pip install .                            # compiled with mypyc when a C compiler is found
    PROXYCORE_COMPILE=0 pip install .        # pure Python
    pip install -e .                         # editable: pure Python (edits take effect at once)
    PROXYCORE_COMPILE=1 pip install -e .     # force compiling (fails without a compiler)

The compiled build needs a C compiler and mypy (mypyc, a build requirement) at build time. It
compiles the pure core modules and the built-in ReverseProxy with its selectors (open to
interpreted subclasses), and builds the C head scanner (proxycore/h1/_hscan.c) and the access
log's line formatter (proxycore/_alogfmt.c); the filter API base class (phases.py) stays
interpreted so user classes can subclass it, and the adapters stay Python. Both builds pass
the same tests (tests/test_compiled.py builds one and runs the unit tests and a conformance
subset on it). See docs/performance.md for the numbers.
"""

from __future__ import annotations

import os
import shutil
import sys

from setuptools import Extension, setup

CORE = [
    "proxycore/h1/parse.py",
    "proxycore/h1/write.py",
    "proxycore/http.py",
    "proxycore/session.py",
    "proxycore/codec.py",
    "proxycore/semantics.py",
    "proxycore/downstream.py",
    # HTTP/2 from clients: H2Conn and H2Stream subclass compiled classes (Downstream,
    # ServerStream); the connection's frames, states and flow control, and HPACK.
    "proxycore/h2/server.py",
    "proxycore/h2/connection.py",
    "proxycore/h2/frames.py",
    "proxycore/h2/fields.py",
    "proxycore/h2/hpackcodec.py",
    "proxycore/engine.py",
    "proxycore/pool.py",
    # The origin side's seam (OriginStream, UpstreamOwner) joins the compiled set with its
    # subclasses: Upstream (the HTTP/1.1 upstream codec) and Session.
    "proxycore/meta.py",
    "proxycore/exchange_states.py",
    "proxycore/upcodec.py",
    "proxycore/upstream.py",
    "proxycore/events.py",
    "proxycore/actions.py",
    "proxycore/peer.py",
    "proxycore/bind.py",
    "proxycore/errors.py",
    "proxycore/config.py",
    "proxycore/trace.py",
    "proxycore/replay.py",
    "proxycore/tls.py",
    "proxycore/accesslog.py",
    "proxycore/metrics.py",
    # The built-in reverse proxy's phases and the selectors (classes open to interpreted
    # subclasses; their phase markers are kept by name, see phases._COMPILED_MARKS).
    "proxycore/builtin.py",
    "proxycore/lb.py",
]


def want_compiled() -> bool:
    flag = os.environ.get("PROXYCORE_COMPILE", "")
    if flag == "0":
        return False
    if flag:
        return True
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return False  # an editable checkout stays pure Python, so edits take effect at once
    if not any(c in sys.argv for c in ("bdist_wheel", "build_ext", "build", "install")):
        return False  # metadata-only invocations
    compiler = os.environ.get("CC", "cc").split()[0]
    if shutil.which(compiler) is None and shutil.which("gcc") is None:
        print("proxycore: no C compiler found; installing the pure-Python core", file=sys.stderr)
        return False
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        print("proxycore: mypyc not available; installing the pure-Python core", file=sys.stderr)
        return False
    return True


ext_modules = []
if want_compiled():
    from mypyc.build import mypycify

    ext_modules = mypycify(CORE, opt_level="3")
    # The HTTP/1.1 head scanner in C (parse.py falls back to its Python reference without it).
    ext_modules.append(
        Extension("proxycore.h1._hscan", ["proxycore/h1/_hscan.c"], extra_compile_args=["-O2"])
    )
    # The access log's combined lines in C (accesslog.py falls back to its Python reference).
    ext_modules.append(
        Extension(
            "proxycore._alogfmt",
            ["proxycore/_alogfmt.c"],
            extra_compile_args=["-O2", "-ffp-contract=off"],
        )
    )

setup(ext_modules=ext_modules)
