"""Regenerate the golden traces: ``python -m tests.golden.generate`` (``--check`` only
compares). See tests/golden/INDEX.md; a commit that regenerates a trace says why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.golden.scenarios import SCENARIOS, run_scenario

HERE = Path(__file__).resolve().parent


def build() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for s in SCENARIOS:
        d, traces = run_scenario(s)
        for want in s.expect:
            if want not in d.client_bytes:
                raise SystemExit(
                    f"{s.name}: the client was not sent {want!r}; got {d.client_bytes[:400]!r}"
                )
        if list(traces) != [d.down]:
            raise SystemExit(f"{s.name}: expected one client connection, got {sorted(traces)}")
        out[s.name] = traces[d.down]
    return out


def index() -> str:
    rows = "\n".join(f"| `{s.name}.pctrace` | {s.covers} |" for s in SCENARIOS)
    return (
        "# Golden traces\n\n"
        "HTTP/1.1 sessions recorded from the core, replayed byte for byte (timer deadlines\n"
        "included) by `tests/test_golden.py` on the pure and the compiled core. Scripts:\n"
        "`scenarios.py` (one function each), proxy classes: `app.py`. Regenerate with\n"
        "`python -m tests.golden.generate` — only when the output has to change, and the commit\n"
        "says why. `python -m tests.golden.generate --check` says whether it would.\n\n"
        f"| trace | covers |\n|---|---|\n{rows}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.golden.generate", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = ap.parse_args(argv)
    traces = build()
    files = {f"{name}.pctrace": data for name, data in traces.items()}
    files["INDEX.md"] = index().encode()
    stale = [p.name for p in HERE.glob("*.pctrace") if p.name not in files]
    changed = [
        n for n, b in files.items() if not (HERE / n).exists() or (HERE / n).read_bytes() != b
    ]
    if args.check:
        for n in changed + stale:
            print(f"would change: {n}")
        return 1 if changed or stale else 0
    for n in changed:
        (HERE / n).write_bytes(files[n])
        print(f"wrote {n}")
    for n in stale:
        (HERE / n).unlink()
        print(f"removed {n}")
    print(f"{len(traces)} traces, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
