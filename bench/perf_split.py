"""Group `perf script` samples (recorded with DWARF call graphs) by who owns the CPU time.

    perf record --call-graph dwarf,32768 -F 1500 -p PID -o perf.data -- sleep 4
    perf script -i perf.data > perf.txt
    python bench/perf_split.py perf.txt            # kernel syscalls / core / interpreter / uvloop
    python bench/perf_split.py perf.txt --core     # compiled core functions, self time incl.
                                                   # the CPython API they call

Owner of a sample = the first frame, walking from the leaf outwards, that is a mypyc-compiled
function (`CPyDef_*`: the core), the interpreter loop (`_PyEval_EvalFrameDefault`: Python code
such as an adapter), or uvloop. Kernel samples are labelled with the syscall they ran under.
Works on the compiled build (`pip install .`); for the pure-Python core use cProfile instead.
"""

from __future__ import annotations

import collections
import sys


def samples(path: str):
    stack: list[tuple[str, str]] = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip()
            if not line.strip():
                if stack:
                    yield stack
                stack = []
                continue
            parts = line.split()
            if len(parts) >= 2 and all(c in "0123456789abcdef" for c in parts[0]):
                stack.append((parts[1].split("+")[0], parts[-1]))
    if stack:
        yield stack


def owner(stack: list[tuple[str, str]]) -> str:
    kernel = "kernel" in stack[0][1]
    who = "other"
    for fn, dso in stack:
        if fn.startswith(("CPyDef_", "CPyPy_")):
            who = "core"
            break
        if fn == "_PyEval_EvalFrameDefault":
            who = "interpreter"
            break
        if "uvloop" in dso or "loop.cpython" in dso:
            who = "uvloop"
            break
    if kernel:
        sys_fn = next((fn for fn, _ in stack if fn.startswith("__x64_sys_")), "")
        return f"kernel {sys_fn[len('__x64_sys_') :] or '(no syscall)'} <- {who}"
    return who


def core_function(stack: list[tuple[str, str]]) -> str | None:
    for fn, _ in stack:
        if fn.startswith(("CPyDef_", "CPyPy_")):
            return fn.replace("CPyDef_", "").replace("CPyPy_", "py:")
    return None


def main() -> None:
    path = sys.argv[1]
    by_core = "--core" in sys.argv
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for st in samples(path):
        key = core_function(st) if by_core else owner(st)
        if key is None:
            continue
        counts[key] += 1
        total += 1
    for key, n in counts.most_common(40):
        print(f"{100 * n / total:5.1f}%  {key}")


if __name__ == "__main__":
    main()
