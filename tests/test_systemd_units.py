"""The systemd units in examples/systemd/ are valid and say what proxycore does.

- ``systemd-analyze verify`` accepts both (when it is installed: the ExecStart binary is
  pointed at this machine's ``proxycore`` script, as an install would have it), with no
  warning about either file;
- their ExecStart command line is accepted by proxycore's own argument parser;
- the foreground unit does not detach; the daemon unit is ``Type=forking`` with ``PIDFile=``
  the very path given to ``--pid-file``, with ``-d`` and an error log.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxycore.cli import _parser

UNITS = Path(__file__).resolve().parent.parent / "examples" / "systemd"
FOREGROUND = UNITS / "proxycore.service"
DAEMON = UNITS / "proxycore-daemon.service"
INSTALLED_AT = "/usr/local/bin/proxycore"


def _parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section] lines, Key=Value lines (a key may repeat), # comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, eq, value = line.partition("=")
        assert eq and current is not None, f"{path.name}:{n}: not Key=Value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _exec_start(unit: dict[str, dict[str, list[str]]]) -> list[str]:
    (command,) = unit["Service"]["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == INSTALLED_AT
    return argv[1:]


def test_foreground_unit() -> None:
    unit = _parse(FOREGROUND)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Type"] == ["exec"]
    assert "PIDFile" not in service
    args = _parser().parse_args(_exec_start(unit))
    assert not args.daemon and args.pid_file is None and args.error_log is None
    assert "CAP_NET_BIND_SERVICE" in service["AmbientCapabilities"][0]


def test_daemon_unit() -> None:
    unit = _parse(DAEMON)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Type"] == ["forking"]
    args = _parser().parse_args(_exec_start(unit))
    assert args.daemon
    assert service["PIDFile"] == [args.pid_file]
    assert args.error_log and args.user and args.group
    assert args.error_log.startswith("/var/log/" + service["LogsDirectory"][0] + "/")


def test_units_grace_fits_in_the_stop_timeout() -> None:
    for path in (FOREGROUND, DAEMON):
        unit = _parse(path)
        args = _parser().parse_args(_exec_start(unit))
        budget = args.grace_period + args.shutdown_timeout  # (the whole shutdown)
        assert float(unit["Service"]["TimeoutStopSec"][0]) > budget, path.name


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the parser tests above still run)")
    binary = shutil.which("proxycore") or sys.executable  # any executable file will do
    copies = []
    for path in (FOREGROUND, DAEMON):
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace(INSTALLED_AT, binary))
        copies.append(str(copy))
    r = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    for path in (FOREGROUND, DAEMON):
        assert path.name not in output, output
