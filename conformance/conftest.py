"""Fixtures of the black-box conformance suite.

Every test that takes ``backend`` runs once per backend named by ``--backends`` (comma list)
or the environment variable PROXYCORE_BACKENDS (default: all five backends). Adding an adapter
to the suite is adding its name there.

Fixtures:
  origins       factory: ``origins(EchoOrigin)`` → a started origin, stopped at teardown
  proxy         factory: ``proxy(to=[port], extra=[...])`` / ``proxy(mode="run", app=...)``
                → a started ProxyProcess, killed at teardown (teardown fails if it crashed,
                or if an exchange took a transition its table does not have);
                ``proxy.script("examples/x.py", [...])`` runs a script that takes --listen
                and --backend instead
  echo          an EchoOrigin
  echo_proxy    a reverse proxy in front of ``echo`` (default flags)
On a test failure the stderr of every live proxy is printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from conformance import proxy as _proxy  # noqa: E402
from conformance.origins import EchoOrigin  # noqa: E402

DEFAULT_BACKENDS = "asyncio,uvloop,gevent,threads,trio"


def pytest_addoption(parser):
    group = parser.getgroup("proxycore conformance")
    group.addoption(
        "--backends",
        action="store",
        default=None,
        help="comma-separated proxycore backends to run the conformance suite against "
        f"(default: $PROXYCORE_BACKENDS or {DEFAULT_BACKENDS})",
    )


def selected_backends(config) -> list[str]:
    raw = config.getoption("--backends", default=None) or os.environ.get(
        "PROXYCORE_BACKENDS", DEFAULT_BACKENDS
    )
    names = [b.strip() for b in raw.split(",") if b.strip()]
    return names or DEFAULT_BACKENDS.split(",")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        names = selected_backends(metafunc.config)
        metafunc.parametrize("backend", names, ids=names, scope="module", indirect=True)


@pytest.fixture(scope="module")
def backend(request):
    return request.param


def pytest_configure(config):
    python = _proxy.INSTALLED_PYTHON
    if python is not None and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise pytest.UsageError(
            f"PROXYCORE_PYTHON={os.environ['PROXYCORE_PYTHON']!r} is not an executable ({python})"
        )


def pytest_report_header(config):
    return _proxy.describe_core()


def pytest_sessionstart(session):
    """``-q`` hides the report header; the line naming the core under test is shown anyway
    (by the controller only, under pytest-xdist)."""
    config = session.config
    if config.get_verbosity() >= 0 or hasattr(config, "workerinput"):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(_proxy.describe_core())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.failed and _proxy.LIVE:
        text = "\n\n".join(p.report() for p in list(_proxy.LIVE))
        rep.sections.append(("proxy stderr", text))
    return rep


# -- factories --------------------------------------------------------------------------


class _Origins:
    def __init__(self):
        self.started = []

    def __call__(self, cls=EchoOrigin, *args, **kwargs):
        o = cls(*args, **kwargs)
        self.started.append(o)
        return o

    def stop_all(self):
        for o in self.started:
            o.stop()
        self.started.clear()


class _Proxies:
    def __init__(self, backend):
        self.backend = backend
        self.started: list[_proxy.ProxyProcess] = []

    def __call__(self, to=None, mode="reverse-proxy", app=None, extra=None, env=None):
        if isinstance(to, int):
            to = [to]
        p = _proxy.start_proxy(self.backend, mode=mode, to=to, app=app, extra=extra, env=env)
        self.started.append(p)
        return p

    def script(self, path, args=None, env=None):
        """``python PATH --listen ... ARGS --backend B`` (an example), see start_script."""
        p = _proxy.start_script(self.backend, path, args, env)
        self.started.append(p)
        return p

    def stop_all(self) -> list[str]:
        """Stop every proxy; return reports of those that had died on their own, or whose log
        shows an exchange refused by its transition table (proxycore.exchange_states: a bug
        the proxy survives, by answering 500 or closing that one connection)."""
        crashed = []
        for p in self.started:
            if not p.alive() and not p.expect_exit:
                crashed.append(p.report())
            p.stop()
            if "ExchangeStateError" in p.stderr():
                crashed.append("an exchange left its transition table:\n" + p.report())
            p.close_files()
        self.started.clear()
        return crashed


@pytest.fixture
def origins():
    f = _Origins()
    yield f
    f.stop_all()


@pytest.fixture
def proxy(backend):
    f = _Proxies(backend)
    yield f
    crashed = f.stop_all()
    if crashed:
        pytest.fail(
            "proxy process died (or broke its transition table) during the test:\n"
            + "\n".join(crashed),
            pytrace=False,
        )


@pytest.fixture
def echo(origins):
    return origins(EchoOrigin)


@pytest.fixture
def echo_proxy(proxy, echo):
    return proxy(to=[echo.port])


@pytest.fixture(scope="module")
def shared_echo():
    """A module-wide echo origin (tests must compare counters, not absolute values)."""
    o = EchoOrigin(name="shared-echo")
    yield o
    o.stop()


@pytest.fixture(scope="module")
def shared_proxy(backend, shared_echo):
    """A module-wide reverse proxy in front of ``shared_echo``: tests that share it also
    check that the proxy keeps serving after every bad request."""
    f = _Proxies(backend)
    p = f(to=[shared_echo.port])
    yield p
    crashed = f.stop_all()
    if crashed:
        pytest.fail(
            "shared proxy died (or broke its transition table):\n" + "\n".join(crashed),
            pytrace=False,
        )
