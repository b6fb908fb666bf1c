# The access log's combined lines in C (proxycore/_alogfmt.c); accesslog.py's _combined is the
# reference it agrees with (tests/test_accesslog_c.py).
from collections.abc import Callable
from typing import Any

def combined_batch(
    entries: list[Any],
    offset: float,
    clock_get: Callable[[float], tuple[int, str, str, str]],
    line: Callable[[Any], str],
    /,
) -> str | None: ...
