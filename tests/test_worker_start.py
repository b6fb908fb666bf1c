"""How a --workers child reports the end of its start-up to the supervisor (adapters/workers.py
``_worker_main``), without forking: the cases a real start-up race produces."""

from __future__ import annotations

import logging
import os

import pytest

from proxycore.adapters.workers import _worker_main
from proxycore.runner import StartupError


def _run(serve_one: object, caplog: pytest.LogCaptureFixture) -> tuple[int, bytes]:
    r, w = os.pipe()
    try:
        with caplog.at_level(logging.ERROR):
            code = _worker_main(0, serve_one, w)  # type: ignore[arg-type]
        os.close(w)
        return code, os.read(r, 4096)
    finally:
        os.close(r)


def test_a_start_up_error_is_reported_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def serve_one(_index: int) -> None:
        raise StartupError("cannot bind connections to origins to 192.0.2.1")

    assert _run(serve_one, caplog) == (2, b"Ecannot bind connections to origins to 192.0.2.1")
    assert not caplog.records


def test_the_supervisors_stop_during_its_own_start_up_error_is_no_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Another worker failed first: the supervisor's SIGINT arrives (as KeyboardInterrupt,
    # the adapter's handler already gone) while this one unwinds from its own error.
    def serve_one(_index: int) -> None:
        try:
            raise StartupError("cannot bind connections to origins to 192.0.2.1")
        finally:
            raise KeyboardInterrupt

    assert _run(serve_one, caplog) == (2, b"Ecannot bind connections to origins to 192.0.2.1")
    assert not caplog.records  # no "worker 0 crashed" traceback


def test_a_plain_stop_before_serving_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    def serve_one(_index: int) -> None:
        raise KeyboardInterrupt

    assert _run(serve_one, caplog) == (0, b"")
    assert not caplog.records


def test_anything_else_is_a_crash_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def serve_one(_index: int) -> None:
        raise ValueError("bad")

    code, said = _run(serve_one, caplog)
    assert code == 1 and said == b"Eworker 0 failed: ValueError('bad')"
    assert "worker 0 crashed" in caplog.text
