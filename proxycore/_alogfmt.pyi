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

class Queue:
    """An AccessBuffer's entries in order: entry objects (put) and the fields of lines (add).
    ``add`` returns ``sys.maxsize`` once the queued heads hold ``max_bytes`` or more."""

    def __init__(self, max_bytes: int = 0) -> None: ...
    def add(
        self,
        remote_addr: str,
        head: bytes,
        status: int,
        body_bytes_sent: int,
        request_time: float,
        at: float,
        uaddr: str | None,
        ustatus: int,
        uct: float,
        uht: float,
        /,
    ) -> int: ...
    def put(self, entry: Any, /) -> int: ...
    def take(self) -> Queue: ...
    def entries(self, make: Callable[..., Any], /) -> list[Any]: ...
    def combined(
        self,
        offset: float,
        clock_get: Callable[[float], tuple[int, str, str, str]],
        line: Callable[[Any], str],
        make: Callable[..., Any],
        /,
    ) -> str | None: ...
    def __len__(self) -> int: ...
