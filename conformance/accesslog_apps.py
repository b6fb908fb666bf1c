"""An app for ``conformance/test_access_log.py`` (``python -m proxycore run
conformance.accesslog_apps:SlowFlush``): forwards to ORIGIN_PORT like ``apps.Base``."""

from __future__ import annotations

from conformance.apps import Base


class SlowFlush(Base):
    """The access log's flusher slowed to a minute: the lines of a batch not yet full then
    leave only through the flush at exit (what a SIGTERM under load must not lose)."""

    def __init__(self):
        super().__init__()
        from proxycore.adapters.access import AccessLogHandler

        AccessLogHandler.INTERVAL = 60.0
