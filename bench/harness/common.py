"""Shared constants of the bench harness (paths, the CPU split, the GET /small body) and log()."""

from __future__ import annotations

import resource
import string
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent  # bench/
ROOT = BENCH.parent
HOST = "127.0.0.1"  # the only address this harness ever talks to

# Exactly 53 bytes, plain ASCII with no characters nginx would interpret in `return`.
SMALL_BODY = (string.ascii_lowercase * 2 + "!").encode()
assert len(SMALL_BODY) == 53

PROXY_CPU = "0"  # proxy under test
LOAD_CPU = "1"  # origin + wrk (+ curl and the idle-connection client)
BOTH_CPUS = "0,1"  # the --workers 2 row only: the proxy is not pinned to one core

BIG_BYTES = 1 << 30  # the streamed body: 1 GiB, a sparse file served by the origin (sendfile)
NOFILE_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

ALL_BASE_TARGETS = ("direct", "nginx", "haproxy", "aiohttp")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
