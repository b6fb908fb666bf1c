"""``proxycore replay``: replay trace files (or every ``*.pctrace`` in directories).

Exit status: 0 when every trace replayed identically, 1 when one diverged, 2 when a trace could
not be used (truncated, corrupted, future version, other proxy class, class not importable).
This is a process entry point (it reads and writes files), not part of the core.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from proxycore.replay import TraceError, load_app, load_trace, replay, write_trace

__all__ = ["run_replay", "trace_files"]


def trace_files(paths: Sequence[str]) -> list[Path]:
    """The files named, with directories expanded to their ``*.pctrace`` files."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.glob("*.pctrace")) if p.is_dir() else [p])
    return out


def run_replay(paths: Sequence[str], app_spec: str | None, force: bool, update: bool) -> int:
    files = trace_files(paths)
    if not files:
        print(f"proxycore replay: no trace files in {', '.join(paths)}", file=sys.stderr)
        return 2
    if "" not in sys.path:
        sys.path.insert(0, "")
    if app_spec:  # the --app given must load (one line, before any trace is read)
        try:
            load_app(app_spec, given=True)
        except TraceError as e:
            print(f"proxycore replay: error: {e}", file=sys.stderr)
            return 2
    status = 0
    for path in files:
        try:
            trace = load_trace(path.read_bytes(), str(path))
            app = load_app(app_spec, str(path), given=True) if app_spec else None
            result = replay(trace, app, allow_other_app=force or update, full=update)
        except OSError as e:
            print(f"{path}: cannot read: {e.strerror}", file=sys.stderr)
            status = 2
            continue
        except TraceError as e:
            print(str(e), file=sys.stderr)
            status = 2
            continue
        if update and not result.ok:
            path.write_bytes(write_trace(trace, result.all_actual))
            print(
                f"{path}: expectations rewritten from this replay "
                f"(first difference was at event #{result.index})"
            )
            continue
        print(result.report())
        if not result.ok:
            status = max(status, 1)
    return status
